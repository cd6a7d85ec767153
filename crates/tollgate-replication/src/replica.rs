//! [`Replica`]: the replication state machine of one node.
//!
//! See the crate documentation for the calling order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::NODES_MAX;
use crate::config::{AntiEntropy, Config, ConfigError};
use crate::frame::{AorKey, DigestEntry, Frame, FrameError, Heartbeat, LICENSE_BYTES_MAX};
use crate::record::{
    Flags, NodeUsage, Record, RecordError, Version, merge_order, validate_node_id,
};
use crate::rng::Rng;

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

/// Why [`Replica::set_license`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LicenseError {
    #[error("license of {len} bytes, more than {LICENSE_BYTES_MAX}")]
    TooLong { len: usize },
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
    /// AoR deltas sent (each to every peer), applied to a copy, or already held.
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
}

#[derive(Debug, Clone, Copy)]
struct Tombstone {
    version: Version,
    removed_at: u64,
}

impl Tombstone {
    /// Versions the dead node may have emitted before it went silent: up to the one this
    /// node held, and one seq more. Heartbeats go to each peer on its own schedule, so when a
    /// node dies its last heartbeat round has reached some peers and not others: they hold
    /// two consecutive seqs, and the later one proves nothing. A node that was only cut off
    /// kept emitting, a new seq per interval, and is welcome back.
    fn blocks(&self, version: Version) -> bool {
        Tombstone::blocks_after(self.version, version)
    }

