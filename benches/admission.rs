//! License admission and evaluation (crate `tollgate-license`).
//!
//! - `admission/gate_*`: [`AdmissionGate::decide`], what the ingest thread runs for every
//!   `admit` query: one relaxed atomic load and a few compares. Target ≤ 50 ns.
//!   `gate_deny_over_limit` takes the longest path (calls checked, denied);
//!   `gate_emergency` the shortest; `gate_lazy_calls` reads the calls count through a
//!   closure over 64 atomic shard counters, as the agent does.
//! - `admission/gate_deny_over_limit_counted`: the same denial, counted by code in
//!   [`DenialCounters`] as the agent counts it (this thread's stripe: one uncontended
//!   relaxed add); `gate_admit_counted`: an admission through the same code path (nothing
//!   to count). Compare with the uncounted rows.
//! - `admission/plan`: the same decision on a plain [`AdmissionPlan`] (no atomic).
//! - `evaluate/full`: [`evaluate`] of a verified license against usage, including the
//!   acceptance checks (what the agent runs on every usage change and once a second).
//! - `verify/license` and `sign/license`: Ed25519 over a typical document (control plane).
//!
//! Run: `cargo bench --bench admission` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_events::WallTime;
use tollgate_license::timestamp::DAY;
use tollgate_license::{
    AdmissionGate, Context, DenialCounters, Document, Kind, Limits, Mode, Policy, SigningKey,
    TrustedKeys, Usage, evaluate,
};

const NOW: WallTime = WallTime::from_unix_ms(1_800_000_000_000);

fn document(key: &SigningKey) -> Document {
    Document {
        license_key: "ABCDEFGHI_123456789_a1b2c3d4e5f6".to_owned(),
        customer: "Example Telecom GmbH".to_owned(),
        kind: Kind::Subscription,
        serial: 42,
        issued_at: NOW - DAY,
        valid_from: NOW - DAY,
        valid_until: Some(NOW + 30 * DAY),
        signature_valid_until: Some(NOW + 14 * DAY),
        limits: Limits {
            calls: Some(10_000),
            subscribers: Some(1_000_000),
            registered_subscribers: Some(2_000_000),
        },
        features: vec!["pbx".to_owned(), "fax".to_owned(), "sms".to_owned()],
        host_ids: vec![
            "node-a".to_owned(),
            "node-b".to_owned(),
            "node-c".to_owned(),
        ],
        policy: Policy {
            mode: Mode::Enforce,
            ..Policy::default()
        },
        key_id: key.key_id(),
    }
}

fn admission(c: &mut Criterion) {
    let key = SigningKey::from_seed(&[7; 32]);
    let text = tollgate_license::sign(&document(&key), &key).expect("signs");
    let trusted = TrustedKeys::single(key.public_key());
    let license = tollgate_license::verify(text.as_bytes(), &trusted).expect("verifies");
    let context = Context {
        now: NOW,
        host_id: Some("node-b"),
        serial_seen_max: Some(41),
        time_recorded_max: Some(NOW.minus_ms(1000)),
        unlicensed_mode: Mode::Warn,
    };
    let usage = Usage {
        calls: 9_500,
        emergency_calls: 3,
        subscribers: 800_000,
        registered_subscribers: 1_200_000,
    };
    let evaluation = evaluate(Some(&license), &context, &usage);
    let gate = AdmissionGate::new(evaluation.admission);
    let plan = evaluation.admission;
    assert_eq!(plan.calls_admit_max, Some(11_000));

    let mut group = c.benchmark_group("admission");
    group.bench_function("gate_admit", |b| {
        b.iter(|| gate.decide(black_box(9_500), black_box(false)))
    });
    group.bench_function("gate_deny_over_limit", |b| {
        b.iter(|| gate.decide(black_box(11_000), black_box(false)))
    });
    let denied = DenialCounters::new();
    group.bench_function("gate_deny_over_limit_counted", |b| {
        b.iter(|| denied.count(gate.decide(black_box(11_000), black_box(false))))
    });
    group.bench_function("gate_admit_counted", |b| {
        b.iter(|| denied.count(gate.decide(black_box(9_500), black_box(false))))
    });
    group.bench_function("gate_emergency", |b| {
        b.iter(|| gate.decide(black_box(11_000), black_box(true)))
    });
    let shards: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(150)).collect();
    group.bench_function("gate_lazy_calls", |b| {
        b.iter(|| {
            gate.decide_with(black_box(false), || {
                shards.iter().map(|s| s.load(Ordering::Relaxed)).sum()
            })
        })
    });
    group.bench_function("plan", |b| {
        b.iter(|| black_box(&plan).decide(black_box(9_500), black_box(false)))
    });
    group.finish();

    let mut group = c.benchmark_group("evaluate");
    group.bench_function("full", |b| {
        b.iter(|| {
            evaluate(
                Some(black_box(&license)),
                black_box(&context),
                black_box(&usage),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("verify");
    group.bench_function("license", |b| {
        b.iter(|| tollgate_license::verify(black_box(text.as_bytes()), &trusted))
    });
    group.finish();

    let mut group = c.benchmark_group("sign");
    let document = document(&key);
    group.bench_function("license", |b| {
        b.iter(|| tollgate_license::sign(black_box(&document), &key))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = admission
}
criterion_main!(benches);
