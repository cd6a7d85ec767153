//! [`Replica`]: the replication state machine of one node.
//!
//! See the crate documentation for the calling order. This file holds the state, the public
//! types, and the inputs and outputs (each input dispatches to the concern it belongs to);
//! each concern is a module of its own, all of them `impl Replica`:
//!
//! - [`merge`]: other nodes' records and heartbeats merged into the table; the duplicate-node
//!   alarm.
//! - [`emit`]: this node's own record out: pushes on change, heartbeats per peer (who leads a
//!   pair).
//! - [`liveness`]: live → suspect → expired / left, the sweep, tombstones.
//! - [`anti_entropy`]: digests and tables over streams; a joiner's first pull.
//! - [`license`]: the license document offered and fetched across the mesh.
//! - [`aors`]: the registered-AoR sets (deltas, summaries, range reconciliation), the
//!   cluster's AoR key.
//! - [`view`]: the aggregate and the node views.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::NODES_MAX;
use crate::config::{Config, ConfigError};
use crate::frame::{AorKey, Frame, FrameError};
use crate::record::{Flags, NodeUsage, Record, RecordError, Version, validate_node_id};
use crate::rng::Rng;
use tollgate_events::{MonoTime, WallTime};

use anti_entropy::PullState;
#[cfg(test)]
use emit::leads_pair;
use license::LicenseAsk;
pub use license::LicenseError;
use liveness::{Tombstone, counted, state_at};

mod anti_entropy;
mod aors;
mod emit;
mod license;
mod liveness;
mod merge;
mod view;

pub use aors::{
    AOR_BUFFER_MAX, AOR_LEAF_MAX, AOR_LOG_DELTAS_MAX, AOR_LOG_FPS_MAX, AOR_RANGE_FANOUT,
    AOR_RECONCILE_TIMEOUT_MS,
};

/// Most tombstones held; when full, the oldest is forgotten first.
pub const TOMBSTONES_MAX: usize = NODES_MAX;
/// Most peers (connections) tracked.
pub const PEERS_MAX: usize = NODES_MAX;
/// Most events waiting in [`Replica::poll_event`]; when full, the oldest is dropped (counted).
pub const EVENTS_MAX: usize = 4096;
/// Most transmits waiting in [`Replica::poll_transmit`]; when full, new ones are dropped
/// (counted).
pub const TRANSMITS_MAX: usize = 4096;
/// A peer's `Pull`/`Digest` is answered at most once per this interval, and so is its
/// `LicensePull` (an authenticated peer cannot make this node send tables in a loop).
pub const ANSWER_INTERVAL_MIN_MS: u64 = 1_000;
/// A joiner that asked a peer for its table and heard nothing asks another after this.
pub const PULL_TIMEOUT_MS: u64 = 5_000;
/// A license request unanswered for this long lets the replica ask another peer.
pub const LICENSE_ASK_TIMEOUT_MS: u64 = 10_000;

/// Whom a [`Transmit`] goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// One peer, by its authenticated node id.
    Peer(String),
    /// Every peer connected right now.
    AllPeers,
}

/// How a [`Transmit`] travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// A QUIC datagram: unreliable, unordered, at most [`crate::DATAGRAM_BYTES_MAX`] encoded.
    Datagram,
    /// One frame on a new unidirectional QUIC stream: reliable, at most
    /// [`crate::FRAME_BYTES_MAX`] encoded.
    Stream,
}

/// One frame for the transport to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: Destination,
    pub kind: TransmitKind,
    pub frame: Frame,
}

/// A node's liveness, as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Its record advanced less than `suspect_after_ms` ago (this node itself is always live).
    Live,
    /// No advance for `suspect_after_ms`: still counted.
    Suspect,
    /// No advance for `expire_after_ms`: counted only under [`crate::ExpiredRule::HoldFor`],
    /// until the hold ends and the record is removed.
    Expired,
    /// It shut down gracefully: never counted.
    Left,
}

