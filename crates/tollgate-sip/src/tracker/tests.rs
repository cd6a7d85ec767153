//! Scenario tests: message sequences as a proxy mirrors them (each relayed message twice,
//! once as received and once as sent), with the events they must emit.

use proptest::prelude::*;

use super::*;

const T0_MS: u64 = 1_700_000_000_000;

/// A constant hash key: tests need no secret (the collector draws one from the OS).
const TEST_HASH_KEY: [u64; 2] = [0x7011_6a7e, 0x5eed];

/// One call between SIPp's UAC (caller) and UAS (callee), through Kamailio at 127.0.0.1.
#[derive(Clone, Copy)]
struct Call {
    call_id: &'static str,
    from_tag: &'static str,
    to_tag: &'static str,
    ruri: &'static str,
}

const CALL: Call = Call {
    call_id: "1-4242@127.0.1.1",
    from_tag: "4242SIPpTag001",
    to_tag: "4243SIPpTag011",
    ruri: "sip:service@127.0.0.1:5060",
};

impl Call {
    fn caller(&self) -> String {
        format!("sipp <sip:sipp@127.0.1.1:5061>;tag={}", self.from_tag)
    }

    fn callee(&self, tagged: bool) -> String {
        let tag = if tagged {
            format!(";tag={}", self.to_tag)
        } else {
            String::new()
        };
        format!("<{}>{tag}", self.ruri)
    }

    /// A request from the caller (`from_caller`) or the callee.
    fn request(&self, method: &str, cseq: u32, from_caller: bool, extra: &str) -> String {
        let (from, to, uri) = if from_caller {
            let in_dialog = method != "INVITE" || cseq > 1;
            let to_tagged = in_dialog && method != "CANCEL";
            (self.caller(), self.callee(to_tagged), self.ruri.to_string())
        } else {
            (
                self.callee(true),
                self.caller(),
                "sip:sipp@127.0.1.1:5061".to_string(),
            )
        };
        format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-4242-{cseq}-0\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:sipp@127.0.1.1:5061>\r\n\
             Max-Forwards: 70\r\n\
             {extra}\
             Content-Length: 0\r\n\
             \r\n",
            self.call_id
        )
    }

    fn invite(&self) -> String {
        self.request("INVITE", 1, true, "Subject: Performance Test\r\n")
    }

    /// A response to a request of the caller (`to_caller`) or of the callee.
    fn response(&self, code: u16, cseq: u32, method: &str, to_caller: bool, extra: &str) -> String {
        let reason = match code {
            100 => "Trying",
            180 => "Ringing",
            200 => "OK",
            408 => "Request Timeout",
            481 => "Call/Transaction Does Not Exist",
            486 => "Busy Here",
            487 => "Request Terminated",
            _ => "Whatever",
        };
        let (from, to) = if to_caller {
            (self.caller(), self.callee(code != 100))
        } else {
            (self.callee(true), self.caller())
        };
        format!(
            "SIP/2.0 {code} {reason}\r\n\
             Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-4242-{cseq}-0;received=127.0.1.1\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {method}\r\n\
             {extra}\
             Content-Length: 0\r\n\
             \r\n",
            self.call_id
        )
    }

    fn ok(&self, cseq: u32, method: &str) -> String {
        self.response(200, cseq, method, true, "Contact: <sip:127.0.1.1:5062>\r\n")
    }

    /// INVITE … ACK of an answered call, as mirrored: every message twice but the 100
    /// Trying (the proxy makes it itself).
    fn setup(&self) -> Vec<Step> {
        let mut steps = vec![
            twice(0, self.invite()),
            once(0, self.response(100, 1, "INVITE", true, "")),
        ];
        steps.push(twice(1000, self.response(180, 1, "INVITE", true, "")));
        steps.push(twice(2000, self.ok(1, "INVITE")));
        steps.push(twice(2000, self.request("ACK", 1, true, "")));
        steps
    }

    /// BYE from the caller and its 200, mirrored.
    fn hangup(&self, at_ms: u64) -> Vec<Step> {
        vec![
            twice(at_ms, self.request("BYE", 2, true, "")),
            twice(at_ms, self.ok(2, "BYE")),
        ]
    }
}

/// One input of a scenario: a message seen `copies` times at `at_ms` (after T0) by capture
/// agent `capture_id`, or a sweep.
#[derive(Clone)]
enum Step {
    Msg {
        at_ms: u64,
        capture_id: u32,
        copies: usize,
        text: String,
    },
    Expire {
        at_ms: u64,
    },
}

fn once(at_ms: u64, text: String) -> Step {
    Step::Msg {
        at_ms,
        capture_id: 1,
        copies: 1,
        text,
    }
}

