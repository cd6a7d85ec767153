//! One ledger entry, its byte encoding and its signature (layout: `docs/ledger.md`).

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};

/// The first four bytes of every entry body: format version 1.
pub const MAGIC: [u8; 4] = *b"TGL1";
/// What a node signs: this domain string, then the body. Keeps a ledger signature from
/// ever being valid for anything else the key might sign.
pub const SIGNATURE_DOMAIN: &[u8] = b"tollgate-ledger-entry-v1\0";
/// Longest node id, in bytes (the same bound as a usage report's).
pub const NODE_ID_LEN_MAX: usize = 128;
/// Longest license status or denial code, in bytes.
pub const STATUS_LEN_MAX: usize = 32;
/// Most denial codes one entry records.
pub const DENIED_CODES_MAX: usize = 16;
/// Fixed part of a body: magic 4, seq 8, prev_hash 32, node key 32, incarnation 8,
/// interval 16, counts 32, peaks 32, serial flag 1 + 8, state resets 8.
const FIXED_LEN: usize = 4 + 8 + 32 + 32 + 8 + 16 + 32 + 32 + 9 + 8;
/// Longest body: the fixed part, the node id, the status, the denial codes.
pub const ENTRY_BODY_LEN_MAX: usize = FIXED_LEN
    + 1
    + NODE_ID_LEN_MAX
    + 1
    + STATUS_LEN_MAX
    + 1
    + DENIED_CODES_MAX * (1 + STATUS_LEN_MAX + 8);
/// Longest frame: a 4-byte length, the body, the 64-byte signature.
pub const FRAME_LEN_MAX: usize = 4 + ENTRY_BODY_LEN_MAX + 64;

/// A BLAKE3 hash of an entry (its body and signature).
pub type Hash = [u8; 32];
/// A node's Ed25519 public key.
pub type PublicKey = [u8; 32];

/// The four figures a license limits, as counted at one instant or as peaks over an
/// interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Active calls, emergency calls included.
    pub calls: u64,
    pub emergency_calls: u64,
    /// Subscribers with at least one live registration.
    pub registered_subscribers: u64,
    /// Provisioned subscribers, as last reported by the platform.
    pub provisioned_subscribers: u64,
}

/// What a node records for one report interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub node_id: String,
    /// The node's incarnation (bumped at every start).
    pub incarnation: u64,
    /// The interval this entry covers, Unix milliseconds `[start, end]`.
    pub interval_start_ms: u64,
    pub interval_end_ms: u64,
    /// The figures at the end of the interval.
    pub counts: Figures,
    /// The highest figures within the interval.
    pub peaks: Figures,
    /// The serial of the license in force at the end of the interval (none: unlicensed).
    pub license_serial: Option<u64>,
    /// The license status code at the end of the interval (`OK`, `OVER_LIMIT`, …).
    pub license_status: String,
    /// Admissions denied since the agent started, by code (cumulative).
    pub denied: Vec<(String, u64)>,
    /// State resets this node has seen since the agent started (cumulative).
    pub state_resets: u64,
}

/// Why bytes are not a ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated entry: {needed} bytes needed, {available} left")]
    Truncated { needed: usize, available: usize },
    #[error("frame length {0} out of range")]
    FrameLength(usize),
    #[error("bad magic (not a tollgate ledger entry, or another version)")]
    Magic,
    #[error("{field} too long: {len} bytes")]
    TooLong { field: &'static str, len: usize },
    #[error("{field} is not valid text")]
    Text { field: &'static str },
    #[error("bad flag byte {0}")]
    Flag(u8),
    #[error("{0} trailing bytes after the entry's fields")]
    Trailing(usize),
}

/// An entry with its place in the chain, the signer's public key and the signature. The
/// encoded body is kept, so hashing and verifying use exactly the bytes that were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    pub seq: u64,
    pub prev_hash: Hash,
    pub node_key: PublicKey,
    pub entry: Entry,
    pub signature: [u8; 64],
    body: Vec<u8>,
}

