//! Fuzzes the OpenSIPS `event_datagram` decoder (`tollgate_opensips::decode`).
//!
//! Invariants, beyond "never panics":
//! - whatever decodes (even to "no event") looked like JSON (`looks_like_json`), so the
//!   agent's format detection never sends a notification to the other decoders;
//! - events carry non-empty identities, calls are never flagged emergency, and a From-tag
//!   is either absent or non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_events::MonoTime;
use tollgate_opensips::{decode, looks_like_json};
use tollgate_sip::OwnedEvent;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data, MonoTime::from_unix_secs(1_700_000_000));
    let Ok(event) = decoded else {
        return;
    };
    assert!(looks_like_json(data));
    match event {
        None => {}
        Some(OwnedEvent::CallStart { call, emergency }) => {
            assert!(!emergency);
            assert!(!call.call_id.is_empty());
            assert!(call.from_tag.is_none_or(|tag| !tag.is_empty()));
        }
        Some(OwnedEvent::CallStop { call } | OwnedEvent::CallRefresh { call }) => {
            assert!(!call.call_id.is_empty());
            assert!(call.from_tag.is_none_or(|tag| !tag.is_empty()));
        }
        Some(OwnedEvent::Register { aor, contact, .. }) => {
            assert!(!aor.is_empty() && !contact.is_empty());
        }
    }
});
