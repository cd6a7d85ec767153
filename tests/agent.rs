//! The agent as a real process: events over real UDP and unix sockets, usage and metrics
//! over real HTTP, restarts with SIGTERM and SIGKILL.

mod common;

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::{Agent, BIN, send_udp, send_unix, write_config};

#[test]
fn events_over_udp_and_unix_are_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let agent = Agent::start(&dir.path().join("state"), &config);

    // Text over UDP: two calls (one emergency), a duplicate start, a stop without start,
    // malformed lines among good ones.
    send_udp(
        agent.udp(),
        b"call-start a@host tag=1\ncall-start b@host emergency\ncall-start a@host tag=1\n\
          call-stop never-started\nbogus line\ncall-start\r\nreg sip:alice@x sip:alice@10.0.0.1 3600\n",
    );
    // Over the unix socket: a third call, a second contact for alice, bob, subscribers.
    send_unix(
        &agent.unix(),
        b"call-start c@host\nreg sip:alice@x sip:alice@10.0.0.2 3600\nreg sip:bob@x sip:bob@10.0.0.3 60\nsubscribers 1234\n",
    );
    let u = agent.wait_usage("3 calls and 3 contacts", |u| {
        u["calls"] == 3 && u["registered_contacts"] == 3 && u["subscribers"] == 1234
    });
    assert_eq!(u["node_id"], "test-node");
    assert_eq!(u["emergency_calls"], 1);
    assert_eq!(u["registered_subscribers"], 2);
    assert_eq!(u["peak_calls"], 3);
    assert_eq!(u["peak_registered_subscribers"], 2);

    // Stops, a double stop, an unregister.
    send_udp(
        agent.udp(),
        b"call-stop a@host tag=1\ncall-stop a@host tag=1\nreg sip:bob@x sip:bob@10.0.0.3 0\n",
    );
    let u = agent.wait_usage("2 calls, 1 AoR", |u| {
        u["calls"] == 2 && u["registered_subscribers"] == 1
    });
    assert_eq!(u["registered_contacts"], 2);
    assert_eq!(u["peak_calls"], 3, "peaks keep the high-water mark");

    assert_eq!(agent.metric("tollgate_calls"), Some(2.0));
    assert_eq!(
        agent.metric("tollgate_events_total{verb=\"call-start\"}"),
        Some(4.0)
    );
    assert_eq!(
        agent.metric("tollgate_events_malformed_total{reason=\"unknown_verb\"}"),
        Some(1.0)
    );
    assert_eq!(
        agent.metric("tollgate_events_malformed_total{reason=\"missing_field\"}"),
        Some(1.0)
    );
    assert_eq!(
        agent.metric("tollgate_event_outcomes_total{outcome=\"call_already_active\"}"),
        Some(1.0)
    );
    assert_eq!(
        agent.metric("tollgate_event_outcomes_total{outcome=\"call_unknown\"}"),
        Some(2.0)
    );
    assert_eq!(agent.metric("tollgate_ingest_datagrams_total"), Some(3.0));
    assert!(agent.metric("tollgate_kernel_drops_total").is_some());
    assert_eq!(agent.get("/healthz").0, 200);
}

#[test]
fn sequence_numbers_drop_replays_and_count_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("state"), &write_config(dir.path(), ""));
    send_udp(agent.udp(), b"seq proxy-1 1\ncall-start x1\n");
    send_udp(
        agent.udp(),
        b"seq proxy-1 1\ncall-start x1-replayed-datagram\n",
    );
    agent.wait_usage("the replay to be dropped", |u| {
        u["ingest"]["duplicate_datagrams"] == 1
    });
    assert_eq!(
        agent.usage()["calls"],
        1,
        "a replayed datagram changes nothing"
    );
    // Gaps that slide out of the 1024-number window unseen are lost: 2..=976 here.
    send_udp(agent.udp(), b"seq proxy-1 1000\ncall-start x2\n");
    send_udp(agent.udp(), b"seq proxy-1 2000\ncall-start x3\n");
    let u = agent.wait_usage("3 calls", |u| u["calls"] == 3);
    assert_eq!(u["ingest"]["lost_datagrams"], 975, "{u}");
    // A jump of a window or more is a sender restart, not loss: only the old run's unseen
    // tail (977..=2000 but 1000 and 2000) is counted.
    send_udp(agent.udp(), b"seq proxy-1 5000000\ncall-start x4\n");
    let u = agent.wait_usage("4 calls", |u| u["calls"] == 4);
    assert_eq!(u["ingest"]["lost_datagrams"], 975 + 1022, "{u}");
    assert_eq!(agent.metric("tollgate_sender_restarts_total"), Some(1.0));
}

