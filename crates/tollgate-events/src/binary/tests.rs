use proptest::prelude::*;

use super::*;
use crate::test_util::{binary_field, owned_event, render};

/// Decodes `input` as a binary datagram and compares the rendering (see [`render`]) with
/// `expected`.
#[track_caller]
fn check(input: impl AsRef<[u8]>, expected: &[&str]) {
    let input = input.as_ref();
    let actual = render(decode(input));
    assert_eq!(actual, expected, "input: {}", hex(input));
    if input.first() == Some(&0xFF) {
        // `crate::decode` dispatches to the same decoder.
        assert_eq!(render(crate::decode(input)), expected);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// Datagrams are built by hand here, independently of `Encoder`.

fn header_with(flags: u8, count: u16, sender: [u8; 8], n: u64) -> Vec<u8> {
    let mut out = vec![0xFF, b'T', b'G', 1, flags, 0];
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&sender);
    out.extend_from_slice(&n.to_be_bytes());
    out
}

/// A header without sequence for `count` records.
fn header(count: u16) -> Vec<u8> {
    header_with(0, count, [0; 8], 0)
}

/// A record: length, verb code, flags, then the field bytes as given.
fn record(verb: u8, flags: u8, fields: &[&[u8]]) -> Vec<u8> {
    let body = [&[verb, flags][..], &fields.concat()].concat();
    [&(body.len() as u16).to_be_bytes()[..], &body].concat()
}

/// A key: length byte then the bytes.
fn key(bytes: &[u8]) -> Vec<u8> {
    [&[bytes.len() as u8][..], bytes].concat()
}

fn datagram(count: u16, records: &[Vec<u8>]) -> Vec<u8> {
    [header(count), records.concat()].concat()
}

const START: u8 = 1;
const STOP: u8 = 2;
const REFRESH: u8 = 3;
const REG: u8 = 4;
const SUBSCRIBERS: u8 = 5;
const ADMIT: u8 = 6;

#[test]
fn verb_codes_are_as_documented() {
    // `sync-*` lines are text only: the binary format has no code for them.
    let codes: Vec<_> = Verb::ALL
        .iter()
        .filter(|&&v| v != Verb::Sync)
        .map(|&v| (v.as_str(), verb_code(v)))
        .collect();
    assert_eq!(
        codes,
        [
            ("call-start", START),
            ("call-stop", STOP),
            ("call-refresh", REFRESH),
            ("reg", REG),
            ("subscribers", SUBSCRIBERS),
            ("admit", ADMIT),
        ]
    );
    assert_eq!(verb_from_code(verb_code(Verb::Sync)), None);
}

#[test]
fn every_verb_and_flag_decodes() {
    let records = [
        record(START, 0, &[&key(b"c1")]),
        record(START, FLAG_TAG, &[&key(b"c1"), &key(b"t1")]),
        record(START, FLAG_EMERGENCY, &[&key(b"c1")]),
        record(
            START,
            FLAG_TAG | FLAG_EMERGENCY,
            &[&key(b"c1"), &key(b"t1")],
        ),
        record(STOP, 0, &[&key(b"c1")]),
        record(STOP, FLAG_TAG, &[&key(b"c1"), &key(b"t1")]),
        record(REFRESH, 0, &[&key(b"c1")]),
        record(REFRESH, FLAG_TAG, &[&key(b"c1"), &key(b"t1")]),
        record(
            REG,
            0,
            &[
                &key(b"sip:a@b"),
                &key(b"sip:a@192.0.2.1"),
                &3600u32.to_be_bytes(),
            ],
        ),
        record(REG, 0, &[&key(b"a"), &key(b"c"), &u32::MAX.to_be_bytes()]),
        record(SUBSCRIBERS, 0, &[&crate::SUBSCRIBERS_MAX.to_be_bytes()]),
        record(
            SUBSCRIBERS,
            0,
            &[&(crate::SUBSCRIBERS_MAX + 1).to_be_bytes()],
        ),
        record(ADMIT, 0, &[&key(b"c1")]),
        record(ADMIT, FLAG_EMERGENCY, &[&key(b"c1")]),
    ];
    check(
        datagram(records.len() as u16, &records),
        &[
            "call-start c1",
            "call-start c1 tag=t1",
            "call-start c1 emergency",
            "call-start c1 tag=t1 emergency",
            "call-stop c1",
            "call-stop c1 tag=t1",
            "call-refresh c1",
            "call-refresh c1 tag=t1",
            "reg sip:a@b sip:a@192.0.2.1 3600",
            "reg a c 4294967295",
            "subscribers 1099511627776",
            "!bad_number",
            "admit c1",
            "admit c1 emergency",
        ],
    );
}

#[test]
fn keys_are_opaque_bytes() {
    let records = [record(STOP, 0, &[&key(b" \n\r\x00\xff")])];
    check(datagram(1, &records), &["call-stop  \\n\\r\\x00\\xff"]);
}

#[test]
fn sequence_header_is_the_datagram_seq() {
    let input = [
        header_with(FLAG_SEQ, 1, *b"proxy-01", 42),
        record(SUBSCRIBERS, 0, &[&7u64.to_be_bytes()]),
    ]
    .concat();
    check(&input, &["seq proxy-01 42", "subscribers 7"]);
    let seq = decode(&input).seq.unwrap();
    assert_eq!(
        seq,
        Seq {
            sender: b"proxy-01",
            n: 42
        }
    );
    let input = header_with(FLAG_SEQ, 0, [0; 8], 0);
    check(&input, &["seq \\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00 0"]);
}

#[test]
fn empty_batch_decodes_to_nothing() {
    check(header(0), &[]);
}

#[test]
fn bad_headers_reject_the_whole_datagram() {
    check([], &["!bad_header"]);
    check([0xFF], &["!bad_header"]);
    check([0xFF, b'T', b'G'], &["!bad_header"]);
    check([0xFF, b'T', b'X', 1], &["!bad_header"]);
    check(&header(0)[..HEADER_LEN - 1], &["!bad_header"]);
    let mut wrong_magic = header(0);
    wrong_magic[1] = b't';
    check(&wrong_magic, &["!bad_header"]);
    let mut unknown_flag = header(0);
    unknown_flag[4] = 0x02;
    check(&unknown_flag, &["!bad_header"]);
    let mut reserved = header(0);
    reserved[5] = 1;
    check(&reserved, &["!bad_header"]);
    check(
        header_with(0, 0, [0, 0, 0, 0, 0, 0, 0, 1], 0),
        &["!bad_header"],
    );
    check(header_with(0, 0, [0; 8], 1), &["!bad_header"]);
}

#[test]
fn other_versions_are_rejected_even_when_short() {
    for version in [0, 2, 0xFF] {
        let mut input = header(0);
        input[3] = version;
        check(&input, &["!bad_version"]);
        check(&input[..4], &["!bad_version"]);
    }
}

#[test]
fn a_bad_header_rejects_even_valid_records() {
    let mut input = datagram(1, &[record(SUBSCRIBERS, 0, &[&1u64.to_be_bytes()])]);
    input[5] = 1;
    check(&input, &["!bad_header"]);
}

#[test]
fn fewer_records_than_count_is_truncated() {
    let stop = record(STOP, 0, &[&key(b"c1")]);
    check(
        datagram(2, std::slice::from_ref(&stop)),
        &["call-stop c1", "!truncated"],
    );
    check(datagram(1, &[]), &["!truncated"]);
    check(datagram(u16::MAX, &[]), &["!truncated"]);
    // One byte where a record length should be.
    check(
        [datagram(2, std::slice::from_ref(&stop)), vec![0]].concat(),
        &["call-stop c1", "!truncated"],
    );
}

#[test]
fn a_record_running_past_the_end_is_truncated_and_ends_the_datagram() {
    let stop = record(STOP, 0, &[&key(b"c1")]);
    let cut = &stop[..stop.len() - 1];
    check(
        datagram(2, &[stop.clone(), cut.to_vec()]),
        &["call-stop c1", "!truncated"],
    );
    let huge = [&u16::MAX.to_be_bytes()[..], &stop[2..]].concat();
    check(datagram(3, &[huge, stop.clone(), stop]), &["!truncated"]);
}

#[test]
fn bytes_after_count_records_are_trailing() {
    let stop = record(STOP, 0, &[&key(b"c1")]);
    check(
        datagram(1, &[stop.clone(), vec![0]]),
        &["call-stop c1", "!trailing_bytes"],
    );
    check(
        datagram(1, &[stop.clone(), stop.clone()]),
        &["call-stop c1", "!trailing_bytes"],
    );
    check(datagram(0, &[stop]), &["!trailing_bytes"]);
}

#[test]
fn unknown_verb_costs_only_its_record() {
    let stop = record(STOP, 0, &[&key(b"c1")]);
    let records = [
        record(0, 0, &[]),
        stop.clone(),
        record(7, 0, &[b"future"]),
        record(255, 0xFF, &[]),
        stop,
    ];
    check(
        datagram(5, &records),
        &[
            "!unknown_verb",
            "call-stop c1",
            "!unknown_verb",
            "!unknown_verb",
            "call-stop c1",
        ],
    );
}

#[test]
fn flags_not_allowed_for_the_verb_are_bad_options() {
    let sub = record(SUBSCRIBERS, 0, &[&1u64.to_be_bytes()]);
    let records = [
        record(STOP, FLAG_EMERGENCY, &[&key(b"c1")]),
        record(REFRESH, FLAG_EMERGENCY, &[&key(b"c1")]),
        record(ADMIT, FLAG_TAG, &[&key(b"c1"), &key(b"t1")]),
        record(
            REG,
            FLAG_TAG,
            &[&key(b"a"), &key(b"c"), &1u32.to_be_bytes()],
        ),
        record(SUBSCRIBERS, FLAG_EMERGENCY, &[&1u64.to_be_bytes()]),
        record(START, 0x04, &[&key(b"c1")]),
        record(START, 0x80, &[&key(b"c1")]),
        sub,
    ];
    check(
        datagram(records.len() as u16, &records),
        &[
            "!bad_option",
            "!bad_option",
            "!bad_option",
            "!bad_option",
            "!bad_option",
            "!bad_option",
            "!bad_option",
            "subscribers 1",
        ],
    );
}

#[test]
fn broken_fields_cost_only_their_record() {
    let sub = record(SUBSCRIBERS, 0, &[&1u64.to_be_bytes()]);
    let records = [
        record(STOP, 0, &[&key(b"")]),
        record(START, FLAG_TAG, &[&key(b"c1"), &key(b"")]),
        record(REG, 0, &[&key(b"a"), &key(b""), &1u32.to_be_bytes()]),
        sub.clone(),
        // A key longer than what is left of its record.
        record(STOP, 0, &[&[5], b"abc"]),
        // The tag the flags announce is missing.
        record(STOP, FLAG_TAG, &[&key(b"c1")]),
        // A call-id is missing altogether.
        record(ADMIT, 0, &[]),
        record(REG, 0, &[&key(b"a"), &key(b"c"), &[0, 0, 1]]),
        record(SUBSCRIBERS, 0, &[&[0; 7]]),
        // Shorter than verb and flags.
        vec![0, 0],
        vec![0, 1, STOP],
        sub.clone(),
        // Bytes left inside the record after its fields.
        record(STOP, 0, &[&key(b"c1"), b"x"]),
        record(SUBSCRIBERS, 0, &[&[0; 9]]),
        sub,
    ];
    check(
        datagram(records.len() as u16, &records),
        &[
            "!empty_field",
            "!empty_field",
            "!empty_field",
            "subscribers 1",
            "!truncated",
            "!truncated",
            "!truncated",
            "!truncated",
            "!truncated",
            "!truncated",
            "!truncated",
            "subscribers 1",
            "!extra_field",
            "!extra_field",
            "subscribers 1",
        ],
    );
}

#[test]
fn keys_of_255_bytes_round_trip_and_256_are_refused() {
    let field = [b'k'; 255];
    let records = [record(
        REG,
        0,
        &[&key(&field), &key(&field), &0u32.to_be_bytes()],
    )];
    let input = datagram(1, &records);
    assert_eq!(input.len(), HEADER_LEN + RECORD_LEN_MAX);
    let events: Vec<_> = decode(&input).events.collect();
    let expected = Event::Register {
        aor: &field,
        contact: &field,
        expires_s: 0,
    };
    assert_eq!(events, [Ok(expected)]);

    let mut encoder = Encoder::new(usize::MAX);
    encoder.push(&expected).unwrap();
    assert_eq!(encoder.as_bytes(), input);
    assert_eq!(record_len(&expected), Ok(RECORD_LEN_MAX));

    let too_long = [b'k'; 256];
    let event = Event::Admit {
        call_id: &too_long,
        emergency: false,
    };
    assert_eq!(
        encoder.push(&event),
        Err(EncodeError::FieldTooLong {
            field: "call_id",
            len: 256
        })
    );
    let event = Event::CallStop {
        call: CallRef {
            call_id: b"c",
            from_tag: Some(b""),
        },
    };
    assert_eq!(
        encoder.push(&event),
        Err(EncodeError::EmptyField { field: "from_tag" })
    );
    assert_eq!(encoder.as_bytes(), input, "nothing written on error");
}

// --- encoder

#[test]
fn encoder_writes_what_the_hand_built_datagram_holds() {
    let mut encoder = Encoder::new(1400);
    encoder.reset(Some((*b"proxy-01", 42)));
    encoder
        .push(&Event::CallStart {
            call: CallRef {
                call_id: b"c1",
                from_tag: Some(b"t1"),
            },
            emergency: true,
        })
        .unwrap();
    encoder.push(&Event::Subscribers { count: 7 }).unwrap();
    let expected = [
        header_with(FLAG_SEQ, 2, *b"proxy-01", 42),
        record(
            START,
            FLAG_TAG | FLAG_EMERGENCY,
            &[&key(b"c1"), &key(b"t1")],
        ),
        record(SUBSCRIBERS, 0, &[&7u64.to_be_bytes()]),
    ]
    .concat();
    assert_eq!(hex(encoder.as_bytes()), hex(&expected));
    assert_eq!(encoder.event_count(), 2);
}

#[test]
fn encoder_refuses_what_does_not_fit_and_keeps_a_valid_datagram() {
    let event = Event::Subscribers { count: 1 }; // 12-byte record
    let mut encoder = Encoder::new(HEADER_LEN + 2 * 12);
    assert!(encoder.is_empty());
    check(encoder.as_bytes(), &[]);
    encoder.push(&event).unwrap();
    encoder.push(&event).unwrap();
    assert_eq!(encoder.push(&event), Err(EncodeError::BatchFull));
    assert_eq!(encoder.len(), encoder.size_max());
    check(encoder.as_bytes(), &["subscribers 1", "subscribers 1"]);

    encoder.reset(Some(([9; 8], 3)));
    assert!(encoder.is_empty());
    encoder.push(&event).unwrap();
    check(
        encoder.as_bytes(),
        &["seq \\t\\t\\t\\t\\t\\t\\t\\t 3", "subscribers 1"],
    );
}

#[test]
fn encoder_stops_at_the_record_count_limit() {
    let event = Event::Subscribers { count: 1 };
    let mut encoder = Encoder::new(usize::MAX);
    for _ in 0..RECORD_COUNT_MAX {
        encoder.push(&event).unwrap();
    }
    assert_eq!(encoder.push(&event), Err(EncodeError::BatchFull));
    let datagram = decode(encoder.as_bytes());
    assert_eq!(
        datagram.events.filter(|e| e.is_ok()).count(),
        RECORD_COUNT_MAX
    );
}

#[test]
#[should_panic(expected = "below the header length")]
fn encoder_needs_room_for_the_header() {
    let _ = Encoder::new(HEADER_LEN - 1);
}

// --- the document

/// docs/protocol.md's binary example is exactly what `Encoder` makes of the good events of
/// its text example.
#[test]
fn documented_example_is_what_the_encoder_writes() {
    let doc = include_str!("../../../../docs/protocol.md");
    let block = |marker: &str| {
        let start = doc
            .find(&format!("<!-- {marker}:begin -->"))
            .expect("begin marker");
        let end = doc
            .find(&format!("<!-- {marker}:end -->"))
            .expect("end marker");
        let code = doc[start..end].split("```").nth(1).expect("code block");
        code.strip_prefix("text\n").unwrap_or(code).to_string()
    };
    let text = block("text-example");
    let text = crate::text::decode(text.as_bytes());
    let seq = text.seq.expect("the text example has a seq line");
    let mut encoder = Encoder::new(1400);
    encoder.reset(Some((
        seq.sender.try_into().expect("an 8-byte sender"),
        seq.n,
    )));
    for event in text.events.flatten() {
        encoder.push(&event).unwrap();
    }
    let documented: Result<Vec<u8>, _> = block("binary-example")
        .lines()
        .flat_map(|line| {
            let bytes = line.split('#').next().unwrap_or("");
            bytes.split_whitespace().map(|b| u8::from_str_radix(b, 16))
        })
        .collect();
    if documented.as_deref() != Ok(encoder.as_bytes()) {
        panic!(
            "docs/protocol.md is out of date; the example encodes as:\n{}",
            annotate(encoder.as_bytes())
        );
    }
}

/// An annotated hex dump, in the layout of docs/protocol.md.
fn annotate(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut line = |bytes: &[u8], what: &str| {
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let what = if i == 0 {
                what.to_string()
            } else {
                "  …".to_string()
            };
            out.push_str(&format!("{:<48}# {what}\n", hex(chunk)).replace(" \n", "\n"));
        }
    };
    let (header, mut rest) = bytes.split_at(HEADER_LEN);
    line(&header[..3], "magic");
    line(&header[3..4], "version 1");
    line(&header[4..5], "flags: has sequence");
    line(&header[5..6], "reserved");
    line(
        &header[6..8],
        &format!("count {}", u16::from_be_bytes([header[6], header[7]])),
    );
    line(
        &header[8..16],
        &format!("sender \"{}\"", header[8..16].escape_ascii()),
    );
    line(
        &header[16..24],
        &format!(
            "seq {}",
            u64::from_be_bytes(header[16..24].try_into().unwrap())
        ),
    );
    while let Some((len, after)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len));
        let (record, after) = after.split_at(len);
        let event = decode_record(record).unwrap();
        line(&rest[..2], &format!("record length {len}"));
        let flags = match record[1] {
            0 => "no flags",
            FLAG_TAG => "flags: from-tag",
            FLAG_EMERGENCY => "flags: emergency",
            _ => "flags: emergency, from-tag",
        };
        line(
            &record[..2],
            &format!("verb {} ({}), {flags}", record[0], event.verb().as_str()),
        );
        let mut fields = &record[2..];
        let mut keys: &[&str] = match event {
            Event::Register { .. } => &["aor", "contact"],
            _ => &["call-id", "from-tag"],
        };
        while !fields.is_empty() {
            let (bytes, what) = match event {
                Event::Subscribers { count } => (8, format!("count {count}")),
                Event::Register { expires_s, .. } if fields.len() == 4 => {
                    (4, format!("expires {expires_s}"))
                }
                _ => {
                    let len = usize::from(fields[0]);
                    line(&fields[..1], &format!("{} length {len}", keys[0]));
                    fields = &fields[1..];
                    let what = format!("  \"{}\"", fields[..len].escape_ascii());
                    keys = &keys[1..];
                    (len, what)
                }
            };
            line(&fields[..bytes], &what);
            fields = &fields[bytes..];
        }
        rest = after;
    }
    out
}

