//! The registered-AoR figures of `docs/performance.md` (issue 15), measured in the
//! simulation with a counting allocator.
//!
//!     cargo run --release -p tollgate-replication --example aor_measure [distinct_aors]
//!
//! - memory: one node's [`AorSets`] holding 16 nodes' sets of `distinct_aors` (default
//!   1 000 000) AoRs, 20 % of them registered on two nodes: heap bytes per distinct AoR;
//! - steady traffic: 16 simulated nodes, each adding and removing AoRs (churn): encoded
//!   and wire bytes per change per peer;
//! - visibility: virtual ms from a change on one node to every node counting it;
//! - rejoin: a node cut off for 10 minutes of churn, then healed: virtual ms until every
//!   node's union is exact again, and the bytes it took.
//!
//! Wire bytes add 50 bytes per QUIC packet to the encoded frames (see the `measure`
//! example). Every figure but the memory one is virtual time or encoded bytes of a seeded
//! run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use tollgate_replication::MonoTime;

use tollgate_replication::aorset::{AorSets, mix};
use tollgate_replication::sim::{Sim, SimConfig};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NODES: usize = 16;

fn main() {
    let distinct: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!("# registered AoRs across a cluster (issue 15)\n");
    memory(distinct);
    churn_traffic();
    rejoin();
}

/// Which nodes hold AoR `i`: one home node; 20 % also the next one.
fn holders(i: u64) -> impl Iterator<Item = usize> {
    let home = (mix(i) % NODES as u64) as usize;
    let second = i.is_multiple_of(5).then_some((home + 1) % NODES);
    std::iter::once(home).chain(second)
}

fn memory(distinct: u64) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let mut sets = AorSets::new();
    let slots: Vec<_> = (0..NODES)
        .map(|n| {
            let slot = sets.slot_or_insert(&format!("node-{n:02}")).unwrap();
            sets.set_counted(slot, true);
            slot
        })
        .collect();
    let mut memberships = 0u64;
    for i in 0..distinct {
        for node in holders(i) {
            sets.insert(slots[node], mix(i ^ 0xa0a0));
            memberships += 1;
        }
    }
    let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    assert_eq!(sets.distinct(), distinct);
    println!(
        "memory: {distinct} distinct AoRs over {NODES} nodes ({memberships} registrations, 20 % on two nodes): {} heap bytes, {:.1} B per distinct AoR per node (budget 32)",
        bytes,
        bytes as f64 / distinct as f64
    );
}

fn sim(seed: u64) -> Sim {
    Sim::new(SimConfig {
        node_count: NODES,
        seed,
        latency_ms_min: 1,
        latency_ms_max: 5,
        jitter_ms: 1,
        ..SimConfig::default()
    })
}

fn fp(i: u64) -> u64 {
    mix(i ^ 0x5eed)
}

fn all_count(sim: &Sim, expected: u64) -> bool {
    (0..NODES).all(|n| {
        sim.replica(n).is_some_and(|r| {
            r.aggregate(MonoTime(sim.now()))
                .registered_subscribers_distinct
                == expected
        })
    })
}

/// Churn at `per_node_per_s` changes per node per second for 60 s after a quiet baseline.
fn churn_traffic() {
    // Adds per node per second (each with a remove).
    for per_node_per_s in [10u64, 100, 1_000] {
        let mut s = sim(5);
        // A base of 2 000 AoRs per node, then a quiet baseline minute.
        for node in 0..NODES {
            for i in 0..2_000u64 {
                s.with_replica(node, |r, now| {
                    r.aor_add(MonoTime(now), fp((node as u64) << 32 | i))
                });
            }
        }
        s.run_for(20_000);
        s.reset_traffic();
        s.run_for(60_000);
        let quiet: u64 = (0..NODES).map(|n| s.traffic(n).wire_bytes_sent).sum();
        s.reset_traffic();
        let step_ms = (1000 / per_node_per_s).max(10);
        let per_step = per_node_per_s * step_ms / 1000;
        let mut next = [2_000u64; NODES];
        let mut changes = 0u64;
        for _ in 0..(60_000 / step_ms) {
            for (node, next) in next.iter_mut().enumerate() {
                for _ in 0..per_step {
                    let base = (node as u64) << 32;
                    // Add one, remove the oldest: the set size stays put (two changes).
                    s.with_replica(node, |r, now| {
                        r.aor_add(MonoTime(now), fp(base | *next));
                        r.aor_remove(MonoTime(now), fp(base | (*next - 2_000)));
                    });
                    *next += 1;
                    changes += 2;
                }
            }
            s.run_for(step_ms);
        }
        s.run_for(2_000);
        let (mut encoded, mut wire) = (0u64, 0u64);
        for n in 0..NODES {
            let t = s.traffic(n);
            encoded += t.frame_bytes_sent;
            wire += t.wire_bytes_sent;
        }
        let peers = (NODES - 1) as u64;
        let extra = wire.saturating_sub(quiet);
        println!(
            "churn {per_node_per_s:>5}/s per node ({changes} changes in 60 s): AoR+record traffic {:.1} encoded B and {:.1} wire B per change per peer over the quiet baseline",
            encoded as f64 / (changes * peers) as f64,
            extra as f64 / (changes * peers) as f64,
        );
        assert!(all_count(&s, NODES as u64 * 2_000));
    }
    // Visibility: one add on node 0, until every node counts it.
    let mut s = sim(9);
    s.run_for(10_000);
    let mut worst = 0u64;
    for trial in 0..50u64 {
        let start = s.now();
        s.with_replica(0, |r, now| r.aor_add(MonoTime(now), fp(1 << 40 | trial)));
        while !all_count(&s, trial + 1) {
            s.run_for(1);
        }
        worst = worst.max(s.now() - start);
        s.run_for(500);
    }
    println!(
        "visibility: an add on one node counted on all {NODES} within {worst} ms (worst of 50; push interval 100 ms, one-way latency 1–5 ms)"
    );
}

/// A node cut off for 10 minutes while the others churn, then healed.
fn rejoin() {
    let mut s = sim(13);
    let mut model: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); NODES];
    for (node, set) in model.iter_mut().enumerate() {
        for i in 0..5_000u64 {
            let aor = (node as u64) << 32 | i;
            set.insert(aor);
            s.with_replica(node, |r, now| r.aor_add(MonoTime(now), fp(aor)));
        }
    }
    s.run_for(20_000);
    s.partition(&[&[NODES - 1]]);
    for next in 5_000u64..5_600 {
        for (node, set) in model.iter_mut().enumerate() {
            let aor = (node as u64) << 32 | next;
            let old = (node as u64) << 32 | (next - 5_000);
            set.insert(aor);
            set.remove(&old);
            s.with_replica(node, |r, now| {
                r.aor_add(MonoTime(now), fp(aor));
                r.aor_remove(MonoTime(now), fp(old));
            });
        }
        s.run_for(1_000);
    }
    s.reset_traffic();
    let healed_at = s.now();
    s.heal();
    let expected: u64 = model.iter().map(|m| m.len() as u64).sum();
    let deadline = healed_at + 60_000;
    while !all_count(&s, expected) && s.now() < deadline {
        s.run_for(10);
    }
    let took = s.now() - healed_at;
    let bytes: u64 = (0..NODES).map(|n| s.traffic(n).wire_bytes_sent).sum();
    let whole = NODES as u64 * 5_000 * 8;
    println!(
        "rejoin after 10 min away (600 adds and 600 removes per node meanwhile, sets of 5 000): exact everywhere {took} ms after the heal; {bytes} wire bytes in all (the whole sets are {whole} B)"
    );
}
