//! Fuzzes the journal decoder (`tollgate_usage::journal`): segment headers and records.
//!
//! Invariants, beyond "never panics":
//! - a header that decodes re-encodes to exactly the first `SEGMENT_HEADER_LEN` bytes (a
//!   version-1 header, still read, re-encodes as the current version to the same header);
//! - the records read before the reader stops re-encode (with `RecordBuilder`) to exactly
//!   the bytes they came from, `good_len` is their total length, and the reader reports an
//!   error exactly when it stopped before the end of the input;
//! - corrections records (reconciliation) re-encode the same way, from their owner and
//!   corrections, and events records (the receive loop's) from their entries, which never
//!   hold a call event by its fields (those go by fingerprint);
//! - the first input byte picks a mode: odd values wrap the rest in a valid record header
//!   and checksum, so the record body parser (receive time, datagram lengths) sees
//!   arbitrary bodies instead of stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_usage::journal::{
    Entry, JOURNAL_FORMAT_VERSION, RECORD_HEADER_LEN, RecordBuilder, RecordKind,
    SEGMENT_HEADER_LEN, SegmentHeader, frame_record_body, records,
};

fn check_records(bytes: &[u8]) {
    let mut it = records(bytes, SEGMENT_HEADER_LEN);
    let mut again = Vec::with_capacity(bytes.len());
    let mut builder = RecordBuilder::default();
    for record in it.by_ref() {
        if let Some(c) = record.corrections() {
            builder.corrections(record.now, c.owner, &c.corrections);
        } else if record.kind == RecordKind::Events {
            builder.begin_events(record.now);
            let mut calls = 0;
            for entry in record.entries() {
                assert!(builder.push_entry(&entry), "an entry read back re-encodes");
                calls += usize::from(matches!(entry, Entry::Call { .. }));
            }
            assert_eq!(builder.calls().len(), calls);
            assert_eq!(builder.entries().count(), record.entries().count());
        } else {
            assert!(
                !record.is_corrections(),
                "a corrections record that reads back"
            );
            builder.begin(record.now);
            for datagram in record.datagrams() {
                builder.push(datagram);
            }
        }
        again.extend_from_slice(builder.finish());
    }
    let good = it.good_len();
    assert!(good <= bytes.len());
    assert_eq!(
        again.as_slice(),
        &bytes[..good],
        "records re-encode to their bytes"
    );
    assert_eq!(
        it.error.is_some(),
        good < bytes.len(),
        "an error exactly when stopped early"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        // A valid record header around an arbitrary body.
        let record = frame_record_body(rest);
        assert_eq!(record.len(), RECORD_HEADER_LEN + rest.len());
        check_records(&record);
        return;
    }
    match SegmentHeader::decode(rest) {
        Ok((header, records_bytes)) => {
            let encoded = header.encode();
            if rest[6..8] == JOURNAL_FORMAT_VERSION.to_le_bytes() {
                assert_eq!(&encoded[..], &rest[..SEGMENT_HEADER_LEN]);
            } else {
                // An older version that still reads: writers write the current one, so the
                // re-encoding differs in the version (and so the checksum) but must decode
                // back to the same header.
                let (again, _) =
                    SegmentHeader::decode(&encoded).expect("re-encoded header decodes");
                assert_eq!(again, header);
            }
            check_records(records_bytes);
        }
        Err(_) => check_records(rest),
    }
});
