//! The replication figures of `docs/replication.md`, measured in the simulation.
//!
//!     cargo run --release -p tollgate-replication --example measure
//!
//! Every figure is virtual time or encoded bytes of a seeded run: the same build prints the
//! same numbers. Wire bytes add an estimated 50 bytes per QUIC packet (short header, AEAD
//! tag, frame header, UDP/IPv4 headers) to the encoded frames, and count QUIC's ACKs (6
//! bytes riding on a frame, or an ACK-only packet when none goes back within 25 ms).

use std::time::Instant;
use tollgate_replication::MonoTime;

use tollgate_replication::sim::{Sim, SimConfig, Topology};
use tollgate_replication::{AntiEntropy, Config, Event, NodeUsage};

fn main() {
    let started = Instant::now();
    println!("# tollgate-replication: simulated figures (defaults unless stated)\n");
    steady_state();
    heartbeat_tuning();
    churn();
    convergence_256();
    partition_heal_256();
    failure_detection();
    loss_run();
    relay_only();
    eprintln!(
        "(measured in {:.1} s of real time)",
        started.elapsed().as_secs_f64()
    );
}

fn sim(node_count: usize, seed: u64, replica: Config) -> Sim {
    Sim::new(SimConfig {
        node_count,
        seed,
        replica,
        ..SimConfig::default()
    })
}

struct PerNode {
    wire: f64,
    frames: f64,
    datagrams: f64,
    streams: f64,
    ack_only: f64,
}

fn per_node_per_second(sim: &Sim, seconds: u64) -> PerNode {
    let nodes = sim.node_count() as f64;
    let total = (0..sim.node_count()).map(|node| sim.traffic(node)).fold(
        (0u64, 0u64, 0u64, 0u64, 0u64),
        |acc, t| {
            (
                acc.0 + t.wire_bytes_sent,
                acc.1 + t.frame_bytes_sent,
                acc.2 + t.datagrams_sent,
                acc.3 + t.stream_frames_sent,
                acc.4 + t.ack_only_packets_sent,
            )
        },
    );
    let per = |x: u64| x as f64 / nodes / seconds as f64;
    PerNode {
        wire: per(total.0),
        frames: per(total.1),
        datagrams: per(total.2),
        streams: per(total.3),
        ack_only: per(total.4),
    }
}

fn max_wire_per_second(sim: &Sim, seconds: u64) -> f64 {
    (0..sim.node_count())
        .map(|node| sim.traffic(node).wire_bytes_sent as f64 / seconds as f64)
        .fold(0.0, f64::max)
}

fn steady_state() {
    println!("## Steady state (quiet cluster: usage set once, then 60 s measured after 20 s)\n");
    println!(
        "| nodes | anti-entropy | wire B/s per node (mean / max) | frame B/s | datagrams/s | ACK-only packets/s | stream frames/s |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for node_count in [3, 16, 64] {
        for mode in [AntiEntropy::Digest, AntiEntropy::Table] {
            let replica = Config {
                anti_entropy: mode,
                ..Config::default()
            };
            let mut sim = sim(node_count, 21, replica);
            for node in 0..node_count {
                sim.set_usage(
                    node,
                    NodeUsage {
                        calls: 120 + node as u64,
                        emergency_calls: 1,
                        registered_subscribers: 3_000,
                        registered_contacts: 3_400,
                        subscribers: 25_000,
                        subscribers_reported_at: 1_760_000_000_000,
                        peak_calls: 400,
                        peak_registered_subscribers: 3_100,
                    },
                );
            }
            sim.run_for(20_000);
            sim.reset_traffic();
            sim.run_for(60_000);
            let figures = per_node_per_second(&sim, 60);
            println!(
                "| {node_count} | {mode:?} | {:.0} / {:.0} | {:.0} | {:.1} | {:.1} | {:.2} |",
                figures.wire,
                max_wire_per_second(&sim, 60),
                figures.frames,
                figures.datagrams,
                figures.ack_only,
                figures.streams
            );
        }
    }
    println!();
}

