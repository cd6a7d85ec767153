//! The per-node tollgate agent: wires the sans-IO usage tables to the ingest sockets, the
//! state directory and the admin HTTP server.
//!
//! Threads and tasks of a running agent:
//! - ingest threads (`tollgate-ingest`): datagrams → tables, one batch at a time;
//! - the sweeper thread: expires calls past `max_call_duration` and lapsed contacts,
//!   a few shards per tick so ingest never waits long on a shard;
//! - tokio tasks: snapshots every `snapshot_interval`, the usage-report log line every
//!   `report_interval`, and the admin HTTP server.
//!
//! What it deliberately lacks: usage rules (in `tollgate-usage`), wire formats
//! (`tollgate-events`), socket tricks (`tollgate-ingest`).

pub mod admin_limits;
pub mod admin_tls;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod history;
pub mod http;
pub mod ledger;
pub mod license;
pub mod license_fetch;
pub mod metrics;
pub mod reconcile;
pub mod recovery;
pub mod resets;
pub mod state;
pub mod systemd;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tollgate_ingest::{
    BatchObserver, Endpoint, Ingest, IngestConfig, IngestStats, Pipeline, RecvMode, SocketOptions,
    tables_clock, wall_clock,
};
use tollgate_usage::{MonoTime, SequenceTracker, Tables, TablesConfig, WallTime};

