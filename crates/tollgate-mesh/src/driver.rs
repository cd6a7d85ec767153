//! The driver: the one task that owns the [`Replica`]. It follows the replica's calling
//! order: every input (a connection up or down, a frame, local usage, the license, a timer)
//! goes in with `now`, then transmits are drained and sent, events drained and published,
//! the aggregate published, and one timer armed at `poll_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tollgate_replication::MonoTime;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tollgate_replication::{
    AorKey, DATAGRAM_BYTES_MAX, Destination, Event, NodeUsage, Replica, Transmit, TransmitKind,
    encode,
};

use crate::conn::{self, Input, Target, close_code};
use crate::dialer::{DialKey, Dialer};
use crate::stats::{Counters, frame_index};
use crate::{License, Link, NodesSnapshot, Shared, Snapshot, Status};

/// Inputs waiting for the driver; tasks wait when it is full.
pub const INPUT_QUEUE_MAX: usize = 1024;
/// Inputs handled before transmits are drained and the aggregate published.
pub const INPUT_BATCH_MAX: usize = 64;
/// Stream frames waiting to be written to one peer; more are dropped (counted).
pub const STREAM_QUEUE_MAX: usize = 64;
/// The node list (`Mesh::nodes`) is rebuilt at once when an event occurs (a node up,
/// suspect, expired, left…), and otherwise (usage, seqs, ages) at most this often, ms.
pub const NODES_PUBLISH_INTERVAL_MS: u64 = 50;
/// Dial targets are looked at least this often, ms (and at once when a node comes up or a
/// peer goes away).
pub const DIAL_CHECK_INTERVAL_MS: u64 = 1_000;
/// At shutdown, the LEFT record's streams get this long to be acknowledged.
pub const LEAVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Then the endpoint gets this long to close its connections cleanly.
pub const CLOSE_WAIT_TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) enum Control {
    Shutdown(oneshot::Sender<()>),
}

/// Commands about this node's AoR set and the cluster's AoR key (see [`crate::Mesh::aor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AorInput {
    /// Changes in order: `(fingerprint, registered)`.
    Changes(Vec<(u64, bool)>),
    /// The whole set (a restart, or changes were lost): replaces it.
    Load(Vec<u64>),
    /// The key this node starts with (persisted, or fresh), and the key its set is
    /// fingerprinted under: the set is not published until the cluster agrees on a key and
    /// the set is under it ([`AorInput::Keyed`]).
    Key(AorKey),
    /// This node's set is now fingerprinted under this key (re-keyed after the replica
    /// adopted it, the changes sent before).
    Keyed(AorKey),
    /// A rotation: these fresh bytes become the next generation.
    Rotate { key: [u8; 32], created_at_ms: u64 },
}

struct Peer {
    connection: quinn::Connection,
    /// `connection.stable_id()`.
    id: usize,
    /// What this node dialed to get it; `None` when the peer dialed in.
    dial_key: Option<DialKey>,
    /// A frame has come on it: the peer accepted it (a dial's backoff is over).
    confirmed: bool,
    writer: mpsc::Sender<Vec<u8>>,
}

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) replica: Replica,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client: quinn::ClientConfig,
    pub(crate) inputs_tx: mpsc::Sender<Input>,
    pub(crate) inputs: mpsc::Receiver<Input>,
    pub(crate) control: mpsc::Receiver<Control>,
    pub(crate) usage: watch::Receiver<NodeUsage>,
    pub(crate) license: watch::Receiver<Option<License>>,
    pub(crate) aor: mpsc::Receiver<AorInput>,
    pub(crate) seeds: Vec<SocketAddr>,
}

struct State {
    /// The usage last handed to the replica.
    local_usage: NodeUsage,
    peers: HashMap<String, Peer>,
    tasks: JoinSet<()>,
    dialer: Dialer,
    /// The node id each seed turned out to be.
    seed_ids: HashMap<SocketAddr, String>,
    dial_check_at: MonoTime,
    nodes_dirty: bool,
    nodes_published_at: Option<MonoTime>,
}

