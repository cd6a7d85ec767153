//! In-process harness: a real license server (real TLS, a real SQLite file, an injected
//! clock) on an ephemeral loopback port, the admin actions (what the CLI and the admin API
//! run) on the same database, clients of the real `tollgate-license-client`, and a tiny
//! HTTP CONNECT proxy. The CLI's parsing and printing are the binary's, tested in the root
//! package's `tests/license_server.rs`.

#![allow(dead_code)]

pub mod pg;
pub mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_events::WallTime;
use tollgate_license::timestamp::{DAY, DAY_MS, format_rfc3339};
use tollgate_license::{PublicKey, TrustedKeys};
use tollgate_license_client::{ClientConfig, LicenseClient, Url};
use tollgate_license_server::admin::{self, AdminError, AdminPaths, Contract, Ctx};
use tollgate_license_server::config::{Config, TlsSource};
use tollgate_license_server::lease::LeaseRules;
use tollgate_license_server::store::{AuditRecord, Db, Store, StoreError};
use tollgate_license_server::{Database, LicenseServer, keyring};

/// The harness's "now" at start: 2030-03-17T17:46:40Z.
pub const T0: u64 = 1_900_000_000_000;
pub const MINUTE: u64 = 60_000;
pub const LICENSE_KEY: &str = "ACME_0001";
pub const CUSTOMER: &str = "Acme Telecom";

/// The audit actor of the harness's admin actions.
pub const ACTOR: &str = "admin:test";

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub clock: Arc<AtomicU64>,
    pub server: Option<LicenseServer>,
    pub first_key: PublicKey,
}

impl Harness {
    /// A server with one signing key (activated a day before T0) and nothing else, on an
    /// SQLite file.
    pub fn start() -> Harness {
        Harness::start_on(None)
    }

