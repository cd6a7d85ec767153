//! Ed25519 keys: the vendor's [`SigningKey`], the [`PublicKey`]s agents trust, their text
//! file formats and the [`TrustedKeys`] set that makes key rotation possible.
//!
//! Key files are one line of text (a trailing newline and surrounding whitespace are
//! ignored when read):
//!
//! ```text
//! tollgate-ed25519-public:<key id>:<base64 of the 32-byte public key>
//! tollgate-ed25519-private:<key id>:<base64 of the 32-byte secret seed>
//! ```
//!
//! The key id is the first 8 bytes of BLAKE3 of the public key, as 16 lower-case hex
//! digits; it is recomputed on every read and must match, so a damaged file is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Most public keys a [`TrustedKeys`] set holds.
pub const TRUSTED_KEY_COUNT_MAX: usize = 64;

/// Longest key file text accepted (the lines are about 90 bytes).
pub const KEY_FILE_LEN_MAX: usize = 1024;

/// Longest trusted-keys text accepted (one public key per line, comments allowed).
pub const TRUSTED_KEYS_TEXT_LEN_MAX: usize = 64 * 1024;

const PUBLIC_PREFIX: &str = "tollgate-ed25519-public";
const PRIVATE_PREFIX: &str = "tollgate-ed25519-private";

/// Why a key or key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key file is longer than {KEY_FILE_LEN_MAX} bytes")]
    TooLong,
    #[error("not a {expected} key line (expected `{expected}:<key id>:<base64>`)")]
    Format { expected: &'static str },
    #[error("malformed key id (expected 16 lower-case hex digits)")]
    KeyId,
    #[error("key material is not base64 of 32 bytes")]
    Material,
    #[error("not a valid Ed25519 public key")]
    PublicKey,
    #[error("key id {written} does not match the key (which has key id {actual})")]
    KeyIdMismatch { written: KeyId, actual: KeyId },
    #[error("more than {TRUSTED_KEY_COUNT_MAX} trusted keys")]
    TooManyKeys,
    #[error("line {line}: {source}")]
    Line {
        line: usize,
        #[source]
        source: Box<KeyError>,
    },
}

/// Names a public key: the first 8 bytes of BLAKE3 of the key, shown as 16 lower-case hex
/// digits. Documents carry it so a verifier can pick the key among those it trusts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// Length of the text form.
    pub const TEXT_LEN: usize = 16;

    /// The key id of an Ed25519 public key.
    pub fn of(public_key: &[u8; 32]) -> KeyId {
        let hash = blake3::hash(public_key);
        let mut id = [0; 8];
        id.copy_from_slice(&hash.as_bytes()[..8]);
        KeyId(id)
    }

    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    /// Exactly 16 lower-case hex digits.
    fn from_str(text: &str) -> Result<KeyId, KeyError> {
        let bytes = text.as_bytes();
        if bytes.len() != Self::TEXT_LEN {
            return Err(KeyError::KeyId);
        }
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            _ => Err(KeyError::KeyId),
        };
        let mut id = [0; 8];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            id[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Ok(KeyId(id))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The vendor's Ed25519 signing key. `Debug` never shows the secret; the secret leaves only
/// through [`SigningKey::to_file_string`].
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    key_id: KeyId,
}

