//! The state directory under pressure (issue 11): a journal that reaches its bound while
//! snapshots fail, a full disk, a read-only state dir. Real agent processes; the disk is
//! made full for real (a small tmpfs in a mount namespace this test creates) and snapshots
//! are made to fail for real (a file-size limit, `RLIMIT_FSIZE`, with `SIGXFSZ` ignored so
//! the write fails with `EFBIG` instead of killing the agent).
//!
//! Each test needs `unshare`/`nsenter` (util-linux) and the right to create a mount
//! namespace (root, or unprivileged user namespaces); where that is missing the test says so
//! loudly on stderr and passes without running (`TOLLGATE_REQUIRE_NAMESPACES=1` makes that
//! a failure, as in CI).
//!
//! **How the sender knows what the agent applied.** As in `tests/crash.rs`: every datagram
//! ends with an `admit` query, answered only after the datagram was appended to the journal
//! (or refused by it) and applied; one datagram in flight at a time.

mod common;

use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, LogCapture, Runtime, write_config};

/// Sends `datagram` until its `admit` reply arrives.
fn send_acked(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no admit reply in 60 s");
        if socket.send_to(datagram, to).is_err() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
}

/// A sender of call starts with unique ids; `calls` is the truth.
struct Sender {
    socket: UdpSocket,
    next: u64,
    calls: u64,
}

impl Sender {
    fn new() -> Sender {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Sender {
            socket,
            next: 0,
            calls: 0,
        }
    }

    /// One acknowledged datagram of `n` new calls.
    fn starts(&mut self, agent: &Agent, n: u64) {
        let mut text = String::new();
        for _ in 0..n {
            text.push_str(&format!("call-start state-limits-{}@h tag=t\n", self.next));
            self.next += 1;
        }
        text.push_str(&format!("admit probe-{}\n", self.next));
        send_acked(&self.socket, agent.udp(), text.as_bytes());
        self.calls += n;
    }
}

