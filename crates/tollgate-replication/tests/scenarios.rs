//! Scenario tests: lists of operations on a simulated cluster (see `sim`).

use tollgate_replication::MonoTime;
use tollgate_replication::sim::{Op, Sim, SimConfig, Topology, Who};
use tollgate_replication::{
    AntiEntropy, Config, Event, ExpiredRule, Frame, HandleError, NodeState, NodeUsage, Record,
    Replica, Version,
};

use Op::*;

fn config(node_count: usize, seed: u64) -> SimConfig {
    SimConfig {
        node_count,
        seed,
        ..SimConfig::default()
    }
}

/// Fixed 100 ms links: liveness timings become easy to reason about.
fn steady(node_count: usize) -> SimConfig {
    SimConfig {
        latency_ms_min: 100,
        latency_ms_max: 100,
        jitter_ms: 0,
        ..config(node_count, 7)
    }
}

fn check(config: SimConfig, ops: &[Op]) -> Sim {
    let mut sim = Sim::new(config);
    if let Err(error) = sim.run_scenario(ops) {
        panic!("{error}");
    }
    sim
}

fn count_events(sim: &Sim, node: usize, matches: impl Fn(&Event) -> bool) -> usize {
    sim.events(node)
        .iter()
        .filter(|(_, event)| matches(event))
        .count()
}

#[test]
fn three_nodes_converge_to_the_exact_sum() {
    check(
        config(3, 1),
        &[
            Run(1_000),
            SetCalls(0, 3),
            SetCalls(1, 4),
            SetCalls(2, 5),
            Run(700),
            ExpectCalls(Who::Every, 12),
            SetCalls(1, 0),
            SetCalls(2, 9),
            Run(700),
            ExpectCalls(Who::Every, 12),
        ],
    );
}

#[test]
fn five_nodes_converge_to_the_exact_sum_under_loss_and_reordering() {
    let mut config = config(5, 2);
    config.loss = 0.02;
    config.jitter_ms = 100;
    let mut ops = vec![Run(1_000)];
    for round in 0..20u64 {
        for node in 0..5 {
            ops.push(SetCalls(node, round * 10 + node as u64));
            ops.push(Run(37));
        }
    }
    // Last values: 190..=194. A lost push is repaired by the next heartbeat (the receiver
    // sees content it lacks and asks for the record) or by anti-entropy.
    ops.extend([Run(6_000), ExpectCalls(Who::Every, 190 * 5 + 10)]);
    check(config, &ops);
}

#[test]
fn a_silent_node_goes_suspect_then_expired_then_out_of_the_sum() {
    // Removed at expiry (no visibility time), as the events below count.
    let mut config = steady(3);
    config.replica.expired_visible_ms = 0;
    let sim = check(
        config,
        &[
            Run(1_000),
            SetCalls(0, 1),
            SetCalls(1, 2),
            SetCalls(2, 4),
            Run(1_000),
            ExpectCalls(Who::Every, 7),
            Crash(2),
            Run(1_500),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: Some(NodeState::Live),
            },
            Run(3_500),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: Some(NodeState::Suspect),
            },
            // Suspect still counts.
            ExpectCalls(Who::Every, 7),
            Run(8_000),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: None,
            },
            ExpectCalls(Who::Every, 3),
        ],
    );
    for node in 0..2 {
        assert_eq!(
            count_events(&sim, node, |e| matches!(e, Event::NodeSuspect { .. })),
            1
        );
        assert_eq!(
            count_events(&sim, node, |e| matches!(e, Event::NodeExpired { .. })),
            1
        );
        assert_eq!(
            count_events(&sim, node, |e| matches!(e, Event::NodeRemoved { .. })),
            1
        );
    }
}

