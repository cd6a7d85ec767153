//! The vendor's license server (`tollgate license-server`): it keeps customers, licenses,
//! API tokens, usage reports and an audit log in an embedded SQLite database (or a shared
//! PostgreSQL database, `[database] url`), and serves
//! agents over HTTPS: a lease (the license freshly signed) and usage reports, each
//! authenticated by an API token bound to the client's address.
//!
//! - [`config`]: the TOML configuration, validated in two stages.
//! - [`store`]: the database: schema migrations, every table, every query.
//! - [`keyring`]: the signing keys (`*.key`, mode 0600, activation times for rotation).
//! - [`ledger`]: the nodes' usage ledgers verified on receipt: node keys bound at the first
//!   lease, entries chained per node, flags (`reset`, `key_change`, …) stored and audited.
//! - [`lease`]: the lease rule, pure: renew, roll a subscription forward, reuse a fresh
//!   document (idempotence), refuse a lapsed contract whose license is over.
//! - [`service`]: the client API without HTTP: token, address, license, contract checks.
//! - [`api`]: the axum router (the endpoint list is in its module doc).
//! - [`tls`]: rustls with the ring provider; the `--dev` self-signed certificate.
//! - [`admin`]: the vendor's administration actions, one function per change, audited:
//!   what the admin API and the binary's CLI (`tollgate license-server admin …`) both run.
//! - [`admin_api`]: vendor users, login sessions and roles of `/api/v1/admin/…`.
//! - [`console`]: the vendor console at `/console/`, embedded, over the admin API.
//! - [`sql`]: one query layer over SQLite and PostgreSQL.
//! - [`billing`]: monthly peaks, limits and over-limit minutes per license, from the
//!   reports; CSV. [`nodes`]: every reporting node and which fell silent.
//!
//! [`LicenseServer::start`] opens everything, binds, and serves until
//! [`LicenseServer::shutdown`]. The operator and vendor guide is `docs/license-server.md`.
//!
//! **Boundary.** The server signs; it never verifies on behalf of an agent. The document
//! format, signing and the renewal rule itself (`Document::renewed`) belong to
//! `tollgate-license`; the JSON both sides speak belongs to `tollgate-license-client`'s
//! `wire` module (used here without its HTTP client).
//!
//! **Invariants.**
//! - A license's serial only grows: every signed document is stored (current and history)
//!   in the same `BEGIN IMMEDIATE` transaction that decides its serial, before any client
//!   sees it.
//! - Private keys and API tokens are never logged or stored in the clear: key files are
//!   0600 (others' access refuses the start), tokens are stored as BLAKE3 hashes and shown
//!   once at issue.
//!
//! **What it deliberately lacks:** rate limiting (put it in front), and client certificates
//! (tokens bound to addresses instead, as the seeds describe).

pub mod admin;
pub mod admin_api;
pub mod api;
pub mod backup;
pub mod billing;
pub mod config;
pub mod console;
pub mod keyring;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod nodes;
pub mod service;
pub mod sql;
pub mod store;
pub mod throttle;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tollgate_events::WallTime;

pub use api::{Clock, system_clock};
pub use config::{Config, ConfigError, TlsSource};
pub use keyring::{KeyCache, KeyRing, KeyRingError};
pub use lease::{LeaseDecision, LeaseRules};
pub use service::Service;
pub use store::{Database, Store, StoreError};
pub use tls::TlsError;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to send its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyRingError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("signing keys: none is active yet in {0} (all activate in the future)")]
    NoActiveKey(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

impl ServerError {
    /// Whether the operator must fix the configuration or files (exit code 2) rather than
    /// the server failing at run time (exit code 1).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ServerError::Config(_)
                | ServerError::Keys(_)
                | ServerError::Tls(_)
                | ServerError::NoActiveKey(_)
        )
    }
}

/// What a started server tells its operator.
#[derive(Debug, Clone)]
pub struct Started {
    pub local_addr: SocketAddr,
    /// SHA-256 fingerprint of the certificate served.
    pub fingerprint_sha256: String,
    /// The certificate file (for `--dev`: the file clients trust).
    pub cert_path: PathBuf,
    pub dev: bool,
    /// The database (a PostgreSQL URL without its password).
    pub database: String,
    pub key_dir: PathBuf,
    /// The key id signing new leases now.
    pub signing_key_id: String,
    /// Every public key line of the key directory (what agents trust).
    pub public_keys: Vec<String>,
    /// A signing key created at this start (development mode, empty key directory).
    pub created_key: Option<PathBuf>,
}

/// A running server.
pub struct LicenseServer {
    started: Started,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The once-a-minute summary of refused bad tokens.
    summary: tokio::task::JoinHandle<()>,
}

impl Drop for LicenseServer {
    fn drop(&mut self) {
        self.summary.abort();
    }
}

