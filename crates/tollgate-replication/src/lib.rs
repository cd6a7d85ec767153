//! Sans-IO replication of usage across a tollgate cluster.
//!
//! Every node owns one small [`Record`] of its usage (calls, registrations, the
//! provisioned-subscriber report, its license serial, its mesh address), versioned by
//! `(incarnation, seq)`. A [`Replica`] pushes its own record to every peer on change, keeps
//! every other node's record by the merge rule (per node id the larger version wins —
//! idempotent, commutative, associative, so duplicated, reordered and relayed frames are
//! harmless), tracks each node's liveness from the local instant its record last advanced
//! (live → suspect → expired), repairs what datagrams lost with periodic anti-entropy over
//! streams, and answers [`Replica::aggregate`]: the cluster-wide figures a license is held
//! against. The license document itself travels the mesh too: a node that sees a peer
//! advertise a higher serial asks it for the document and hands it up
//! ([`Event::LicenseOffered`]) for the agent to verify.
//!
//! The design follows quinn-proto: a deterministic state machine with no sockets and no
//! clock. Inputs are `handle_*`/`set_*` calls that take `now`; outputs are polled.
//! `now` is milliseconds on a monotonic clock of the IO layer's choosing (an `Instant`
//! converted to ms since process start is fine); an earlier `now` than one already seen is
//! treated as the later one. `docs/replication.md` specifies records, frames, timings and
//! the measured figures.
//!
//! # Calling order
//!
//! 1. [`Replica::new`]`(config, node_id, incarnation, now)`. The IO layer persists the
//!    incarnation before: one more than at the last start (and more again whenever
//!    [`Event::IncarnationChanged`] says so).
//! 2. Connections: when the transport has an authenticated connection (mutual TLS; the
//!    node id is the certificate's DNS SAN), [`Replica::peer_connected`]; when it closes,
//!    [`Replica::peer_disconnected`].
//! 3. Every received datagram or stream: [`decode`] it, then [`Replica::handle_frame`]`(now,
//!    peer_id, frame)`. Either returning `Err` closes that connection, and only that one.
//! 4. Local changes: [`Replica::set_local_usage`], [`Replica::set_license`].
//! 5. After each of the above: drain [`Replica::poll_transmit`] (send each frame as its
//!    [`TransmitKind`] says, to its [`Destination`]), drain [`Replica::poll_event`], then
//!    arm one timer at [`Replica::poll_timeout`]; when it fires call
//!    [`Replica::handle_timeout`] and repeat step 5.
//! 6. Reads at any time: [`Replica::aggregate`], [`Replica::nodes`],
//!    [`Replica::dial_targets`] (whom to dial besides the seeds), [`Replica::stats`].
//! 7. Shutdown: [`Replica::leave`], drain [`Replica::poll_transmit`], let the streams flush
//!    (bounded wait), close.
//!
//! ```
//! use tollgate_replication::{Config, Destination, MonoTime, NodeUsage, Replica, decode, encode};
//!
//! let config = |seed| Config { rng_seed: seed, ..Config::default() };
//! let mut a = Replica::new(config(1), "node-a", 1, MonoTime(0))?;
//! let mut b = Replica::new(config(2), "node-b", 1, MonoTime(0))?;
//! a.peer_connected(MonoTime(0), "node-b")?;
//! b.peer_connected(MonoTime(0), "node-a")?;
//! a.set_local_usage(MonoTime(5), NodeUsage { calls: 3, ..NodeUsage::default() });
//! b.set_local_usage(MonoTime(5), NodeUsage { calls: 4, ..NodeUsage::default() });
//! // A perfect network: every frame from one reaches the other.
//! for _ in 0..3 {
//!     while let Some(transmit) = a.poll_transmit(MonoTime(10)) {
//!         assert!(matches!(&transmit.to, Destination::AllPeers | Destination::Peer(_)));
//!         b.handle_frame(MonoTime(10), "node-a", decode(&encode(&transmit.frame))?)?;
//!     }
//!     while let Some(transmit) = b.poll_transmit(MonoTime(10)) {
//!         a.handle_frame(MonoTime(10), "node-b", decode(&encode(&transmit.frame))?)?;
//!     }
//! }
//! assert_eq!(a.aggregate(MonoTime(10)).calls, 7);
//! assert_eq!(b.aggregate(MonoTime(10)).calls, 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`record`]: the record, its validation, the merge rule.
//! - [`frame`]: the frames, their bounds, the codec.
//! - [`config`]: timings, the expired rule, anti-entropy mode.
//! - [`replica`]: the state machine.
//! - [`sim`]: a deterministic simulated network (latency, loss, partitions, crashes,
//!   restarts) that drives many replicas; the scenario tests and the measurements use it.
//!
//! **Invariants.**
//! - A version names one record: the owner never emits two records under one
//!   `(incarnation, seq)`. Everything else (merge laws, heartbeats that carry no content)
//!   rests on it.
//! - A `Record` or `RecordAors` frame is accepted only from the node it describes (the
//!   authenticated peer);
//!   other nodes' records travel only in `Table` frames.
//! - Every table and queue has a named bound ([`NODES_MAX`], [`TOMBSTONES_MAX`],
//!   [`EVENTS_MAX`], [`TRANSMITS_MAX`], [`FRAME_BYTES_MAX`], …).
//!
//! **What this crate deliberately lacks:** sockets, QUIC, TLS and certificate checks (the
//! transport authenticates peers and passes their node id in), clocks, threads, logging,
//! persistence (the IO layer persists the incarnation), and license verification (the agent
//! verifies what [`Event::LicenseOffered`] hands it).