#[test]
fn with_hold_for_an_expired_node_is_held_then_dropped() {
    let mut config = steady(3);
    config.replica.expired_rule = ExpiredRule::HoldFor { hold_ms: 20_000 };
    // Removed when the hold ends (no visibility beyond it).
    config.replica.expired_visible_ms = 0;
    check(
        config,
        &[
            Run(1_000),
            SetCalls(0, 1),
            SetCalls(1, 2),
            SetCalls(2, 4),
            Run(1_000),
            Crash(2),
            Run(13_000),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: Some(NodeState::Expired),
            },
            ExpectCalls(Who::Every, 7),
            Run(20_000),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: None,
            },
            ExpectCalls(Who::Every, 3),
        ],
    );
}

#[test]
fn a_restart_replaces_the_old_record_and_is_never_counted_twice() {
    let mut sim = check(
        config(3, 3),
        &[
            Run(1_000),
            SetCalls(0, 1),
            SetCalls(1, 2),
            SetCalls(2, 5),
            Run(1_000),
            ExpectCalls(Who::Every, 8),
            Restart(2),
            // The new process restores its calls (as the agent does from its snapshot).
            SetCalls(2, 5),
        ],
    );
    // At no instant does any node count node 2's calls twice.
    for _ in 0..300 {
        sim.run_for(10);
        for node in 0..3 {
            let calls = sim
                .replica(node)
                .unwrap()
                .aggregate(MonoTime(sim.now()))
                .calls;
            assert!(calls <= 8, "node {node} counts {calls} at {}", sim.now());
        }
    }
    sim.run_scenario(&[ExpectCalls(Who::Every, 8)]).unwrap();
    for node in 0..2 {
        let view = sim
            .replica(node)
            .unwrap()
            .node("node-002", MonoTime(sim.now()))
            .unwrap();
        assert_eq!(view.incarnation, 2);
        assert_eq!(
            count_events(&sim, node, |e| matches!(
                e,
                Event::NodeRestarted { incarnation: 2, .. }
            )),
            1
        );
    }
}

#[test]
fn a_partition_then_heal_converges() {
    let sim = check(
        config(5, 4),
        &[
            Run(1_000),
            SetCalls(0, 1),
            SetCalls(1, 2),
            SetCalls(2, 4),
            SetCalls(3, 8),
            SetCalls(4, 16),
            Run(1_000),
            ExpectCalls(Who::Every, 31),
            Partition(vec![vec![0, 1], vec![2, 3, 4]]),
            SetCalls(0, 100),
            SetCalls(4, 200),
            Run(15_000),
            // Each side expired the other (ExpiredRule::Drop): out of the sums, still shown
            // as expired (`expired_visible_ms`), and back on heal.
            ExpectCalls(Who::Node(0), 102),
            ExpectCalls(Who::Node(1), 102),
            ExpectCalls(Who::Node(2), 212),
            ExpectState {
                at: Who::Node(0),
                node: 3,
                state: Some(NodeState::Expired),
            },
            Heal,
            Run(3_000),
            ExpectCalls(Who::Every, 314),
            ExpectState {
                at: Who::Every,
                node: 0,
                state: Some(NodeState::Live),
            },
        ],
    );
    assert_eq!(sim.replica(0).unwrap().stats().duplicate_node_alarms, 0);
}

#[test]
fn a_short_partition_changes_nothing_but_suspicion() {
    check(
        steady(4),
        &[
            Run(1_000),
            SetCalls(0, 1),
            SetCalls(3, 2),
            Run(1_000),
            Partition(vec![vec![0, 1], vec![2, 3]]),
            Run(5_000),
            ExpectState {
                at: Who::Node(0),
                node: 3,
                state: Some(NodeState::Suspect),
            },
            ExpectCalls(Who::Every, 3),
            Heal,
            Run(2_000),
            ExpectState {
                at: Who::Every,
                node: 3,
                state: Some(NodeState::Live),
            },
            ExpectCalls(Who::Every, 3),
        ],
    );
}