fn heartbeat_tuning() {
    println!("## Heartbeat interval vs bandwidth and false suspicion (64 nodes, 2% loss, 5 min)\n");
    println!(
        "| heartbeat / suspect / expire (ms) | wire B/s per node (quiet, no loss) | false suspicions | false expiries |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (heartbeat, suspect, expire) in [
        (1_000, 3_000, 10_000),
        (1_400, 3_000, 10_000),
        (1_500, 3_000, 10_000),
        (1_500, 4_500, 10_000),
        (2_000, 6_000, 15_000),
    ] {
        let replica = Config {
            heartbeat_interval_ms: heartbeat,
            suspect_after_ms: suspect,
            expire_after_ms: expire,
            ..Config::default()
        };
        let mut quiet = sim(64, 27, replica.clone());
        for node in 0..64 {
            quiet.set_calls(node, 100 + node as u64);
        }
        quiet.run_for(20_000);
        quiet.reset_traffic();
        quiet.run_for(60_000);
        let wire = per_node_per_second(&quiet, 60).wire;
        let mut lossy = Sim::new(SimConfig {
            node_count: 64,
            seed: 28,
            loss: 0.02,
            jitter_ms: 50,
            replica,
            ..SimConfig::default()
        });
        lossy.run_for(300_000);
        let (mut suspicions, mut expiries) = (0, 0);
        for node in 0..64 {
            for (_, event) in lossy.events(node) {
                match event {
                    Event::NodeSuspect { .. } => suspicions += 1,
                    Event::NodeExpired { .. } => expiries += 1,
                    _ => {}
                }
            }
        }
        println!("| {heartbeat} / {suspect} / {expire} | {wire:.0} | {suspicions} | {expiries} |");
    }
    println!();
}

fn churn() {
    println!("## Under churn (every node's calls change every 50 ms; pushes coalesce to 100 ms)\n");
    println!("| nodes | wire B/s per node | datagrams/s |");
    println!("| ---: | ---: | ---: |");
    for node_count in [16, 64] {
        let mut sim = sim(node_count, 22, Config::default());
        sim.run_for(10_000);
        sim.reset_traffic();
        for step in 0..200u64 {
            for node in 0..node_count {
                sim.set_calls(node, 100 + (step + node as u64) % 7);
            }
            sim.run_for(50);
        }
        let figures = per_node_per_second(&sim, 10);
        println!(
            "| {node_count} | {:.0} | {:.1} |",
            figures.wire, figures.datagrams
        );
    }
    println!();
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn convergence_256() {
    println!("## 256 nodes, links 50–300 ms one way: one changed record visible everywhere\n");
    let mut sim = sim(256, 23, Config::default());
    sim.run_for(15_000);
    let mut delays = Vec::new();
    let mut all = Vec::new();
    for trial in 0..10u64 {
        let node = (trial * 37 % 256) as usize;
        let id = sim.node_id(node).to_owned();
        let calls = 1_000 + trial;
        let start = sim.now();
        sim.set_calls(node, calls);
        let times = sim.first_times(start + 30_000, |replica| {
            replica
                .node(&id, MonoTime(0))
                .is_some_and(|view| view.usage.calls == calls)
        });
        let mut latest = 0;
        for (_, at) in times {
            let delay = at.expect("converged within 30 s") - start;
            delays.push(delay);
            latest = latest.max(delay);
        }
        all.push(latest);
        sim.run_for(3_000);
    }
    delays.sort_unstable();
    all.sort_unstable();
    println!(
        "- per (node, change): p50 {} ms, p99 {} ms, max {} ms (10 changes × 256 nodes)",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0)
    );
    println!(
        "- until every node sees it: median {} ms, worst {} ms\n",
        percentile(&all, 0.5),
        all.last().copied().unwrap_or(0)
    );
}

fn partition_heal_256() {
    println!(
        "## 256 nodes: halves partitioned for 20 s (each side expires the other), then healed\n"
    );
    let mut sim = sim(256, 24, Config::default());
    for node in 0..256 {
        sim.set_calls(node, 1 + node as u64 % 5);
    }
    sim.run_for(15_000);
    let halves: (Vec<usize>, Vec<usize>) = (0..256).partition(|node| node % 2 == 0);
    sim.partition(&[&halves.0, &halves.1]);
    // Changes on both sides while apart.
    for node in 0..256 {
        sim.set_calls(node, 2 + node as u64 % 7);
    }
    sim.run_for(20_000);
    let total: u64 = (0..256).map(|node| 2 + node as u64 % 7).sum();
    let seen = sim
        .replica(0)
        .map(|r| r.aggregate(MonoTime(sim.now())).calls)
        .unwrap_or(0);
    sim.reset_traffic();
    let start = sim.now();
    sim.heal();
    let times = sim.first_times(start + 60_000, |replica| {
        replica.aggregate(MonoTime(0)).calls == total
            && replica.aggregate(MonoTime(0)).nodes_live == 256
    });
    let mut delays: Vec<u64> = times
        .iter()
        .map(|(_, at)| at.expect("healed within 60 s") - start)
        .collect();
    delays.sort_unstable();
    let seconds = (sim.now() - start).div_ceil(1_000).max(1);
    println!(
        "- before the heal node-000 counted {seen} of {total} calls (its half only)\n\
         - after the heal, every node counts all {total} (256 live): p50 {} ms, max {} ms\n\
         - the idle-timeout model keeps connections across the 20 s cut for 5 s only, so the heal is a reconnection (one round trip) plus one record push\n\
         - traffic while healing: {:.0} wire B/s per node over {seconds} s\n",
        percentile(&delays, 0.5),
        delays.last().copied().unwrap_or(0),
        per_node_per_second(&sim, seconds).wire,
    );
}