/// One node, for the cluster view (`GET /api/v1/cluster`, `tollgate status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: String,
    pub address: String,
    pub state: NodeState,
    /// This node itself.
    pub local: bool,
    /// Whether its usage is in [`Replica::aggregate`] right now.
    pub counted: bool,
    /// Since its record last advanced here, ms (0 for this node).
    pub age_ms: u64,
    /// Its wall clock as estimated now: its record's stamp plus the time since the stamp
    /// arrived here (a lower bound; see [`crate::clock`]); this node's own clock for this
    /// node; `None` when unknown (the IO layer gives no wall clock, or an old record).
    pub wall_time: Option<WallTime>,
    pub incarnation: u64,
    pub seq: u64,
    pub license_serial: u64,
    pub usage: NodeUsage,
}

/// The cluster-wide figures a license is held against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// Sum over counted nodes (live, suspect, held; this node included).
    pub calls: u64,
    pub emergency_calls: u64,
    /// Sum of the counted nodes' registered subscribers (an AoR registered through two
    /// nodes is in both): the per-node figures added up.
    pub registered_subscribers: u64,
    /// Registered subscribers counted once: the distinct AoR fingerprints held by counted
    /// nodes (the union of the AoR sets). What a cluster's license is held against.
    pub registered_subscribers_distinct: u64,
    /// Sum of the counted nodes' contacts.
    pub registered_contacts: u64,
    /// Provisioned subscribers on the platform: the most recently reported figure across
    /// nodes (by `subscribers_reported_at`), never a sum.
    pub subscribers: u64,
    /// When that figure was reported, Unix ms; 0 = never.
    pub subscribers_reported_at: u64,
    /// The highest license serial any node advertised (this one included).
    pub license_serial_max: u64,
    /// Live nodes, this one included (unless it left).
    pub nodes_live: usize,
    pub nodes_suspect: usize,
    /// Expired nodes whose usage is still held in the sums.
    pub nodes_held: usize,
    /// Expired nodes no longer counted, not yet removed.
    pub nodes_expired: usize,
    pub nodes_left: usize,
}

/// Something the IO layer should know (log once, export as a metric, act on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node appeared, or came back from suspect or expired.
    NodeUp {
        node_id: String,
        incarnation: u64,
    },
    /// A known node restarted: its new incarnation replaced the old record.
    NodeRestarted {
        node_id: String,
        incarnation: u64,
    },
    NodeSuspect {
        node_id: String,
    },
    NodeExpired {
        node_id: String,
        incarnation: u64,
    },
    NodeLeft {
        node_id: String,
    },
    /// The record is gone from the table (a tombstone remains for `tombstone_ttl_ms`).
    NodeRemoved {
        node_id: String,
    },
    /// Alarm: this node's own id came back with a version it never emitted, or a peer
    /// presented this node's id — a duplicate node id, or lost state (incarnation not
    /// persisted, clock problem). `seen` is the foreign version, if any. The replica moved
    /// its own version past it.
    DuplicateNode {
        via: String,
        seen: Option<Version>,
    },
    /// This node's incarnation grew at run time: persist it, so the next start uses more.
    IncarnationChanged {
        incarnation: u64,
    },
    /// A node advertises a license serial higher than any seen before. The replica asks a
    /// peer that holds it for the document by itself.
    LicenseAdvertised {
        node_id: String,
        serial: u64,
    },
    /// A peer sent the license document this node asked for. Verify it; if valid (and of a
    /// higher serial), install it and call [`Replica::set_license`].
    LicenseOffered {
        from: String,
        armored: Vec<u8>,
    },
    /// The cluster's AoR key changed (adopted from a peer, or rotated here): persist it and
    /// fingerprint AoRs under it from now on.
    AorKeyChanged {
        key: AorKey,
    },
}

/// Why [`Replica::handle_frame`] or [`Replica::peer_connected`] refused: close that
/// connection (only that one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("invalid peer id: {0}")]
    InvalidPeerId(RecordError),
    #[error("a peer presented this node's own id")]
    OwnIdentity,
    #[error("peer {peer} pushed a record of {claimed} directly")]
    ForgedRecord { peer: String, claimed: String },
    #[error("invalid frame: {0}")]
    InvalidFrame(#[from] FrameError),
    #[error("more than {PEERS_MAX} peers")]
    TooManyPeers,
}