#[test]
fn admit_query_gets_a_reply_over_udp_and_unix() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&dir.path().join("state"), &write_config(dir.path(), ""));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"admit call-1\nadmit call-2 emergency\n", agent.udp())
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ok\nok\n");

    let client_path = dir.path().join("client.sock");
    let u = UnixDatagram::bind(&client_path).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    u.send_to(b"admit call-3\n", agent.unix()).unwrap();
    let n = u.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ok\n");
    assert_eq!(agent.usage()["calls"], 0, "a query changes nothing");
}

/// `[ingest] admit_udp` answers queries on a socket of its own; with `udp_replies = false`
/// the UDP event socket reads no source addresses: a query sent there is applied as nothing,
/// gets no reply and is counted, while events keep being applied.
#[test]
fn admit_socket_answers_while_the_event_socket_reads_no_source_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[general]\nnode_id = \"test-node\"\n\n[ingest]\nudp = \"127.0.0.1:0\"\n\
         admit_udp = \"127.0.0.1:0\"\nudp_replies = false\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let agent = Agent::start(&dir.path().join("state"), &config);
    let admit = agent
        .rt
        .admit_udp
        .expect("agent.json names the admit socket");
    assert_ne!(admit, agent.udp());
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"admit call-1\nadmit call-2 emergency\n", admit)
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ok\nok\n");

    // The event socket: the query is counted as unanswerable, the events are applied.
    s.send_to(b"admit call-3\ncall-start c1\n", agent.udp())
        .unwrap();
    agent.wait_usage("1 call", |u| u["calls"] == 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let series = "tollgate_admit_reply_failures_total{reason=\"no_return_address\"}";
    while agent.metric(series) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{series} = {:?}",
            agent.metric(series)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(s.recv(&mut buf).is_err(), "no reply from the event socket");
    // Events sent to the admit socket are applied too.
    s.send_to(b"call-start c2\n", admit).unwrap();
    agent.wait_usage("2 calls", |u| u["calls"] == 2);
}

#[test]
fn sigterm_writes_a_snapshot_and_restart_restores_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    // A long snapshot interval: only the shutdown snapshot can carry the counts over.
    let config = write_config(
        dir.path(),
        "[state]\nsnapshot_interval_s = 3600\n[report]\ninterval_s = 1\n",
    );
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &config);
    send_udp(
        agent.udp(),
        b"call-start a\ncall-start b emergency\nreg sip:a@x sip:a@h 3600\nsubscribers 77\n",
    );
    agent.wait_usage("events applied", |u| {
        u["calls"] == 2 && u["registered_subscribers"] == 1
    });
    // The operator's grep line, from the report task (every second here).
    agent.wait_log(
        "Usage report: 2 calls, 77 subscribers, 1 registered subscribers",
        20,
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{status}: {log}");

    let agent = Agent::start(&state, &config);
    let u = agent.usage();
    assert_eq!(
        (u["calls"].as_u64(), u["emergency_calls"].as_u64()),
        (Some(2), Some(1)),
        "{u}"
    );
    assert_eq!(u["registered_subscribers"], 1);
    assert_eq!(u["subscribers"], 77);
    // The fingerprint key persisted too: a stop after the restart ends a call from before it.
    send_udp(agent.udp(), b"call-stop a\n");
    agent.wait_usage("the restored call to stop", |u| u["calls"] == 1);
}

#[test]
fn kill_9_after_a_snapshot_restores_that_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 1\n");
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &config);
    send_unix(
        &agent.unix(),
        b"call-start k1\ncall-start k2\ncall-start k3\n",
    );
    agent.wait_usage("3 calls", |u| u["calls"] == 3);
    // Wait for a periodic snapshot taken after the events.
    common::wait_next_snapshot(&agent);
    agent.kill9();
    let agent = Agent::start(&state, &config);
    assert_eq!(agent.usage()["calls"], 3);
}

