//! Helpers for whole-system tests: start the real `tollgate` binary on loopback with
//! ephemeral ports and a temp state dir, talk to it over real sockets.

#![allow(dead_code)]

// Cluster CAs and node certificates need the `cluster-ca` feature (tests that mesh agents
// require it); a `--no-default-features` build compiles the other tests without it.
pub mod browser;
#[cfg(feature = "cluster-ca")]
pub mod mesh;
pub mod wan;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// What `agent.json` says.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Runtime {
    pub pid: u32,
    pub node_id: String,
    pub admin: SocketAddr,
    pub events_udp: Option<SocketAddr>,
    pub events_unix: Option<PathBuf>,
    #[serde(default)]
    pub admit_udp: Option<SocketAddr>,
    #[serde(default)]
    pub mesh: Option<SocketAddr>,
    #[serde(default)]
    pub hep: Option<SocketAddr>,
}

/// A running agent process.
pub struct Agent {
    pub child: Child,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub rt: Runtime,
    /// The network namespace it runs in (`None`: this process's).
    pub netns: Option<String>,
    /// Its log (stderr), read as it is written.
    pub log: LogCapture,
}

/// A child's stderr, read line by line on a thread of its own as the child writes it (so a
/// test can wait for a line while the process runs, and a chatty process never blocks on a
/// full pipe).
pub struct LogCapture {
    text: Arc<Mutex<String>>,
    /// The reader, which ends at the end of the pipe.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LogCapture {
    /// Takes `child`'s piped stderr and starts reading it.
    pub fn start(child: &mut Child) -> LogCapture {
        let text = Arc::new(Mutex::new(String::new()));
        let reader = child.stderr.take().map(|stderr| {
            let text = Arc::clone(&text);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    text.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            })
        });
        LogCapture { text, reader }
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything, once the process has exited: waits (a bounded time) for the reader to
    /// reach the end of the pipe.
    pub fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        self.text()
    }
}

/// A config with ephemeral ports and quick snapshots; `extra` is appended verbatim.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    let text = format!(
        "[general]\nnode_id = \"test-node\"\n\n[ingest]\nudp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{extra}\n"
    );
    std::fs::write(&config, text).unwrap();
    config
}

impl Agent {
    pub fn start(state_dir: &Path, config: &Path) -> Agent {
        Agent::start_in(None, state_dir, config)
    }

    /// Starts the agent inside network namespace `netns` (`ip netns exec`, which execs, so
    /// the child is the agent itself); its addresses are then that namespace's.
    pub fn start_in(netns: Option<&str>, state_dir: &Path, config: &Path) -> Agent {
        Agent::start_with(netns, state_dir, config, &[])
    }

    /// Starts the agent with `env` set for it alone (libfaketime's `LD_PRELOAD`, …).
    pub fn start_with_env(
        state_dir: &Path,
        config: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Agent {
        Agent::start_with(None, state_dir, config, env)
    }

    fn start_with(
        netns: Option<&str>,
        state_dir: &Path,
        config: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Agent {
        let _ = std::fs::remove_file(state_dir.join("agent.json"));
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(["agent", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(state_dir)
            .env("TOLLGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tollgate agent");
        let log = LogCapture::start(&mut child);
        let mut agent = Agent {
            child,
            state_dir: state_dir.to_owned(),
            config: config.to_owned(),
            rt: Runtime {
                pid: 0,
                node_id: String::new(),
                admin: "127.0.0.1:1".parse().unwrap(),
                events_udp: None,
                events_unix: None,
                admit_udp: None,
                mesh: None,
                hep: None,
            },
            netns: netns.map(str::to_owned),
            log,
        };
        let runtime_file = state_dir.join("agent.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(bytes) = std::fs::read(&runtime_file)
                && let Ok(rt) = serde_json::from_slice::<Runtime>(&bytes)
                && rt.pid == agent.child.id()
            {
                agent.rt = rt;
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent exited early with {status}: {}", agent.log.finish());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not write agent.json in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn udp(&self) -> SocketAddr {
        self.rt.events_udp.expect("agent has a UDP socket")
    }

    pub fn unix(&self) -> PathBuf {
        self.rt
            .events_unix
            .clone()
            .expect("agent has a unix socket")
    }

    /// Runs `f` in the agent's network namespace, where its addresses are reachable.
    pub fn reach<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            Some(ns) => wan::in_netns(ns, f),
            None => f(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.reach(|| http_get(self.rt.admin, path))
    }

    /// Sends one datagram to the agent's UDP event socket.
    pub fn send_events(&self, datagram: &[u8]) {
        self.reach(|| send_udp(self.udp(), datagram));
    }

    pub fn usage(&self) -> serde_json::Value {
        let (status, body) = self.get("/api/v1/usage");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls usage until `pred` holds (or panics after 10 s with the last value).
    pub fn wait_usage(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let u = self.usage();
            if pred(&u) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last usage: {u:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of one metric line (exact series name with labels), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// SIGKILL: no final snapshot.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }

    /// Polls the agent's log until a line contains `needle` (or panics after `secs` with
    /// the log so far).
    pub fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.log.text();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the log line {needle:?}; log so far:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log.finish());
            }
            assert!(Instant::now() < deadline, "agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, None, b"")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn send_udp(to: SocketAddr, datagram: &[u8]) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(datagram, to).unwrap();
}

pub fn send_unix(to: &Path, datagram: &[u8]) {
    let s = UnixDatagram::unbound().unwrap();
    s.send_to(datagram, to).unwrap();
}

/// An HTTP/1.1 request with optional basic auth and a body: status code and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &[u8],
) -> (u16, String) {
    use base64::Engine as _;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = auth
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(body)
        }
        Some((_, body)) => body.to_owned(),
        None => String::new(),
    };
    (status, body)
}

/// Waits until a snapshot that began after this call has been written, so it holds what
/// the agent had applied before it: the count of snapshots written must pass the count now
/// by two (one may have been under way, taken before, when the count was read).
pub fn wait_next_snapshot(agent: &Agent) {
    let before = agent.metric("tollgate_snapshots_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.metric("tollgate_snapshots_total").unwrap_or(0.0) < before + 2.0 {
        assert!(Instant::now() < deadline, "no snapshot written");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Says loudly that a whole-system test did not run: what is missing and how to run it.
/// Written to the process's stderr directly, past the test harness's capture, so it shows
/// in a plain `cargo test` that passes.
pub fn skipped(test: &str, why: &str, how: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: {why}\n*** to run it: {how}\n"
    );
}
