//! The merge rule is a join: idempotent, commutative, associative — over random record
//! sets with colliding versions (even equal versions with different content, which only a
//! duplicate node or a forger produces). And a replica's table acts like the model
//! ([`RecordSet`]) whatever the order, duplication and grouping of the frames.

use proptest::prelude::*;
use tollgate_replication::MonoTime;
use tollgate_replication::{Config, Flags, Frame, NodeUsage, Record, RecordSet, Replica, merge};

const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];

fn arb_record() -> impl Strategy<Value = Record> {
    (
        0..NODES.len(),
        0..3u64,
        0..4u64,
        0..3u64,
        any::<bool>(),
        0..2u64,
    )
        .prop_map(|(node, incarnation, seq, calls, left, serial)| Record {
            node_id: NODES[node].into(),
            incarnation,
            seq,
            flags: if left { Flags::LEFT } else { Flags::EMPTY },
            address: format!("10.0.0.{node}:7172"),
            license_serial: serial,
            usage: NodeUsage {
                calls,
                ..NodeUsage::default()
            },
            aor_seq: 0,
            wall_time: tollgate_replication::WallTime::from_unix_ms(calls * 1000),
        })
}

fn arb_set() -> impl Strategy<Value = RecordSet> {
    proptest::collection::vec(arb_record(), 0..12).prop_map(RecordSet::from_iter)
}

fn joined(a: &RecordSet, b: &RecordSet) -> RecordSet {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    // Failures print their minimal case; nothing is written next to the sources.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn merge_is_idempotent(a in arb_set(), b in arb_set()) {
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert_eq!(joined(&ab, &b), ab);
    }

    #[test]
    fn merge_is_commutative(a in arb_set(), b in arb_set()) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in arb_set(), b in arb_set(), c in arb_set()) {
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
    }

    #[test]
    fn record_merge_is_a_join(x in arb_record(), y in arb_record(), z in arb_record()) {
        // Records of one node (merge is per node id).
        let (mut y, mut z) = (y, z);
        y.node_id = x.node_id.clone();
        z.node_id = x.node_id.clone();
        y.address = x.address.clone();
        prop_assert_eq!(merge(x.clone(), x.clone()), x.clone());
        prop_assert_eq!(merge(x.clone(), y.clone()), merge(y.clone(), x.clone()));
        prop_assert_eq!(
            merge(merge(x.clone(), y.clone()), z.clone()),
            merge(x.clone(), merge(y.clone(), z.clone()))
        );
        // The winner is one of the two, never older than either.
        let winner = merge(x.clone(), y.clone());
        prop_assert!(winner == x || winner == y);
        prop_assert!(winner.version() >= x.version().max(y.version()));
    }

    /// Frames reordered, duplicated, regrouped and relayed by different peers: the replica's
    /// table ends equal to the model.
    #[test]
    fn a_replica_table_acts_like_the_model(
        records in proptest::collection::vec(arb_record(), 1..30),
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..60),
        groups in proptest::collection::vec(1..5usize, 1..20),
    ) {
        let model: RecordSet = records.iter().cloned().collect();
        // Deliver every record at least once, then random duplicates, in random groups.
        let mut deliveries: Vec<Record> = records.clone();
        deliveries.extend(order.iter().map(|index| records[index.index(records.len())].clone()));
        let mut rotated = deliveries.clone();
        rotated.rotate_left(order[0].index(deliveries.len()));
        for (round, deliveries) in [deliveries, rotated].into_iter().enumerate() {
            let mut replica = Replica::new(Config::default(), "local", 1, MonoTime(0)).unwrap();
            let mut rest = &deliveries[..];
            let mut group = groups.iter().cycle();
            let mut peer = 0;
            while !rest.is_empty() {
                let take = (*group.next().unwrap()).min(rest.len());
                let (now, later) = rest.split_at(take);
                let relay = ["p1", "p2", "p3"][peer % 3];
                peer += 1;
                replica.handle_frame(MonoTime(0), relay, Frame::Table(now.to_vec())).unwrap();
                rest = later;
            }
            let table: RecordSet = replica.records().skip(1).cloned().collect();
            prop_assert_eq!(&table, &model, "round {}", round);
        }
    }
}
