//! The replica's share of the registered-AoR union: this node's own AoR set (deltas out,
//! summaries, answers to range reconciliation), the copies of every other node's set
//! (deltas in, in order; summaries compared; ranges reconciled), the cluster's AoR key, and
//! the liveness of each set (the same as its node's record).
//!
//! **Protocol** (frame version 2). The owner's changes since its last push ride in its next
//! record push ([`Frame::RecordAors`], coalesced like any record change, at most every
//! `push_interval_ms`; [`Frame::AorHeartbeat`] when nothing else of the record changed): the set's seq grows with each such push and every record names it
//! (`Record::aor_seq`), so an AoR change costs its 8 bytes in a datagram that goes out
//! anyway, not a packet of its own and its acknowledgement. A push that does not fit a
//! datagram goes on a stream whole; more changes than one frame holds go first as
//! [`AorDelta`]s, each with its own seq. A copy applies changes in seq order (a bounded
//! buffer holds ones that overtook an earlier one). Datagrams get lost: a copy that learns of
//! a later seq than it holds — a record naming it (pushed, pulled after a heartbeat named
//! content it lacked, or relayed in a table), a change that overtook, a summary — asks the
//! owner for what it misses ([`Frame::AorPull`], at most once per
//! [`AOR_RECONCILE_TIMEOUT_MS`]); the owner answers from its log of recent changes (at most
//! [`AOR_LOG_DELTAS_MAX`] pushes, [`AOR_LOG_FPS_MAX`] fingerprints) with [`AorDelta`]s, or,
//! when the log does not reach back, with its summary. So a lost change is repaired exactly
//! when a lost record change is, plus one round trip.
//!
//! Every `anti_entropy_interval_ms`, and on connect, the owner sends its [`AorSummary`]
//! (`seq`, count, hash). A copy at that seq with that hash is in sync; one behind at the same
//! incarnation pulls; one that differs otherwise (a node back from expiry, a restart, a log
//! that did not reach) sends the owner the range hashes of its copy over 16 ranges
//! ([`AorRanges`]); the owner answers each differing range with its members when small
//! (≤ [`AOR_LEAF_MAX`]) or when the copy holds none there, else with the hashes of 16
//! sub-ranges, which the copy compares and sends back where they differ. A difference of `d`
//! fingerprints in a set of `n` costs about `d · (8 + 16 · 30 · log16(n / 64))` bytes, never
//! the whole set unless the copy is empty.
//!
//! **Publication waits for the key.** A node that starts with a key of its own
//! ([`Replica::set_aor_key`]) fingerprints its AoRs under it before it has heard the cluster's:
//! published, an AoR registered through it and through a peer would count twice (two keys,
//! two fingerprints) until its next refresh. So its set is held back (not sent, not
//! answered; counted here only while no other set held here has members) until a peer
//! agreed on a key with it (sent it the key it holds, or sent one that won) *and* the IO
//! layer says its set is fingerprinted under that key
//! ([`Replica::aor_keyed`]: it re-keys the AoRs it registered meanwhile, whose text it kept).
//! Then the whole set goes out at once (a summary; the copies reconcile), and the hold never
//! returns: a later rotation moves each AoR at its refresh, as documented. A replica never
//! given a key (the simulation's abstract fingerprints) publishes at once.

use std::collections::{BTreeMap, VecDeque};

use crate::aorset::{AorSets, Fp, RangeDigest, Slot};
use crate::frame::{
    AOR_FRAME_FPS_MAX, AOR_RANGE_ITEMS_MAX, AorDelta, AorHeartbeat, AorKey, AorRange, AorRanges,
    AorSummary, DATAGRAM_BYTES_MAX, Frame, RecordAors, WireFp, encode,
};

use super::{Destination, Event, Replica, Transmit, TransmitKind, counted, state_at};
use tollgate_events::MonoTime;

/// A range with at most this many of the owner's fingerprints is answered with its members.
pub const AOR_LEAF_MAX: u64 = 64;
/// Ranges a range is split into at each step of a reconciliation.
pub const AOR_RANGE_FANOUT: u64 = 16;
/// Deltas a copy holds while waiting for an earlier one; past this it reconciles.
pub const AOR_BUFFER_MAX: usize = 256;
/// A reconciliation (or an `AorPull`) with no answer for this long may be started again.
pub const AOR_RECONCILE_TIMEOUT_MS: u64 = 2_000;
/// Pushes of AoR changes the owner keeps to answer `AorPull`.
pub const AOR_LOG_DELTAS_MAX: usize = 256;
/// Fingerprints the owner keeps in that log, in all (64 KiB); the oldest pushes go first.
pub const AOR_LOG_FPS_MAX: usize = 8_192;