pub use config::Config;
use state::StateDir;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Ingest(#[from] tollgate_ingest::IngestError),
    #[error("cannot bind admin HTTP on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin HTTPS: {0}")]
    AdminTls(String),
    #[error("admin HTTP server failed: {0}")]
    AdminServe(std::io::Error),
    #[error("license server client: {0}")]
    LicenseClient(String),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Counters of the snapshot writer, shown in `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct SnapshotStats {
    pub written: u64,
    pub failed: u64,
    pub last_success_unix_s: u64,
    pub last_bytes: u64,
}

/// What the admin server and the background tasks share.
pub struct AgentState {
    pub node_id: String,
    pub tables: Arc<Tables>,
    pub ingest_stats: IngestStats,
    pub started: Instant,
    pub snapshots: Mutex<SnapshotStats>,
    pub license: Arc<license::LicenseManager>,
    pub users: auth::Users,
    /// The same admission the ingest threads answer `admit` with.
    pub admission: Arc<dyn tollgate_ingest::Admission>,
    /// Admissions denied since start, by code (ingest `admit` and `GET /api/v1/admit`);
    /// read them with [`AgentState::admissions_denied`].
    pub denials: Arc<tollgate_license::DenialCounters>,
    /// The license server client, when one is configured.
    pub fetcher: Option<Arc<license_fetch::LicenseFetcher>>,
    /// The cluster mesh, when enabled.
    pub cluster: Option<cluster::Cluster>,
    /// The HEPv3 collector, when configured.
    pub hep: Option<tollgate_ingest::HepHandle>,
    pub state_dir: Arc<StateDir>,
    /// Hourly peaks for 90 days (node and cluster) and the cluster's minutes for 24 h.
    pub history: Mutex<history::History>,
    /// TLS handshakes of the admin server (all zero without `[admin] tls_cert`).
    pub admin_tls: Arc<admin_tls::TlsCounters>,
    /// Admin connections and logins (`[admin]` limits).
    pub admin_counters: Arc<admin_limits::AdminCounters>,
    pub login_throttle: admin_limits::LoginThrottle,
    /// Password hashes running at once (argon2 is ~19 MiB and tens of ms each).
    pub hash_permits: tokio::sync::Semaphore,
    /// Reconciliation with the proxies' own lists (`[[reconcile]]`, `sync-*`).
    pub reconciler: Arc<reconcile::Reconciler>,
    /// State resets seen at start, pending until an admin acknowledges them.
    pub resets: Arc<resets::StateResets>,
    /// The journal (None when it could not be opened: the agent runs, not crash-safe).
    pub journal: Option<Arc<tollgate_ingest::Journal>>,
    /// The segment a checkpoint names when there is no journal.
    pub next_segment: u64,
    /// What start-up recovery did.
    pub recovery: recovery::Recovery,
    /// The node key and the usage ledger.
    pub ledger: Arc<ledger::Ledger>,
}

/// Cluster-wide usage as this node sees it (from the mesh), for reports and the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterUsage {
    pub calls: u64,
    pub emergency_calls: u64,
    pub subscribers: u64,
    /// Distinct AoRs registered on the counted nodes (each counted once).
    pub registered_subscribers: u64,
    /// The counted nodes' registered contacts, summed.
    pub registered_contacts: u64,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl AgentState {
    /// The cluster aggregate, when this node is part of a mesh.
    pub fn cluster_usage(&self) -> Option<ClusterUsage> {
        self.cluster
            .as_ref()
            .map(|c| c.view.with_local(&self.tables.usage()))
    }

    /// Admissions denied since this agent started, by deny code (`OVER_LIMIT`, `EXPIRED`,
    /// …), codes never denied left out: the `usage.admissions_denied` object of
    /// `GET /api/v1/usage`. A sum over per-thread stripes; never blocks admission.
    pub fn admissions_denied(&self) -> std::collections::BTreeMap<String, u64> {
        self.denials
            .nonzero()
            .into_iter()
            .map(|(code, n)| (code.as_str().to_owned(), n))
            .collect()
    }

    /// Evaluates the license against current usage now (every second, and after a change).
    pub fn evaluate_license(&self) -> Arc<tollgate_license::Evaluation> {
        let now = wall_clock().unix_ms();
        // A cluster's license holds against the whole cluster's usage.
        let usage = match self.cluster_usage() {
            Some(c) => tollgate_license::Usage {
                calls: c.calls,
                emergency_calls: c.emergency_calls,
                subscribers: c.subscribers,
                registered_subscribers: c.registered_subscribers,
            },
            None => license::license_usage(&self.tables.usage()),
        };
        self.license.tick(now, &usage)
    }
}

/// Where a running agent listens: written to `<state_dir>/agent.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub node_id: String,
    pub admin: SocketAddr,
    /// The admin API is HTTPS (`[admin] tls_cert`).
    #[serde(default)]
    pub admin_tls: bool,
    /// The admin API's certificate file, when HTTPS (`tollgate status --state-dir` trusts
    /// it).
    #[serde(default)]
    pub admin_tls_cert: Option<PathBuf>,
    pub events_udp: Option<SocketAddr>,
    pub events_unix: Option<PathBuf>,
    /// The dedicated admit socket (`[ingest] admit_udp`), when configured.
    #[serde(default)]
    pub admit_udp: Option<SocketAddr>,
    /// The mesh's QUIC address, when the mesh is enabled.
    #[serde(default)]
    pub mesh: Option<SocketAddr>,
    /// The HEPv3 collector's UDP address, when configured.
    #[serde(default)]
    pub hep: Option<SocketAddr>,
}

/// Samples peaks after every ingest batch.
struct PeakSampler(Arc<Tables>);

impl BatchObserver for PeakSampler {
    fn after_batch(&self, now: MonoTime) {
        self.0.observe_peaks(now);
    }
}

