//! The license server on PostgreSQL (`[database] url`): a private cluster started for the
//! test (Debian's server binaries), the same migrations and queries as on SQLite, and two
//! servers on one database signing leases at once without ever issuing a serial twice.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use support::pg::PgCluster;
use support::{Harness, LICENSE_KEY, MINUTE, T0};
use tollgate_events::WallTime;
use tollgate_license::timestamp::DAY_MS;
use tollgate_license_client::{LicenseClient, UsageFigures, UsageReport};
use tollgate_license_server::{Database, LicenseServer, Store};

fn report(node: &str, calls: u64) -> UsageReport {
    UsageReport {
        node_id: node.into(),
        agent_version: "0.1.0".into(),
        timestamp: WallTime::from_unix_ms(T0),
        since: None,
        license_serial: Some(1),
        node: UsageFigures {
            calls,
            ..UsageFigures::default()
        },
        cluster: None,
        admissions_denied: [("OVER_LIMIT".to_owned(), 4)].into(),
        ledger: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_rotate_with_a_grace_period_on_postgresql() {
    let pg = PgCluster::start();
    let url = pg.create_database("tokens");
    let h = Harness::start_on(Some(Database::Postgres(url)));
    support::tokens::token_expiry_and_rotation(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_reports_and_restarts_work_on_postgresql() {
    let pg = PgCluster::start();
    let url = pg.create_database("basic");
    let mut h = Harness::start_on(Some(Database::Postgres(url.clone())));
    h.create_license("subscription", Some(T0 + 5 * DAY_MS));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    h.advance(11 * MINUTE);

    let first = h.client(&token).fetch_lease().await.unwrap();
    assert_eq!(first.serial, 2, "created as serial 1, renewed once");
    assert_eq!(
        first.valid_until.map(WallTime::unix_ms),
        Some(h.now() + 30 * DAY_MS)
    );
    h.client(&token)
        .send_usage(&report("sp1", 7))
        .await
        .unwrap();
    let reports = h.read(|db| db.reports(Some(LICENSE_KEY), 20));
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].report.node_id, "sp1");
    let denied = serde_json::to_value(&reports[0].report.admissions_denied).unwrap();
    assert_eq!(denied, serde_json::json!({ "OVER_LIMIT": 4 }));

    // A bad token is refused the same way as on SQLite.
    let refused = h.client("tg_wrong").fetch_lease().await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");

    h.stop().await;
    h.advance(DAY_MS);
    h.restart();
    let second = h.client(&token).fetch_lease().await.unwrap();
    assert_eq!(
        second.serial,
        first.serial + 1,
        "the data survived the restart"
    );
    let history: Vec<(u64, String)> = h
        .read(|db| db.documents(LICENSE_KEY))
        .into_iter()
        .map(|d| (d.serial, d.cause))
        .collect();
    assert!(
        history.contains(&(1, "created".into())) && history.contains(&(3, "lease".into())),
        "{history:?}"
    );
    let audit = h.audit(Some(LICENSE_KEY));
    assert!(
        audit.iter().any(|a| a.action == "lease.signed")
            && audit.iter().any(|a| a.action == "token.issue"),
        "{audit:?}"
    );

    // Reopening migrates nothing and keeps the version.
    let version = std::thread::spawn(move || Store::open_postgres(&url).unwrap().schema_version())
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        version,
        tollgate_license_server::store::MIGRATIONS.len() as u32
    );
    h.stop().await;
}

/// Two servers on one database, every request signs (no reuse window), requests spread
/// over both at once: every answered serial is distinct and the history has no gap.
async fn two_servers_never_issue_a_serial_twice(database: Database) {
    let mut h = Harness::start_on(Some(database));
    h.config.rules.reuse_window = std::time::Duration::ZERO;
    h.stop().await;
    h.restart();
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let clock = Arc::clone(&h.clock);
    let mut second_config = h.config.clone();
    second_config.listen = "127.0.0.1:0".parse().unwrap();
    let second = LicenseServer::start_with_clock(
        &second_config,
        Arc::new(move || clock.load(Ordering::SeqCst)),
    )
    .expect("the second server starts on the same database");

    let a = h.client(&token);
    let mut config_b = h.client_config(&token);
    config_b.server_url = format!("https://127.0.0.1:{}", second.local_addr().port())
        .parse()
        .unwrap();
    let b = LicenseClient::new(config_b).unwrap();

    const LEASES: usize = 40;
    let mut tasks = Vec::new();
    for i in 0..LEASES {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { client.fetch_lease().await }));
    }
    let mut serials = BTreeSet::new();
    for task in tasks {
        let lease = task.await.unwrap().expect("every lease is answered");
        assert!(lease.renewed);
        assert!(
            serials.insert(lease.serial),
            "serial {} issued twice",
            lease.serial
        );
    }
    let expected: BTreeSet<u64> = (2..=LEASES as u64 + 1).collect();
    assert_eq!(
        serials, expected,
        "one serial per lease, no gap, none twice"
    );
    let history = h.read(|db| db.documents(LICENSE_KEY));
    assert_eq!(
        history.iter().filter(|d| d.cause == "lease").count(),
        LEASES,
        "{history:?}"
    );
    second.shutdown().await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgresql_never_issue_a_serial_twice() {
    let pg = PgCluster::start();
    let url = pg.create_database("concurrent");
    two_servers_never_issue_a_serial_twice(Database::Postgres(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_sqlite_file_never_issue_a_serial_twice() {
    let dir = tempfile::tempdir().unwrap();
    two_servers_never_issue_a_serial_twice(Database::Sqlite(dir.path().join("shared.db"))).await;
}

/// `backup` while the server signs leases, from PostgreSQL; `restore` into SQLite (and a
/// fresh key directory); a server on the restored store answers the same token with the
/// next serial; then back from SQLite into a new PostgreSQL database, identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_postgresql_restores_into_sqlite_and_back() {
    use tollgate_license_server::backup::{BackupError, backup, restore};
    let pg = PgCluster::start();
    let url = pg.create_database("backup_source");
    let mut h = Harness::start_on(Some(Database::Postgres(url)));
    h.create_license("perpetual", None);
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    h.advance(11 * MINUTE);
    let client = h.client(&token);
    let mut client_config = h.client_config(&token);
    client.send_usage(&report("sp1", 3)).await.unwrap();

    // Leases keep being signed (no reuse) while the backup runs.
    let work = tokio::spawn({
        let client = client.clone();
        let clock = Arc::clone(&h.clock);
        async move {
            let mut serials = Vec::new();
            for _ in 0..10 {
                clock.fetch_add(11 * MINUTE, Ordering::SeqCst);
                serials.push(client.fetch_lease().await.unwrap().serial);
            }
            serials
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ls.backup");
    let (database, key_dir) = (h.config.database.clone(), h.config.key_dir.clone());
    let now = h.now();
    let taken = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || backup(&database, &key_dir, &file, now).unwrap())
            .await
            .unwrap()
    };
    let serials = work.await.unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    assert_eq!(taken.rows["customers"], 1);
    assert_eq!(taken.rows["usage_reports"], 1);
    assert_eq!(taken.key_files, 2, "the .key and its .pub");
    // Consistent: the license row and its history agree, whatever was signed meanwhile.
    let documents = taken.rows["documents"];
    assert!((1..=11).contains(&documents), "{documents}");

    // Into SQLite and a new key directory.
    let sqlite = Database::Sqlite(dir.path().join("restored/ls.db"));
    let restored_keys = dir.path().join("restored/keys");
    let restored = {
        let (sqlite, keys, file) = (sqlite.clone(), restored_keys.clone(), file.clone());
        tokio::task::spawn_blocking(move || restore(&sqlite, &keys, &file).unwrap())
            .await
            .unwrap()
    };
    assert_eq!(restored, taken);
    // Restoring again into the now non-empty store is refused.
    let again = {
        let (sqlite, keys, file) = (sqlite.clone(), restored_keys.clone(), file.clone());
        tokio::task::spawn_blocking(move || restore(&sqlite, &keys, &file).unwrap_err())
            .await
            .unwrap()
    };
    assert!(matches!(again, BackupError::NotEmpty { .. }), "{again}");
    h.stop().await;

    // A server on the restored copy: the same token, the next serial after the backup's.
    let mut config = h.config.clone();
    config.database = sqlite.clone();
    config.key_dir = restored_keys.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let clock = Arc::clone(&h.clock);
    clock.fetch_add(11 * MINUTE, Ordering::SeqCst);
    let server =
        LicenseServer::start_with_clock(&config, Arc::new(move || clock.load(Ordering::SeqCst)))
            .expect("a server starts on the restored store");
    client_config.server_url = format!("https://127.0.0.1:{}", server.local_addr().port())
        .parse()
        .unwrap();
    let lease = LicenseClient::new(client_config)
        .unwrap()
        .fetch_lease()
        .await
        .unwrap();
    assert_eq!(
        lease.serial as usize,
        documents + 1,
        "serials continue from the backup"
    );
    assert!(lease.serial <= *serials.last().unwrap() + 1);
    server.shutdown().await.unwrap();

    // And back into PostgreSQL: the same rows.
    let second = dir.path().join("second.backup");
    let url = pg.create_database("backup_target");
    let (from_sqlite, into_pg) = {
        let (sqlite, keys, second) = (sqlite.clone(), restored_keys.clone(), second.clone());
        let target_keys = dir.path().join("pg-keys");
        tokio::task::spawn_blocking(move || {
            let taken = backup(&sqlite, &keys, &second, T0).unwrap();
            let restored = restore(&Database::Postgres(url), &target_keys, &second).unwrap();
            (taken, restored)
        })
        .await
        .unwrap()
    };
    assert_eq!(from_sqlite, into_pg);
    assert_eq!(into_pg.rows["documents"], documents + 1);
    assert_eq!(into_pg.rows["usage_reports"], 1);
}

/// The silent-node view's query reads the `usage_reports_by_node` index alone for its
/// `GROUP BY` (an index-only scan), never the report rows, once the table has rows and
/// statistics (50 000 reports of 20 nodes).
#[test]
fn the_silent_node_query_plan_uses_the_node_index_on_postgresql() {
    let pg = PgCluster::start();
    let url = pg.create_database("plan");
    let plan = std::thread::spawn(move || {
        drop(Store::open_database(&Database::Postgres(url.clone())).unwrap());
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .batch_execute(
                "INSERT INTO customers (name, created_at_ms) VALUES ('Acme', 0);
                 INSERT INTO licenses (license_key, customer_id, contract, spec, document, serial,
                                       created_at_ms, updated_at_ms)
                     VALUES ('K', 1, 'active', '', '', 1, 0, 0);
                 INSERT INTO tokens (license_id, token_hash, allowed, created_at_ms)
                     VALUES (1, '\\x00', '', 0);
                 INSERT INTO usage_reports (license_id, token_id, received_at_ms, client_address,
                                            node_id, report)
                     SELECT 1, 1, g, '127.0.0.1', 'sp' || (g % 20), repeat('x', 1000)
                     FROM generate_series(1, 50000) g;",
            )
            .unwrap();
        client
            .batch_execute("VACUUM ANALYZE usage_reports")
            .unwrap();
        let sql = format!(
            "EXPLAIN {}",
            tollgate_license_server::store::Db::LATEST_REPORT_PER_NODE_SQL.replace("?1", "$1")
        );
        client
            .query(&sql, &[&10_000_i64])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .join()
    .unwrap();
    assert!(
        plan.contains("Index Only Scan using usage_reports_by_node on usage_reports"),
        "{plan}"
    );
}