fn twice(at_ms: u64, text: String) -> Step {
    Step::Msg {
        at_ms,
        capture_id: 1,
        copies: 2,
        text,
    }
}

fn expire(at_ms: u64) -> Step {
    Step::Expire { at_ms }
}

/// Runs the steps through a fresh tracker; returns it and the events, rendered.
fn run_with(config: TrackerConfig, steps: &[Step]) -> (MirrorTracker, Vec<String>) {
    run_keyed(config, TEST_HASH_KEY, steps)
}

/// [`run_with`] with this hash key.
fn run_keyed(
    config: TrackerConfig,
    hash_key: [u64; 2],
    steps: &[Step],
) -> (MirrorTracker, Vec<String>) {
    let mut tracker = MirrorTracker::new(config, hash_key).unwrap();
    let mut out = Vec::new();
    for step in steps {
        match step {
            Step::Msg {
                at_ms,
                capture_id,
                copies,
                text,
            } => {
                for _ in 0..*copies {
                    let now = MonoTime::from_unix_ms(T0_MS + at_ms);
                    tracker
                        .handle_payload(now, *capture_id, text.as_bytes(), &mut out)
                        .unwrap_or_else(|e| panic!("{e}: {text}"));
                }
            }
            Step::Expire { at_ms } => {
                tracker.expire(MonoTime::from_unix_ms(T0_MS + at_ms), &mut out)
            }
        }
    }
    (tracker, out.iter().map(ToString::to_string).collect())
}

fn run(steps: &[Step]) -> (MirrorTracker, Vec<String>) {
    run_with(TrackerConfig::default(), steps)
}

/// `check(steps, expected)`: the events a scenario emits, in order.
#[track_caller]
fn check(steps: &[Step], expected: &[&str]) -> MirrorTracker {
    let (tracker, events) = run(steps);
    assert_eq!(events, expected);
    tracker
}

const START: &str = "call-start 1-4242@127.0.1.1 tag=4242SIPpTag001";
const STOP: &str = "call-stop 1-4242@127.0.1.1 tag=4242SIPpTag001";
const REFRESH: &str = "call-refresh 1-4242@127.0.1.1 tag=4242SIPpTag001";

fn concat(parts: &[Vec<Step>]) -> Vec<Step> {
    parts.concat()
}

#[test]
fn mirrored_call_counts_once() {
    let steps = concat(&[CALL.setup(), CALL.hangup(60_000)]);
    let packets: usize = steps
        .iter()
        .map(|s| match s {
            Step::Msg { copies, .. } => *copies,
            Step::Expire { .. } => 0,
        })
        .sum();
    assert_eq!(packets, 13, "a plain call is 13 HEP packets");
    let tracker = check(&steps, &[START, STOP]);
    let c = tracker.counters();
    assert_eq!((c.invites, c.calls_started, c.calls_stopped_bye), (1, 1, 1));
    assert_eq!(c.calls_started_without_invite, 0);
    assert_eq!(c.requests + c.responses, 13);
    assert_eq!(tracker.dialog_count(), 0);
    assert_eq!(tracker.pending_count(), 0);
    assert_eq!(tracker.ended_count(), 1);
}

#[test]
fn retransmitted_200_changes_nothing() {
    let mut steps = CALL.setup();
    steps.push(twice(2500, CALL.ok(1, "INVITE")));
    steps.push(twice(3500, CALL.ok(1, "INVITE")));
    let tracker = check(&steps, &[START]);
    // The INVITE's copy, the 200's copy, and the four late 200s.
    assert_eq!(tracker.counters().duplicates, 1 + 1 + 4);
    assert_eq!(tracker.dialog_count(), 1);
}

#[test]
fn an_invite_copy_mirrored_after_its_486_is_not_a_second_attempt() {
    // Kamailio's outgoing INVITE can be captured after the 486 came back (seen with sipp's
    // UAS answering busy at once): the late copy and the relayed 486 change nothing.
    let steps = [
        once(0, CALL.invite()),
        once(5, CALL.response(486, 1, "INVITE", true, "")),
        once(6, CALL.invite()),
        once(7, CALL.response(486, 1, "INVITE", true, "")),
        twice(8, CALL.request("ACK", 1, true, "")),
    ];
    let tracker = check(&steps, &[]);
    assert_eq!(tracker.counters().calls_failed, 1);
    assert_eq!(tracker.counters().invites, 1);
    assert_eq!(tracker.pending_count(), 0);
}