/// Runs an agent until `shutdown` completes, then stops ingest, writes a final snapshot
/// and returns. `on_ready` is called once every listener is bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&RuntimeInfo),
) -> Result<(), AgentError> {
    let state_dir = Arc::new(StateDir::open(&config.state_dir)?);
    tollgate_durable::remove_stale_temps(state_dir.path());
    let resets = Arc::new(resets::StateResets::open(state_dir.path()));
    let key = state_dir.fingerprint_key()?;
    let (node_key, node_key_created) = ledger::node_key(state_dir.path())?;
    // Issue 16: the snapshot is keyed with a secret derived from the node key.
    state_dir.set_mac_key(node_key.derive_secret(state::SNAPSHOT_MAC_CONTEXT));
    // And so are the journal's records.
    let journal_key = node_key.derive_secret(state::JOURNAL_MAC_CONTEXT);
    state_dir.set_journal_key(journal_key);
    let tables = Arc::new(Tables::new(
        TablesConfig {
            max_call_duration_s: config.max_call_duration_s,
            shard_count: config.shard_count,
            max_active_calls: config.max_active_calls,
            max_aors: config.max_aors,
            max_contacts_per_aor: config.max_contacts_per_aor,
            max_expires_s: config.max_expires_s,
            // A fresh seed at every start: never the one the snapshot's writer had.
            map_seed: rand::RngCore::next_u64(&mut rand::rngs::OsRng),
            ..TablesConfig::default()
        },
        key,
    ));
    // Snapshot + journal replay, then a checkpoint before any new event: the new journal
    // starts empty and the replayed segments go.
    let recovered = recovery::recover(
        &state_dir,
        &tables,
        &Pipeline {
            tables: Arc::clone(&tables),
            sequences: Arc::new(SequenceTracker::with_key(
                &tollgate_usage::FingerprintKey::generate(&mut rand::rngs::OsRng),
            )),
            admission: Arc::new(tollgate_ingest::AdmitAll),
            observer: None,
            journal: None,
        },
        &resets,
    );
    let journal = match tollgate_ingest::Journal::open(
        &state_dir.path().join(recovery::JOURNAL_DIR),
        recovered.next_segment,
        tables.fingerprint_key_id(),
        tollgate_ingest::clock_offset_ms(),
        config.fsync_interval,
        config.journal_max_bytes,
        journal_key,
    ) {
        Ok(j) => Some(Arc::new(j)),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the journal: events are applied but a crash loses those since the last snapshot");
            None
        }
    };
    if let Err(e) = recovery::checkpoint(&tables, &state_dir, None, recovered.next_segment) {
        tracing::error!(error = %e, "cannot write the start-up snapshot; the journal replayed now is kept for the next start");
    }
    let license = Arc::new(license::LicenseManager::open(
        license::LicenseSettings {
            license_key: config.license_key.clone(),
            file: config.license_file.clone(),
            trusted: config.trusted_keys.clone(),
            host_id: config.host_id.clone(),
            unlicensed_mode: config.unlicensed_mode,
            clock_skew_tolerance_ms: config.clock_skew_tolerance_ms,
        },
        Arc::clone(&state_dir),
        wall_clock().unix_ms(),
    ));
    let fetcher = match &config.license_server {
        Some(server) => {
            let mut clients = Vec::with_capacity(server.servers.len());
            for url in &server.servers {
                let mut client = server.client.clone();
                client.server_url = url.clone();
                client.node_id = Some(config.node_id.clone());
                client.node_public_key = Some(tollgate_ledger::public_key_text(&node_key.public()));
                clients.push((
                    url.to_string(),
                    tollgate_license_client::LicenseClient::new(client)
                        .map_err(|e| AgentError::LicenseClient(e.to_string()))?,
                ));
            }
            let seed = u64::from_le_bytes(
                blake3::hash(config.node_id.as_bytes()).as_bytes()[..8]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            let schedule = tollgate_license_client::FetchSchedule::new(server.schedule, seed);
            Some(Arc::new(license_fetch::LicenseFetcher::new(
                clients, schedule,
            )))
        }
        None => None,
    };
    if let Some(server) = &config.license_server {
        // Before the first fetch has had its chance, no license is the normal state of a
        // new node: said once at info, never as an error (MISSION.md).
        license.await_license_server();
        let servers: Vec<String> = server.servers.iter().map(ToString::to_string).collect();
        tracing::info!(
            servers = %servers.join(", "),
            installed = license.current().is_some(),
            "waiting for the license server"
        );
    }
    let cluster = match &config.mesh {
        Some(settings) => Some(
            cluster::start(settings, &config.node_id, &state_dir, &tables)
                .map_err(|e| AgentError::Cluster(e.to_string()))?,
        ),
        None => None,
    };
    let denials = Arc::new(tollgate_license::DenialCounters::new());
    // After the mesh started: the incarnation file holds this start's incarnation.
    let ledger = Arc::new(ledger::Ledger::open(
        state_dir.path(),
        node_key,
        node_key_created,
        wall_clock().unix_ms(),
    )?);
    if ledger.stats().resets_seen > 0 {
        resets.record(
            resets::ResetReason::LedgerUnreadable,
            wall_clock().unix_ms(),
            "the ledger or the node key was lost: the chain starts anew or changes key",
        );
    }
    let admission: Arc<dyn tollgate_ingest::Admission> = match &cluster {
        // Admission against the cluster: the other nodes' calls (lock-free, refreshed every
        // 50 ms) plus this node's calls at this instant.
        Some(c) => {
            let (view, tables) = (Arc::clone(&c.view), Arc::clone(&tables));
            Arc::new(license::LicenseAdmission {
                gate: license.gate(),
                calls: Arc::new(move || view.remote_calls().saturating_add(tables.usage().calls)),
                denied: Arc::clone(&denials),
            })
        }
        None => Arc::new(license::LicenseAdmission::local(
            license.gate(),
            Arc::clone(&tables),
            Arc::clone(&denials),
        )),
    };

    let sequences = Arc::new(SequenceTracker::with_key(
        &tollgate_usage::FingerprintKey::generate(&mut rand::rngs::OsRng),
    ));
    let pipeline = Pipeline {
        tables: Arc::clone(&tables),
        sequences: Arc::clone(&sequences),
        admission: Arc::clone(&admission),
        observer: Some(Arc::new(PeakSampler(Arc::clone(&tables)))),
        journal: journal.clone(),
    };
    let mut endpoints = Vec::new();
    endpoints.extend(config.events_udp.map(Endpoint::Udp));
    endpoints.extend(config.events_unix.clone().map(Endpoint::Unix));
    let ingest_config = IngestConfig {
        threads_per_socket: config.ingest_threads,
        udp_replies: config.udp_replies,
        admit_udp: config.admit_udp,
        recv_batch: config.recv_batch,
        max_datagram_bytes: config.max_datagram_bytes,
        recv_mode: if config.busy_poll {
            RecvMode::Spin
        } else {
            RecvMode::Block
        },
        socket: SocketOptions {
            receive_buffer_bytes: config.receive_buffer_bytes,
            unix_mode: config.unix_mode,
        },
    };
    let hep = match config.hep_listen {
        Some(listen) => {
            let mut hep_config = tollgate_ingest::HepConfig::new(listen);
            hep_config.auth_key = config.hep_auth_key.clone().map(String::into_bytes);
            hep_config.tracker.dialog_idle_max_ms = u64::from(config.max_call_duration_s) * 1000;
            if let Some(numbers) = &config.hep_emergency_numbers {
                hep_config.tracker.emergency_numbers =
                    numbers.iter().map(|n| n.clone().into_bytes()).collect();
            }
            hep_config.recv_batch = config.recv_batch;
            hep_config.recv_mode = ingest_config.recv_mode;
            hep_config.socket = ingest_config.socket;
            Some(tollgate_ingest::HepIngest::start(
                &hep_config,
                pipeline.clone(),
            )?)
        }
        None => None,
    };
    let ingest = Ingest::start(&endpoints, &ingest_config, pipeline)?;
    let bound = ingest.endpoints();

    let state = Arc::new(AgentState {
        node_id: config.node_id.clone(),
        tables: Arc::clone(&tables),
        ingest_stats: ingest.stats().clone(),
        started: Instant::now(),
        snapshots: Mutex::new(SnapshotStats::default()),
        license: Arc::clone(&license),
        users: auth::Users::new(config.users.clone()),
        admission,
        denials,
        fetcher,
        cluster,
        hep: hep.as_ref().map(|h| h.handle()),
        state_dir: Arc::clone(&state_dir),
        history: Mutex::new(load_history(&state_dir)),
        admin_tls: Arc::default(),
        admin_counters: Arc::default(),
        login_throttle: admin_limits::LoginThrottle::new(
            config.admin_limits.login_failures_max,
            config.admin_limits.login_failures_window,
        ),
        hash_permits: tokio::sync::Semaphore::new(HASHES_AT_ONCE_MAX),
        reconciler: Arc::new(reconcile::Reconciler::new(
            Arc::clone(&tables),
            journal.clone(),
            &config.reconcile,
        )),
        resets: Arc::clone(&resets),
        journal: journal.clone(),
        next_segment: recovered.next_segment,
        recovery: recovered,
        ledger,
    });
    state.evaluate_license();

    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| AgentError::AdminBind {
            addr: config.admin_listen,
            source,
        })?;
    let listener = match &config.admin_tls {
        None => admin_tls::AdminListener::plain(listener),
        Some(tls) => {
            let server = admin_tls::server_config(&tls.cert, &tls.key)
                .map_err(|e| AgentError::AdminTls(e.to_string()))?;
            admin_tls::AdminListener::tls(listener, server, Arc::clone(&state.admin_tls))
        }
    }
    .map_err(|source| AgentError::AdminBind {
        addr: config.admin_listen,
        source,
    })?;
    let admin =
        axum::serve::Listener::local_addr(&listener).map_err(|source| AgentError::AdminBind {
            addr: config.admin_listen,
            source,
        })?;
    let admin_scheme = listener.scheme();

    let info = RuntimeInfo {
        pid: std::process::id(),
        node_id: config.node_id.clone(),
        admin,
        admin_tls: config.admin_tls.is_some(),
        admin_tls_cert: config.admin_tls.as_ref().map(|t| t.cert.clone()),
        events_udp: bound.iter().find_map(|e| match e {
            Endpoint::Udp(a) => Some(*a),
            Endpoint::Unix(_) => None,
        }),
        events_unix: bound.iter().find_map(|e| match e {
            Endpoint::Unix(p) => Some(p.clone()),
            Endpoint::Udp(_) => None,
        }),
        admit_udp: match ingest.admit_endpoint() {
            Some(Endpoint::Udp(a)) => Some(*a),
            _ => None,
        },
        mesh: state.cluster.as_ref().map(|c| c.mesh.local_addr()),
        hep: hep.as_ref().map(|h| h.local_addr()),
    };
    if let Ok(json) = serde_json::to_vec_pretty(&info)
        && let Err(e) = state_dir.write_runtime(&json)
    {
        tracing::warn!(error = %e, "cannot write runtime file");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = spawn_sweeper(
        Arc::clone(&tables),
        IdleSenders {
            sequences: Arc::clone(&sequences),
            stats: ingest.stats().register(),
        },
        config.sweep_interval,
        Arc::clone(&stop),
    );
    let syncer = journal
        .clone()
        .map(|j| spawn_syncer(j, config.fsync_interval, Arc::clone(&stop)));
    let snapshots = tokio::spawn(snapshot_task(
        Arc::clone(&state),
        Arc::clone(&state_dir),
        config.snapshot_interval,
    ));
    let reports = tokio::spawn(report_task(Arc::clone(&state), config.report_interval));
    let evaluations = tokio::spawn(license_task(Arc::clone(&state)));
    let fetches = state
        .fetcher
        .clone()
        .map(|f| tokio::spawn(f.run(Arc::clone(&state))));
    let mut reconcile_tasks = vec![tokio::spawn(reconcile::sync_task(Arc::clone(
        &state.reconciler,
    )))];
    // Corrections are journaled (a record of their own, appended before they are applied);
    // only when that is not possible (no journal, a failed append) does a checkpoint after
    // the run keep them across a crash.
    reconcile_tasks.push(tokio::spawn({
        let (state, state_dir) = (Arc::clone(&state), Arc::clone(&state_dir));
        async move {
            loop {
                state.reconciler.corrected.notified().await;
                let (s, d) = (Arc::clone(&state), Arc::clone(&state_dir));
                let _ = tokio::task::spawn_blocking(move || write_snapshot(&s, &d)).await;
            }
        }
    }));
    for i in 0..state.reconciler.source_count() {
        reconcile_tasks.push(tokio::spawn(reconcile::source_task(
            Arc::clone(&state.reconciler),
            i,
        )));
    }
    let cluster_tasks = state.cluster.is_some().then(|| {
        [
            tokio::spawn(cluster::sync_task(Arc::clone(&state))),
            tokio::spawn(cluster::event_task(Arc::clone(&state))),
        ]
    });

    tracing::info!(
        node_id = %config.node_id,
        admin = %format_args!("{admin_scheme}://{admin}"),
        events_udp = ?info.events_udp,
        events_unix = ?info.events_unix,
        state_dir = %config.state_dir.display(),
        "agent ready"
    );
    on_ready(&info);
    systemd::notify(&format!(
        "READY=1\nSTATUS=ingesting; admin on {admin_scheme}://{admin}"
    ));
    let watchdog = systemd::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        })
    });

    let listener = admin_limits::LimitedListener::new(
        listener,
        config.admin_limits,
        Arc::clone(&state.admin_counters),
    );
    let server = axum::serve(
        listener,
        http::router(Arc::clone(&state))
            .into_make_service_with_connect_info::<admin_limits::ClientAddr>(),
    )
    .with_graceful_shutdown(shutdown);
    let served = server.await;

    tracing::info!("shutting down: stopping ingest and writing a final snapshot");
    systemd::notify("STOPPING=1");
    if let Some(w) = watchdog {
        w.abort();
    }
    ingest.shutdown();
    if let Some(h) = hep {
        h.shutdown();
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sweeper.join();
    if let Some(s) = syncer {
        let _ = s.join();
    }
    snapshots.abort();
    reports.abort();
    evaluations.abort();
    if let Some(f) = fetches {
        f.abort();
    }
    for t in cluster_tasks.into_iter().flatten() {
        t.abort();
    }
    for t in reconcile_tasks {
        t.abort();
    }
    if let Some(c) = &state.cluster {
        // A LEFT record with zero usage: peers drop this node from the sum at once.
        c.mesh.clone().shutdown().await;
    }
    license.persist();
    persist_history(&state);
    write_snapshot(&state, &state_dir);
    state_dir.clear_runtime();
    served.map_err(AgentError::AdminServe)
}

