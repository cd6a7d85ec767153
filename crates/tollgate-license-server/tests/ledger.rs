//! Issue 16 on the server side: the node key bound at the first lease, ledger entries in
//! usage reports verified on receipt, and each flag (`key_change`, `reset`, `gap`, `fork`,
//! `chain_break`, `bad_signature`) stored per node, shown by `admin reports` and written to
//! the audit log; an honest node, its reports resent, raises none. The same scenario on
//! SQLite and on PostgreSQL (a private cluster started for the test).

mod support;

use base64::Engine as _;
use support::pg::PgCluster;
use support::{Harness, LICENSE_KEY, T0};
use tollgate_events::WallTime;
use tollgate_ledger::{Chain, Entry, NodeKey, SignedEntry, public_key_text};
use tollgate_license::timestamp::DAY_MS;
use tollgate_license_client::{LicenseClient, UsageReport};
use tollgate_license_server::Database;
use tollgate_license_server::ledger::LedgerNode;

fn entry(end_ms: u64) -> Entry {
    Entry {
        node_id: "sp1".into(),
        incarnation: 1,
        interval_start_ms: end_ms - 120_000,
        interval_end_ms: end_ms,
        license_serial: Some(2),
        license_status: "OK".into(),
        ..Entry::default()
    }
}

fn report(entries: &[SignedEntry]) -> UsageReport {
    UsageReport {
        node_id: "sp1".into(),
        agent_version: "0.1.0".into(),
        timestamp: WallTime::from_unix_ms(T0),
        since: None,
        license_serial: Some(2),
        node: Default::default(),
        cluster: None,
        admissions_denied: Default::default(),
        ledger: entries
            .iter()
            .map(|e| base64::engine::general_purpose::STANDARD.encode(e.encode()))
            .collect(),
    }
}

/// The flags stored for the license (what `admin reports flags` lists), oldest first, as
/// (kind, seq).
fn flags(h: &Harness) -> Vec<(String, Option<u64>)> {
    let mut out: Vec<(String, Option<u64>)> = h
        .read(|db| db.ledger_flags(Some(LICENSE_KEY), 1000))
        .into_iter()
        .map(|f| (f.kind, f.seq))
        .collect();
    out.reverse();
    out
}

/// The node `sp1` as `admin reports nodes` shows it.
fn node(h: &Harness) -> LedgerNode {
    h.read(|db| db.ledger_nodes(Some(LICENSE_KEY)))
        .into_iter()
        .find(|n| n.node_id == "sp1")
        .expect("the node is known")
}

async fn scenario(h: &Harness) {
    h.create_license("subscription", Some(T0 + 5 * DAY_MS));
    let (_, token) = h.issue_token(&["127.0.0.1"]);
    let key = NodeKey::from_seed(&[7; 32]);
    let client_with = |key: &NodeKey| {
        let mut config = h.client_config(&token);
        config.node_public_key = Some(public_key_text(&key.public()));
        LicenseClient::new(config).unwrap()
    };
    let client = client_with(&key);
    client.fetch_lease().await.unwrap();
    assert_eq!(
        node(h).public_key,
        Some(public_key_text(&key.public())),
        "the key is bound at the first lease"
    );

    // An honest node: 10 entries over 3 reports, the middle one sent twice.
    let mut chain = Chain::new(None);
    let honest: Vec<SignedEntry> = (0..10)
        .map(|i| chain.append(&key, entry(T0 + i * 120_000)))
        .collect();
    for part in [&honest[0..4], &honest[4..8], &honest[4..8], &honest[8..10]] {
        client.send_usage(&report(part)).await.unwrap();
    }
    client.fetch_lease().await.unwrap();
    assert_eq!(flags(h), vec![], "an honest node raises nothing");
    let n = node(h);
    assert_eq!(
        (n.chain, n.head_seq, n.entries, n.flags),
        (0, Some(9), 10, 0),
        "{n:?}"
    );

    // Entries missing (seq 10 never sent), then one replaced (a new seq 12 whose previous
    // hash is not seq 11's), then a second entry for a seq already held (a fork), then an
    // edited one.
    let e10 = chain.append(&key, entry(T0 + 10 * 120_000));
    let e11 = chain.append(&key, entry(T0 + 11 * 120_000));
    let _ = e10;
    client.send_usage(&report(&[e11])).await.unwrap();
    let forged12 = SignedEntry::sign(&key, 12, honest[9].hash(), entry(T0 + 99 * 120_000));
    client.send_usage(&report(&[forged12])).await.unwrap();
    let fork5 = SignedEntry::sign(&key, 5, honest[4].hash(), entry(T0 + 77 * 120_000));
    client.send_usage(&report(&[fork5])).await.unwrap();
    let mut edited = SignedEntry::sign(&key, 13, [9; 32], entry(T0 + 13 * 120_000));
    edited.signature[3] ^= 0x40;
    client.send_usage(&report(&[edited])).await.unwrap();
    assert_eq!(
        flags(h),
        vec![
            ("gap".into(), Some(11)),
            ("chain_break".into(), Some(12)),
            ("fork".into(), Some(5)),
            ("bad_signature".into(), Some(13)),
        ]
    );

    // A report signed by another key under the node's id: key_change.
    let stranger = NodeKey::from_seed(&[8; 32]);
    let mut strange = Chain::new(None);
    let s0 = strange.append(&stranger, entry(T0 + 50 * 120_000));
    client.send_usage(&report(&[s0])).await.unwrap();
    let raised = flags(h);
    assert_eq!(raised[4], ("key_change".into(), Some(0)), "{raised:?}");
    // … and its seq 0 after the node's entries is also a new chain: reset.
    assert_eq!(raised[5], ("reset".into(), Some(0)), "{raised:?}");

    // The node's state dir lost: a new key at the lease (key_change), then a new chain.
    let renewed = NodeKey::from_seed(&[9; 32]);
    let fresh = client_with(&renewed);
    fresh.fetch_lease().await.unwrap();
    let mut chain = Chain::new(None);
    let first = chain.append(&renewed, entry(T0 + 60 * 120_000));
    let second = chain.append(&renewed, entry(T0 + 61 * 120_000));
    fresh.send_usage(&report(&[first, second])).await.unwrap();
    let raised = flags(h);
    assert_eq!(
        raised[6..],
        [("key_change".into(), None), ("reset".into(), Some(0))],
        "{raised:?}"
    );

    // Every flag is in the audit log and on its report.
    for kind in [
        "gap",
        "chain_break",
        "fork",
        "bad_signature",
        "key_change",
        "reset",
    ] {
        assert!(h.audited(&format!("ledger.{kind}")), "{kind} not audited");
    }
    let reports = h.read(|db| db.reports(Some(LICENSE_KEY), 1));
    let newest = tollgate_license_server::admin_api::report_json(&reports[0]);
    assert_eq!(newest["ledger_flags"][0]["kind"], "reset", "{newest}");
    assert_eq!(
        node(h).chain,
        2,
        "the stranger's chain, then the renewed node's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_flags_on_sqlite() {
    let mut h = Harness::start();
    scenario(&h).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_flags_on_postgresql() {
    let pg = PgCluster::start();
    let url = pg.create_database("ledger");
    let mut h = Harness::start_on(Some(Database::Postgres(url)));
    scenario(&h).await;
    h.stop().await;
}