#[test]
fn a_new_invite_after_a_failure_is_a_new_attempt() {
    // After a 486 (or a 3xx) the caller may try again in the same Call-ID and From-tag with
    // a higher CSeq: that one is tracked and, answered, counted as a call with its INVITE.
    let steps = [
        twice(0, CALL.invite()),
        twice(5, CALL.response(486, 1, "INVITE", true, "")),
        twice(
            1000,
            CALL.invite().replace("CSeq: 1 INVITE", "CSeq: 2 INVITE"),
        ),
        twice(1500, CALL.ok(2, "INVITE")),
    ];
    let tracker = check(&steps, &[START]);
    let c = tracker.counters();
    assert_eq!((c.calls_failed, c.calls_started), (1, 1));
    assert_eq!(c.calls_started_without_invite, 0);
    assert_eq!(tracker.pending_count(), 0);
}

#[test]
fn busy_call_is_not_a_call() {
    let steps = [
        twice(0, CALL.invite()),
        once(0, CALL.response(100, 1, "INVITE", true, "")),
        twice(500, CALL.response(180, 1, "INVITE", true, "")),
        twice(900, CALL.response(486, 1, "INVITE", true, "")),
        twice(900, CALL.request("ACK", 1, true, "")),
    ];
    let tracker = check(&steps, &[]);
    assert_eq!(tracker.counters().calls_failed, 1);
    assert_eq!(tracker.pending_count(), 0);
}

#[test]
fn an_authentication_challenge_is_not_a_failure() {
    let call = Call {
        ruri: "sip:112@127.0.0.1",
        ..CALL
    };
    let steps = concat(&[
        vec![
            twice(0, call.invite()),
            twice(10, call.response(407, 1, "INVITE", true, "")),
            twice(10, call.request("ACK", 1, true, "")),
            twice(
                20,
                call.invite().replace("CSeq: 1 INVITE", "CSeq: 2 INVITE"),
            ),
            twice(2000, call.ok(2, "INVITE")),
        ],
        call.hangup(60_000)
            .into_iter()
            .map(|s| match s {
                Step::Msg {
                    at_ms,
                    capture_id,
                    copies,
                    text,
                } => Step::Msg {
                    at_ms,
                    capture_id,
                    copies,
                    text: text.replace("CSeq: 2 BYE", "CSeq: 3 BYE"),
                },
                other => other,
            })
            .collect(),
    ]);
    let tracker = check(&steps, &[&format!("{START} emergency"), STOP]);
    assert_eq!(tracker.counters().calls_failed, 0);
}

#[test]
fn cancelled_call_is_not_a_call() {
    let steps = [
        twice(0, CALL.invite()),
        twice(500, CALL.response(180, 1, "INVITE", true, "")),
        twice(3000, CALL.request("CANCEL", 1, true, "")),
        twice(3000, CALL.response(200, 1, "CANCEL", true, "")),
        twice(3000, CALL.response(487, 1, "INVITE", true, "")),
        twice(3000, CALL.request("ACK", 1, true, "")),
    ];
    let tracker = check(&steps, &[]);
    assert_eq!(tracker.counters().calls_failed, 1);
}

#[test]
fn cancel_crossing_a_200_is_a_call() {
    let steps = concat(&[
        vec![
            twice(0, CALL.invite()),
            twice(500, CALL.response(180, 1, "INVITE", true, "")),
            twice(3000, CALL.request("CANCEL", 1, true, "")),
            twice(3000, CALL.ok(1, "INVITE")),
            // Too late to cancel: the UAS answers the CANCEL with 481.
            twice(3000, CALL.response(481, 1, "CANCEL", true, "")),
            twice(3000, CALL.request("ACK", 1, true, "")),
        ],
        CALL.hangup(9000),
    ]);
    check(&steps, &[START, STOP]);
}

#[test]
fn re_invite_and_update_refresh_once_each() {
    let steps = concat(&[
        CALL.setup(),
        vec![
            // re-INVITE from the caller and its 200.
            twice(30_000, CALL.request("INVITE", 2, true, "")),
            twice(30_000, CALL.ok(2, "INVITE")),
            twice(30_000, CALL.request("ACK", 2, true, "")),
            // re-INVITE from the callee: its own CSeq space starts at 1.
            twice(40_000, CALL.request("INVITE", 1, false, "")),
            twice(40_000, CALL.response(200, 1, "INVITE", false, "")),
            // UPDATE from the caller.
            twice(50_000, CALL.request("UPDATE", 3, true, "")),
            twice(50_000, CALL.ok(3, "UPDATE")),
        ],
        CALL.hangup(60_000)
            .into_iter()
            .map(|s| match s {
                Step::Msg {
                    at_ms,
                    capture_id,
                    copies,
                    text,
                } => Step::Msg {
                    at_ms,
                    capture_id,
                    copies,
                    text: text.replace("CSeq: 2 BYE", "CSeq: 4 BYE"),
                },
                other => other,
            })
            .collect(),
    ]);
    let tracker = check(&steps, &[START, REFRESH, REFRESH, REFRESH, STOP]);
    assert_eq!(tracker.counters().calls_refreshed, 3);
}

