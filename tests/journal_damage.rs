//! Issues 11 and 16: the journal of a running agent damaged, edited or deleted behind its
//! back, then `kill -9`, then a restart. The restart replays what it can trust and reports
//! the rest as a state reset, loudly (`/healthz`, `tollgate_state_resets_total{reason}`):
//!
//! - one byte of a record in the middle of the live segment changed (an edit or disk
//!   damage; version-4 records carry a MAC keyed from the node key, so recomputing a
//!   checksum cannot hide it): the records before it are replayed, that record and the
//!   rest of the segment are not, `journal_unauthenticated`;
//! - the live segment deleted: the snapshot's counts come back, `journal_missing`.

mod common;

use std::path::{Path, PathBuf};

use common::{Agent, write_config};

/// The segment the agent writes now (the highest-numbered one).
fn live_segment(state: &Path) -> PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(state.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .collect();
    v.sort();
    v.pop().expect("a journal segment")
}

/// Byte offsets of the records in a segment: header 40 bytes, then (length u32 LE, 8 bytes
/// of MAC, body) each.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = 40;
    let mut out = Vec::new();
    while at + 12 <= bytes.len() {
        out.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 12 + len;
    }
    out
}

/// Sends one datagram of call starts and waits until the agent counts `total` calls (so
/// each datagram is a receive batch, a journal record, of its own).
fn start_calls(agent: &Agent, ids: &[&str], total: u64) {
    let datagram: String = ids.iter().map(|id| format!("call-start {id}\n")).collect();
    agent.send_events(datagram.as_bytes());
    agent.wait_usage(&format!("{total} calls"), |u| u["calls"] == total);
}

#[test]
fn an_edited_journal_record_of_a_running_agent_is_a_loud_reset_and_what_precedes_it_counts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // No periodic snapshot: every event of the test is in the live segment.
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 3600\n");
    let agent = Agent::start(&state, &config);
    start_calls(&agent, &["a1", "a2", "a3"], 3);
    start_calls(&agent, &["b1", "b2"], 5);
    start_calls(&agent, &["c1"], 6);
    // The second record edited while the agent runs: one byte of its body.
    let segment = live_segment(&state);
    let mut bytes = std::fs::read(&segment).unwrap();
    let records = record_offsets(&bytes);
    assert_eq!(records.len(), 3, "one record per datagram");
    bytes[records[1] + 12 + 10] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    agent.kill9();

    let agent = Agent::start(&state, &config);
    // The first record is replayed; the edited one and the one after it are not.
    agent.wait_usage("the 3 calls before the edit", |u| u["calls"] == 3);
    let (_, health) = agent.get("/healthz");
    assert!(
        health.contains("state reset: journal_unauthenticated"),
        "{health}"
    );
    assert_eq!(
        agent.metric("tollgate_state_resets_total{reason=\"journal_unauthenticated\"}"),
        Some(1.0)
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("state reset") && log.contains("fails its MAC"),
        "logged at error level: {log}"
    );
}

#[test]
fn a_journal_segment_deleted_while_the_agent_runs_is_a_loud_reset_and_the_snapshot_counts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 3600\n");
    // Two calls in the snapshot a clean stop writes.
    let agent = Agent::start(&state, &config);
    start_calls(&agent, &["s1", "s2"], 2);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    // Three more in the live segment, which is then deleted behind the agent's back.
    let agent = Agent::start(&state, &config);
    agent.wait_usage("2 calls restored", |u| u["calls"] == 2);
    start_calls(&agent, &["j1", "j2", "j3"], 5);
    std::fs::remove_file(live_segment(&state)).unwrap();
    // The agent goes on counting (it writes to the file it has open).
    start_calls(&agent, &["j4"], 6);
    agent.kill9();

    let agent = Agent::start(&state, &config);
    agent.wait_usage("the snapshot's 2 calls", |u| u["calls"] == 2);
    let (_, health) = agent.get("/healthz");
    assert!(health.contains("state reset: journal_missing"), "{health}");
    assert_eq!(
        agent.metric("tollgate_state_resets_total{reason=\"journal_missing\"}"),
        Some(1.0)
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}