impl SigningKey {
    /// A new random key from `rng`: entropy is an argument (the CLI and the license server
    /// pass the operating system's generator).
    pub fn generate_with(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> SigningKey {
        SigningKey::from_key(ed25519_dalek::SigningKey::generate(rng))
    }

    /// [`SigningKey::generate_with`] the operating system's generator: a convenience kept
    /// for tests and examples; no library code path calls it.
    pub fn generate() -> SigningKey {
        SigningKey::generate_with(&mut rand::rngs::OsRng)
    }

    /// The key with this 32-byte secret seed (tests and fixed examples).
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey::from_key(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    fn from_key(key: ed25519_dalek::SigningKey) -> SigningKey {
        let key_id = KeyId::of(key.verifying_key().as_bytes());
        SigningKey { key, key_id }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            key_id: self.key_id,
        }
    }

    /// The private key file: `tollgate-ed25519-private:<key id>:<base64 seed>\n`. Whoever
    /// writes it should make the file readable by its owner only (0600).
    pub fn to_file_string(&self) -> String {
        let seed = BASE64.encode(self.key.to_bytes());
        format!("{PRIVATE_PREFIX}:{}:{seed}\n", self.key_id)
    }

    /// Reads a private key file (see [`SigningKey::to_file_string`]).
    pub fn from_file_str(text: &str) -> Result<SigningKey, KeyError> {
        let (written, material) = split_key_line(text, PRIVATE_PREFIX)?;
        let key = SigningKey::from_seed(&material);
        if key.key_id != written {
            return Err(KeyError::KeyIdMismatch {
                written,
                actual: key.key_id,
            });
        }
        Ok(key)
    }

    pub(crate) fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
    key_id: KeyId,
}

impl PublicKey {
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The public key file: `tollgate-ed25519-public:<key id>:<base64 key>\n`.
    pub fn to_file_string(&self) -> String {
        let key = BASE64.encode(self.key.as_bytes());
        format!("{PUBLIC_PREFIX}:{}:{key}\n", self.key_id)
    }

    /// Reads a public key file (see [`PublicKey::to_file_string`]). Weak (small-order) keys
    /// are refused.
    pub fn from_file_str(text: &str) -> Result<PublicKey, KeyError> {
        let (written, material) = split_key_line(text, PUBLIC_PREFIX)?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&material).map_err(|_| KeyError::PublicKey)?;
        if key.is_weak() {
            return Err(KeyError::PublicKey);
        }
        let actual = KeyId::of(key.as_bytes());
        if actual != written {
            return Err(KeyError::KeyIdMismatch { written, actual });
        }
        Ok(PublicKey {
            key,
            key_id: actual,
        })
    }

    /// Strict Ed25519 verification (rejects non-canonical and malleable signatures).
    pub(crate) fn verify_raw(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.key.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id)
    }
}

impl fmt::Display for PublicKey {
    /// The key file line without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_file_string().trim_end())
    }
}

/// The public keys a verifier trusts, by key id. Rotation: trust the new key beside the old
/// one; documents signed by either verify until the old key is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// A set holding just `key`.
    pub fn single(key: PublicKey) -> TrustedKeys {
        let mut keys = TrustedKeys::new();
        keys.keys.insert(key.key_id, key);
        keys
    }

    /// Adds `key` (replacing nothing: the key id is derived from the key). Refused beyond
    /// [`TRUSTED_KEY_COUNT_MAX`] keys.
    pub fn insert(&mut self, key: PublicKey) -> Result<(), KeyError> {
        if !self.keys.contains_key(&key.key_id) && self.keys.len() >= TRUSTED_KEY_COUNT_MAX {
            return Err(KeyError::TooManyKeys);
        }
        self.keys.insert(key.key_id, key);
        Ok(())
    }

    /// Stops trusting a key (the end of a rotation). Returns it if it was trusted.
    pub fn remove(&mut self, key_id: &KeyId) -> Option<PublicKey> {
        self.keys.remove(key_id)
    }

    pub fn get(&self, key_id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// Reads a trusted-keys text: one public key line per line; blank lines and lines
    /// starting with `#` are ignored.
    pub fn parse(text: &str) -> Result<TrustedKeys, KeyError> {
        if text.len() > TRUSTED_KEYS_TEXT_LEN_MAX {
            return Err(KeyError::TooLong);
        }
        let mut keys = TrustedKeys::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at_line = |source| KeyError::Line {
                line: index + 1,
                source: Box::new(source),
            };
            let key = PublicKey::from_file_str(line).map_err(at_line)?;
            keys.insert(key).map_err(at_line)?;
        }
        Ok(keys)
    }
}

