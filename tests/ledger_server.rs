//! Issue 16, whole system: real agents and a real license server. The server binds each
//! node's key at its first lease and verifies the ledger entries its usage reports carry:
//! an honest node raises no flag; a node whose state dir was deleted is flagged `reset`
//! (and `key_change`: its key went with the state dir); a report signed by another key
//! under the node's id is flagged `key_change`. Every flag is in the audit log.

mod common;
#[path = "common/vendor.rs"]
mod vendor;

use base64::Engine as _;
use common::Agent;
use tollgate_ledger::{Chain, Entry, NodeKey};
use tollgate_license_client::{UsageFigures, UsageReport};
use vendor::{Server, Vendor, now_ms, wait_for};

const NODE: &str = "ledger-node";

/// Entries the server holds for `NODE` (`admin reports nodes --json`): (chain, entries).
fn held(vendor: &Vendor) -> Option<(u64, u64)> {
    vendor
        .admin_ok(&["reports", "nodes", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|n| n["node_id"] == NODE)
        .map(|n| (n["chain"].as_u64().unwrap(), n["entries"].as_u64().unwrap()))
}

#[test]
fn an_honest_node_raises_nothing_a_lost_state_dir_is_reset_and_a_foreign_key_is_key_change() {
    let vendor = Vendor::new();
    let server = Server::start(&vendor);
    let token = vendor.provision("subscription", now_ms() + 5 * 86_400_000);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, server.agent_config(&vendor, &token, NODE)).unwrap();
    let state = dir.path().join("state");

    // An honest node, restarted once (its chain continues): entries arrive, no flag.
    let agent = Agent::start(&state, &config);
    agent.send_events(b"call-start honest-1\n");
    wait_for("3 entries at the server", 60, || {
        held(&vendor).filter(|h| h.1 >= 3)
    });
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let agent = Agent::start(&state, &config);
    let before = held(&vendor).unwrap().1;
    wait_for("entries after the restart", 60, || {
        held(&vendor).filter(|h| h.1 >= before + 3)
    });
    assert_eq!(vendor.flags(), vec![], "an honest node raises no flag");
    assert_eq!(held(&vendor).unwrap().0, 0, "one chain");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");

    // The whole state dir deleted: a new key at the lease, a new chain in the reports.
    std::fs::remove_dir_all(&state).unwrap();
    let agent = Agent::start(&state, &config);
    let flags = wait_for("reset flagged", 60, || {
        let flags = vendor.flags();
        flags.iter().any(|f| f.0 == "reset").then_some(flags)
    });
    assert!(
        flags.iter().all(|f| f.1 == NODE),
        "flags name the node: {flags:?}"
    );
    let kinds: Vec<&str> = flags.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(kinds, ["key_change", "reset"], "{flags:?}");
    assert_eq!(held(&vendor).unwrap().0, 1, "a second chain");

    // A report for the node signed by another key: key_change, on that report.
    let stranger = NodeKey::generate();
    let entry = Chain::new(None).append(
        &stranger,
        Entry {
            node_id: NODE.into(),
            interval_start_ms: now_ms() - 1000,
            interval_end_ms: now_ms(),
            license_status: "OK".into(),
            ..Entry::default()
        },
    );
    let report = UsageReport {
        node_id: NODE.into(),
        agent_version: "forged".into(),
        timestamp: tollgate_events::WallTime::from_unix_ms(now_ms()),
        since: None,
        license_serial: None,
        node: UsageFigures::default(),
        cluster: None,
        admissions_denied: Default::default(),
        ledger: vec![base64::engine::general_purpose::STANDARD.encode(entry.encode())],
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(server.client(&vendor, &token, NODE).send_usage(&report))
        .expect("the report is stored, not refused");
    let flags = vendor.flags();
    assert!(
        flags[2..]
            .iter()
            .any(|f| f.0 == "key_change" && f.2.is_some()),
        "a key_change on the forged report: {flags:?}"
    );
    let audit = vendor.admin_ok(&["audit", "--license", vendor::LICENSE_KEY]);
    for action in ["ledger.reset", "ledger.key_change"] {
        assert!(audit.contains(action), "{action} not audited: {audit}");
    }
    let listed = vendor.admin_ok(&["reports", "list", "--json", "--limit", "1"]);
    assert!(listed.contains("\"ledger_flags\":[{"), "{listed}");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains("ERROR"),
        "an honest agent logs no error:\n{log}"
    );
}
