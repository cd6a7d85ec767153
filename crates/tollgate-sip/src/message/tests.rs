use proptest::prelude::*;

use super::*;

/// An INVITE as SIPp's built-in UAC sends it.
const INVITE: &[u8] = b"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-4242-1-0\r\n\
From: sipp <sip:sipp@127.0.1.1:5061>;tag=4242SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-4242@127.0.1.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: sip:sipp@127.0.1.1:5061\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
Content-Type: application/sdp\r\n\
Content-Length:   129\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.1.1\r\n\
s=-\r\n\
c=IN IP4 127.0.1.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

/// Kamailio's 200 OK to a REGISTER with three bindings (min_expires raised one to 60).
const REGISTER_OK: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-77-1-0;received=127.0.1.1\r\n\
From: <sip:alice@example.com>;tag=77SIPpTag001\r\n\
To: <sip:alice@example.com>;tag=b27e1a1d33761e85846fc98f5f3a7e58.e1a1\r\n\
Call-ID: 1-77@127.0.1.1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:alice@127.0.1.1:5061>;expires=3600, <sip:alice@127.0.1.1:5062;transport=tcp>;expires=60\r\n\
Contact: \"Alice, mobile\" <sip:alice@192.0.2.7:5060;ob>;expires=1800;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"\r\n\
Server: kamailio (5.6.3 (x86_64/linux))\r\n\
Content-Length: 0\r\n\
\r\n";

#[test]
fn sipp_invite_parses() {
    let msg = SipMessage::parse(INVITE).unwrap();
    assert_eq!(
        msg.start,
        StartLine::Request {
            method: Method::Invite,
            uri: b"sip:service@127.0.0.1:5060"
        }
    );
    assert_eq!(msg.call_id, b"1-4242@127.0.1.1");
    assert_eq!(
        msg.from,
        NameAddr {
            uri: b"sip:sipp@127.0.1.1:5061",
            tag: Some(b"4242SIPpTag001")
        }
    );
    assert_eq!(
        msg.to,
        NameAddr {
            uri: b"sip:service@127.0.0.1:5060",
            tag: None
        }
    );
    assert_eq!(
        msg.cseq,
        CSeq {
            seq: 1,
            method: Method::Invite
        }
    );
    assert_eq!(msg.expires, None);
    assert_eq!(msg.session_expires, None);
    assert_eq!(msg.header_count, 10);
    assert_eq!(msg.method(), Some(Method::Invite));
    assert_eq!(msg.status(), None);
    assert_eq!(msg.request_uri(), Some(&b"sip:service@127.0.0.1:5060"[..]));
    assert_eq!(contacts(INVITE), ["sip:sipp@127.0.1.1:5061"]);
}

#[test]
fn kamailio_register_ok_lists_every_binding() {
    let msg = SipMessage::parse(REGISTER_OK).unwrap();
    assert_eq!(
        msg.start,
        StartLine::Response {
            code: 200,
            reason: b"OK"
        }
    );
    assert_eq!(msg.cseq.method, Method::Register);
    assert_eq!(msg.to.uri, b"sip:alice@example.com");
    assert_eq!(
        contacts(REGISTER_OK),
        [
            "sip:alice@127.0.1.1:5061 expires=3600",
            "sip:alice@127.0.1.1:5062;transport=tcp expires=60",
            "sip:alice@192.0.2.7:5060;ob expires=1800",
        ]
    );
}

/// Renders the Contact list: `uri[ expires=N]`, `*`, or `!label` for an error.
fn contacts(input: &[u8]) -> Vec<String> {
    let msg = SipMessage::parse(input).unwrap();
    msg.contacts()
        .map(|item| match item {
            Ok(Contact::Star) => "*".to_string(),
            Ok(Contact::Uri { uri, expires }) => {
                let uri = String::from_utf8_lossy(uri).into_owned();
                match expires {
                    Some(e) => format!("{uri} expires={e}"),
                    None => uri,
                }
            }
            Err(e) => format!("!{}", e.as_str()),
        })
        .collect()
}

