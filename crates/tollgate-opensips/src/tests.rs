use proptest::prelude::*;

use super::*;

const NOW_S: u64 = 1_700_000_000;

fn now() -> MonoTime {
    MonoTime::from_unix_secs(NOW_S)
}

/// A dialog notification as OpenSIPS 3.x `event_datagram` sends it.
fn dlg(old: &str, new: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{{"hash_entry":3116,"hash_id":1804289383,"id":"c2c00000003","db_id":13391672627,"callid":"1-4242@127.0.1.1","from_tag":"4242SIPpTag001","to_tag":"4243SIPpTag011","old_state":{old},"new_state":{new}}}}}"#
    )
}

/// A usrloc contact notification with every parameter OpenSIPS 3.x sends.
fn contact_event(method: &str, expires: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"{method}","params":{{"domain":"location","aor":"alice@example.com","uri":"sip:alice@10.0.0.1:5060;transport=udp","received":"sip:192.0.2.7:40112","path":"","qval":-1,"user_agent":"Linphone-Desktop/5.2.0","socket":"udp:10.0.0.10:5060","bflags":0,"expires":{expires},"callid":"fXCdOsKvqL","cseq":23,"attr":"","latency":0,"shtag":""}}}}"#
    )
}

/// `check(json, expected)`: the event's text-protocol spelling, `-` for none, or
/// `!label`.
#[track_caller]
fn check(json: &str, expected: &str) {
    let got = match decode(json.as_bytes(), now()) {
        Ok(Some(event)) => event.to_string(),
        Ok(None) => "-".to_string(),
        Err(e) => format!("!{}", e.as_str()),
    };
    assert_eq!(got, expected, "{json}");
}

const START: &str = "call-start 1-4242@127.0.1.1 tag=4242SIPpTag001";
const STOP: &str = "call-stop 1-4242@127.0.1.1 tag=4242SIPpTag001";

#[test]
fn dialog_transitions() {
    // A call: unconfirmed → early → confirmed-not-acked → confirmed → deleted.
    check(&dlg("1", "2"), "-");
    check(&dlg("2", "3"), START);
    check(&dlg("3", "4"), "-");
    check(&dlg("4", "5"), STOP);
    // Straight to confirmed.
    check(&dlg("1", "4"), START);
    check(&dlg("2", "4"), START);
    check(&dlg("1", "3"), START);
    // Deleted before the ACK.
    check(&dlg("3", "5"), STOP);
    // Failed calls.
    check(&dlg("1", "5"), "-");
    check(&dlg("2", "5"), "-");
    // Nothing else does anything.
    check(&dlg("4", "4"), "-");
    check(&dlg("5", "5"), "-");
    check(&dlg("4", "3"), "-");
    check(&dlg("0", "1"), "-");
    check(&dlg("7", "4"), "-");
}

#[test]
fn states_may_be_strings() {
    check(&dlg(r#""2""#, r#""4""#), START);
    check(&dlg(r#"" 4 ""#, r#""5""#), STOP);
    check(&dlg(r#""two""#, "4"), "!bad_param");
    check(&dlg("2.5", "4"), "!bad_param");
    check(&dlg("true", "4"), "!bad_param");
    check(&dlg("null", "4"), "!missing_param");
}

#[test]
fn dialog_params() {
    let no_tag = r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"callid":"abc","from_tag":"","old_state":2,"new_state":4}}"#;
    check(no_tag, "call-start abc");
    let no_callid = r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"from_tag":"t","old_state":2,"new_state":4}}"#;
    check(no_callid, "!missing_param");
    let empty_callid = r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"callid":"","from_tag":"t","old_state":2,"new_state":4}}"#;
    check(empty_callid, "!bad_param");
    let number_callid = r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"callid":7,"from_tag":"t","old_state":2,"new_state":4}}"#;
    check(number_callid, "!bad_param");
    // A transition that changes nothing needs no call identity.
    let bare = r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"old_state":1,"new_state":2}}"#;
    check(bare, "-");
    let unicode = r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"callid":"caf\u00e9@h","from_tag":"t","old_state":4,"new_state":5}}"#;
    check(unicode, "call-stop caf\\xc3\\xa9@h tag=t");
}