impl HandleError {
    /// A short, low-cardinality name for counters (`reason` label).
    pub const fn reason(&self) -> &'static str {
        match self {
            HandleError::InvalidPeerId(_) => "invalid_peer_id",
            HandleError::OwnIdentity => "own_identity",
            HandleError::ForgedRecord { .. } => "forged_record",
            HandleError::InvalidFrame(error) => error.reason(),
            HandleError::TooManyPeers => "too_many_peers",
        }
    }
}

/// A node the transport should keep a connection to: learned from records, not yet
/// connected. (Seeds are the transport's own configuration.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    pub node_id: String,
    pub address: String,
}

/// Counters, cumulative since start. Each is a reason the IO layer can export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_handled: u64,
    /// Frames answered with a [`HandleError`] (the connection should be closed).
    pub frames_refused: u64,
    /// Of those, direct `Record` pushes of another node's record.
    pub forged_records: u64,
    /// Records that advanced the table.
    pub records_merged: u64,
    /// Records not newer than what the table holds (duplicates, reordering, relays).
    pub records_stale: u64,
    /// Records refused because a tombstone holds a version at least as new.
    pub records_tombstoned: u64,
    /// New nodes refused because the table holds [`NODES_MAX`] nodes.
    pub records_table_full: u64,
    pub heartbeats_applied: u64,
    /// Heartbeats naming content this node lacks (answered with `PullRecord`).
    pub heartbeats_unmatched: u64,
    pub duplicate_node_alarms: u64,
    /// Requests (`Pull`, `Digest`, `PullRecord`, `LicensePull`) not answered: too soon.
    pub answers_rate_limited: u64,
    /// `License` frames nobody asked for (dropped).
    pub licenses_unsolicited: u64,
    /// Own-record emissions (pushes and heartbeats); each bumps seq.
    pub emissions: u64,
    pub events_dropped: u64,
    pub transmits_dropped: u64,
    /// AoR deltas sent (each to every peer: in a record push, or on a stream when one push
    /// holds more than a frame), applied to a copy, or already held.
    pub aor_deltas_sent: u64,
    pub aor_deltas_applied: u64,
    pub aor_deltas_stale: u64,
    /// A copy fell more than `AOR_BUFFER_MAX` deltas behind (it reconciles instead).
    pub aor_buffer_overflows: u64,
    /// Range reconciliations started by this node (a copy's summary differed).
    pub aor_reconciliations: u64,
    /// `AorRanges` frames this node sent answering a copy.
    pub aor_ranges_answered: u64,
    /// Fingerprints a reconciliation added to or removed from a copy.
    pub aor_fps_repaired: u64,
    /// AoR frames about a third node, or beyond the slot table: dropped.
    pub aor_frames_ignored: u64,
    /// `AorPull`s sent by this node's copies (a change was lost or overtaken), and answered
    /// by this node as an owner.
    pub aor_pulls_sent: u64,
    pub aor_pulls_answered: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    record: Record,
    /// Local instant the record's version last advanced, whoever relayed it.
    advanced_at: u64,
    /// The state last announced by an event.
    reported: NodeState,
    /// The record's content is the same at every seq from this one to `record.seq` (same
    /// incarnation): the `changed_seq` of the owner's last heartbeat, else the seq of the
    /// record as it came (a safe upper bound).
    content_since: u64,
    /// Local instant the record's current `wall_time` stamp arrived.
    wall_at: u64,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    /// This node leads the pair's heartbeats ([`leads_pair`]); else it answers them.
    leads: bool,
    /// When this peer was last sent this node's version (a push, a heartbeat, the record on
    /// connect or on request), and which version.
    last_sent_at: u64,
    sent: Option<Version>,
    /// This node leads and sent a heartbeat the peer has not answered yet.
    awaiting_answer: bool,
    /// When it is due a heartbeat (see [`Replica::reschedule`]).
    heartbeat_due: u64,
    last_table_answer_at: Option<u64>,
    last_record_answer_at: Option<u64>,
    last_record_request_at: Option<u64>,
    last_license_answer_at: Option<u64>,
    last_aor_pull_answer_at: Option<u64>,
    /// Highest license serial asked of this peer on this connection.
    license_asked: u64,
    license_awaiting: bool,
}

