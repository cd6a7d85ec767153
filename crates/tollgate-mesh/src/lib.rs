//! The cluster transport: QUIC (quinn) with mutual TLS from the cluster CA, driving the
//! sans-IO replication state machine of `tollgate-replication`.
//!
//! [`Mesh::start`] binds one UDP socket (it listens and dials from it) and spawns tokio
//! tasks:
//!
//! - **the driver**, the only owner of the [`Replica`]: it takes inputs from one bounded
//!   channel (connections up and down, decoded frames, dial failures) and two watch channels
//!   (local usage, the license), arms one timer at `poll_timeout`, and after every batch of
//!   inputs sends what `poll_transmit` yields (datagrams as QUIC datagrams, each stream frame
//!   on a new unidirectional stream), publishes what `poll_event` yields (a log line and
//!   [`Mesh::subscribe`]), and publishes the aggregate (read by [`Mesh::aggregate`] without
//!   awaiting);
//! - **an accept loop** and one handshake task per inbound connection;
//! - **a dial task** per attempt: the seeds and [`Replica::dial_targets`], one attempt in
//!   flight per target, exponential backoff with jitter after a failure;
//! - **a reader and a writer per connection**: the reader decodes datagrams and streams
//!   (read to the end with a cap of
//!   [`FRAME_BYTES_MAX`](tollgate_replication::FRAME_BYTES_MAX)); the writer opens one
//!   unidirectional stream per frame.
//!
//! **Security rules.** A peer is accepted only with a certificate chained to the cluster CA
//! (the CA is the only root; another CA's certificate fails the handshake). Its node id is
//! the one DNS SAN of its certificate ([`certs::node_id_of`]), checked with
//! `validate_node_id`; a peer presenting this node's own id is refused (and raises the
//! duplicate-node alarm). When dialing a node known from its record, the server's
//! certificate must name that node id; a seed (id unknown) may be any node the CA
//! certified. A `Record` frame is accepted only from the node it describes (the replica
//! enforces it; the transport closes the connection). A frame that does not decode, or that
//! the replica refuses, closes that connection only and is counted by reason. 0-RTT and
//! session resumption are off.
//!
//! **Connections.** One per peer id. When both nodes dial each other at once, both keep the
//! connection the smaller node id dialed; otherwise a newer connection replaces the older
//! one (and `peer_connected` is called again). The QUIC idle timeout is five heartbeat
//! intervals (7.5 s by default); heartbeats keep connections alive.
//!
//! **What this crate deliberately lacks:** license verification (the agent verifies what
//! [`Event::LicenseOffered`] hands it and calls [`Mesh::set_license`]), persistence (the
//! agent persists the incarnation it passes in, and again on
//! [`Event::IncarnationChanged`]), configuration files, and HTTP. It is the only crate that
//! imports quinn.
//!
//! - [`certs`]: the cluster CA, node certificates, their files. Making a CA and issuing
//!   certificates (rcgen) needs the `ca` feature (on by default); the agent reads and checks
//!   certificates only and builds without it.
//! - [`tls`]: rustls and QUIC settings, the certificate verifiers.

pub mod certs;
mod conn;
mod dialer;
mod driver;
mod stats;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tollgate_replication::MonoTime;
use tollgate_replication::{
    Aggregate, Config, ConfigError, Event, LICENSE_BYTES_MAX, LicenseError, NodeUsage, NodeView,
    Replica,
};

pub use certs::{CertError, NodeIdError, PeerIdError};
#[cfg(feature = "ca")]
pub use certs::{ClusterCa, NodeCert};
pub use conn::{HANDSHAKES_MAX, RESOLVE_TIMEOUT, STREAM_READ_TIMEOUT};
pub use dialer::{BACKOFF_MAX_MS, BACKOFF_MIN_MS, DIALS_IN_FLIGHT_MAX};
pub use driver::{
    AorInput, CLOSE_WAIT_TIMEOUT, DIAL_CHECK_INTERVAL_MS, INPUT_BATCH_MAX, INPUT_QUEUE_MAX,
    LEAVE_FLUSH_TIMEOUT, NODES_PUBLISH_INTERVAL_MS, STREAM_QUEUE_MAX,
};
pub use stats::{Count, FRAME_NAMES, MeshStats, UdpTotals};