/// Takes, encodes and writes one snapshot; counts the result.
fn write_snapshot(state: &AgentState, state_dir: &StateDir) {
    let result = recovery::checkpoint(
        &state.tables,
        state_dir,
        state.journal.as_deref(),
        state.next_segment,
    );
    if state.cluster.is_some() {
        cluster::persist_aor_index(state);
    }
    let mut stats = state.snapshots.lock();
    match result {
        Ok(len) => {
            stats.written += 1;
            stats.last_success_unix_s = wall_clock().unix_secs();
            stats.last_bytes = len as u64;
        }
        Err(e) => {
            stats.failed += 1;
            // Logged once per failure streak.
            if stats.failed == 1 || stats.written > 0 {
                tracing::error!(error = %e, "snapshot write failed");
            }
        }
    }
}

async fn snapshot_task(state: Arc<AgentState>, state_dir: Arc<StateDir>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (s, d) = (Arc::clone(&state), Arc::clone(&state_dir));
        let _ = tokio::task::spawn_blocking(move || write_snapshot(&s, &d)).await;
    }
}

/// Evaluates the license every second. Admission itself never waits for this: the gate
/// reads the live calls count at each `admit`; this refreshes the plan, status and logs.
async fn license_task(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(LICENSE_EVALUATION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut persisted_ms = wall_clock().unix_ms();
    loop {
        tick.tick().await;
        state.evaluate_license();
        let now_ms = sample_history(&state);
        if now_ms.saturating_sub(persisted_ms) >= history::PERSIST_INTERVAL_MS {
            persisted_ms = now_ms;
            let s = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || persist_history(&s)).await;
        }
    }
}