/// The replication state machine of one node: its own record, every other node's, liveness,
/// the aggregate. Sans-IO: every input carries `now`, every output is polled.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    /// Latest `now` seen; an earlier `now` is treated as this one.
    now: u64,
    /// Own record as last emitted.
    own: Record,
    /// The seq at which `own`'s content last changed.
    own_changed_seq: u64,
    /// The seq at which `own`'s content other than `aor_seq` last changed (an
    /// `AorHeartbeat` names it).
    own_base_changed_seq: u64,
    /// Current content, emitted at the next push.
    usage: NodeUsage,
    license_serial: u64,
    license_armored: Vec<u8>,
    /// The IO layer's wall clock: `(now, wall)` of its last reading ([`Replica::set_wall_clock`]).
    wall: Option<(u64, WallTime)>,
    /// When `own.wall_time` was stamped.
    own_stamped_at: u64,
    left: bool,
    /// The next emission must carry the whole record (content moved past a foreign version).
    force_record: bool,
    /// When seq last grew (a push, a heartbeat round, or an interval without peers).
    last_emit_at: u64,
    last_push_at: Option<u64>,
    next_anti_entropy_at: u64,
    entries: BTreeMap<String, Entry>,
    tombstones: BTreeMap<String, Tombstone>,
    peers: BTreeMap<String, Peer>,
    /// `(heartbeat_due, peer)` of every peer: the next heartbeat is the first.
    heartbeats: BTreeSet<(u64, String)>,
    pull: PullState,
    /// Latest provisioned-subscribers report seen: `(reported_at, subscribers)`.
    subscribers_latest: (u64, u64),
    license_serial_seen: u64,
    license_ask: Option<LicenseAsk>,
    /// No liveness transition or tombstone expiry happens before this instant.
    liveness_due: Option<u64>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: Rng,
    stats: Stats,
    aor: aors::AorState,
}

impl Replica {
    /// A replica for `node_id` in its `incarnation` (persisted by the IO layer, larger than at
    /// any previous start). Its record starts at seq 0 with zero usage.
    pub fn new(
        config: Config,
        node_id: &str,
        incarnation: u64,
        now: MonoTime,
    ) -> Result<Replica, ConfigError> {
        let now = now.ms();
        config.validate()?;
        validate_node_id(node_id).map_err(ConfigError::NodeId)?;
        let mut rng = Rng::new(config.rng_seed);
        let next_anti_entropy_at = now + 1 + rng.below(config.anti_entropy_interval_ms);
        let own = Record {
            node_id: node_id.to_owned(),
            incarnation,
            seq: 0,
            flags: Flags::EMPTY,
            address: config.address.clone(),
            license_serial: 0,
            usage: NodeUsage::default(),
            aor_seq: 0,
            wall_time: WallTime::ZERO,
        };
        Ok(Replica {
            config,
            now,
            own,
            own_changed_seq: 0,
            own_base_changed_seq: 0,
            usage: NodeUsage::default(),
            license_serial: 0,
            license_armored: Vec::new(),
            wall: None,
            own_stamped_at: now,
            left: false,
            force_record: false,
            last_emit_at: now,
            last_push_at: None,
            next_anti_entropy_at,
            entries: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            peers: BTreeMap::new(),
            heartbeats: BTreeSet::new(),
            pull: PullState::Needed,
            subscribers_latest: (0, 0),
            license_serial_seen: 0,
            license_ask: None,
            liveness_due: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            stats: Stats::default(),
            aor: aors::AorState::new(node_id, incarnation),
        })
    }

    /// This node's usage changed (or not: an unchanged value costs nothing). Pushed to every
    /// peer at once, or at the end of the current `push_interval_ms`. Ignored after
    /// [`Replica::leave`].
    pub fn set_local_usage(&mut self, now: MonoTime, usage: NodeUsage) {
        let now = now.ms();
        let now = self.tick(now);
        if self.left {
            return;
        }
        self.usage = usage;
        self.note_subscribers(&usage);
        self.maybe_emit(now);
    }