/// Splits `<prefix>:<key id>:<base64 32 bytes>` (surrounding whitespace ignored).
fn split_key_line(text: &str, prefix: &'static str) -> Result<(KeyId, [u8; 32]), KeyError> {
    if text.len() > KEY_FILE_LEN_MAX {
        return Err(KeyError::TooLong);
    }
    let format = KeyError::Format { expected: prefix };
    let mut parts = text.trim().split(':');
    let (Some(head), Some(key_id), Some(material), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format);
    };
    if head != prefix {
        return Err(format);
    }
    let key_id = key_id.parse()?;
    let material = BASE64.decode(material).map_err(|_| KeyError::Material)?;
    let material = <[u8; 32]>::try_from(material).map_err(|_| KeyError::Material)?;
    Ok((key_id, material))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let key = SigningKey::from_seed(&[7; 32]);
        let again = SigningKey::from_file_str(&key.to_file_string()).expect("reads back");
        assert_eq!(again.key_id(), key.key_id());
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::from_file_str(&key.public_key().to_file_string()).expect("reads");
        assert_eq!(public, key.public_key());
        // Surrounding whitespace and CRLF are fine.
        let padded = format!("  {}\r\n\r\n", key.public_key().to_file_string().trim_end());
        assert_eq!(PublicKey::from_file_str(&padded), Ok(key.public_key()));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SigningKey::from_seed(&[7; 32]);
        let secret = key.to_file_string();
        let secret = secret.trim_end().rsplit(':').next().expect("three parts");
        assert!(!format!("{key:?}").contains(secret));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            SigningKey::generate().key_id(),
            SigningKey::generate().key_id()
        );
    }

    #[track_caller]
    fn check_public(text: &str, expected: KeyError) {
        assert_eq!(PublicKey::from_file_str(text), Err(expected), "{text:?}");
    }

    #[test]
    fn damaged_key_files_are_refused() {
        let key = SigningKey::from_seed(&[7; 32]).public_key();
        let line = key.to_file_string();
        let id = key.key_id().to_string();
        let other = SigningKey::from_seed(&[8; 32]).public_key();
        let format = KeyError::Format {
            expected: PUBLIC_PREFIX,
        };
        check_public("", format.clone());
        check_public(&line.replace("public", "private"), format.clone());
        check_public(&format!("{line}:extra"), format.clone());
        check_public(&line.replace(&id, &id.to_uppercase()), KeyError::KeyId);
        check_public(&line.replace(&id, &id[..15]), KeyError::KeyId);
        check_public(&line.replace(&id, &other.key_id().to_string()), {
            KeyError::KeyIdMismatch {
                written: other.key_id(),
                actual: key.key_id(),
            }
        });
        let b64 = line.trim_end().rsplit(':').next().expect("three parts");
        check_public(&line.replace(b64, &b64[..40]), KeyError::Material);
        check_public(&line.replace(b64, "!!!!"), KeyError::Material);
        // Small-order points (the all-zero encoding, the identity) are weak keys.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        for weak in [[0u8; 32], identity] {
            let line = format!(
                "{PUBLIC_PREFIX}:{}:{}",
                KeyId::of(&weak),
                BASE64.encode(weak)
            );
            check_public(&line, KeyError::PublicKey);
        }
        check_public(&"x".repeat(KEY_FILE_LEN_MAX + 1), KeyError::TooLong);
    }

    #[test]
    fn trusted_keys_parse_with_comments_and_are_bounded() {
        let a = SigningKey::from_seed(&[1; 32]).public_key();
        let b = SigningKey::from_seed(&[2; 32]).public_key();
        let text = format!("# current\n{a}\n\n# previous, until 2031\n  {b}  \n");
        let keys = TrustedKeys::parse(&text).expect("parses");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&a.key_id()), Some(&a));
        assert_eq!(keys.get(&b.key_id()), Some(&b));

        let bad = format!("{a}\nnonsense\n");
        assert!(matches!(
            TrustedKeys::parse(&bad),
            Err(KeyError::Line { line: 2, .. })
        ));

        let mut keys = TrustedKeys::new();
        for seed in 0..TRUSTED_KEY_COUNT_MAX {
            let key = SigningKey::from_seed(&[seed as u8; 32]).public_key();
            keys.insert(key).expect("room");
        }
        keys.insert(SigningKey::from_seed(&[0; 32]).public_key())
            .expect("already there");
        let one_more = SigningKey::from_seed(&[255; 32]).public_key();
        assert_eq!(keys.insert(one_more), Err(KeyError::TooManyKeys));
        assert!(keys.remove(&a.key_id()).is_some());
        assert!(keys.get(&a.key_id()).is_none());
    }
}