/// Folds this second into the long history: this node's peak since the hour began (from
/// the tables' minute peaks) and the cluster aggregate now. Returns the time used.
fn sample_history(state: &AgentState) -> u64 {
    let now_ms = wall_clock().unix_ms();
    // The hour is the wall clock's; the minute peaks are on the tables' clock, so the
    // window is measured back from the tables' now.
    let tables_now = tables_clock();
    let hour_start = tables_now.minus_ms(now_ms % history::HOUR_MS);
    let peaks = state.tables.peaks().max_since(tables_now, hour_start);
    let usage = state.tables.usage();
    let node = history::Sample {
        calls: peaks.calls.max(usage.calls),
        registered_subscribers: peaks
            .registered_subscribers
            .max(usage.registered_subscribers),
    };
    let cluster = state.cluster_usage().map(|c| history::Sample {
        calls: c.calls,
        registered_subscribers: c.registered_subscribers,
    });
    state.history.lock().observe(now_ms, node, cluster);
    now_ms
}

fn load_history(state_dir: &StateDir) -> history::History {
    let path = state_dir.path().join(history::HISTORY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => history::History::decode(&bytes).unwrap_or_else(|e| {
            let aside = path.with_extension("json.unreadable");
            let moved = std::fs::rename(&path, &aside);
            tracing::error!(error = %e, moved_to = %aside.display(), moved = moved.is_ok(), "usage history unreadable; starting a new one");
            history::History::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => history::History::default(),
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot read the usage history; starting a new one");
            history::History::default()
        }
    }
}

/// Writes `history.json` when an hour changed (durably: temp file, fsync, rename).
fn persist_history(state: &AgentState) {
    let bytes = {
        let mut h = state.history.lock();
        if !h.is_dirty() {
            return;
        }
        h.encode()
    };
    let path = state.state_dir.path().join(history::HISTORY_FILE);
    if let Err(e) = state::write_atomically(&path, &bytes, 0o600) {
        state.history.lock().mark_dirty();
        tracing::warn!(error = %e, "cannot write the usage history");
    }
}

/// Most admin password hashes (argon2) running at once; further logins wait their turn, so
/// a burst of bad logins cannot take every core or much memory.
pub const HASHES_AT_ONCE_MAX: usize = 2;

/// How often the license is evaluated against usage.
pub const LICENSE_EVALUATION_INTERVAL: Duration = Duration::from_secs(1);

async fn report_task(state: Arc<AgentState>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let u = state.tables.usage();
        append_ledger_entry(&state);
        tracing::info!(
            "Usage report: {} calls, {} subscribers, {} registered subscribers",
            u.calls,
            u.subscribers,
            u.registered_subscribers
        );
        if let Some(fetcher) = &state.fetcher {
            fetcher.send_report(&state).await;
        }
    }
}

