use proptest::prelude::*;

use super::*;
use crate::ExpiredRule;
use crate::frame::{DigestEntry, Heartbeat, LICENSE_BYTES_MAX};
use tollgate_events::WallTime;

/// The timings these tests reason in: a 1 s heartbeat (the default is 1.5 s).
fn config() -> Config {
    Config {
        address: "10.0.0.1:7172".into(),
        rng_seed: 1,
        heartbeat_interval_ms: 1_000,
        ..Config::default()
    }
}

/// A replica "a" at t = 0, connected to "b", with its connect-time output drained.
fn replica() -> Replica {
    let mut replica = Replica::new(config(), "a", 1, MonoTime(0)).unwrap();
    replica.peer_connected(MonoTime(0), "b").unwrap();
    drain(&mut replica, 0);
    replica
}

fn drain(replica: &mut Replica, now: u64) -> Vec<Transmit> {
    std::iter::from_fn(|| replica.poll_transmit(MonoTime(now))).collect()
}

fn events(replica: &mut Replica) -> Vec<Event> {
    std::iter::from_fn(|| replica.poll_event()).collect()
}

fn calls(calls: u64) -> NodeUsage {
    NodeUsage {
        calls,
        ..NodeUsage::default()
    }
}

fn record(node_id: &str, incarnation: u64, seq: u64, usage: NodeUsage) -> Record {
    Record {
        node_id: node_id.into(),
        incarnation,
        seq,
        flags: Flags::EMPTY,
        address: format!("{node_id}:7172"),
        license_serial: 0,
        usage,
        aor_seq: 0,
        wall_time: WallTime::ZERO,
    }
}

/// A heartbeat of incarnation 1.
fn heartbeat(seq: u64, changed_seq: u64) -> Frame {
    Frame::Heartbeat(Heartbeat {
        incarnation: 1,
        seq,
        changed_seq,
    })
}

fn pushed(transmits: &[Transmit]) -> Vec<(u64, u64)> {
    transmits
        .iter()
        .filter_map(|transmit| match &transmit.frame {
            Frame::Record(record) => Some((record.seq, record.usage.calls)),
            _ => None,
        })
        .collect()
}

#[test]
fn connecting_sends_the_own_record_and_a_joiner_pulls_once() {
    let mut replica = Replica::new(config(), "a", 1, MonoTime(0)).unwrap();
    replica.peer_connected(MonoTime(0), "b").unwrap();
    replica.peer_connected(MonoTime(0), "c").unwrap();
    let frames: Vec<_> = drain(&mut replica, 0)
        .into_iter()
        .map(|t| (t.to, t.kind, t.frame.name()))
        .collect();
    let to = |peer: &str| Destination::Peer(peer.into());
    // One pull only, to one of the peers, while it is outstanding.
    assert_eq!(
        frames
            .iter()
            .filter(|(_, kind, name)| *kind == TransmitKind::Stream && *name == "pull")
            .count(),
        1
    );
    assert!(frames.contains(&(to("b"), TransmitKind::Stream, "record")));
    assert!(frames.contains(&(to("c"), TransmitKind::Stream, "record")));
}

#[test]
fn pushes_coalesce_to_one_per_push_interval() {
    let mut replica = replica();
    replica.set_local_usage(MonoTime(1_000), calls(1));
    assert_eq!(pushed(&drain(&mut replica, 1_000)), [(1, 1)]);
    replica.set_local_usage(MonoTime(1_010), calls(2));
    replica.set_local_usage(MonoTime(1_050), calls(3));
    assert!(drain(&mut replica, 1_050).is_empty());
    assert_eq!(replica.poll_timeout(), Some(MonoTime(1_100)));
    replica.handle_timeout(MonoTime(1_100));
    assert_eq!(pushed(&drain(&mut replica, 1_100)), [(2, 3)]);
}

#[test]
fn an_unchanged_usage_costs_nothing_and_quiet_means_heartbeats() {
    let mut replica = replica();
    replica.set_local_usage(MonoTime(500), calls(4));
    drain(&mut replica, 500);
    replica.set_local_usage(MonoTime(700), calls(4));
    assert!(drain(&mut replica, 700).is_empty());
    // "a" answers b's heartbeats: its own is due 1.75 intervals after the push at the latest.
    assert_eq!(replica.poll_timeout(), Some(MonoTime(2_250)));
    replica.handle_timeout(MonoTime(2_250));
    let transmits = drain(&mut replica, 2_250);
    assert_eq!(
        transmits,
        [Transmit {
            to: Destination::Peer("b".into()),
            kind: TransmitKind::Datagram,
            frame: Frame::Heartbeat(Heartbeat {
                incarnation: 1,
                seq: 2,
                changed_seq: 1
            }),
        }]
    );
}

