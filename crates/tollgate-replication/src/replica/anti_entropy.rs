//! Anti-entropy: what datagrams lost is repaired over streams. Every
//! `anti_entropy_interval_ms` (jittered) this node sends a few peers a digest of the versions
//! it holds (or its whole table); a peer answers with the records the digest lacks. A joiner
//! pulls one peer's table once ([`PullState`]).

use std::collections::BTreeMap;

use super::{
    ANSWER_INTERVAL_MIN_MS, Destination, NodeState, Replica, Transmit, TransmitKind, state_at,
};
use crate::config::AntiEntropy;
use crate::frame::{DigestEntry, Frame};
use crate::record::{Record, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PullState {
    /// No table received yet: pull one from the next peer.
    Needed,
    Waiting {
        peer: String,
        since: u64,
    },
    Done,
}

impl Replica {
    pub(super) fn anti_entropy(&mut self, now: u64) {
        let interval = self.config.anti_entropy_interval_ms;
        let jitter = interval / 5;
        self.next_anti_entropy_at = now + interval - interval / 10 + self.rng.below(jitter + 1);
        if self.peers.is_empty() {
            return;
        }
        let mut peers: Vec<String> = self.peers.keys().cloned().collect();
        let chosen = self.config.anti_entropy_fanout.min(peers.len());
        for i in 0..chosen {
            let j = i + self.rng.below((peers.len() - i) as u64) as usize;
            peers.swap(i, j);
        }
        self.aor_anti_entropy(now);
        let frame = match self.config.anti_entropy {
            AntiEntropy::Digest => Frame::Digest(self.digest(now)),
            AntiEntropy::Table => Frame::Table(self.relayable(now).cloned().collect()),
        };
        for peer in peers.into_iter().take(chosen) {
            self.enqueue(Transmit {
                to: Destination::Peer(peer),
                kind: TransmitKind::Stream,
                frame: frame.clone(),
            });
        }
    }

    /// Records this node passes on: its own, and every live or left node's. Never an expired
    /// one (that would bring it back where it is already gone), nor a suspect one: silent
    /// for `suspect_after_ms` here, it is no evidence of life, and its version may be a seq
    /// ahead of a peer's that went silent in the same heartbeat round; relaying it would
    /// restart liveness clocks where it is about to expire. At most [`NODES_MAX`].
    pub(super) fn relayable(&self, now: u64) -> impl Iterator<Item = &Record> {
        std::iter::once(&self.own).chain(
            self.entries
                .values()
                .filter(move |entry| {
                    matches!(
                        state_at(entry, now, &self.config),
                        NodeState::Live | NodeState::Left
                    )
                })
                .map(|entry| &entry.record),
        )
    }

    /// The versions a digest names: every record held but expired ones (a suspect node's
    /// too, so that a peer a heartbeat round ahead does not send it back).
    pub(super) fn digest(&self, now: u64) -> Vec<DigestEntry> {
        std::iter::once(&self.own)
            .chain(
                self.entries
                    .values()
                    .filter(|entry| state_at(entry, now, &self.config) != NodeState::Expired)
                    .map(|entry| &entry.record),
            )
            .map(|record| DigestEntry {
                node_id: record.node_id.clone(),
                version: record.version(),
            })
            .collect()
    }

    pub(super) fn answer_digest(&mut self, now: u64, peer: &str, entries: Vec<DigestEntry>) {
        if !self.allow(peer, now, ANSWER_INTERVAL_MIN_MS, |peer| {
            &mut peer.last_table_answer_at
        }) {
            return;
        }
        let theirs: BTreeMap<String, Version> = entries
            .into_iter()
            .map(|entry| (entry.node_id, entry.version))
            .collect();
        let records: Vec<Record> = self
            .relayable(now)
            .filter(|record| {
                theirs
                    .get(&record.node_id)
                    .is_none_or(|version| self.worth_relaying(record, *version))
            })
            .cloned()
            .collect();
        if !records.is_empty() {
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::Table(records),
            });
        }
    }

    /// Whether a peer that holds `theirs` of `record`'s node needs `record`: a newer
    /// incarnation, content it lacks, or a seq two or more ahead: that node's heartbeats do
    /// not reach the peer (a partial mesh, losses), and relaying keeps it live there. A seq
    /// one ahead with the same content is the heartbeat round in progress: nothing to send.
    pub(super) fn worth_relaying(&self, record: &Record, theirs: Version) -> bool {
        if theirs >= record.version() {
            return false;
        }
        if theirs.incarnation < record.incarnation {
            return true;
        }
        let content_since = if record.node_id == self.own.node_id {
            self.own_changed_seq
        } else {
            self.entries
                .get(&record.node_id)
                .map_or(record.seq, |entry| entry.content_since)
        };
        theirs.seq < content_since || record.seq - theirs.seq >= 2
    }

    pub(super) fn maybe_pull(&mut self, now: u64) {
        if self.left || self.pull != PullState::Needed || self.peers.is_empty() {
            return;
        }
        let index = self.rng.below(self.peers.len() as u64) as usize;
        let Some(peer) = self.peers.keys().nth(index).cloned() else {
            return;
        };
        self.enqueue(Transmit {
            to: Destination::Peer(peer.clone()),
            kind: TransmitKind::Stream,
            frame: Frame::Pull,
        });
        self.pull = PullState::Waiting { peer, since: now };
    }

    /// A peer's table: every record merged; a joiner's pull from that peer is done.
    pub(super) fn handle_table(&mut self, now: u64, peer: &str, records: Vec<Record>) {
        for record in records {
            self.merge_record(now, record, peer);
        }
        if matches!(&self.pull, PullState::Waiting { peer: asked, .. } if asked == peer) {
            self.pull = PullState::Done;
        }
    }

    /// A joiner's pull: every relayable record, at most once per [`ANSWER_INTERVAL_MIN_MS`].
    pub(super) fn answer_pull(&mut self, now: u64, peer: &str) {
        if self.allow(peer, now, ANSWER_INTERVAL_MIN_MS, |state| {
            &mut state.last_table_answer_at
        }) {
            let records = self.relayable(now).cloned().collect();
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::Table(records),
            });
        }
    }
}
