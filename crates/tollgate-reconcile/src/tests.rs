//! The parsers against recorded and documented answers (`tests/answers/`), one
//! `check(proxy, list, input, expected)` per shape, and bounds and garbage.

use proptest::prelude::*;

use super::*;

/// Renders what a sink received, one line per entry.
#[derive(Default)]
struct Render(Vec<String>);

impl ListSink for Render {
    fn call(&mut self, call: CallRef<'_>, emergency: Option<bool>) {
        let tag = call
            .from_tag
            .map(|t| format!(" tag={}", t.escape_ascii()))
            .unwrap_or_default();
        let emergency = match emergency {
            None => "",
            Some(false) => " normal",
            Some(true) => " emergency",
        };
        self.0.push(format!(
            "call {}{tag}{emergency}",
            call.call_id.escape_ascii()
        ));
    }
    fn contact(&mut self, aor: &[u8], contact: &[u8], expires: Expires) {
        let expires = match expires {
            Expires::In(s) => s.to_string(),
            Expires::Permanent => "permanent".to_string(),
        };
        self.0.push(format!(
            "contact {} {} {expires}",
            aor.escape_ascii(),
            contact.escape_ascii()
        ));
    }
}

fn answer(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/answers")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[track_caller]
fn check(proxy: ProxyKind, list: ListKind, input: &[u8], expected: &[&str], skipped: u64) {
    let mut sink = Render::default();
    let parsed =
        parse(proxy, list, input, &mut sink, Limits::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.0, expected);
    assert_eq!(parsed.listed, expected.len() as u64);
    assert_eq!(parsed.skipped, skipped);
    assert_eq!(parsed.entries, parsed.listed + parsed.skipped);
}

fn error(proxy: ProxyKind, list: ListKind, input: &[u8]) -> ParseError {
    let mut sink = Render::default();
    match parse(proxy, list, input, &mut sink, Limits::default()) {
        Ok(parsed) => panic!("parsed {parsed:?} from {}", input.escape_ascii()),
        Err(e) => e,
    }
}

#[test]
fn kamailio_dlg_list_lists_confirmed_dialogs_with_their_emergency_variable() {
    check(
        ProxyKind::Kamailio,
        ListKind::Dialogs,
        &answer("kamailio-5.6-dlg.list.json"),
        &[
            "call 1-28339@127.0.0.1 tag=28339SIPpTag001 emergency",
            "call 2-28339@127.0.0.1 tag=28339SIPpTag002",
        ],
        1,
    );
    check(
        ProxyKind::Kamailio,
        ListKind::Dialogs,
        &answer("kamailio-5.6-dlg.list-empty.json"),
        &[],
        0,
    );
}

#[test]
fn kamailio_ul_dump_lists_live_and_permanent_contacts() {
    check(
        ProxyKind::Kamailio,
        ListKind::Contacts,
        &answer("kamailio-5.6-ul.dump.json"),
        &[
            "contact service1 sip:service1@192.0.2.1:5060 58",
            "contact service1 sip:service1@192.0.2.2:5060 permanent",
        ],
        1,
    );
    check(
        ProxyKind::Kamailio,
        ListKind::Contacts,
        &answer("kamailio-5.6-ul.dump-empty.json"),
        &[],
        0,
    );
}

#[test]
fn opensips_dlg_list_and_ul_dump() {
    check(
        ProxyKind::Opensips,
        ListKind::Dialogs,
        &answer("opensips-3-dlg_list.json"),
        &[
            "call 1-4242@127.0.1.1 tag=4242SIPpTag001",
            "call 3-4242@127.0.1.1 tag=4242SIPpTag003",
        ],
        1,
    );
    check(
        ProxyKind::Opensips,
        ListKind::Contacts,
        &answer("opensips-3-ul_dump.json"),
        &[
            "contact alice sip:alice@10.0.0.1:5060 3593",
            "contact bob sip:bob@10.0.0.3:5060 permanent",
        ],
        1,
    );
}

#[test]
fn rpc_errors_are_reported_with_their_code() {
    assert_eq!(
        error(
            ProxyKind::Kamailio,
            ListKind::Dialogs,
            &answer("kamailio-5.6-error.json")
        ),
        ParseError::Rpc {
            code: 500,
            message: "Method Not Found".into()
        }
    );
    let e = error(
        ProxyKind::Opensips,
        ListKind::Contacts,
        &answer("opensips-3-error.json"),
    );
    assert_eq!(e.reason(), "rpc_error");
}

#[test]
fn garbage_is_refused_whole() {
    let k = ProxyKind::Kamailio;
    for input in [
        &b""[..],
        b"<html>502 Bad Gateway</html>",
        b"{}",
        b"[]",
        br#"{"result": {}}"#,
        br#"{"result": [{"state": 4}]}"#,
        br#"{"result": [{"call-id": "a", "state": "4"}]}"#,
        br#"{"result": [{"call-id": "a", "state": 4}]} trailing"#,
        br#"{"result": [], "result": []}"#,
        br#"{"result": [{"call-id": "a", "state": 4}"#,
    ] {
        let e = error(k, ListKind::Dialogs, input);
        assert_eq!(e.reason(), "garbage", "{}: {e}", input.escape_ascii());
    }
    let e = error(
        k,
        ListKind::Contacts,
        br#"{"result": {"Domains": [{"Domain": {"AoRs": [{"Info": {"Contacts": []}}]}}]}}"#,
    );
    assert_eq!(e.reason(), "garbage");
}

#[test]
fn a_dialog_without_tag_or_with_over_long_fields() {
    let long = "x".repeat(FIELD_LEN_MAX + 1);
    let input = format!(
        r#"{{"result": [{{"call-id": "a", "state": 4}}, {{"call-id": "{long}", "state": 4}}, {{"call-id": "b", "state": 4, "caller": {{"tag": "{long}"}}}}]}}"#
    );
    check(
        ProxyKind::Kamailio,
        ListKind::Dialogs,
        input.as_bytes(),
        &["call a", "call b"],
        1,
    );
}

#[test]
fn emergency_variable_values() {
    let input = br#"{"result": [
        {"call-id": "a", "state": 4, "variables": [{"x": "1"}, {"emergency": "0"}]},
        {"call-id": "b", "state": 4, "variables": [{"emergency": ""}]},
        {"call-id": "c", "state": 4, "variables": [{"emergency": "yes"}]},
        {"call-id": "d", "state": 4, "variables": [{"x": "1"}]}
    ]}"#;
    check(
        ProxyKind::Kamailio,
        ListKind::Dialogs,
        input,
        &[
            "call a normal",
            "call b normal",
            "call c emergency",
            "call d",
        ],
        0,
    );
}