#[test]
fn a_failed_re_invite_keeps_the_call_but_481_ends_it() {
    let steps = concat(&[
        CALL.setup(),
        vec![
            twice(30_000, CALL.request("INVITE", 2, true, "")),
            twice(30_000, CALL.response(491, 2, "INVITE", true, "")),
            twice(40_000, CALL.request("INVITE", 3, true, "")),
            twice(40_000, CALL.response(481, 3, "INVITE", true, "")),
        ],
        CALL.hangup(60_000),
    ]);
    let tracker = check(&steps, &[START, REFRESH, REFRESH, STOP]);
    assert_eq!(tracker.counters().calls_stopped_dialog_gone, 1);
    assert_eq!(tracker.counters().calls_stopped_bye, 0);
}

#[test]
fn timeout_of_an_in_dialog_request_ends_the_call() {
    let steps = concat(&[
        CALL.setup(),
        vec![
            twice(30_000, CALL.request("INFO", 1, false, "")),
            twice(62_000, CALL.response(408, 1, "INFO", false, "")),
        ],
    ]);
    check(&steps, &[START, STOP]);
}

#[test]
fn a_failure_from_another_fork_after_the_200_changes_nothing() {
    let steps = concat(&[
        CALL.setup(),
        vec![
            twice(2100, CALL.response(408, 1, "INVITE", true, "")),
            twice(2100, CALL.response(486, 1, "INVITE", true, "")),
        ],
    ]);
    let tracker = check(&steps, &[START]);
    assert_eq!(tracker.dialog_count(), 1);
}

#[test]
fn bye_from_the_callee_stops_the_callers_call() {
    let steps = concat(&[
        CALL.setup(),
        vec![
            twice(60_000, CALL.request("BYE", 1, false, "")),
            twice(60_000, CALL.response(200, 1, "BYE", false, "")),
        ],
    ]);
    check(&steps, &[START, STOP]);
}

#[test]
fn the_bye_request_is_enough() {
    let steps = concat(&[
        CALL.setup(),
        vec![once(60_000, CALL.request("BYE", 2, true, ""))],
    ]);
    check(&steps, &[START, STOP]);
}

#[test]
fn a_late_200_after_the_bye_does_not_restart_the_call() {
    let steps = concat(&[
        CALL.setup(),
        CALL.hangup(60_000),
        vec![twice(61_000, CALL.ok(1, "INVITE"))],
    ]);
    check(&steps, &[START, STOP]);
    // Once the ended dialog is forgotten, a very late copy would start it again.
    let steps = concat(&[
        CALL.setup(),
        CALL.hangup(60_000),
        vec![
            expire(60_000 + 64_000),
            twice(60_000 + 64_000, CALL.ok(1, "INVITE")),
        ],
    ]);
    check(&steps, &[START, STOP, START]);
}

#[test]
fn an_unknown_bye_stops_both_tags() {
    let tracker = check(
        &CALL.hangup(0),
        &[STOP, "call-stop 1-4242@127.0.1.1 tag=4243SIPpTag011"],
    );
    assert_eq!(tracker.counters().bye_unknown, 1);
    assert_eq!(tracker.ended_count(), 2);
    // From the callee: the same two stops, in the message's tag order.
    check(
        &[twice(0, CALL.request("BYE", 1, false, ""))],
        &["call-stop 1-4242@127.0.1.1 tag=4243SIPpTag011", STOP],
    );
}

#[test]
fn a_call_started_without_its_invite_stops_both_tags() {
    // The agent restarted mid-call: the first thing it sees is a callee's re-INVITE 200.
    let steps = [
        twice(0, CALL.response(200, 1, "INVITE", false, "")),
        twice(1000, CALL.request("BYE", 5, true, "")),
    ];
    let tracker = check(
        &steps,
        &[
            "call-start 1-4242@127.0.1.1 tag=4243SIPpTag011",
            "call-stop 1-4242@127.0.1.1 tag=4243SIPpTag011",
            STOP,
        ],
    );
    assert_eq!(tracker.counters().calls_started_without_invite, 1);
}