// --- properties

/// Items are bounded by the input length; every decoded event re-encodes; a datagram that
/// decodes without error is exactly what the encoder makes of its seq and events.
fn assert_invariants(input: &[u8]) -> Result<(), TestCaseError> {
    let datagram = decode(input);
    let seq = datagram.seq;
    let items: Vec<_> = datagram.events.collect();
    prop_assert!(items.len() <= input.len().max(1));
    let mut encoder = Encoder::new(usize::MAX);
    encoder.reset(seq.map(|seq| (seq.sender.try_into().unwrap(), seq.n)));
    let events: Vec<_> = items.iter().filter_map(|item| item.ok()).collect();
    for event in &events {
        encoder.push(event).unwrap();
    }
    let again = decode(encoder.as_bytes());
    prop_assert_eq!(again.seq, seq);
    let again: Vec<_> = again.events.collect();
    prop_assert_eq!(&again, &events.iter().map(|&e| Ok(e)).collect::<Vec<_>>());
    if items.iter().all(|item| item.is_ok()) {
        prop_assert_eq!(hex(encoder.as_bytes()), hex(input), "canonical");
    }
    Ok(())
}

fn encoded(seq: &Option<([u8; 8], u64)>, events: &[crate::test_util::OwnedEvent]) -> Vec<u8> {
    let mut encoder = Encoder::new(usize::MAX);
    encoder.reset(*seq);
    for event in events {
        encoder.push(&event.event()).unwrap();
    }
    encoder.into_vec()
}

