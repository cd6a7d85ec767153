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
//! - keyed segments (version 4) are read with a fixed key along the MAC chain, and the
//!   records read re-encode, sealed along the same chain, to their bytes;
//! - the first input byte picks a mode: odd values wrap the rest in a valid record header
//!   and checksum (bit 1 set: a valid MAC under the fixed key instead), so the record body
//!   parser (receive time, datagram lengths, entries) sees arbitrary bodies instead of
//!   stopping at the check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_usage::journal::{
    Entry, JOURNAL_FORMAT_VERSION, KEYED_FORMAT_VERSION, MacChain, RECORD_HEADER_LEN,
    RecordBuilder, RecordKind, SEGMENT_HEADER_LEN, SegmentHeader, frame_record_body, records,
    records_keyed,
};

/// The MAC key of keyed inputs.
const KEY: [u8; 32] = [0x5a; 32];

fn check_records(bytes: &[u8], chain: Option<MacChain>) {
    let mut it = match &chain {
        None => records(bytes, SEGMENT_HEADER_LEN),
        Some(c) => records_keyed(bytes, SEGMENT_HEADER_LEN, c.clone()),
    };
    let mut seal = chain;
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
            let built_calls = builder
                .entries()
                .filter(|e| matches!(e, Entry::Call { .. }))
                .count();
            assert_eq!(built_calls, calls);
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
        let record = builder.finish();
        match &mut seal {
            None => again.extend_from_slice(record),
            Some(chain) => {
                let (header, next) = chain.seal(record);
                again.extend_from_slice(&header);
                again.extend_from_slice(&record[RECORD_HEADER_LEN..]);
                *chain = next;
            }
        }
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
        if mode & 2 == 0 {
            check_records(&record, None);
        } else {
            // Sealed with the fixed key, first in a segment.
            let head = SegmentHeader {
                segment: 1,
                fingerprint_key_id: 7,
                clock_offset_ms: 0,
            }
            .encode();
            let chain = MacChain::new(&KEY, &head);
            let (header, _) = chain.seal(&record);
            let mut sealed = header.to_vec();
            sealed.extend_from_slice(&record[RECORD_HEADER_LEN..]);
            check_records(&sealed, Some(chain));
        }
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
            let keyed = SegmentHeader::version(rest).is_some_and(|v| v >= KEYED_FORMAT_VERSION);
            let chain = keyed.then(|| {
                let mut head = [0u8; SEGMENT_HEADER_LEN];
                head.copy_from_slice(&rest[..SEGMENT_HEADER_LEN]);
                MacChain::new(&KEY, &head)
            });
            check_records(records_bytes, chain);
        }
        Err(_) => check_records(rest, None),
    }
});
