use proptest::prelude::*;

use super::*;
use crate::test_util::{owned_event, render, render_event, text_field};

/// Decodes `input` as a text datagram and compares the rendering (see
/// [`render`]) with `expected`.
#[track_caller]
fn check(input: impl AsRef<[u8]>, expected: &[&str]) {
    let actual = render(decode(input.as_ref()));
    assert_eq!(
        actual,
        expected,
        "input: {:?}",
        input.as_ref().escape_ascii().to_string()
    );
}

fn long(len: usize) -> String {
    "x".repeat(len)
}

#[test]
fn every_verb_decodes() {
    check("call-start abc", &["call-start abc"]);
    check("call-stop abc", &["call-stop abc"]);
    check("call-refresh abc", &["call-refresh abc"]);
    check(
        "reg sip:alice@example.com sip:alice@192.0.2.4:5060 3600",
        &["reg sip:alice@example.com sip:alice@192.0.2.4:5060 3600"],
    );
    check("subscribers 12345", &["subscribers 12345"]);
    check("admit abc", &["admit abc"]);
}

#[test]
fn typical_line_decodes() {
    check(
        "call-start 3848276298220188511@10.0.0.1 tag=as5f3a emergency\n",
        &["call-start 3848276298220188511@10.0.0.1 tag=as5f3a emergency"],
    );
}

#[test]
fn every_option_decodes_in_either_order() {
    check("call-start abc tag=t1", &["call-start abc tag=t1"]);
    check("call-start abc emergency", &["call-start abc emergency"]);
    check(
        "call-start abc tag=t1 emergency",
        &["call-start abc tag=t1 emergency"],
    );
    check(
        "call-start abc emergency tag=t1",
        &["call-start abc tag=t1 emergency"],
    );
    check("call-stop abc tag=t1", &["call-stop abc tag=t1"]);
    check("call-refresh abc tag=t1", &["call-refresh abc tag=t1"]);
    check("admit abc emergency", &["admit abc emergency"]);
    // A tag value may itself contain '='; only the `tag=` prefix is special.
    check("call-stop abc tag=a=b", &["call-stop abc tag=a=b"]);
}

#[test]
fn fields_are_positional_so_keywords_are_valid_values() {
    check("call-start emergency", &["call-start emergency"]);
    check("call-start tag=x", &["call-start tag=x"]);
    check(
        "call-stop seq tag=emergency",
        &["call-stop seq tag=emergency"],
    );
}

#[test]
fn registration_with_expires_zero_decodes() {
    check("reg a c 0", &["reg a c 0"]);
}

#[test]
fn numbers_at_their_limits() {
    check("reg a c 4294967295", &["reg a c 4294967295"]);
    check("reg a c 4294967296", &["!bad_number"]);
    check("reg a c 99999999999999999999999", &["!bad_number"]);
    // Above 2^40 (the largest figure a usage report carries) is a bad number.
    check("subscribers 1099511627776", &["subscribers 1099511627776"]);
    check("subscribers 1099511627777", &["!bad_number"]);
    check("subscribers 18446744073709551615", &["!bad_number"]);
    check("subscribers 18446744073709551616", &["!bad_number"]);
    check("subscribers 0", &["subscribers 0"]);
    check("subscribers 007", &["subscribers 7"]);
}

#[test]
fn numbers_are_plain_digits() {
    for bad in ["-1", "+1", "1.5", "1e3", "0x10", "12a", "a12", "１"] {
        check(format!("subscribers {bad}"), &["!bad_number"]);
        check(format!("reg a c {bad}"), &["!bad_number"]);
    }
}

#[test]
fn line_endings_lf_crlf_and_none() {
    check(
        "call-stop a\ncall-stop b\n",
        &["call-stop a", "call-stop b"],
    );
    check(
        "call-stop a\r\ncall-stop b\r\n",
        &["call-stop a", "call-stop b"],
    );
    check("call-stop a\ncall-stop b", &["call-stop a", "call-stop b"]);
    check(
        "call-stop a\r\ncall-stop b",
        &["call-stop a", "call-stop b"],
    );
    check("call-stop a\r", &["call-stop a"]);
}

