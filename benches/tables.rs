//! The usage tables (crate `tollgate-usage`), against the targets in MISSION.md's spirit:
//!
//! - `calls/start_stop_pair`: one call start and its stop through `Tables::apply`, including
//!   fingerprinting (40-byte Call-IDs, untagged and tagged). Target: ≤ 60 ns per pair.
//! - `calls/start_stop_pair_two_threads`: two threads applying pairs at once on disjoint
//!   Call-IDs; time per iteration = one pair on each thread.
//! - `registrations/add_refresh_remove`: one contact added, refreshed and removed (3 events).
//! - `usage/1k_calls`, `usage/1m_calls`: `Tables::usage()`, a lock-free sum over the
//!   shards; must cost the same at both sizes.
//! - `sweep/one_shard_1m_calls`: how long a sweep holds one shard lock at 1 M calls.
//! - `sequence/in_order`: `SequenceTracker::check` for a sender numbering in order.
//!
//! Run: `cargo bench --bench tables` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_events::{CallRef, Event, Seq};
use tollgate_usage::{FingerprintKey, MonoTime, SequenceTracker, Tables, TablesConfig};

/// Distinct calls cycled through by the pair benchmarks (fits in cache, like a busy proxy's
/// recent calls).
const CALL_IDS_PER_THREAD: usize = 4096;

const NOW: MonoTime = MonoTime::from_unix_secs(1_750_000_000);

fn tables() -> Tables {
    Tables::new(TablesConfig::default(), FingerprintKey([0x5a; 32]))
}

/// 40-byte Call-IDs, distinct per `thread`.
fn call_ids(thread: usize, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("{thread:02}{i:014x}f3b2c1d0@pc33.atlanta.example").into_bytes())
        .collect()
}

fn pair(tables: &Tables, call: CallRef<'_>) {
    black_box(tables.apply(
        NOW,
        &Event::CallStart {
            call,
            emergency: false,
        },
    ));
    black_box(tables.apply(NOW, &Event::CallStop { call }));
}

fn calls(c: &mut Criterion) {
    let mut group = c.benchmark_group("calls");
    group.throughput(Throughput::Elements(1));
    let t = tables();
    let ids = call_ids(0, CALL_IDS_PER_THREAD);
    debug_assert_eq!(ids[0].len(), 40);
    let mut i = 0;
    group.bench_function("start_stop_pair", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            pair(
                &t,
                CallRef {
                    call_id: &ids[i],
                    from_tag: None,
                },
            );
        });
    });
    group.bench_function("start_stop_pair_tagged", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            pair(
                &t,
                CallRef {
                    call_id: &ids[i],
                    from_tag: Some(b"as5f3a9c21"),
                },
            );
        });
    });
    let per_thread: Vec<Vec<Vec<u8>>> = (0..2).map(|t| call_ids(t, CALL_IDS_PER_THREAD)).collect();
    group.bench_function("start_stop_pair_two_threads", |b| {
        b.iter_custom(|iters| {
            std::thread::scope(|s| {
                let handles: Vec<_> = per_thread
                    .iter()
                    .map(|ids| {
                        let t = &t;
                        s.spawn(move || {
                            let start = Instant::now();
                            for n in 0..iters as usize {
                                let id = &ids[n % ids.len()];
                                pair(
                                    t,
                                    CallRef {
                                        call_id: id,
                                        from_tag: None,
                                    },
                                );
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .max()
                    .unwrap_or_default()
            })
        });
    });
    group.finish();
}

fn registrations(c: &mut Criterion) {
    let mut group = c.benchmark_group("registrations");
    group.throughput(Throughput::Elements(3));
    let t = tables();
    let aors: Vec<Vec<u8>> = (0..CALL_IDS_PER_THREAD)
        .map(|i| format!("sip:user{i:06}@example.com").into())
        .collect();
    let contact: &[u8] = b"sip:user@192.0.2.10:5060;transport=udp";
    let mut i = 0;
    group.bench_function("add_refresh_remove", |b| {
        b.iter(|| {
            i = (i + 1) % aors.len();
            let aor = &aors[i];
            for expires_s in [600, 600, 0] {
                black_box(t.apply(
                    NOW,
                    &Event::Register {
                        aor,
                        contact,
                        expires_s,
                    },
                ));
            }
        });
    });
    group.finish();
}

fn filled(calls: usize) -> Tables {
    let t = tables();
    for i in 0..calls {
        let id = format!("{i:016x}f3b2c1d0@pc33.atlanta.example");
        t.apply(
            NOW,
            &Event::CallStart {
                call: CallRef {
                    call_id: id.as_bytes(),
                    from_tag: None,
                },
                emergency: false,
            },
        );
    }
    assert_eq!(t.usage().calls, calls as u64);
    t
}

fn usage_and_sweep(c: &mut Criterion) {
    let small = filled(1_000);
    let large = filled(1_000_000);
    let mut group = c.benchmark_group("usage");
    group.bench_function("1k_calls", |b| b.iter(|| black_box(small.usage())));
    group.bench_function("1m_calls", |b| b.iter(|| black_box(large.usage())));
    group.finish();

    let mut group = c.benchmark_group("sweep");
    group.measurement_time(Duration::from_secs(3));
    // Nothing has expired: the cost is the scan of one shard (~15.6 K calls) under its lock.
    group.bench_function("one_shard_1m_calls", |b| {
        b.iter(|| black_box(large.sweep(NOW, 1)))
    });
    group.finish();
}

fn sequence(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequence");
    group.throughput(Throughput::Elements(1));
    let tracker = SequenceTracker::with_key(&FingerprintKey([8; 32]));
    let mut n = 0u64;
    group.bench_function("in_order", |b| {
        b.iter(|| {
            n += 1;
            black_box(tracker.check(
                NOW,
                &Seq {
                    sender: b"proxy-1",
                    n,
                },
            ))
        });
    });
    group.finish();
}

criterion_group!(benches, calls, registrations, usage_and_sweep, sequence);
criterion_main!(benches);