    /// The wall clock reads `wall` at `now` (the IO layer's system clock, raw). This node's
    /// record carries it, restamped at least every [`crate::WALL_STAMP_INTERVAL_MS`] (between
    /// readings it runs on `now`), so that peers can compare their clocks with it. Cheap:
    /// call it as often as convenient (the mesh does at every input).
    pub fn set_wall_clock(&mut self, now: MonoTime, wall: WallTime) {
        let now = self.tick(now.ms());
        self.wall = Some((now, wall));
        if !self.left {
            self.maybe_emit(now);
        }
    }

    /// This node's wall clock at `now`, run on from the IO layer's last reading.
    pub(crate) fn wall_at(&self, now: u64) -> Option<WallTime> {
        self.wall
            .map(|(at, wall)| wall.plus_ms(now.saturating_sub(at)))
    }

    /// This node's clock against its live (and suspect) peers' (see [`crate::clock`]);
    /// `None` without a wall clock or without such a peer whose clock is known.
    pub fn peers_time(&self, now: MonoTime) -> Option<crate::clock::PeersTime> {
        let now = now.ms().max(self.now);
        let local = self.wall_at(now)?;
        let peers: Vec<WallTime> = self
            .entries
            .values()
            .filter(|entry| {
                matches!(
                    state_at(entry, now, &self.config),
                    NodeState::Live | NodeState::Suspect
                )
            })
            .filter_map(|entry| entry_wall_time(entry, now))
            .collect();
        crate::clock::cluster_time(local, &peers)
    }

    /// The transport has an authenticated connection to `peer` (its certificate's node id).
    /// Sends it this node's record, and a joiner pulls its table. A second call for the same
    /// peer is a reconnection.
    pub fn peer_connected(&mut self, now: MonoTime, peer: &str) -> Result<(), HandleError> {
        let now = now.ms();
        let now = self.tick(now);
        self.check_peer_id(peer)?;
        if !self.peers.contains_key(peer) && self.peers.len() >= PEERS_MAX {
            return Err(HandleError::TooManyPeers);
        }
        self.add_peer(now, peer);
        self.enqueue(Transmit {
            to: Destination::Peer(peer.to_owned()),
            kind: TransmitKind::Stream,
            frame: Frame::Record(self.own.clone()),
        });
        self.note_sent(now, peer);
        self.aor_on_connect(now, peer);
        self.maybe_pull(now);
        self.maybe_ask_license(now);
        Ok(())
    }

    /// The connection to `peer` is gone. Liveness does not change: it follows records only.
    pub fn peer_disconnected(&mut self, now: MonoTime, peer: &str) {
        let now = now.ms();
        let now = self.tick(now);
        if let Some(removed) = self.peers.remove(peer) {
            self.heartbeats
                .remove(&(removed.heartbeat_due, peer.to_owned()));
        }
        if matches!(&self.pull, PullState::Waiting { peer: asked, .. } if asked == peer) {
            self.pull = PullState::Needed;
        }
        if self
            .license_ask
            .as_ref()
            .is_some_and(|ask| ask.peer == peer)
        {
            self.license_ask = None;
        }
        self.maybe_pull(now);
        self.maybe_ask_license(now);
    }