/// The system's wall clock, Unix ms (0 if it reads before 1970).
fn wall_clock() -> tollgate_replication::WallTime {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    tollgate_replication::WallTime::from_unix_ms(ms)
}

impl Driver {
    pub(crate) async fn run(mut self) {
        let mut state = State {
            local_usage: NodeUsage::default(),
            peers: HashMap::new(),
            tasks: JoinSet::new(),
            dialer: Dialer::default(),
            seed_ids: HashMap::new(),
            dial_check_at: MonoTime::ZERO,
            nodes_dirty: true,
            nodes_published_at: None,
        };
        state.tasks.spawn(conn::accept_loop(
            self.endpoint.clone(),
            self.inputs_tx.clone(),
            self.shared.clone(),
        ));
        loop {
            let now = self.shared.now();
            let deadline = [
                self.replica.poll_timeout(),
                Some(state.dial_check_at),
                state.nodes_due(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now.plus_ms(DIAL_CHECK_INTERVAL_MS));
            let sleep = tokio::time::sleep_until(
                (self.shared.epoch + Duration::from_millis(deadline.ms())).into(),
            );
            tokio::select! {
                biased;
                control = self.control.recv() => {
                    if let Some(Control::Shutdown(done)) = control {
                        self.leave(&mut state).await;
                        let _ = done.send(());
                    }
                    return;
                }
                () = sleep => {
                    let now = self.shared.now();
                    if self.replica.poll_timeout().is_some_and(|due| due <= now) {
                        // Counts set since (after AoR changes) go in the push now due.
                        if self.usage.has_changed().unwrap_or(false) {
                            self.apply_usage(&mut state);
                        }
                        self.replica.handle_timeout(now);
                        state.nodes_dirty = true;
                    }
                    if now >= state.dial_check_at {
                        self.dial(&mut state, now);
                    }
                }
                Some(input) = self.inputs.recv() => {
                    state.nodes_dirty = true;
                    self.on_input(&mut state, input);
                    for _ in 1..INPUT_BATCH_MAX {
                        match self.inputs.try_recv() {
                            Ok(input) => self.on_input(&mut state, input),
                            Err(_) => break,
                        }
                    }
                }
                Ok(()) = self.usage.changed() => {
                    state.nodes_dirty = true;
                    // AoR changes handed in before these counts go in the same push.
                    while let Ok(input) = self.aor.try_recv() {
                        self.on_aor(input);
                    }
                    self.apply_usage(&mut state);
                }
                Ok(()) = self.license.changed() => {
                    state.nodes_dirty = true;
                    let license = self.license.borrow_and_update().clone();
                    if let Some(license) = license {
                        let result = self.replica.set_license(
                            self.shared.now(),
                            license.serial,
                            license.armored.to_vec(),
                        );
                        debug_assert!(result.is_ok(), "the handle checks the length");
                    }
                }
                Some(input) = self.aor.recv() => {
                    self.on_aor(input);
                    // The counts these changes made go in the same push (the agent sets
                    // them right after).
                    if self.usage.has_changed().unwrap_or(false) {
                        state.nodes_dirty = true;
                        self.apply_usage(&mut state);
                    }
                }
                Some(_) = state.tasks.join_next(), if !state.tasks.is_empty() => {}
            }
            self.flush(&mut state);
        }
    }

    /// The node's counts as last set on the handle, to the replica (it pushes them).
    fn apply_usage(&mut self, state: &mut State) {
        let usage = *self.usage.borrow_and_update();
        self.replica.set_local_usage(self.shared.now(), usage);
        state.local_usage = usage;
    }

    /// One AoR input to the replica. Changes do not emit by themselves: they leave with the
    /// next push (the counts that follow them, or the replica's timer).
    fn on_aor(&mut self, input: AorInput) {
        let now = self.shared.now();
        match input {
            AorInput::Changes(changes) => {
                for (fingerprint, registered) in changes {
                    if registered {
                        self.replica.aor_add(now, fingerprint);
                    } else {
                        self.replica.aor_remove(now, fingerprint);
                    }
                }
            }
            AorInput::Load(fingerprints) => self.replica.aor_load(now, &fingerprints),
            AorInput::Key(key) => self.replica.set_aor_key(now, key),
            AorInput::Keyed(key) => self.replica.aor_keyed(now, key),
            AorInput::Rotate { key, created_at_ms } => {
                self.replica.rotate_aor_key(now, key, created_at_ms);
            }
        }
    }

    /// Step 5 of the calling order: transmits, events, then what readers see.
    fn flush(&mut self, state: &mut State) {
        let now = self.shared.now();
        // The record's wall-clock stamp (issue 16): the system clock, raw.
        self.replica.set_wall_clock(now, wall_clock());
        while let Some(transmit) = self.replica.poll_transmit(now) {
            send(&self.shared.counters, &state.peers, &transmit);
        }
        let mut had_events = false;
        while let Some(event) = self.replica.poll_event() {
            had_events = true;
            if matches!(event, Event::NodeUp { .. } | Event::NodeRestarted { .. }) {
                // A node (perhaps at a new address) to dial.
                state.dial_check_at = state.dial_check_at.min(now);
            }
            self.publish_event(event);
        }
        self.publish(state, now, had_events);
    }

    /// Publishes the aggregate, the status and the node list (see
    /// [`NODES_PUBLISH_INTERVAL_MS`]).
    fn publish(&self, state: &mut State, now: MonoTime, changed: bool) {
        let aggregate = self.replica.aggregate(now);
        let aggregate_changed = *self.shared.aggregate.borrow() != aggregate;
        let local = if self.replica.is_left() {
            NodeUsage::default()
        } else {
            state.local_usage
        };
        *self.shared.status.lock() = Status {
            snapshot: Snapshot { aggregate, local },
            replica: self.replica.stats(),
            incarnation: self.replica.version().incarnation,
            peers_connected: state.peers.len(),
            aor_key: self.replica.aor_key(),
            aor_set_published: self.replica.aor_set_published(),
        };
        // The node list at once when a node came, went or changed state (first, so that a
        // reader woken by the aggregate finds it current); for usage, seqs and ages at most
        // every NODES_PUBLISH_INTERVAL_MS: rebuilding it costs more than the aggregate.
        if changed || state.nodes_due().is_some_and(|due| due <= now) {
            *self.shared.nodes.lock() = NodesSnapshot {
                taken_at: Instant::now(),
                views: self.replica.nodes(now),
                peers_time: self.replica.peers_time(now),
            };
            state.nodes_dirty = false;
            state.nodes_published_at = Some(now);
        }
        if aggregate_changed {
            self.shared.aggregate.send_replace(aggregate);
        }
    }

    fn publish_event(&self, event: Event) {
        match &event {
            Event::NodeUp {
                node_id,
                incarnation,
            } => tracing::info!(node_id, incarnation, "node up"),
            Event::NodeRestarted {
                node_id,
                incarnation,
            } => tracing::info!(node_id, incarnation, "node restarted"),
            Event::NodeSuspect { node_id } => tracing::warn!(node_id, "node suspect"),
            Event::NodeExpired {
                node_id,
                incarnation,
            } => tracing::warn!(node_id, incarnation, "node expired"),
            Event::NodeLeft { node_id } => tracing::info!(node_id, "node left"),
            Event::NodeRemoved { node_id } => tracing::debug!(node_id, "node removed"),
            Event::DuplicateNode { via, seen } => tracing::error!(
                via,
                seen = ?seen,
                "another process claims this node's id (duplicate node id or lost state)"
            ),
            Event::IncarnationChanged { incarnation } => {
                tracing::info!(incarnation, "incarnation changed; persist it")
            }
            Event::LicenseAdvertised { node_id, serial } => {
                tracing::info!(node_id, serial, "a node advertises a newer license")
            }
            Event::LicenseOffered { from, armored } => {
                tracing::info!(from, bytes = armored.len(), "license offered by a peer")
            }
            Event::AorKeyChanged { key } => tracing::info!(
                generation = key.generation,
                key_id = format_args!("{:016x}", key.id()),
                "cluster AoR key changed"
            ),
        }
        // No subscriber is fine.
        let _ = self.shared.events.send(event);
    }

    fn on_input(&mut self, state: &mut State, input: Input) {
        let now = self.shared.now();
        match input {
            Input::Connected {
                connection,
                peer,
                dialed,
            } => self.on_connected(state, now, connection, peer, dialed),
            Input::Frame { peer, frame } => {
                // A frame of a peer with no registered connection would make the replica
                // count it as connected (and never ask to dial it): drop it.
                let Some(registered) = state.peers.get_mut(&*peer) else {
                    return;
                };
                if !registered.confirmed {
                    registered.confirmed = true;
                    if let Some(key) = &registered.dial_key {
                        state.dialer.succeeded(key);
                    }
                }
                if let Err(error) = self.replica.handle_frame(now, &peer, frame) {
                    let reason = error.reason();
                    self.shared.counters.error(reason);
                    tracing::warn!(peer = &*peer, reason, %error, "peer refused; closing its connection");
                    if let Some(removed) = self.remove_peer(state, &peer, "protocol_error") {
                        removed
                            .connection
                            .close(close_code::PROTOCOL.into(), reason.as_bytes());
                    }
                    self.replica.peer_disconnected(now, &peer);
                }
            }
            Input::Closed {
                peer,
                connection,
                reason,
            } => {
                if state.peers.get(&*peer).is_some_and(|p| p.id == connection) {
                    if let Some(removed) = self.remove_peer(state, &peer, reason)
                        && !removed.confirmed
                        && let Some(key) = &removed.dial_key
                    {
                        // Closed before a word (refused as a duplicate, say): back off.
                        let _ = state.dialer.failed(key, now, rand::random());
                    }
                    self.replica.peer_disconnected(now, &peer);
                    tracing::info!(peer = &*peer, reason, "peer disconnected");
                    state.dial_check_at = state.dial_check_at.min(now);
                }
            }
            Input::DialFailed { key, reason } => {
                let failures = state.dialer.failed(&key, now, rand::random());
                self.shared.counters.error(reason);
                // Once per target and outage; the retries (with backoff) are counted only.
                if failures == 1 {
                    tracing::warn!(target = %key, reason, "cannot connect to peer; retrying with backoff");
                } else {
                    tracing::debug!(target = %key, reason, failures, "dial failed");
                }
            }
        }
    }

    fn on_connected(
        &mut self,
        state: &mut State,
        now: MonoTime,
        connection: quinn::Connection,
        peer: String,
        dialed: Option<DialKey>,
    ) {
        let counters = &self.shared.counters;
        let outbound = dialed.is_some();
        if let Some(DialKey::Seed(addr)) = &dialed {
            state.seed_ids.insert(*addr, peer.clone());
        }
        if self.replica.is_left() {
            connection.close(close_code::SHUTDOWN.into(), b"shutdown");
            counters.retire(&connection);
            return;
        }
        let mut replaced = false;
        if let Some(existing) = state.peers.get(&peer) {
            // Both nodes dialed each other: keep, on both sides alike, the connection the
            // smaller node id dialed. Otherwise the newer connection wins (the peer
            // restarted, or the old connection is dying).
            let we_are_smaller = self.shared.node_id.as_str() < peer.as_str();
            let existing_dialed = existing.dial_key.is_some();
            if existing_dialed != outbound && existing_dialed == we_are_smaller {
                connection.close(close_code::DUPLICATE.into(), b"duplicate connection");
                counters.retire(&connection);
                counters.close("duplicate");
                if let Some(key) = &dialed {
                    state.dialer.connected(key);
                }
                return;
            }
            if let Some(old) = self.remove_peer(state, &peer, "replaced") {
                old.connection.close(
                    close_code::REPLACED.into(),
                    b"replaced by a newer connection",
                );
                counters.connections_replaced.fetch_add(1, Relaxed);
            }
            replaced = true;
        }
        if let Err(error) = self.replica.peer_connected(now, &peer) {
            let reason = error.reason();
            connection.close(close_code::REFUSED.into(), reason.as_bytes());
            counters.retire(&connection);
            counters.error(reason);
            if replaced {
                self.replica.peer_disconnected(now, &peer);
            }
            if let Some(key) = &dialed {
                let _ = state.dialer.failed(key, now, rand::random());
            }
            tracing::warn!(peer, reason, %error, "peer refused");
            return;
        }
        if let Some(key) = &dialed {
            state.dialer.connected(key);
            counters.connections_dialed.fetch_add(1, Relaxed);
        } else {
            counters.connections_accepted.fetch_add(1, Relaxed);
        }
        let (writer, frames) = mpsc::channel(STREAM_QUEUE_MAX);
        let last_heard_ms = Arc::new(AtomicU64::new(now.ms()));
        state.tasks.spawn(conn::write_streams(
            connection.clone(),
            frames,
            self.shared.clone(),
        ));
        state.tasks.spawn(conn::read_frames(
            connection.clone(),
            Arc::from(peer.as_str()),
            self.inputs_tx.clone(),
            self.shared.clone(),
            last_heard_ms.clone(),
        ));
        tracing::info!(
            peer,
            remote = %connection.remote_address(),
            dialed = outbound,
            replaced,
            "peer connected"
        );
        self.shared.links.lock().insert(
            peer.clone(),
            Link {
                connection: connection.clone(),
                dialed: outbound,
                since: Instant::now(),
                last_heard_ms,
            },
        );
        state.peers.insert(
            peer,
            Peer {
                id: connection.stable_id(),
                connection,
                dial_key: dialed,
                confirmed: false,
                writer,
            },
        );
    }

    /// Forgets a peer's connection (the caller tells the replica, or not, as it needs).
    fn remove_peer(&self, state: &mut State, peer: &str, reason: &'static str) -> Option<Peer> {
        let removed = state.peers.remove(peer)?;
        self.shared.links.lock().remove(peer);
        self.shared.counters.retire(&removed.connection);
        self.shared.counters.close(reason);
        Some(removed)
    }

    /// Dials the seeds and the replica's dial targets that are due.
    fn dial(&self, state: &mut State, now: MonoTime) {
        let mut wanted: Vec<(DialKey, Target, Option<String>)> = Vec::new();
        for seed in &self.seeds {
            let known = state.seed_ids.get(seed);
            let skip = known
                .is_some_and(|id| *id == self.shared.node_id || state.peers.contains_key(id))
                || state
                    .peers
                    .values()
                    .any(|peer| peer.connection.remote_address() == *seed);
            if !skip {
                wanted.push((DialKey::Seed(*seed), Target::Addr(*seed), None));
            }
        }
        for target in self.replica.dial_targets(now) {
            if state.peers.contains_key(&target.node_id) {
                continue;
            }
            wanted.push((
                DialKey::Node(target.node_id.clone()),
                Target::Host(target.address),
                Some(target.node_id),
            ));
        }
        state
            .dialer
            .retain(|key| wanted.iter().any(|(wanted, ..)| wanted == key));
        for (key, target, expected) in wanted {
            if !state.dialer.due(&key, now) {
                continue;
            }
            state.dialer.started(key.clone());
            self.shared.counters.dials_started.fetch_add(1, Relaxed);
            tracing::debug!(target = %key, "dialing");
            state.tasks.spawn(conn::dial(
                self.endpoint.clone(),
                self.client.clone(),
                key,
                target,
                expected,
                self.inputs_tx.clone(),
            ));
        }
        let next = now.plus_ms(DIAL_CHECK_INTERVAL_MS);
        state.dial_check_at = state
            .dialer
            .next_due()
            .map_or(next, |due| due.clamp(now.plus_ms(1), next));
    }

    /// Graceful shutdown: the LEFT record on a stream to every peer, a bounded wait for the
    /// streams to be acknowledged, then every connection closed.
    async fn leave(&mut self, state: &mut State) {
        let now = self.shared.now();
        self.replica.leave(now);
        let mut flush = JoinSet::new();
        while let Some(transmit) = self.replica.poll_transmit(now) {
            if transmit.kind == TransmitKind::Datagram {
                send(&self.shared.counters, &state.peers, &transmit);
                continue;
            }
            let bytes: Arc<[u8]> = encode(&transmit.frame).into();
            let index = frame_index(&transmit.frame);
            for peer in destination(&state.peers, &transmit.to) {
                self.shared
                    .counters
                    .sent(index, TransmitKind::Stream, bytes.len());
                let connection = peer.connection.clone();
                let bytes = bytes.clone();
                flush.spawn(async move {
                    if let Ok(stream) = conn::send_stream(&connection, &bytes).await {
                        let _ = stream.stopped().await;
                    }
                });
            }
        }
        while let Some(event) = self.replica.poll_event() {
            self.publish_event(event);
        }
        self.publish(state, now, true);
        let _ = tokio::time::timeout(LEAVE_FLUSH_TIMEOUT, async {
            while flush.join_next().await.is_some() {}
        })
        .await;
        let peers: Vec<String> = state.peers.keys().cloned().collect();
        for peer in peers {
            if let Some(removed) = self.remove_peer(state, &peer, "shutdown") {
                removed
                    .connection
                    .close(close_code::SHUTDOWN.into(), b"shutdown");
            }
        }
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"shutdown");
        let _ = tokio::time::timeout(CLOSE_WAIT_TIMEOUT, self.endpoint.wait_idle()).await;
        self.shared.status.lock().peers_connected = 0;
        tracing::info!(node_id = self.shared.node_id, "left the mesh");
    }
}

