//! Is it authentic, and is it acceptable here and now: every refusal, data-driven.

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{at, document, key, now, signed, trusted};
use tollgate_license::{
    Context, Document, FormatError, Refusal, StatusCode, TrustedKeys, VerifyError, armor,
};

/// What verification should say about a text.
#[derive(Debug)]
enum Expect {
    Ok,
    Malformed,
    UnknownKey,
    BadSignature,
}

#[track_caller]
fn check(name: &str, text: &str, trusted: &TrustedKeys, expected: Expect) {
    let result = tollgate_license::verify(text.as_bytes(), trusted);
    match (&result, &expected) {
        (Ok(license), Expect::Ok) => {
            assert_eq!(
                license.armored(),
                signed(license.document()),
                "{name}: canonical text"
            );
        }
        (Err(VerifyError::Malformed(_)), Expect::Malformed)
        | (Err(VerifyError::UnknownKey(_)), Expect::UnknownKey)
        | (Err(VerifyError::BadSignature(_)), Expect::BadSignature) => {
            let error = result.expect_err("an error");
            assert_eq!(error.code(), StatusCode::Invalid);
            let message = error.to_string();
            assert!(!message.ends_with('.'), "{name}: {message}");
            assert!(message.starts_with(char::is_lowercase), "{name}: {message}");
        }
        _ => panic!("{name}: expected {expected:?}, got {result:?}"),
    }
}

/// Replaces the first occurrence of `from` inside the body only.
fn in_body(text: &str, from: &str, to: &str) -> String {
    let end = text.find(armor::END_LICENSE).expect("armor");
    let head = text[..end].replacen(from, to, 1);
    assert_ne!(head, text[..end], "{from} is in the body");
    format!("{head}{}", &text[end..])
}

/// Flips one bit of the decoded signature and re-encodes it.
fn flip_signature_bit(text: &str, byte: usize) -> String {
    let start = text.find("signature = \"").expect("signature line") + 13;
    let encoded = &text[start..start + 88];
    let mut signature = BASE64.decode(encoded).expect("base64");
    signature[byte] ^= 1;
    text.replace(encoded, &BASE64.encode(signature))
}

#[test]
fn verification_refuses_every_forgery() {
    let good = signed(&document());
    let keys = trusted(&[1]);
    let cases: Vec<(&str, String, TrustedKeys, Expect)> = vec![
        ("as signed", good.clone(), keys.clone(), Expect::Ok),
        (
            "one digit of a limit",
            in_body(&good, "calls = 100", "calls = 900"),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "one letter of the customer",
            in_body(&good, "Example", "Fxample"),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "mode warn to enforce",
            in_body(&good, "\"warn\"", "\"enforce\""),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "an added comment",
            in_body(&good, "[policy]", "# hi\n[policy]"),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "re-indented feature",
            in_body(&good, "    \"fax\"", "  \"fax\""),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "first signature bit",
            flip_signature_bit(&good, 0),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "last signature bit",
            flip_signature_bit(&good, 63),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "middle signature bit",
            flip_signature_bit(&good, 31),
            keys.clone(),
            Expect::BadSignature,
        ),
        (
            "unknown key",
            good.clone(),
            trusted(&[2, 3]),
            Expect::UnknownKey,
        ),
        (
            "no trusted keys",
            good.clone(),
            TrustedKeys::new(),
            Expect::UnknownKey,
        ),
        (
            "key id swapped for another trusted key",
            good.replace(&key(1).key_id().to_string(), &key(2).key_id().to_string()),
            trusted(&[1, 2]),
            Expect::BadSignature,
        ),
        (
            "rotation: old key still trusted",
            good.clone(),
            trusted(&[2, 1]),
            Expect::Ok,
        ),
        (
            "CRLF from a mail client",
            good.replace('\n', "\r\n"),
            keys.clone(),
            Expect::Ok,
        ),
        (
            "old Mac CR",
            good.replace('\n', "\r"),
            keys.clone(),
            Expect::Ok,
        ),
        (
            "padded, blank lines, BOM",
            format!(
                "\u{feff}\n\n   {}\n\n  \t\n",
                good.replace('\n', " \t\n")
                    .replace(armor::END_LICENSE, &format!("{}\n\n", armor::END_LICENSE))
            ),
            keys.clone(),
            Expect::Ok,
        ),
        (
            "a greeting before it",
            format!("Dear customer,\n{good}"),
            keys.clone(),
            Expect::Malformed,
        ),
        (
            "quoted by a mail client",
            good.lines().map(|l| format!("> {l}\n")).collect(),
            keys.clone(),
            Expect::Malformed,
        ),
        (
            "truncated",
            good[..good.len() / 2].to_owned(),
            keys.clone(),
            Expect::Malformed,
        ),
        ("empty", String::new(), keys.clone(), Expect::Malformed),
        (
            "binary",
            "\u{0}\u{1}\u{2}".to_owned(),
            keys.clone(),
            Expect::Malformed,
        ),
        (
            "upper-case key id",
            good.replace(
                &key(1).key_id().to_string(),
                &key(1).key_id().to_string().to_uppercase(),
            ),
            keys.clone(),
            Expect::Malformed,
        ),
    ];
    for (name, text, trusted, expected) in cases {
        check(name, &text, &trusted, expected);
    }
}