#[test]
fn contacts_get_their_remaining_lifetime() {
    let contact = "alice@example.com sip:alice@10.0.0.1:5060;transport=udp";
    for method in [
        "E_UL_CONTACT_INSERT",
        "E_UL_CONTACT_UPDATE",
        "E_UL_CONTACT_REFRESH",
    ] {
        check(
            &contact_event(method, "1700003600"),
            &format!("reg {contact} 3600"),
        );
        check(
            &contact_event(method, r#""1700000060""#),
            &format!("reg {contact} 60"),
        );
        check(
            &contact_event(method, "1700000000"),
            &format!("reg {contact} 0"),
        );
        check(
            &contact_event(method, "1699999000"),
            &format!("reg {contact} 0"),
        );
        // usrloc's "forced expired" time.
        check(&contact_event(method, "10"), &format!("reg {contact} 0"));
        check(
            &contact_event(method, "0"),
            &format!("reg {contact} 4294967295"),
        );
        check(
            &contact_event(method, "99999999999"),
            &format!("reg {contact} 4294967295"),
        );
        check(&contact_event(method, r#""soon""#), "!bad_param");
    }
    check(
        &contact_event("E_UL_CONTACT_DELETE", "1700003600"),
        &format!("reg {contact} 0"),
    );
    let no_uri = r#"{"jsonrpc":"2.0","method":"E_UL_CONTACT_DELETE","params":{"domain":"location","aor":"alice"}}"#;
    check(no_uri, "!missing_param");
    let no_expires = r#"{"jsonrpc":"2.0","method":"E_UL_CONTACT_INSERT","params":{"aor":"alice","uri":"sip:a@h"}}"#;
    check(no_expires, "!missing_param");
    let empty_aor =
        r#"{"jsonrpc":"2.0","method":"E_UL_CONTACT_DELETE","params":{"aor":"","uri":"sip:a@h"}}"#;
    check(empty_aor, "!bad_param");
}

#[test]
fn other_events() {
    check(
        r#"{"jsonrpc":"2.0","method":"E_UL_AOR_INSERT","params":{"domain":"location","aor":"alice"}}"#,
        "-",
    );
    check(
        r#"{"jsonrpc":"2.0","method":"E_UL_AOR_DELETE","params":{"domain":"location","aor":"alice"}}"#,
        "-",
    );
    check(
        r#"{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.0.2.1"}}"#,
        "!unknown_method",
    );
    check(
        r#"{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD"}"#,
        "!unknown_method",
    );
    let long = format!(r#"{{"jsonrpc":"2.0","method":"{}"}}"#, "X".repeat(1000));
    match decode(long.as_bytes(), now()) {
        Err(OpensipsError::UnknownMethod { method }) => assert_eq!(method.len(), 64),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_envelopes() {
    check("", "!bad_json");
    check("{", "!bad_json");
    check("call-start x", "!bad_json");
    check("[1,2]", "!bad_envelope");
    check(
        r#"{"method":"E_DLG_STATE_CHANGED","params":{}}"#,
        "!bad_envelope",
    );
    check(
        r#"{"jsonrpc":"1.0","method":"E_DLG_STATE_CHANGED","params":{}}"#,
        "!bad_envelope",
    );
    check(r#"{"jsonrpc":"2.0","params":{}}"#, "!bad_envelope");
    check(
        r#"{"jsonrpc":"2.0","method":5,"params":{}}"#,
        "!bad_envelope",
    );
    check(
        r#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":[1,2]}"#,
        "!bad_envelope",
    );
    let huge = format!(" {}", " ".repeat(NOTIFICATION_LEN_MAX));
    check(&huge, "!too_long");
}

#[test]
fn json_is_told_apart_from_the_other_formats() {
    assert!(looks_like_json(dlg("2", "4").as_bytes()));
    assert!(looks_like_json(b"\r\n {\"jsonrpc\":\"2.0\"}"));
    assert!(!looks_like_json(b"call-start abc"));
    assert!(!looks_like_json(&[0xFF, b'T', b'G', 1]));
    assert!(!looks_like_json(b""));
    assert!(!looks_like_json(b"   "));
}

#[test]
fn labels_are_unique_and_indexed() {
    let all = [
        OpensipsError::TooLong,
        OpensipsError::BadJson,
        OpensipsError::BadEnvelope,
        OpensipsError::UnknownMethod {
            method: String::new(),
        },
        OpensipsError::MissingParam { name: "x" },
        OpensipsError::BadParam { name: "x" },
    ];
    for (i, error) in all.iter().enumerate() {
        assert_eq!(error.index(), i);
    }
    let mut labels = OpensipsError::LABELS.to_vec();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), OpensipsError::COUNT);
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes, now());
    }

    #[test]
    fn decode_never_panics_on_mutated_notifications(
        which in 0..2usize,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut json = [dlg("2", "4"), contact_event("E_UL_CONTACT_INSERT", "1700003600")][which]
            .clone()
            .into_bytes();
        for (at, byte) in edits {
            let at = at % json.len();
            json[at] = byte;
        }
        let _ = decode(&json, now());
    }
}
