//! OpenSIPS `event_datagram` notifications, unchanged, on the real agent's event sockets
//! (UDP and unix datagram), mixed with text-protocol datagrams.
//!
//! OpenSIPS is not in Debian 12's archive, so no live OpenSIPS runs here: the datagrams are
//! notification bodies in the shape OpenSIPS 3.x's `event_datagram` sends them (one JSON-RPC
//! 2.0 notification per datagram, every parameter it writes), for the events
//! `docs/integrations/opensips.md` subscribes to. The dialog states and usrloc expiry rules
//! they exercise are the ones the guide documents.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Agent, send_udp, send_unix, write_config};

fn dialog(callid: &str, from_tag: &str, old: u8, new: u8) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{{"hash_entry":3116,"hash_id":1804289383,"callid":"{callid}","from_tag":"{from_tag}","to_tag":"4243SIPpTag011","old_state":{old},"new_state":{new}}}}}"#
    )
}

fn contact(method: &str, aor: &str, uri: &str, expires: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"{method}","params":{{"domain":"location","aor":"{aor}","uri":"{uri}","received":"","path":"","qval":-1,"user_agent":"SIPp","socket":"udp:127.0.0.1:5060","bflags":0,"expires":{expires},"callid":"1-4242@127.0.0.1","cseq":2,"attr":"","latency":0,"shtag":""}}}}"#
    )
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn opensips_notifications_are_counted_on_both_event_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let agent = Agent::start(dir.path(), &config);
    let (udp, unix) = (agent.udp(), agent.unix());
    let in_an_hour = now_s() + 3600;

    // A call over UDP: unconfirmed → early → confirmed (start) → deleted (stop).
    for (old, new) in [(1, 2), (2, 4)] {
        send_udp(udp, dialog("a@h", "ta", old, new).as_bytes());
    }
    // A call over the unix socket, answered and not yet acked (start), then acked (nothing).
    for (old, new) in [(1, 3), (3, 4)] {
        send_unix(&unix, dialog("b@h", "tb", old, new).as_bytes());
    }
    // A failed call (early → deleted) is not a call.
    for (old, new) in [(1, 2), (2, 5)] {
        send_udp(udp, dialog("c@h", "tc", old, new).as_bytes());
    }
    agent.wait_usage("two calls up", |u| u["calls"] == 2);
    send_udp(udp, dialog("a@h", "ta", 4, 5).as_bytes());
    // The same notification again (a duplicate) changes nothing.
    send_udp(udp, dialog("a@h", "ta", 4, 5).as_bytes());
    // The text protocol on the same socket still works, and names the same calls.
    send_udp(udp, b"call-stop b@h tag=tb\n");
    agent.wait_usage("both calls ended", |u| u["calls"] == 0);

    // Registrations: two contacts, one updated, one deleted; the AoR event changes nothing.
    let aor = "alice@example.com";
    send_udp(
        udp,
        contact("E_UL_AOR_INSERT", aor, "", in_an_hour).as_bytes(),
    );
    send_udp(
        udp,
        contact(
            "E_UL_CONTACT_INSERT",
            aor,
            "sip:alice@10.0.0.1:5060",
            in_an_hour,
        )
        .as_bytes(),
    );
    send_unix(
        &unix,
        contact(
            "E_UL_CONTACT_INSERT",
            aor,
            "sip:alice@10.0.0.2:5060",
            in_an_hour,
        )
        .as_bytes(),
    );
    agent.wait_usage("two contacts", |u| {
        u["registered_subscribers"] == 1 && u["registered_contacts"] == 2
    });
    send_udp(
        udp,
        contact(
            "E_UL_CONTACT_UPDATE",
            aor,
            "sip:alice@10.0.0.1:5060",
            in_an_hour + 60,
        )
        .as_bytes(),
    );
    send_unix(
        &unix,
        contact(
            "E_UL_CONTACT_DELETE",
            aor,
            "sip:alice@10.0.0.2:5060",
            in_an_hour,
        )
        .as_bytes(),
    );
    agent.wait_usage("one contact left", |u| u["registered_contacts"] == 1);
    // An insert whose absolute expiry is already past removes the contact.
    send_udp(
        udp,
        contact(
            "E_UL_CONTACT_REFRESH",
            aor,
            "sip:alice@10.0.0.1:5060",
            now_s() - 10,
        )
        .as_bytes(),
    );
    agent.wait_usage("no contact left", |u| {
        u["registered_subscribers"] == 0 && u["registered_contacts"] == 0
    });

    // What cannot be used is counted by reason and dropped.
    send_udp(
        udp,
        br#"{"jsonrpc":"2.0","method":"E_CORE_THRESHOLD","params":{"source":"mysql","time":1200}}"#,
    );
    send_unix(&unix, b"{\"jsonrpc\":\"2.0\",\"method\":");
    send_udp(
        udp,
        br#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"callid":"x","from_tag":"y","old_state":"early","new_state":4}}"#,
    );
    let metric = |result: &str| {
        agent
            .metric(&format!(
                "tollgate_opensips_notifications_total{{result=\"{result}\"}}"
            ))
            .unwrap_or_else(|| panic!("no opensips metric for {result}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric("bad_param") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "bad_param never counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Applied: 2 starts, 2 stops (one a duplicate, still applied), 5 contact events.
    assert_eq!(metric("applied"), 9.0);
    // Ignored: 1→2 twice, 3→4, 2→5, the AoR event.
    assert_eq!(metric("ignored"), 5.0);
    assert_eq!(metric("unknown_method"), 1.0);
    assert_eq!(metric("bad_json"), 1.0);
    assert_eq!(metric("bad_param"), 1.0);
    assert_eq!(
        agent.metric("tollgate_event_outcomes_total{outcome=\"call_stopped\"}"),
        Some(2.0)
    );
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
}