#[test]
fn a_signed_body_that_is_not_a_document_is_malformed_not_trusted() {
    // The vendor's own key signs a body whose key id does not match: refused after the
    // signature check.
    let mut other = document();
    other.key_id = key(2).key_id();
    let body = other.to_body();
    let parts = tollgate_license::Armor {
        signature: [0; 64],
        key_id: key(1).key_id(),
        body,
    };
    assert!(matches!(
        tollgate_license::parse(parts.to_text().as_bytes()),
        Err(FormatError::KeyIdMismatch { .. })
    ));
}

#[test]
fn parse_reads_without_trusting() {
    let text = signed(&document());
    let parsed = tollgate_license::parse(text.as_bytes()).expect("parses");
    assert_eq!(parsed.document.key_id, key(1).key_id());
    assert_eq!(parsed.armor.to_text(), text);
    // Parsing does not check the signature: a tampered copy still parses (for display).
    let tampered = in_body(&text, "calls = 100", "calls = 900");
    let parsed = tollgate_license::parse(tampered.as_bytes()).expect("parses");
    assert_eq!(parsed.document.limits.calls, Some(900));
}

#[test]
fn signing_is_deterministic_and_sets_the_key_id() {
    let mut unsigned = document();
    unsigned.key_id = key(9).key_id();
    let text = tollgate_license::sign(&unsigned, &key(3)).expect("signs");
    assert_eq!(
        text,
        tollgate_license::sign(&unsigned, &key(3)).expect("signs")
    );
    let license = tollgate_license::verify(text.as_bytes(), &trusted(&[3])).expect("verifies");
    assert_eq!(license.key_id(), key(3).key_id());
    let mut invalid = document();
    invalid.valid_until = None;
    assert!(tollgate_license::sign(&invalid, &key(1)).is_err());
}

/// `(name, change to the document, change to the context, expected refusal code)`.
type Case = (
    &'static str,
    fn(&mut Document),
    fn(&mut Context<'static>),
    Option<StatusCode>,
);

#[test]
fn acceptance_refuses_with_a_distinct_reason() {
    const FIVE_MIN: Duration = Duration::from_secs(5 * 60);
    const MS: Duration = Duration::from_millis(1);
    let cases: &[Case] = &[
        ("plain", |_| {}, |_| {}, None),
        (
            "same serial as seen",
            |_| {},
            |c| c.serial_seen_max = Some(7),
            None,
        ),
        (
            "lower serial than seen",
            |_| {},
            |c| c.serial_seen_max = Some(8),
            Some(StatusCode::Rollback),
        ),
        (
            "higher serial than seen",
            |_| {},
            |c| c.serial_seen_max = Some(6),
            None,
        ),
        (
            "clock 5 min behind the record",
            |_| {},
            |c| c.time_recorded_max = Some(c.now + FIVE_MIN),
            None,
        ),
        (
            "clock set back beyond 5 min",
            |_| {},
            |c| c.time_recorded_max = Some(c.now + FIVE_MIN + MS),
            Some(StatusCode::Invalid),
        ),
        (
            "clock ahead of the record",
            |_| {},
            |c| c.time_recorded_max = Some(c.now - MS),
            None,
        ),
        (
            "host bound, host listed",
            |d| d.host_ids = vec!["node-a".into(), "node-b".into()],
            |c| c.host_id = Some("NODE-B"),
            None,
        ),
        (
            "host bound, other host",
            |d| d.host_ids = vec!["node-a".into()],
            |c| c.host_id = Some("node-c"),
            Some(StatusCode::HostMismatch),
        ),
        (
            "host bound, host id unknown",
            |d| d.host_ids = vec!["node-a".into()],
            |_| {},
            Some(StatusCode::HostMismatch),
        ),
        (
            "unbound, any host",
            |_| {},
            |c| c.host_id = Some("anything"),
            None,
        ),
        (
            "valid from now",
            |d| d.valid_from = common::now(),
            |_| {},
            None,
        ),
        (
            "valid from 1 ms later",
            |d| d.valid_from = common::now() + Duration::from_millis(1),
            |_| {},
            Some(StatusCode::NotYetValid),
        ),
        (
            "rollback wins over host and not yet valid",
            |d| {
                d.host_ids = vec!["x".into()];
                d.valid_from = common::now() + Duration::from_millis(1);
            },
            |c| c.serial_seen_max = Some(100),
            Some(StatusCode::Rollback),
        ),
        (
            "clock wins over rollback",
            |_| {},
            |c| {
                c.serial_seen_max = Some(100);
                c.time_recorded_max = Some(tollgate_events::WallTime::from_unix_ms(u64::MAX));
            },
            Some(StatusCode::Invalid),
        ),
        (
            "expired is not a refusal",
            |_| {},
            |c| c.now = at("2030-01-01T00:00:00Z"),
            None,
        ),
    ];
    for &(name, change_document, change_context, expected) in cases {
        let mut doc = document();
        change_document(&mut doc);
        let license =
            tollgate_license::verify(signed(&doc).as_bytes(), &trusted(&[1])).expect("authentic");
        let mut context = Context::at(now());
        change_context(&mut context);
        let result = license.check(&context);
        assert_eq!(
            result.as_ref().err().map(Refusal::code),
            expected,
            "{name}: {result:?}"
        );
        let combined = tollgate_license::verify_and_check(
            license.armored().as_bytes(),
            &trusted(&[1]),
            &context,
        );
        assert_eq!(combined.err().map(|e| e.code()), expected, "{name}");
        if let Err(refusal) = result {
            let message = refusal.to_string();
            assert!(message.starts_with(char::is_lowercase) && !message.ends_with('.'));
        }
    }
}
