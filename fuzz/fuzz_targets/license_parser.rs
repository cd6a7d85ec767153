//! Fuzzes the license parser and verifier (`tollgate-license`).
//!
//! Invariants, beyond "never panics":
//! - whatever parses (armor + body) re-serializes to the canonical text, which parses to the
//!   same armor and document; normalization is idempotent; a parsed body re-serialized by
//!   `Document::to_body` parses to the same document;
//! - verification of arbitrary input against a fixed trusted key never accepts (the fuzzer
//!   cannot sign), and refuses with a lower-case reason;
//! - a real signed license with one byte changed (position and value from the input) is
//!   refused, unless the change is one normalization undoes (then it verifies to the same
//!   canonical text);
//! - key lines, trusted-key lists and specs never panic, and what parses round-trips.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_license::{
    Armor, Document, LicenseSpec, PublicKey, SigningKey, TrustedKeys, normalize, parse, verify,
};

/// A key whose secret appears nowhere else: nothing the fuzzer finds can carry its signature.
fn trusted() -> &'static TrustedKeys {
    static KEYS: OnceLock<TrustedKeys> = OnceLock::new();
    KEYS.get_or_init(|| TrustedKeys::single(signing_key().public_key()))
}

fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed(&[0x5a; 32]))
}

/// A real license signed by that key, with every field set.
fn signed_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let spec = LicenseSpec::parse(
            "license_key = \"FUZZ_1\"\ncustomer = \"Fuzz \\\"Co\\\"\"\nkind = \"term\"\n\
             serial = 9\nvalid_until = \"2030-01-01T00:00:00Z\"\nlease_days = 14\n\
             features = [\"a\", \"b\"]\nhost_ids = [\"h1\"]\n[limits]\ncalls = 10\n\
             [policy]\nmode = \"enforce\"\n",
        )
        .expect("the fixed spec parses");
        let document = spec
            .to_document(signing_key().key_id(), tollgate_events::WallTime::from_unix_ms(1_800_000_000_000))
            .expect("the fixed spec is valid");
        tollgate_license::sign(&document, signing_key()).expect("signs")
    })
}

fuzz_target!(|data: &[u8]| {
    // Normalization: idempotent, and its output is what the armor parser reads.
    if let Ok(normalized) = normalize(data) {
        assert_eq!(
            normalize(normalized.as_bytes()).as_deref(),
            Ok(normalized.as_str())
        );
        assert!(normalized.ends_with('\n'));
    }

    // Armor alone.
    if let Ok(armor) = Armor::parse(data) {
        let text = armor.to_text();
        assert_eq!(Armor::parse(text.as_bytes()).as_ref(), Ok(&armor));
        assert!(armor.body.ends_with('\n'));
        assert!(armor.body.len() <= tollgate_license::BODY_LEN_MAX);
    }

    // Armor and body.
    if let Ok(parsed) = parse(data) {
        let text = parsed.armor.to_text();
        let again = parse(text.as_bytes()).expect("the canonical text parses");
        assert_eq!(again, parsed);
        let body = parsed.document.to_body();
        assert_eq!(Document::from_body(&body).as_ref(), Ok(&parsed.document));
    }

    // Verification of arbitrary input never accepts.
    match verify(data, trusted()) {
        Ok(license) => {
            // Only possible if the input is a normalization-equivalent of a text we signed.
            assert_eq!(
                license.armored(),
                signed_text(),
                "accepted an unsigned input"
            );
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with(char::is_lowercase), "{message}");
        }
    }

    // Bodies, specs and keys as plain text.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(document) = Document::from_body(text) {
            assert_eq!(
                Document::from_body(&document.to_body()),
                Ok(document.clone())
            );
            document.validate().expect("a parsed document is valid");
        }
        if let Ok(spec) = LicenseSpec::parse(text) {
            if let Ok(document) = spec.to_document(signing_key().key_id(), tollgate_events::WallTime::from_unix_ms(1_800_000_000_000)) {
                let signed = tollgate_license::sign(&document, signing_key()).expect("signs");
                let license = verify(signed.as_bytes(), trusted()).expect("what we sign verifies");
                assert_eq!(license.document(), &document);
            }
        }
        if let Ok(key) = PublicKey::from_file_str(text) {
            assert_eq!(PublicKey::from_file_str(&key.to_file_string()), Ok(key));
        }
        if let Ok(key) = SigningKey::from_file_str(text) {
            let again = SigningKey::from_file_str(&key.to_file_string()).expect("reads back");
            assert_eq!(again.public_key(), key.public_key());
        }
        let _ = TrustedKeys::parse(text);
    }

    // One byte of a real license changed: refused unless normalization undoes it.
    if let [high, low, byte, ..] = *data {
        let original = signed_text();
        let mut mutated = original.as_bytes().to_vec();
        let at = usize::from(u16::from_be_bytes([high, low])) % mutated.len();
        if mutated[at] != byte {
            mutated[at] = byte;
            let equivalent = normalize(&mutated).ok().as_deref() == Some(original);
            match verify(&mutated, trusted()) {
                Ok(license) => {
                    assert!(
                        equivalent,
                        "byte {at} changed to {byte:#04x} still verifies"
                    );
                    assert_eq!(license.armored(), original);
                }
                Err(_) => assert!(!equivalent, "a normalization-equivalent text was refused"),
            }
        }
    }
});
