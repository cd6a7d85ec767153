//! The agent in a cluster: starts the QUIC mesh (`tollgate-mesh`), feeds it this node's
//! usage and license, and turns what it learns into the cluster-wide view the license is
//! held against.
//!
//! - **Usage out:** every [`USAGE_PUSH_INTERVAL`] the node's counts go to the mesh (the
//!   replica coalesces pushes and only emits on change).
//! - **Usage in:** the aggregate minus this node's own published record is kept in
//!   atomics ([`ClusterView`]); admission reads `remote + local live calls` without a lock,
//!   so the node's own calls are never older than the admit itself.
//! - **License:** a license installed here (upload, reload, license server) is advertised to
//!   the mesh; one offered by a peer is verified and installed like any other source, so the
//!   highest valid serial wins everywhere.
//! - **Registered subscribers, counted once:** the usage tables feed this node's AoRs as
//!   cluster fingerprints (`tollgate_usage::aors`); every [`USAGE_PUSH_INTERVAL`] their
//!   changes go to the mesh, whose replica keeps every node's set and their union. The
//!   cluster's `registered_subscribers` is that union, never less than this node's own
//!   count. The cluster's AoR key is persisted in `<state_dir>/aor-key` (adopted from peers
//!   when theirs wins, rotated with `POST /api/v1/cluster/aor-key/rotate`); the index from
//!   table fingerprints to cluster fingerprints in `<state_dir>/aor-index`, written after
//!   every snapshot, so a restart restores the set without the AoR texts.
//! - **Incarnation:** read from `<state_dir>/incarnation`, incremented and written before
//!   the mesh starts, rewritten when the replica moves past a duplicate.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use tollgate_mesh::AorInput;
use tollgate_mesh::{Mesh, MeshConfig};
use tollgate_replication::{AOR_KEY_LEN, AorKey, Event, NodeUsage};
use tollgate_usage::{AorChange, AorIndexEntry};

use crate::config::MeshSettings;
use crate::state::{StateDir, StateError, write_atomically};
use crate::{AgentState, ClusterUsage};