/// A minimal response with the given extra header lines.
fn with_headers(extra: &str) -> Vec<u8> {
    format!(
        "SIP/2.0 200 OK\r\nCall-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCSeq: 2 REGISTER\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[test]
fn contact_forms() {
    let check = |headers: &str, expected: &[&str]| {
        assert_eq!(contacts(&with_headers(headers)), expected, "{headers}");
    };
    check("", &[]);
    check("Contact: *\r\n", &["*"]);
    check("m: *\r\n", &["*"]);
    check(
        "Contact: sip:a@1.2.3.4;expires=30\r\n",
        &["sip:a@1.2.3.4 expires=30"],
    );
    check(
        "Contact: <sip:a@1.2.3.4;expires=30>\r\n",
        &["sip:a@1.2.3.4;expires=30"],
    );
    check(
        "Contact: <sip:a@h1>, <sip:a@h2>;q=0.5;expires=10,sip:a@h3\r\n",
        &["sip:a@h1", "sip:a@h2 expires=10", "sip:a@h3"],
    );
    check(
        "Contact: \"Doe, John \\\"JD\\\"\" <sip:jd@h>;expires=5\r\n",
        &["sip:jd@h expires=5"],
    );
    check(
        "Contact: Bob <sip:bob@h> ; EXPIRES = 7\r\n",
        &["sip:bob@h expires=7"],
    );
    check(
        "Contact: <sip:a@h>;expires=99999999999\r\n",
        &["sip:a@h expires=4294967295"],
    );
    check(
        "Contact: <sip:a@h>;reg-id=1;+sip.instance=\"<urn:uuid:1,2>\";expires=60\r\n",
        &["sip:a@h expires=60"],
    );
    check(
        "Contact: <sip:a@h>,, <sip:b@h>\r\n",
        &["sip:a@h", "sip:b@h"],
    );
    check("Contact: <sip:a@h>;expires=soon\r\n", &["!bad_contact"]);
    check("Contact: <sip:a@h>;expires\r\n", &["!bad_contact"]);
    check("Contact: <sip:a@h\r\n", &["!bad_contact"]);
    check("Contact: <sip:a@h> junk\r\n", &["!bad_contact"]);
    check("Contact: <>\r\n", &["!bad_contact"]);
    check("Contact: \"unterminated <sip:a@h>\r\n", &["!bad_contact"]);
    check(
        "Contact: <sip:a@h>\r\nContact: <sip:b@h>;expires=x\r\nContact: <sip:c@h>\r\n",
        &["sip:a@h", "!bad_contact"],
    );
}

#[test]
fn more_than_the_contact_limit_is_an_error() {
    let list: Vec<String> = (0..=CONTACT_COUNT_MAX)
        .map(|i| format!("<sip:u@h{i}>"))
        .collect();
    let msg = with_headers(&format!("Contact: {}\r\n", list.join(",")));
    let items = contacts(&msg);
    assert_eq!(items.len(), CONTACT_COUNT_MAX + 1);
    assert_eq!(items[CONTACT_COUNT_MAX], "!too_many_contacts");
    let list = &list[..CONTACT_COUNT_MAX];
    let msg = with_headers(&format!("Contact: {}\r\n", list.join(",")));
    assert!(contacts(&msg).iter().all(|c| !c.starts_with('!')));
}

#[test]
fn compact_forms_and_case_insensitive_names() {
    let input = b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnashds7\r\n\
i: a84b4c76e66710@pc33\r\n\
f: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n\
t: Bob <sip:bob@biloxi.com>;tag=a6c85cf\r\n\
cseq: 231 BYE\r\n\
x: 1800;refresher=uas\r\n\
EXPIRES: 60\r\n\
l: 0\r\n\r\n";
    let msg = SipMessage::parse(input).unwrap();
    assert_eq!(msg.call_id, b"a84b4c76e66710@pc33");
    assert_eq!(msg.from.tag, Some(&b"1928301774"[..]));
    assert_eq!(msg.to.tag, Some(&b"a6c85cf"[..]));
    assert_eq!(
        msg.cseq,
        CSeq {
            seq: 231,
            method: Method::Bye
        }
    );
    assert_eq!(
        msg.session_expires,
        Some(SessionExpires {
            delta_s: 1800,
            refresher: Some(Refresher::Uas)
        })
    );
    assert_eq!(msg.expires, Some(60));
    let kinds: Vec<_> = msg.headers().map(|h| h.unwrap().kind()).collect();
    assert_eq!(
        kinds,
        [
            HeaderKind::Via,
            HeaderKind::CallId,
            HeaderKind::From,
            HeaderKind::To,
            HeaderKind::CSeq,
            HeaderKind::SessionExpires,
            HeaderKind::Expires,
            HeaderKind::ContentLength,
        ]
    );
}

#[test]
fn folded_lines_continue_the_previous_header() {
    let input = b"SIP/2.0 200 OK\r\n\
Call-ID: c1\r\n\
From: \"Alice\"\r\n <sip:alice@x>\r\n\t;tag=99\r\n\
To: <sip:bob@x>;tag=2\r\n\
CSeq: 7\r\n INVITE\r\n\
Contact: <sip:a@h1>,\r\n  <sip:a@h2>;expires=5\r\n\
\r\n";
    let msg = SipMessage::parse(input).unwrap();
    assert_eq!(
        msg.from,
        NameAddr {
            uri: b"sip:alice@x",
            tag: Some(b"99")
        }
    );
    assert_eq!(
        msg.cseq,
        CSeq {
            seq: 7,
            method: Method::Invite
        }
    );
    assert_eq!(msg.header_count, 5);
    assert_eq!(contacts(input), ["sip:a@h1", "sip:a@h2 expires=5"]);
    // A Call-ID may not be folded.
    let input = b"SIP/2.0 200 OK\r\nCall-ID: c1\r\n c2\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCSeq: 1 INVITE\r\n\r\n";
    check_err(input, "bad_header");
}

#[test]
fn line_endings_leading_blank_lines_and_missing_terminator() {
    let lf = b"\r\n\r\nSIP/2.0 486 Busy Here\nCall-ID: c\nFrom: <sip:a@x>;tag=1\nTo: <sip:b@x>;tag=2\nCSeq: 1 INVITE\n\nbody: not a header\n";
    let msg = SipMessage::parse(lf).unwrap();
    assert_eq!(msg.status(), Some(486));
    assert_eq!(msg.header_count, 4);
    // Headers cut before the empty line still parse; the body is never read.
    let cut = b"SIP/2.0 180 Ringing\r\nCall-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE";
    assert_eq!(SipMessage::parse(cut).unwrap().cseq.method, Method::Invite);
    // A status line without a reason phrase.
    let bare = b"SIP/2.0 200\r\nCall-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE\r\n\r\n";
    assert_eq!(
        SipMessage::parse(bare).unwrap().start,
        StartLine::Response {
            code: 200,
            reason: b""
        }
    );
}

#[test]
fn name_addr_forms() {
    let check = |from: &str, uri: &str, tag: Option<&str>| {
        let input = format!(
            "OPTIONS sip:x SIP/2.0\r\nCall-ID: c\r\nFrom: {from}\r\nTo: <sip:b@x>\r\nCSeq: 1 OPTIONS\r\n\r\n"
        );
        let msg = SipMessage::parse(input.as_bytes()).unwrap();
        assert_eq!(msg.from.uri, uri.as_bytes(), "{from}");
        assert_eq!(msg.from.tag, tag.map(str::as_bytes), "{from}");
    };
    check("sip:alice@x;tag=1", "sip:alice@x", Some("1"));
    check(
        "<sip:alice@x;user=phone>;tag=1",
        "sip:alice@x;user=phone",
        Some("1"),
    );
    check(
        "Alice Smith <sip:alice@x> ;TAG=abc",
        "sip:alice@x",
        Some("abc"),
    );
    check(
        "\"A, B\" <sip:alice@x>;tag=1;x=\"q;,\"",
        "sip:alice@x",
        Some("1"),
    );
    check("<sip:alice@x>", "sip:alice@x", None);
    check("<sip:alice@x>;tag=\"\"", "sip:alice@x", None);
    check("< sip:alice@x >;tag=t", "sip:alice@x", Some("t"));
    check("<tel:+4312345>;tag=t", "tel:+4312345", Some("t"));
}

fn check_err(input: &[u8], label: &str) {
    let got = SipMessage::parse(input)
        .map(|_| ())
        .map_err(SipError::as_str);
    assert_eq!(got, Err(label), "{}", input.escape_ascii());
}

#[test]
fn rejected_messages() {
    check_err(b"", "empty");
    check_err(b"\r\n\r\n", "empty");
    for start in [
        "INVITE sip:x SIP/3.0",
        "INVITE sip:x",
        "INVITE  sip:x SIP/2.0",
        "INVITE sip:x SIP/2.0 extra",
        " INVITE sip:x SIP/2.0",
        "IN(VITE sip:x SIP/2.0",
        "SIP/2.0 20 OK",
        "SIP/2.0 2000 OK",
        "SIP/2.0 099 Odd",
        "SIP/2.0 700 Beyond",
        "SIP/2.1 200 OK",
        "SIP/2.0",
        "HTTP/1.1 200 OK",
    ] {
        let input = format!(
            "{start}\r\nCall-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE\r\n\r\n"
        );
        check_err(input.as_bytes(), "bad_start_line");
    }
    let base = "SIP/2.0 200 OK\r\n";
    let all = "Call-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCSeq: 1 INVITE\r\n";
    check_err(
        format!("{base}{all}no colon here\r\n\r\n").as_bytes(),
        "bad_header_line",
    );
    check_err(
        format!("{base}{all}Bad Name: x\r\n\r\n").as_bytes(),
        "bad_header_line",
    );
    check_err(
        format!("{base}{all}: x\r\n\r\n").as_bytes(),
        "bad_header_line",
    );
    check_err(
        format!("{base} folded-first: x\r\n{all}\r\n").as_bytes(),
        "bad_header_line",
    );
    for (header, label) in [
        ("Call-ID", "missing_header"),
        ("From", "missing_header"),
        ("To", "missing_header"),
        ("CSeq", "missing_header"),
    ] {
        let without: String = all
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with(header))
            .collect();
        check_err(format!("{base}{without}\r\n").as_bytes(), label);
    }
    for bad in [
        "CSeq: INVITE",
        "CSeq: 1",
        "CSeq: 1INVITE",
        "CSeq: 99999999999 INVITE",
        "CSeq: -1 INVITE",
        "From: <sip:a@x",
        "From: <sip:a@x>;tag=1, <sip:b@x>",
        "From: <sip:a@x> garbage",
        "To: \"open <sip:a@x>",
        "Call-ID: has space",
    ] {
        let name = bad.split(':').next().unwrap();
        let without: String = all
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with(name))
            .collect();
        check_err(
            format!("{base}{bad}\r\n{without}\r\n").as_bytes(),
            "bad_header",
        );
    }
    let many = "X-H: v\r\n".repeat(HEADER_COUNT_MAX);
    check_err(
        format!("{base}{all}{many}\r\n").as_bytes(),
        "too_many_headers",
    );
    let fits = "X-H: v\r\n".repeat(HEADER_COUNT_MAX - 4);
    assert!(SipMessage::parse(format!("{base}{all}{fits}\r\n").as_bytes()).is_ok());
}

