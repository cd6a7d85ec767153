//! Emission of this node's own record: a push to every peer when its content changes (at
//! most every `push_interval_ms`), and otherwise heartbeats, on a schedule per peer, where
//! one node of each pair leads ([`leads_pair`]) and the other answers.

use super::{Destination, Event, Peer, Replica, Transmit, TransmitKind};
use crate::frame::{Frame, Heartbeat};
use crate::record::Flags;
use tollgate_events::WallTime;

impl Replica {
    pub(super) fn flags(&self) -> Flags {
        if self.left { Flags::LEFT } else { Flags::EMPTY }
    }

    /// The current content differs from the record last emitted.
    pub(super) fn is_dirty(&self) -> bool {
        self.force_record
            || self.own.usage != self.usage
            || self.own.license_serial != self.license_serial
            || self.own.flags != self.flags()
            || self.own.aor_seq != self.aor.seq
            || (!self.left && self.aor.has_pending())
            || self.restamp_due().is_some_and(|at| at <= self.now)
    }

    /// When this node's record must carry a fresh wall-clock stamp: at once when it has
    /// none yet, else [`crate::WALL_STAMP_INTERVAL_MS`] after the last; `None` without a wall
    /// clock.
    pub(super) fn restamp_due(&self) -> Option<u64> {
        self.wall?;
        Some(if self.own.wall_time == WallTime::ZERO {
            0
        } else {
            self.own_stamped_at
                .saturating_add(crate::clock::WALL_STAMP_INTERVAL_MS)
        })
    }

    /// When the next emission to every peer is due: a push of changed content, or, with no
    /// peer at all, the interval's seq (so a node cut off from everyone comes back with a
    /// seq past its tombstones). Heartbeats have their own schedule, per peer.
    pub(super) fn emission_due(&self) -> Option<u64> {
        if self.left {
            return None;
        }
        if self.is_dirty() {
            return Some(
                self.last_push_at
                    .map_or(0, |at| at.saturating_add(self.config.push_interval_ms)),
            );
        }
        let idle = self.peers.is_empty().then(|| {
            self.last_emit_at
                .saturating_add(self.config.heartbeat_interval_ms)
        });
        [idle, self.restamp_due()].into_iter().flatten().min()
    }

    pub(super) fn maybe_emit(&mut self, now: u64) {
        if self.emission_due().is_some_and(|due| due <= now) {
            self.emit(now, TransmitKind::Datagram);
        }
    }