    /// One frame from `from_peer`, the authenticated node id of the connection it came on.
    ///
    /// An `Err` means the peer sent something it must not: close that connection (only that
    /// one). Frames that are merely old, duplicated or unasked-for are counted in
    /// [`Stats`] and return `Ok`. A frame from a peer not announced by
    /// [`Replica::peer_connected`] registers it as connected.
    pub fn handle_frame(
        &mut self,
        now: MonoTime,
        from_peer: &str,
        frame: Frame,
    ) -> Result<(), HandleError> {
        let now = now.ms();
        let now = self.tick(now);
        self.stats.frames_handled += 1;
        if let Err(error) = self.check_peer_id(from_peer) {
            self.stats.frames_refused += 1;
            return Err(error);
        }
        if let Err(error) = frame.validate() {
            self.stats.frames_refused += 1;
            return Err(error.into());
        }
        if !self.peers.contains_key(from_peer) && self.peers.len() < PEERS_MAX {
            self.add_peer(now, from_peer);
        }
        let is_heartbeat = matches!(frame, Frame::Heartbeat(_));
        match frame {
            Frame::Record(record) => {
                if record.node_id != from_peer {
                    self.stats.frames_refused += 1;
                    self.stats.forged_records += 1;
                    return Err(HandleError::ForgedRecord {
                        peer: from_peer.to_owned(),
                        claimed: record.node_id,
                    });
                }
                self.merge_record(now, record, from_peer);
            }
            Frame::Heartbeat(heartbeat) => self.handle_heartbeat(now, from_peer, heartbeat),
            Frame::PullRecord => self.answer_pull_record(now, from_peer),
            Frame::Digest(entries) => self.answer_digest(now, from_peer, entries),
            Frame::Table(records) => self.handle_table(now, from_peer, records),
            Frame::Pull => self.answer_pull(now, from_peer),
            Frame::LicensePull { serial } => self.answer_license_pull(now, from_peer, serial),
            Frame::License { armored } => self.handle_license(from_peer, armored),
            Frame::AorKey(key) => self.handle_aor_key(now, from_peer, key),
            Frame::AorSummary(summary) => self.handle_aor_summary(now, from_peer, summary),
            Frame::AorDelta(delta) => self.handle_aor_delta(now, from_peer, delta),
            Frame::RecordAors(push) => {
                if push.record.node_id != from_peer {
                    self.stats.frames_refused += 1;
                    self.stats.forged_records += 1;
                    return Err(HandleError::ForgedRecord {
                        peer: from_peer.to_owned(),
                        claimed: push.record.node_id,
                    });
                }
                self.handle_record_aors(now, from_peer, push);
            }
            Frame::AorHeartbeat(heartbeat) => self.handle_aor_heartbeat(now, from_peer, heartbeat),
            Frame::AorPull { incarnation, seq } => {
                self.answer_aor_pull(now, from_peer, incarnation, seq);
            }
            Frame::AorRanges(ranges) => self.handle_aor_ranges(now, from_peer, ranges),
        }
        self.maybe_ask_license(now);
        self.maybe_emit(now);
        self.heard_from(now, from_peer, is_heartbeat);
        self.sync_aor_liveness(now);
        Ok(())
    }

    /// Timers: pushes, heartbeats, anti-entropy, pull and license retries, liveness
    /// transitions, tombstone expiry. Call it when [`Replica::poll_timeout`] is reached
    /// (calling it early or twice is harmless).
    pub fn handle_timeout(&mut self, now: MonoTime) {
        let now = now.ms();
        let now = self.tick(now);
        self.maybe_emit(now);
        self.send_due_heartbeats(now);
        if !self.left && now >= self.next_anti_entropy_at {
            self.anti_entropy(now);
        }
        if let PullState::Waiting { since, .. } = self.pull
            && now >= since.saturating_add(PULL_TIMEOUT_MS)
        {
            self.pull = PullState::Needed;
        }
        self.maybe_pull(now);
        if self
            .license_ask
            .as_ref()
            .is_some_and(|ask| now >= ask.at.saturating_add(LICENSE_ASK_TIMEOUT_MS))
        {
            self.license_ask = None;
        }
        self.maybe_ask_license(now);
        if self.liveness_due.is_some_and(|due| due <= now) {
            self.sweep(now);
        }
        self.sync_aor_liveness(now);
    }

    /// Graceful shutdown: emits a LEFT record with zero usage, reliably (a stream to every
    /// peer), so this node drops out of every sum at once. Afterwards only frames are
    /// handled; nothing is emitted on timers. Drain [`Replica::poll_transmit`], give the
    /// streams a moment to flush, then close.
    pub fn leave(&mut self, now: MonoTime) {
        let now = now.ms();
        let now = self.tick(now);
        if self.left {
            return;
        }
        self.left = true;
        self.usage = NodeUsage::default();
        self.emit(now, TransmitKind::Stream);
        self.sync_aor_liveness(now);
    }