/// The mesh's default listening address (the agent's `[mesh] listen`).
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7172);
/// Most seed addresses.
pub const SEEDS_MAX: usize = 64;
/// AoR commands ([`Mesh::aor`]) waiting for the driver.
pub const AOR_QUEUE_MAX: usize = 256;

/// The mesh has stopped: the command was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the mesh has stopped")]
pub struct MeshStopped;

/// Events buffered for each [`Mesh::subscribe`] receiver; a slower one lags (and is told).
pub const EVENTS_CHANNEL_MAX: usize = 1024;
/// [`Mesh::shutdown`] returns after at most about this long.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// How to start a [`Mesh`].
#[derive(Clone)]
pub struct MeshConfig {
    /// This node's id; its certificate must name it (DNS SAN).
    pub node_id: String,
    /// Where to listen (and dial from): [`LISTEN_DEFAULT`] in the agent; port 0 picks one.
    pub listen: SocketAddr,
    /// The address peers should dial, carried in this node's record (`host:port`). When
    /// `None`: the listening address, or, when listening on `0.0.0.0` / `[::]`, the local
    /// address that routes to the first seed, with the listening port; empty (peers cannot
    /// dial this node, it dials them) when neither is known.
    pub advertise: Option<String>,
    /// Nodes to dial at start (any cluster members; their ids are learned from their
    /// certificates). This node's own address is skipped, so one list fits every node.
    pub seeds: Vec<SocketAddr>,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// This node's certificate (chain), PEM, signed by the cluster CA.
    pub cert_pem: String,
    /// This node's private key, PEM.
    pub key_pem: String,
    /// This start's incarnation: persisted by the caller, larger than at any earlier start.
    pub incarnation: u64,
    /// Replication timings and rules. `address` is set from `advertise`; an `rng_seed` of 0
    /// is replaced by a random one.
    pub replication: Config,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("incarnation", &self.incarnation)
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

/// Why a mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("invalid node id {node_id:?}: {reason}")]
    NodeId {
        node_id: String,
        reason: NodeIdError,
    },
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("{what}: {problem}")]
    Pem { what: &'static str, problem: String },
    #[error("the node certificate names {found:?}, not this node ({expected:?})")]
    CertNodeId { expected: String, found: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("replication configuration: {0}")]
    Replication(#[from] ConfigError),
    #[error("more than {SEEDS_MAX} seeds")]
    TooManySeeds,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the mesh must start inside a tokio runtime")]
    NoRuntime,
}

/// One node of the cluster view: the replica's view of it, and the transport's link to it
/// when directly connected.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub view: NodeView,
    pub link: Option<LinkInfo>,
}

/// The connection to a directly connected peer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInfo {
    pub remote_address: SocketAddr,
    /// This node dialed it (else it dialed in).
    pub dialed: bool,
    /// Since the connection came up, ms.
    pub connected_ms: u64,
    /// Smoothed round-trip time, as quinn estimates it.
    pub rtt: Duration,
    /// Since the last frame from it, ms.
    pub last_heard_ms: u64,
    /// UDP payload bytes on this connection (QUIC overhead included), each way.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A handle on a running mesh. Cheap to clone. Dropping the last handle stops the mesh
/// abruptly, as a crash would (no LEFT record); [`Mesh::shutdown`] leaves gracefully.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.inner.shared.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    control: mpsc::Sender<driver::Control>,
    usage: watch::Sender<NodeUsage>,
    license: watch::Sender<Option<License>>,
    aor: mpsc::Sender<driver::AorInput>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The driver owns every other task (and the connections): they go with it.
        self.driver.abort();
    }
}

/// What the driver publishes and the handles read.
pub(crate) struct Shared {
    pub(crate) node_id: String,
    pub(crate) address: String,
    /// `now` for the replica is milliseconds since this instant.
    pub(crate) epoch: Instant,
    pub(crate) counters: stats::Counters,
    pub(crate) aggregate: watch::Sender<Aggregate>,
    pub(crate) status: Mutex<Status>,
    pub(crate) nodes: Mutex<NodesSnapshot>,
    pub(crate) links: Mutex<BTreeMap<String, Link>>,
    pub(crate) events: broadcast::Sender<Event>,
}