/// This node's own AoR set and every copy.
#[derive(Debug)]
pub(crate) struct AorState {
    pub(crate) sets: AorSets,
    own_slot: Slot,
    pub(crate) key: Option<AorKey>,
    incarnation: u64,
    /// Seq of the set as last pushed (the set as the copies know it, plus `pending`); the
    /// set's version is `(incarnation, seq)`, the incarnation its record's.
    pub(crate) seq: u64,
    /// Changes not sent yet: fingerprint → present after the change.
    pending: BTreeMap<Fp, bool>,
    /// The latest pushes of changes, contiguous and ending at `seq` (when not empty), to
    /// answer `AorPull`; anything that moves `seq` without a delta empties it.
    log: VecDeque<AorDelta>,
    log_fps: usize,
    copies: BTreeMap<String, CopyState>,
    /// Publication held until the key is agreed (see the module documentation); `None` once
    /// published, or when no key was ever set.
    hold: Option<Hold>,
    /// A peer holds the key held here: it sent this key, or this node adopted the peer's
    /// (or an operator rotated it here). A key of this node's own making is not agreed.
    key_agreed: bool,
    /// The set went out at least once: the hold never returns.
    published: bool,
}

/// Why this node's own set is not published yet.
#[derive(Debug, Clone, Copy, Default)]
struct Hold {
    /// The key the IO layer fingerprinted this node's set under, as it last said.
    set_key: Option<AorKey>,
}

#[derive(Debug, Default)]
struct CopyState {
    /// `(incarnation, seq)` of the owner's set this copy equals; `None` until it has synced.
    version: Option<(u64, u64)>,
    /// Deltas that arrived ahead of the next one expected.
    buffer: BTreeMap<(u64, u64), AorDelta>,
    /// A reconciliation started then (not answered yet).
    asked_at: Option<u64>,
    /// An `AorPull` sent then (not answered yet).
    pulled_at: Option<u64>,
}

impl AorState {
    pub(crate) fn new(own_node_id: &str, incarnation: u64) -> AorState {
        let mut sets = AorSets::new();
        let own_slot = sets
            .slot_or_insert(own_node_id)
            .expect("an empty AorSets has a free slot");
        sets.set_counted(own_slot, true);
        AorState {
            sets,
            own_slot,
            key: None,
            incarnation,
            seq: 0,
            pending: BTreeMap::new(),
            log: VecDeque::new(),
            log_fps: 0,
            copies: BTreeMap::new(),
            hold: None,
            key_agreed: false,
            published: false,
        }
    }

    fn summary(&self) -> AorSummary {
        let digest = self.sets.digest(self.own_slot);
        AorSummary {
            incarnation: self.incarnation,
            seq: self.seq,
            count: digest.count,
            hash: digest.hash,
        }
    }

    /// Changes are waiting for the next push (and may go: the set is published).
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty() && self.hold.is_none()
    }

    /// The set's seq moved without a delta (a load, the release of a held set, a new
    /// incarnation): the log no longer leads to it.
    fn clear_log(&mut self) {
        self.log.clear();
        self.log_fps = 0;
    }

    fn log_delta(&mut self, delta: &AorDelta) {
        debug_assert!(
            self.log.back().is_none_or(
                |last| (last.incarnation, last.seq + 1) == (delta.incarnation, delta.seq)
            ),
            "the log is contiguous"
        );
        self.log_fps += delta.adds.len() + delta.removes.len();
        self.log.push_back(delta.clone());
        while self.log_fps > AOR_LOG_FPS_MAX || self.log.len() > AOR_LOG_DELTAS_MAX {
            let Some(old) = self.log.pop_front() else {
                break;
            };
            self.log_fps -= old.adds.len() + old.removes.len();
        }
    }

    fn note_change(&mut self, fp: Fp, present: bool) {
        if self.pending.remove(&fp).is_none() {
            self.pending.insert(fp, present);
        }
    }
}

fn to_wire(fp: Fp) -> WireFp {
    fp.to_le_bytes()
}

fn from_wire(fp: &WireFp) -> Fp {
    Fp::from_le_bytes(*fp)
}

fn matches(digest: RangeDigest, summary: &AorSummary) -> bool {
    digest.count == summary.count && digest.hash == summary.hash
}

/// `[lo, hi]` split into [`AOR_RANGE_FANOUT`] contiguous ranges (fewer when it is smaller).
fn split(lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let width = (u128::from(hi) - u128::from(lo) + 1).div_ceil(u128::from(AOR_RANGE_FANOUT));
    let mut ranges = Vec::with_capacity(AOR_RANGE_FANOUT as usize);
    let mut start = u128::from(lo);
    while start <= u128::from(hi) {
        let end = (start + width - 1).min(u128::from(hi));
        ranges.push((start as u64, end as u64));
        start = end + 1;
    }
    ranges
}