#[test]
fn lone_cr_ends_a_line_so_no_field_holds_one() {
    check("call-stop a\rcall-stop b", &["call-stop a", "call-stop b"]);
    check("call-stop a\r\r\n", &["call-stop a"]);
    check("call-stop a\rb", &["call-stop a", "!unknown_verb"]);
}

#[test]
fn blank_lines_are_skipped_silently() {
    check("", &[]);
    check("\n", &[]);
    check("\r\n\r\n\n\r", &[]);
    check(
        "\n\ncall-stop a\n\n\r\n\ncall-stop b\n\n",
        &["call-stop a", "call-stop b"],
    );
}

#[test]
fn bytes_are_opaque_not_utf8_checked() {
    check(
        b"call-start \xff\xfe\x00\t tag=\xc3\x28".as_slice(),
        &["call-start \\xff\\xfe\\x00\\t tag=\\xc3("],
    );
}

#[test]
fn seq_first_line_is_the_sequence_header() {
    check(
        "seq node-1 42\ncall-stop a",
        &["seq node-1 42", "call-stop a"],
    );
    check("seq node-1 42", &["seq node-1 42"]);
    check("seq node-1 42\r\n", &["seq node-1 42"]);
    check("seq node-1 0\n", &["seq node-1 0"]);
    check(
        "seq node-1 18446744073709551615\n",
        &["seq node-1 18446744073709551615"],
    );
    check(
        format!("seq {} 1\n", long(255)),
        &[&format!("seq {} 1", long(255))],
    );
}

#[test]
fn malformed_seq_first_line_is_the_first_error_and_the_rest_decodes() {
    check("seq node-1 x\ncall-stop a", &["!bad_number", "call-stop a"]);
    check(
        "seq node-1 18446744073709551616\ncall-stop a",
        &["!bad_number", "call-stop a"],
    );
    check(
        "seq node-1\ncall-stop a",
        &["!missing_field", "call-stop a"],
    );
    check("seq\ncall-stop a", &["!missing_field", "call-stop a"]);
    check(
        "seq node-1 1 2\ncall-stop a",
        &["!extra_field", "call-stop a"],
    );
    check("seq  1\ncall-stop a", &["!empty_field", "call-stop a"]);
    check(
        "seq node-1 1 \ncall-stop a",
        &["!empty_field", "call-stop a"],
    );
    check(
        format!("seq {} 1\ncall-stop a", long(256)),
        &["!field_too_long", "call-stop a"],
    );
}

#[test]
fn seq_anywhere_but_the_first_line_is_misplaced() {
    check(
        "call-stop a\nseq node-1 42\ncall-stop b",
        &["call-stop a", "!misplaced_seq", "call-stop b"],
    );
    check("seq n 1\nseq n 2", &["seq n 1", "!misplaced_seq"]);
    // The first line of the datagram, not the first non-empty one.
    check("\nseq n 1\ncall-stop a", &["!misplaced_seq", "call-stop a"]);
    check("seq n x\nseq n 1", &["!bad_number", "!misplaced_seq"]);
}

#[test]
fn verbs_are_exact_and_case_sensitive() {
    check("sequence n 1", &["!unknown_verb"]);
    check("CALL-START a", &["!unknown_verb"]);
    check("call-started a", &["!unknown_verb"]);
    check("call a", &["!unknown_verb"]);
    check("ok", &["!unknown_verb"]);
    check("call-start\ta", &["!unknown_verb"]);
    check(long(300), &["!unknown_verb"]);
}

#[test]
fn missing_required_fields() {
    check("call-start", &["!missing_field"]);
    check("call-stop", &["!missing_field"]);
    check("call-refresh", &["!missing_field"]);
    check("reg", &["!missing_field"]);
    check("reg a", &["!missing_field"]);
    check("reg a c", &["!missing_field"]);
    check("subscribers", &["!missing_field"]);
    check("admit", &["!missing_field"]);
}

#[test]
fn extra_fields_after_verbs_without_options() {
    check("reg a c 1 x", &["!extra_field"]);
    check("reg a c 1 emergency", &["!extra_field"]);
    check("subscribers 1 2", &["!extra_field"]);
}

