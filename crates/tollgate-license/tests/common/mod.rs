//! Fixtures shared by the integration tests.
#![allow(dead_code)]

use tollgate_events::WallTime;
use tollgate_license::timestamp::{DAY, parse_rfc3339};
use tollgate_license::{Document, Kind, Limits, Policy, SigningKey, TrustedKeys};

/// A UTC time, `2027-01-01T00:00:00Z` style.
pub fn at(text: &str) -> WallTime {
    parse_rfc3339(text).expect("a valid test time")
}

/// The test clock: 2027-06-01T00:00:00Z.
pub fn now() -> WallTime {
    at("2027-06-01T00:00:00Z")
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

pub fn trusted(seeds: &[u8]) -> TrustedKeys {
    let mut keys = TrustedKeys::new();
    for &seed in seeds {
        keys.insert(key(seed).public_key()).expect("room");
    }
    keys
}

/// A term license valid from 2027-01-01 to 2028-01-01, lease until 2027-06-15, limits
/// 100 calls / 1000 subscribers / 500 registered, warn mode, host-free; key 1 signs it.
pub fn document() -> Document {
    Document {
        license_key: "ABCDEFGHI_123456789_a1b2c3d4e5f6".to_owned(),
        customer: "Example Telecom".to_owned(),
        kind: Kind::Term,
        serial: 7,
        issued_at: at("2027-01-01T00:00:00Z"),
        valid_from: at("2027-01-01T00:00:00Z"),
        valid_until: Some(at("2028-01-01T00:00:00Z")),
        signature_valid_until: Some(now() + 14 * DAY),
        limits: Limits {
            calls: Some(100),
            subscribers: Some(1000),
            registered_subscribers: Some(500),
        },
        features: vec!["pbx".to_owned(), "fax".to_owned()],
        host_ids: Vec::new(),
        policy: Policy::default(),
        key_id: key(1).key_id(),
    }
}

pub fn signed(document: &Document) -> String {
    tollgate_license::sign(document, &key(1)).expect("signs")
}
