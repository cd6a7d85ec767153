//! Fuzzes the text decoder (`tollgate_events::text::decode`).
//!
//! Invariants, beyond "never panics":
//! - items are bounded: exactly one item (or the sequence header) per non-empty line, so at
//!   most one per input byte;
//! - every decoded event (and the sequence header) re-encodes with the crate's encoder, and
//!   the re-encoded datagram decodes to exactly the same sequence header and events, with
//!   no error;
//! - decoded fields never hold a space, CR or LF, and are 1..=255 bytes;
//! - the same events survive the binary format too (encode binary, decode, compare), except
//!   the `sync-*` lines, which are text only (the binary encoder refuses them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_events::{CallRef, Event, FIELD_LEN_MAX, SyncLine, binary, text};

fuzz_target!(|data: &[u8]| {
    let datagram = text::decode(data);
    let seq = datagram.seq;
    let items: Vec<_> = datagram.events.clone().collect();

    // Bounded output.
    assert!(items.len() <= data.len());
    let lines = data
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(
        items.len() + usize::from(seq.is_some()),
        lines,
        "one item per non-empty line"
    );
    let (low, high) = datagram.events.size_hint();
    assert!(low <= items.len() && high.is_none_or(|high| items.len() <= high));

    let events: Vec<Event<'_>> = items.iter().filter_map(|item| item.ok()).collect();
    for event in &events {
        for field in fields(event) {
            assert!((1..=FIELD_LEN_MAX).contains(&field.len()), "{event:?}");
            assert!(
                !field.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n')),
                "{event:?}"
            );
        }
    }

    // Text round trip.
    let mut encoder = text::Encoder::new(usize::MAX);
    encoder
        .reset(seq.map(|seq| (seq.sender, seq.n)))
        .expect("a decoded seq re-encodes");
    for event in &events {
        encoder.push(event).expect("a decoded event re-encodes");
    }
    let again = text::decode(encoder.as_bytes());
    assert_eq!(again.seq, seq);
    let again: Vec<_> = again.events.collect();
    assert_eq!(again, events.iter().map(|&e| Ok(e)).collect::<Vec<_>>());

    // Each line alone, through `decode_line`.
    for event in &events {
        let mut line = Vec::new();
        text::write_event(event, &mut line).expect("a decoded event re-encodes");
        assert_eq!(text::decode_line(&line), Ok(*event));
    }

    // The same events as binary records (without the text sender, which need not be 8 bytes,
    // and without the text-only sync-* lines, which the binary encoder must refuse).
    let mut encoder = binary::Encoder::new(usize::MAX);
    let mut expected = Vec::new();
    for event in events
        .iter()
        .filter(|event| matches!(event, Event::Sync(_)))
    {
        assert!(
            encoder.push(event).is_err(),
            "a sync line has no binary record"
        );
    }
    let binary_events = events
        .iter()
        .filter(|event| !matches!(event, Event::Sync(_)));
    for event in binary_events.take(binary::RECORD_COUNT_MAX) {
        encoder
            .push(event)
            .expect("a text event fits a binary record");
        expected.push(Ok(*event));
    }
    let again: Vec<_> = binary::decode(encoder.as_bytes()).events.collect();
    assert_eq!(again, expected);
});

/// The byte-string fields of an event.
fn fields<'a>(event: &Event<'a>) -> Vec<&'a [u8]> {
    let call = |call: CallRef<'a>| [Some(call.call_id), call.from_tag].into_iter().flatten();
    match *event {
        Event::CallStart { call: c, .. }
        | Event::CallStop { call: c }
        | Event::CallRefresh { call: c } => call(c).collect(),
        Event::Register { aor, contact, .. } => vec![aor, contact],
        Event::Subscribers { .. } => Vec::new(),
        Event::Admit { call_id, .. } => vec![call_id],
        Event::Sync(SyncLine::Begin { sender, .. } | SyncLine::End { sender, .. }) => vec![sender],
        Event::Sync(SyncLine::Call { call: c, .. }) => call(c).collect(),
        Event::Sync(SyncLine::Reg { aor, contact, .. }) => vec![aor, contact],
    }
}
