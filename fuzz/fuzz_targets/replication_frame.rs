//! `tollgate_replication::decode` on arbitrary bytes, and every frame it yields fed to a
//! replica.
//!
//! Asserts, beyond "never panics":
//! - a decoded frame is valid, re-encodes to at most as many bytes as it came in, decodes
//!   back equal, and its encoding is a fixed point (decode → encode → decode is stable);
//! - a replica fed the frame — from an unrelated authenticated peer, and for a record also
//!   from its owner — refuses exactly the direct push of another node's record, and keeps
//!   its invariants: every frame it emits encodes and decodes back equal, datagrams fit
//!   `DATAGRAM_BYTES_MAX`, the aggregate's calls are the sum over the nodes it counts, the
//!   table stays within `NODES_MAX`, and its timer moves forward;
//! - the registered-AoR union keeps its invariants (`AorSets::check`: every holder's digest
//!   equals its members', the distinct count equals the fingerprints a counted node holds)
//!   and never counts more than the fingerprints held; a `RecordAors` push (frame version
//!   2) from its owner that follows the copy's version (synced first by a summary of an
//!   empty set) leaves the copy holding its adds and none of its removes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_replication::{
    AorSummary, Config, DATAGRAM_BYTES_MAX, Frame, MonoTime, NODES_MAX, Replica, TransmitKind,
    decode, encode,
};

const SELF_ID: &str = "fuzz-self";
const PEER_ID: &str = "fuzz-peer";

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = decode(data) else {
        return;
    };
    assert_eq!(frame.validate(), Ok(()));
    let bytes = encode(&frame);
    assert!(bytes.len() <= data.len(), "re-encoding grew the frame");
    let again = decode(&bytes).expect("a re-encoded frame decodes");
    assert_eq!(again, frame);
    assert_eq!(encode(&again), bytes);

    let config = Config {
        rng_seed: 1,
        ..Config::default()
    };
    let mut replica = Replica::new(config, SELF_ID, 3, MonoTime(1_000)).expect("valid config");
    replica
        .peer_connected(MonoTime(1_000), PEER_ID)
        .expect("valid peer id");
    check(&mut replica, MonoTime(1_000));

    // A push of the peer's AoR changes that follows an empty set the copy is synced at.
    let follows = match &frame {
        Frame::RecordAors(push) if push.record.node_id == PEER_ID && push.record.aor_seq > 0 => {
            let summary = AorSummary {
                incarnation: push.record.incarnation,
                seq: push.record.aor_seq - 1,
                count: 0,
                hash: 0,
            };
            replica
                .handle_frame(MonoTime(1_000), PEER_ID, Frame::AorSummary(summary))
                .expect("a summary is accepted");
            assert!(replica.aor_copy_synced(PEER_ID));
            Some(push.clone())
        }
        _ => None,
    };
    let from_peer = replica.handle_frame(MonoTime(1_000), PEER_ID, frame.clone());
    if let Some(push) = follows {
        let sets = replica.aor_sets();
        let slot = sets.slot(PEER_ID).expect("the peer's copy has a slot");
        for add in &push.adds {
            if !push.removes.contains(add) {
                assert!(sets.contains(slot, u64::from_le_bytes(*add)));
            }
        }
        for remove in &push.removes {
            assert!(!sets.contains(slot, u64::from_le_bytes(*remove)));
        }
    }
    let pushed = match &frame {
        Frame::Record(record) => Some(record),
        Frame::RecordAors(push) => Some(&push.record),
        _ => None,
    };
    match pushed {
        Some(record) => {
            assert_eq!(from_peer.is_err(), record.node_id != PEER_ID);
            if record.node_id != SELF_ID && record.node_id != PEER_ID {
                replica
                    .handle_frame(MonoTime(1_000), &record.node_id, frame.clone())
                    .expect("a record pushed by its owner is accepted");
            }
        }
        None => assert_eq!(from_peer, Ok(())),
    }
    check(&mut replica, MonoTime(1_000));
    for now in [4_000, 12_000, 100_000].map(MonoTime) {
        replica.handle_timeout(now);
        if let Some(due) = replica.poll_timeout() {
            assert!(due > now, "timer at {due:?} after handling {now:?}");
        }
        check(&mut replica, now);
    }
});

fn check(replica: &mut Replica, now: MonoTime) {
    while let Some(transmit) = replica.poll_transmit(now) {
        let bytes = encode(&transmit.frame);
        assert_eq!(decode(&bytes).as_ref(), Ok(&transmit.frame));
        if transmit.kind == TransmitKind::Datagram {
            assert!(bytes.len() <= DATAGRAM_BYTES_MAX);
        }
    }
    while replica.poll_event().is_some() {}
    let nodes = replica.nodes(now);
    assert!(nodes.len() <= NODES_MAX);
    let counted = nodes
        .iter()
        .filter(|view| view.counted)
        .fold(0u64, |sum, view| sum.saturating_add(view.usage.calls));
    assert_eq!(replica.aggregate(now).calls, counted);
    let sets = replica.aor_sets();
    assert_eq!(sets.check(), Ok(()));
    assert!(replica.aggregate(now).registered_subscribers_distinct <= sets.len() as u64);
}