pub const INCARNATION_FILE: &str = "incarnation";
/// The cluster's AoR key: generation, creation time (Unix ms), 32 key bytes.
pub const AOR_KEY_FILE: &str = "aor-key";
/// This node's AoR index (table fingerprint → cluster fingerprint), for restarts.
pub const AOR_INDEX_FILE: &str = "aor-index";
/// How often this node's counts are handed to the mesh.
pub const USAGE_PUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Failures starting the mesh.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("mesh certificate: {0}")]
    Cert(#[from] tollgate_mesh::CertError),
    #[error("mesh seed {seed}: {message}")]
    Seed { seed: String, message: String },
    #[error("cannot start the mesh: {0}")]
    Mesh(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Other nodes' share of the cluster aggregate, readable without a lock.
#[derive(Debug, Default)]
pub struct ClusterView {
    remote_calls: AtomicU64,
    remote_emergency_calls: AtomicU64,
    remote_registered_subscribers: AtomicU64,
    remote_registered_contacts: AtomicU64,
    /// Distinct registered AoRs over the counted nodes (the union of the AoR sets).
    registered_subscribers_distinct: AtomicU64,
    /// Platform-wide provisioned subscribers (latest report anywhere) and when.
    subscribers: AtomicU64,
    subscribers_reported_at: AtomicU64,
}

impl ClusterView {
    /// Calls on the other counted nodes.
    pub fn remote_calls(&self) -> u64 {
        self.remote_calls.load(Relaxed)
    }

    /// The cluster's usage with this node's live figures.
    pub fn with_local(&self, local: &tollgate_usage::Usage) -> ClusterUsage {
        let local_reported = local.subscribers_reported_at.map_or(0, |t| t.unix_ms());
        let subscribers = if local_reported >= self.subscribers_reported_at.load(Relaxed) {
            local.subscribers
        } else {
            self.subscribers.load(Relaxed)
        };
        ClusterUsage {
            // Saturating: the remote figures come from peers (their records saturate too).
            calls: self.remote_calls.load(Relaxed).saturating_add(local.calls),
            emergency_calls: self
                .remote_emergency_calls
                .load(Relaxed)
                .saturating_add(local.emergency_calls),
            subscribers,
            // The union holds this node's set as last handed to the mesh (at most one push
            // interval old); never less than this node's own count.
            registered_subscribers: self
                .registered_subscribers_distinct
                .load(Relaxed)
                .max(local.registered_subscribers),
            registered_contacts: self
                .remote_registered_contacts
                .load(Relaxed)
                .saturating_add(local.registered_contacts),
        }
    }

    pub fn remote_registered_contacts(&self) -> u64 {
        self.remote_registered_contacts.load(Relaxed)
    }

    /// The sum of the counted nodes' registered subscribers (an AoR registered through two
    /// nodes counts twice here), this node's live figure included.
    pub fn registered_subscribers_sum(&self, local: &tollgate_usage::Usage) -> u64 {
        self.remote_registered_subscribers
            .load(Relaxed)
            .saturating_add(local.registered_subscribers)
    }
}

/// The running mesh and the view derived from it.
#[derive(Debug)]
pub struct Cluster {
    pub mesh: Mesh,
    pub view: Arc<ClusterView>,
    /// The cluster's AoR key as this node holds it (persisted in [`AOR_KEY_FILE`]).
    pub aor_key: parking_lot::Mutex<AorKey>,
}

/// Reads `<state_dir>/aor-key`, or makes (and persists) a fresh key of generation 1.
fn load_aor_key(state_dir: &StateDir) -> Result<AorKey, ClusterError> {
    let path = state_dir.path().join(AOR_KEY_FILE);
    if let Ok(bytes) = std::fs::read(&path)
        && let Some(key) = decode_aor_key(&bytes)
    {
        return Ok(key);
    }
    let mut key = [0u8; AOR_KEY_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    let key = AorKey {
        generation: 1,
        created_at_ms: crate::wall_clock().unix_ms(),
        key,
    };
    persist_aor_key(state_dir, &key)?;
    Ok(key)
}

fn encode_aor_key(key: &AorKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + AOR_KEY_LEN);
    bytes.extend(key.generation.to_le_bytes());
    bytes.extend(key.created_at_ms.to_le_bytes());
    bytes.extend(key.key);
    bytes
}

fn decode_aor_key(bytes: &[u8]) -> Option<AorKey> {
    if bytes.len() != 16 + AOR_KEY_LEN {
        return None;
    }
    let word = |i: usize| bytes[i..i + 8].try_into().ok().map(u64::from_le_bytes);
    Some(AorKey {
        generation: word(0)?,
        created_at_ms: word(8)?,
        key: bytes[16..].try_into().ok()?,
    })
}

pub(crate) fn persist_aor_key(state_dir: &StateDir, key: &AorKey) -> Result<(), StateError> {
    write_atomically(
        &state_dir.path().join(AOR_KEY_FILE),
        &encode_aor_key(key),
        0o600,
    )
}

/// The AoR index as bytes: 32 bytes per entry (table fingerprint, cluster fingerprint,
/// key tag), little-endian.
fn encode_aor_index(entries: &[AorIndexEntry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(entries.len() * 32);
    for entry in entries {
        bytes.extend(entry.aor.0[0].to_le_bytes());
        bytes.extend(entry.aor.0[1].to_le_bytes());
        bytes.extend(entry.fingerprint.to_le_bytes());
        bytes.extend(entry.key_tag.to_le_bytes());
    }
    bytes
}

fn decode_aor_index(bytes: &[u8]) -> Vec<AorIndexEntry> {
    bytes
        .chunks_exact(32)
        .map(|chunk| {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&chunk[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            };
            AorIndexEntry {
                aor: tollgate_usage::Fingerprint([word(0), word(1)]),
                fingerprint: word(2),
                key_tag: word(3),
            }
        })
        .collect()
}

/// Writes this node's AoR index (right after each snapshot of the tables, which it
/// completes: the snapshot has the AoRs, the index their cluster fingerprints).
pub fn persist_aor_index(state: &AgentState) {
    let path = state.state_dir.path().join(AOR_INDEX_FILE);
    let bytes = encode_aor_index(&state.tables.aor_index());
    if let Err(e) = write_atomically(&path, &bytes, 0o600) {
        tracing::warn!(error = %e, "cannot persist the AoR index");
    }
}

fn node_usage(u: &tollgate_usage::Usage, peaks: tollgate_usage::PeakCounts) -> NodeUsage {
    NodeUsage {
        calls: u.calls,
        emergency_calls: u.emergency_calls,
        registered_subscribers: u.registered_subscribers,
        registered_contacts: u.registered_contacts,
        subscribers: u.subscribers,
        subscribers_reported_at: u.subscribers_reported_at.map_or(0, |t| t.unix_ms()),
        peak_calls: peaks.calls,
        peak_registered_subscribers: peaks.registered_subscribers,
    }
}

/// Reads, increments and persists the incarnation, then starts the mesh.
///
/// Also starts the tables' AoR feed under the cluster's AoR key and restores this node's
/// AoR index (call it after the snapshot is restored, before ingest starts).
pub fn start(
    settings: &MeshSettings,
    node_id: &str,
    state_dir: &StateDir,
    tables: &tollgate_usage::Tables,
) -> Result<Cluster, ClusterError> {
    let aor_key = load_aor_key(state_dir)?;
    tables.set_aor_key(&aor_key.key);
    // Until the cluster agrees on a key, keep the AoR texts to re-key them at once.
    tables.retain_aor_texts();
    if let Ok(bytes) = std::fs::read(state_dir.path().join(AOR_INDEX_FILE)) {
        let entries = decode_aor_index(&bytes);
        let kept = tables.restore_aor_index(&entries);
        tracing::info!(
            kept,
            dropped = entries.len() - kept,
            "restored the AoR index"
        );
    }
    let path = state_dir.path().join(INCARNATION_FILE);
    let previous: u64 = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let incarnation = previous + 1;
    write_atomically(&path, incarnation.to_string().as_bytes(), 0o600)?;
    let mut seeds = Vec::new();
    for seed in &settings.seeds {
        let addrs = seed.to_socket_addrs().map_err(|e| ClusterError::Seed {
            seed: seed.clone(),
            message: e.to_string(),
        })?;
        seeds.extend(addrs);
    }
    let replication = tollgate_replication::Config {
        expired_rule: settings.expired_rule,
        expired_visible_ms: settings.expired_visible_ms,
        rng_seed: u64::from_le_bytes(
            blake3::hash(node_id.as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ) ^ incarnation,
        ..tollgate_replication::Config::default()
    };
    let mesh = Mesh::start(MeshConfig {
        node_id: node_id.to_owned(),
        listen: settings.listen,
        advertise: settings.advertise.clone(),
        seeds,
        ca_pem: tollgate_mesh::certs::read_pem_file(&settings.ca)?,
        cert_pem: tollgate_mesh::certs::read_pem_file(&settings.cert)?,
        key_pem: tollgate_mesh::certs::read_pem_file(&settings.key)?,
        incarnation,
        replication,
    })
    .map_err(|e| ClusterError::Mesh(e.to_string()))?;
    tracing::info!(node_id, incarnation, mesh = %mesh.local_addr(), "mesh started");
    Ok(Cluster {
        mesh,
        view: Arc::new(ClusterView::default()),
        aor_key: parking_lot::Mutex::new(aor_key),
    })
}

/// Pushes local usage and the license to the mesh, and derives the remote share of the
/// aggregate, every [`USAGE_PUSH_INTERVAL`].
pub async fn sync_task(state: Arc<AgentState>) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let mut tick = tokio::time::interval(USAGE_PUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut advertised_serial = None;
    // This node's key and AoR set as restored, before any change.
    let key = *cluster.aor_key.lock();
    let _ = state.tables.drain_aor_changes();
    let _ = cluster.mesh.aor(AorInput::Key(key)).await;
    let _ = cluster
        .mesh
        .aor(AorInput::Load(state.tables.aor_fingerprints()))
        .await;
    loop {
        tick.tick().await;
        let rekeyed = adopt_aor_key(&state, cluster);
        let drain = state.tables.drain_aor_changes();
        if drain.resync {
            tracing::warn!("AoR changes overflowed; handing the whole set to the mesh");
            let _ = cluster
                .mesh
                .aor(AorInput::Load(state.tables.aor_fingerprints()))
                .await;
        } else if !drain.changes.is_empty() {
            let changes = drain
                .changes
                .into_iter()
                .map(|change| match change {
                    AorChange::Added(fp) => (fp, true),
                    AorChange::Removed(fp) => (fp, false),
                })
                .collect();
            let _ = cluster.mesh.aor(AorInput::Changes(changes)).await;
        }
        if let Some(key) = rekeyed {
            let _ = cluster.mesh.aor(AorInput::Keyed(key)).await;
        }
        // Published under the key the tables use: not a status read before the mesh had
        // even taken this node's key (it then reads "published", having no key to hold).
        if state.tables.aor_texts_retained()
            && cluster.mesh.aor_set_published()
            && cluster.mesh.aor_key() == Some(*cluster.aor_key.lock())
        {
            state.tables.release_aor_texts();
            tracing::info!(
                aor_key_generation = cluster.aor_key.lock().generation,
                "cluster AoR key agreed; this node's AoR set is published"
            );
        }
        let local = state.tables.usage();
        let pushed = node_usage(&local, state.tables.peaks().since_start());
        cluster.mesh.set_local_usage(pushed);
        // The aggregate holds this node's previous push; subtract this node's share as that
        // same publication counted it to get the others' share.
        let tollgate_mesh::Snapshot {
            aggregate: agg,
            local: own,
        } = cluster.mesh.snapshot();
        let v = &cluster.view;
        v.remote_calls
            .store(agg.calls.saturating_sub(own.calls), Relaxed);
        v.remote_emergency_calls.store(
            agg.emergency_calls.saturating_sub(own.emergency_calls),
            Relaxed,
        );
        v.remote_registered_subscribers.store(
            agg.registered_subscribers
                .saturating_sub(own.registered_subscribers),
            Relaxed,
        );
        v.remote_registered_contacts.store(
            agg.registered_contacts
                .saturating_sub(own.registered_contacts),
            Relaxed,
        );
        v.registered_subscribers_distinct
            .store(agg.registered_subscribers_distinct, Relaxed);
        v.subscribers.store(agg.subscribers, Relaxed);
        v.subscribers_reported_at
            .store(agg.subscribers_reported_at, Relaxed);
        // Issue 16: the highest serial any node holds is a rollback watermark here too, and
        // the peers' clocks are a trusted time.
        state.license.learn_serial(agg.license_serial_max, "mesh");
        state
            .license
            .observe_peers_time(cluster.mesh.peers_time(), crate::wall_clock().unix_ms());

        if let Some(current) = state.license.current() {
            let serial = current.document().serial;
            if advertised_serial != Some(serial) {
                match cluster
                    .mesh
                    .set_license(serial, current.armored().as_bytes().to_vec())
                {
                    Ok(()) => advertised_serial = Some(serial),
                    Err(e) => {
                        tracing::warn!(error = %e, serial, "cannot advertise the license to the mesh")
                    }
                }
            }
        }
    }
}

/// The replica holds another AoR key than the tables use (adopted from a peer, or rotated):
/// fingerprint under it from now on and persist it. Before this node's set is published
/// (the key just agreed) every AoR whose text was kept moves at once, and the caller tells
/// the mesh ([`AorInput::Keyed`], returned here) after handing it the changes; afterwards (a
/// rotation) each AoR moves at its next refresh (see `tollgate_usage::aors`). Read from the
/// mesh every tick rather than from its events, which a late subscriber could miss.
fn adopt_aor_key(state: &AgentState, cluster: &Cluster) -> Option<AorKey> {
    let key = cluster.mesh.aor_key()?;
    if *cluster.aor_key.lock() == key {
        return None;
    }
    // Before publication the mesh waits for `Keyed` whether or not the texts are still
    // kept (an AoR without its text leaves the set and joins at its next refresh).
    let rekeyed = if !cluster.mesh.aor_set_published() {
        let (moved, dropped) = state.tables.rekey_aors(&key.key);
        tracing::info!(
            moved,
            dropped,
            "adopted the cluster AoR key before publishing; re-keyed this node's AoRs"
        );
        Some(key)
    } else {
        state.tables.set_aor_key(&key.key);
        None
    };
    *cluster.aor_key.lock() = key;
    if let Err(e) = persist_aor_key(&state.state_dir, &key) {
        tracing::error!(error = %e, "cannot persist the cluster AoR key");
    }
    rekeyed
}

/// Acts on mesh events: licenses offered by peers, incarnation changes.
pub async fn event_task(state: Arc<AgentState>) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let mut events = cluster.mesh.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // A lost IncarnationChanged must not be lost on disk: persist the current one.
                tracing::warn!(missed = n, "mesh events lagged");
                let path = state.state_dir.path().join(INCARNATION_FILE);
                let incarnation = cluster.mesh.incarnation();
                if let Err(e) = write_atomically(&path, incarnation.to_string().as_bytes(), 0o600) {
                    tracing::error!(error = %e, "cannot persist the incarnation");
                }
                continue;
            }
            Err(_) => return,
        };
        match event {
            Event::LicenseOffered { from, armored } => {
                let now = crate::wall_clock().unix_ms();
                match state
                    .license
                    .install(&armored, now, &format!("mesh ({from})"))
                {
                    Ok(installed) if installed.changed => {
                        state.evaluate_license();
                    }
                    Ok(_) | Err(crate::license::InstallError::NotNewer { .. }) => {}
                    Err(e) => {
                        tracing::warn!(from, code = e.code(), error = %e, "license offered by a peer refused")
                    }
                }
            }
            Event::IncarnationChanged { incarnation } => {
                let path = state.state_dir.path().join(INCARNATION_FILE);
                if let Err(e) = write_atomically(&path, incarnation.to_string().as_bytes(), 0o600) {
                    tracing::error!(error = %e, "cannot persist the incarnation");
                }
            }
            _ => {}
        }
    }
}

