//! Property tests: tampering never verifies; documents and armor round-trip.

mod common;

use common::{document, signed, trusted};
use proptest::prelude::*;
use tollgate_events::WallTime;
use tollgate_license::{Document, Kind, Limits, Mode, Policy, TrustedKeys, armor};

fn verifying_text() -> (String, TrustedKeys) {
    (signed(&document()), trusted(&[1]))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Any single-byte change anywhere in the text (body, signature block, armor lines)
    /// fails verification, unless normalization maps it back to the same text (e.g. LF
    /// replaced by CR, or a trailing newline turned into a space).
    #[test]
    fn any_single_byte_change_fails_verification(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let (text, keys) = verifying_text();
        let mut bytes = text.clone().into_bytes();
        let at = position.index(bytes.len());
        prop_assume!(bytes[at] != byte);
        bytes[at] = byte;
        let result = tollgate_license::verify(&bytes, &keys);
        let same_after_normalizing = armor::normalize(&bytes).ok() == armor::normalize(text.as_bytes()).ok();
        if same_after_normalizing {
            prop_assert_eq!(result.map(|l| l.armored().to_owned()).ok(), Some(text));
        } else {
            prop_assert!(result.is_err(), "byte {} changed to {:#04x} still verifies", at, byte);
        }
    }

    /// The same for a change inside the body or the signature value only: always refused.
    #[test]
    fn any_change_to_body_or_signature_value_is_refused(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let (text, keys) = verifying_text();
        let body_start = armor::BEGIN_LICENSE.len() + 1;
        let body_end = text.find(armor::END_LICENSE).expect("armor");
        let signature_start = text.find("signature = \"").expect("armor") + 13;
        let mut ranges: Vec<usize> = (body_start..body_end).collect();
        ranges.extend(signature_start..signature_start + 88);
        let at = ranges[position.index(ranges.len())];
        let mut bytes = text.clone().into_bytes();
        // Whitespace-only changes at line ends are normalized away by design; change any
        // byte into a visible one so the change survives normalization.
        let byte = if byte.is_ascii_whitespace() { b'x' } else { byte };
        prop_assume!(bytes[at] != byte);
        bytes[at] = byte;
        prop_assert!(tollgate_license::verify(&bytes, &keys).is_err());
    }

    /// Valid documents survive body serialization and signing unchanged.
    #[test]
    fn documents_round_trip(document in valid_document()) {
        let body = document.to_body();
        prop_assert_eq!(Document::from_body(&body), Ok(document.clone()));
        let text = signed(&document);
        let license = tollgate_license::verify(text.as_bytes(), &trusted(&[1]));
        prop_assert_eq!(license.map(|l| l.document().clone()), Ok(document));
    }
}

fn valid_document() -> impl Strategy<Value = Document> {
    let token = "[A-Za-z0-9_.-]{1,20}";
    (
        (token, "[^\\p{Cc}]{1,40}", 0..=3u8, 0..=i64::MAX as u64),
        (
            0..4_000_000_000_000u64,
            1..1_000_000_000_000u64,
            proptest::option::of(0..253_402_300_799_999u64),
        ),
        (
            proptest::option::of(0..=1u64 << 40),
            proptest::option::of(0..=1u64 << 40),
            proptest::option::of(0..=1u64 << 40),
        ),
        (
            proptest::collection::btree_set(token, 0..8),
            proptest::collection::btree_set("[!#-\\[\\]-~]{1,30}", 0..4),
        ),
        (any::<bool>(), 1..=100u8, 0..=100u8, any::<bool>()),
    )
        .prop_map(
            |(
                (key, customer, kind, serial),
                (from, span, lease),
                (calls, subs, regs),
                (features, hosts),
                (enforce, warn, grace, exempt),
            )| {
                let kind = [Kind::Perpetual, Kind::Term, Kind::Subscription][usize::from(kind % 3)];
                let mut hosts: Vec<String> = hosts.into_iter().collect();
                hosts.sort_by_key(|h| h.to_ascii_lowercase());
                hosts.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
                Document {
                    license_key: key,
                    customer,
                    kind,
                    serial,
                    issued_at: WallTime::from_unix_ms(from),
                    valid_from: WallTime::from_unix_ms(from),
                    valid_until: (kind != Kind::Perpetual)
                        .then_some(WallTime::from_unix_ms(from + span)),
                    signature_valid_until: lease.map(WallTime::from_unix_ms),
                    limits: Limits {
                        calls,
                        subscribers: subs,
                        registered_subscribers: regs,
                    },
                    features: features.into_iter().collect(),
                    host_ids: hosts,
                    policy: Policy {
                        mode: if enforce { Mode::Enforce } else { Mode::Warn },
                        warn_at_pct: warn,
                        grace_pct: grace,
                        emergency_exempt: exempt,
                    },
                    key_id: common::key(1).key_id(),
                }
            },
        )
}