#[test]
fn corrupt_snapshot_is_moved_aside_and_the_agent_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("usage.snapshot"),
        b"TGSNAP this is not a snapshot",
    )
    .unwrap();
    let agent = Agent::start(&state, &write_config(dir.path(), ""));
    assert_eq!(agent.usage()["calls"], 0);
    let moved: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("usage.snapshot.corrupt-")
        })
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "the corrupt snapshot is kept for inspection"
    );
}

#[test]
fn unknown_config_key_fails_with_exit_code_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nudp_port = 7171\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("udp_port"), "{err}");
}

#[test]
fn status_shows_usage_as_a_table_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &write_config(dir.path(), ""));
    send_udp(agent.udp(), b"call-start s1\nreg sip:s@x sip:s@h 60\n");
    agent.wait_usage("1 call", |u| u["calls"] == 1);
    let out = std::process::Command::new(BIN)
        .args(["status", "--json", "--admin"])
        .arg(format!("http://{}", agent.rt.admin))
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["calls"], 1);
    let out = std::process::Command::new(BIN)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("test-node") && table.contains("registered subscribers"),
        "{table}"
    );

    drop(agent);
    let out = std::process::Command::new(BIN)
        .args(["status", "--admin", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "an unreachable agent is exit code 3"
    );
}

#[test]
fn mirrored_sip_over_hep_counts_like_the_native_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[hep]\nlisten = \"127.0.0.1:0\"\n");
    let agent = Agent::start(&dir.path().join("state"), &config);
    let hep = agent.rt.hep.expect("the agent reports its HEP address");
    let out = std::process::Command::new(BIN)
        .args([
            "loadgen", "--format", "hep", "--mode", "erlang", "--cps", "60", "--hold", "20",
        ])
        .args([
            "--registrations",
            "30",
            "--duration",
            "2",
            "--seed",
            "3",
            "--json",
            "--target",
        ])
        .arg(format!("udp:{hep}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let calls = report["expected_active_calls"].as_u64().unwrap();
    let aors = report["expected_registered_subscribers"].as_u64().unwrap();
    assert!(calls > 0, "{report}");
    let u = agent.wait_usage("the HEP-derived counts", |u| {
        u["calls"].as_u64() == Some(calls) && u["registered_subscribers"].as_u64() == Some(aors)
    });
    let sip = agent
        .metric("tollgate_hep_packets_total{result=\"sip\"}")
        .unwrap_or(0.0);
    assert!(sip > 0.0);
    // The usage summary counts the HEP socket too.
    assert!(u["ingest"]["datagrams"].as_f64().unwrap() >= sip, "{u:#}");
    assert!(u["ingest"]["events"].as_u64().unwrap() >= calls, "{u:#}");
}

/// Issue 18: hourly peaks are kept for 90 days in the state dir: a restart keeps the peak
/// of the current hour even though the calls are gone.
#[test]
fn hourly_peaks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = write_config(dir.path(), "");
    let agent = Agent::start(&state, &config);
    send_udp(
        agent.udp(),
        b"call-start h1\ncall-start h2\ncall-start h3\n",
    );
    agent.wait_usage("3 calls", |u| u["calls"] == 3);
    send_udp(agent.udp(), b"call-stop h1\ncall-stop h2\ncall-stop h3\n");
    agent.wait_usage("0 calls", |u| u["calls"] == 0);
    let hourly = |agent: &Agent| -> serde_json::Value {
        let (status, body) = agent.get("/api/v1/usage/history?resolution=hour");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while hourly(&agent)
        .as_array()
        .is_none_or(|h| h.last().is_none_or(|h| h["peak_calls"] != 3))
    {
        assert!(std::time::Instant::now() < deadline, "{}", hourly(&agent));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, _) = agent.stop();
    assert!(status.success());
    assert!(state.join("history.json").exists());

    let agent = Agent::start(&state, &config);
    assert_eq!(
        agent.usage()["peak_calls"],
        0,
        "the tables' peaks start over"
    );
    let hours = hourly(&agent);
    // (`any`: the restart may cross an hour boundary.)
    assert!(
        hours
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["peak_calls"].as_u64() == Some(3)),
        "{hours}"
    );
    let (status, body) = agent.get("/api/v1/usage/history?resolution=week");
    assert_eq!(status, 400, "{body}");
    let (status, _) = agent.get("/api/v1/cluster/history");
    assert_eq!(status, 404);
}
