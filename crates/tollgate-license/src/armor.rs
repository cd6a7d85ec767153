//! The armored text form: a license block holding the body (the signed bytes) and a
//! signature block naming the key. `docs/license-format.md` is the byte-level spec.
//!
//! ```text
//! -----BEGIN TOLLGATE LICENSE-----
//! <body: TOML, every line ending in LF>
//! -----END TOLLGATE LICENSE-----
//! -----BEGIN TOLLGATE SIGNATURE-----
//! key_id = "<16 lower-case hex digits>"
//! signature = "<base64 of the 64-byte Ed25519 signature>"
//! -----END TOLLGATE SIGNATURE-----
//! ```
//!
//! Reading first normalizes the text ([`normalize`]), so what e-mail clients and web forms
//! do to line endings and surrounding white space does not matter; everything else must be
//! exactly as written.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::document::{BODY_LEN_MAX, DocumentError};
use crate::keys::KeyId;

pub const BEGIN_LICENSE: &str = "-----BEGIN TOLLGATE LICENSE-----";
pub const END_LICENSE: &str = "-----END TOLLGATE LICENSE-----";
pub const BEGIN_SIGNATURE: &str = "-----BEGIN TOLLGATE SIGNATURE-----";
pub const END_SIGNATURE: &str = "-----END TOLLGATE SIGNATURE-----";

/// Longest armored text accepted, before normalization: the longest body plus room for the
/// armor lines and for CRLF line endings.
pub const LICENSE_TEXT_LEN_MAX: usize = 2 * BODY_LEN_MAX + 1024;

/// What comes first in the signed message (domain separation), followed by the key id's
/// 16 hex digits, a NUL byte, and the body.
pub const SIGNATURE_CONTEXT: &[u8] = b"tollgate-license-v1\0";

/// Length of the base64 text of a 64-byte signature.
const SIGNATURE_TEXT_LEN: usize = 88;

/// Why a license text could not be read (before any signature check).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("license text is longer than {LICENSE_TEXT_LEN_MAX} bytes")]
    TooLong,
    #[error("license text is not UTF-8")]
    NotUtf8,
    #[error("armor: {0}")]
    Armor(&'static str),
    #[error("signature is not base64 of 64 bytes")]
    Signature,
    #[error("body: {0}")]
    Body(#[from] DocumentError),
    #[error("the body names key id {body} but the signature block names {armor}")]
    KeyIdMismatch { body: KeyId, armor: KeyId },
}

/// Normalizes a license text, deterministically, before anything else reads it:
///
/// 1. the text must be at most [`LICENSE_TEXT_LEN_MAX`] bytes and UTF-8;
/// 2. CR LF and lone CR become LF;
/// 3. spaces and tabs at the end of every line are removed;
/// 4. spaces, tabs, LFs and byte-order marks (U+FEFF) at the start and at the end of the
///    whole text are removed, and one LF is appended.
///
/// Nothing else changes: no other character is added, removed or replaced, and leading
/// white space inside the text is kept.
pub fn normalize(text: &[u8]) -> Result<String, FormatError> {
    if text.len() > LICENSE_TEXT_LEN_MAX {
        return Err(FormatError::TooLong);
    }
    let text = std::str::from_utf8(text).map_err(|_| FormatError::NotUtf8)?;
    let mut out = String::with_capacity(text.len() + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str(rest[..end].trim_end_matches([' ', '\t']));
        rest = &rest[end..];
        if let Some(after) = rest.strip_prefix("\r\n") {
            rest = after;
        } else if !rest.is_empty() {
            rest = &rest[1..];
        } else {
            break;
        }
        out.push('\n');
    }
    let trimmed = out.trim_matches([' ', '\t', '\n', '\u{feff}']);
    let mut normalized = String::with_capacity(trimmed.len() + 1);
    normalized.push_str(trimmed);
    normalized.push('\n');
    Ok(normalized)
}

/// An armored license split into its parts. The signature is not checked here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armor {
    /// The body: exactly the signed bytes (every line ends in LF).
    pub body: String,
    pub key_id: KeyId,
    pub signature: [u8; 64],
}