impl Shared {
    /// The replica's clock: monotonic milliseconds since the mesh started.
    pub(crate) fn now(&self) -> MonoTime {
        MonoTime::from_ms(self.epoch.elapsed().as_millis() as u64)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Status {
    pub(crate) snapshot: Snapshot,
    pub(crate) replica: tollgate_replication::Stats,
    pub(crate) incarnation: u64,
    pub(crate) peers_connected: usize,
    pub(crate) aor_key: Option<tollgate_replication::AorKey>,
    pub(crate) aor_set_published: bool,
}

/// The aggregate and this node's own usage as counted in it, published together: the other
/// nodes' share is `aggregate - local` with no race between two reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub aggregate: Aggregate,
    /// This node's usage as the aggregate counts it (zero once it has left).
    pub local: NodeUsage,
}

pub(crate) struct NodesSnapshot {
    pub(crate) taken_at: Instant,
    pub(crate) views: Vec<NodeView>,
    pub(crate) peers_time: Option<tollgate_replication::PeersTime>,
}

pub(crate) struct Link {
    pub(crate) connection: quinn::Connection,
    pub(crate) dialed: bool,
    pub(crate) since: Instant,
    pub(crate) last_heard_ms: Arc<AtomicU64>,
}

#[derive(Debug, Clone)]
pub(crate) struct License {
    pub(crate) serial: u64,
    pub(crate) armored: Arc<[u8]>,
}

impl Mesh {
    /// Binds the socket, checks the certificates and spawns the tasks on the current tokio
    /// runtime.
    pub fn start(config: MeshConfig) -> Result<Mesh, MeshError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MeshError::NoRuntime)?;
        certs::check_node_id(&config.node_id).map_err(|reason| MeshError::NodeId {
            node_id: config.node_id.clone(),
            reason,
        })?;
        if config.seeds.len() > SEEDS_MAX {
            return Err(MeshError::TooManySeeds);
        }
        let identity = tls::Identity::from_pem(&config.ca_pem, &config.cert_pem, &config.key_pem)?;
        identity.check(&config.node_id)?;
        config.replication.validate()?;
        let transport = Arc::new(tls::transport_config(
            config.replication.heartbeat_interval_ms,
        ));
        let server = tls::server_config(&identity, transport.clone())?;
        let client = tls::client_config_of(&identity, transport)?;
        let bind_error = |source| MeshError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        let endpoint = {
            let _entered = runtime.enter();
            quinn::Endpoint::new(
                tls::endpoint_config(&identity),
                Some(server),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(bind_error)?
        };
        let address = config
            .advertise
            .clone()
            .unwrap_or_else(|| derive_address(local_addr, &config.seeds));
        let mut replication = config.replication.clone();
        replication.address = address.clone();
        if replication.rng_seed == 0 {
            replication.rng_seed = rand::random();
        }
        let replica = Replica::new(
            replication,
            &config.node_id,
            config.incarnation,
            MonoTime(0),
        )?;
        let mut seeds: Vec<SocketAddr> = Vec::new();
        for seed in config.seeds {
            if !is_own_address(seed, local_addr) && !seeds.contains(&seed) {
                seeds.push(seed);
            }
        }

        let (aggregate, _) = watch::channel(replica.aggregate(MonoTime(0)));
        let (events, _) = broadcast::channel(EVENTS_CHANNEL_MAX);
        let shared = Arc::new(Shared {
            node_id: config.node_id.clone(),
            address: address.clone(),
            epoch: Instant::now(),
            counters: stats::Counters::default(),
            aggregate,
            status: Mutex::new(Status {
                snapshot: Snapshot {
                    aggregate: replica.aggregate(MonoTime(0)),
                    local: NodeUsage::default(),
                },
                replica: replica.stats(),
                incarnation: config.incarnation,
                peers_connected: 0,
                aor_key: None,
                aor_set_published: false,
            }),
            nodes: Mutex::new(NodesSnapshot {
                taken_at: Instant::now(),
                views: replica.nodes(MonoTime(0)),
                peers_time: None,
            }),
            links: Mutex::new(BTreeMap::new()),
            events,
        });
        let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE_MAX);
        let (control_tx, control) = mpsc::channel(1);
        let (usage_tx, usage) = watch::channel(NodeUsage::default());
        let (license_tx, license) = watch::channel(None);
        let (aor_tx, aor) = mpsc::channel(AOR_QUEUE_MAX);
        tracing::info!(
            node_id = config.node_id,
            listen = %local_addr,
            address,
            seeds = seeds.len(),
            incarnation = config.incarnation,
            "mesh listening"
        );
        let driver = driver::Driver {
            shared: shared.clone(),
            replica,
            endpoint,
            client,
            inputs_tx,
            inputs,
            control,
            usage,
            license,
            aor,
            seeds,
        };
        let driver = runtime.spawn(driver.run()).abort_handle();
        Ok(Mesh {
            inner: Arc::new(Inner {
                shared,
                local_addr,
                control: control_tx,
                usage: usage_tx,
                license: license_tx,
                aor: aor_tx,
                driver,
            }),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.shared.node_id
    }

    /// The bound UDP address (with the port chosen when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address in this node's record (may be empty; see [`MeshConfig::advertise`]).
    pub fn address(&self) -> &str {
        &self.inner.shared.address
    }

    /// This node's incarnation now: the one it started with, or a larger one after
    /// [`Event::IncarnationChanged`].
    pub fn incarnation(&self) -> u64 {
        self.inner.shared.status.lock().incarnation
    }

    /// This node's usage changed: pushed to every peer (coalesced, at most once per
    /// `push_interval_ms`). Never blocks; only the latest value matters.
    pub fn set_local_usage(&self, usage: NodeUsage) {
        self.inner.usage.send_if_modified(|current| {
            let changed = *current != usage;
            *current = usage;
            changed
        });
    }

    /// The license this node holds, verified by the agent: its serial goes into this node's
    /// record, and the document is served to peers that ask.
    pub fn set_license(&self, serial: u64, armored: Vec<u8>) -> Result<(), LicenseError> {
        if armored.len() > LICENSE_BYTES_MAX {
            return Err(LicenseError::TooLong { len: armored.len() });
        }
        self.inner.license.send_replace(Some(License {
            serial,
            armored: armored.into(),
        }));
        Ok(())
    }

    /// This node's AoR set and the cluster's AoR key: changes (in order), a whole set, the
    /// key to start with, a rotation. Waits while [`AOR_QUEUE_MAX`] commands are queued;
    /// `Err` once the mesh has stopped.
    pub async fn aor(&self, input: AorInput) -> Result<(), MeshStopped> {
        self.inner.aor.send(input).await.map_err(|_| MeshStopped)
    }

    /// The cluster's AoR key as the replica holds it now (the winner among the nodes it
    /// heard): fingerprint AoRs under this one.
    pub fn aor_key(&self) -> Option<tollgate_replication::AorKey> {
        self.inner.shared.status.lock().aor_key
    }

    /// Whether this node's AoR set is published: the cluster agreed on a key and the set is
    /// fingerprinted under it. Until then, re-key it at once when [`Mesh::aor_key`] changes
    /// and say so with [`AorInput::Keyed`].
    pub fn aor_set_published(&self) -> bool {
        self.inner.shared.status.lock().aor_set_published
    }

    /// The cluster-wide figures, as of the driver's last input (a snapshot; never waits).
    pub fn aggregate(&self) -> Aggregate {
        *self.inner.shared.aggregate.borrow()
    }

    /// The aggregate with this node's own share of it, from one publication.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.shared.status.lock().snapshot
    }

