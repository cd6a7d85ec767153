//! Lease throughput of the license server, end to end: real TLS on loopback, the real
//! license client, every lease signed anew (reuse window 0: an Ed25519 signature and one
//! durable database transaction each), on SQLite or PostgreSQL, with one or more servers on
//! the same database.
//!
//! ```text
//! cargo run --release -p tollgate-license-server --example lease_throughput -- \
//!     [--url postgres://user@host:port/db] [--leases 2000] [--concurrency 16] [--servers 1]
//! ```
//!
//! Without `--url`: an SQLite file in a temp dir. The PostgreSQL database must be empty (a
//! fresh `createdb`). Figures go in docs/performance.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tollgate_events::WallTime;
use tollgate_license_client::{ClientConfig, LicenseClient};
use tollgate_license_server::admin::{self, AdminPaths, Ctx};
use tollgate_license_server::config::{Config, TlsSource};
use tollgate_license_server::lease::LeaseRules;
use tollgate_license_server::{Database, LicenseServer, Store, keyring, system_clock};

const DAY: Duration = Duration::from_secs(86_400);

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let leases: usize = arg("--leases").map_or(2000, |v| v.parse().expect("--leases N"));
    let concurrency: usize =
        arg("--concurrency").map_or(16, |v| v.parse().expect("--concurrency N"));
    let servers: usize = arg("--servers").map_or(1, |v| v.parse().expect("--servers N"));
    let dir = tempfile::tempdir().expect("temp dir");
    let database = match arg("--url") {
        Some(url) => Database::Postgres(url),
        None => Database::Sqlite(dir.path().join("ls.db")),
    };
    let key_dir = dir.path().join("keys");
    let now = system_clock()();
    keyring::create_key(&key_dir, WallTime::from_unix_ms(now) - DAY).expect("key");
    let paths = AdminPaths {
        database: database.clone(),
        key_dir: key_dir.clone(),
        lease: 14 * DAY,
    };
    let ctx = Ctx {
        paths: &paths,
        now_ms: now,
        actor: "admin:bench",
    };
    let mut store = Store::open_database(&database).expect("database");
    admin::add_customer(&ctx, &mut store, "Bench").expect("customer");
    let spec = "license_key = \"BENCH_1\"\ncustomer = \"Bench\"\nkind = \"perpetual\"\nserial = 1\n\
                valid_from = \"2020-01-01T00:00:00Z\"\n[limits]\ncalls = 100\n";
    admin::create_license(
        &ctx,
        &mut store,
        spec,
        tollgate_license_client::Contract::Active,
    )
    .expect("license");
    let (_, token, _) = admin::issue_token(
        &ctx,
        &mut store,
        "BENCH_1",
        &["127.0.0.1".into()],
        None,
        None,
    )
    .expect("token");
    drop(store);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut started = Vec::new();
        for _ in 0..servers {
            let config = Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                database: database.clone(),
                key_dir: key_dir.clone(),
                tls: TlsSource::Dev {
                    dir: dir.path().join("tls"),
                },
                rules: LeaseRules {
                    lease: 14 * DAY,
                    subscription_period: 30 * DAY,
                    reuse_window: Duration::ZERO,
                },
                dev: true,
            };
            started.push(LicenseServer::start(&config).expect("server"));
        }
        let clients: Vec<LicenseClient> = started
            .iter()
            .map(|s| {
                let mut config = ClientConfig::new(
                    format!("https://127.0.0.1:{}", s.local_addr().port())
                        .parse()
                        .unwrap(),
                    "BENCH_1",
                    &token,
                );
                config.ca_bundle = Some(dir.path().join("tls/cert.pem"));
                config.system_proxy = false;
                config.timeout = Duration::from_secs(30);
                LicenseClient::new(config).expect("client")
            })
            .collect();
        // Warm up connections.
        for c in &clients {
            c.fetch_lease().await.expect("warm-up lease");
        }
        let next = Arc::new(AtomicUsize::new(0));
        let begin = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..concurrency {
            let client = clients[i % clients.len()].clone();
            let next = Arc::clone(&next);
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < leases {
                    client.fetch_lease().await.expect("lease");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let took = begin.elapsed();
        println!(
            "{} leases signed in {:.2} s: {:.0} leases/s ({} servers, concurrency {}, {})",
            leases,
            took.as_secs_f64(),
            leases as f64 / took.as_secs_f64(),
            servers,
            concurrency,
            match &database {
                Database::Sqlite(_) => "SQLite".to_owned(),
                Database::Postgres(_) => "PostgreSQL".to_owned(),
            }
        );
        for s in started {
            s.shutdown().await.expect("shutdown");
        }
    });
}