impl Replica {
    // ----------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------

    /// An AoR (its fingerprint under the cluster's AoR key) became registered on this node.
    /// Sent to every peer with the next record push (at most every `push_interval_ms`). It
    /// does not emit by itself: the push leaves at the next input that emits (hand the
    /// node's new counts in right after, [`Replica::set_local_usage`], and they go in one
    /// frame) or at [`Replica::poll_timeout`], due at once when the push interval allows.
    pub fn aor_add(&mut self, now: MonoTime, fp: Fp) {
        let now = now.ms();
        self.tick(now);
        let own = self.aor.own_slot;
        if self.aor.sets.insert(own, fp) {
            self.aor.note_change(fp, true);
        }
    }

    /// An AoR is no longer registered on this node (sent as [`Replica::aor_add`] says).
    pub fn aor_remove(&mut self, now: MonoTime, fp: Fp) {
        let now = now.ms();
        self.tick(now);
        let own = self.aor.own_slot;
        if self.aor.sets.remove(own, fp) {
            self.aor.note_change(fp, false);
        }
    }

    /// Replaces this node's AoR set at once (a restart that restored its registrations, or a
    /// re-keying): no delta is sent; every copy sees the new summary and reconciles the
    /// difference.
    pub fn aor_load(&mut self, now: MonoTime, fps: &[Fp]) {
        let now = now.ms();
        let now = self.tick(now);
        let own = self.aor.own_slot;
        self.aor.sets.replace_range(own, 0, Fp::MAX, fps);
        self.aor.pending.clear();
        self.aor.seq += 1;
        self.aor.clear_log();
        self.send_aor_summary(now, Destination::AllPeers);
        self.maybe_emit(now);
    }

    /// The cluster's AoR key this node starts with (persisted by the IO layer, or fresh), and
    /// the key its AoR set is fingerprinted under. Kept if it beats the one held
    /// ([`Event::AorKeyChanged`]); peers then learn it. Until a peer agrees on a key and the
    /// set is fingerprinted under it ([`Replica::aor_keyed`]), the set is not published (see
    /// the module documentation); a node that already published it is not held again.
    pub fn set_aor_key(&mut self, now: MonoTime, key: AorKey) {
        let now = now.ms();
        let now = self.tick(now);
        if !self.aor.published {
            let hold = self.aor.hold.get_or_insert_with(Hold::default);
            hold.set_key = Some(key);
        }
        if self.adopt_aor_key(key) {
            // This node's own: no peer holds it yet.
            self.aor.key_agreed = false;
        }
        self.sync_aor_liveness(now);
        self.maybe_release_aor_set(now);
    }

    /// This node's AoR set is now fingerprinted under `key` (the IO layer re-keyed it after
    /// [`Event::AorKeyChanged`], with the changes already handed in).
    pub fn aor_keyed(&mut self, now: MonoTime, key: AorKey) {
        let now = now.ms();
        let now = self.tick(now);
        if let Some(hold) = &mut self.aor.hold {
            hold.set_key = Some(key);
        }
        self.maybe_release_aor_set(now);
    }

    /// Whether this node's AoR set is published (or never will be held: no key at all, the
    /// simulation's case). Until then the IO layer keeps what it needs to re-key it. A
    /// replica that adopted a peer's key before the IO layer's own key reached it is not
    /// published yet: the IO layer must re-key and say so ([`Replica::aor_keyed`]), or the
    /// hold that its key then starts would never end.
    pub fn aor_set_published(&self) -> bool {
        self.aor.published || (self.aor.hold.is_none() && self.aor.key.is_none())
    }

    /// Ends the hold once the key is agreed and the set is under it: the whole set goes out
    /// as a summary (the copies reconcile), and this node counts it from now on.
    fn maybe_release_aor_set(&mut self, now: u64) {
        let Some(hold) = self.aor.hold else {
            return;
        };
        if !self.aor.key_agreed || hold.set_key.is_none() || hold.set_key != self.aor.key {
            return;
        }
        self.aor.hold = None;
        self.aor.published = true;
        self.aor.pending.clear();
        self.aor.seq += 1;
        self.aor.clear_log();
        self.sync_aor_liveness(now);
        self.send_aor_summary(now, Destination::AllPeers);
    }