#[test]
fn empty_fields_from_leading_double_or_trailing_spaces() {
    check(" call-start a", &["!empty_field"]);
    check("call-start ", &["!empty_field"]);
    check("call-start  a", &["!empty_field"]);
    check("call-start a ", &["!empty_field"]);
    check("call-start a  emergency", &["!empty_field"]);
    check("call-start a emergency ", &["!empty_field"]);
    check("call-stop a tag=x ", &["!empty_field"]);
    check("reg a  c 1", &["!empty_field"]);
    check("reg a c 1 ", &["!empty_field"]);
    check("subscribers 1 ", &["!empty_field"]);
    check("admit a ", &["!empty_field"]);
    check(" ", &["!empty_field"]);
}

#[test]
fn empty_tag_is_an_empty_field() {
    check("call-start a tag=", &["!empty_field"]);
    check("call-stop a tag=", &["!empty_field"]);
    check("call-refresh a tag= emergency", &["!empty_field"]);
}

#[test]
fn options_unknown_repeated_or_not_for_this_verb() {
    check("call-start a urgent", &["!bad_option"]);
    check("call-start a Emergency", &["!bad_option"]);
    check("call-start a TAG=x", &["!bad_option"]);
    check("call-start a tag", &["!bad_option"]);
    check("call-start a emergency emergency", &["!bad_option"]);
    check("call-start a tag=x tag=y", &["!bad_option"]);
    check("call-start a tag=x emergency tag=x", &["!bad_option"]);
    check("call-start a tag=x emergency x", &["!bad_option"]);
    check("call-stop a emergency", &["!bad_option"]);
    check("call-refresh a emergency", &["!bad_option"]);
    check("admit a tag=x", &["!bad_option"]);
    check("admit a tag=", &["!bad_option"]);
    check("admit a x", &["!bad_option"]);
    // The first bad field decides.
    check("call-start a bogus ", &["!bad_option"]);
    check("call-start a  bogus", &["!empty_field"]);
}

#[test]
fn fields_of_255_bytes_decode_and_256_do_not() {
    let (ok, too_long) = (long(255), long(256));
    check(format!("call-start {ok}"), &[&format!("call-start {ok}")]);
    check(format!("call-start {too_long}"), &["!field_too_long"]);
    check(
        format!("call-start a tag={ok}"),
        &[&format!("call-start a tag={ok}")],
    );
    check(format!("call-start a tag={too_long}"), &["!field_too_long"]);
    check(format!("call-stop a tag={too_long}"), &["!field_too_long"]);
    check(format!("reg {ok} {ok} 1"), &[&format!("reg {ok} {ok} 1")]);
    check(format!("reg {too_long} c 1"), &["!field_too_long"]);
    check(format!("reg a {too_long} 1"), &["!field_too_long"]);
    check(format!("admit {too_long}"), &["!field_too_long"]);
    check(
        format!("subscribers {}", "0".repeat(256)),
        &["!field_too_long"],
    );
}

#[test]
fn malformed_lines_among_good_ones_cost_only_themselves() {
    let input = "seq sbc-1 7\n\
                 call-start a tag=1\n\
                 call-start\n\
                 bogus line\n\
                 call-stop a tag=1\n\
                 reg a c -5\n\
                 seq sbc-1 8\n\
                 reg a c 60\r\n\
                 \n\
                 subscribers 10 \n\
                 subscribers 10\n\
                 admit b emergency urgent\n\
                 admit b emergency";
    check(
        input,
        &[
            "seq sbc-1 7",
            "call-start a tag=1",
            "!missing_field",
            "!unknown_verb",
            "call-stop a tag=1",
            "!bad_number",
            "!misplaced_seq",
            "reg a c 60",
            "!empty_field",
            "subscribers 10",
            "!bad_option",
            "admit b emergency",
        ],
    );
}

#[test]
fn decode_line_rejects_seq() {
    assert_eq!(decode_line(b"seq n 1"), Err(Malformed::MisplacedSeq));
    assert_eq!(
        decode_line(b"subscribers 3"),
        Ok(Event::Subscribers { count: 3 })
    );
}

