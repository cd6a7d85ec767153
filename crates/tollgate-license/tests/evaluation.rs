//! Evaluation and admission, data-driven: one case = a license (or none), usage, context →
//! the overall status, the calls limit's status, and decisions for new calls.

mod common;

use common::{at, document, now, signed, trusted};
use std::time::Duration;

use tollgate_events::WallTime;
use tollgate_license::CLOCK_BACK_TOLERANCE;
use tollgate_license::timestamp::DAY;

/// One millisecond, the clock's resolution.
const MS: Duration = Duration::from_millis(1);
use tollgate_license::{
    AdmissionGate, Context, Decision, Document, Evaluation, Kind, Mode, StatusCode, Usage, evaluate,
};

use StatusCode::*;

/// A new call asked about with `calls_now` calls running: `(calls_now, emergency, admitted?
/// or the deny code)`.
type Ask = (u64, bool, Option<StatusCode>);
const ADMIT: Option<StatusCode> = None;

struct Case {
    name: &'static str,
    /// `None`: no license at all.
    document: Option<fn(&mut Document)>,
    context: fn(&mut Context<'static>),
    usage: Usage,
    status: StatusCode,
    calls_status: StatusCode,
    asks: &'static [Ask],
}

fn calls(calls: u64) -> Usage {
    Usage {
        calls,
        ..Usage::default()
    }
}

fn enforce(d: &mut Document) {
    d.policy.mode = Mode::Enforce;
}

fn evaluate_case(case: &Case) -> Evaluation {
    let license = case.document.map(|change| {
        let mut doc = document();
        change(&mut doc);
        tollgate_license::verify(signed(&doc).as_bytes(), &trusted(&[1])).expect("authentic")
    });
    let mut context = Context::at(now());
    (case.context)(&mut context);
    evaluate(license.as_ref(), &context, &case.usage)
}

#[track_caller]
fn check(case: &Case) {
    let evaluation = evaluate_case(case);
    let name = case.name;
    assert_eq!(evaluation.status, case.status, "{name}: {evaluation:#?}");
    assert_eq!(
        evaluation.limits.calls.status, case.calls_status,
        "{name}: calls"
    );
    let gate = AdmissionGate::new(evaluation.admission);
    for &(calls_now, emergency, expected) in case.asks {
        let expected = expected.map_or(Decision::Admit, Decision::Deny);
        let ask = format!("{name}: calls_now {calls_now}, emergency {emergency}");
        assert_eq!(
            evaluation.admission.decide(calls_now, emergency),
            expected,
            "{ask}"
        );
        assert_eq!(gate.decide(calls_now, emergency), expected, "{ask} (gate)");
    }
    let explanation = evaluation.explain();
    assert!(
        !explanation.is_empty() && !explanation.contains(".\n"),
        "{name}: {explanation}"
    );
}

const fn nothing(_: &mut Context<'static>) {}

#[test]
fn statuses_and_admission() {
    let cases = [
        Case {
            name: "valid, below the threshold, warn mode",
            document: Some(|_| {}),
            context: nothing,
            usage: calls(89),
            status: Ok,
            calls_status: Ok,
            asks: &[
                (0, false, ADMIT),
                (89, false, ADMIT),
                (10_000, false, ADMIT),
            ],
        },
        Case {
            name: "warning threshold: exactly 90% warns",
            document: Some(|_| {}),
            context: nothing,
            usage: calls(90),
            status: Warning,
            calls_status: Warning,
            asks: &[(90, false, ADMIT)],
        },
        Case {
            name: "exactly at the limit still only warns",
            document: Some(|_| {}),
            context: nothing,
            usage: calls(100),
            status: Warning,
            calls_status: Warning,
            asks: &[],
        },
        Case {
            name: "one over the limit, warn mode admits",
            document: Some(|_| {}),
            context: nothing,
            usage: calls(101),
            status: OverLimit,
            calls_status: OverLimit,
            asks: &[(101, false, ADMIT), (1_000_000, false, ADMIT)],
        },
        Case {
            name: "enforce: grace boundary (limit 100, grace 10)",
            document: Some(enforce),
            context: nothing,
            usage: calls(105),
            status: OverLimit,
            calls_status: OverLimit,
            asks: &[
                (99, false, ADMIT),            // the 100th call
                (100, false, ADMIT),           // the 101st, into the grace
                (109, false, ADMIT),           // the 110th call: admitted
                (110, false, Some(OverLimit)), // the 111th: denied
                (500, false, Some(OverLimit)),
                (110, true, ADMIT), // emergency: exempt
                (u64::MAX, true, ADMIT),
            ],
        },
        Case {
            name: "enforce without emergency exemption",
            document: Some(|d| {
                enforce(d);
                d.policy.emergency_exempt = false;
            }),
            context: nothing,
            usage: calls(0),
            status: Ok,
            calls_status: Ok,
            asks: &[(109, true, ADMIT), (110, true, Some(OverLimit))],
        },
        Case {
            name: "enforce with no grace",
            document: Some(|d| {
                enforce(d);
                d.policy.grace_pct = 0;
            }),
            context: nothing,
            usage: calls(0),
            status: Ok,
            calls_status: Ok,
            asks: &[(99, false, ADMIT), (100, false, Some(OverLimit))],
        },
        Case {
            name: "unlimited calls in enforce mode",
            document: Some(|d| {
                enforce(d);
                d.limits.calls = None;
            }),
            context: nothing,
            usage: calls(1 << 50),
            status: Ok,
            calls_status: Ok,
            asks: &[(u64::MAX - 1, false, ADMIT)],
        },
        Case {
            name: "a zero calls limit",
            document: Some(|d| {
                enforce(d);
                d.limits.calls = Some(0);
            }),
            context: nothing,
            usage: calls(0),
            status: Ok,
            calls_status: Ok,
            asks: &[(0, false, Some(OverLimit)), (0, true, ADMIT)],
        },
        Case {
            name: "subscribers over the limit do not stop calls",
            document: Some(enforce),
            context: nothing,
            usage: Usage {
                subscribers: 2000,
                ..Usage::default()
            },
            status: OverLimit,
            calls_status: Ok,
            asks: &[(0, false, ADMIT)],
        },
        Case {
            name: "lease ended, warn mode: admits",
            document: Some(|_| {}),
            context: |c| c.now += 14 * DAY,
            usage: calls(95),
            status: LeaseExpired,
            calls_status: Warning,
            asks: &[(0, false, ADMIT)],
        },
        Case {
            name: "lease ends in 1 ms",
            document: Some(enforce),
            context: |c| c.now += 14 * DAY - MS,
            usage: calls(0),
            status: Ok,
            calls_status: Ok,
            asks: &[(0, false, ADMIT)],
        },
        Case {
            name: "lease ended, enforce: denies, emergency passes",
            document: Some(enforce),
            context: |c| c.now += 14 * DAY,
            usage: calls(0),
            status: LeaseExpired,
            calls_status: Ok,
            asks: &[(0, false, Some(LeaseExpired)), (0, true, ADMIT)],
        },
        Case {
            name: "term expired in warn mode still denies new calls",
            document: Some(|d| d.signature_valid_until = None),
            context: |c| c.now = at("2028-01-01T00:00:00Z"),
            usage: calls(0),
            status: Expired,
            calls_status: Ok,
            asks: &[(0, false, Some(Expired)), (0, true, ADMIT)],
        },
        Case {
            name: "term one ms before expiry",
            document: Some(|d| d.signature_valid_until = None),
            context: |c| c.now = at("2028-01-01T00:00:00Z") - MS,
            usage: calls(0),
            status: Ok,
            calls_status: Ok,
            asks: &[(0, false, ADMIT)],
        },
        Case {
            name: "term expired without emergency exemption denies emergency calls too",
            document: Some(|d| d.policy.emergency_exempt = false),
            context: |c| c.now = at("2029-01-01T00:00:00Z"),
            usage: calls(0),
            status: Expired,
            calls_status: Ok,
            asks: &[(0, true, Some(Expired))],
        },
        Case {
            name: "lapsed subscription behaves like an expired term",
            document: Some(|d| d.kind = Kind::Subscription),
            context: |c| c.now = at("2028-02-01T00:00:00Z"),
            usage: calls(0),
            status: Expired,
            calls_status: Ok,
            asks: &[(0, false, Some(Expired)), (0, true, ADMIT)],
        },
        Case {
            name: "perpetual never expires",
            document: Some(|d| {
                d.kind = Kind::Perpetual;
                d.valid_until = None;
                d.signature_valid_until = None;
            }),
            context: |c| c.now = at("9999-12-31T23:59:59Z"),
            usage: calls(10),
            status: Ok,
            calls_status: Ok,
            asks: &[(0, false, ADMIT)],
        },
        Case {
            name: "expired wins over lease expired and over limit",
            document: Some(enforce),
            context: |c| c.now = at("2028-06-01T00:00:00Z"),
            usage: calls(1000),
            status: Expired,
            calls_status: OverLimit,
            asks: &[(0, false, Some(Expired))],
        },
        Case {
            name: "lease expired wins over limit",
            document: Some(|_| {}),
            context: |c| c.now += 20 * DAY,
            usage: calls(1000),
            status: LeaseExpired,
            calls_status: OverLimit,
            asks: &[],
        },
        Case {
            name: "no license, warn: admits",
            document: None,
            context: nothing,
            usage: calls(5),
            status: NoLicense,
            calls_status: Ok,
            asks: &[(1_000_000, false, ADMIT)],
        },
        Case {
            name: "no license, enforce: denies, emergency passes",
            document: None,
            context: |c| c.unlicensed_mode = Mode::Enforce,
            usage: calls(5),
            status: NoLicense,
            calls_status: Ok,
            asks: &[(0, false, Some(NoLicense)), (0, true, ADMIT)],
        },
        Case {
            name: "host mismatch: the unlicensed mode applies, not the document's",
            document: Some(|d| {
                enforce(d);
                d.host_ids = vec!["node-a".into()];
            }),
            context: |c| c.host_id = Some("node-b"),
            usage: calls(200),
            status: HostMismatch,
            calls_status: OverLimit,
            asks: &[(10_000, false, ADMIT)],
        },
        Case {
            name: "host mismatch, unlicensed enforce",
            document: Some(|d| d.host_ids = vec!["node-a".into()]),
            context: |c| {
                c.host_id = Some("node-b");
                c.unlicensed_mode = Mode::Enforce;
            },
            usage: calls(0),
            status: HostMismatch,
            calls_status: Ok,
            asks: &[(0, false, Some(HostMismatch)), (0, true, ADMIT)],
        },
        Case {
            name: "rollback, unlicensed enforce",
            document: Some(|_| {}),
            context: |c| {
                c.serial_seen_max = Some(8);
                c.unlicensed_mode = Mode::Enforce;
            },
            usage: calls(0),
            status: Rollback,
            calls_status: Ok,
            asks: &[(0, false, Some(Rollback))],
        },
        Case {
            name: "not yet valid, unlicensed enforce",
            document: Some(|d| d.valid_from = now() + DAY),
            context: |c| c.unlicensed_mode = Mode::Enforce,
            usage: calls(0),
            status: NotYetValid,
            calls_status: Ok,
            asks: &[(0, false, Some(NotYetValid))],
        },
        Case {
            name: "clock set back: invalid",
            document: Some(|_| {}),
            context: |c| {
                c.time_recorded_max = Some(c.now + CLOCK_BACK_TOLERANCE + MS);
                c.unlicensed_mode = Mode::Enforce;
            },
            usage: calls(0),
            status: Invalid,
            calls_status: Ok,
            asks: &[(0, false, Some(Invalid)), (0, true, ADMIT)],
        },
        Case {
            name: "clock set back exactly 5 min: fine",
            document: Some(|_| {}),
            context: |c| c.time_recorded_max = Some(c.now + CLOCK_BACK_TOLERANCE),
            usage: calls(0),
            status: Ok,
            calls_status: Ok,
            asks: &[],
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn a_rejected_text_is_invalid_with_its_reason() {
    let error = tollgate_license::verify(b"not a license", &trusted(&[1])).expect_err("refused");
    let mut context = Context::at(now());
    context.unlicensed_mode = Mode::Enforce;
    let evaluation = tollgate_license::evaluate_rejected(&error, &context, &calls(3));
    assert_eq!(evaluation.status, Invalid);
    assert_eq!(
        evaluation.admission.decide(0, false),
        Decision::Deny(Invalid)
    );
    assert_eq!(evaluation.admission.decide(0, true), Decision::Admit);
    assert!(
        evaluation
            .explain()
            .starts_with("the license was refused (malformed license: armor")
    );
}

#[test]
fn a_refused_candidate_reports_its_own_code() {
    let doc = document();
    for code in [Invalid, Rollback, HostMismatch, NotYetValid, Expired] {
        for mode in [Mode::Warn, Mode::Enforce] {
            let mut context = Context::at(now());
            context.unlicensed_mode = mode;
            let evaluation = tollgate_license::evaluate_refused(
                code,
                "the reason",
                Some(&doc),
                &context,
                &calls(3),
            );
            assert_eq!((evaluation.status, evaluation.license_status), (code, code));
            assert_eq!(evaluation.reason.as_deref(), Some("the reason"));
            assert_eq!(evaluation.mode, mode);
            // An expired candidate stops new calls whatever the mode; the others follow the
            // unlicensed mode.
            let denied = mode == Mode::Enforce || code == Expired;
            let expected = if denied {
                Decision::Deny(code)
            } else {
                Decision::Admit
            };
            assert_eq!(
                evaluation.admission.decide(0, false),
                expected,
                "{code} {mode:?}"
            );
            assert_eq!(evaluation.admission.decide(0, true), Decision::Admit);
            let explanation = evaluation.explain();
            assert!(explanation.contains("the reason"), "{explanation}");
        }
    }
}

#[test]
fn figures_headroom_and_days() {
    let license = tollgate_license::verify(signed(&document()).as_bytes(), &trusted(&[1]))
        .expect("authentic");
    let usage = Usage {
        calls: 104,
        emergency_calls: 2,
        subscribers: 950,
        registered_subscribers: 0,
    };
    let now = at("2027-06-01T12:00:00Z");
    let evaluation = evaluate(Some(&license), &Context::at(now), &usage);
    let calls = evaluation.limits.calls;
    assert_eq!(
        (calls.limit, calls.headroom, calls.warn_at),
        (Some(100), Some(-4), Some(90))
    );
    assert_eq!(calls.usage_pct, Some(104.0));
    let subscribers = evaluation.limits.subscribers;
    assert_eq!(
        (subscribers.status, subscribers.headroom),
        (Warning, Some(50))
    );
    assert_eq!(
        evaluation.limits.registered_subscribers.status, Ok,
        "zero usage never warns"
    );
    assert_eq!(evaluation.days_to_expiry, Some(213)); // 2028-01-01 minus 213.5 days
    assert_eq!(evaluation.days_to_lease_end, Some(13)); // lease 2027-06-15T00:00, 13.5 days
    assert_eq!(
        evaluation.ms_to_lease_end,
        Some(13 * 86_400_000 + 86_400_000 / 2)
    );
    let json = serde_json::to_value(&evaluation).expect("serializes");
    assert_eq!(json["status"], "OVER_LIMIT");
    assert_eq!(json["limits"]["calls"]["status"], "OVER_LIMIT");
    assert_eq!(json["limits"]["calls"]["headroom"], -4);
    // The JSON views keep their Unix-millisecond field names and numbers (the agent's
    // `GET /api/v1/license` serves these), whatever the Rust types are.
    assert_eq!(json["now_ms"], now.unix_ms());
    assert_eq!(json["expires_at_ms"], at("2028-01-01T00:00:00Z").unix_ms());
    assert_eq!(
        json["lease_ends_at_ms"],
        at("2027-06-15T00:00:00Z").unix_ms()
    );
    let document = serde_json::to_value(license.document()).expect("serializes");
    assert_eq!(
        document["issued_at_ms"],
        at("2027-01-01T00:00:00Z").unix_ms()
    );
    assert_eq!(
        document["valid_from_ms"],
        at("2027-01-01T00:00:00Z").unix_ms()
    );
    assert_eq!(
        document["valid_until_ms"],
        at("2028-01-01T00:00:00Z").unix_ms()
    );
    assert_eq!(
        document["signature_valid_until_ms"],
        at("2027-06-15T00:00:00Z").unix_ms()
    );

    let lines: Vec<_> = evaluation.explain().lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "the term license is valid until 2028-01-01T00:00:00Z (213 days left), signature \
             valid until 2027-06-15T00:00:00Z (13 days left)",
            "over the concurrent-calls limit by 4% (104 of 100): new calls are still admitted \
             because this license only warns",
            "provisioned-subscribers at 95% of the limit (950 of 1000), at or above the 90% \
             warning threshold",
        ]
    );
}

/// `(name, change to the document, calls in use, now, expected text)`.
type ExplainCase = (&'static str, fn(&mut Document), u64, WallTime, &'static str);

#[test]
fn explanations_say_what_admission_does() {
    let explain = |change: fn(&mut Document), usage: u64, now: WallTime| {
        let mut doc = document();
        change(&mut doc);
        let license =
            tollgate_license::verify(signed(&doc).as_bytes(), &trusted(&[1])).expect("authentic");
        evaluate(Some(&license), &Context::at(now), &calls(usage)).explain()
    };
    let cases: [ExplainCase; 5] = [
        (
            "within grace",
            enforce,
            104,
            now(),
            "over the concurrent-calls limit by 4% (104 of 100): new calls are admitted up to the 10% grace (110 calls), then denied",
        ),
        (
            "beyond grace",
            enforce,
            120,
            now(),
            "over the concurrent-calls limit by 20% (120 of 100): new calls are denied beyond the 10% grace (110 calls) (emergency calls are still admitted)",
        ),
        (
            "expired term",
            |_| {},
            0,
            at("2028-01-02T00:00:00Z"),
            "the term license expired on 2028-01-01T00:00:00Z: new calls are denied whatever the mode (emergency calls are still admitted)",
        ),
        (
            "lease ended",
            |_| {},
            0,
            now() + 15 * DAY,
            "the signature lease ended on 2027-06-15T00:00:00Z and the license was not renewed from the license server: new calls are still admitted because this license only warns",
        ),
        (
            "ok",
            |d| d.limits.calls = None,
            0,
            now(),
            "usage is below every warning threshold",
        ),
    ];
    for (name, change, usage, now, expected) in cases {
        let text = explain(change, usage, now);
        assert!(text.contains(expected), "{name}: {text}");
    }
}