    /// Whether `version` is refused after a node last seen at `last` expired.
    fn blocks_after(last: Version, version: Version) -> bool {
        version.incarnation < last.incarnation
            || (version.incarnation == last.incarnation
                && version.seq <= last.seq.saturating_add(1))
    }
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
    /// Highest license serial asked of this peer on this connection.
    license_asked: u64,
    license_awaiting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PullState {
    /// No table received yet: pull one from the next peer.
    Needed,
    Waiting {
        peer: String,
        since: u64,
    },
    Done,
}

#[derive(Debug, Clone)]
struct LicenseAsk {
    peer: String,
    serial: u64,
    at: u64,
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
    /// Current content, emitted at the next push.
    usage: NodeUsage,
    license_serial: u64,
    license_armored: Vec<u8>,
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
        now: u64,
    ) -> Result<Replica, ConfigError> {
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
        };
        Ok(Replica {
            config,
            now,
            own,
            own_changed_seq: 0,
            usage: NodeUsage::default(),
            license_serial: 0,
            license_armored: Vec::new(),
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

    // ----------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------

    /// This node's usage changed (or not: an unchanged value costs nothing). Pushed to every
    /// peer at once, or at the end of the current `push_interval_ms`. Ignored after
    /// [`Replica::leave`].
    pub fn set_local_usage(&mut self, now: u64, usage: NodeUsage) {
        let now = self.tick(now);
        if self.left {
            return;
        }
        self.usage = usage;
        self.note_subscribers(&usage);
        self.maybe_emit(now);
    }

    /// The license this node holds, verified by the agent: its serial goes into the record
    /// (peers with a lower one will ask for it) and `armored` is served to peers that ask.
    pub fn set_license(
        &mut self,
        now: u64,
        serial: u64,
        armored: Vec<u8>,
    ) -> Result<(), LicenseError> {
        let now = self.tick(now);
        if armored.len() > LICENSE_BYTES_MAX {
            return Err(LicenseError::TooLong { len: armored.len() });
        }
        self.license_serial = serial;
        self.license_armored = armored;
        self.license_serial_seen = self.license_serial_seen.max(serial);
        if self
            .license_ask
            .as_ref()
            .is_some_and(|ask| ask.serial <= serial)
        {
            self.license_ask = None;
        }
        if !self.left {
            self.maybe_emit(now);
        }
        Ok(())
    }

    /// The transport has an authenticated connection to `peer` (its certificate's node id).
    /// Sends it this node's record, and a joiner pulls its table. A second call for the same
    /// peer is a reconnection.
    pub fn peer_connected(&mut self, now: u64, peer: &str) -> Result<(), HandleError> {
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
    pub fn peer_disconnected(&mut self, now: u64, peer: &str) {
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
        now: u64,
        from_peer: &str,
        frame: Frame,
    ) -> Result<(), HandleError> {
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
            Frame::PullRecord => {
                let interval = self.config.push_interval_ms;
                if self.allow(from_peer, now, interval, |peer| {
                    &mut peer.last_record_answer_at
                }) {
                    self.enqueue(Transmit {
                        to: Destination::Peer(from_peer.to_owned()),
                        kind: TransmitKind::Datagram,
                        frame: Frame::Record(self.own.clone()),
                    });
                    self.note_sent(now, from_peer);
                }
            }
            Frame::Digest(entries) => self.answer_digest(now, from_peer, entries),
            Frame::Table(records) => {
                for record in records {
                    self.merge_record(now, record, from_peer);
                }
                if matches!(&self.pull, PullState::Waiting { peer, .. } if peer == from_peer) {
                    self.pull = PullState::Done;
                }
            }
            Frame::Pull => {
                if self.allow(from_peer, now, ANSWER_INTERVAL_MIN_MS, |peer| {
                    &mut peer.last_table_answer_at
                }) {
                    let records = self.relayable(now).cloned().collect();
                    self.enqueue(Transmit {
                        to: Destination::Peer(from_peer.to_owned()),
                        kind: TransmitKind::Stream,
                        frame: Frame::Table(records),
                    });
                }
            }
            Frame::LicensePull { serial } => {
                let holds = self.license_serial > 0
                    && self.license_serial >= serial
                    && !self.license_armored.is_empty();
                if holds
                    && self.allow(from_peer, now, ANSWER_INTERVAL_MIN_MS, |peer| {
                        &mut peer.last_license_answer_at
                    })
                {
                    self.enqueue(Transmit {
                        to: Destination::Peer(from_peer.to_owned()),
                        kind: TransmitKind::Stream,
                        frame: Frame::License {
                            armored: self.license_armored.clone(),
                        },
                    });
                }
            }
            Frame::License { armored } => {
                let awaited = self
                    .peers
                    .get_mut(from_peer)
                    .is_some_and(|peer| std::mem::take(&mut peer.license_awaiting));
                if awaited {
                    if self
                        .license_ask
                        .as_ref()
                        .is_some_and(|ask| ask.peer == from_peer)
                    {
                        self.license_ask = None;
                    }
                    self.push_event(Event::LicenseOffered {
                        from: from_peer.to_owned(),
                        armored,
                    });
                } else {
                    self.stats.licenses_unsolicited += 1;
                }
            }
            Frame::AorKey(key) => self.handle_aor_key(from_peer, key),
            Frame::AorSummary(summary) => self.handle_aor_summary(now, from_peer, summary),
            Frame::AorDelta(delta) => self.handle_aor_delta(from_peer, delta),
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
    pub fn handle_timeout(&mut self, now: u64) {
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
        self.maybe_send_aor_delta(now);
        self.sync_aor_liveness(now);
    }

    /// Graceful shutdown: emits a LEFT record with zero usage, reliably (a stream to every
    /// peer), so this node drops out of every sum at once. Afterwards only frames are
    /// handled; nothing is emitted on timers. Drain [`Replica::poll_transmit`], give the
    /// streams a moment to flush, then close.
    pub fn leave(&mut self, now: u64) {
        let now = self.tick(now);
        if self.left {
            return;
        }
        self.left = true;
        self.usage = NodeUsage::default();
        self.emit(now, TransmitKind::Stream);
        self.sync_aor_liveness(now);
    }

    // ----------------------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------------------

    /// The next frame to send, if any. Drain it after every input.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Transmit> {
        self.tick(now);
        self.out.pop_front()
    }

    /// The next event, if any. Drain it after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Replica::handle_timeout`] must next be called (an instant in `now`'s unit);
    /// `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut due = self.liveness_due;
        let mut consider = |at: u64| due = Some(due.map_or(at, |due| due.min(at)));
        if let Some(at) = self.emission_due() {
            consider(at);
        }
        if !self.left
            && let Some(at) = self.aor.delta_due(self.config.push_interval_ms)
        {
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
        due.map(|due| due.max(self.now))
    }

    // ----------------------------------------------------------------------------------
    // Reads
    // ----------------------------------------------------------------------------------

    /// The cluster-wide figures at `now` (liveness is evaluated at `now`, whether or not
    /// [`Replica::handle_timeout`] ran).
    pub fn aggregate(&self, now: u64) -> Aggregate {
        let now = now.max(self.now);
        let mut aggregate = Aggregate {
            registered_subscribers_distinct: self.aor.sets.distinct(),
            subscribers: self.subscribers_latest.1,
            subscribers_reported_at: self.subscribers_latest.0,
            license_serial_max: self.license_serial_seen,
            ..Aggregate::default()
        };
        if self.left {
            aggregate.nodes_left += 1;
        } else {
            aggregate.nodes_live += 1;
            add_usage(&mut aggregate, &self.usage);
        }
        for entry in self.entries.values() {
            let state = state_at(entry, now, &self.config);
            match state {
                NodeState::Live => aggregate.nodes_live += 1,
                NodeState::Suspect => aggregate.nodes_suspect += 1,
                NodeState::Left => aggregate.nodes_left += 1,
                NodeState::Expired if counted(entry, state, now, &self.config) => {
                    aggregate.nodes_held += 1
                }
                NodeState::Expired => aggregate.nodes_expired += 1,
            }
            if counted(entry, state, now, &self.config) {
                add_usage(&mut aggregate, &entry.record.usage);
            }
        }
        aggregate
    }

    /// Every node in the table, this one first, then by node id.
    pub fn nodes(&self, now: u64) -> Vec<NodeView> {
        let now = now.max(self.now);
        let mut views = Vec::with_capacity(self.entries.len() + 1);
        views.push(self.local_view());
        views.extend(
            self.entries
                .values()
                .map(|entry| self.entry_view(entry, now)),
        );
        views
    }

    /// One node of the table (or this node), if held.
    pub fn node(&self, node_id: &str, now: u64) -> Option<NodeView> {
        if node_id == self.own.node_id {
            return Some(self.local_view());
        }
        let now = now.max(self.now);
        self.entries
            .get(node_id)
            .map(|entry| self.entry_view(entry, now))
    }

    /// Nodes learned from records (live or suspect, with an address) that are not connected:
    /// the transport dials them (with backoff), beside its configured seeds.
    pub fn dial_targets(&self, now: u64) -> Vec<DialTarget> {
        let now = now.max(self.now);
        self.entries
            .values()
            .filter(|entry| {
                matches!(
                    state_at(entry, now, &self.config),
                    NodeState::Live | NodeState::Suspect
                ) && !entry.record.address.is_empty()
                    && !self.peers.contains_key(&entry.record.node_id)
            })
            .map(|entry| DialTarget {
                node_id: entry.record.node_id.clone(),
                address: entry.record.address.clone(),
            })
            .collect()
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

    // ----------------------------------------------------------------------------------
    // Internals
    // ----------------------------------------------------------------------------------

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

    fn flags(&self) -> Flags {
        if self.left { Flags::LEFT } else { Flags::EMPTY }
    }

    /// The current content differs from the record last emitted.
    fn is_dirty(&self) -> bool {
        self.force_record
            || self.own.usage != self.usage
            || self.own.license_serial != self.license_serial
            || self.own.flags != self.flags()
    }

    /// When the next emission to every peer is due: a push of changed content, or, with no
    /// peer at all, the interval's seq (so a node cut off from everyone comes back with a
    /// seq past its tombstones). Heartbeats have their own schedule, per peer.
    fn emission_due(&self) -> Option<u64> {
        if self.left {
            return None;
        }
        if self.is_dirty() {
            return Some(
                self.last_push_at
                    .map_or(0, |at| at.saturating_add(self.config.push_interval_ms)),
            );
        }
        self.peers.is_empty().then(|| {
            self.last_emit_at
                .saturating_add(self.config.heartbeat_interval_ms)
        })
    }

    fn maybe_emit(&mut self, now: u64) {
        if self.emission_due().is_some_and(|due| due <= now) {
            self.emit(now, TransmitKind::Datagram);
        }
    }

    /// One emission to every peer: seq grows; the whole record goes out if its content
    /// changed, else a heartbeat. Every peer's heartbeat is then one interval away.
    fn emit(&mut self, now: u64, kind: TransmitKind) {
        let next = self.own.version().next();
        let rolled = next.incarnation != self.own.incarnation;
        if rolled {
            self.push_event(Event::IncarnationChanged {
                incarnation: next.incarnation,
            });
        }
        let changed = rolled || self.is_dirty();
        self.own.incarnation = next.incarnation;
        self.own.seq = next.seq;
        if changed {
            self.own.flags = self.flags();
            self.own.usage = self.usage;
            self.own.license_serial = self.license_serial;
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
        let frame = if changed {
            Frame::Record(self.own.clone())
        } else {
            Frame::Heartbeat(Heartbeat {
                incarnation: next.incarnation,
                seq: next.seq,
                changed_seq: self.own_changed_seq,
            })
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
    fn heartbeat(&mut self, now: u64, peer: &str) {
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
    fn send_due_heartbeats(&mut self, now: u64) {
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
    fn heard_from(&mut self, now: u64, peer: &str, is_heartbeat: bool) {
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
    fn add_peer(&mut self, now: u64, peer: &str) {
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
    fn note_sent(&mut self, now: u64, peer: &str) {
        let version = self.own.version();
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.last_sent_at = now;
        state.sent = Some(version);
        state.awaiting_answer = false;
        self.reschedule(peer);
    }

    fn set_awaiting_answer(&mut self, peer: &str, awaiting: bool) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.awaiting_answer = awaiting;
            self.reschedule(peer);
        }
    }

    /// Puts the peer's next heartbeat where its role says: a leader's one interval after its
    /// last send (half an interval while it awaits an answer), an answering node's 1.75.
    fn reschedule(&mut self, peer: &str) {
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

    fn anti_entropy(&mut self, now: u64) {
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
    fn relayable(&self, now: u64) -> impl Iterator<Item = &Record> {
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
    fn digest(&self, now: u64) -> Vec<DigestEntry> {
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

    fn answer_digest(&mut self, now: u64, peer: &str, entries: Vec<DigestEntry>) {
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
    fn worth_relaying(&self, record: &Record, theirs: Version) -> bool {
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

    fn maybe_pull(&mut self, now: u64) {
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

    /// Asks one connected peer that advertises a higher license serial for the document. One
    /// request at a time; each peer is asked for a given serial once per connection (a
    /// document the agent refuses is not fetched in a loop).
    fn maybe_ask_license(&mut self, now: u64) {
        if self.left
            || self.license_ask.is_some()
            || self.license_serial_seen <= self.license_serial
        {
            return;
        }
        let mut best: Option<(u64, &str)> = None;
        for (peer_id, peer) in &self.peers {
            let Some(entry) = self.entries.get(peer_id) else {
                continue;
            };
            let serial = entry.record.license_serial;
            if serial > self.license_serial
                && serial > peer.license_asked
                && best.is_none_or(|(best_serial, _)| serial > best_serial)
            {
                best = Some((serial, peer_id));
            }
        }
        let Some((serial, peer_id)) = best else {
            return;
        };
        let peer_id = peer_id.to_owned();
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.license_asked = serial;
            peer.license_awaiting = true;
        }
        self.enqueue(Transmit {
            to: Destination::Peer(peer_id.clone()),
            kind: TransmitKind::Stream,
            frame: Frame::LicensePull { serial },
        });
        self.license_ask = Some(LicenseAsk {
            peer: peer_id,
            serial,
            at: now,
        });
    }

    fn note_subscribers(&mut self, usage: &NodeUsage) {
        if usage.subscribers_reported_at == 0 {
            return;
        }
        let report = (usage.subscribers_reported_at, usage.subscribers);
        if report > self.subscribers_latest {
            self.subscribers_latest = report;
        }
    }

    fn note_advance(&mut self, now: u64) {
        let due = now.saturating_add(self.config.suspect_after_ms);
        self.liveness_due = Some(self.liveness_due.map_or(due, |at| at.min(due)));
    }

    fn handle_heartbeat(&mut self, now: u64, peer: &str, heartbeat: Heartbeat) {
        let version = heartbeat.version();
        let applied = match self.entries.get_mut(peer) {
            Some(entry) if version <= entry.record.version() => {
                self.stats.records_stale += 1;
                return;
            }
            Some(entry)
                if heartbeat.incarnation == entry.record.incarnation
                    && entry.record.seq >= heartbeat.changed_seq =>
            {
                entry.record.seq = heartbeat.seq;
                entry.content_since = heartbeat.changed_seq;
                entry.advanced_at = now;
                let back = matches!(entry.reported, NodeState::Suspect | NodeState::Expired);
                if !entry.record.is_left() {
                    entry.reported = NodeState::Live;
                }
                Some(back.then(|| Event::NodeUp {
                    node_id: peer.to_owned(),
                    incarnation: heartbeat.incarnation,
                }))
            }
            _ => None,
        };
        match applied {
            Some(event) => {
                self.stats.heartbeats_applied += 1;
                if let Some(event) = event {
                    self.push_event(event);
                }
                self.note_advance(now);
            }
            None => {
                if self
                    .tombstones
                    .get(peer)
                    .is_some_and(|tombstone| tombstone.blocks(version))
                {
                    self.stats.records_tombstoned += 1;
                    return;
                }
                self.stats.heartbeats_unmatched += 1;
                let interval = self.config.push_interval_ms;
                if self.allow(peer, now, interval, |peer| &mut peer.last_record_request_at) {
                    self.enqueue(Transmit {
                        to: Destination::Peer(peer.to_owned()),
                        kind: TransmitKind::Datagram,
                        frame: Frame::PullRecord,
                    });
                }
            }
        }
    }

    /// The merge rule, plus its side effects: liveness, events, the duplicate-node alarm.
    fn merge_record(&mut self, now: u64, record: Record, via: &str) {
        if record.node_id == self.own.node_id {
            self.check_own(now, record, via);
            return;
        }
        self.note_subscribers(&record.usage);
        if record.license_serial > self.license_serial_seen {
            self.license_serial_seen = record.license_serial;
            self.push_event(Event::LicenseAdvertised {
                node_id: record.node_id.clone(),
                serial: record.license_serial,
            });
        }
        if let Some(tombstone) = self.tombstones.get(&record.node_id) {
            if tombstone.blocks(record.version()) {
                self.stats.records_tombstoned += 1;
                return;
            }
            self.tombstones.remove(&record.node_id);
        }
        // An expired record kept visible (`expired_visible_ms`) blocks stale relays as its
        // tombstone would: a laggard's seq + 1 is no evidence that the node lives.
        if let Some(entry) = self.entries.get(&record.node_id)
            && state_at(entry, now, &self.config) == NodeState::Expired
            && Tombstone::blocks_after(entry.record.version(), record.version())
        {
            self.stats.records_tombstoned += 1;
            return;
        }
        let mut events: [Option<Event>; 2] = [None, None];
        match self.entries.get_mut(&record.node_id) {
            Some(entry) => {
                if merge_order(&record, &entry.record) != Ordering::Greater {
                    self.stats.records_stale += 1;
                    return;
                }
                let restarted = record.incarnation > entry.record.incarnation;
                if restarted {
                    events[0] = Some(Event::NodeRestarted {
                        node_id: record.node_id.clone(),
                        incarnation: record.incarnation,
                    });
                }
                if record.is_left() {
                    if restarted || !entry.record.is_left() {
                        events[1] = Some(Event::NodeLeft {
                            node_id: record.node_id.clone(),
                        });
                    }
                } else if !restarted
                    && matches!(entry.reported, NodeState::Suspect | NodeState::Expired)
                {
                    events[1] = Some(Event::NodeUp {
                        node_id: record.node_id.clone(),
                        incarnation: record.incarnation,
                    });
                }
                entry.reported = if record.is_left() {
                    NodeState::Left
                } else {
                    NodeState::Live
                };
                entry.content_since = record.seq;
                entry.record = record;
                entry.advanced_at = now;
            }
            None => {
                // This node is one of NODES_MAX.
                if self.entries.len() + 1 >= NODES_MAX {
                    self.stats.records_table_full += 1;
                    return;
                }
                let reported = if record.is_left() {
                    NodeState::Left
                } else {
                    events[0] = Some(Event::NodeUp {
                        node_id: record.node_id.clone(),
                        incarnation: record.incarnation,
                    });
                    NodeState::Live
                };
                self.entries.insert(
                    record.node_id.clone(),
                    Entry {
                        content_since: record.seq,
                        record,
                        advanced_at: now,
                        reported,
                    },
                );
            }
        }
        self.stats.records_merged += 1;
        for event in events.into_iter().flatten() {
            self.push_event(event);
        }
        self.note_advance(now);
    }

    /// A record carrying this node's own id. Our own echo is ignored; anything newer than
    /// what we emitted (or equal but different) was emitted by someone else with our id, or
    /// by an earlier life of ours whose incarnation was not persisted: alarm, and move past.
    fn check_own(&mut self, now: u64, record: Record, via: &str) {
        let mine = self.own.version();
        let seen = record.version();
        if seen < mine || (seen == mine && record == self.own) {
            return;
        }
        self.alarm(via, Some(seen));
        if self.left {
            return;
        }
        if seen.incarnation > self.own.incarnation {
            self.push_event(Event::IncarnationChanged {
                incarnation: seen.incarnation,
            });
        }
        self.own.incarnation = seen.incarnation;
        self.own.seq = seen.seq;
        self.force_record = true;
        // At once, not coalesced: until then our version names someone else's record.
        self.emit(now, TransmitKind::Datagram);
    }

    /// Liveness transitions (events), removal of expired and left records (tombstones),
    /// tombstone expiry; and the instant of the next such change.
    fn sweep(&mut self, now: u64) {
        let config = &self.config;
        // An expired record stays (shown, not counted past its hold) this long after expiry.
        let kept_ms = config.expired_rule.hold_ms().max(config.expired_visible_ms);
        let mut next: Option<u64> = None;
        let mut consider = |at: u64| next = Some(next.map_or(at, |next| next.min(at)));
        let mut removed: Vec<String> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        for (node_id, entry) in &mut self.entries {
            let state = state_at(entry, now, config);
            if state != entry.reported {
                match state {
                    NodeState::Suspect => events.push(Event::NodeSuspect {
                        node_id: node_id.clone(),
                    }),
                    NodeState::Expired => events.push(Event::NodeExpired {
                        node_id: node_id.clone(),
                        incarnation: entry.record.incarnation,
                    }),
                    // Only an advance makes a node live or left, and it sets `reported`.
                    NodeState::Live | NodeState::Left => {}
                }
                entry.reported = state;
            }
            let suspect_at = entry.advanced_at.saturating_add(config.suspect_after_ms);
            let expire_at = entry.advanced_at.saturating_add(config.expire_after_ms);
            let remove_at = if entry.record.is_left() {
                expire_at
            } else {
                expire_at.saturating_add(kept_ms)
            };
            if now >= remove_at {
                removed.push(node_id.clone());
            } else if let Some(at) = [suspect_at, expire_at, remove_at]
                .into_iter()
                .find(|at| *at > now)
            {
                consider(at);
            }
        }
        for node_id in removed {
            if let Some(entry) = self.entries.remove(&node_id) {
                if self.tombstones.len() >= TOMBSTONES_MAX
                    && !self.tombstones.contains_key(&node_id)
                    && let Some(oldest) = self
                        .tombstones
                        .iter()
                        .min_by_key(|(_, tombstone)| tombstone.removed_at)
                        .map(|(node_id, _)| node_id.clone())
                {
                    self.tombstones.remove(&oldest);
                }
                self.tombstones.insert(
                    node_id.clone(),
                    Tombstone {
                        version: entry.record.version(),
                        removed_at: now,
                    },
                );
                events.push(Event::NodeRemoved { node_id });
            }
        }
        let ttl = config.tombstone_ttl_ms;
        self.tombstones
            .retain(|_, tombstone| tombstone.removed_at.saturating_add(ttl) > now);
        for tombstone in self.tombstones.values() {
            consider(tombstone.removed_at.saturating_add(ttl));
        }
        self.liveness_due = next;
        for event in events {
            self.push_event(event);
        }
    }

    fn local_view(&self) -> NodeView {
        NodeView {
            node_id: self.own.node_id.clone(),
            address: self.own.address.clone(),
            state: if self.left {
                NodeState::Left
            } else {
                NodeState::Live
            },
            local: true,
            counted: !self.left,
            age_ms: 0,
            incarnation: self.own.incarnation,
            seq: self.own.seq,
            license_serial: self.license_serial,
            usage: self.usage,
        }
    }

    fn entry_view(&self, entry: &Entry, now: u64) -> NodeView {
        let state = state_at(entry, now, &self.config);
        NodeView {
            node_id: entry.record.node_id.clone(),
            address: entry.record.address.clone(),
            state,
            local: false,
            counted: counted(entry, state, now, &self.config),
            age_ms: now.saturating_sub(entry.advanced_at),
            incarnation: entry.record.incarnation,
            seq: entry.record.seq,
            license_serial: entry.record.license_serial,
            usage: entry.record.usage,
        }
    }
}

/// Whether `node` leads the heartbeats of its pair with `peer` (the other answers). Both
/// sides agree, and each node leads about half of its pairs: one bit of a stable hash
/// (FNV-1a, then MurmurHash3's 64-bit finalizer) of the two ids in order. It must never
/// change between versions: two nodes that disagree lose what it saves (both lead) or
/// answer each other's fallback heartbeats (both answer).
pub(crate) fn leads_pair(node: &str, peer: &str) -> bool {
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

fn push_event(events: &mut VecDeque<Event>, stats: &mut Stats, event: Event) {
    if events.len() >= EVENTS_MAX {
        events.pop_front();
        stats.events_dropped += 1;
    }
    events.push_back(event);
}

fn state_at(entry: &Entry, now: u64, config: &Config) -> NodeState {
    if entry.record.is_left() {
        return NodeState::Left;
    }
    let age = now.saturating_sub(entry.advanced_at);
    if age < config.suspect_after_ms {
        NodeState::Live
    } else if age < config.expire_after_ms {
        NodeState::Suspect
    } else {
        NodeState::Expired
    }
}

fn counted(entry: &Entry, state: NodeState, now: u64, config: &Config) -> bool {
    match state {
        NodeState::Live | NodeState::Suspect => true,
        NodeState::Left => false,
        NodeState::Expired => {
            let age = now.saturating_sub(entry.advanced_at);
            age < config
                .expire_after_ms
                .saturating_add(config.expired_rule.hold_ms())
        }
    }
}

fn add_usage(aggregate: &mut Aggregate, usage: &NodeUsage) {
    aggregate.calls = aggregate.calls.saturating_add(usage.calls);
    aggregate.emergency_calls = aggregate
        .emergency_calls
        .saturating_add(usage.emergency_calls);
    aggregate.registered_subscribers = aggregate
        .registered_subscribers
        .saturating_add(usage.registered_subscribers);
    aggregate.registered_contacts = aggregate
        .registered_contacts
        .saturating_add(usage.registered_contacts);
}

mod aors;
pub use aors::{AOR_BUFFER_MAX, AOR_LEAF_MAX, AOR_RANGE_FANOUT, AOR_RECONCILE_TIMEOUT_MS};

#[cfg(test)]
mod tests;