#[test]
fn crate_decode_dispatches_text() {
    let datagram = crate::decode(b"seq s 1\nsubscribers 3\n");
    assert_eq!(render(datagram), ["seq s 1", "subscribers 3"]);
}

// --- encoder

#[track_caller]
fn check_write(event: Event<'_>, expected: &str) {
    let mut out = b"before\n".to_vec();
    write_event(&event, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("before\n{expected}")
    );
    assert_eq!(encoded_len(&event), Ok(expected.len()));
    assert_eq!(decode_line(expected.trim_end().as_bytes()), Ok(event));
}

#[test]
fn write_event_writes_every_verb() {
    let call = CallRef {
        call_id: b"c1",
        from_tag: None,
    };
    let tagged = CallRef {
        call_id: b"c1",
        from_tag: Some(b"t1"),
    };
    check_write(
        Event::CallStart {
            call,
            emergency: false,
        },
        "call-start c1\n",
    );
    check_write(
        Event::CallStart {
            call: tagged,
            emergency: true,
        },
        "call-start c1 tag=t1 emergency\n",
    );
    check_write(Event::CallStop { call: tagged }, "call-stop c1 tag=t1\n");
    check_write(Event::CallRefresh { call }, "call-refresh c1\n");
    check_write(
        Event::Register {
            aor: b"sip:a@b",
            contact: b"sip:a@192.0.2.1",
            expires_s: u32::MAX,
        },
        "reg sip:a@b sip:a@192.0.2.1 4294967295\n",
    );
    check_write(
        Event::Register {
            aor: b"a",
            contact: b"c",
            expires_s: 0,
        },
        "reg a c 0\n",
    );
    check_write(
        Event::Subscribers {
            count: crate::SUBSCRIBERS_MAX,
        },
        "subscribers 1099511627776\n",
    );
    assert_eq!(
        encoded_len(&Event::Subscribers {
            count: crate::SUBSCRIBERS_MAX + 1
        }),
        Err(EncodeError::OutOfRange { field: "count" })
    );
    check_write(Event::Subscribers { count: 0 }, "subscribers 0\n");
    check_write(
        Event::Admit {
            call_id: b"c1",
            emergency: true,
        },
        "admit c1 emergency\n",
    );
    check_write(
        Event::Admit {
            call_id: b"c1",
            emergency: false,
        },
        "admit c1\n",
    );
}