proptest! {
    #[test]
    fn events_round_trip(
        seq in proptest::option::of((any::<[u8; 8]>(), any::<u64>())),
        events in proptest::collection::vec(owned_event(binary_field()), 0..40),
    ) {
        let input = encoded(&seq, &events);
        let datagram = decode(&input);
        prop_assert_eq!(datagram.seq.map(|s| (s.sender.to_vec(), s.n)), seq.map(|(s, n)| (s.to_vec(), n)));
        let decoded: Vec<_> = datagram.events.collect();
        let expected: Vec<_> = events.iter().map(|e| Ok(e.event())).collect();
        prop_assert_eq!(decoded, expected);
        assert_invariants(&input)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        assert_invariants(&input)?;
        let items = crate::decode(&input).events.count();
        prop_assert!(items <= input.len().max(1));
    }

    #[test]
    fn arbitrary_records_after_a_valid_header_never_panic(
        count in prop_oneof![0u16..8, any::<u16>()],
        body in proptest::collection::vec(prop_oneof![0u8..8, any::<u8>()], 0..300),
    ) {
        assert_invariants(&[header(count), body].concat())?;
    }

    #[test]
    fn damaged_datagrams_never_panic(
        seq in proptest::option::of((any::<[u8; 8]>(), any::<u64>())),
        events in proptest::collection::vec(owned_event(binary_field()), 1..10),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut input = encoded(&seq, &events);
        for (at, byte) in damage {
            let at = at.index(input.len());
            input[at] = byte;
        }
        assert_invariants(&input)?;
        let cut = cut.index(input.len());
        assert_invariants(&input[..cut])?;
    }
}