fn failure_detection() {
    println!("## Failure detection (16 nodes, kill -9 of one)\n");
    let mut sim = sim(16, 25, Config::default());
    sim.run_for(10_000);
    let crashed = 5;
    let id = sim.node_id(crashed).to_owned();
    let start = sim.now();
    sim.crash(crashed);
    sim.run_for(15_000);
    let mut suspect = Vec::new();
    let mut expired = Vec::new();
    for node in (0..16).filter(|node| *node != crashed) {
        for (at, event) in sim.events(node) {
            match event {
                Event::NodeSuspect { node_id } if *node_id == id && *at >= start => {
                    suspect.push(at - start)
                }
                Event::NodeExpired { node_id, .. } if *node_id == id && *at >= start => {
                    expired.push(at - start)
                }
                _ => {}
            }
        }
    }
    suspect.sort_unstable();
    expired.sort_unstable();
    println!(
        "- suspect after {}–{} ms (median {} ms); expired and out of the sum after {}–{} ms (median {} ms)\n",
        suspect.first().unwrap_or(&0),
        suspect.last().unwrap_or(&0),
        percentile(&suspect, 0.5),
        expired.first().unwrap_or(&0),
        expired.last().unwrap_or(&0),
        percentile(&expired, 0.5)
    );
}

fn loss_run() {
    println!("## 2% datagram loss, 16 nodes, 10 minutes, usage changing every second\n");
    let mut config = SimConfig {
        node_count: 16,
        seed: 26,
        loss: 0.02,
        jitter_ms: 50,
        ..SimConfig::default()
    };
    config.replica = Config::default();
    let mut sim = Sim::new(config);
    for step in 0..600u64 {
        sim.set_calls((step % 16) as usize, step);
        sim.run_for(1_000);
    }
    let mut expired = 0;
    let mut suspect = 0;
    let mut lost = 0;
    let mut sent = 0;
    for node in 0..16 {
        for (_, event) in sim.events(node) {
            match event {
                Event::NodeExpired { .. } => expired += 1,
                Event::NodeSuspect { .. } => suspect += 1,
                _ => {}
            }
        }
        lost += sim.traffic(node).datagrams_lost;
        sent += sim.traffic(node).datagrams_sent;
    }
    let converged = (0..16).all(|node| {
        let expected: u64 = (584..600).sum();
        sim.replica(node)
            .map(|r| r.aggregate(MonoTime(sim.now())).calls)
            == Some(expected)
    });
    println!(
        "- {lost} of {sent} datagrams lost; false expiries: {expired}; false suspicions: {suspect}; exact sum at the end: {converged}\n"
    );
}

fn relay_only() {
    println!("## A and C connected only through B (links 50–300 ms)\n");
    println!(
        "| anti-entropy | change of C seen by A after (5 changes: median / worst) | C suspect at A, per minute | C expired at A |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for mode in [AntiEntropy::Digest, AntiEntropy::Table] {
        let mut sim = Sim::new(SimConfig {
            node_count: 3,
            seed: 29,
            topology: Topology::Links(vec![(0, 1), (1, 2)]),
            replica: Config {
                anti_entropy: mode,
                ..Config::default()
            },
            ..SimConfig::default()
        });
        sim.run_for(15_000);
        let start_events = sim.events(0).len();
        let started = sim.now();
        let mut delays = Vec::new();
        for change in 0..5u64 {
            let start = sim.now();
            sim.set_calls(2, 50 + change);
            let at = sim
                .run_until_all(start + 60_000, |replica| {
                    replica
                        .node("node-002", MonoTime(0))
                        .is_some_and(|view| view.usage.calls == 50 + change)
                })
                .expect("A sees C's change");
            delays.push(at - start);
            sim.run_for(7_000);
        }
        sim.run_until(started + 120_000);
        let minutes = (sim.now() - started) as f64 / 60_000.0;
        let (mut suspect, mut expired) = (0, 0);
        for (_, event) in &sim.events(0)[start_events..] {
            match event {
                Event::NodeSuspect { node_id } if node_id == "node-002" => suspect += 1,
                Event::NodeExpired { node_id, .. } if node_id == "node-002" => expired += 1,
                _ => {}
            }
        }
        delays.sort_unstable();
        println!(
            "| {mode:?} | {} / {} ms | {:.1} | {expired} |",
            percentile(&delays, 0.5),
            delays.last().copied().unwrap_or(0),
            suspect as f64 / minutes
        );
    }
    println!();
}
