#![allow(dead_code)]
//! A vendor's license server as a real process, for whole-system tests that need one next to
//! real agents (`#[path = "common/vendor.rs"] mod vendor;`). The server never inherits the
//! test's `LD_PRELOAD` (libfaketime is for agents only).

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
pub const LICENSE_KEY: &str = "ACME_0001";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A vendor's directory: config, database, keys, spec.
pub struct Vendor {
    pub dir: tempfile::TempDir,
}

impl Vendor {
    pub fn new() -> Vendor {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = "listen = \"127.0.0.1:0\"\ndatabase = \"db/license-server.db\"\nlease_days = 14\n\
                      [signing]\nkey_dir = \"keys\"\n";
        std::fs::write(dir.path().join("server.toml"), config).unwrap();
        Vendor { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("server.toml")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tollgate license-server admin ARGS`: stdout; panics on a non-zero exit.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["license-server", "--config"])
            .arg(self.config())
            .arg("admin")
            .args(args)
            .env_remove("TOLLGATE_LOG")
            .env_remove("LD_PRELOAD")
            .output()
            .expect("runs the binary");
        assert!(
            out.status.success(),
            "admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A customer, a license of `kind` valid until `valid_until_ms`, and a token for
    /// 127.0.0.1; returns the token.
    pub fn provision(&self, kind: &str, valid_until_ms: u64) -> String {
        self.admin_ok(&["customer", "add", "Acme Telecom"]);
        let spec = format!(
            "license_key = \"{LICENSE_KEY}\"\ncustomer = \"Acme Telecom\"\n\
             kind = \"{kind}\"\nserial = 1\nvalid_from = \"2020-01-01T00:00:00Z\"\n\
             valid_until = \"{}\"\n[limits]\ncalls = 100\n",
            tollgate_license::timestamp::format_rfc3339(tollgate_events::WallTime::from_unix_secs(
                valid_until_ms / 1000
            ))
        );
        std::fs::write(self.path("spec.toml"), spec).unwrap();
        self.admin_ok(&[
            "license",
            "create",
            "--spec",
            self.path("spec.toml").to_str().unwrap(),
        ]);
        let out = self.admin_ok(&[
            "token",
            "issue",
            "--license",
            LICENSE_KEY,
            "--allow",
            "127.0.0.1",
        ]);
        out.lines()
            .find(|l| l.starts_with("tg_"))
            .expect("the token is printed once")
            .to_owned()
    }

    /// `admin reports flags --json`, oldest first, as (flag, node id, report id).
    pub fn flags(&self) -> Vec<(String, String, Option<i64>)> {
        let mut flags: Vec<_> = self
            .admin_ok(&["reports", "flags", "--json"])
            .lines()
            .map(|l| {
                let f: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    f["kind"].as_str().unwrap().to_owned(),
                    f["node_id"].as_str().unwrap().to_owned(),
                    f["report_id"].as_i64(),
                )
            })
            .collect();
        flags.reverse();
        flags
    }
}

/// A running `tollgate license-server --dev`.
pub struct Server {
    child: Child,
    pub port: u16,
    banner: Vec<String>,
}

impl Server {
    pub fn start(vendor: &Vendor) -> Server {
        let (child, port, banner) = spawn_server(&vendor.config(), true);
        Server {
            child,
            port,
            banner,
        }
    }

    pub fn agent_config(&self, vendor: &Vendor, token: &str, node_id: &str) -> String {
        let keys: Vec<String> = self
            .banner
            .iter()
            .filter_map(|l| l.strip_prefix("trusted key"))
            .map(|k| format!("\"{}\"", k.trim()))
            .collect();
        format!(
            "[general]\nnode_id = \"{node_id}\"\nlicense_key = \"{LICENSE_KEY}\"\n\n\
             [ingest]\nudp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [report]\ninterval_s = 1\n\n\
             [license]\ntrusted_keys = [{}]\nserver = \"https://127.0.0.1:{}\"\n\
             token = \"{token}\"\nca_bundle = \"{}\"\n",
            keys.join(", "),
            self.port,
            vendor.path("db/dev-tls/cert.pem").display()
        )
    }

    /// The real license client, as an agent with `node_id` would use it.
    pub fn client(
        &self,
        vendor: &Vendor,
        token: &str,
        node_id: &str,
    ) -> tollgate_license_client::LicenseClient {
        let mut config = tollgate_license_client::ClientConfig::new(
            format!("https://127.0.0.1:{}", self.port).parse().unwrap(),
            LICENSE_KEY,
            token,
        );
        config.ca_bundle = Some(vendor.path("db/dev-tls/cert.pem"));
        config.system_proxy = false;
        config.timeout = Duration::from_secs(10);
        config.node_id = Some(node_id.into());
        tollgate_license_client::LicenseClient::new(config).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tollgate license-server --config <config>` (`--dev`: with a generated
/// certificate) and reads its start-up banner up to the trusted key lines: the child, the
/// port it listens on (from the banner's first line) and the banner. Panics with the
/// server's stderr if it exits first. The server never inherits `LD_PRELOAD`.
pub fn spawn_server(config: &Path, dev: bool) -> (Child, u16, Vec<String>) {
    let mut command = Command::new(BIN);
    command.args(["license-server", "--config"]).arg(config);
    if dev {
        command.arg("--dev");
    }
    let mut child = command
        .env("TOLLGATE_LOG", "info")
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate license-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut banner = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let done = line.starts_with("trusted key");
                banner.push(line);
                if done {
                    // All key lines follow one another; give the rest a moment.
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                        banner.push(line);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("license server exited early: {err}");
            }
        }
        assert!(Instant::now() < deadline, "no banner in time: {banner:?}");
    }
    let port = banner[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {:?}", banner[0]));
    (child, port, banner)
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