#[test]
fn first_of_a_repeated_header_wins_and_odd_values_are_ignored() {
    let input = with_headers(
        "Call-ID: second\r\nExpires: soon\r\nExpires: 30\r\nSession-Expires: x;refresher=uac\r\n",
    );
    let msg = SipMessage::parse(&input).unwrap();
    assert_eq!(msg.call_id, b"c");
    assert_eq!(msg.expires, None, "the first Expires is not delta-seconds");
    assert_eq!(msg.session_expires, None);
    let input = with_headers("Session-Expires: 90\r\nExpires: 99999999999\r\n");
    let msg = SipMessage::parse(&input).unwrap();
    assert_eq!(
        msg.session_expires,
        Some(SessionExpires {
            delta_s: 90,
            refresher: None
        })
    );
    assert_eq!(msg.expires, Some(u32::MAX));
}

#[test]
fn header_names_fold_case_and_nothing_else() {
    assert_eq!(header_kind(b"CALL-ID"), HeaderKind::CallId);
    assert_eq!(header_kind(b"Call-Id"), HeaderKind::CallId);
    assert_eq!(header_kind(b"SESSION-expires"), HeaderKind::SessionExpires);
    assert_eq!(header_kind(b"I"), HeaderKind::CallId);
    assert_eq!(header_kind(b"X"), HeaderKind::SessionExpires);
    // Token bytes that are not letters never fold onto a letter or `-`.
    for b in 0..=255u8 {
        if is_token(b) && !b.is_ascii_alphabetic() && b != b'-' {
            assert!(!(b | 0x20).is_ascii_lowercase() && b | 0x20 != b'-', "{b}");
        }
    }
    assert_eq!(header_kind(b"call_id"), HeaderKind::Other);
    assert_eq!(header_kind(b"c\x0dll-id"), HeaderKind::Other);
    assert_eq!(header_kind(b"callid"), HeaderKind::Other);
    assert_eq!(header_kind(b"t0"), HeaderKind::Other);
}