#[test]
fn a_and_c_connected_only_through_b_converge_by_anti_entropy() {
    for anti_entropy in [AntiEntropy::Digest, AntiEntropy::Table] {
        let mut config = config(3, 5);
        config.topology = Topology::Links(vec![(0, 1), (1, 2)]);
        config.replica.anti_entropy = anti_entropy;
        let sim = check(
            config,
            &[
                Run(1_000),
                SetCalls(0, 10),
                SetCalls(1, 20),
                SetCalls(2, 30),
                Run(12_000),
                ExpectCalls(Who::Every, 60),
                SetCalls(2, 31),
                Run(12_000),
                ExpectCalls(Who::Every, 61),
                // Relayed liveness keeps C from expiring at A (it may be suspect between
                // anti-entropy rounds: 5 s rounds, 3 s suspicion).
                Run(60_000),
                ExpectCalls(Who::Every, 61),
            ],
        );
        let a = sim.replica(0).unwrap();
        assert_eq!(a.peers().collect::<Vec<_>>(), ["node-001"]);
        assert_eq!(
            count_events(&sim, 0, |e| matches!(e, Event::NodeExpired { .. })),
            0,
            "{anti_entropy:?}"
        );
        // A knows where C is, so the transport would try to dial it.
        let targets = a.dial_targets(MonoTime(sim.now()));
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].node_id, "node-002");
    }
}

#[test]
fn a_forged_relayed_record_pushed_directly_is_refused() {
    let mut sim = check(
        config(3, 6),
        &[
            Run(1_000),
            SetCalls(2, 5),
            Run(1_000),
            ExpectCalls(Who::Every, 5),
        ],
    );
    let mut forged: Record = sim.replica(1).unwrap().records().next().unwrap().clone();
    forged.seq += 1_000;
    forged.usage.calls = 1_000_000;
    // Node 0 pushes a record of node 1 directly to node 2: refused, connection closed.
    let refused = sim.inject(0, 2, Frame::Record(forged.clone()));
    assert_eq!(
        refused,
        Err(HandleError::ForgedRecord {
            peer: "node-000".into(),
            claimed: "node-001".into()
        })
    );
    assert_eq!(sim.replica(2).unwrap().stats().forged_records, 1);
    sim.run_scenario(&[ExpectCalls(Who::Node(2), 5)]).unwrap();
    // The same record relayed in an anti-entropy table from an authenticated peer is
    // accepted (relays are trusted; the owner then raises the duplicate alarm below).
    assert_eq!(sim.inject(0, 2, Frame::Table(vec![forged])), Ok(()));
    sim.run_scenario(&[ExpectCalls(Who::Node(2), 1_000_005)])
        .unwrap();
}

#[test]
fn the_owner_moves_past_a_foreign_version_of_its_own_record_and_raises_the_alarm() {
    let mut sim = check(config(3, 8), &[Run(1_000), SetCalls(1, 4), Run(1_000)]);
    let own = sim.replica(1).unwrap().records().next().unwrap().clone();
    let mut foreign = own.clone();
    foreign.seq += 50;
    foreign.usage.calls = 999;
    // Node 0 relays a record of node 1 that node 1 never emitted.
    sim.inject(0, 2, Frame::Table(vec![foreign.clone()]))
        .unwrap();
    sim.inject(0, 1, Frame::Table(vec![foreign.clone()]))
        .unwrap();
    let alarms: Vec<_> = sim
        .events(1)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::DuplicateNode { via, seen } => Some((via.clone(), *seen)),
            _ => None,
        })
        .collect();
    assert_eq!(alarms, [("node-000".to_owned(), Some(foreign.version()))]);
    assert!(sim.replica(1).unwrap().version() > foreign.version());
    // Its true record wins everywhere again.
    sim.run_scenario(&[Run(1_000), ExpectCalls(Who::Every, 4)])
        .unwrap();
    // A peer presenting this node's own id is refused, with the alarm.
    let error = sim.with_replica(1, |replica, now| {
        replica.handle_frame(MonoTime(now), "node-001", Frame::Pull)
    });
    assert_eq!(error, Err(HandleError::OwnIdentity));
    assert_eq!(sim.replica(1).unwrap().stats().duplicate_node_alarms, 2);
}