/// The body of `GET /api/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub node_id: String,
    /// The cluster-wide figures the license is held against. `registered_subscribers`
    /// counts each AoR once however many nodes it is registered through;
    /// `registered_contacts` is the sum of the nodes' contacts.
    pub usage: ClusterUsage,
    /// Same as `usage.registered_contacts` (kept for older readers).
    pub registered_contacts: u64,
    /// The sum of the counted nodes' registered subscribers: above
    /// `usage.registered_subscribers` by the AoRs registered through several nodes.
    pub registered_subscribers_sum: u64,
    /// Public id of the cluster's AoR key (hex) and its generation.
    pub aor_key_id: String,
    pub aor_key_generation: u64,
    pub nodes_live: usize,
    pub nodes_suspect: usize,
    pub nodes_held: usize,
    pub nodes_expired: usize,
    pub nodes_left: usize,
    pub license_serial_max: u64,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub node_id: String,
    pub address: String,
    pub state: &'static str,
    pub local: bool,
    pub counted: bool,
    pub age_ms: u64,
    pub last_seen_ms: u64,
    /// The node's wall clock as estimated from its record's stamp (Unix ms; null when
    /// unknown); this node's own clock for this node (issue 16's `CLOCK_SKEW`).
    pub wall_time_ms: Option<u64>,
    pub incarnation: u64,
    pub seq: u64,
    pub license_serial: u64,
    pub calls: u64,
    pub emergency_calls: u64,
    pub registered_subscribers: u64,
    pub registered_contacts: u64,
    pub subscribers: u64,
    pub peak_calls: u64,
    pub rtt_ms: Option<f64>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
}

