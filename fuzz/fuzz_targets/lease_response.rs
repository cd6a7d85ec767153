//! Fuzzes the license client's response and request parsers (`tollgate-license-client`'s
//! `wire` module): the lease response an agent reads from the network, and the usage
//! report and lease request the server reads.
//!
//! Invariants, beyond "never panics":
//! - an accepted lease response carries a license text that parses (armor and body) and
//!   whose document matches every envelope field; re-encoded, it parses to the same value;
//! - a real lease response with one byte changed (position and value from the input) is
//!   either refused or still self-consistent (the previous invariant), never accepted with
//!   an envelope that lies about the document;
//! - an accepted usage report is within its bounds and round-trips; an accepted lease
//!   request round-trips.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_license::{LicenseSpec, SigningKey};
use tollgate_license_client::wire::{
    LEASE_RESPONSE_LEN_MAX, parse_error_body, parse_lease_request, parse_lease_response,
    parse_usage_report,
};
use tollgate_license_client::{Contract, LeaseResponse};

/// A real lease response for a subscription, signed by a fixed key.
fn real_response() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| {
        let key = SigningKey::from_seed(&[0x42; 32]);
        let spec = LicenseSpec::parse(
            "license_key = \"FUZZ_1\"\ncustomer = \"Fuzz Co\"\nkind = \"subscription\"\n\
             serial = 9\nvalid_until = \"2030-01-01T00:00:00Z\"\nlease_days = 14\n\
             features = [\"a\"]\n[limits]\ncalls = 10\n",
        )
        .expect("the fixed spec parses");
        let document = spec
            .to_document(key.key_id(), tollgate_events::WallTime::from_unix_ms(1_800_000_000_000))
            .expect("the fixed spec is valid");
        let text = tollgate_license::sign(&document, &key).expect("signs");
        LeaseResponse::for_document(text, &document, Contract::Active, true)
            .expect("has a lease")
            .to_json()
    })
}

/// The invariants of an accepted lease response.
fn check_accepted(response: &LeaseResponse) {
    let parsed = tollgate_license::parse(response.license.as_bytes())
        .expect("an accepted response carries a parsable license");
    response
        .check_against(&parsed.document)
        .expect("an accepted envelope matches its document");
    let json = response.to_json();
    assert!(json.len() <= LEASE_RESPONSE_LEN_MAX + 64, "{}", json.len());
    let again = parse_lease_response(&json).expect("the re-encoded response parses");
    assert_eq!(&again, response);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = parse_lease_response(data) {
        check_accepted(&response);
    }

    if let Ok(report) = parse_usage_report(data) {
        report
            .validate()
            .expect("an accepted report is within bounds");
        assert_eq!(parse_usage_report(&report.to_json()), Ok(report));
    }

    if let Ok(request) = parse_lease_request(data) {
        assert_eq!(parse_lease_request(&request.to_json()), Ok(request));
    }

    let _ = parse_error_body(data);

    // One byte of a real response changed.
    if let [high, low, byte, ..] = *data {
        let mut mutated = real_response().to_vec();
        let at = usize::from(u16::from_be_bytes([high, low])) % mutated.len();
        mutated[at] = byte;
        if let Ok(response) = parse_lease_response(&mutated) {
            check_accepted(&response);
        }
    }
});