impl Armor {
    /// Normalizes `text` (see [`normalize`]) and splits it. Besides white space around the
    /// two blocks and blank lines between them, nothing may surround them.
    pub fn parse(text: &[u8]) -> Result<Armor, FormatError> {
        let normalized = normalize(text)?;
        let mut lines = normalized.split_terminator('\n');
        if lines.next() != Some(BEGIN_LICENSE) {
            return Err(FormatError::Armor(
                "the text must start with the BEGIN LICENSE line",
            ));
        }
        let mut body = String::with_capacity(normalized.len());
        loop {
            match lines.next() {
                None => return Err(FormatError::Armor("no END LICENSE line")),
                Some(END_LICENSE) => break,
                Some(line) if line.starts_with("-----") => {
                    return Err(FormatError::Armor("an armor line inside the body"));
                }
                Some(line) => {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
        if body.trim().is_empty() {
            return Err(FormatError::Armor("empty body"));
        }
        if body.len() > BODY_LEN_MAX {
            return Err(FormatError::Body(DocumentError::TooLong));
        }
        let mut next = lines.next();
        while next == Some("") {
            next = lines.next();
        }
        if next != Some(BEGIN_SIGNATURE) {
            return Err(FormatError::Armor(
                "expected the BEGIN SIGNATURE line after the body",
            ));
        }
        let key_id = lines
            .next()
            .and_then(|line| quoted_value(line, "key_id = \""))
            .ok_or(FormatError::Armor("expected `key_id = \"<key id>\"`"))?
            .parse()
            .map_err(|_| FormatError::Armor("the key id is not 16 lower-case hex digits"))?;
        let signature = lines
            .next()
            .and_then(|line| quoted_value(line, "signature = \""))
            .ok_or(FormatError::Armor("expected `signature = \"<base64>\"`"))?;
        if signature.len() != SIGNATURE_TEXT_LEN {
            return Err(FormatError::Signature);
        }
        let signature = BASE64
            .decode(signature)
            .map_err(|_| FormatError::Signature)?;
        let signature = <[u8; 64]>::try_from(signature).map_err(|_| FormatError::Signature)?;
        if lines.next() != Some(END_SIGNATURE) {
            return Err(FormatError::Armor("expected the END SIGNATURE line"));
        }
        if lines.next().is_some() {
            return Err(FormatError::Armor("text after the END SIGNATURE line"));
        }
        Ok(Armor {
            body,
            key_id,
            signature,
        })
    }

    /// The canonical armored text (LF line endings, no blank lines, a final LF). Parsing
    /// it gives back `self`.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.body.len() + 256);
        for part in [
            BEGIN_LICENSE,
            "\n",
            &self.body,
            END_LICENSE,
            "\n",
            BEGIN_SIGNATURE,
            "\n",
        ] {
            text.push_str(part);
        }
        text.push_str(&format!("key_id = \"{}\"\n", self.key_id));
        text.push_str(&format!(
            "signature = \"{}\"\n",
            BASE64.encode(self.signature)
        ));
        text.push_str(END_SIGNATURE);
        text.push('\n');
        text
    }

    /// The bytes the signature covers: [`SIGNATURE_CONTEXT`], the key id in hex, NUL, the
    /// body.
    pub fn signed_message(key_id: KeyId, body: &str) -> Vec<u8> {
        let mut message =
            Vec::with_capacity(SIGNATURE_CONTEXT.len() + KeyId::TEXT_LEN + 1 + body.len());
        message.extend_from_slice(SIGNATURE_CONTEXT);
        message.extend_from_slice(key_id.to_string().as_bytes());
        message.push(0);
        message.extend_from_slice(body.as_bytes());
        message
    }
}

/// `line` is `<prefix><value>"`: returns the value, which holds no `"`.
fn quoted_value<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let value = line.strip_prefix(prefix)?.strip_suffix('"')?;
    (!value.contains('"')).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_normalize(input: &str, expected: &str) {
        assert_eq!(
            normalize(input.as_bytes()).as_deref(),
            Ok(expected),
            "{input:?}"
        );
        // Normalizing twice changes nothing.
        assert_eq!(normalize(expected.as_bytes()).as_deref(), Ok(expected));
    }

    #[test]
    fn normalization_is_exactly_as_documented() {
        check_normalize("a\nb\n", "a\nb\n");
        check_normalize("a\r\nb\r\n", "a\nb\n");
        check_normalize("a\rb\r", "a\nb\n");
        check_normalize("a\r\r\nb", "a\n\nb\n");
        check_normalize("a  \t\nb \r\n", "a\nb\n");
        check_normalize("\u{feff}a\n", "a\n");
        check_normalize(" \u{feff}a \u{feff}\n\u{feff}", "a\n");
        check_normalize("a\u{feff}b\n", "a\u{feff}b\n");
        check_normalize("\n\n  \t a\n  b\n\n \n", "a\n  b\n");
        check_normalize("a\n\n\nb", "a\n\n\nb\n");
        check_normalize("", "\n");
        check_normalize("a\u{a0}\n", "a\u{a0}\n");
        assert_eq!(normalize(b"\xff\n"), Err(FormatError::NotUtf8));
        assert_eq!(
            normalize(&vec![b' '; LICENSE_TEXT_LEN_MAX + 1]),
            Err(FormatError::TooLong)
        );
    }

    fn sample() -> Armor {
        Armor {
            body: "version = 1\n\n[limits]\n".to_owned(),
            key_id: "0123456789abcdef".parse().expect("valid"),
            signature: [0xa5; 64],
        }
    }

    #[test]
    fn armor_round_trips() {
        let armor = sample();
        let text = armor.to_text();
        assert_eq!(Armor::parse(text.as_bytes()), Ok(armor.clone()));
        let mangled = format!("\r\n  {}\r\n\r\n", text.replace('\n', " \r\n"));
        assert_eq!(Armor::parse(mangled.as_bytes()), Ok(armor.clone()));
        let spaced = text.replace(END_LICENSE, &format!("{END_LICENSE}\n\n"));
        assert_eq!(Armor::parse(spaced.as_bytes()), Ok(armor));
    }

    #[track_caller]
    fn check_refused(text: &str, expected: FormatError) {
        assert_eq!(Armor::parse(text.as_bytes()), Err(expected), "{text}");
    }

    #[test]
    fn armor_is_strict_on_content() {
        let text = sample().to_text();
        let armor = FormatError::Armor;
        check_refused(
            &format!("Hello,\n{text}"),
            armor("the text must start with the BEGIN LICENSE line"),
        );
        check_refused(
            &format!("{text}Regards\n"),
            armor("text after the END SIGNATURE line"),
        );
        check_refused(
            &text.replace(END_LICENSE, "-----END TOLLGATE LICENCE-----"),
            armor("an armor line inside the body"),
        );
        check_refused(
            &text.replace(&format!("{END_LICENSE}\n"), ""),
            armor("an armor line inside the body"),
        );
        check_refused(
            &text.replace("key_id = ", "key_id ="),
            armor("expected `key_id = \"<key id>\"`"),
        );
        check_refused(
            &text.replace("0123456789abcdef", "0123456789ABCDEF"),
            armor("the key id is not 16 lower-case hex digits"),
        );
        check_refused(&text.replace("pQ==\"", "pR==\""), FormatError::Signature);
        check_refused(&text.replace("==\"", "\""), FormatError::Signature);
        check_refused(
            &text.replace(&format!("{END_SIGNATURE}\n"), ""),
            armor("expected the END SIGNATURE line"),
        );
        check_refused(
            &format!("{BEGIN_LICENSE}\n\n{END_LICENSE}\n"),
            armor("empty body"),
        );
        check_refused(
            &format!("{BEGIN_LICENSE}\nx\n"),
            armor("no END LICENSE line"),
        );
        check_refused(
            &format!("{BEGIN_LICENSE}\nx\n{END_LICENSE}\n"),
            armor("expected the BEGIN SIGNATURE line after the body"),
        );
        let long = format!(
            "{BEGIN_LICENSE}\n{}\n{END_LICENSE}\n",
            "#".repeat(BODY_LEN_MAX)
        );
        check_refused(&long, FormatError::Body(DocumentError::TooLong));
    }
}