pub mod aorset;
pub mod clock;
pub mod config;
pub mod frame;
pub mod record;
pub mod replica;
mod rng;
pub mod sim;

/// Most nodes in a cluster, this one included: the bound of the replica's table, of a
/// `Table` frame and of a `Digest` frame.
pub const NODES_MAX: usize = 1024;

pub use aorset::{AorSets, Fp};
pub use clock::{PEER_CLOCK_SLACK_MS, PeersTime, WALL_STAMP_INTERVAL_MS, cluster_time};
pub use config::{ANTI_ENTROPY_FANOUT_MAX, AntiEntropy, Config, ConfigError, ExpiredRule};
pub use frame::{
    AOR_FRAME_FPS_MAX, AOR_KEY_LEN, AOR_RANGE_ITEMS_MAX, AorDelta, AorHeartbeat, AorKey, AorRange,
    AorRanges, AorSummary, DATAGRAM_BYTES_MAX, DIGEST_ENTRIES_MAX, DigestEntry, FRAME_BYTES_MAX,
    FRAME_VERSION, Frame, FrameError, Heartbeat, LICENSE_BYTES_MAX, RECORD_FRAME_BYTES_MAX,
    RecordAors, TABLE_RECORDS_MAX, decode, encode,
};
pub use record::{
    ADDRESS_LEN_MAX, Flags, NODE_ID_LEN_MAX, NodeUsage, Record, RecordError, RecordSet, Version,
    merge, merge_order, validate_node_id,
};
pub use replica::{
    ANSWER_INTERVAL_MIN_MS, AOR_BUFFER_MAX, AOR_LEAF_MAX, AOR_LOG_DELTAS_MAX, AOR_LOG_FPS_MAX,
    AOR_RANGE_FANOUT, AOR_RECONCILE_TIMEOUT_MS, Aggregate, Destination, DialTarget, EVENTS_MAX,
    Event, HandleError, LICENSE_ASK_TIMEOUT_MS, LicenseError, NodeState, NodeView, PEERS_MAX,
    PULL_TIMEOUT_MS, Replica, Stats, TOMBSTONES_MAX, TRANSMITS_MAX, Transmit, TransmitKind,
};
/// The replica's clock: monotonic milliseconds (the mesh's starts at 0), always passed in;
/// and the wall clock the IO layer reads for the records' stamps.
pub use tollgate_events::{MonoTime, WallTime};