/// The sweeper's share of sequence tracking: the unseen tails of senders gone silent are
/// counted as lost once they have been idle for `SEQ_IDLE_MS`.
struct IdleSenders {
    sequences: Arc<SequenceTracker>,
    /// The sweeper's own ingest counters (only `lost_datagrams`), summed with the threads'.
    stats: Arc<tollgate_ingest::ThreadStats>,
}

impl IdleSenders {
    fn sweep(&self, now: MonoTime) {
        let lost = self
            .sequences
            .sweep_idle(now, tollgate_usage::sequence::SEQ_IDLE_MS);
        if lost > 0 {
            let mut local = tollgate_ingest::LocalStats {
                lost_datagrams: lost,
                ..Default::default()
            };
            self.stats.publish(&mut local);
        }
    }
}

/// Syncs the journal every `every` (nothing to do when it is zero: appends sync inline).
fn spawn_syncer(
    journal: Arc<tollgate_ingest::Journal>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("journal-sync".into())
        .spawn(move || {
            let tick = every.max(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                journal.sync();
            }
            journal.sync();
        })
        .unwrap_or_else(|e| panic!("cannot start the journal sync thread: {e}"))
}

/// Records this interval in the ledger: counts at its end, peaks within it, the license,
/// denials and state resets. A write failure is logged and counted; the next interval tries
/// again (its entry then covers both intervals).
pub fn append_ledger_entry(state: &AgentState) {
    let now = wall_clock();
    let entry = ledger_entry(state, now);
    if let Err(e) = state.ledger.append(entry) {
        tracing::error!(error = %e, "cannot append to the usage ledger");
    }
}