#[test]
fn session_expires_ends_a_call_without_refresh() {
    let se = "Session-Expires: 90;refresher=uac\r\n";
    let answered = |at| twice(at, CALL.response(200, 1, "INVITE", true, se));
    let steps = [
        twice(0, CALL.invite()),
        answered(2000),
        expire(2000 + 89_999),
        expire(2000 + 90_000),
        expire(2000 + 200_000),
    ];
    let tracker = check(&steps, &[START, STOP]);
    assert_eq!(tracker.counters().calls_stopped_session_expired, 1);
    // A refresh at 45 s pushes the end out to 45 + 90 s.
    let steps = [
        twice(0, CALL.invite()),
        answered(0),
        twice(45_000, CALL.request("UPDATE", 2, true, se)),
        twice(45_000, CALL.response(200, 2, "UPDATE", true, se)),
        expire(134_999),
    ];
    check(&steps, &[START, REFRESH]);
    let steps = [
        twice(0, CALL.invite()),
        answered(0),
        twice(45_000, CALL.request("UPDATE", 2, true, se)),
        twice(45_000, CALL.response(200, 2, "UPDATE", true, se)),
        expire(135_000),
    ];
    check(&steps, &[START, REFRESH, STOP]);
    // A refreshing 2xx without Session-Expires turns the timer off.
    let steps = [
        twice(0, CALL.invite()),
        answered(0),
        twice(45_000, CALL.request("INVITE", 2, true, "")),
        twice(45_000, CALL.ok(2, "INVITE")),
        expire(1_000_000),
    ];
    check(&steps, &[START, REFRESH]);
}

#[test]
fn idle_dialogs_are_forgotten_silently() {
    let config = TrackerConfig {
        dialog_idle_max_ms: 3_600_000,
        ..TrackerConfig::default()
    };
    let mut steps = CALL.setup();
    steps.push(expire(2000 + 3_599_999));
    let (tracker, _) = run_with(config.clone(), &steps);
    assert_eq!(tracker.dialog_count(), 1);
    steps.push(expire(2000 + 3_600_000));
    let (tracker, events) = run_with(config, &steps);
    assert_eq!(events, [START]);
    assert_eq!(tracker.dialog_count(), 0);
    assert_eq!(tracker.counters().dialogs_forgotten, 1);
}

#[test]
fn unanswered_invites_are_forgotten_after_the_pending_ttl() {
    let steps = [twice(0, CALL.invite()), expire(299_999)];
    let (tracker, _) = run(&steps);
    assert_eq!(tracker.pending_count(), 1);
    let steps = [twice(0, CALL.invite()), expire(300_000)];
    let (tracker, _) = run(&steps);
    assert_eq!(tracker.pending_count(), 0);
    assert_eq!(tracker.counters().pending_expired, 1);
}

#[test]
fn emergency_calls_are_flagged() {
    for ruri in [
        "urn:service:sos",
        "urn:service:sos.fire",
        "sip:112@127.0.0.1",
        "sip:911@127.0.0.1;user=phone",
    ] {
        let call = Call { ruri, ..CALL };
        let steps = call.setup();
        check(&steps, &[&format!("{START} emergency")]);
    }
    // Not configured: 112 is an ordinary number, the URN still counts.
    let config = TrackerConfig {
        emergency_numbers: vec![b"999".to_vec()],
        ..TrackerConfig::default()
    };
    let (_, events) = run_with(
        config.clone(),
        &Call {
            ruri: "sip:112@127.0.0.1",
            ..CALL
        }
        .setup(),
    );
    assert_eq!(events, [START]);
    let (_, events) = run_with(
        config,
        &Call {
            ruri: "sip:999@127.0.0.1",
            ..CALL
        }
        .setup(),
    );
    assert_eq!(events, [format!("{START} emergency")]);
    // The INVITE was not seen: the 2xx's To URI decides.
    let call = Call {
        ruri: "sip:911@127.0.0.1",
        ..CALL
    };
    let (tracker, events) = run(&[twice(0, call.ok(1, "INVITE"))]);
    assert_eq!(events, [format!("{START} emergency")]);
    assert_eq!(tracker.counters().calls_started_emergency, 1);
}

#[test]
fn capture_ids_keep_nodes_apart() {
    let mut steps = CALL.setup();
    for step in CALL.setup() {
        if let Step::Msg {
            at_ms,
            copies,
            text,
            ..
        } = step
        {
            steps.push(Step::Msg {
                at_ms,
                capture_id: 2,
                copies,
                text,
            });
        }
    }
    let tracker = check(&steps, &[START, START]);
    assert_eq!(tracker.dialog_count(), 2);
}

#[test]
fn a_full_dialog_table_still_counts_the_call() {
    let config = TrackerConfig {
        dialog_count_max: 0,
        pending_count_max: 0,
        ..TrackerConfig::default()
    };
    let steps = concat(&[CALL.setup(), CALL.hangup(60_000)]);
    let (tracker, events) = run_with(config, &steps);
    assert_eq!(
        events,
        [
            START,
            START,
            STOP,
            "call-stop 1-4242@127.0.1.1 tag=4243SIPpTag011"
        ]
    );
    let c = tracker.counters();
    // Both copies of the INVITE and of the 200 found their table full.
    assert_eq!((c.pending_full, c.dialogs_full, c.bye_unknown), (2, 2, 1));
}

