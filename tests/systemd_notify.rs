//! `Type=notify` as systemd sees it: the test plays systemd's side of `$NOTIFY_SOCKET` (a
//! unix datagram socket it binds) and `$WATCHDOG_USEC`, starts the real binary, and reads
//! what arrives: `READY=1` once listeners are bound, `WATCHDOG=1` pings at half the
//! watchdog time, `STOPPING=1` at SIGTERM, then a clean exit. For the agent, and for the
//! license server started as the Debian package names it (`tollgate-license-server`).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

/// systemd's end of the notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    /// Every datagram received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            seen: Vec::new(),
        }
    }

    /// Receives until `done` holds for what was seen, or panics after a generous deadline
    /// (the machine may be loaded), naming what did arrive.
    fn wait_for(&mut self, what: &str, child: &mut Child, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        while !done(&self.seen) {
            assert!(
                Instant::now() < deadline,
                "no {what} on the notify socket; received: {:?}",
                self.seen
            );
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "process exited ({status}) before {what}; received: {:?}",
                    self.seen
                );
            }
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }
}

fn count(seen: &[String], line: &str) -> usize {
    seen.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// READY, WATCHDOG (at least twice), then STOPPING at SIGTERM, then exit 0; nothing of
/// it before READY.
fn check_lifecycle(mut child: Child, notify: &mut NotifySocket) {
    notify.wait_for("READY=1", &mut child, |seen| count(seen, "READY=1") == 1);
    let ready = notify
        .seen
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap()
        .clone();
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=")),
        "READY=1 carries a STATUS= line for `systemctl status`: {ready:?}"
    );
    assert_eq!(
        notify.seen.first(),
        Some(&ready),
        "READY=1 is the first notification"
    );
    notify.wait_for("two WATCHDOG=1 pings", &mut child, |seen| {
        count(seen, "WATCHDOG=1") >= 2
    });
    assert_eq!(count(&notify.seen, "STOPPING=1"), 0, "not stopping yet");
    sigterm(&child);
    notify.wait_for("STOPPING=1", &mut child, |seen| {
        count(seen, "STOPPING=1") == 1
    });
    let status = wait_exit(&mut child);
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    assert_eq!(count(&notify.seen, "READY=1"), 1, "READY=1 sent once");
}

#[test]
fn agent_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = common::write_config(dir.path(), "");
    let mut notify = NotifySocket::bind(&dir.path().join("notify.sock"));
    let child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        // WatchdogSec=0.4s: a ping every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    check_lifecycle(child, &mut notify);
}

#[test]
fn agent_sends_no_watchdog_pings_meant_for_another_process() {
    // systemd sets WATCHDOG_PID to the main process; a process that inherited the
    // variables (a child, a wrapper's exec) must not ping on its behalf.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = common::write_config(dir.path(), "");
    let mut notify = NotifySocket::bind(&dir.path().join("notify.sock"));
    let mut child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    notify.wait_for("READY=1", &mut child, |seen| count(seen, "READY=1") == 1);
    // The agent is up; were it pinging every 50 ms, the STOPPING=1 below would come after
    // several pings. Everything up to STOPPING=1 is in order on one datagram socket.
    sigterm(&child);
    notify.wait_for("STOPPING=1", &mut child, |seen| {
        count(seen, "STOPPING=1") == 1
    });
    assert!(wait_exit(&mut child).success());
    assert_eq!(
        count(&notify.seen, "WATCHDOG=1"),
        0,
        "WATCHDOG_PID names another process: no pings; received {:?}",
        notify.seen
    );
}

#[cfg(feature = "license-server")]
#[test]
fn license_server_called_by_its_package_name_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    // The Debian package installs the full binary as /usr/bin/tollgate-license-server.
    let named = dir.path().join("tollgate-license-server");
    std::os::unix::fs::symlink(BIN, &named).unwrap();
    let config = dir.path().join("license-server.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndatabase = \"db/license-server.db\"\n\n\
         [signing]\nkey_dir = \"keys\"\n",
    )
    .unwrap();
    let mut notify = NotifySocket::bind(&dir.path().join("notify.sock"));
    let child = Command::new(&named)
        .args(["--dev", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    check_lifecycle(child, &mut notify);
    let ready = &notify.seen[0];
    assert!(
        ready.contains("STATUS=serving on https://127.0.0.1:"),
        "{ready:?}"
    );
}