fn heartbeats(transmits: &[Transmit]) -> Vec<(String, u64)> {
    transmits
        .iter()
        .filter_map(|transmit| match (&transmit.to, &transmit.frame) {
            (Destination::Peer(peer), Frame::Heartbeat(heartbeat)) => {
                Some((peer.clone(), heartbeat.seq))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn each_pair_has_one_leader_and_the_roles_are_balanced() {
    // "a" answers "b" (the node of `replica()`) and leads "c": the tests below rely on it.
    assert!(!leads_pair("a", "b") && leads_pair("b", "a"));
    assert!(leads_pair("a", "c") && !leads_pair("c", "a"));
    let ids: Vec<String> = (0..64).map(|i| format!("node-{i:02}")).collect();
    for id in &ids {
        let leads = ids
            .iter()
            .filter(|peer| *peer != id && leads_pair(id, peer))
            .count();
        assert!((16..=47).contains(&leads), "{id} leads {leads} of 63");
    }
}

#[test]
fn each_peer_gets_its_heartbeat_on_its_own_schedule_and_seq_advances_at_each() {
    let mut replica = replica(); // "b" connected at 0: "a" answers it
    replica.peer_connected(MonoTime(300), "c").unwrap(); // "a" leads: due 1_300
    drain(&mut replica, 300);
    let from_c = |seq| {
        Frame::Heartbeat(Heartbeat {
            incarnation: 1,
            seq,
            changed_seq: 0,
        })
    };
    assert_eq!(replica.poll_timeout(), Some(MonoTime(1_300)));
    replica.handle_timeout(MonoTime(1_300));
    // "c" holds seq 0 (sent on connect): seq grows.
    assert_eq!(heartbeats(&drain(&mut replica, 1_300)), [("c".into(), 1)]);
    replica
        .handle_frame(MonoTime(1_400), "c", from_c(1))
        .unwrap();
    assert!(heartbeats(&drain(&mut replica, 1_400)).is_empty());
    // "b" led and fell silent: 1.75 intervals after its record went out, a's own heartbeat.
    // "b" was never sent seq 1: it gets it as it is. Every peer sees seq advance at every
    // heartbeat, and seq grows about once per round through the peers.
    assert_eq!(replica.poll_timeout(), Some(MonoTime(1_750)));
    replica.handle_timeout(MonoTime(1_750));
    assert_eq!(heartbeats(&drain(&mut replica, 1_750)), [("b".into(), 1)]);
    replica.handle_timeout(MonoTime(2_300));
    assert_eq!(heartbeats(&drain(&mut replica, 2_300)), [("c".into(), 2)]);
    replica
        .handle_frame(MonoTime(2_350), "c", from_c(2))
        .unwrap();
    // A push goes to every peer and puts every heartbeat an interval (1.75 for "b") after.
    replica.set_local_usage(MonoTime(2_600), calls(1));
    assert_eq!(pushed(&drain(&mut replica, 2_600)), [(3, 1)]);
    replica.handle_timeout(MonoTime(3_599));
    assert!(heartbeats(&drain(&mut replica, 3_599)).is_empty());
    replica.handle_timeout(MonoTime(3_600));
    assert_eq!(heartbeats(&drain(&mut replica, 3_600)), [("c".into(), 4)]);
    replica
        .handle_frame(MonoTime(3_650), "c", from_c(3))
        .unwrap();
    replica.handle_timeout(MonoTime(4_349));
    assert!(heartbeats(&drain(&mut replica, 4_349)).is_empty());
    replica.handle_timeout(MonoTime(4_350));
    assert_eq!(heartbeats(&drain(&mut replica, 4_350)), [("b".into(), 4)]);
    assert_eq!(replica.stats().emissions, 4);
}

#[test]
fn the_answering_node_answers_the_leader_and_the_leader_retries_once_when_unanswered() {
    let mut replica = replica(); // "a" answers "b"
    replica.peer_connected(MonoTime(0), "c").unwrap(); // "a" leads "c"
    drain(&mut replica, 0);
    for peer in ["b", "c"] {
        replica
            .handle_frame(
                MonoTime(10),
                peer,
                Frame::Record(record(peer, 1, 0, calls(0))),
            )
            .unwrap();
    }
    assert!(drain(&mut replica, 10).is_empty());
    // Less than a quarter interval since "b" was last sent anything: no answer.
    replica
        .handle_frame(MonoTime(249), "b", heartbeat(1, 0))
        .unwrap();
    assert!(drain(&mut replica, 249).is_empty());
    // Then every frame of the leader is answered at once (QUIC's ACK of it rides along).
    replica
        .handle_frame(MonoTime(250), "b", heartbeat(2, 0))
        .unwrap();
    assert_eq!(heartbeats(&drain(&mut replica, 250)), [("b".into(), 1)]);
    // The leader answers nothing: an answer is never answered, whatever the round trip.
    replica
        .handle_frame(MonoTime(900), "c", heartbeat(1, 0))
        .unwrap();
    assert!(drain(&mut replica, 900).is_empty());
    replica.handle_timeout(MonoTime(1_000));
    assert_eq!(heartbeats(&drain(&mut replica, 1_000)), [("c".into(), 1)]);
    // In step: "b" heartbeats every interval, "a" answers each.
    replica
        .handle_frame(MonoTime(1_250), "b", heartbeat(3, 0))
        .unwrap();
    assert_eq!(heartbeats(&drain(&mut replica, 1_250)), [("b".into(), 2)]);
    // "c" answered: its next heartbeat is one interval after the last.
    replica
        .handle_frame(MonoTime(1_400), "c", heartbeat(2, 0))
        .unwrap();
    assert!(drain(&mut replica, 1_400).is_empty());
    replica.handle_timeout(MonoTime(1_999));
    assert!(heartbeats(&drain(&mut replica, 1_999)).is_empty());
    replica.handle_timeout(MonoTime(2_000));
    assert_eq!(heartbeats(&drain(&mut replica, 2_000)), [("c".into(), 2)]);
    // Nothing back from "c" for half an interval: one retry.
    replica.handle_timeout(MonoTime(2_499));
    assert!(heartbeats(&drain(&mut replica, 2_499)).is_empty());
    replica.handle_timeout(MonoTime(2_500));
    assert_eq!(heartbeats(&drain(&mut replica, 2_500)), [("c".into(), 3)]);
    // b's heartbeat of 2_250 and its retry were lost: a's own heartbeat to "b", 1.75
    // intervals after its last answer.
    replica.handle_timeout(MonoTime(2_999));
    assert!(heartbeats(&drain(&mut replica, 2_999)).is_empty());
    replica.handle_timeout(MonoTime(3_000));
    assert_eq!(heartbeats(&drain(&mut replica, 3_000)), [("b".into(), 3)]);
    // Only one retry: then "c" is due one interval later.
    replica.handle_timeout(MonoTime(3_499));
    assert!(heartbeats(&drain(&mut replica, 3_499)).is_empty());
    replica.handle_timeout(MonoTime(3_500));
    assert_eq!(heartbeats(&drain(&mut replica, 3_500)), [("c".into(), 4)]);
}

#[test]
fn a_digest_is_answered_with_content_the_peer_lacks_or_a_node_it_does_not_hear() {
    let mut replica = replica();
    replica.peer_connected(MonoTime(0), "c").unwrap();
    replica
        .handle_frame(
            MonoTime(10),
            "b",
            Frame::Record(record("b", 1, 5, calls(2))),
        )
        .unwrap();
    replica
        .handle_frame(MonoTime(20), "b", heartbeat(6, 5))
        .unwrap();
    drain(&mut replica, 20);
    let own = replica.version();
    let ask = |replica: &mut Replica, now: u64, b_seq: u64| {
        let digest = Frame::Digest(vec![
            DigestEntry {
                node_id: "a".into(),
                version: own,
            },
            DigestEntry {
                node_id: "b".into(),
                version: Version {
                    incarnation: 1,
                    seq: b_seq,
                },
            },
        ]);
        replica.handle_frame(MonoTime(now), "c", digest).unwrap();
        drain(replica, now)
            .into_iter()
            .filter_map(|transmit| match transmit.frame {
                Frame::Table(records) => Some(records.iter().map(|r| r.seq).collect::<Vec<_>>()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // One seq behind with the same content: b's heartbeat round in progress, nothing to send.
    assert!(ask(&mut replica, 1_000, 5).is_empty());
    // Content that changed after its version: sent.
    assert_eq!(ask(&mut replica, 2_000, 4), [vec![6]]);
    // Two seqs behind, same content: "c" does not hear "b" directly; relaying keeps it live.
    replica
        .handle_frame(MonoTime(2_500), "b", heartbeat(7, 5))
        .unwrap();
    drain(&mut replica, 2_500);
    assert_eq!(ask(&mut replica, 3_000, 5), [vec![7]]);
}

#[test]
fn a_heartbeat_advances_a_current_record_and_asks_for_a_missing_one() {
    let mut replica = replica();
    replica
        .handle_frame(
            MonoTime(10),
            "b",
            Frame::Record(record("b", 1, 5, calls(2))),
        )
        .unwrap();
    replica
        .handle_frame(MonoTime(20), "b", heartbeat(7, 5))
        .unwrap();
    assert_eq!(replica.node("b", MonoTime(20)).unwrap().seq, 7);
    assert!(drain(&mut replica, 20).is_empty());
    // Duplicated or reordered: harmless.
    replica
        .handle_frame(MonoTime(30), "b", heartbeat(6, 5))
        .unwrap();
    assert_eq!(replica.stats().records_stale, 1);
    // Content changed at 8, which this node never got: ask for the record.
    replica
        .handle_frame(MonoTime(40), "b", heartbeat(9, 8))
        .unwrap();
    assert_eq!(replica.node("b", MonoTime(40)).unwrap().seq, 7);
    assert_eq!(
        drain(&mut replica, 40),
        [Transmit {
            to: Destination::Peer("b".into()),
            kind: TransmitKind::Datagram,
            frame: Frame::PullRecord,
        }]
    );
    // A heartbeat of an unknown node asks too (at most once per push interval).
    replica
        .handle_frame(MonoTime(50), "b", heartbeat(10, 8))
        .unwrap();
    assert!(drain(&mut replica, 50).is_empty());
    assert_eq!(replica.stats().heartbeats_unmatched, 2);
}

#[test]
fn expiry_leaves_a_tombstone_that_blocks_stale_relays_but_not_newer_versions() {
    // Removed at expiry: no visibility time.
    let config = Config {
        expired_visible_ms: 0,
        ..config()
    };
    let mut replica = Replica::new(config, "a", 1, MonoTime(0)).unwrap();
    let c = |seq| record("c", 1, seq, calls(9));
    replica
        .handle_frame(MonoTime(0), "b", Frame::Table(vec![c(5)]))
        .unwrap();
    // "b" keeps heartbeating; "c" falls silent.
    for now in (1_000..=10_000).step_by(1_000) {
        replica
            .handle_frame(
                MonoTime(now),
                "b",
                Frame::Record(record("b", 1, now, calls(1))),
            )
            .unwrap();
        replica.handle_timeout(MonoTime(now));
    }
    assert_eq!(replica.node("c", MonoTime(10_000)), None);
    let names: Vec<_> = events(&mut replica)
        .into_iter()
        .filter(|event| !matches!(event, Event::NodeUp { node_id, .. } if node_id == "b"))
        .collect();
    assert_eq!(
        names,
        [
            Event::NodeUp {
                node_id: "c".into(),
                incarnation: 1
            },
            Event::NodeSuspect {
                node_id: "c".into()
            },
            Event::NodeExpired {
                node_id: "c".into(),
                incarnation: 1
            },
            Event::NodeRemoved {
                node_id: "c".into()
            },
        ]
    );
    // A laggard relays the old record: blocked.
    replica
        .handle_frame(MonoTime(10_500), "b", Frame::Table(vec![c(5)]))
        .unwrap();
    assert_eq!(replica.node("c", MonoTime(10_500)), None);
    assert_eq!(replica.stats().records_tombstoned, 1);
    // One seq more may have been emitted before it died (its last heartbeat round reached
    // "b", not this node): blocked too.
    replica
        .handle_frame(MonoTime(10_600), "b", Frame::Table(vec![c(6)]))
        .unwrap();
    assert_eq!(replica.node("c", MonoTime(10_600)), None);
    assert_eq!(replica.stats().records_tombstoned, 2);
    // "c" was only cut off and is still emitting: welcome back.
    replica
        .handle_frame(MonoTime(11_000), "b", Frame::Table(vec![c(7)]))
        .unwrap();
    assert_eq!(
        replica.node("c", MonoTime(11_000)).unwrap().state,
        NodeState::Live
    );
    assert_eq!(replica.aggregate(MonoTime(11_000)).calls, 1 + 9);
}

#[test]
fn an_expired_node_stays_visible_uncounted_for_expired_visible_ms() {
    let config = Config {
        expired_visible_ms: 60_000,
        ..config()
    };
    let mut replica = Replica::new(config, "a", 1, MonoTime(0)).unwrap();
    let c = |seq| record("c", 1, seq, calls(9));
    replica
        .handle_frame(MonoTime(0), "b", Frame::Table(vec![c(5)]))
        .unwrap();
    replica.handle_timeout(MonoTime(10_000));
    let view = replica.node("c", MonoTime(10_000)).expect("still visible");
    assert_eq!((view.state, view.counted), (NodeState::Expired, false));
    let aggregate = replica.aggregate(MonoTime(10_000));
    assert_eq!((aggregate.calls, aggregate.nodes_expired), (0, 1));
    // A laggard relays the last seq or the one after: no evidence of life.
    for (now, seq) in [(10_500, 5), (10_600, 6)] {
        replica
            .handle_frame(MonoTime(now), "b", Frame::Table(vec![c(seq)]))
            .unwrap();
        assert_eq!(
            replica.node("c", MonoTime(now)).unwrap().state,
            NodeState::Expired
        );
    }
    assert_eq!(replica.stats().records_tombstoned, 2);
    // Removed once the visibility time has passed, with a tombstone as before.
    assert!(replica.poll_timeout().unwrap() <= MonoTime(70_000));
    replica.handle_timeout(MonoTime(70_000));
    assert_eq!(replica.node("c", MonoTime(70_000)), None);
    assert!(events(&mut replica).contains(&Event::NodeRemoved {
        node_id: "c".into()
    }));
    // A node that was only cut off comes back with a newer seq.
    replica
        .handle_frame(MonoTime(71_000), "b", Frame::Table(vec![c(40)]))
        .unwrap();
    assert_eq!(
        replica.node("c", MonoTime(71_000)).unwrap().state,
        NodeState::Live
    );
}

#[test]
fn tombstones_expire_after_their_ttl() {
    let config = Config {
        expired_visible_ms: 0,
        ..config()
    };
    let mut replica = Replica::new(config, "a", 1, MonoTime(0)).unwrap();
    let c = record("c", 1, 5, calls(9));
    replica
        .handle_frame(MonoTime(0), "b", Frame::Table(vec![c.clone()]))
        .unwrap();
    replica.handle_timeout(MonoTime(10_000));
    assert_eq!(replica.node("c", MonoTime(10_000)), None);
    let ttl_end = 10_000 + replica.config().tombstone_ttl_ms;
    assert!(replica.poll_timeout().unwrap() <= MonoTime(ttl_end));
    replica.handle_timeout(MonoTime(ttl_end));
    assert!(replica.tombstones.is_empty());
}

#[test]
fn the_aggregate_counts_live_and_suspect_and_drops_expired_at_now() {
    let mut replica = replica();
    replica.set_local_usage(MonoTime(0), calls(1));
    replica
        .handle_frame(
            MonoTime(0),
            "b",
            Frame::Table(vec![record("c", 1, 1, calls(10))]),
        )
        .unwrap();
    // No handle_timeout: the aggregate evaluates liveness at the `now` it is given.
    assert_eq!(replica.aggregate(MonoTime(2_999)).calls, 11);
    assert_eq!(replica.aggregate(MonoTime(3_000)).nodes_suspect, 1);
    assert_eq!(replica.aggregate(MonoTime(9_999)).calls, 11);
    let expired = replica.aggregate(MonoTime(10_000));
    assert_eq!((expired.calls, expired.nodes_expired), (1, 1));
}

#[test]
fn hold_for_keeps_an_expired_node_counted_for_the_hold() {
    let config = Config {
        expired_rule: ExpiredRule::HoldFor { hold_ms: 5_000 },
        expired_visible_ms: 0,
        ..config()
    };
    let mut replica = Replica::new(config, "a", 1, MonoTime(0)).unwrap();
    replica
        .handle_frame(
            MonoTime(0),
            "b",
            Frame::Table(vec![record("c", 1, 1, calls(10))]),
        )
        .unwrap();
    replica.handle_timeout(MonoTime(12_000));
    let view = replica.node("c", MonoTime(12_000)).unwrap();
    assert_eq!((view.state, view.counted), (NodeState::Expired, true));
    assert_eq!(replica.aggregate(MonoTime(12_000)).nodes_held, 1);
    assert_eq!(replica.aggregate(MonoTime(14_999)).calls, 10);
    replica.handle_timeout(MonoTime(15_000));
    assert_eq!(replica.node("c", MonoTime(15_000)), None);
    assert_eq!(replica.aggregate(MonoTime(15_000)).calls, 0);
}

#[test]
fn leave_sends_a_left_record_on_a_stream_and_stops_emitting() {
    let mut replica = replica();
    replica.set_local_usage(MonoTime(0), calls(5));
    drain(&mut replica, 0);
    replica.leave(MonoTime(200));
    let transmits = drain(&mut replica, 200);
    assert_eq!(transmits.len(), 1);
    assert_eq!(transmits[0].kind, TransmitKind::Stream);
    assert_eq!(transmits[0].to, Destination::AllPeers);
    let Frame::Record(left) = &transmits[0].frame else {
        panic!("{:?}", transmits[0].frame);
    };
    assert!(left.is_left());
    assert_eq!(left.usage, NodeUsage::default());
    replica.set_local_usage(MonoTime(300), calls(7));
    replica.handle_timeout(MonoTime(60_000));
    assert!(drain(&mut replica, 60_000).is_empty());
    assert_eq!(replica.aggregate(MonoTime(60_000)).calls, 0);
}

#[test]
fn requests_are_answered_at_most_once_per_interval_per_peer() {
    let mut replica = replica();
    replica
        .handle_frame(MonoTime(100), "b", Frame::Pull)
        .unwrap();
    replica
        .handle_frame(MonoTime(200), "b", Frame::Pull)
        .unwrap();
    replica
        .handle_frame(MonoTime(300), "b", Frame::Digest(Vec::new()))
        .unwrap();
    let tables = drain(&mut replica, 300)
        .iter()
        .filter(|t| matches!(t.frame, Frame::Table(_)))
        .count();
    assert_eq!(tables, 1, "one table");
    assert_eq!(replica.stats().answers_rate_limited, 2);
    replica
        .handle_frame(MonoTime(1_100), "b", Frame::Pull)
        .unwrap();
    let tables: Vec<_> = drain(&mut replica, 1_100)
        .into_iter()
        .filter_map(|t| match t.frame {
            Frame::Table(records) => Some(records.len()),
            _ => None,
        })
        .collect();
    assert_eq!(tables, [1]);
}

#[test]
fn a_digest_is_answered_with_what_the_peer_lacks_or_holds_older() {
    let mut replica = replica();
    replica
        .handle_frame(
            MonoTime(0),
            "b",
            Frame::Table(vec![
                record("c", 1, 4, calls(1)),
                record("d", 2, 1, calls(1)),
            ]),
        )
        .unwrap();
    let digest = vec![
        DigestEntry {
            node_id: "a".into(),
            version: replica.version(),
        },
        DigestEntry {
            node_id: "c".into(),
            version: Version::new(1, 3),
        },
        DigestEntry {
            node_id: "d".into(),
            version: Version::new(2, 9),
        },
    ];
    replica
        .handle_frame(MonoTime(10), "b", Frame::Digest(digest))
        .unwrap();
    let answer = drain(&mut replica, 10);
    let [
        Transmit {
            frame: Frame::Table(records),
            ..
        },
    ] = &answer[..]
    else {
        panic!("{answer:?}");
    };
    let sent: Vec<_> = records.iter().map(|r| r.node_id.as_str()).collect();
    assert_eq!(sent, ["c"]);
}

#[test]
fn a_license_nobody_asked_for_is_dropped() {
    let mut replica = replica();
    replica
        .handle_frame(
            MonoTime(0),
            "b",
            Frame::License {
                armored: b"x".to_vec(),
            },
        )
        .unwrap();
    assert_eq!(events(&mut replica), []);
    assert_eq!(replica.stats().licenses_unsolicited, 1);
}

#[test]
fn a_higher_serial_advertised_by_a_peer_is_fetched_once() {
    let mut replica = replica();
    let mut b = record("b", 1, 1, calls(0));
    b.license_serial = 3;
    replica
        .handle_frame(MonoTime(0), "b", Frame::Record(b.clone()))
        .unwrap();
    let asks = drain(&mut replica, 0);
    assert_eq!(
        asks,
        [Transmit {
            to: Destination::Peer("b".into()),
            kind: TransmitKind::Stream,
            frame: Frame::LicensePull { serial: 3 },
        }]
    );
    assert!(events(&mut replica).contains(&Event::LicenseAdvertised {
        node_id: "b".into(),
        serial: 3
    }));
    replica
        .handle_frame(
            MonoTime(50),
            "b",
            Frame::License {
                armored: b"doc".to_vec(),
            },
        )
        .unwrap();
    assert_eq!(
        events(&mut replica),
        [Event::LicenseOffered {
            from: "b".into(),
            armored: b"doc".to_vec()
        }]
    );
    // The agent refused it (no set_license): not asked again on this connection.
    b.seq = 2;
    replica
        .handle_frame(MonoTime(60), "b", Frame::Record(b))
        .unwrap();
    replica.handle_timeout(MonoTime(60_000));
    assert!(
        drain(&mut replica, 60_000)
            .iter()
            .all(|t| !matches!(t.frame, Frame::LicensePull { .. }))
    );
}

#[test]
fn a_license_pull_is_answered_only_by_a_holder_of_that_serial() {
    let mut replica = replica();
    replica
        .handle_frame(MonoTime(0), "b", Frame::LicensePull { serial: 1 })
        .unwrap();
    assert!(drain(&mut replica, 0).is_empty());
    replica
        .set_license(MonoTime(0), 2, b"doc".to_vec())
        .unwrap();
    drain(&mut replica, 0);
    replica
        .handle_frame(MonoTime(10), "b", Frame::LicensePull { serial: 2 })
        .unwrap();
    assert_eq!(
        drain(&mut replica, 10)
            .into_iter()
            .map(|t| t.frame)
            .collect::<Vec<_>>(),
        [Frame::License {
            armored: b"doc".to_vec()
        }]
    );
    assert_eq!(
        replica.set_license(MonoTime(10), 3, vec![0; LICENSE_BYTES_MAX + 1]),
        Err(LicenseError::TooLong {
            len: LICENSE_BYTES_MAX + 1
        })
    );
}

#[test]
fn the_table_holds_at_most_nodes_max() {
    let mut replica = replica();
    for chunk in 0..3 {
        let records = (0..512)
            .map(|i| record(&format!("n{chunk}-{i}"), 1, 1, calls(1)))
            .collect();
        replica
            .handle_frame(MonoTime(0), "b", Frame::Table(records))
            .unwrap();
    }
    assert_eq!(replica.nodes(MonoTime(0)).len(), NODES_MAX);
    assert_eq!(
        replica.stats().records_table_full,
        3 * 512 - (NODES_MAX as u64 - 1)
    );
    assert!(replica.events.len() <= EVENTS_MAX);
}

#[test]
fn time_going_backwards_is_read_as_the_latest_now() {
    let mut replica = replica();
    replica
        .handle_frame(
            MonoTime(5_000),
            "b",
            Frame::Record(record("b", 1, 1, calls(1))),
        )
        .unwrap();
    replica.handle_timeout(MonoTime(1_000));
    assert_eq!(replica.node("b", MonoTime(0)).unwrap().age_ms, 0);
    assert!(replica.poll_timeout().unwrap() >= MonoTime(5_000));
}

#[test]
fn bad_peer_ids_and_invalid_frames_are_refused() {
    let mut replica = replica();
    assert!(matches!(
        replica.handle_frame(MonoTime(0), "", Frame::Pull),
        Err(HandleError::InvalidPeerId(RecordError::NodeIdEmpty))
    ));
    assert!(matches!(
        replica.peer_connected(MonoTime(0), "a b"),
        Err(HandleError::InvalidPeerId(RecordError::NodeIdByte))
    ));
    let bad = Frame::Heartbeat(Heartbeat {
        incarnation: 1,
        seq: 1,
        changed_seq: 2,
    });
    assert_eq!(
        replica
            .handle_frame(MonoTime(0), "b", bad)
            .map_err(|e| e.reason()),
        Err("heartbeat_from_the_future")
    );
    assert_eq!(replica.stats().frames_refused, 2);
}

// ---------------------------------------------------------------------------------------
// Properties over random inputs
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
// A test input, built and consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Input {
    Advance(u64),
    Usage(u64),
    Frame(usize, Frame),
    Connect(usize),
    Disconnect(usize),
    Leave,
}

const PEERS: [&str; 3] = ["b", "c", "d"];
const NODES: [&str; 4] = ["a", "b", "c", "d"];

fn arb_record() -> impl Strategy<Value = Record> {
    (
        0..NODES.len(),
        0..3u64,
        0..6u64,
        0..5u64,
        any::<bool>(),
        0..3u64,
    )
        .prop_map(|(node, incarnation, seq, calls_, left, serial)| Record {
            node_id: NODES[node].into(),
            incarnation,
            seq,
            flags: if left { Flags::LEFT } else { Flags::EMPTY },
            address: String::new(),
            license_serial: serial,
            usage: calls(calls_),
            aor_seq: 0,
            wall_time: WallTime::from_unix_ms(calls_),
        })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_record().prop_map(Frame::Record),
        (0..3u64, 0..8u64, 0..8u64).prop_map(|(incarnation, seq, changed)| {
            Frame::Heartbeat(Heartbeat {
                incarnation,
                seq,
                changed_seq: changed.min(seq),
            })
        }),
        Just(Frame::PullRecord),
        Just(Frame::Pull),
        proptest::collection::vec(arb_record(), 0..6).prop_map(Frame::Table),
        proptest::collection::vec(arb_record(), 0..6).prop_map(|records| {
            Frame::Digest(
                records
                    .into_iter()
                    .map(|r| DigestEntry {
                        node_id: r.node_id.clone(),
                        version: r.version(),
                    })
                    .collect(),
            )
        }),
        (0..3u64).prop_map(|serial| Frame::LicensePull { serial }),
        Just(Frame::License {
            armored: b"doc".to_vec()
        }),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (0..4_000u64).prop_map(Input::Advance),
        2 => (0..10u64).prop_map(Input::Usage),
        6 => (0..PEERS.len(), arb_frame()).prop_map(|(peer, frame)| Input::Frame(peer, frame)),
        1 => (0..PEERS.len()).prop_map(Input::Connect),
        1 => (0..PEERS.len()).prop_map(Input::Disconnect),
        1 => Just(Input::Leave),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever arrives: no panic; the timer always moves forward; the aggregate is the sum
    /// of the counted nodes; emitted frames are valid and datagrams fit; own version never
    /// goes back.
    #[test]
    fn any_input_sequence_keeps_the_invariants(inputs in proptest::collection::vec(arb_input(), 1..80)) {
        let mut replica = Replica::new(config(), "a", 1, MonoTime(0)).unwrap();
        let mut now = 0;
        let mut version = replica.version();
        for input in inputs {
            match input {
                Input::Advance(ms) => {
                    now += ms;
                    replica.handle_timeout(MonoTime(now));
                    if let Some(due) = replica.poll_timeout() {
                        prop_assert!(due > MonoTime(now), "timer at {due:?} after handling {now}");
                    }
                }
                Input::Usage(n) => replica.set_local_usage(MonoTime(now), calls(n)),
                Input::Frame(peer, frame) => {
                    let is_forged = matches!(&frame, Frame::Record(r) if r.node_id != PEERS[peer]);
                    let result = replica.handle_frame(MonoTime(now), PEERS[peer], frame);
                    prop_assert_eq!(result.is_err(), is_forged);
                }
                Input::Connect(peer) => replica.peer_connected(MonoTime(now), PEERS[peer]).unwrap(),
                Input::Disconnect(peer) => replica.peer_disconnected(MonoTime(now), PEERS[peer]),
                Input::Leave => replica.leave(MonoTime(now)),
            }
            while let Some(transmit) = replica.poll_transmit(MonoTime(now)) {
                let bytes = crate::encode(&transmit.frame);
                prop_assert_eq!(crate::decode(&bytes), Ok(transmit.frame.clone()));
                if transmit.kind == TransmitKind::Datagram {
                    prop_assert!(bytes.len() <= crate::DATAGRAM_BYTES_MAX);
                }
            }
            while replica.poll_event().is_some() {}
            prop_assert!(replica.version() >= version);
            version = replica.version();
            let aggregate = replica.aggregate(MonoTime(now));
            let counted: u64 = replica
                .nodes(MonoTime(now))
                .iter()
                .filter(|view| view.counted)
                .map(|view| view.usage.calls)
                .sum();
            prop_assert_eq!(aggregate.calls, counted);
        }
    }
}

#[test]
fn a_lone_node_counts_its_own_aors_while_it_waits_for_the_key() {
    let mut replica = Replica::new(config(), "a", 1, MonoTime(0)).unwrap();
    let key = crate::AorKey {
        generation: 1,
        created_at_ms: 5,
        key: [1; 32],
    };
    replica.set_aor_key(MonoTime(0), key);
    replica.aor_add(MonoTime(1), 11);
    replica.aor_add(MonoTime(1), 12);
    assert!(!replica.aor_set_published());
    assert_eq!(
        replica
            .aggregate(MonoTime(1))
            .registered_subscribers_distinct,
        2
    );
    // A peer connects: nothing of this node's set goes out before the key is agreed.
    replica.peer_connected(MonoTime(2), "b").unwrap();
    let sent = drain(&mut replica, 2);
    assert!(
        sent.iter().all(|t| !matches!(
            t.frame,
            Frame::AorDelta(_) | Frame::AorSummary(_) | Frame::AorRanges(_)
        )),
        "{sent:?}"
    );
    // The peer sends the same key: agreed, published, still counted once.
    replica
        .handle_frame(MonoTime(3), "b", Frame::AorKey(key))
        .unwrap();
    assert!(replica.aor_set_published());
    let sent = drain(&mut replica, 3);
    assert!(sent.iter().any(|t| matches!(t.frame, Frame::AorSummary(_))));
    assert_eq!(
        replica
            .aggregate(MonoTime(3))
            .registered_subscribers_distinct,
        2
    );
}

/// Frame version 2: AoR changes ride in the next push. With the node's counts changed too,
/// the push is the record with the changes; with only the AoR set changed, a heartbeat with
/// them. A receiver that missed the earlier push cannot apply the heartbeat: it pulls the
/// record, and the record's `aor_seq` makes its copy pull the missing changes.
#[test]
fn aor_changes_ride_in_the_push_as_a_record_or_as_a_heartbeat() {
    let connect = |replica: &mut Replica, peer: &str| {
        replica.peer_connected(MonoTime(0), peer).unwrap();
    };
    let mut a = Replica::new(config(), "a", 1, MonoTime(0)).unwrap();
    let mut b = Replica::new(config(), "b", 1, MonoTime(0)).unwrap();
    connect(&mut a, "b");
    connect(&mut b, "a");
    let deliver = |from: &mut Replica, to: &mut Replica, now: u64| {
        for transmit in drain(from, now) {
            to.handle_frame(MonoTime(now), from.node_id(), transmit.frame)
                .unwrap();
        }
    };
    for _ in 0..3 {
        deliver(&mut a, &mut b, 0);
        deliver(&mut b, &mut a, 0);
    }
    assert!(b.aor_copy_synced("a"));
    // Counts and set change together: one datagram, the record with the change.
    a.aor_add(MonoTime(1_000), 11);
    a.set_local_usage(MonoTime(1_000), calls(1));
    let sent = drain(&mut a, 1_000);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].kind, TransmitKind::Datagram);
    let Frame::RecordAors(push) = &sent[0].frame else {
        panic!("{sent:?}")
    };
    assert_eq!(
        (push.record.aor_seq, push.adds.clone()),
        (1, vec![11u64.to_le_bytes()])
    );
    // Only the set changes (an add and a remove): a heartbeat with the changes. This one is
    // lost on its way to b.
    a.aor_add(MonoTime(2_000), 12);
    a.aor_remove(MonoTime(2_000), 11);
    assert!(
        drain(&mut a, 2_000).is_empty(),
        "changes wait for the next emission"
    );
    assert_eq!(a.poll_timeout(), Some(MonoTime(2_000)));
    a.handle_timeout(MonoTime(2_000));
    let sent = drain(&mut a, 2_000);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let Frame::AorHeartbeat(lost) = &sent[0].frame else {
        panic!("{sent:?}")
    };
    assert_eq!((lost.aor_seq, lost.changed_seq), (2, 1));
    // The next one reaches b: the change waits in the buffer, b pulls the record (its
    // content is not current) and the missing changes.
    a.aor_add(MonoTime(3_000), 13);
    a.handle_timeout(MonoTime(3_000));
    let sent = drain(&mut a, 3_000);
    for transmit in sent {
        b.handle_frame(MonoTime(3_000), "a", transmit.frame)
            .unwrap();
    }
    let asked = drain(&mut b, 3_000);
    let names: Vec<&str> = asked.iter().map(|t| t.frame.name()).collect();
    assert!(names.contains(&"pull_record"), "{names:?}");
    assert!(names.contains(&"aor_pull"), "{names:?}");
    for transmit in asked {
        a.handle_frame(MonoTime(3_001), "b", transmit.frame)
            .unwrap();
    }
    deliver(&mut a, &mut b, 3_002);
    let copy: Vec<u64> = {
        let sets = b.aor_sets();
        let slot = sets.slot("a").unwrap();
        sets.all_members(slot)
    };
    let mut want = vec![12, 13];
    want.sort_unstable();
    assert_eq!(copy, want);
    assert!(b.aor_copy_synced("a"));
    assert_eq!(b.records().find(|r| r.node_id == "a").unwrap().aor_seq, 3);
}

/// The peer's key can reach the replica before the IO layer's own key does (the driver
/// handles peers' frames first). The set is then not published: the IO layer re-keys and
/// says so, and the hold its own key starts ends. (It read "published" before, so the agent
/// never re-keyed, and the hold never ended: the node's AoRs were never counted anywhere
/// else; `tests/cluster_aors.rs` caught it under load.)
#[test]
fn a_peers_key_before_the_own_key_still_ends_in_a_published_set() {
    let key = |created_at_ms, byte| crate::AorKey {
        generation: 1,
        created_at_ms,
        key: [byte; 32],
    };
    let (cluster_key, own_key) = (key(5, 1), key(9, 2));
    let mut replica = Replica::new(config(), "c", 1, MonoTime(0)).unwrap();
    replica.peer_connected(MonoTime(0), "a").unwrap();
    replica
        .handle_frame(MonoTime(1), "a", Frame::AorKey(cluster_key))
        .unwrap();
    assert_eq!(replica.aor_key(), Some(cluster_key));
    assert!(!replica.aor_set_published(), "nothing re-keyed yet");
    // The IO layer's own key arrives late, its set under it; then it re-keys to the
    // cluster's and says so.
    replica.set_aor_key(MonoTime(2), own_key);
    replica.aor_add(MonoTime(2), 11);
    assert_eq!(replica.aor_key(), Some(cluster_key));
    assert!(!replica.aor_set_published());
    replica.aor_remove(MonoTime(3), 11);
    replica.aor_add(MonoTime(3), 21);
    replica.aor_keyed(MonoTime(3), cluster_key);
    assert!(replica.aor_set_published());
    let sent = drain(&mut replica, 3);
    assert!(
        sent.iter().any(|t| matches!(t.frame, Frame::AorSummary(_))),
        "{sent:?}"
    );
}

/// Every frame of `from` handed to `to` (as the peer it is), at `now`.
fn deliver(from: &mut Replica, to: &mut Replica, now: u64) {
    let sender = from.node_id().to_owned();
    for transmit in drain(from, now) {
        let frame = crate::decode(&crate::encode(&transmit.frame)).unwrap();
        to.handle_frame(MonoTime(now), &sender, frame).unwrap();
    }
}

fn wall_stamps(transmits: &[Transmit]) -> Vec<u64> {
    transmits
        .iter()
        .filter_map(|transmit| match &transmit.frame {
            Frame::Record(record) => Some(record.wall_time.unix_ms()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_record_carries_the_wall_clock_and_is_restamped_every_stamp_interval() {
    const WALL: u64 = 1_900_000_000_000;
    let mut replica = replica();
    // Without a wall clock nothing is stamped or scheduled for it.
    assert_eq!(replica.restamp_due(), None);
    replica.set_wall_clock(MonoTime(1_000), WallTime::from_unix_ms(WALL));
    assert_eq!(wall_stamps(&drain(&mut replica, 1_000)), [WALL]);
    // Quiet: the next stamp is due one interval later, on the monotonic clock (no new
    // reading in between), whatever the heartbeats do.
    let due = 1_000 + crate::WALL_STAMP_INTERVAL_MS;
    let mut now = 1_000;
    let mut stamps = Vec::new();
    while stamps.is_empty() {
        now = replica.poll_timeout().unwrap().ms();
        assert!(now <= due, "{now}");
        replica.handle_timeout(MonoTime(now));
        stamps = wall_stamps(&drain(&mut replica, now));
    }
    assert_eq!((now, stamps), (due, vec![WALL + due - 1_000]));
    // A clock stepped back shows in the next stamp.
    replica.set_wall_clock(MonoTime(due + 1), WallTime::from_unix_ms(WALL - 86_400_000));
    let next = due + crate::WALL_STAMP_INTERVAL_MS;
    replica.handle_timeout(MonoTime(next));
    assert_eq!(
        wall_stamps(&drain(&mut replica, next)),
        [WALL - 86_400_000 + next - due - 1]
    );
}

#[test]
fn peers_clocks_are_estimated_from_their_stamps_and_a_clock_set_back_is_skewed() {
    const WALL: u64 = 1_900_000_000_000;
    const BACK_MS: u64 = 270 * 86_400_000;
    let mut a = Replica::new(config(), "a", 1, MonoTime(0)).unwrap();
    let mut b = Replica::new(config(), "b", 1, MonoTime(0)).unwrap();
    a.peer_connected(MonoTime(0), "b").unwrap();
    b.peer_connected(MonoTime(0), "a").unwrap();
    a.set_wall_clock(MonoTime(0), WallTime::from_unix_ms(WALL));
    b.set_wall_clock(MonoTime(0), WallTime::from_unix_ms(WALL - BACK_MS));
    for now in [0, 10, 20] {
        deliver(&mut a, &mut b, now);
        deliver(&mut b, &mut a, now);
    }
    // 5 s later with no new stamp: the estimates ran on with the monotonic clock.
    let now = 5_000;
    let view = a.node("b", MonoTime(now)).unwrap();
    assert_eq!(
        view.wall_time,
        Some(WallTime::from_unix_ms(WALL - BACK_MS + now))
    );
    assert_eq!(
        a.node("a", MonoTime(now)).unwrap().wall_time,
        Some(WallTime::from_unix_ms(WALL + now))
    );
    let tolerance_ms = 300_000;
    let at_b = b.peers_time(MonoTime(now)).unwrap();
    assert!(at_b.skewed(tolerance_ms), "{at_b:?}");
    assert!(at_b.offset_ms > (BACK_MS - 1_000) as i64, "{at_b:?}");
    let at_a = a.peers_time(MonoTime(now)).unwrap();
    assert_eq!(at_a.offset_ms, 0, "the honest node keeps its own time");
    assert!(!at_a.skewed(tolerance_ms));
    // A node that is no longer live does not vote.
    let later = 60_000;
    assert_eq!(a.peers_time(MonoTime(later)), None);
}
