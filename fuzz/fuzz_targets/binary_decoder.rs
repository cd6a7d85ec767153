//! Fuzzes the binary batch decoder (`tollgate_events::binary::decode`).
//!
//! Invariants, beyond "never panics":
//! - items are bounded: at most `count + 1` and at most one per input byte (one for an empty
//!   or rejected datagram);
//! - a rejected datagram yields exactly one error and no sequence header;
//! - the encoder rebuilds a datagram from the decoded sequence header and events that
//!   decodes to exactly the same, with no error;
//! - the encoding is canonical: a datagram that decodes without any error is byte for byte
//!   what the encoder builds from it;
//! - events whose fields suit the text protocol survive it too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_events::{Event, Events, Malformed, binary, text};

fuzz_target!(|data: &[u8]| {
    let datagram = binary::decode(data);
    let seq = datagram.seq;
    let items: Vec<Result<Event<'_>, Malformed>> = datagram.events.clone().collect();

    // Bounded output.
    assert!(items.len() <= data.len().max(1));
    if let Events::Rejected(_) = datagram.events {
        assert_eq!(items.len(), 1);
        assert!(matches!(
            items[0],
            Err(Malformed::BadHeader | Malformed::BadVersion)
        ));
        assert!(seq.is_none());
        return;
    }
    let count = usize::from(u16::from_be_bytes([data[6], data[7]]));
    assert!(items.len() <= count + 1);
    let ok_count = items.iter().filter(|item| item.is_ok()).count();
    assert!(ok_count <= count);
    // Trailing bytes are reported once, last.
    if let Some(i) = items
        .iter()
        .position(|item| *item == Err(Malformed::TrailingBytes))
    {
        assert_eq!(i, items.len() - 1);
    }

    // Rebuild with the encoder.
    let seq_header = seq.map(|seq| {
        let sender: [u8; 8] = seq.sender.try_into().expect("a binary sender is 8 bytes");
        (sender, seq.n)
    });
    let mut encoder = binary::Encoder::new(usize::MAX);
    encoder.reset(seq_header);
    let events: Vec<Event<'_>> = items.iter().filter_map(|item| item.ok()).collect();
    for event in &events {
        encoder.push(event).expect("a decoded event re-encodes");
    }
    let again = binary::decode(encoder.as_bytes());
    assert_eq!(again.seq, seq);
    let again: Vec<_> = again.events.collect();
    assert_eq!(again, events.iter().map(|&e| Ok(e)).collect::<Vec<_>>());

    // Canonical encoding.
    if items.iter().all(|item| item.is_ok()) {
        assert_eq!(encoder.as_bytes(), data);
    }

    // Through the text protocol, for the events whose keys it can carry.
    for event in &events {
        let mut line = Vec::new();
        if text::write_event(event, &mut line).is_ok() {
            assert_eq!(text::decode_line(&line), Ok(*event));
        }
    }
});