#[test]
fn write_event_refuses_fields_the_decoder_would_misread() {
    let long = [b'x'; 256];
    let cases: [(Event<'_>, EncodeError); 6] = [
        (
            Event::Admit {
                call_id: b"",
                emergency: false,
            },
            EncodeError::EmptyField { field: "call_id" },
        ),
        (
            Event::Admit {
                call_id: &long,
                emergency: false,
            },
            EncodeError::FieldTooLong {
                field: "call_id",
                len: 256,
            },
        ),
        (
            Event::CallStop {
                call: CallRef {
                    call_id: b"a",
                    from_tag: Some(b""),
                },
            },
            EncodeError::EmptyField { field: "from_tag" },
        ),
        (
            Event::Register {
                aor: b"a b",
                contact: b"c",
                expires_s: 1,
            },
            EncodeError::ForbiddenByte { field: "aor" },
        ),
        (
            Event::Register {
                aor: b"a",
                contact: b"c\r",
                expires_s: 1,
            },
            EncodeError::ForbiddenByte { field: "contact" },
        ),
        (
            Event::CallStart {
                call: CallRef {
                    call_id: b"a\nb",
                    from_tag: None,
                },
                emergency: false,
            },
            EncodeError::ForbiddenByte { field: "call_id" },
        ),
    ];
    for (event, expected) in cases {
        let mut out = b"kept".to_vec();
        assert_eq!(write_event(&event, &mut out), Err(expected), "{event:?}");
        assert_eq!(out, b"kept", "nothing written on error");
    }
    let mut out = Vec::new();
    assert_eq!(
        write_seq(b"a b", 1, &mut out),
        Err(EncodeError::ForbiddenByte { field: "sender" })
    );
    assert_eq!(
        write_seq(b"", 1, &mut out),
        Err(EncodeError::EmptyField { field: "sender" })
    );
    assert!(out.is_empty());
}

#[test]
fn line_len_max_is_the_longest_line() {
    let field = [b'x'; FIELD_LEN_MAX];
    let longest = Event::CallStart {
        call: CallRef {
            call_id: &field,
            from_tag: Some(&field),
        },
        emergency: true,
    };
    assert_eq!(encoded_len(&longest), Ok(LINE_LEN_MAX));
    let reg = Event::Register {
        aor: &field,
        contact: &field,
        expires_s: u32::MAX,
    };
    assert!(encoded_len(&reg).unwrap() <= LINE_LEN_MAX);
}

#[test]
fn encoder_fills_up_to_its_size_limit() {
    let event = Event::Subscribers { count: 1 }; // "subscribers 1\n": 14 bytes
    let mut encoder = Encoder::new(8 + 14 * 2);
    encoder.reset(Some((b"s", 1))).unwrap(); // "seq s 1\n": 8 bytes
    assert!(encoder.is_empty());
    encoder.push(&event).unwrap();
    encoder.push(&event).unwrap();
    assert_eq!(encoder.push(&event), Err(EncodeError::BatchFull));
    assert_eq!(encoder.len(), encoder.size_max());
    assert_eq!(encoder.event_count(), 2);
    check(
        encoder.as_bytes(),
        &["seq s 1", "subscribers 1", "subscribers 1"],
    );

    encoder.reset(None).unwrap();
    assert_eq!(encoder.as_bytes(), b"");
    encoder.push(&event).unwrap();
    check(encoder.as_bytes(), &["subscribers 1"]);

    let mut tiny = Encoder::new(4);
    assert_eq!(tiny.reset(Some((b"s", 1))), Err(EncodeError::BatchFull));
    assert_eq!(tiny.as_bytes(), b"");
}

#[test]
fn encoder_refuses_invalid_fields_before_size() {
    let mut encoder = Encoder::new(1);
    let bad = Event::Admit {
        call_id: b"",
        emergency: false,
    };
    assert_eq!(
        encoder.push(&bad),
        Err(EncodeError::EmptyField { field: "call_id" })
    );
}

// --- admit replies

#[test]
fn admit_replies_round_trip() {
    let mut out = Vec::new();
    write_admit_reply(&AdmitReply::Ok, &mut out).unwrap();
    write_admit_reply(
        &AdmitReply::Deny {
            code: b"calls_over_limit",
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"ok\ndeny calls_over_limit\n");
    let replies: Vec<_> = decode_admit_replies(&out).collect();
    assert_eq!(
        replies,
        [
            Ok(AdmitReply::Ok),
            Ok(AdmitReply::Deny {
                code: b"calls_over_limit"
            })
        ]
    );
    assert_eq!(
        write_admit_reply(&AdmitReply::Deny { code: b"a b" }, &mut out),
        Err(EncodeError::ForbiddenByte { field: "code" })
    );
}

#[test]
fn malformed_admit_replies() {
    let replies: Vec<_> =
        decode_admit_replies(b"ok x\ndeny\ndeny a b\nmaybe\n ok\n\r\nok\r\n").collect();
    assert_eq!(
        replies,
        [
            Err(Malformed::ExtraField),
            Err(Malformed::MissingField),
            Err(Malformed::ExtraField),
            Err(Malformed::UnknownVerb),
            Err(Malformed::EmptyField),
            Ok(AdmitReply::Ok),
        ]
    );
}

// --- the document

/// The text example of docs/protocol.md decodes as the document says.
#[test]
fn documented_example_decodes_as_documented() {
    let doc = include_str!("../../../../docs/protocol.md");
    let block = |marker: &str| {
        let start = doc
            .find(&format!("<!-- {marker}:begin -->"))
            .expect("begin marker");
        let end = doc
            .find(&format!("<!-- {marker}:end -->"))
            .expect("end marker");
        let inner = &doc[start..end];
        let code = inner.split("```").nth(1).expect("code block");
        code.strip_prefix("text\n").unwrap_or(code).to_string()
    };
    let input = block("text-example");
    let expected = block("text-example-decoded");
    let expected: Vec<&str> = expected
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim())
        .collect();
    check(input, &expected);
}

// --- the byte search

/// Bytes around the search's edge cases: the delimiters, other control bytes (false
/// candidates), bytes with the high bit set (borrow trouble).
fn search_hay() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b' '),
        Just(b'\n'),
        Just(b'\r'),
        Just(b'\t'),
        Just(0u8),
        Just(0x20u8 ^ 0x80),
        Just(0x80u8),
        Just(0xffu8),
        b'!'..=b'~',
        any::<u8>(),
    ];
    proptest::collection::vec(byte, 0..80)
}