#[test]
fn responses_without_a_dialog_change_nothing() {
    let steps = [
        twice(0, CALL.response(486, 1, "INVITE", true, "")),
        twice(0, CALL.response(481, 3, "INVITE", true, "")),
        twice(0, CALL.response(408, 1, "OPTIONS", true, "")),
        twice(0, CALL.response(200, 4, "UPDATE", true, "")),
        twice(0, CALL.request("INVITE", 4, true, "")),
        twice(0, CALL.request("CANCEL", 1, true, "")),
    ];
    check(&steps, &[]);
}

/// A 200 OK to REGISTER for `aor` with the given Contact header lines.
fn register_ok(cseq: u32, extra: &str) -> String {
    format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-77-{cseq}-0;received=127.0.1.1\r\n\
         From: <sip:alice@example.com>;tag=77SIPpTag00{cseq}\r\n\
         To: <sip:Alice@Example.COM;transport=udp>;tag=b27e1a1d33761e85846fc98f5f3a7e58.e1a1\r\n\
         Call-ID: 1-77@127.0.1.1\r\n\
         CSeq: {cseq} REGISTER\r\n\
         {extra}\
         Server: kamailio (5.6.3 (x86_64/linux))\r\n\
         Content-Length: 0\r\n\
         \r\n"
    )
}

fn register(cseq: u32, extra: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.1.1:5061;branch=z9hG4bK-77-{cseq}-0\r\n\
         From: <sip:alice@example.com>;tag=77SIPpTag00{cseq}\r\n\
         To: <sip:alice@example.com>\r\n\
         Call-ID: 1-77@127.0.1.1\r\n\
         CSeq: {cseq} REGISTER\r\n\
         {extra}\
         Content-Length: 0\r\n\
         \r\n"
    )
}

const AOR: &str = "sip:Alice@example.com";

#[test]
fn register_ok_replaces_the_binding_set() {
    let three = "Contact: <sip:alice@10.0.0.1:5060>;expires=3600\r\n\
                 Contact: <sip:alice@10.0.0.2:5060>;expires=60, \"Alice, desk\" <sip:alice@10.0.0.3:5060;ob>;expires=1800\r\n";
    let two = "Contact: <sip:alice@10.0.0.1:5060>;expires=3600, <sip:alice@10.0.0.3:5060;ob>;expires=1790\r\n";
    let steps = [
        // The REGISTER request itself counts for nothing.
        twice(
            0,
            register(1, "Contact: <sip:alice@10.0.0.1:5060>\r\nExpires: 8\r\n"),
        ),
        twice(0, register_ok(1, three)),
        twice(1000, register_ok(2, two)),
        twice(2000, register(3, "Contact: *\r\nExpires: 0\r\n")),
        twice(2000, register_ok(3, "")),
    ];
    let tracker = check(
        &steps,
        &[
            &format!("reg {AOR} sip:alice@10.0.0.1:5060 3600"),
            &format!("reg {AOR} sip:alice@10.0.0.2:5060 60"),
            &format!("reg {AOR} sip:alice@10.0.0.3:5060;ob 1800"),
            // The second 200: the dropped contact is removed, the others refreshed.
            &format!("reg {AOR} sip:alice@10.0.0.2:5060 0"),
            &format!("reg {AOR} sip:alice@10.0.0.1:5060 3600"),
            &format!("reg {AOR} sip:alice@10.0.0.3:5060;ob 1790"),
            // The empty 200: unregistered.
            &format!("reg {AOR} sip:alice@10.0.0.1:5060 0"),
            &format!("reg {AOR} sip:alice@10.0.0.3:5060;ob 0"),
        ],
    );
    let c = tracker.counters();
    assert_eq!((c.registers, c.duplicates), (3, 3));
    assert_eq!((c.contacts_registered, c.contacts_removed), (5, 3));
    // The unregistered AoR is remembered until the next sweep.
    assert_eq!(tracker.aor_count(), 1);
    let mut steps = steps.to_vec();
    steps.push(expire(2000));
    let (tracker, _) = run(&steps);
    assert_eq!(tracker.aor_count(), 0);
}

#[test]
fn per_contact_expires_overrides_the_expires_header() {
    let contacts =
        "Contact: <sip:alice@10.0.0.1>;expires=120, <sip:alice@10.0.0.2>\r\nExpires: 300\r\n";
    check(
        &[twice(0, register_ok(1, contacts))],
        &[
            &format!("reg {AOR} sip:alice@10.0.0.1 120"),
            &format!("reg {AOR} sip:alice@10.0.0.2 300"),
        ],
    );
    // Neither: the default (3600 s).
    check(
        &[once(0, register_ok(1, "Contact: <sip:alice@10.0.0.1>\r\n"))],
        &[&format!("reg {AOR} sip:alice@10.0.0.1 3600")],
    );
    // A contact listed with expires=0 is removed, once.
    check(
        &[
            once(
                0,
                register_ok(1, "Contact: <sip:alice@10.0.0.1>;expires=60\r\n"),
            ),
            once(
                0,
                register_ok(2, "Contact: <sip:alice@10.0.0.1>;expires=0\r\n"),
            ),
        ],
        &[
            &format!("reg {AOR} sip:alice@10.0.0.1 60"),
            &format!("reg {AOR} sip:alice@10.0.0.1 0"),
        ],
    );
}