#[test]
fn a_second_process_with_the_same_node_id_raises_the_alarm_at_the_first() {
    // A clone of node 0 (say, a copied state directory, so one incarnation more) connects
    // to node 2 under node 0's certificate. Node 2 keeps the clone's record (a larger
    // version) and relays it; the real node 0 sees its own id with a version it never
    // emitted, alarms, and moves past it.
    let mut config = steady(3);
    config.replica.anti_entropy = AntiEntropy::Table;
    let mut sim = Sim::new(config.clone());
    sim.run_for(1_000);
    let clone_config = Config {
        rng_seed: 99,
        ..config.replica.clone()
    };
    let mut clone = Replica::new(clone_config, "node-000", 2, MonoTime(sim.now())).unwrap();
    clone.set_local_usage(
        MonoTime(sim.now()),
        NodeUsage {
            calls: 7,
            ..NodeUsage::default()
        },
    );
    clone
        .peer_connected(MonoTime(sim.now()), "node-002")
        .unwrap();
    let now = sim.now();
    while let Some(transmit) = clone.poll_transmit(MonoTime(now)) {
        sim.with_replica(2, |replica, now| {
            replica.handle_frame(MonoTime(now), "node-000", transmit.frame)
        })
        .unwrap();
    }
    sim.run_for(12_000);
    let real = sim.replica(0).unwrap();
    assert!(real.stats().duplicate_node_alarms >= 1);
    assert!(real.version() > Version::new(2, 0));
    assert!(
        sim.events(0)
            .iter()
            .any(|(_, e)| *e == Event::IncarnationChanged { incarnation: 2 })
    );
    assert!(sim.events(0).iter().any(|(_, e)| matches!(
        e,
        Event::DuplicateNode { via, seen: Some(seen) } if via == "node-002" && seen.incarnation == 2
    )));
}

#[test]
fn a_graceful_leave_drops_out_of_the_sum_at_once() {
    let sim = check(
        steady(3),
        &[
            Run(1_000),
            SetCalls(0, 1),
            SetCalls(1, 2),
            SetCalls(2, 4),
            Run(1_000),
            Leave(2),
            Run(150),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: Some(NodeState::Left),
            },
            ExpectCalls(Who::Every, 3),
            Run(12_000),
            ExpectState {
                at: Who::Every,
                node: 2,
                state: None,
            },
        ],
    );
    for node in 0..2 {
        assert_eq!(
            count_events(&sim, node, |e| matches!(e, Event::NodeLeft { .. })),
            1
        );
        assert_eq!(
            count_events(&sim, node, |e| matches!(e, Event::NodeExpired { .. })),
            0
        );
    }
}

