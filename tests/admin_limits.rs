//! Bounded resources and hostile input against a real agent process (issue 11, items 3 and
//! 4): idle and slow connections to the admin port, password guessing, and numbers meant
//! to overflow counters, all over real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Agent, http_get, send_udp, write_config};

/// Raises this process's open-file limit to its hard limit (the agent, a child, inherits
/// it), so the test itself can hold more than 1 024 sockets.
fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `f` until it returns `Some` or `what` times out after `secs`.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn eleven_hundred_idle_connections_leave_the_agent_working_within_its_cap() {
    let hard = raise_nofile_limit();
    assert!(
        hard >= 1_500,
        "the test needs an open-file hard limit of 1500 ({hard})"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 1\n");
    let agent = Agent::start(&dir.path().join("state"), &config);
    let max_connections = 256;
    let baseline_fds = open_fds(agent.rt.pid);

    // 1 100 connections that never send a byte (as fast as the kernel accepts them).
    let idle: Vec<TcpStream> = (0..1_100)
        .map(|_| TcpStream::connect_timeout(&agent.rt.admin, Duration::from_secs(5)).unwrap())
        .collect();

    // Health and metrics still answer on fresh connections (each evicts an idle one).
    let (status, body) = http_get(agent.rt.admin, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let evicted = wait_for("evictions at the cap", 20, || {
        agent
            .metric("tollgate_admin_connections_closed_total{reason=\"evicted\"}")
            .filter(|&n| n >= (1_100 - max_connections) as f64)
    });
    assert!(evicted >= 844.0, "{evicted}");
    let open = agent.metric("tollgate_admin_connections").unwrap();
    assert!(open <= max_connections as f64, "open connections {open}");
    let fds = open_fds(agent.rt.pid);
    assert!(
        fds <= baseline_fds + max_connections + 16,
        "the agent holds {fds} fds ({baseline_fds} before the flood)"
    );
    // Snapshots keep being written: no `Too many open files`.
    let written = agent.metric("tollgate_snapshots_total").unwrap();
    wait_for("two more snapshots", 20, || {
        (agent.metric("tollgate_snapshots_total").unwrap() >= written + 2.0).then_some(())
    });
    assert_eq!(agent.metric("tollgate_snapshot_failures_total"), Some(0.0));
    drop(idle);
}

#[test]
fn slow_header_and_idle_clients_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // `write_config` already has an `[admin]` table: put the keys in it.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\nheader_timeout_s = 1\nidle_timeout_s = 3\n",
    );
    std::fs::write(&config, text).unwrap();
    let agent = Agent::start(&dir.path().join("state"), &config);

    // A client trickling its header one byte every 200 ms is cut off.
    let mut slow = TcpStream::connect(agent.rt.admin).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut closed = false;
    for byte in header.iter() {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("a response to an incomplete header"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the slow client was never disconnected");
    assert!(started.elapsed() < Duration::from_secs(30));
    wait_for("a header timeout counted", 10, || {
        (agent.metric("tollgate_admin_connections_closed_total{reason=\"header_timeout\"}")? >= 1.0)
            .then_some(())
    });

    // A keep-alive connection that goes quiet after a request is closed when idle.
    let mut quiet = TcpStream::connect(agent.rt.admin).unwrap();
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let closed_at = loop {
        match quiet.read(&mut buf) {
            Ok(0) | Err(_) => break Instant::now(),
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    };
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"),
        "the request itself was answered"
    );
    assert!(closed_at.elapsed() < Duration::from_secs(20));
    // The agent still answers.
    assert_eq!(http_get(agent.rt.admin, "/healthz").0, 200);
}

/// Status, headers (lowercased names) and body of one request with basic auth.
fn request_with_auth(admin: SocketAddr, path: &str, user: &str, password: &str) -> (u16, String) {
    use base64::Engine as _;
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {credentials}\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (status, head)
}

#[test]
fn password_guessing_is_throttled_per_address_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let hash = tollgate_agent::auth::hash_password("right-pw").unwrap();
    let config = write_config(
        dir.path(),
        &format!("[[admin.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"),
    );
    let agent = Agent::start(&dir.path().join("state"), &config);
    let verifications = || {
        agent
            .metric("tollgate_admin_password_verifications_total")
            .unwrap()
    };

    // An unknown user costs one argon2 verification, exactly like a wrong password.
    let before = verifications();
    assert_eq!(
        request_with_auth(agent.rt.admin, "/api/v1/license", "nobody", "x").0,
        401
    );
    assert_eq!(verifications(), before + 1.0, "unknown user");
    assert_eq!(
        request_with_auth(agent.rt.admin, "/api/v1/license", "ops", "x").0,
        401
    );
    assert_eq!(verifications(), before + 2.0, "wrong password");

    // 300 wrong passwords: after 10 failures in the window, 429 with Retry-After.
    let mut statuses = std::collections::BTreeMap::new();
    let mut retry_after = None;
    for i in 0..300 {
        let (status, head) = request_with_auth(
            agent.rt.admin,
            "/api/v1/license",
            "ops",
            &format!("guess-{i}"),
        );
        *statuses.entry(status).or_insert(0) += 1;
        if status == 429 {
            retry_after = head
                .lines()
                .find_map(|l| l.strip_prefix("retry-after: "))
                .and_then(|v| v.trim().parse::<u64>().ok());
            assert!(retry_after.is_some(), "429 without Retry-After: {head}");
        }
    }
    assert_eq!(statuses.get(&401), Some(&8), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&292), "{statuses:?}");
    let retry_after = retry_after.unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // Throttled requests cost no hashing.
    assert_eq!(verifications(), before + 10.0);
    // While throttled, even the right password waits; reads without credentials do not.
    assert_eq!(
        request_with_auth(agent.rt.admin, "/api/v1/license", "ops", "right-pw").0,
        429
    );
    assert_eq!(http_get(agent.rt.admin, "/healthz").0, 200);
    assert_eq!(
        agent.metric("tollgate_admin_login_failures_total{result=\"throttled\"}"),
        Some(293.0)
    );
}