proptest! {
    #[test]
    fn byte_search_agrees_with_position(hay in search_hay()) {
        prop_assert_eq!(
            find_delimiter(&hay),
            hay.iter().position(|&b| b == b' ' || b == b'\n' || b == b'\r')
        );
        prop_assert_eq!(
            find_line_end(&hay),
            hay.iter().position(|&b| b == b'\n' || b == b'\r')
        );
    }
}

// --- properties

/// Every event the decoder yields re-encodes and decodes back equal; the number of items
/// never exceeds the number of input bytes. (The fuzz target checks the same.)
fn assert_invariants(input: &[u8]) -> Result<(), TestCaseError> {
    let datagram = decode(input);
    let seq = datagram.seq;
    let items: Vec<_> = datagram.events.collect();
    prop_assert!(items.len() + usize::from(seq.is_some()) <= input.len());
    let mut encoder = Encoder::new(usize::MAX);
    if let Some(seq) = seq {
        encoder.reset(Some((seq.sender, seq.n))).unwrap();
    }
    let events: Vec<_> = items.iter().filter_map(|item| item.ok()).collect();
    for event in &events {
        encoder.push(event).unwrap();
    }
    let again = decode(encoder.as_bytes());
    prop_assert_eq!(again.seq, seq);
    let again: Vec<_> = again.events.collect();
    prop_assert_eq!(again, events.into_iter().map(Ok).collect::<Vec<_>>());
    Ok(())
}