#[test]
fn the_license_travels_the_mesh_and_the_highest_serial_wins() {
    let mut config = config(3, 9);
    config.topology = Topology::Links(vec![(0, 1), (1, 2)]);
    let mut sim = Sim::new(config);
    sim.run_for(1_000);
    let document = |serial: u64| format!("license serial={serial}").into_bytes();
    sim.with_replica(0, |replica, now| {
        replica.set_license(MonoTime(now), 4, document(4))
    })
    .unwrap();
    sim.with_replica(2, |replica, now| {
        replica.set_license(MonoTime(now), 2, document(2))
    })
    .unwrap();
    // The agent's part: verify what is offered, install it if its serial is higher.
    let mut seen = [0usize; 3];
    for _ in 0..300 {
        sim.run_for(100);
        for (node, seen) in seen.iter_mut().enumerate() {
            let offered: Vec<Vec<u8>> = sim.events(node)[*seen..]
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::LicenseOffered { armored, .. } => Some(armored.clone()),
                    _ => None,
                })
                .collect();
            *seen = sim.events(node).len();
            for armored in offered {
                let text = String::from_utf8(armored.clone()).unwrap();
                let serial: u64 = text.rsplit('=').next().unwrap().parse().unwrap();
                if serial > sim.replica(node).unwrap().license_serial() {
                    sim.with_replica(node, |replica, now| {
                        replica.set_license(MonoTime(now), serial, armored)
                    })
                    .unwrap();
                }
            }
        }
    }
    for node in 0..3 {
        let replica = sim.replica(node).unwrap();
        assert_eq!(replica.license_serial(), 4, "node {node}");
        assert_eq!(replica.aggregate(MonoTime(sim.now())).license_serial_max, 4);
    }
    // Node 0 held the highest serial from the start: nobody offered it anything. Node 1
    // may have fetched node 2's serial 2 first (whichever advertisement arrived first), then
    // serial 4; node 2 fetched serial 4 from node 1, its only peer. Nothing twice.
    let offers = |node| count_events(&sim, node, |e| matches!(e, Event::LicenseOffered { .. }));
    assert_eq!(offers(0), 0);
    assert!((1..=2).contains(&offers(1)), "{}", offers(1));
    assert_eq!(offers(2), 1);
}

#[test]
fn provisioned_subscribers_are_the_latest_report_never_a_sum() {
    let report = |subscribers, at| NodeUsage {
        subscribers,
        subscribers_reported_at: at,
        ..NodeUsage::default()
    };
    let sim = check(
        config(3, 10),
        &[
            Run(1_000),
            SetUsage(0, report(1_000, 5_000)),
            SetUsage(1, report(1_200, 7_000)),
            SetUsage(2, report(900, 6_000)),
            Run(1_000),
        ],
    );
    for node in 0..3 {
        let aggregate = sim.replica(node).unwrap().aggregate(MonoTime(sim.now()));
        assert_eq!(aggregate.subscribers, 1_200);
        assert_eq!(aggregate.subscribers_reported_at, 7_000);
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut config = config(6, seed);
        config.loss = 0.05;
        let mut sim = Sim::new(config);
        sim.run_scenario(&[
            Run(1_000),
            SetCalls(0, 3),
            Partition(vec![vec![0, 1, 2]]),
            Run(12_000),
            Heal,
            Crash(4),
            Run(5_000),
        ])
        .unwrap();
        let events: Vec<_> = (0..6).map(|node| sim.events(node).to_vec()).collect();
        let traffic: Vec<_> = (0..6).map(|node| sim.traffic(node)).collect();
        (events, traffic)
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11).1, run(12).1);
}

#[test]
fn no_false_expiry_with_two_percent_loss() {
    let mut config = config(16, 13);
    config.loss = 0.02;
    config.jitter_ms = 50;
    let mut sim = Sim::new(config);
    for step in 0..120u64 {
        sim.set_calls((step % 16) as usize, step);
        sim.run_for(1_000);
    }
    let mut expired = 0;
    for node in 0..16 {
        expired += count_events(&sim, node, |e| matches!(e, Event::NodeExpired { .. }));
        assert!(sim.traffic(node).datagrams_lost > 0);
    }
    assert_eq!(expired, 0);
}

#[test]
fn a_quiet_16_node_cluster_costs_under_1200_bytes_per_second_per_node() {
    // Counted as mesh-bench counts: UDP payload (QUIC short header with a 2-byte connection
    // id, packet number, frame header, AEAD tag: about 22 bytes a packet), ACKs included.
    let mut sim = Sim::new(SimConfig {
        packet_overhead_bytes: 22,
        ..config(16, 14)
    });
    for node in 0..16 {
        sim.set_calls(node, 10 + node as u64);
    }
    sim.run_for(20_000);
    sim.reset_traffic();
    sim.run_for(60_000);
    for node in 0..16 {
        let per_second = sim.traffic(node).wire_bytes_sent / 60;
        assert!(per_second <= 1_200, "node {node}: {per_second} B/s");
    }
}
