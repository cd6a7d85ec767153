//! Fuzzes the usage-ledger decoder and verifier (`tollgate_ledger::decode_frames`, `verify`).
//!
//! Invariants, beyond "never panics":
//! - the decoded frames and the bad one's offset account for the input: the decoded
//!   entries re-encode to exactly the bytes before the offset (all of the input when no
//!   frame failed);
//! - verifying arbitrary bytes, with or without a key, gives a report and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_ledger::{decode_frames, verify};

fuzz_target!(|data: &[u8]| {
    let (entries, bad) = decode_frames(data);
    let end = bad.as_ref().map_or(data.len(), |(at, _)| *at);
    assert!(end <= data.len());
    let mut again = Vec::with_capacity(end);
    for entry in &entries {
        again.extend_from_slice(&entry.encode());
    }
    assert_eq!(
        again.as_slice(),
        &data[..end],
        "decoded frames re-encode to their bytes"
    );

    let _ = verify(data, None, false);
    let _ = verify(data, None, true);
});