#[test]
fn hostile_numbers_over_the_text_protocol_change_nothing_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[calls]\nmax_active_calls = 3\n\n[registrations]\nmax_expires_s = 3600\n",
    );
    let agent = Agent::start(&dir.path().join("state"), &config);
    send_udp(agent.udp(), b"subscribers 1200\n");
    agent.wait_usage("the subscriber gauge", |u| u["subscribers"] == 1200);
    send_udp(
        agent.udp(),
        b"seq x 0\nsubscribers 18446744073709551615\nsubscribers 1099511627777\n",
    );
    send_udp(
        agent.udp(),
        b"seq x 18446744073709551615\nreg sip:a@x sip:a@1 4294967295\nreg sip:a@x sip:a@1 3601\nreg sip:a@x sip:a@2 3600\n",
    );
    send_udp(
        agent.udp(),
        b"call-start c1\ncall-start c2\ncall-start c3\ncall-start c4\n",
    );
    let u = agent.wait_usage("3 calls and a contact", |u| {
        u["calls"] == 3 && u["registered_contacts"] == 1
    });
    assert_eq!(u["subscribers"], 1200, "out-of-range counts change nothing");
    let metric = |series: &str| agent.metric(series).unwrap_or(-1.0);
    wait_for("the refused start counted", 10, || {
        (metric("tollgate_events_refused_total{reason=\"calls_table_full\"}") == 1.0).then_some(())
    });
    assert_eq!(
        metric("tollgate_events_malformed_total{reason=\"bad_number\"}"),
        4.0
    );
    assert_eq!(metric("tollgate_sender_restarts_total"), 1.0);
    assert_eq!(
        metric("tollgate_datagrams_lost_total"),
        0.0,
        "a jump is no loss"
    );
}
