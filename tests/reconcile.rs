//! Reconciliation end to end with the real agent (issue 13): `sync-*` lists over UDP, and
//! an OpenSIPS `mi_http` source answered from the documented OpenSIPS 3.x answers
//! (`crates/tollgate-reconcile/tests/answers/`; OpenSIPS is not packaged in Debian), with
//! every failure mode. Kamailio, which is, is tested for real in `tests/kamailio.rs`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, http, write_config};

fn admin_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let admin = tollgate_agent::auth::hash_password("adminpw").unwrap();
    write_config(
        dir,
        &format!(
            "{extra}\n\n[[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n"
        ),
    )
}

fn post_reconcile(agent: &Agent) -> serde_json::Value {
    let (status, body) = http(
        agent.rt.admin,
        "POST",
        "/api/v1/reconcile",
        Some(("ops", "adminpw")),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn get_reconcile(agent: &Agent) -> serde_json::Value {
    let (status, body) = http(
        agent.rt.admin,
        "GET",
        "/api/v1/reconcile",
        Some(("ops", "adminpw")),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn counts(agent: &Agent) -> (u64, u64) {
    let u = agent.usage();
    (
        u["calls"].as_u64().unwrap(),
        u["registered_contacts"].as_u64().unwrap(),
    )
}

/// One list of `calls` calls from sender `fs1` in 50 numbered datagrams.
fn sync_list(epoch: u64, first_seq: u64, calls: &[String]) -> Vec<Vec<u8>> {
    let per = calls.len().div_ceil(48);
    let mut datagrams = vec![format!("seq fs1 {first_seq}\nsync-begin fs1 {epoch}\n").into_bytes()];
    for (i, chunk) in calls.chunks(per).enumerate() {
        let mut d = format!("seq fs1 {}\n", first_seq + 1 + i as u64);
        for call in chunk {
            d.push_str(&format!("sync-call {call} tag=t\n"));
        }
        datagrams.push(d.into_bytes());
    }
    while datagrams.len() < 49 {
        let n = first_seq + datagrams.len() as u64;
        datagrams.push(format!("seq fs1 {n}\n").into_bytes());
    }
    let n = first_seq + datagrams.len() as u64;
    datagrams.push(format!("seq fs1 {n}\nsync-end fs1 {epoch} {} 0\n", calls.len()).into_bytes());
    assert_eq!(datagrams.len(), 50);
    datagrams
}

#[test]
fn sync_lists_with_a_lost_datagram_are_discarded_and_complete_ones_heal() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path(), &admin_config(dir.path(), ""));
    // The sender's own events: a call whose stop will be lost, calls that stay.
    let mut start = String::from("seq fs1 1\ncall-start phantom tag=t\n");
    for i in 0..10 {
        start.push_str(&format!("call-start c{i} tag=t\n"));
    }
    agent.send_events(start.as_bytes());
    // Someone else's call (no seq): not fs1's to correct.
    agent.send_events(b"call-start unowned tag=t\n");
    agent.wait_usage("12 calls", |u| u["calls"] == 12);

    // The truth: c0..c99 (90 calls the agent never heard of), no phantom.
    let truth: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let mut lossy = sync_list(1, 2, &truth);
    lossy.remove(23);
    for d in &lossy {
        agent.send_events(d);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metric("tollgate_sync_lists_total{result=\"incomplete\"}") != Some(1.0) {
        assert!(Instant::now() < deadline, "incomplete list not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counts(&agent).0, 12, "an incomplete list changes nothing");

    for d in sync_list(2, 100, &truth) {
        agent.send_events(&d);
    }
    agent.wait_usage("the list applied", |u| u["calls"] == 101);
    let status = get_reconcile(&agent);
    let fs1 = status["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "fs1")
        .unwrap_or_else(|| panic!("no fs1 in {status:#}"));
    assert_eq!(fs1["kind"], "sync");
    assert_eq!(fs1["last_run"]["result"], "ok");
    assert_eq!(fs1["last_run"]["corrections"]["missing_call"], 90);
    assert_eq!(fs1["last_run"]["corrections"]["phantom_call"], 1);
    assert_eq!(
        agent.metric("tollgate_reconcile_corrections_total{source=\"fs1\",kind=\"phantom_call\"}"),
        Some(1.0)
    );
    // The stop that was lost arrives late: nothing to stop any more.
    agent.send_events(b"seq fs1 500\ncall-stop phantom tag=t\n");
    // A restarted sender's empty list removes what it reported, and only that.
    agent.send_events(b"seq fs1 501\nsync-begin fs1 3\nsync-end fs1 3 0 0\n");
    agent.wait_usage("only the unowned call left", |u| u["calls"] == 1);
}

/// How the fake `mi_http` endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Documented,
    Empty,
    HttpError,
    RpcError,
    Garbage,
    Slow,
}

/// An HTTP/1.1 server that answers JSON-RPC POSTs the way OpenSIPS `mi_http` does, from the
/// documented answers. Returns its address, the mode switch and its accepting thread, which
/// returns (closing the port) at the first connection after `stop` is set.
fn mi_http(stop: Arc<Mutex<bool>>) -> (SocketAddr, Arc<Mutex<Mode>>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mode = Arc::new(Mutex::new(Mode::Documented));
    let answers =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/tollgate-reconcile/tests/answers");
    let dlg = std::fs::read_to_string(answers.join("opensips-3-dlg_list.json")).unwrap();
    let ul = std::fs::read_to_string(answers.join("opensips-3-ul_dump.json")).unwrap();
    let error = std::fs::read_to_string(answers.join("opensips-3-error.json")).unwrap();
    let m = Arc::clone(&mode);
    let acceptor = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if *stop.lock().unwrap() {
                return;
            }
            let Ok(mut stream) = stream else { continue };
            let (m, dlg, ul, error) = (Arc::clone(&m), dlg.clone(), ul.clone(), error.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body);
                let mode = *m.lock().unwrap();
                let (status, answer) = match mode {
                Mode::Documented if body.contains("\"dlg_list\"") => (200, dlg.clone()),
                Mode::Documented => (200, ul.clone()),
                Mode::Empty if body.contains("\"dlg_list\"") => {
                    (200, r#"{"jsonrpc":"2.0","result":{"Dialogs":[]},"id":1}"#.to_string())
                }
                Mode::Empty => (
                    200,
                    r#"{"jsonrpc":"2.0","result":{"Domains":[{"name":"location","hash_size":512,"AORs":[]}]},"id":1}"#.to_string(),
                ),
                Mode::HttpError => (500, "Internal Server Error".to_string()),
                Mode::RpcError => (200, error.clone()),
                Mode::Garbage => (200, "<html><body>proxy error</body></html>".to_string()),
                Mode::Slow => {
                    std::thread::sleep(Duration::from_millis(2500));
                    (200, dlg.clone())
                }
            };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    (addr, mode, acceptor)
}

#[test]
fn an_opensips_source_heals_and_failures_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(Mutex::new(false));
    let (mi, mode, acceptor) = mi_http(Arc::clone(&stop));
    let config = admin_config(
        dir.path(),
        &format!(
            "[[reconcile]]\nkind = \"opensips\"\nurl = \"http://{mi}/mi\"\ninterval_s = 0\ntimeout_s = 1\n"
        ),
    );
    let agent = Agent::start(dir.path(), &config);
    agent.send_events(
        b"call-start 1-4242@127.0.1.1 tag=4242SIPpTag001\ncall-start phantom@x tag=1\n\
          reg alice sip:alice@10.0.0.9:5060 600\nreg alice sip:alice@10.0.0.1:5060 600\n",
    );
    agent.wait_usage("2 calls, 2 contacts", |u| {
        u["calls"] == 2 && u["registered_contacts"] == 2
    });

    for (m, reason) in [
        (Mode::HttpError, "http_status"),
        (Mode::RpcError, "rpc_error"),
        (Mode::Garbage, "garbage"),
        (Mode::Slow, "timeout"),
    ] {
        *mode.lock().unwrap() = m;
        let answer = post_reconcile(&agent);
        assert_eq!(answer["runs"][0]["result"], reason, "{answer:#}");
        assert_eq!(answer["corrections"]["phantom_call"], 0);
        assert_eq!(counts(&agent), (2, 2), "{reason}: nothing changed");
        assert_eq!(
            agent.metric(&format!(
                "tollgate_reconcile_runs_total{{source=\"opensips\",result=\"{reason}\"}}"
            )),
            Some(1.0)
        );
    }

    *mode.lock().unwrap() = Mode::Documented;
    let answer = post_reconcile(&agent);
    let run = &answer["runs"][0];
    assert_eq!(run["result"], "ok", "{answer:#}");
    // Listed: 1-4242 (state 4, known), 3-4242 (state 3, missing); phantom@x is not.
    // Contacts: alice@10.0.0.1 (known, expiry from the proxy), bob (permanent, missing);
    // alice@10.0.0.9 is not listed.
    let c = &run["corrections"];
    assert_eq!(
        (
            &c["phantom_call"],
            &c["missing_call"],
            &c["phantom_contact"],
            &c["missing_contact"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{answer:#}"
    );
    assert_eq!(counts(&agent), (2, 2));
    assert!(
        agent
            .metric("tollgate_reconcile_last_success_timestamp_seconds{source=\"opensips\"}")
            .unwrap()
            > 0.0
    );
    let status = get_reconcile(&agent);
    let last = &status["sources"][0]["last_run"];
    assert_eq!(last["result"], "ok");
    assert!(last["duration_ms"].as_u64().is_some());
    assert_eq!(last["corrections"]["missing_call"], 1);

    // A restarted proxy: empty lists are the truth.
    *mode.lock().unwrap() = Mode::Empty;
    let answer = post_reconcile(&agent);
    assert_eq!(answer["corrections"]["phantom_call"], 2, "{answer:#}");
    assert_eq!(counts(&agent), (0, 0));

    // Unreachable: the endpoint is gone.
    *stop.lock().unwrap() = true;
    let _ = std::net::TcpStream::connect(mi);
    acceptor.join().unwrap();
    agent.send_events(b"call-start after@x tag=1\n");
    agent.wait_usage("1 call", |u| u["calls"] == 1);
    let answer = post_reconcile(&agent);
    assert_eq!(answer["runs"][0]["result"], "unreachable", "{answer:#}");
    assert_eq!(counts(&agent).0, 1);

    // Without admin credentials: refused.
    let (status, _) = http(agent.rt.admin, "POST", "/api/v1/reconcile", None, b"");
    assert_eq!(status, 401);
}

/// Corrections are journaled as records of their own (issue 13): a `kill -9` right after a
/// reconciliation, with no snapshot taken since, replays them exactly at the restart.
#[test]
fn kill_9_right_after_a_correction_replays_it_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(Mutex::new(false));
    let (mi, _mode, _acceptor) = mi_http(Arc::clone(&stop));
    let config = admin_config(
        dir.path(),
        &format!(
            "[state]\nsnapshot_interval_s = 86400\n\n[[reconcile]]\nkind = \"opensips\"\nurl = \"http://{mi}/mi\"\ninterval_s = 0\n"
        ),
    );
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &config);
    agent.send_events(
        b"call-start 1-4242@127.0.1.1 tag=4242SIPpTag001\ncall-start phantom@x tag=1\n\
          reg alice sip:alice@10.0.0.9:5060 600\nreg alice sip:alice@10.0.0.1:5060 600\n",
    );
    agent.wait_usage("2 calls, 2 contacts", |u| {
        u["calls"] == 2 && u["registered_contacts"] == 2
    });
    let snapshots = agent.metric("tollgate_snapshots_total");
    let answer = post_reconcile(&agent);
    let c = &answer["runs"][0]["corrections"];
    assert_eq!(
        (
            &c["phantom_call"],
            &c["missing_call"],
            &c["phantom_contact"],
            &c["missing_contact"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{answer:#}"
    );
    // No checkpoint was taken for them: only the journal holds them.
    assert_eq!(agent.metric("tollgate_snapshots_total"), snapshots);
    agent.kill9();
    *stop.lock().unwrap() = true;
    let _ = std::net::TcpStream::connect(mi);

    let agent = Agent::start(&state, &config);
    let replayed = agent.metric("tollgate_journal_replayed_records");
    assert!(
        replayed.unwrap_or(0.0) >= 2.0,
        "{replayed:?} {:?}",
        counts(&agent)
    );
    assert_eq!(counts(&agent), (2, 2), "the corrections replayed");
    // Exactly those: the listed calls and contacts are here (their stops and removals end
    // them), the phantoms are not.
    agent.send_events(
        b"call-stop 1-4242@127.0.1.1 tag=4242SIPpTag001\n\
          call-stop 3-4242@127.0.1.1 tag=4242SIPpTag003\n\
          reg alice sip:alice@10.0.0.1:5060 0\nreg bob sip:bob@10.0.0.3:5060 0\n",
    );
    agent.wait_usage("nothing left", |u| {
        u["calls"] == 0 && u["registered_contacts"] == 0
    });
}

/// Owners are in the snapshot (format 4): after restarts that leave nothing in the journal,
/// a source with a `sender` still corrects the entries its sender reported, and only those.
#[test]
fn a_senders_entries_stay_its_own_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(Mutex::new(false));
    let (mi, _mode, _acceptor) = mi_http(Arc::clone(&stop));
    let config = admin_config(
        dir.path(),
        &format!(
            "[[reconcile]]\nkind = \"opensips\"\nurl = \"http://{mi}/mi\"\ninterval_s = 0\nsender = \"osips1\"\n"
        ),
    );
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &config);
    agent.send_events(b"seq osips1 1\ncall-start phantom@x tag=1\ncall-start 1-4242@127.0.1.1 tag=4242SIPpTag001\n");
    agent.send_events(b"call-start unowned@x tag=1\n");
    agent.wait_usage("3 calls", |u| u["calls"] == 3);
    let (status, _) = agent.stop();
    assert!(status.success());
    // The first restart replays nothing (the stop's snapshot holds everything) and writes
    // its own snapshot; the second restores only that one.
    let (status, _) = Agent::start(&state, &config).stop();
    assert!(status.success());
    let agent = Agent::start(&state, &config);
    assert_eq!(agent.usage()["calls"], 3);
    assert_eq!(
        agent
            .metric("tollgate_journal_replayed_records")
            .unwrap_or(0.0),
        0.0
    );
    let answer = post_reconcile(&agent);
    let c = &answer["runs"][0]["corrections"];
    assert_eq!(
        (&c["phantom_call"], &c["missing_call"]),
        (&1.into(), &1.into()),
        "{answer:#}"
    );
    // phantom@x (osips1's) is gone, unowned@x (nobody's) stays, 3-4242 was added.
    assert_eq!(agent.usage()["calls"], 3);
    agent.send_events(b"call-stop unowned@x tag=1\n");
    agent.wait_usage("2 calls", |u| u["calls"] == 2);
    *stop.lock().unwrap() = true;
    let _ = std::net::TcpStream::connect(mi);
}
