//! Issue 16: the usage ledger written by a real agent, verified and tampered with through
//! the real `tollgate ledger` commands.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, BIN, send_udp, write_config};

/// Runs `tollgate ledger ARGS`; returns (exit code, stdout).
fn ledger(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("ledger")
        .args(args)
        .output()
        .expect("run tollgate ledger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The frames of one segment file, split (a 4-byte LE length, then that many bytes).
fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push(bytes[at..at + 4 + len].to_vec());
        at += 4 + len;
    }
    out
}

fn write_dir(dir: &Path, frames: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("00000000000000000000.tgl"), frames.concat()).unwrap();
}

#[test]
fn a_real_agents_ledger_verifies_and_each_tampering_has_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[report]\ninterval_s = 1\n");
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &config);
    send_udp(
        agent.udp(),
        b"call-start a\ncall-start b emergency\nsubscribers 5\n",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (code, body) = agent.get("/api/v1/ledger");
        assert_eq!(code, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["head"]["seq"].as_u64().is_some_and(|s| s >= 4) {
            break report;
        }
        assert!(Instant::now() < deadline, "no 5 ledger entries: {report}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let key = report["node_public_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 44, "{report}");
    // `tollgate status` shows the node key.
    let out = Command::new(BIN)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&key),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{status}: {log}");

    let ledger_dir = state.join("ledger");
    let dir_arg = ledger_dir.to_str().unwrap();
    let (code, out) = ledger(&["verify", dir_arg, "--public-key", &key]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact: "), "{out}");

    // The export carries what the agent counted, one JSON line per entry.
    let out = Command::new(BIN)
        .args(["ledger", "export", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 5, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["counts"]["calls"], 2, "{last}");
    assert_eq!(last["counts"]["emergency_calls"], 1, "{last}");
    assert_eq!(last["counts"]["provisioned_subscribers"], 5, "{last}");
    assert_eq!(last["node_public_key"], key.as_str());
    assert_eq!(last["signature_valid"], true);
    let since = lines[2]["interval_end_ms"].as_u64().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["ledger", "export", dir_arg, "--since", &since])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        lines.len() - 2
    );

    let segments: Vec<_> = std::fs::read_dir(&ledger_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let original = frames(&std::fs::read(&segments[0]).unwrap());
    let tampered = |name: &str, frames: &[Vec<u8>]| {
        let d = dir.path().join(name);
        write_dir(&d, frames);
        let (code, out) = ledger(&["verify", d.to_str().unwrap(), "--public-key", &key]);
        (code, out)
    };

    // One flipped byte in entry 2's calls count: its signature no longer matches.
    let mut flipped = original.clone();
    flipped[2][4 + 100] ^= 0x01;
    let (code, out) = tampered("flipped", &flipped);
    assert_eq!(code, 11, "{out}");
    assert!(out.starts_with("bad_signature: entry #2 (seq 2"), "{out}");

    // One removed entry: a gap at the entry after it.
    let mut removed = original.clone();
    removed.remove(2);
    let (code, out) = tampered("removed", &removed);
    assert_eq!(code, 13, "{out}");
    assert!(out.starts_with("gap: entry #2 (seq 3"), "{out}");

    // Two swapped entries: out of order at the first of them.
    let mut swapped = original.clone();
    swapped.swap(1, 2);
    let (code, out) = tampered("swapped", &swapped);
    assert_eq!(code, 14, "{out}");
    assert!(out.starts_with("out_of_order: entry #1 (seq 2"), "{out}");

    // Another node's key: every entry is signed, but not by this node.
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (code, out) = ledger(&["verify", dir_arg, "--public-key", other]);
    assert_eq!(code, 17, "{out}");
}

#[test]
fn a_restarted_agent_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[report]\ninterval_s = 1\n");
    let state = dir.path().join("state");
    let wait_seq = |agent: &Agent, min: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = agent.get("/api/v1/ledger");
            let r: serde_json::Value = serde_json::from_str(&body).unwrap();
            if r["head"]["seq"].as_u64().is_some_and(|s| s >= min) {
                return r;
            }
            assert!(Instant::now() < deadline, "ledger head below {min}: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let agent = Agent::start(&state, &config);
    let first = wait_seq(&agent, 1);
    agent.stop();
    let agent = Agent::start(&state, &config);
    let second = wait_seq(&agent, first["head"]["seq"].as_u64().unwrap() + 2);
    assert_eq!(first["node_public_key"], second["node_public_key"]);
    agent.stop();
    let (code, out) = ledger(&["verify", state.join("ledger").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}
