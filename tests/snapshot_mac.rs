//! Issue 16: the snapshot is keyed with the node key. An agent restarted on its own
//! snapshot reports nothing; a snapshot edited by hand with its checksum recomputed (the
//! unkeyed BLAKE3 trailer re-encoded, as root would) is restored but reported as a state
//! reset, `snapshot_unauthenticated`, in `/healthz` and `tollgate_state_resets_total`.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, write_config};

fn wait_file(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_edited_snapshot_is_a_state_reset_and_an_honest_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 1\n");
    let agent = Agent::start(&state, &config);
    agent.send_events(b"call-start m1\ncall-start m2\ncall-start m3\n");
    agent.wait_usage("3 calls", |u| u["calls"] == 3);
    wait_file(&state.join("usage.snapshot.mac"));
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");

    // Its own snapshot: no reset.
    let agent = Agent::start(&state, &config);
    agent.wait_usage("3 calls restored", |u| u["calls"] == 3);
    let (_, health) = agent.get("/healthz");
    assert_eq!(health, "ok\n", "an honest restart is not a state reset");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");

    // Root drops two calls from the snapshot and re-encodes it (a valid checksum).
    let path = state.join("usage.snapshot");
    let mut snapshot = tollgate_usage::snapshot::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(snapshot.calls.len(), 3);
    snapshot.calls.truncate(1);
    std::fs::write(&path, tollgate_usage::snapshot::encode(&snapshot)).unwrap();
    // The journal would replay the calls the snapshot no longer has: drop it as well.
    let _ = std::fs::remove_dir_all(state.join("journal"));
    let agent = Agent::start(&state, &config);
    let (_, health) = agent.get("/healthz");
    assert!(
        health.contains("state reset: snapshot_unauthenticated"),
        "{health}"
    );
    assert_eq!(
        agent.metric("tollgate_state_resets_total{reason=\"snapshot_unauthenticated\"}"),
        Some(1.0)
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}