    /// One emission to every peer: seq grows; the whole record goes out if its content
    /// changed (with the AoR changes it names, if any), else a heartbeat. Every peer's
    /// heartbeat is then one interval away.
    pub(super) fn emit(&mut self, now: u64, kind: TransmitKind) {
        let next = self.own.version().next();
        let rolled = next.incarnation != self.own.incarnation;
        if rolled {
            self.push_event(Event::IncarnationChanged {
                incarnation: next.incarnation,
            });
        }
        let changed = rolled || self.is_dirty();
        // Content other than the AoR seq changed: an AoR-only change can go as a heartbeat.
        let base_changed = rolled
            || self.force_record
            || self.own.usage != self.usage
            || self.own.license_serial != self.license_serial
            || self.own.flags != self.flags();
        self.own.incarnation = next.incarnation;
        self.own.seq = next.seq;
        let mut aor_changes = Vec::new();
        if changed {
            aor_changes = self.take_aor_changes();
            self.own.aor_seq = self.aor.seq;
            if base_changed {
                self.own_base_changed_seq = next.seq;
            }
            self.own.flags = self.flags();
            self.own.usage = self.usage;
            self.own.license_serial = self.license_serial;
            if let Some(wall) = self.wall_at(now) {
                self.own.wall_time = wall;
                self.own_stamped_at = now;
            }
            self.own_changed_seq = next.seq;
            self.force_record = false;
            self.last_push_at = Some(now);
        }
        self.last_emit_at = now;
        self.stats.emissions += 1;
        debug_assert!(!self.is_dirty());
        if self.peers.is_empty() {
            return;
        }
        let (frame, kind) = if let Some(push) = self.aor_push(aor_changes, kind, base_changed) {
            push
        } else if changed {
            (Frame::Record(self.own.clone()), kind)
        } else {
            (
                Frame::Heartbeat(Heartbeat {
                    incarnation: next.incarnation,
                    seq: next.seq,
                    changed_seq: self.own_changed_seq,
                }),
                kind,
            )
        };
        self.enqueue(Transmit {
            to: Destination::AllPeers,
            kind,
            frame,
        });
        let peers: Vec<String> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.note_sent(now, &peer);
        }
    }

    /// A heartbeat to one peer. The peer must see this node's version advance: the current
    /// version if it was not sent it yet, else seq grows first. So seq grows about once per
    /// interval (a round through the peers), and every peer holds this node at one of two
    /// consecutive seqs: anti-entropy digests differ only where content or liveness does.
    /// Content not yet pushed waits for its push (at most `push_interval_ms`): a heartbeat
    /// names the record as last emitted. A seq that would roll the incarnation over goes out
    /// as a push to every peer instead.
    pub(super) fn heartbeat(&mut self, now: u64, peer: &str) {
        let current = self.own.version();
        let has_current = self
            .peers
            .get(peer)
            .is_some_and(|state| state.sent == Some(current));
        if has_current {
            let next = current.next();
            if next.incarnation != self.own.incarnation {
                self.emit(now, TransmitKind::Datagram);
                return;
            }
            self.own.seq = next.seq;
            self.last_emit_at = now;
            self.stats.emissions += 1;
        }
        self.enqueue(Transmit {
            to: Destination::Peer(peer.to_owned()),
            kind: TransmitKind::Datagram,
            frame: Frame::Heartbeat(Heartbeat {
                incarnation: self.own.incarnation,
                seq: self.own.seq,
                changed_seq: self.own_changed_seq,
            }),
        });
        self.note_sent(now, peer);
    }

    /// Heartbeats to every peer whose heartbeat is due: a leader's every interval (and its
    /// one retry), an answering node's when the leader fell silent.
    pub(super) fn send_due_heartbeats(&mut self, now: u64) {
        if self.left {
            return;
        }
        while let Some((due, peer)) = self.heartbeats.first().cloned()
            && due <= now
        {
            let scheduled = self
                .peers
                .get(&peer)
                .is_some_and(|state| state.leads && !state.awaiting_answer);
            self.heartbeat(now, &peer);
            if scheduled {
                self.set_awaiting_answer(&peer, true);
            }
        }
    }

    /// A frame just came from `peer`. QUIC acknowledges its packet on the next packet this
    /// node sends that peer, or in an ACK-only packet after the ACK delay (25 ms).
    ///
    /// In each pair one node leads ([`leads_pair`]): it sends a heartbeat every interval and
    /// answers nothing. The other answers the leader's frames with its own heartbeat, which
    /// carries the ACK, unless it sent the leader something less than a quarter interval
    /// ago; it sends one on its own only when it sent the leader nothing for 1.75 intervals
    /// (the leader's heartbeat and its retry were lost). Per pair and interval that is a
    /// heartbeat, the answer with the ACK, and one ACK-only packet, instead of two
    /// heartbeats and two ACK-only packets. A leader that gets no heartbeat back within half
    /// an interval (its heartbeat or the answer was lost, or the round trip is longer than
    /// that) sends one more, which is answered: a single lost datagram leaves a gap of 1.5
    /// intervals, not 2. Fixed roles cannot ping-pong, whatever the round trip.
    pub(super) fn heard_from(&mut self, now: u64, peer: &str, is_heartbeat: bool) {
        let Some(state) = self.peers.get(peer) else {
            return;
        };
        if state.leads {
            if state.awaiting_answer && is_heartbeat {
                self.set_awaiting_answer(peer, false);
            }
            return;
        }
        let quarter = self.config.heartbeat_interval_ms / 4;
        if !self.left && now >= state.last_sent_at.saturating_add(quarter) {
            self.heartbeat(now, peer);
        }
    }

    /// A new peer (or a reconnected one, whose state starts afresh). Its first heartbeat is
    /// scheduled as if it had just been sent this node's version.
    pub(super) fn add_peer(&mut self, now: u64, peer: &str) {
        let fresh = Peer {
            leads: leads_pair(&self.own.node_id, peer),
            last_sent_at: now,
            ..Peer::default()
        };
        if let Some(old) = self.peers.insert(peer.to_owned(), fresh) {
            self.heartbeats
                .remove(&(old.heartbeat_due, peer.to_owned()));
        }
        self.heartbeats.insert((0, peer.to_owned()));
        self.reschedule(peer);
    }

    /// `peer` was just sent this node's current version.
    pub(super) fn note_sent(&mut self, now: u64, peer: &str) {
        let version = self.own.version();
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.last_sent_at = now;
        state.sent = Some(version);
        state.awaiting_answer = false;
        self.reschedule(peer);
    }

    pub(super) fn set_awaiting_answer(&mut self, peer: &str, awaiting: bool) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.awaiting_answer = awaiting;
            self.reschedule(peer);
        }
    }

    /// Puts the peer's next heartbeat where its role says: a leader's one interval after its
    /// last send (half an interval while it awaits an answer), an answering node's 1.75.
    pub(super) fn reschedule(&mut self, peer: &str) {
        let interval = self.config.heartbeat_interval_ms;
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let wait = match (state.leads, state.awaiting_answer) {
            (true, false) => interval,
            (true, true) => interval / 2,
            (false, _) => interval.saturating_add(interval * 3 / 4),
        };
        let due = state.last_sent_at.saturating_add(wait);
        let old = std::mem::replace(&mut state.heartbeat_due, due);
        if old != due {
            self.heartbeats.remove(&(old, peer.to_owned()));
            self.heartbeats.insert((due, peer.to_owned()));
        }
    }

    /// A peer heard a heartbeat naming content it lacks: this node's record, at most once
    /// per `push_interval_ms` per peer.
    pub(super) fn answer_pull_record(&mut self, now: u64, peer: &str) {
        let interval = self.config.push_interval_ms;
        if self.allow(peer, now, interval, |state| {
            &mut state.last_record_answer_at
        }) {
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Datagram,
                frame: Frame::Record(self.own.clone()),
            });
            self.note_sent(now, peer);
        }
    }
}

/// Whether `node` leads the heartbeats of its pair with `peer` (the other answers). Both
/// sides agree, and each node leads about half of its pairs: one bit of a stable hash
/// (FNV-1a, then MurmurHash3's 64-bit finalizer) of the two ids in order. It must never
/// change between versions: two nodes that disagree lose what it saves (both lead) or
/// answer each other's fallback heartbeats (both answer).
pub(super) fn leads_pair(node: &str, peer: &str) -> bool {
    let (low, high) = if node < peer {
        (node, peer)
    } else {
        (peer, node)
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in low.bytes().chain([0]).chain(high.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash & 1 == 0) == (node == low)
}