    /// [`Harness::start`] on `database` (a PostgreSQL database), or SQLite with `None`.
    pub fn start_on(database: Option<Database>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join("keys");
        let (key, _, _) =
            keyring::create_key(&key_dir, WallTime::from_unix_ms(T0 - DAY_MS)).unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: database
                .unwrap_or_else(|| Database::Sqlite(dir.path().join("db/license-server.db"))),
            key_dir,
            tls: TlsSource::Dev {
                dir: dir.path().join("tls"),
            },
            rules: LeaseRules {
                lease: 14 * DAY,
                subscription_period: 30 * DAY,
                reuse_window: Duration::from_millis(10 * MINUTE),
            },
            dev: false,
        };
        let mut harness = Harness {
            dir,
            config,
            clock: Arc::new(AtomicU64::new(T0)),
            server: None,
            first_key: key.public_key(),
        };
        harness.restart();
        harness
    }

    /// Starts the server (again) on the same files.
    pub fn restart(&mut self) {
        let clock = Arc::clone(&self.clock);
        let server = LicenseServer::start_with_clock(
            &self.config,
            Arc::new(move || clock.load(Ordering::SeqCst)),
        )
        .expect("server starts");
        self.config.listen = server.local_addr();
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("running").local_addr()
    }

    pub fn url(&self) -> Url {
        format!("https://127.0.0.1:{}", self.addr().port())
            .parse()
            .unwrap()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }

    /// Runs an admin action (the library function the CLI and the admin API call) as
    /// [`ACTOR`] at the harness clock, on a thread of its own (the PostgreSQL client must not
    /// run inside an async task).
    pub fn act<T: Send>(
        &self,
        action: impl FnOnce(&Ctx<'_>, &mut Store) -> Result<T, AdminError> + Send,
    ) -> Result<T, AdminError> {
        let paths = AdminPaths {
            database: self.config.database.clone(),
            key_dir: self.config.key_dir.clone(),
            lease: self.config.rules.lease,
        };
        let now_ms = self.now();
        std::thread::scope(|s| {
            s.spawn(|| {
                let ctx = Ctx {
                    paths: &paths,
                    now_ms,
                    actor: ACTOR,
                };
                let mut store = Store::open_database(&paths.database)?;
                action(&ctx, &mut store)
            })
            .join()
            .unwrap()
        })
    }

    /// [`Harness::act`] that must succeed.
    pub fn act_ok<T: Send>(
        &self,
        action: impl FnOnce(&Ctx<'_>, &mut Store) -> Result<T, AdminError> + Send,
    ) -> T {
        self.act(action)
            .unwrap_or_else(|e| panic!("admin action: {e}"))
    }

    /// Reads the database (on a thread of its own, like [`Harness::act`]).
    pub fn read<T: Send>(&self, query: impl FnOnce(&Db<'_>) -> Result<T, StoreError> + Send) -> T {
        let database = self.config.database.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                let store = Store::open_database(&database)?;
                query(&store.read())
            })
            .join()
            .unwrap()
        })
        .unwrap_or_else(|e| panic!("read: {e}"))
    }

    /// The audit log, newest first (at most 1,000 entries), of one license or all.
    pub fn audit(&self, license: Option<&str>) -> Vec<AuditRecord> {
        self.read(|db| db.audit_log(license, 1000))
    }

    /// Whether the audit log has an entry with `action`.
    pub fn audited(&self, action: &str) -> bool {
        self.audit(None).iter().any(|a| a.action == action)
    }

    /// Adds a customer (if missing) and a license from `spec`.
    pub fn create_license_from_spec(&self, spec: &str) -> Result<(), AdminError> {
        self.act(|ctx, store| admin::create_license(ctx, store, spec, Contract::Active).map(|_| ()))
    }

    /// Adds the customer and a license of `kind` valid until `valid_until` (ms), created at
    /// the harness clock.
    pub fn create_license(&self, kind: &str, valid_until: Option<u64>) {
        if self.read(|db| db.customer(CUSTOMER)).is_none() {
            self.act_ok(|ctx, store| admin::add_customer(ctx, store, CUSTOMER));
        }
        let valid_until = valid_until
            .map(|u| {
                format!(
                    "valid_until = \"{}\"\n",
                    format_rfc3339(WallTime::from_unix_ms(u))
                )
            })
            .unwrap_or_default();
        let spec = format!(
            "license_key = \"{LICENSE_KEY}\"\ncustomer = \"{CUSTOMER}\"\nkind = \"{kind}\"\n\
             serial = 1\nvalid_from = \"2029-01-01T00:00:00Z\"\n{valid_until}\
             features = [\"pbx\"]\n\n[limits]\ncalls = 100\n"
        );
        self.create_license_from_spec(&spec)
            .unwrap_or_else(|e| panic!("license create: {e}"));
    }

    /// Issues a token for the license, allowed from `allow`; returns (id, token).
    pub fn issue_token(&self, allow: &[&str]) -> (i64, String) {
        let allow: Vec<String> = allow.iter().map(|a| (*a).to_owned()).collect();
        let (id, token, _) = self
            .act_ok(|ctx, store| admin::issue_token(ctx, store, LICENSE_KEY, &allow, None, None));
        (id, token)
    }

    pub fn client_config(&self, token: &str) -> ClientConfig {
        let mut config = ClientConfig::new(self.url(), LICENSE_KEY, token);
        config.ca_bundle = Some(self.ca());
        config.system_proxy = false;
        config.timeout = Duration::from_secs(10);
        config.node_id = Some("sp1".into());
        config
    }

    pub fn client(&self, token: &str) -> LicenseClient {
        LicenseClient::new(self.client_config(token)).unwrap()
    }

    /// Every key of the key directory, as agents would trust them.
    pub fn trusted_all(&self) -> TrustedKeys {
        let ring = tollgate_license_server::KeyRing::load(&self.config.key_dir).unwrap();
        let mut trusted = TrustedKeys::new();
        for (public, _) in ring.public_keys() {
            trusted.insert(public).unwrap();
        }
        trusted
    }

    /// A plain reqwest client trusting the server (for raw HTTP checks).
    pub fn raw(&self) -> reqwest::Client {
        let pem = std::fs::read(self.ca()).unwrap();
        reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    }
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1: counts tunnels, optionally connects upstream
/// from `egress`, optionally refuses every CONNECT with 403.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub tunnels: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    pub async fn start(egress: Option<IpAddr>, refuse: bool) -> ConnectProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ConnectProxy::from_std(listener, egress, refuse)
    }

    /// A proxy on an already bound listener (to know its address before a runtime exists).
    pub fn from_std(
        listener: std::net::TcpListener,
        egress: Option<IpAddr>,
        refuse: bool,
    ) -> ConnectProxy {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&tunnels);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let _ = tunnel(conn, egress, refuse, count).await;
                });
            }
        });
        ConnectProxy {
            addr,
            tunnels,
            task,
        }
    }

    pub fn url(&self) -> Url {
        format!("http://{}", self.addr).parse().unwrap()
    }

    pub fn count(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

async fn tunnel(
    mut conn: tokio::net::TcpStream,
    egress: Option<IpAddr>,
    refuse: bool,
    count: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    // Read the request head byte by byte: the client sends nothing else before our answer.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Ok(());
        }
        head.push(conn.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        conn.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Ok(());
    };
    if refuse {
        conn.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    let target: SocketAddr = target.parse().map_err(std::io::Error::other)?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(egress) = egress {
        socket.bind(SocketAddr::new(egress, 0))?;
    }
    let mut upstream = socket.connect(target).await?;
    count.fetch_add(1, Ordering::SeqCst);
    conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}