/// How often refused bad tokens are summarised in the log.
pub const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// One log line per interval for bad tokens, instead of one per request.
async fn summarize_refusals(service: Arc<Service>) {
    let mut interval = tokio::time::interval(REFUSAL_SUMMARY_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Some(s) = service.throttle.lock().take_summary() {
            tracing::warn!(
                bad_tokens = s.bad_tokens,
                addresses = s.addresses,
                throttled_addresses = s.throttled_addresses,
                throttled_requests = s.throttled_requests,
                interval_s = REFUSAL_SUMMARY_INTERVAL.as_secs(),
                "requests with a missing or unknown API token refused"
            );
        }
    }
}

impl std::fmt::Debug for LicenseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseServer")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl LicenseServer {
    /// Opens the database (migrating it), loads the signing keys (refusing readable key
    /// files), loads or generates the certificate, binds and starts serving. Call inside a
    /// tokio runtime.
    pub fn start(config: &Config) -> Result<LicenseServer, ServerError> {
        LicenseServer::start_with_clock(config, system_clock())
    }

    /// [`LicenseServer::start`] with an injected clock (tests).
    pub fn start_with_clock(config: &Config, clock: Clock) -> Result<LicenseServer, ServerError> {
        let now = WallTime::from_unix_ms(clock());
        // The PostgreSQL client runs its own small runtime: open it off the async context.
        let store = std::thread::scope(|s| {
            s.spawn(|| Store::open_database(&config.database))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        let mut created_key = None;
        if config.dev && !has_key_files(&config.key_dir) {
            let (key, path, _) = keyring::create_key(&config.key_dir, now)?;
            tracing::info!(key_id = %key.key_id(), path = %path.display(), "development signing key created");
            created_key = Some(path);
        }
        let keys = KeyCache::open(&config.key_dir)?;
        let admin_paths = admin::AdminPaths {
            database: config.database.clone(),
            key_dir: config.key_dir.clone(),
            lease: config.rules.lease,
        };
        let service = Arc::new(Service::new(store, keys, config.rules, admin_paths));
        let signing_key_id = service
            .signing_key_id(now)
            .ok_or_else(|| ServerError::NoActiveKey(config.key_dir.clone()))?;
        let public_keys = service
            .public_keys(now)
            .into_iter()
            .map(|k| k.public_key)
            .collect();
        let certificate = match &config.tls {
            TlsSource::Files { cert, key } => tls::load(cert, key)?,
            TlsSource::Dev { dir } => tls::dev_certificate(dir)?,
        };

        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::clone(&certificate.config)),
        )
        .handshake_timeout(HANDSHAKE_TIMEOUT);
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp(listener)
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?
            .acceptor(acceptor)
            .first_request_timeout(FIRST_REQUEST_TIMEOUT)
            .handle(handle.clone());
        let summary = tokio::spawn(summarize_refusals(Arc::clone(&service)));
        let app = api::router(service, clock).into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(server.serve(app));

        let started = Started {
            local_addr,
            fingerprint_sha256: certificate.fingerprint_sha256,
            cert_path: certificate.cert_path,
            dev: config.dev,
            database: config.database.to_string(),
            key_dir: config.key_dir.clone(),
            signing_key_id: signing_key_id.to_string(),
            public_keys,
            created_key,
        };
        tracing::info!(
            address = %started.local_addr,
            dev = started.dev,
            database = %started.database,
            key_dir = %started.key_dir.display(),
            signing_key_id = %started.signing_key_id,
            certificate_sha256 = %started.fingerprint_sha256,
            lease_days = config.rules.lease.as_secs() / 86_400,
            "license server listening"
        );
        Ok(LicenseServer {
            started,
            handle,
            task,
            summary,
        })
    }

    pub fn started(&self) -> &Started {
        &self.started
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.started.local_addr
    }

    /// Serves until `signal` completes (then shuts down gracefully) or the server fails.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        let ended = tokio::select! {
            () = signal => None,
            result = &mut self.task => Some(result),
        };
        match ended {
            None => self.shutdown().await,
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(ServerError::Serve(e)),
            Some(Err(e)) => Err(ServerError::Serve(std::io::Error::other(e))),
        }
    }

    /// Stops accepting, lets requests in flight finish (up to [`SHUTDOWN_GRACE`]), and
    /// waits for the server to end.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        match (&mut self.task).await {
            Ok(Ok(())) => {
                tracing::info!("license server stopped");
                Ok(())
            }
            Ok(Err(e)) => Err(ServerError::Serve(e)),
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
        }
    }
}

fn has_key_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".key"))
    })
}

/// A store record's time as RFC 3339: records keep Unix ms, as their SQL columns do.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    tollgate_license::timestamp::format_rfc3339(WallTime::from_unix_ms(ms))
}