fn calls(agent: &Agent) -> u64 {
    agent.usage()["calls"].as_u64().unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts an agent with `command` (the program and any leading arguments, ending in the
/// tollgate binary); `visible` is where the test sees the state dir (it differs from
/// `state_dir` when the agent runs in another mount namespace).
fn start(mut command: Command, visible: &Path, state_dir: &Path, config: &Path) -> Agent {
    let _ = std::fs::remove_file(visible.join("agent.json"));
    let mut child: Child = command
        .args(["agent", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state_dir)
        .env("TOLLGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate agent");
    let mut log = LogCapture::start(&mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = std::fs::read(visible.join("agent.json"))
            && let Ok(rt) = serde_json::from_slice::<Runtime>(&bytes)
            && rt.pid == child.id()
        {
            return Agent {
                child,
                state_dir: visible.to_owned(),
                config: config.to_owned(),
                rt,
                netns: None,
                log,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("agent exited early with {status}: {}", log.finish());
        }
        assert!(Instant::now() < deadline, "agent did not start in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn namespaces_available() -> bool {
    let ok = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Command::new("unshare")
            .args(["-rm", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "\n*** SKIPPED: cannot create a mount namespace (unshare -m): the full-disk and \
             read-only state-dir tests did not run ***\n"
        );
        assert!(
            std::env::var_os("TOLLGATE_REQUIRE_NAMESPACES").is_none(),
            "TOLLGATE_REQUIRE_NAMESPACES is set but mount namespaces are not available"
        );
    }
    ok
}

/// A mount namespace holding a tmpfs of `size` at `mountpoint`, kept alive by a `sleep`
/// process; agents join it with `nsenter`, the test reaches its files through
/// `/proc/<holder>/root`.
struct Namespace {
    holder: Child,
}

impl Namespace {
    fn with_tmpfs(mountpoint: &Path, size: &str, read_only: bool) -> Namespace {
        std::fs::create_dir_all(mountpoint).unwrap();
        let ro = if read_only { ",ro" } else { "" };
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut holder = Command::new("unshare");
        holder.arg(if as_root { "-m" } else { "-rm" });
        holder
            .args(["--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size},mode=0700{ro} tollgate-test \"$0\" && echo ready && exec sleep 600"
            ))
            .arg(mountpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut holder = holder.spawn().expect("unshare");
        let mut ready = [0u8; 6];
        holder
            .stdout
            .take()
            .unwrap()
            .read_exact(&mut ready)
            .expect("the namespace's tmpfs is mounted");
        assert_eq!(&ready, b"ready\n");
        Namespace { holder }
    }

    /// `path` as the test sees it.
    fn visible(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(path.strip_prefix("/").unwrap())
    }

    /// A command that runs the tollgate binary inside the namespace.
    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--"])
            .arg(common::BIN);
        c
    }

    /// Fills the tmpfs until no byte is left; returns the filler's path (as the test sees it).
    fn fill(&self, dir: &Path) -> PathBuf {
        let filler = self.visible(&dir.join("filler"));
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match std::io::Write::write(&mut f, &chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
        filler
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn journal_bytes(state: &Path) -> u64 {
    std::fs::read_dir(state.join("journal"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".journal"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn a_journal_at_its_bound_while_snapshots_fail_is_suspended_and_loud() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let max_bytes = 64 * 1024;
    let config = write_config(
        dir.path(),
        &format!("[state]\nsnapshot_interval_s = 1\njournal_max_bytes = {max_bytes}\n"),
    );
    // 10 000 calls in the snapshot (a clean stop writes it): about 270 KB.
    let agent = Agent::start(&state, &config);
    let mut sender = Sender::new();
    for _ in 0..100 {
        sender.starts(&agent, 100);
    }
    agent.stop();
    // Now every snapshot passes the 256 KiB file-size limit and fails with EFBIG; journal
    // segments stay far below it (their bound is 64 KiB).
    let mut limited = Command::new("sh");
    limited
        .args([
            "-c",
            "trap '' XFSZ; exec prlimit --fsize=262144 \"$@\"",
            "sh",
        ])
        .arg(common::BIN);
    let agent = start(limited, &state, &state, &config);
    assert_eq!(calls(&agent), sender.calls);
    wait_for("a failed snapshot", || {
        agent
            .metric("tollgate_snapshot_failures_total")
            .is_some_and(|v| v > 0.0)
    });
    // Go on until the journal is suspended; note the truth just before.
    let mut before = sender.calls;
    while agent.metric("tollgate_journal_suspended") != Some(1.0) {
        before = sender.calls;
        sender.starts(&agent, 100);
        assert!(
            sender.calls < 100_000,
            "the journal never reached its bound"
        );
    }
    assert!(before > 10_000);
    // Metering goes on, the journal stays within its bound, and the state is visible.
    for _ in 0..20 {
        sender.starts(&agent, 100);
    }
    assert_eq!(calls(&agent), sender.calls);
    let on_disk = journal_bytes(&state);
    assert!(on_disk <= max_bytes + 4096, "{on_disk} bytes of journal");
    assert!(
        agent
            .metric("tollgate_journal_unjournaled_batches_total")
            .is_some_and(|v| v >= 20.0)
    );
    assert_eq!(
        agent.metric("tollgate_journal_max_bytes"),
        Some(max_bytes as f64)
    );
    let (_, health) = agent.get("/healthz");
    assert!(
        health.starts_with("ok\njournal suspended: full since segment"),
        "{health}"
    );
    // A crash now loses what came after the gap, loudly; the replay is the state as of the
    // gap exactly (a prefix, never a batch missing in the middle).
    agent.kill9();
    let agent = Agent::start(&state, &config);
    assert_eq!(calls(&agent), before);
    let (_, health) = agent.get("/healthz");
    assert!(
        health.starts_with("ok\nstate reset: journal_gap"),
        "{health}"
    );
    assert_eq!(
        agent.metric("tollgate_state_resets_total{reason=\"journal_gap\"}"),
        Some(1.0)
    );
    assert_eq!(agent.metric("tollgate_journal_suspended"), Some(0.0));
    // Without the limit the journal works again: crash-exact from here on.
    sender.calls = before;
    sender.starts(&agent, 10);
    wait_for("a snapshot after the restart", || {
        agent
            .metric("tollgate_snapshots_total")
            .is_some_and(|v| v > 0.0)
    });
    sender.starts(&agent, 10);
    agent.kill9();
    let agent = Agent::start(&state, &config);
    assert_eq!(calls(&agent), sender.calls);
    agent.stop();
}

#[test]
fn a_full_disk_suspends_the_journal_metering_goes_on_and_recovers() {
    if !namespaces_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("disk");
    let state = mountpoint.join("state");
    let config = write_config(dir.path(), "[state]\nsnapshot_interval_s = 1\n");
    let ns = Namespace::with_tmpfs(&mountpoint, "4m", false);
    let visible = ns.visible(&state);
    let agent = start(ns.command(), &visible, &state, &config);
    let mut sender = Sender::new();
    for _ in 0..10 {
        sender.starts(&agent, 50);
    }
    // The disk fills up: snapshots and journal appends fail, counting goes on.
    let filler = ns.fill(&mountpoint);
    let mut before = sender.calls;
    while agent.metric("tollgate_journal_suspended") != Some(1.0) {
        before = sender.calls;
        sender.starts(&agent, 50);
        assert!(
            sender.calls < 200_000,
            "the journal never failed on a full disk"
        );
    }
    for _ in 0..10 {
        sender.starts(&agent, 50);
    }
    assert_eq!(calls(&agent), sender.calls);
    assert!(
        agent
            .metric("tollgate_journal_write_failures_total")
            .is_some_and(|v| v >= 1.0)
    );
    let (_, health) = agent.get("/healthz");
    assert!(
        health.contains("journal suspended: write_failed"),
        "{health}"
    );
    // Room again: the next checkpoint covers the gap and the journal resumes.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the journal to resume", || {
        agent.metric("tollgate_journal_suspended") == Some(0.0)
    });
    let written = agent.metric("tollgate_snapshots_total").unwrap();
    wait_for("a snapshot after the resume", || {
        agent
            .metric("tollgate_snapshots_total")
            .is_some_and(|v| v > written)
    });
    sender.starts(&agent, 50);
    agent.kill9();
    let agent = start(ns.command(), &visible, &state, &config);
    assert_eq!(
        calls(&agent),
        sender.calls,
        "crash-exact again after the disk had room"
    );
    assert_eq!(agent.get("/healthz").1, "ok\n");

    // Full again, and a crash before there is room: the state as of the gap, loudly.
    let filler = ns.fill(&mountpoint);
    let mut before_gap = sender.calls;
    while agent.metric("tollgate_journal_suspended") != Some(1.0) {
        before_gap = sender.calls;
        sender.starts(&agent, 50);
        assert!(
            sender.calls < 400_000,
            "the journal never failed on a full disk"
        );
    }
    sender.starts(&agent, 50);
    agent.kill9();
    std::fs::remove_file(&filler).unwrap();
    let agent = start(ns.command(), &visible, &state, &config);
    assert_eq!(calls(&agent), before_gap);
    let (_, health) = agent.get("/healthz");
    assert!(health.contains("state reset: journal_gap"), "{health}");
    let _ = before;
    agent.stop();
}

#[test]
fn a_read_only_state_dir_is_refused_at_start_with_a_clear_error() {
    if !namespaces_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("ro");
    let state = mountpoint.join("state");
    let config = write_config(dir.path(), "");
    let ns = Namespace::with_tmpfs(&mountpoint, "1m", true);
    let out = ns
        .command()
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an agent ran on a read-only state dir"
    );
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert!(err.to_lowercase().contains("read-only"), "{err}");
}