#[test]
fn a_star_contact_unregisters_everything() {
    // Registrars answer `Contact: *` with no Contact; one that echoes `*` means the same.
    check(
        &[
            once(
                0,
                register_ok(1, "Contact: <sip:alice@10.0.0.1>;expires=60\r\n"),
            ),
            once(1000, register_ok(2, "Contact: *\r\nExpires: 0\r\n")),
        ],
        &[
            &format!("reg {AOR} sip:alice@10.0.0.1 60"),
            &format!("reg {AOR} sip:alice@10.0.0.1 0"),
        ],
    );
}

#[test]
fn stale_and_malformed_register_oks_change_nothing() {
    let one = "Contact: <sip:alice@10.0.0.1>;expires=60\r\n";
    let tracker = check(
        &[
            once(0, register_ok(2, one)),
            once(0, register_ok(1, "")), // reordered: older than the last one applied
            once(
                0,
                register_ok(3, "Contact: <sip:alice@10.0.0.1>;expires=never\r\n"),
            ),
            once(0, register_ok(4, "").replace("200 OK", "202 Accepted")),
        ],
        &[&format!("reg {AOR} sip:alice@10.0.0.1 60")],
    );
    assert_eq!(tracker.counters().registers_malformed, 1);
    assert_eq!(tracker.aor_count(), 1);
}

#[test]
fn lapsed_contacts_are_forgotten_without_events() {
    let steps = [
        once(
            0,
            register_ok(1, "Contact: <sip:alice@10.0.0.1>;expires=60\r\n"),
        ),
        expire(60_000),
        // Registered again later: nothing to remove, the old contact lapsed.
        once(
            61_000,
            register_ok(2, "Contact: <sip:alice@10.0.0.2>;expires=60\r\n"),
        ),
    ];
    let tracker = check(
        &steps,
        &[
            &format!("reg {AOR} sip:alice@10.0.0.1 60"),
            &format!("reg {AOR} sip:alice@10.0.0.2 60"),
        ],
    );
    assert_eq!(tracker.aor_count(), 1);
}

#[test]
fn a_full_aor_table_still_emits_bindings() {
    let config = TrackerConfig {
        aor_count_max: 0,
        ..TrackerConfig::default()
    };
    let (tracker, events) = run_with(
        config,
        &[once(
            0,
            register_ok(1, "Contact: <sip:alice@10.0.0.1>;expires=60\r\n"),
        )],
    );
    assert_eq!(events, [format!("reg {AOR} sip:alice@10.0.0.1 60")]);
    assert_eq!(tracker.counters().aors_full, 1);
}

#[test]
fn config_limits_are_checked() {
    let too_many = TrackerConfig {
        dialog_count_max: DIALOG_COUNT_MAX + 1,
        ..TrackerConfig::default()
    };
    assert!(matches!(
        MirrorTracker::new(too_many, TEST_HASH_KEY),
        Err(ConfigError::LimitTooHigh {
            name: "dialog_count_max",
            ..
        })
    ));
    let numbers = TrackerConfig {
        emergency_numbers: vec![b"1".to_vec(); EMERGENCY_NUMBER_COUNT_MAX + 1],
        ..TrackerConfig::default()
    };
    assert!(MirrorTracker::new(numbers, TEST_HASH_KEY).is_err());
    let empty = TrackerConfig {
        emergency_numbers: vec![Vec::new()],
        ..TrackerConfig::default()
    };
    assert_eq!(
        MirrorTracker::new(empty, TEST_HASH_KEY).unwrap_err(),
        ConfigError::BadEmergencyNumber
    );
}