impl State {
    fn nodes_due(&self) -> Option<MonoTime> {
        if !self.nodes_dirty {
            return None;
        }
        Some(
            self.nodes_published_at
                .map_or(MonoTime::ZERO, |at| at.plus_ms(NODES_PUBLISH_INTERVAL_MS)),
        )
    }
}

fn destination<'a>(
    peers: &'a HashMap<String, Peer>,
    to: &'a Destination,
) -> Box<dyn Iterator<Item = &'a Peer> + 'a> {
    match to {
        Destination::Peer(id) => Box::new(peers.get(id).into_iter()),
        Destination::AllPeers => Box::new(peers.values()),
    }
}

/// Sends one transmit as its kind says: a QUIC datagram, or a frame queued for the peer's
/// stream writer.
fn send(counters: &Counters, peers: &HashMap<String, Peer>, transmit: &Transmit) {
    let bytes = encode(&transmit.frame);
    let index = frame_index(&transmit.frame);
    if let Destination::Peer(id) = &transmit.to
        && !peers.contains_key(id)
    {
        counters.error("no_connection");
        return;
    }
    for peer in destination(peers, &transmit.to) {
        match transmit.kind {
            TransmitKind::Datagram => {
                debug_assert!(bytes.len() <= DATAGRAM_BYTES_MAX);
                match peer.connection.send_datagram(bytes.clone().into()) {
                    Ok(()) => counters.sent(index, TransmitKind::Datagram, bytes.len()),
                    Err(error) => counters.error(match error {
                        quinn::SendDatagramError::UnsupportedByPeer => "datagram_unsupported",
                        quinn::SendDatagramError::Disabled => "datagram_disabled",
                        quinn::SendDatagramError::TooLarge => "datagram_too_large",
                        quinn::SendDatagramError::ConnectionLost(_) => "datagram_connection_lost",
                    }),
                }
            }
            TransmitKind::Stream => match peer.writer.try_send(bytes.clone()) {
                Ok(()) => counters.sent(index, TransmitKind::Stream, bytes.len()),
                Err(mpsc::error::TrySendError::Full(_)) => counters.error("stream_queue_full"),
                Err(mpsc::error::TrySendError::Closed(_)) => counters.error("stream_writer_gone"),
            },
        }
    }
}