/// The ledger entry for the interval from the ledger's head to `now`.
pub fn ledger_entry(state: &AgentState, now: WallTime) -> tollgate_ledger::Entry {
    let start_ms = state.ledger.interval_start_ms().min(now.unix_ms());
    let u = state.tables.usage();
    // The interval is on the wall clock; the minute peaks on the tables' clock.
    let tables_now = tables_clock();
    let peaks = state
        .tables
        .peaks()
        .max_since(tables_now, tables_now.minus_ms(now.unix_ms() - start_ms));
    let evaluation = state
        .license
        .last_evaluation()
        .unwrap_or_else(|| state.evaluate_license());
    let incarnation =
        std::fs::read_to_string(state.state_dir.path().join(cluster::INCARNATION_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
    tollgate_ledger::Entry {
        node_id: state.node_id.clone(),
        incarnation,
        interval_start_ms: start_ms,
        interval_end_ms: now.unix_ms(),
        counts: tollgate_ledger::Figures {
            calls: u.calls,
            emergency_calls: u.emergency_calls,
            registered_subscribers: u.registered_subscribers,
            provisioned_subscribers: u.subscribers,
        },
        peaks: tollgate_ledger::Figures {
            calls: peaks.calls.max(u.calls),
            // Per-interval peaks of these two are not sampled: the value at the end.
            emergency_calls: u.emergency_calls,
            registered_subscribers: peaks.registered_subscribers.max(u.registered_subscribers),
            provisioned_subscribers: u.subscribers,
        },
        license_serial: state.license.current().map(|c| c.document().serial),
        license_status: evaluation.status.as_str().to_owned(),
        denied: state.admissions_denied().into_iter().collect(),
        // Every state reset this agent saw at start (tollgate_state_resets_total{reason}).
        state_resets: state.resets.counts().iter().map(|(_, n)| n).sum(),
    }
}

fn spawn_sweeper(
    tables: Arc<Tables>,
    idle_senders: IdleSenders,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sweeper".into())
        .spawn(move || {
            // A full pass over the shards every `every`, in ten steps, so no step holds
            // the shards for long.
            let step = every / 10;
            let budget = tables.shard_count().div_ceil(10);
            while !stop.load(Ordering::Relaxed) {
                let now = tollgate_ingest::tables_clock();
                let swept = tables.sweep(now, budget);
                if swept.pass_completed {
                    idle_senders.sweep(now);
                }
                // Quiet minutes have peaks too: sample here as well as after ingest batches.
                tables.observe_peaks(now);
                std::thread::sleep(step);
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the sweeper thread: {e}"))
}