/// A node's identity: an Ed25519 signing key.
pub struct NodeKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeKey")
            .field(&public_key_text(&self.public()))
            .finish()
    }
}

impl NodeKey {
    /// A new random key from `rng`: entropy is an argument (the agent passes the operating
    /// system's generator).
    pub fn generate_with(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> NodeKey {
        NodeKey(ed25519_dalek::SigningKey::generate(rng))
    }

    /// [`NodeKey::generate_with`] the operating system's generator: a convenience kept for
    /// tests; no library code path calls it.
    pub fn generate() -> NodeKey {
        NodeKey::generate_with(&mut rand::rngs::OsRng)
    }

    pub fn from_seed(seed: &[u8; 32]) -> NodeKey {
        NodeKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte secret seed (what the node key file holds).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        self.0.verifying_key().to_bytes()
    }

    /// A secret derived from the node key for `context` (e.g. keying a MAC), never the
    /// signing key itself.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0.to_bytes())
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// The text form of a node public key: standard base64 of the 32 bytes.
pub fn public_key_text(key: &PublicKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Reads a node public key as base64 (44 characters) or hex (64 characters).
pub fn parse_public_key(text: &str) -> Option<PublicKey> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(key);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    bytes.try_into().ok()
}

impl SignedEntry {
    /// Signs `entry` at position `seq` after the entry hashed `prev_hash`.
    pub fn sign(key: &NodeKey, seq: u64, prev_hash: Hash, entry: Entry) -> SignedEntry {
        let node_key = key.public();
        let body = encode_body(seq, &prev_hash, &node_key, &entry);
        let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + body.len());
        message.extend_from_slice(SIGNATURE_DOMAIN);
        message.extend_from_slice(&body);
        let signature = key.sign(&message);
        let signed = SignedEntry {
            seq,
            prev_hash,
            node_key,
            entry,
            signature,
            body,
        };
        debug_assert!(signed.signature_valid());
        signed
    }

    /// The encoded body (what the signature covers, after [`SIGNATURE_DOMAIN`]).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// BLAKE3 of the body and the signature: what the next entry's `prev_hash` holds.
    pub fn hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&self.body);
        h.update(&self.signature);
        *h.finalize().as_bytes()
    }

    /// Whether the signature is the node key's over this body.
    pub fn signature_valid(&self) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.node_key) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + self.body.len());
        message.extend_from_slice(SIGNATURE_DOMAIN);
        message.extend_from_slice(&self.body);
        key.verify(&message, &signature).is_ok()
    }

    /// The frame: body length + 64 as u32 LE, the body, the signature.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.body.len() + 64;
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes one frame at the start of `bytes`; returns the entry and the bytes it used.
    pub fn decode(bytes: &[u8]) -> Result<(SignedEntry, usize), DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let len = r.u32()? as usize;
        if !(FIXED_LEN + 3 + 64..=ENTRY_BODY_LEN_MAX + 64).contains(&len) {
            return Err(DecodeError::FrameLength(len));
        }
        let frame = r.take(len)?;
        let (body, signature) = frame.split_at(len - 64);
        let mut signed = decode_body(body)?;
        signed.signature = signature.try_into().unwrap_or([0; 64]);
        Ok((signed, 4 + len))
    }
}

/// Decodes consecutive frames. Stops at the first that does not decode and returns the
/// entries before it, with the byte offset and error of the bad one.
pub fn decode_frames(bytes: &[u8]) -> (Vec<SignedEntry>, Option<(usize, DecodeError)>) {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match SignedEntry::decode(&bytes[at..]) {
            Ok((e, used)) => {
                entries.push(e);
                at += used;
            }
            Err(e) => return (entries, Some((at, e))),
        }
    }
    (entries, None)
}