pub fn report(state: &AgentState, cluster: &Cluster) -> ClusterReport {
    let now = crate::wall_clock().unix_ms();
    let local = state.tables.usage();
    let agg = cluster.mesh.aggregate();
    let nodes = cluster
        .mesh
        .nodes()
        .into_iter()
        .map(|n| {
            let v = n.view;
            let u = if v.local {
                node_usage(&local, state.tables.peaks().since_start())
            } else {
                v.usage
            };
            NodeReport {
                state: match v.state {
                    tollgate_replication::NodeState::Live => "live",
                    tollgate_replication::NodeState::Suspect => "suspect",
                    tollgate_replication::NodeState::Expired => "expired",
                    tollgate_replication::NodeState::Left => "left",
                },
                last_seen_ms: now.saturating_sub(v.age_ms),
                wall_time_ms: v.wall_time.map(|w| w.unix_ms()),
                rtt_ms: n.link.as_ref().map(|l| l.rtt.as_secs_f64() * 1000.0),
                bytes_sent: n.link.as_ref().map(|l| l.bytes_sent),
                bytes_received: n.link.as_ref().map(|l| l.bytes_received),
                node_id: v.node_id,
                address: v.address,
                local: v.local,
                counted: v.counted,
                age_ms: v.age_ms,
                incarnation: v.incarnation,
                seq: v.seq,
                license_serial: v.license_serial,
                calls: u.calls,
                emergency_calls: u.emergency_calls,
                registered_subscribers: u.registered_subscribers,
                registered_contacts: u.registered_contacts,
                subscribers: u.subscribers,
                peak_calls: u.peak_calls,
            }
        })
        .collect();
    ClusterReport {
        node_id: state.node_id.clone(),
        usage: cluster.view.with_local(&local),
        registered_contacts: cluster
            .view
            .remote_registered_contacts()
            .saturating_add(local.registered_contacts),
        registered_subscribers_sum: cluster.view.registered_subscribers_sum(&local),
        aor_key_id: format!("{:016x}", cluster.aor_key.lock().id()),
        aor_key_generation: cluster.aor_key.lock().generation,
        nodes_live: agg.nodes_live,
        nodes_suspect: agg.nodes_suspect,
        nodes_held: agg.nodes_held,
        nodes_expired: agg.nodes_expired,
        nodes_left: agg.nodes_left,
        license_serial_max: agg.license_serial_max,
        nodes,
    }
}
