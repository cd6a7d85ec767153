//! `tollgate_usage::snapshot::decode` on arbitrary bytes.
//!
//! Asserts, beyond "never panics":
//! - anything that decodes is structurally valid (`Snapshot::validate`), and re-encodes to
//!   bytes that decode to an equal snapshot;
//! - restoring it into empty tables never panics and leaves counts that add up: calls and
//!   contacts equal what restore reports, never more than the snapshot holds, emergency
//!   calls never more than calls (a count gone "negative" would wrap to a huge value).
//!
//! The input is tried three times: as a whole file (exercising the header checks), as a
//! version-2 body framed with a valid header, and as version-3 frames wrapped in a valid
//! header and trailer (so the fuzzer reaches postcard without forging a blake3 hash). The
//! streaming restore (`Tables::restore_bytes`) of the framed input either fails and changes
//! nothing, or restores what `decode` decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_usage::snapshot::{decode, encode, frame_body, frame_frames};
use tollgate_usage::{FingerprintKey, Snapshot, Tables, TablesConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = decode(data) {
        check(snapshot);
    }
    if let Ok(snapshot) = decode(&frame_body(data)) {
        check(snapshot);
    }
    let framed = frame_frames(data);
    let decoded = decode(&framed);
    let tables = Tables::new(TablesConfig::default(), FingerprintKey([0; 32]));
    let restored = tables.restore_bytes(&framed);
    match &decoded {
        Ok(snapshot) if snapshot.fingerprint_key_id == tables.fingerprint_key_id() => {
            assert!(restored.is_ok(), "decodes but does not restore");
        }
        _ => {
            assert!(restored.is_err());
            assert_eq!(
                tables.usage(),
                Default::default(),
                "a refused file changed nothing"
            );
        }
    }
    if let Ok(snapshot) = decoded {
        check(snapshot);
    }
});

fn check(snapshot: Snapshot) {
    assert!(snapshot.validate().is_ok());
    let bytes = encode(&snapshot);
    let again = decode(&bytes).expect("a re-encoded snapshot decodes");
    assert_eq!(again, snapshot);

    let tables = Tables::new(
        TablesConfig {
            shard_count: 4,
            ..TablesConfig::default()
        },
        FingerprintKey([0; 32]),
    );
    let mut own = snapshot.clone();
    own.fingerprint_key_id = tables.fingerprint_key_id();
    let restored = tables
        .restore(snapshot.taken_at, &own)
        .expect("same key, valid snapshot");
    let usage = tables.usage();
    assert_eq!(usage.calls, restored.calls);
    assert_eq!(usage.registered_contacts, restored.contacts);
    assert!(usage.calls <= snapshot.calls.len() as u64);
    assert!(usage.emergency_calls <= usage.calls);
    assert!(usage.emergency_calls <= snapshot.emergency_call_count());
    assert!(usage.registered_contacts <= snapshot.contact_count());
    assert!(usage.registered_subscribers <= usage.registered_contacts);
    assert!(
        restored.calls + restored.contacts + restored.dropped_expired
            <= snapshot.calls.len() as u64 + snapshot.contact_count()
    );
    // A snapshot of the restored tables holds exactly what was restored.
    let back = tables.snapshot(snapshot.taken_at);
    assert_eq!(back.calls.len() as u64, usage.calls);
    assert_eq!(back.contact_count(), usage.registered_contacts);
}