    /// A receiver told of every change of [`Mesh::aggregate`].
    pub fn watch_aggregate(&self) -> watch::Receiver<Aggregate> {
        self.inner.shared.aggregate.subscribe()
    }

    /// Every node of the cluster view, this one first, with the link to each connected peer.
    /// The view is at most [`NODES_PUBLISH_INTERVAL_MS`] old (ages are brought up to now).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let (taken_at, views) = {
            let snapshot = self.inner.shared.nodes.lock();
            (snapshot.taken_at, snapshot.views.clone())
        };
        let elapsed = taken_at.elapsed().as_millis() as u64;
        let now = self.inner.shared.now();
        let links = self.inner.shared.links.lock();
        views
            .into_iter()
            .map(|mut view| {
                if !view.local {
                    view.age_ms += elapsed;
                }
                view.wall_time = view.wall_time.map(|wall| wall.plus_ms(elapsed));
                let link = links.get(&view.node_id).map(|link| {
                    let stats = link.connection.stats();
                    LinkInfo {
                        remote_address: link.connection.remote_address(),
                        dialed: link.dialed,
                        connected_ms: link.since.elapsed().as_millis() as u64,
                        rtt: stats.path.rtt,
                        last_heard_ms: now.ms().saturating_sub(link.last_heard_ms.load(Relaxed)),
                        bytes_sent: stats.udp_tx.bytes,
                        bytes_received: stats.udp_rx.bytes,
                    }
                });
                NodeInfo { view, link }
            })
            .collect()
    }

    /// This node's wall clock against its live peers' (issue 16's `CLOCK_SKEW`; the rule is
    /// [`tollgate_replication::clock`]'s), as of the node list's last publication; `None`
    /// without a peer whose clock is known.
    pub fn peers_time(&self) -> Option<tollgate_replication::PeersTime> {
        self.inner.shared.nodes.lock().peers_time
    }

    /// The replica's events (node up, suspect, expired, left, restarted, the duplicate-node
    /// alarm, incarnation changes, licenses advertised and offered), from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.shared.events.subscribe()
    }

    /// The transport's and the replica's counters.
    pub fn stats(&self) -> MeshStats {
        let shared = &self.inner.shared;
        let status = *shared.status.lock();
        let links = shared.links.lock();
        shared.counters.snapshot(
            links
                .values()
                .map(|link| UdpTotals::of(&link.connection.stats())),
            status.peers_connected,
            status.replica,
        )
    }

    /// Leaves the cluster: a LEFT record (zero usage) on a stream to every peer, a bounded
    /// wait for it to be acknowledged, every connection and the endpoint closed. Other
    /// handles stay readable; the mesh no longer runs.
    pub async fn shutdown(self) {
        let (done, finished) = oneshot::channel();
        if self
            .inner
            .control
            .send(driver::Control::Shutdown(done))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, finished).await;
        }
    }
}