fn encode_body(seq: u64, prev_hash: &Hash, node_key: &PublicKey, e: &Entry) -> Vec<u8> {
    assert!(e.node_id.len() <= NODE_ID_LEN_MAX, "node id too long");
    let mut out = Vec::with_capacity(FIXED_LEN + 64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(prev_hash);
    out.extend_from_slice(node_key);
    out.extend_from_slice(&e.incarnation.to_le_bytes());
    out.extend_from_slice(&e.interval_start_ms.to_le_bytes());
    out.extend_from_slice(&e.interval_end_ms.to_le_bytes());
    for f in [&e.counts, &e.peaks] {
        for v in [
            f.calls,
            f.emergency_calls,
            f.registered_subscribers,
            f.provisioned_subscribers,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.push(u8::from(e.license_serial.is_some()));
    out.extend_from_slice(&e.license_serial.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&e.state_resets.to_le_bytes());
    push_short(&mut out, &e.node_id, NODE_ID_LEN_MAX);
    push_short(&mut out, &e.license_status, STATUS_LEN_MAX);
    let denied = &e.denied[..e.denied.len().min(DENIED_CODES_MAX)];
    out.push(denied.len() as u8);
    for (code, count) in denied {
        push_short(&mut out, code, STATUS_LEN_MAX);
        out.extend_from_slice(&count.to_le_bytes());
    }
    debug_assert!(out.len() <= ENTRY_BODY_LEN_MAX);
    out
}

/// A length byte and the text, cut at `max` bytes (on a character boundary).
fn push_short(out: &mut Vec<u8>, text: &str, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&text.as_bytes()[..end]);
}

fn decode_body(body: &[u8]) -> Result<SignedEntry, DecodeError> {
    let mut r = Reader { bytes: body, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(DecodeError::Magic);
    }
    let seq = r.u64()?;
    let prev_hash = r.array32()?;
    let node_key = r.array32()?;
    let incarnation = r.u64()?;
    let interval_start_ms = r.u64()?;
    let interval_end_ms = r.u64()?;
    let mut figures = [Figures::default(); 2];
    for f in &mut figures {
        *f = Figures {
            calls: r.u64()?,
            emergency_calls: r.u64()?,
            registered_subscribers: r.u64()?,
            provisioned_subscribers: r.u64()?,
        };
    }
    let flag = r.take(1)?[0];
    let serial = r.u64()?;
    let license_serial = match flag {
        0 => None,
        1 => Some(serial),
        other => return Err(DecodeError::Flag(other)),
    };
    let state_resets = r.u64()?;
    let node_id = r.short("node_id", NODE_ID_LEN_MAX)?;
    let license_status = r.short("license_status", STATUS_LEN_MAX)?;
    let count = r.take(1)?[0] as usize;
    if count > DENIED_CODES_MAX {
        return Err(DecodeError::TooLong {
            field: "denied",
            len: count,
        });
    }
    let mut denied = Vec::with_capacity(count);
    for _ in 0..count {
        let code = r.short("denied code", STATUS_LEN_MAX)?;
        denied.push((code, r.u64()?));
    }
    if r.at != body.len() {
        return Err(DecodeError::Trailing(body.len() - r.at));
    }
    Ok(SignedEntry {
        seq,
        prev_hash,
        node_key,
        entry: Entry {
            node_id,
            incarnation,
            interval_start_ms,
            interval_end_ms,
            counts: figures[0],
            peaks: figures[1],
            license_serial,
            license_status,
            denied,
            state_resets,
        },
        signature: [0; 64],
        body: body.to_vec(),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.bytes.len() - self.at;
        if n > available {
            return Err(DecodeError::Truncated {
                needed: n,
                available,
            });
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn array32(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }

    fn short(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.take(1)?[0] as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len });
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Text { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(node_id: &str, end_ms: u64) -> Entry {
        Entry {
            node_id: node_id.into(),
            incarnation: 3,
            interval_start_ms: end_ms - 60_000,
            interval_end_ms: end_ms,
            counts: Figures {
                calls: 12,
                emergency_calls: 1,
                registered_subscribers: 40,
                provisioned_subscribers: 100,
            },
            peaks: Figures {
                calls: 20,
                emergency_calls: 2,
                registered_subscribers: 41,
                provisioned_subscribers: 100,
            },
            license_serial: Some(9),
            license_status: "OK".into(),
            denied: vec![("OVER_LIMIT".into(), 4)],
            state_resets: 0,
        }
    }

    #[test]
    fn entry_round_trips_and_verifies() {
        let key = NodeKey::from_seed(&[7; 32]);
        let e = SignedEntry::sign(&key, 5, [1; 32], sample("n1", 1_000_000));
        let bytes = e.encode();
        assert_eq!(bytes.len(), 4 + e.body().len() + 64);
        let (back, used) = SignedEntry::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, e);
        assert!(back.signature_valid());
        assert_eq!(back.hash(), e.hash());
    }

    #[test]
    fn fixed_layout_offsets_match_the_spec() {
        // docs/ledger.md: seq at body offset 4, prev_hash at 12, node key at 44,
        // incarnation at 76, interval at 84 / 92, counts at 100, peaks at 132,
        // serial flag at 164, serial at 165, state resets at 173, node id length at 181.
        let key = NodeKey::from_seed(&[7; 32]);
        let e = SignedEntry::sign(&key, 0x0102, [0xAA; 32], sample("node-1", 5_000_000));
        let b = e.body();
        assert_eq!(&b[0..4], b"TGL1");
        assert_eq!(u64::from_le_bytes(b[4..12].try_into().unwrap()), 0x0102);
        assert_eq!(&b[12..44], &[0xAA; 32]);
        assert_eq!(&b[44..76], &key.public());
        assert_eq!(u64::from_le_bytes(b[76..84].try_into().unwrap()), 3);
        assert_eq!(
            u64::from_le_bytes(b[92..100].try_into().unwrap()),
            5_000_000
        );
        assert_eq!(u64::from_le_bytes(b[100..108].try_into().unwrap()), 12);
        assert_eq!(u64::from_le_bytes(b[132..140].try_into().unwrap()), 20);
        assert_eq!(b[164], 1);
        assert_eq!(u64::from_le_bytes(b[165..173].try_into().unwrap()), 9);
        assert_eq!(b[181], 6);
        assert_eq!(&b[182..188], b"node-1");
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_body_breaks_the_signature_or_the_decoding() {
        let key = NodeKey::from_seed(&[9; 32]);
        let bytes = SignedEntry::sign(&key, 1, [0; 32], sample("n", 2_000_000)).encode();
        for i in 4..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            if let Ok((e, _)) = SignedEntry::decode(&b) {
                assert!(!e.signature_valid(), "flip at {i} went unnoticed");
            }
        }
    }

    #[test]
    fn public_keys_read_as_base64_or_hex() {
        let key = NodeKey::from_seed(&[3; 32]).public();
        assert_eq!(parse_public_key(&public_key_text(&key)), Some(key));
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_public_key(&hex), Some(key));
        assert_eq!(parse_public_key("nope"), None);
    }

    proptest! {
        #[test]
        fn decoding_never_panics_and_lengths_add_up(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (entries, bad) = decode_frames(&bytes);
            let used: usize = entries.iter().map(|e| e.encode().len()).sum();
            match bad {
                Some((at, _)) => prop_assert_eq!(at, used),
                None => prop_assert_eq!(used, bytes.len()),
            }
        }

        #[test]
        fn any_entry_round_trips(calls in any::<u64>(), serial in proptest::option::of(any::<u64>()),
                                 node in "[a-z0-9-]{1,40}", status in "[A-Z_]{0,20}") {
            let key = NodeKey::from_seed(&[1; 32]);
            let mut e = sample(&node, 10_000_000);
            e.counts.calls = calls;
            e.license_serial = serial;
            e.license_status = status;
            let s = SignedEntry::sign(&key, calls, [2; 32], e);
            let (back, _) = SignedEntry::decode(&s.encode()).unwrap();
            prop_assert_eq!(back, s);
        }
    }
}