    /// The next frame to send, if any. Drain it after every input.
    pub fn poll_transmit(&mut self, now: MonoTime) -> Option<Transmit> {
        let now = now.ms();
        self.tick(now);
        self.out.pop_front()
    }

    /// The next event, if any. Drain it after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Replica::handle_timeout`] must next be called (an instant in `now`'s unit);
    /// `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<MonoTime> {
        let mut due = self.liveness_due;
        let mut consider = |at: u64| due = Some(due.map_or(at, |due| due.min(at)));
        if let Some(at) = self.emission_due() {
            consider(at);
        }
        if !self.left {
            consider(self.next_anti_entropy_at);
            if let Some((at, _)) = self.heartbeats.first() {
                consider(*at);
            }
        }
        if let PullState::Waiting { since, .. } = self.pull {
            consider(since.saturating_add(PULL_TIMEOUT_MS));
        }
        if let Some(ask) = &self.license_ask {
            consider(ask.at.saturating_add(LICENSE_ASK_TIMEOUT_MS));
        }
        due.map(|due| MonoTime::from_ms(due.max(self.now)))
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn node_id(&self) -> &str {
        &self.own.node_id
    }

    /// Version of this node's record as last emitted.
    pub fn version(&self) -> Version {
        self.own.version()
    }

    pub fn is_left(&self) -> bool {
        self.left
    }

    pub fn license_serial(&self) -> u64 {
        self.license_serial
    }

    /// Peers currently connected, by node id.
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.peers.keys().map(String::as_str)
    }

    /// The records this replica holds, this node's (as last emitted) first. For tests,
    /// debugging and snapshots of the cluster view.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        std::iter::once(&self.own).chain(self.entries.values().map(|entry| &entry.record))
    }

    fn tick(&mut self, now: u64) -> u64 {
        self.now = self.now.max(now);
        self.now
    }

    fn check_peer_id(&mut self, peer: &str) -> Result<(), HandleError> {
        validate_node_id(peer).map_err(HandleError::InvalidPeerId)?;
        if peer == self.own.node_id {
            self.alarm(peer, None);
            return Err(HandleError::OwnIdentity);
        }
        Ok(())
    }

    fn alarm(&mut self, via: &str, seen: Option<Version>) {
        self.stats.duplicate_node_alarms += 1;
        self.push_event(Event::DuplicateNode {
            via: via.to_owned(),
            seen,
        });
    }

    fn push_event(&mut self, event: Event) {
        push_event(&mut self.events, &mut self.stats, event);
    }

    fn enqueue(&mut self, transmit: Transmit) {
        if self.out.len() >= TRANSMITS_MAX {
            self.stats.transmits_dropped += 1;
            return;
        }
        self.out.push_back(transmit);
    }

    /// Rate limit of answers to one peer: `true` (and the slot taken) when the last answer
    /// of this kind is at least `interval` old.
    fn allow(
        &mut self,
        peer: &str,
        now: u64,
        interval: u64,
        slot: impl FnOnce(&mut Peer) -> &mut Option<u64>,
    ) -> bool {
        let Some(peer) = self.peers.get_mut(peer) else {
            self.stats.answers_rate_limited += 1;
            return false;
        };
        let slot = slot(peer);
        if slot.is_some_and(|last| now < last.saturating_add(interval)) {
            self.stats.answers_rate_limited += 1;
            return false;
        }
        *slot = Some(now);
        true
    }
}

/// A node's wall clock estimated at `now`: its stamp plus the time since the stamp arrived.
fn entry_wall_time(entry: &Entry, now: u64) -> Option<WallTime> {
    (entry.record.wall_time != WallTime::ZERO).then(|| {
        entry
            .record
            .wall_time
            .plus_ms(now.saturating_sub(entry.wall_at))
    })
}

fn push_event(events: &mut VecDeque<Event>, stats: &mut Stats, event: Event) {
    if events.len() >= EVENTS_MAX {
        events.pop_front();
        stats.events_dropped += 1;
    }
    events.push_back(event);
}

#[cfg(test)]
mod tests;