/// The address to advertise when none is configured.
fn derive_address(local: SocketAddr, seeds: &[SocketAddr]) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    for seed in seeds {
        let any: SocketAddr = if seed.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // Connecting a UDP socket sends nothing; it asks the kernel for the route.
        let routed = std::net::UdpSocket::bind(any)
            .and_then(|probe| probe.connect(seed).and_then(|()| probe.local_addr()));
        if let Ok(routed) = routed
            && !routed.ip().is_unspecified()
        {
            return SocketAddr::new(routed.ip(), local.port()).to_string();
        }
    }
    String::new()
}

/// Whether `seed` is this node's own socket.
fn is_own_address(seed: SocketAddr, local: SocketAddr) -> bool {
    if seed.port() != local.port() {
        return false;
    }
    if !local.ip().is_unspecified() {
        return seed.ip() == local.ip();
    }
    // Listening on every address: the seed is this node when its IP is one of ours.
    std::net::UdpSocket::bind(SocketAddr::new(seed.ip(), 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_on_our_own_socket_is_recognised() {
        let local: SocketAddr = "127.0.0.1:7172".parse().unwrap();
        assert!(is_own_address(local, local));
        assert!(!is_own_address("127.0.0.1:7173".parse().unwrap(), local));
        assert!(!is_own_address("127.0.0.2:7172".parse().unwrap(), local));
        let any: SocketAddr = "0.0.0.0:7172".parse().unwrap();
        assert!(is_own_address("127.0.0.1:7172".parse().unwrap(), any));
        assert!(!is_own_address("192.0.2.1:7172".parse().unwrap(), any));
    }

    #[test]
    fn the_advertised_address_is_the_listening_one_or_the_route_to_a_seed() {
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(derive_address(local, &[]), "127.0.0.1:9000");
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        assert_eq!(derive_address(any, &[]), "");
        assert_eq!(
            derive_address(any, &["127.0.0.1:9001".parse().unwrap()]),
            "127.0.0.1:9000"
        );
    }
}