#[test]
fn the_entry_bound_stops_the_parse() {
    let mut sink = Render::default();
    let limits = Limits { entries_max: 2 };
    let input = br#"{"result": [{"call-id": "a", "state": 4}, {"call-id": "b", "state": 4}, {"call-id": "c", "state": 4}]}"#;
    let e = parse(
        ProxyKind::Kamailio,
        ListKind::Dialogs,
        &input[..],
        &mut sink,
        limits,
    );
    assert_eq!(e, Err(ParseError::TooLarge(2)));
    let e = parse(
        ProxyKind::Kamailio,
        ListKind::Contacts,
        &answer("kamailio-5.6-ul.dump.json")[..],
        &mut sink,
        limits,
    );
    assert_eq!(e, Err(ParseError::TooLarge(2)));
}

#[test]
fn a_reader_error_is_io() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("connection reset"))
        }
    }
    let e = parse(
        ProxyKind::Kamailio,
        ListKind::Dialogs,
        Broken,
        &mut Render::default(),
        Limits::default(),
    );
    assert_eq!(e.map_err(|e| e.reason()), Err("io"));
}

#[test]
fn requests_name_the_methods() {
    assert_eq!(
        request(ProxyKind::Kamailio, ListKind::Dialogs),
        r#"{"jsonrpc":"2.0","method":"dlg.list","id":1}"#
    );
    assert_eq!(method(ProxyKind::Opensips, ListKind::Contacts), "ul_dump");
}

proptest! {
    /// Any bytes: never a panic; what was listed never exceeds what was read.
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        for proxy in [ProxyKind::Kamailio, ProxyKind::Opensips] {
            for list in [ListKind::Dialogs, ListKind::Contacts] {
                let mut sink = Render::default();
                if let Ok(parsed) = parse(proxy, list, &input[..], &mut sink, Limits::default()) {
                    prop_assert_eq!(parsed.listed, sink.0.len() as u64);
                    prop_assert!(parsed.listed <= parsed.entries);
                }
            }
        }
    }

    /// Generated Kamailio dialog lists parse back to exactly the confirmed dialogs.
    #[test]
    fn generated_dialog_lists_round_trip(
        dialogs in proptest::collection::vec(("[a-z0-9@.-]{1,20}", 1u64..=5, proptest::option::of("[a-zA-Z0-9]{1,10}")), 0..20)
    ) {
        let items: Vec<String> = dialogs.iter().map(|(id, state, tag)| {
            let caller = tag.as_ref().map(|t| format!(r#", "caller": {{"tag": "{t}"}}"#)).unwrap_or_default();
            format!(r#"{{"call-id": "{id}", "state": {state}{caller}}}"#)
        }).collect();
        let input = format!(r#"{{"jsonrpc": "2.0", "result": [{}], "id": 1}}"#, items.join(","));
        let mut sink = Render::default();
        let parsed = parse(ProxyKind::Kamailio, ListKind::Dialogs, input.as_bytes(), &mut sink, Limits::default());
        let expected: Vec<String> = dialogs.iter().filter(|(_, s, _)| matches!(s, 3 | 4)).map(|(id, _, tag)| {
            format!("call {id}{}", tag.as_ref().map(|t| format!(" tag={t}")).unwrap_or_default())
        }).collect();
        prop_assert!(parsed.is_ok());
        prop_assert_eq!(sink.0, expected);
    }
}