#[test]
fn methods_are_case_sensitive() {
    assert_eq!(Method::from_bytes(b"INVITE"), Method::Invite);
    assert_eq!(Method::from_bytes(b"invite"), Method::Other(b"invite"));
    for method in [
        Method::Invite,
        Method::Ack,
        Method::Bye,
        Method::Cancel,
        Method::Register,
        Method::Update,
        Method::Options,
        Method::Prack,
        Method::Info,
        Method::Refer,
        Method::Subscribe,
        Method::Notify,
        Method::Message,
        Method::Publish,
        Method::Other(b"FOO"),
    ] {
        assert_eq!(Method::from_bytes(method.as_bytes()), method);
    }
}

#[test]
fn error_labels_are_unique_and_indexed() {
    let all = [
        SipError::Empty,
        SipError::BadStartLine,
        SipError::BadHeaderLine,
        SipError::TooManyHeaders,
        SipError::MissingHeader { name: "to" },
        SipError::BadHeader { name: "to" },
        SipError::BadContact,
        SipError::TooManyContacts,
    ];
    for (i, error) in all.iter().enumerate() {
        assert_eq!(error.index(), i);
    }
    let mut labels = SipError::LABELS.to_vec();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), SipError::COUNT);
}

/// Whether `part` is a subslice of `whole` (by address).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= end)
}