/// The maps hash with the caller's key and nothing else (no entropy read inside): the
/// same key hashes alike in two trackers, another key differently; the key is not in the
/// tracker's Debug output, and no event depends on it.
#[test]
fn the_hash_key_is_the_callers_and_changes_no_event() {
    let other_key = [0xfeed_f00d, 0xdead_beef_cafe];
    let steps = concat(&[CALL.setup(), CALL.hangup(60_000)]);
    let (a, events_a) = run_keyed(TrackerConfig::default(), TEST_HASH_KEY, &steps);
    let (b, events_b) = run_keyed(TrackerConfig::default(), TEST_HASH_KEY, &steps);
    let (c, events_c) = run_keyed(TrackerConfig::default(), other_key, &steps);
    let id = CALL.call_id.as_bytes();
    assert_eq!(a.hasher.hash_one(id), b.hasher.hash_one(id));
    assert_ne!(a.hasher.hash_one(id), c.hasher.hash_one(id));
    let mut sip = siphasher::sip::SipHasher13::new_with_keys(TEST_HASH_KEY[0], TEST_HASH_KEY[1]);
    id.hash(&mut sip);
    assert_eq!(a.hasher.hash_one(id), sip.finish());
    assert!(!events_a.is_empty());
    assert_eq!(events_a, events_b);
    assert_eq!(events_a, events_c);
    let debug = format!("{c:?}");
    assert!(debug.contains("KeyedState { .. }"));
    for word in other_key {
        assert!(!debug.contains(&word.to_string()) && !debug.contains(&format!("{word:x}")));
    }
}

#[test]
fn malformed_payloads_are_counted_by_reason() {
    let mut tracker = MirrorTracker::new(TrackerConfig::default(), TEST_HASH_KEY).unwrap();
    let mut out = Vec::new();
    let now = MonoTime::from_unix_ms(T0_MS);
    assert_eq!(
        tracker.handle_payload(now, 1, b"garbage\r\n\r\n", &mut out),
        Err(SipError::BadStartLine)
    );
    assert!(tracker.handle_payload(now, 1, b"", &mut out).is_err());
    assert_eq!(
        tracker.counters().malformed[SipError::BadStartLine.index()],
        1
    );
    assert_eq!(tracker.counters().malformed[SipError::Empty.index()], 1);
    assert!(out.is_empty());
    let pairs = tracker.counters().pairs();
    let mut names: Vec<_> = pairs.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), pairs.len());
}

#[test]
fn a_call_mirrored_as_hep_packets_counts_once() {
    let proxy = "127.0.0.1:5060".parse().unwrap();
    let uac = "127.0.1.1:5061".parse().unwrap();
    let mut builder = tollgate_hep::HepBuilder::new();
    let mut tracker = MirrorTracker::new(TrackerConfig::default(), TEST_HASH_KEY).unwrap();
    let mut out = Vec::new();
    for step in concat(&[CALL.setup(), CALL.hangup(60_000)]) {
        let Step::Msg {
            at_ms,
            copies,
            text,
            ..
        } = step
        else {
            continue;
        };
        for copy in 0..copies {
            let (src, dst) = if copy == 0 {
                (uac, proxy)
            } else {
                (proxy, uac)
            };
            let ts_us = (T0_MS + at_ms) * 1000;
            let packet = tollgate_hep::HepPacket::sip(src, dst, ts_us, 42, text.as_bytes());
            let bytes = builder.build(&packet).unwrap();
            let hep = tollgate_hep::decode(bytes).unwrap();
            assert!(hep.is_sip());
            let now = MonoTime::from_unix_ms(hep.timestamp_ms().unwrap());
            let capture_id = hep.capture_id.unwrap();
            tracker
                .handle_payload(now, capture_id, hep.payload, &mut out)
                .unwrap();
        }
    }
    let events: Vec<String> = out.iter().map(ToString::to_string).collect();
    assert_eq!(events, [START, STOP]);
}

proptest! {
    /// Any number of copies of each message of a call (mirroring, retransmission), and
    /// copies of the final 200 or BYE after the end: one start, one stop.
    #[test]
    fn copies_never_change_the_count(
        copies in proptest::collection::vec(1..4usize, 7),
        late in 0..3usize,
    ) {
        let messages = [
            CALL.invite(),
            CALL.response(100, 1, "INVITE", true, ""),
            CALL.response(180, 1, "INVITE", true, ""),
            CALL.ok(1, "INVITE"),
            CALL.request("ACK", 1, true, ""),
            CALL.request("BYE", 2, true, ""),
            CALL.ok(2, "BYE"),
        ];
        let mut steps: Vec<Step> = messages
            .iter()
            .zip(&copies)
            .enumerate()
            .map(|(i, (text, &copies))| Step::Msg {
                at_ms: i as u64 * 1000,
                capture_id: 7,
                copies,
                text: text.clone(),
            })
            .collect();
        for _ in 0..late {
            for text in [CALL.ok(1, "INVITE"), CALL.request("BYE", 2, true, "")] {
                steps.push(Step::Msg { at_ms: 10_000, capture_id: 7, copies: 1, text });
            }
        }
        let (tracker, events) = run(&steps);
        prop_assert_eq!(events, [START, STOP]);
        prop_assert_eq!(tracker.dialog_count(), 0);
    }
}