/// Pieces of text likely to reach deep into the parser when strung together.
fn texty_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces: &[&[u8]] = &[
        b"call-start",
        b"call-stop",
        b"call-refresh",
        b"reg",
        b"subscribers",
        b"admit",
        b"seq",
        b"tag=",
        b"tag=x",
        b"emergency",
        b"0",
        b"42",
        b"4294967296",
        b"18446744073709551616",
        b"x",
        b"\xff",
        b" ",
        b" ",
        b" ",
        b"\n",
        b"\r\n",
        b"\r",
    ];
    proptest::collection::vec(proptest::sample::select(pieces), 0..60)
        .prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn events_round_trip(
        seq in proptest::option::of((text_field(), any::<u64>())),
        events in proptest::collection::vec(owned_event(text_field()), 0..40),
    ) {
        let mut encoder = Encoder::new(usize::MAX);
        encoder.reset(seq.as_ref().map(|(s, n)| (s.as_slice(), *n))).unwrap();
        for event in &events {
            encoder.push(&event.event()).unwrap();
        }
        let datagram = decode(encoder.as_bytes());
        prop_assert_eq!(datagram.seq.map(|s| (s.sender.to_vec(), s.n)), seq);
        let decoded: Vec<_> = datagram.events.collect();
        let expected: Vec<_> = events.iter().map(|e| Ok(e.event())).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn crlf_and_blank_lines_change_nothing(
        events in proptest::collection::vec(owned_event(text_field()), 1..20),
        endings in proptest::collection::vec(prop_oneof![Just("\n"), Just("\r\n"), Just("\n\n"), Just("\r\n\r\n\n")], 20),
    ) {
        let mut input = Vec::new();
        for (event, ending) in events.iter().zip(&endings) {
            write_event(&event.event(), &mut input).unwrap();
            input.pop();
            input.extend_from_slice(ending.as_bytes());
        }
        input.pop(); // and the last line without its final byte of terminator
        let decoded: Vec<String> = decode(&input).events.map(|e| render_event(&e.unwrap())).collect();
        let expected: Vec<String> = events.iter().map(|e| render_event(&e.event())).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decoded_events_round_trip(
        input in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        assert_invariants(&input)?;
        let items = crate::decode(&input).events.count();
        prop_assert!(items <= input.len());
    }

    #[test]
    fn texty_bytes_never_panic_and_decoded_events_round_trip(input in texty_bytes()) {
        assert_invariants(&input)?;
    }

    #[test]
    fn one_malformed_line_costs_only_itself(
        before in proptest::collection::vec(owned_event(text_field()), 0..5),
        garbage in texty_bytes(),
        after in proptest::collection::vec(owned_event(text_field()), 0..5),
    ) {
        let mut input = Vec::new();
        for event in &before {
            write_event(&event.event(), &mut input).unwrap();
        }
        input.extend(garbage.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
        input.push(b'\n');
        for event in &after {
            write_event(&event.event(), &mut input).unwrap();
        }
        let decoded: Vec<_> = decode(&input).events.collect();
        let garbage_items = decoded.len() - before.len() - after.len();
        prop_assert!(garbage_items <= 1);
        let expected_before: Vec<_> = before.iter().map(|e| Ok(e.event())).collect();
        let expected_after: Vec<_> = after.iter().map(|e| Ok(e.event())).collect();
        prop_assert_eq!(&decoded[..before.len()], &expected_before[..]);
        prop_assert_eq!(&decoded[decoded.len() - after.len()..], &expected_after[..]);
    }
}

#[test]
fn sync_lines_decode() {
    check(
        "seq fs1 9\nsync-begin fs1 42\nsync-call a tag=t emergency\nsync-call b\n\
         sync-reg sip:a@x sip:a@1:5060 300\nsync-end fs1 42 2 1\n",
        &[
            "seq fs1 9",
            "sync-begin fs1 42",
            "sync-call a tag=t emergency",
            "sync-call b",
            "sync-reg sip:a@x sip:a@1:5060 300",
            "sync-end fs1 42 2 1",
        ],
    );
}

#[test]
fn malformed_sync_lines() {
    check("sync-begin fs1", &["!missing_field"]);
    check("sync-begin fs1 x", &["!bad_number"]);
    check("sync-begin fs1 1 2", &["!extra_field"]);
    check("sync-call", &["!missing_field"]);
    check("sync-call a tag=", &["!empty_field"]);
    check("sync-call a bogus", &["!bad_option"]);
    // A listed contact has a positive expiry: 0 would be a removal, not a list entry.
    check("sync-reg a c 0", &["!bad_number"]);
    check("sync-reg a c 4294967296", &["!bad_number"]);
    check("sync-end fs1 1 2", &["!missing_field"]);
    check("sync-end fs1 1 2 3 4", &["!extra_field"]);
    check("sync-bogus x", &["!unknown_verb"]);
    check("sync-", &["!unknown_verb"]);
}

#[test]
fn write_event_writes_sync_lines() {
    check_write(
        Event::Sync(SyncLine::Begin {
            sender: b"fs1",
            epoch: 7,
        }),
        "sync-begin fs1 7\n",
    );
    check_write(
        Event::Sync(SyncLine::Call {
            call: CallRef {
                call_id: b"a",
                from_tag: Some(b"t"),
            },
            emergency: true,
        }),
        "sync-call a tag=t emergency\n",
    );
    check_write(
        Event::Sync(SyncLine::Reg {
            aor: b"sip:a@x",
            contact: b"sip:a@1",
            expires_s: 60,
        }),
        "sync-reg sip:a@x sip:a@1 60\n",
    );
    check_write(
        Event::Sync(SyncLine::End {
            sender: b"fs1",
            epoch: u64::MAX,
            calls: 0,
            contacts: 12,
        }),
        "sync-end fs1 18446744073709551615 0 12\n",
    );
    let mut out = Vec::new();
    let zero = Event::Sync(SyncLine::Reg {
        aor: b"a",
        contact: b"c",
        expires_s: 0,
    });
    assert!(write_event(&zero, &mut out).is_err());
    assert!(crate::binary::record_len(&zero).is_err());
    assert!(out.is_empty());
}