/// Parses and walks everything, checking that every slice lies within the input.
fn exercise(input: &[u8]) {
    let Ok(msg) = SipMessage::parse(input) else {
        return;
    };
    let mut slices = vec![msg.call_id, msg.from.uri, msg.to.uri];
    slices.extend(msg.from.tag);
    slices.extend(msg.to.tag);
    match msg.start {
        StartLine::Request { method, uri } => {
            slices.push(uri);
            if let Method::Other(m) = method {
                slices.push(m);
            }
        }
        StartLine::Response { reason, .. } => slices.push(reason),
    }
    if let Method::Other(m) = msg.cseq.method {
        slices.push(m);
    }
    for header in msg.headers().flatten() {
        slices.extend([header.name, header.value]);
    }
    let mut count = 0;
    for contact in msg.contacts() {
        count += 1;
        if let Ok(Contact::Uri { uri, .. }) = contact {
            slices.push(uri);
        }
    }
    assert!(count <= CONTACT_COUNT_MAX + 1);
    assert!(msg.headers().count() <= HEADER_COUNT_MAX);
    for slice in slices {
        assert!(within(input, slice));
    }
}

proptest! {
    #[test]
    fn find_lf_finds_the_first_lf(
        hay in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(0x8a_u8), any::<u8>()], 0..40),
    ) {
        prop_assert_eq!(find_lf(&hay), hay.iter().position(|&b| b == b'\n'));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise(&input);
    }

    #[test]
    fn parse_never_panics_on_mutated_messages(
        which in 0..2usize,
        edits in proptest::collection::vec((any::<usize>(), prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b' '), Just(b'"'), Just(b'<'), Just(b'>'),
            Just(b','), Just(b';'), Just(b'='), Just(b':'), Just(b'\\'), any::<u8>(),
        ]), 1..10),
        cut in any::<usize>(),
    ) {
        let mut input = [INVITE, REGISTER_OK][which].to_vec();
        for (at, byte) in edits {
            let at = at % input.len();
            input[at] = byte;
        }
        exercise(&input);
        input.truncate(cut % (input.len() + 1));
        exercise(&input);
    }
}