    fn adopt_aor_key(&mut self, key: AorKey) -> bool {
        if self.aor.key.is_some_and(|held| !key.beats(&held)) {
            return false;
        }
        self.aor.key = Some(key);
        self.push_event(Event::AorKeyChanged { key });
        self.enqueue(Transmit {
            to: Destination::AllPeers,
            kind: TransmitKind::Stream,
            frame: Frame::AorKey(key),
        });
        true
    }

    /// Rotates the cluster's AoR key: `key` (fresh random bytes) becomes generation + 1 and
    /// replaces the held one on every node. Returns the new key (also in
    /// [`Event::AorKeyChanged`]).
    pub fn rotate_aor_key(&mut self, now: MonoTime, key: [u8; 32], created_at_ms: u64) -> AorKey {
        let now = now.ms();
        let generation = self.aor.key.map_or(1, |held| held.generation + 1);
        let key = AorKey {
            generation,
            created_at_ms,
            key,
        };
        let now = self.tick(now);
        self.adopt_aor_key(key);
        // The operator's word: this node's key is the cluster's.
        self.aor.key_agreed = true;
        self.maybe_release_aor_set(now);
        key
    }

    // ----------------------------------------------------------------------------------
    // Reads
    // ----------------------------------------------------------------------------------

    /// The cluster's AoR key as held now.
    pub fn aor_key(&self) -> Option<AorKey> {
        self.aor.key
    }

    /// This node's own AoR set, in fingerprint order.
    pub fn aor_members(&self) -> Vec<Fp> {
        self.aor.sets.all_members(self.aor.own_slot)
    }

    /// The AoR sets: every node's copy and the union (for tests and measurements).
    pub fn aor_sets(&self) -> &AorSets {
        &self.aor.sets
    }

    /// Whether the copy of `node_id`'s set is known equal to the owner's at some version.
    pub fn aor_copy_synced(&self, node_id: &str) -> bool {
        self.aor
            .copies
            .get(node_id)
            .is_some_and(|copy| copy.version.is_some() && copy.buffer.is_empty())
    }

    // ----------------------------------------------------------------------------------
    // Internals, called by the replica
    // ----------------------------------------------------------------------------------

    /// On connect: the key and this node's summary.
    pub(super) fn aor_on_connect(&mut self, now: u64, peer: &str) {
        if let Some(key) = self.aor.key {
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::AorKey(key),
            });
        }
        self.send_aor_summary(now, Destination::Peer(peer.to_owned()));
    }

    /// Every anti-entropy round: this node's summary to every peer.
    pub(super) fn aor_anti_entropy(&mut self, now: u64) {
        self.send_aor_summary(now, Destination::AllPeers);
    }

    fn send_aor_summary(&mut self, now: u64, to: Destination) {
        if self.left || self.peers.is_empty() || self.aor.hold.is_some() {
            return;
        }
        // The summary must describe what the copies will hold: push pending changes first.
        if self.aor.has_pending() {
            self.emit(now, TransmitKind::Datagram);
        }
        self.enqueue_aor_summary(to);
    }

    /// This node's summary as of the last push (pending changes are not in it).
    fn enqueue_aor_summary(&mut self, to: Destination) {
        let summary = self.aor.summary();
        self.enqueue(Transmit {
            to,
            kind: TransmitKind::Stream,
            frame: Frame::AorSummary(summary),
        });
    }

    /// For the record push being emitted: the set's version follows the record's
    /// incarnation (a new one, rare at run time, empties the log and sends a summary, so the
    /// copies settle on it), then the pending changes are taken, the set's seq grows once
    /// per frame's worth, and they are logged. Returns them in seq order: the last rides in
    /// the push, any earlier ones go on streams before it.
    pub(super) fn take_aor_changes(&mut self) -> Vec<AorDelta> {
        if self.aor.incarnation != self.own.incarnation {
            self.aor.incarnation = self.own.incarnation;
            self.aor.clear_log();
            if !self.left && self.aor.hold.is_none() && !self.peers.is_empty() {
                self.enqueue_aor_summary(Destination::AllPeers);
            }
        }
        if self.left || !self.aor.has_pending() {
            return Vec::new();
        }
        let pending = std::mem::take(&mut self.aor.pending);
        let mut deltas = Vec::new();
        let mut changes = pending.into_iter().peekable();
        while changes.peek().is_some() {
            let mut delta = AorDelta {
                incarnation: self.aor.incarnation,
                seq: self.aor.seq + 1,
                adds: Vec::new(),
                removes: Vec::new(),
            };
            for (fp, present) in changes.by_ref().take(AOR_FRAME_FPS_MAX) {
                if present {
                    delta.adds.push(to_wire(fp));
                } else {
                    delta.removes.push(to_wire(fp));
                }
            }
            self.aor.seq += 1;
            self.aor.log_delta(&delta);
            self.stats.aor_deltas_sent += 1;
            deltas.push(delta);
        }
        deltas
    }

    /// The frame of a push carrying `changes` (the last of [`Replica::take_aor_changes`]),
    /// the earlier ones queued on streams first: the record with them, or, when nothing
    /// else of the record changed (`base_changed` false), a heartbeat with them; and how it
    /// travels: a datagram when it fits one, else a stream.
    pub(super) fn aor_push(
        &mut self,
        mut changes: Vec<AorDelta>,
        kind: TransmitKind,
        base_changed: bool,
    ) -> Option<(Frame, TransmitKind)> {
        let last = changes.pop()?;
        for delta in changes {
            self.enqueue(Transmit {
                to: Destination::AllPeers,
                kind: TransmitKind::Stream,
                frame: Frame::AorDelta(delta),
            });
        }
        debug_assert_eq!(
            (last.incarnation, last.seq),
            (self.own.incarnation, self.own.aor_seq)
        );
        let frame = if base_changed {
            Frame::RecordAors(RecordAors {
                record: self.own.clone(),
                adds: last.adds,
                removes: last.removes,
            })
        } else {
            Frame::AorHeartbeat(AorHeartbeat {
                incarnation: self.own.incarnation,
                seq: self.own.seq,
                changed_seq: self.own_base_changed_seq,
                aor_seq: self.own.aor_seq,
                adds: last.adds,
                removes: last.removes,
            })
        };
        let kind = if kind == TransmitKind::Datagram && encode(&frame).len() > DATAGRAM_BYTES_MAX {
            TransmitKind::Stream
        } else {
            kind
        };
        Some((frame, kind))
    }

    /// A copy asks for the changes after `(incarnation, seq)`: the logged ones, or, when the
    /// log does not reach back, the first step of a range reconciliation (this node's hashes
    /// over 16 ranges, with its summary: the copy asks again where it differs). At most one
    /// answer per `push_interval_ms` per peer.
    pub(super) fn answer_aor_pull(&mut self, now: u64, peer: &str, incarnation: u64, seq: u64) {
        if self.left || self.aor.hold.is_some() {
            return;
        }
        let interval = self.config.push_interval_ms;
        if !self.allow(peer, now, interval, |state| {
            &mut state.last_aor_pull_answer_at
        }) {
            return;
        }
        self.stats.aor_pulls_answered += 1;
        let served = incarnation == self.aor.incarnation
            && seq < self.aor.seq
            && self
                .aor
                .log
                .front()
                .is_some_and(|first| first.seq <= seq + 1);
        if !served {
            let own = self.aor.own_slot;
            let ranges = self.range_hashes(own, 0, Fp::MAX);
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::AorRanges(AorRanges {
                    owner: self.own.node_id.clone(),
                    summary: Some(self.aor.summary()),
                    ranges,
                }),
            });
            return;
        }
        let deltas: Vec<AorDelta> = self
            .aor
            .log
            .iter()
            .filter(|delta| delta.seq > seq)
            .cloned()
            .collect();
        for delta in deltas {
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::AorDelta(delta),
            });
        }
    }

    /// `owner`'s set is at `named` or later (a record, a change that overtook, a summary
    /// said so): a copy that is synced but behind asks the owner for the missing changes,
    /// unless it asked less than [`AOR_RECONCILE_TIMEOUT_MS`] ago with no progress since.
    /// `true` when a pull is on its way.
    pub(super) fn aor_check_behind(&mut self, now: u64, owner: &str, named: (u64, u64)) -> bool {
        if self.left || !self.peers.contains_key(owner) {
            return false;
        }
        let Some(copy) = self.aor.copies.get_mut(owner) else {
            return false;
        };
        let Some(held) = copy.version else {
            return false;
        };
        if named <= held {
            return false;
        }
        if copy
            .pulled_at
            .is_some_and(|at| now < at.saturating_add(AOR_RECONCILE_TIMEOUT_MS))
        {
            return true;
        }
        copy.pulled_at = Some(now);
        self.stats.aor_pulls_sent += 1;
        self.enqueue(Transmit {
            to: Destination::Peer(owner.to_owned()),
            kind: TransmitKind::Stream,
            frame: Frame::AorPull {
                incarnation: held.0,
                seq: held.1,
            },
        });
        true
    }

    /// A record push with the AoR changes it names: the changes first (so the record's
    /// `aor_seq` finds them applied), then the record.
    pub(super) fn handle_record_aors(&mut self, now: u64, owner: &str, push: RecordAors) {
        let RecordAors {
            record,
            adds,
            removes,
        } = push;
        self.handle_aor_delta(
            now,
            owner,
            AorDelta {
                incarnation: record.incarnation,
                seq: record.aor_seq,
                adds,
                removes,
            },
        );
        self.merge_record(now, record, owner);
    }

    pub(super) fn handle_aor_key(&mut self, now: u64, peer: &str, key: AorKey) {
        match self.aor.key {
            Some(held) if held.beats(&key) => {
                self.enqueue(Transmit {
                    to: Destination::Peer(peer.to_owned()),
                    kind: TransmitKind::Stream,
                    frame: Frame::AorKey(held),
                });
                return;
            }
            Some(held) if held == key => {}
            _ => {
                self.adopt_aor_key(key);
            }
        }
        // The peer holds the key held here now: agreed.
        self.aor.key_agreed = true;
        self.maybe_release_aor_set(now);
    }

    pub(super) fn handle_aor_summary(&mut self, now: u64, owner: &str, summary: AorSummary) {
        let Some(slot) = self.aor_slot(owner) else {
            return;
        };
        let digest = self.aor.sets.digest(slot);
        let copy = self.aor.copies.entry(owner.to_owned()).or_default();
        let version = (summary.incarnation, summary.seq);
        if copy.version.is_some_and(|held| held > version) {
            return;
        }
        if matches(digest, &summary) {
            copy.version = Some(version);
            copy.asked_at = None;
            copy.pulled_at = None;
            self.drain_aor_buffer(owner, slot);
            return;
        }
        // Behind at the same incarnation with the missing deltas on their way: wait.
        if copy.version.is_some_and(|(incarnation, seq)| {
            incarnation == summary.incarnation
                && seq < summary.seq
                && copy
                    .buffer
                    .keys()
                    .next()
                    .is_some_and(|first| *first == (incarnation, seq + 1))
        }) {
            return;
        }
        // A pull is on its way: its answer (the changes, or the owner's range hashes) settles
        // the copy.
        if copy
            .pulled_at
            .is_some_and(|at| now < at.saturating_add(AOR_RECONCILE_TIMEOUT_MS))
        {
            return;
        }
        // Behind at the same incarnation: the owner's log likely has the changes.
        if copy.version.is_some_and(|(incarnation, seq)| {
            incarnation == summary.incarnation && seq < summary.seq
        }) && self.aor_check_behind(now, owner, version)
        {
            return;
        }
        self.start_aor_reconcile(now, owner, slot);
    }

    fn start_aor_reconcile(&mut self, now: u64, owner: &str, slot: Slot) {
        let copy = self.aor.copies.entry(owner.to_owned()).or_default();
        if copy
            .asked_at
            .is_some_and(|at| now < at.saturating_add(AOR_RECONCILE_TIMEOUT_MS))
        {
            return;
        }
        copy.asked_at = Some(now);
        self.stats.aor_reconciliations += 1;
        let ranges = self.range_hashes(slot, 0, Fp::MAX);
        self.enqueue(Transmit {
            to: Destination::Peer(owner.to_owned()),
            kind: TransmitKind::Stream,
            frame: Frame::AorRanges(AorRanges {
                owner: owner.to_owned(),
                summary: None,
                ranges,
            }),
        });
    }

    pub(super) fn handle_aor_delta(&mut self, now: u64, owner: &str, delta: AorDelta) {
        let Some(slot) = self.aor_slot(owner) else {
            return;
        };
        let copy = self.aor.copies.entry(owner.to_owned()).or_default();
        let version = (delta.incarnation, delta.seq);
        if copy.version.is_some_and(|held| held >= version) || copy.buffer.contains_key(&version) {
            self.stats.aor_deltas_stale += 1;
            return;
        }
        if copy.buffer.len() >= AOR_BUFFER_MAX {
            // Too far behind to wait: the next summary reconciles.
            copy.buffer.clear();
            copy.version = None;
            self.stats.aor_buffer_overflows += 1;
        }
        copy.buffer.insert(version, delta);
        self.drain_aor_buffer(owner, slot);
        // One that overtook a lost one: ask for the missing ones.
        if let Some(first) = self
            .aor
            .copies
            .get(owner)
            .and_then(|copy| copy.buffer.keys().next().copied())
        {
            self.aor_check_behind(now, owner, first);
        }
    }

    /// Applies buffered deltas that follow the copy's version, in order; drops older ones.
    fn drain_aor_buffer(&mut self, owner: &str, slot: Slot) {
        let Some(copy) = self.aor.copies.get_mut(owner) else {
            return;
        };
        let Some(mut version) = copy.version else {
            return;
        };
        let mut ready = Vec::new();
        while let Some((&key, _)) = copy.buffer.first_key_value() {
            if key <= version {
                copy.buffer.pop_first();
            } else if key == (version.0, version.1 + 1) {
                if let Some((_, delta)) = copy.buffer.pop_first() {
                    ready.push(delta);
                }
                version = key;
            } else {
                break;
            }
        }
        if copy.version != Some(version) {
            // Progress: a later gap may be pulled at once.
            copy.pulled_at = None;
        }
        copy.version = Some(version);
        for delta in ready {
            for fp in &delta.adds {
                self.aor.sets.insert(slot, from_wire(fp));
            }
            for fp in &delta.removes {
                self.aor.sets.remove(slot, from_wire(fp));
            }
            self.stats.aor_deltas_applied += 1;
        }
    }

    pub(super) fn handle_aor_ranges(&mut self, now: u64, peer: &str, ranges: AorRanges) {
        if ranges.owner == self.own.node_id {
            self.answer_aor_ranges(peer, ranges.ranges);
        } else if ranges.owner == peer && ranges.summary.is_some() {
            self.apply_aor_ranges(now, peer, ranges);
        } else {
            self.stats.aor_frames_ignored += 1;
        }
    }

    /// A copy's range hashes of this node's set: members or sub-range hashes where they
    /// differ.
    fn answer_aor_ranges(&mut self, peer: &str, theirs: Vec<AorRange>) {
        if self.left || self.aor.hold.is_some() {
            return;
        }
        let own = self.aor.own_slot;
        let mut answer: Vec<AorRange> = Vec::new();
        let mut fps = 0usize;
        let mut frames: Vec<Vec<AorRange>> = Vec::new();
        let mut push = |range: AorRange, answer: &mut Vec<AorRange>, fps: &mut usize| {
            let size = match &range {
                AorRange::Members { fps, .. } => fps.len(),
                AorRange::Hash { .. } => 0,
            };
            if answer.len() + 1 > AOR_RANGE_ITEMS_MAX || *fps + size > AOR_FRAME_FPS_MAX {
                frames.push(std::mem::take(answer));
                *fps = 0;
            }
            *fps += size;
            answer.push(range);
        };
        for range in theirs {
            let AorRange::Hash {
                lo,
                hi,
                count,
                hash,
            } = range
            else {
                continue;
            };
            let mine = self.aor.sets.range_digest(own, lo, hi);
            if mine == (RangeDigest { count, hash }) {
                continue;
            }
            if count == 0 || mine.count <= AOR_LEAF_MAX || lo == hi {
                // Members, in pieces of at most half a frame each.
                let members = self.aor.sets.members(own, lo, hi);
                if members.is_empty() {
                    push(
                        AorRange::Members {
                            lo,
                            hi,
                            fps: Vec::new(),
                        },
                        &mut answer,
                        &mut fps,
                    );
                }
                let mut start = lo;
                let mut chunks = members.chunks(AOR_FRAME_FPS_MAX / 2).peekable();
                while let Some(chunk) = chunks.next() {
                    let end = match (chunks.peek(), chunk.last()) {
                        (Some(_), Some(last)) => *last,
                        _ => hi,
                    };
                    push(
                        AorRange::Members {
                            lo: start,
                            hi: end,
                            fps: chunk.iter().map(|fp| to_wire(*fp)).collect(),
                        },
                        &mut answer,
                        &mut fps,
                    );
                    start = end.saturating_add(1);
                }
            } else {
                for (lo, hi) in split(lo, hi) {
                    let digest = self.aor.sets.range_digest(own, lo, hi);
                    push(
                        AorRange::Hash {
                            lo,
                            hi,
                            count: digest.count,
                            hash: digest.hash,
                        },
                        &mut answer,
                        &mut fps,
                    );
                }
            }
        }
        if !answer.is_empty() {
            frames.push(answer);
        }
        if frames.is_empty() {
            // Nothing differs (the copy raced a delta): the summary settles it.
            frames.push(Vec::new());
        }
        let summary = self.aor.summary();
        for ranges in frames {
            self.stats.aor_ranges_answered += 1;
            self.enqueue(Transmit {
                to: Destination::Peer(peer.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::AorRanges(AorRanges {
                    owner: self.own.node_id.clone(),
                    summary: Some(summary),
                    ranges,
                }),
            });
        }
    }

    /// The owner's answer: replace ranges with its members, compare its sub-range hashes,
    /// ask again where they differ; in sync once the copy's hash is the owner's.
    fn apply_aor_ranges(&mut self, now: u64, owner: &str, ranges: AorRanges) {
        let Some(slot) = self.aor_slot(owner) else {
            return;
        };
        let Some(summary) = ranges.summary else {
            return;
        };
        let mut again: Vec<AorRange> = Vec::new();
        for range in ranges.ranges {
            match range {
                AorRange::Members { lo, hi, fps } => {
                    let fps: Vec<Fp> = fps.iter().map(from_wire).collect();
                    let changed = self.aor.sets.replace_range(slot, lo, hi, &fps);
                    self.stats.aor_fps_repaired += changed;
                }
                AorRange::Hash {
                    lo,
                    hi,
                    count,
                    hash,
                } => {
                    let mine = self.aor.sets.range_digest(slot, lo, hi);
                    if mine != (RangeDigest { count, hash }) && again.len() < AOR_RANGE_ITEMS_MAX {
                        again.push(AorRange::Hash {
                            lo,
                            hi,
                            count: mine.count,
                            hash: mine.hash,
                        });
                    }
                }
            }
        }
        let digest = self.aor.sets.digest(slot);
        let copy = self.aor.copies.entry(owner.to_owned()).or_default();
        let version = (summary.incarnation, summary.seq);
        if matches(digest, &summary) && copy.version.is_none_or(|held| held <= version) {
            copy.version = Some(version);
            copy.asked_at = None;
            copy.pulled_at = None;
            self.drain_aor_buffer(owner, slot);
        } else if !again.is_empty() {
            copy.asked_at = Some(now);
            self.enqueue(Transmit {
                to: Destination::Peer(owner.to_owned()),
                kind: TransmitKind::Stream,
                frame: Frame::AorRanges(AorRanges {
                    owner: owner.to_owned(),
                    summary: None,
                    ranges: again,
                }),
            });
        }
    }

    /// `slot`'s hashes over the [`AOR_RANGE_FANOUT`] ranges of `[lo, hi]`.
    fn range_hashes(&self, slot: Slot, lo: Fp, hi: Fp) -> Vec<AorRange> {
        split(lo, hi)
            .into_iter()
            .map(|(lo, hi)| {
                let digest = self.aor.sets.range_digest(slot, lo, hi);
                AorRange::Hash {
                    lo,
                    hi,
                    count: digest.count,
                    hash: digest.hash,
                }
            })
            .collect()
    }

    /// The slot of a peer's set, created on first use; `None` when the table is full.
    fn aor_slot(&mut self, node_id: &str) -> Option<Slot> {
        let slot = self.aor.sets.slot_or_insert(node_id);
        if slot.is_none() {
            self.stats.aor_frames_ignored += 1;
        }
        slot
    }

    /// Liveness rules applied to the sets: a node's set counts exactly when its record does
    /// (live, suspect, held); a removed node's set is dropped.
    ///
    /// While this node's set is held back (the key not agreed yet) it still counts here as
    /// long as no other counted set holds anything: alone (a first node, or peers not
    /// reachable at start) nothing can be counted under two keys, and its figure is its own.
    pub(super) fn sync_aor_liveness(&mut self, now: u64) {
        let own = self.aor.own_slot;
        let mut changes: Vec<(Slot, bool)> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        for (node_id, slot, was) in self.aor.sets.nodes() {
            if slot == own {
                continue;
            }
            let now_counted = match self.entries.get(node_id) {
                Some(entry) => {
                    let state = state_at(entry, now, &self.config);
                    counted(entry, state, now, &self.config)
                }
                None => {
                    if self.tombstones.contains_key(node_id) {
                        gone.push(node_id.to_owned());
                    }
                    false
                }
            };
            if now_counted != was {
                changes.push((slot, now_counted));
            }
        }
        for (slot, counted) in changes {
            self.aor.sets.set_counted(slot, counted);
        }
        for node_id in gone {
            self.aor.sets.drop_node(&node_id);
            self.aor.copies.remove(&node_id);
        }
        let alone = || {
            self.aor.sets.nodes().all(|(_, slot, counted)| {
                slot == own || !counted || self.aor.sets.digest(slot).count == 0
            })
        };
        let own_counted = !self.left && (self.aor.hold.is_none() || alone());
        self.aor.sets.set_counted(own, own_counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_range_without_gaps() {
        for (lo, hi) in [
            (0, u64::MAX),
            (5, 9),
            (7, 7),
            (0, 31),
            (u64::MAX - 3, u64::MAX),
        ] {
            let parts = split(lo, hi);
            assert!(parts.len() as u64 <= AOR_RANGE_FANOUT);
            assert_eq!(parts.first().map(|p| p.0), Some(lo));
            assert_eq!(parts.last().map(|p| p.1), Some(hi));
            for pair in parts.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0);
            }
        }
    }
}
