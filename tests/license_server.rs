//! `tollgate license-server` and `tollgate license-server admin …` as real processes on
//! loopback, in temp dirs, reached by the real license client over real TLS: the vendor's
//! workflow end to end, the address binding, refusals, exit codes, restart.

mod common;
#[path = "common/vendor.rs"]
mod vendor;

use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_events::WallTime;

use tollgate_license::{PublicKey, TrustedKeys};
use tollgate_license_client::{ClientConfig, FetchError, LicenseClient, UsageFigures, UsageReport};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");
const LICENSE_KEY: &str = "ACME_0001";

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A vendor's directory: config, database, keys, spec.
struct Vendor {
    dir: tempfile::TempDir,
}

impl Vendor {
    fn new(tls: &str) -> Vendor {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndatabase = \"db/license-server.db\"\nlease_days = 14\n\
             {tls}\n[signing]\nkey_dir = \"keys\"\n"
        );
        std::fs::write(dir.path().join("server.toml"), config).unwrap();
        Vendor { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("server.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn admin(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(["license-server", "--config"])
            .arg(self.config())
            .arg("admin")
            .args(args)
            .env_remove("TOLLGATE_LOG")
            .output()
            .expect("runs the binary");
        Output {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `admin ARGS…` with `input` on its standard input (a password).
    fn admin_with_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(BIN)
            .args(["license-server", "--config"])
            .arg(self.config())
            .arg("admin")
            .args(args)
            .env_remove("TOLLGATE_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs the binary");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writes the password");
        let out = child.wait_with_output().expect("exits");
        Output {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert_eq!(out.code, 0, "admin {args:?}: {}", out.stderr);
        out.stdout
    }

    /// Customer, a subscription license ending in 5 days, and a token for `allow`.
    fn provision(&self, allow: &str) -> String {
        self.provision_with(allow, "")
    }

    /// Like `provision`, `extra` appended to the license spec (e.g. a `[policy]` table).
    fn provision_with(&self, allow: &str, extra: &str) -> String {
        self.admin_ok(&["customer", "add", "Acme Telecom"]);
        let valid_until = tollgate_license::timestamp::format_rfc3339(WallTime::from_unix_ms(
            now_ms() / 1000 * 1000 + 5 * tollgate_license::timestamp::DAY_MS,
        ));
        let spec = format!(
            "license_key = \"{LICENSE_KEY}\"\ncustomer = \"Acme Telecom\"\n\
             kind = \"subscription\"\nserial = 1\nvalid_from = \"2020-01-01T00:00:00Z\"\n\
             valid_until = \"{valid_until}\"\n[limits]\ncalls = 100\n{extra}"
        );
        std::fs::write(self.path("spec.toml"), spec).unwrap();
        self.admin_ok(&[
            "license",
            "create",
            "--spec",
            self.path("spec.toml").to_str().unwrap(),
        ]);
        let out = self.admin_ok(&["token", "issue", "--license", LICENSE_KEY, "--allow", allow]);
        out.lines()
            .find(|l| l.starts_with("tg_"))
            .expect("the token is printed once")
            .to_owned()
    }
}

/// A running `tollgate license-server`.
struct Server {
    child: Child,
    port: u16,
    /// What it printed at start (address, certificate, fingerprint, keys).
    banner: Vec<String>,
}

impl Server {
    fn start(vendor: &Vendor, dev: bool) -> Server {
        let (child, port, banner) = vendor::spawn_server(&vendor.config(), dev);
        Server {
            child,
            port,
            banner,
        }
    }

    fn line(&self, prefix: &str) -> &str {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", self.banner))
            .trim()
    }

    fn trusted(&self) -> TrustedKeys {
        let mut trusted = TrustedKeys::new();
        for line in self
            .banner
            .iter()
            .filter_map(|l| l.strip_prefix("trusted key"))
        {
            trusted
                .insert(PublicKey::from_file_str(line.trim()).unwrap())
                .unwrap();
        }
        trusted
    }

    fn client_config(&self, vendor: &Vendor, token: &str) -> ClientConfig {
        let mut config = ClientConfig::new(
            format!("https://127.0.0.1:{}", self.port).parse().unwrap(),
            LICENSE_KEY,
            token,
        );
        config.ca_bundle = Some(vendor.path("db/dev-tls/cert.pem"));
        config.system_proxy = false;
        config.timeout = Duration::from_secs(10);
        config
    }

    fn client(&self, vendor: &Vendor, token: &str) -> LicenseClient {
        LicenseClient::new(self.client_config(vendor, token)).unwrap()
    }

    /// SIGTERM; the exit code and stderr.
    fn stop(mut self) -> (i32, String) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                return (status.code().unwrap_or(-1), err);
            }
            assert!(Instant::now() < deadline, "license server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn status_of(result: Result<impl std::fmt::Debug, FetchError>) -> (u16, String) {
    match result {
        Err(FetchError::Http { status, error, .. }) => (status, error.unwrap_or_default()),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[test]
fn dev_server_prints_its_certificate_and_serves_leases_and_reports() {
    let vendor = Vendor::new("");
    let server = Server::start(&vendor, true);
    assert!(
        server.banner[0].starts_with("tollgate license server listening on https://127.0.0.1:")
    );
    let fingerprint = server.line("sha256");
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    assert!(
        fingerprint.split(':').all(|b| b.len() == 2),
        "{fingerprint}"
    );
    assert!(server.line("certificate").contains("dev-tls/cert.pem"));
    assert!(vendor.path("db/dev-tls/cert.pem").exists());
    assert!(
        server.line("created key").ends_with(".key"),
        "dev creates a first key"
    );
    let token = vendor.provision("127.0.0.1");
    assert!(token.len() > 40, "{token}");

    let rt = runtime();
    let client = server.client(&vendor, &token);
    let lease = rt.block_on(client.fetch_lease()).unwrap();
    assert_eq!(lease.license_key, LICENSE_KEY);
    assert!(lease.renewed);
    let verified = tollgate_license::verify(lease.license.as_bytes(), &server.trusted()).unwrap();
    assert_eq!(verified.document().serial, lease.serial);
    let day = tollgate_license::timestamp::DAY_MS;
    assert!(
        lease
            .signature_valid_until
            .unix_ms()
            .abs_diff(now_ms() + 14 * day)
            < 60_000
    );
    assert!(
        lease
            .valid_until
            .unwrap()
            .unix_ms()
            .abs_diff(now_ms() + 30 * day)
            < 60_000
    );

    let report = UsageReport {
        node_id: "sp1".into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        timestamp: WallTime::from_unix_ms(now_ms()),
        since: None,
        license_serial: Some(lease.serial),
        node: UsageFigures {
            calls: 42,
            subscribers: 18,
            peak_calls: 50,
            ..UsageFigures::default()
        },
        cluster: None,
        admissions_denied: [("OVER_LIMIT".to_owned(), 4), ("EXPIRED".to_owned(), 1)].into(),
        ledger: Vec::new(),
    };
    rt.block_on(client.send_usage(&report)).unwrap();
    let reports = vendor.admin_ok(&["reports", "list", "--license", LICENSE_KEY]);
    assert!(reports.contains("\tsp1\t42\t50\t"), "{reports}");
    // Denied admissions by code are stored with the report as sent (issue 18).
    let stored = vendor.admin_ok(&["reports", "list", "--json", "--license", LICENSE_KEY]);
    let stored: serde_json::Value = serde_json::from_str(stored.lines().next().unwrap()).unwrap();
    assert_eq!(
        stored["report"]["admissions_denied"],
        serde_json::json!({"OVER_LIMIT": 4, "EXPIRED": 1}),
        "{stored}"
    );
    // The billing view of this month: one node, peak 50 within the limit of 100 (the
    // figures' arithmetic is tested in the crate's tests/billing.rs).
    let month = &tollgate_license::timestamp::format_rfc3339(report.timestamp)[..7];
    let csv = vendor.admin_ok(&["reports", "monthly", "--month", month, "--csv"]);
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert!(
        lines[0].starts_with("month,customer,license_key,nodes,reports,peak_calls,limit_calls,"),
        "{csv}"
    );
    assert_eq!(
        lines[1],
        format!("{month},Acme Telecom,{LICENSE_KEY},1,1,50,100,0,0,,0,18,,0,0"),
        "{csv}"
    );
    let table = vendor.admin_ok(&["reports", "monthly", "--license", LICENSE_KEY]);
    assert!(
        table.lines().any(|l| l.starts_with(&format!(
            "{month}\tAcme Telecom\t{LICENSE_KEY}\t1\t1\t50\t100\t0\t"
        ))),
        "{table}"
    );
    let out = vendor.admin(&["reports", "monthly", "--month", "2030-13"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let nodes = vendor.admin_ok(&["nodes"]);
    assert!(
        nodes.lines().nth(1).is_some_and(
            |l| l.starts_with(&format!("Acme Telecom\t{LICENSE_KEY}\tsp1\treporting\t"))
        ),
        "{nodes}"
    );
    assert_eq!(
        vendor.admin_ok(&["nodes", "--silent"]).lines().count(),
        1,
        "the header only"
    );
    let audit = vendor.admin_ok(&["audit"]);
    for action in [
        "customer.add",
        "license.create",
        "token.issue",
        "lease.signed",
    ] {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("lease signed"), "{stderr}");
    assert!(!stderr.contains(&token), "the token is never logged");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {stderr:?}"
    );
}

#[test]
fn refusals_from_the_real_server() {
    let vendor = Vendor::new("");
    let server = Server::start(&vendor, true);
    let token = vendor.provision("127.0.0.1");
    let rt = runtime();

    // From another source address.
    let mut config = server.client_config(&vendor, &token);
    config.bind_address = Some(IpAddr::from([127, 0, 0, 2]));
    let client = LicenseClient::new(config).unwrap();
    assert_eq!(
        status_of(rt.block_on(client.fetch_lease())),
        (403, "source_address_not_allowed".into())
    );

    // An unknown license key.
    let mut config = server.client_config(&vendor, &token);
    config.license_key = "NOPE".into();
    let client = LicenseClient::new(config).unwrap();
    assert_eq!(
        status_of(rt.block_on(client.fetch_lease())),
        (404, "unknown_license".into())
    );

    // A bad token.
    let client = server.client(&vendor, "tg_wrong");
    assert_eq!(
        status_of(rt.block_on(client.fetch_lease())),
        (401, "bad_token".into())
    );

    // Revoked.
    let client = server.client(&vendor, &token);
    rt.block_on(client.fetch_lease()).unwrap();
    let list = vendor.admin_ok(&["token", "list"]);
    let id = list.split('\t').next().unwrap().to_owned();
    vendor.admin_ok(&["token", "revoke", &id]);
    assert_eq!(
        status_of(rt.block_on(client.fetch_lease())),
        (403, "token_revoked".into())
    );

    let (code, stderr) = server.stop();
    assert_eq!(code, 0);
    for reason in [
        "source_address_not_allowed",
        "unknown_license",
        "token_revoked",
    ] {
        assert!(stderr.contains(reason), "{reason} logged: {stderr}");
    }
    // A missing or unknown token is not logged per request (anyone can send them): it is
    // counted, throttled per address and summarised once a minute (issue 17).
    assert!(!stderr.contains("reason=\"bad_token\""), "{stderr}");
}

#[test]
fn restart_with_the_certificate_as_configured_files_keeps_state() {
    let vendor = Vendor::new("");
    let server = Server::start(&vendor, true);
    let token = vendor.provision("127.0.0.1");
    let rt = runtime();
    let first = rt
        .block_on(server.client(&vendor, &token).fetch_lease())
        .unwrap();
    assert_eq!(server.stop().0, 0);

    // The same files, now as a production configuration: [tls] cert and key, no --dev.
    let config = std::fs::read_to_string(vendor.config()).unwrap();
    let config = config.replace(
        "lease_days = 14\n",
        "lease_days = 7\n[tls]\ncert = \"db/dev-tls/cert.pem\"\nkey = \"db/dev-tls/key.pem\"\n",
    );
    std::fs::write(vendor.config(), config).unwrap();
    let server = Server::start(&vendor, false);
    let second = rt
        .block_on(server.client(&vendor, &token).fetch_lease())
        .unwrap();
    assert!(second.serial > first.serial);
    assert!(
        second.renewed,
        "a new lease length is answered with a new document at once"
    );
    let day = tollgate_license::timestamp::DAY_MS;
    assert!(
        second
            .signature_valid_until
            .unix_ms()
            .abs_diff(now_ms() + 7 * day)
            < 60_000
    );
    assert_eq!(server.stop().0, 0);
}

#[test]
fn a_signing_key_readable_by_others_refuses_the_start() {
    let vendor = Vendor::new("");
    let out = vendor.admin_ok(&["key", "rotate"]);
    let key_path = out
        .lines()
        .find_map(|l| l.strip_prefix("private key"))
        .and_then(|l| l.split_whitespace().next())
        .expect("prints the key file")
        .to_owned();
    assert!(out.contains("tollgate-ed25519-public:"), "{out}");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = std::fs::read_to_string(&key_path).unwrap();
    let out = Command::new(BIN)
        .args(["license-server", "--dev", "--config"])
        .arg(vendor.config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mode 0600"), "{stderr}");
    assert!(!stderr.contains(secret.trim()), "the key is never printed");
}

#[test]
fn configuration_and_admin_errors_exit_with_code_2() {
    let vendor = Vendor::new("");
    // No [tls] and no --dev.
    let out = Command::new(BIN)
        .args(["license-server", "--config"])
        .arg(vendor.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[tls]"));

    // An unknown key in the config file.
    std::fs::write(
        vendor.path("bad.toml"),
        "listen = \"127.0.0.1:0\"\nport = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["license-server", "--dev", "--config"])
        .arg(vendor.path("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `port`"));

    for args in [
        &["license", "show", "NOPE"][..],
        &["token", "revoke", "7"],
        &["customer", "add", ""],
    ] {
        let out = vendor.admin(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    vendor.admin_ok(&["customer", "add", "Acme Telecom"]);
    let out = vendor.admin(&[
        "token",
        "issue",
        "--license",
        "NOPE",
        "--allow",
        "10.0.0.1/8",
    ]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("did you mean 10.0.0.0/8"),
        "{}",
        out.stderr
    );

    // Admin without any way to find the database.
    let out = Command::new(BIN)
        .args(["license-server", "admin", "customer", "list"])
        .current_dir(vendor.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--db"));
}

/// Every admin command's output as the vendor reads it (the binary's printing over the
/// library's actions): tables, the license history, JSON lines, the token shown once, the
/// password read from standard input, the audit actor `admin:<$USER>`.
#[test]
fn admin_cli_prints_what_each_command_did() {
    let vendor = Vendor::new("");
    let rotated = vendor.admin_ok(&["key", "rotate"]);
    let key_id = rotated
        .lines()
        .find_map(|l| l.strip_prefix("key id"))
        .expect("key id line")
        .trim()
        .to_owned();
    assert!(rotated.contains("(mode 0600)"), "{rotated}");
    let keys = vendor.admin_ok(&["key", "list"]);
    assert!(
        keys.starts_with(&format!("{key_id}\tsigning\tactivates ")),
        "{keys}"
    );
    let out = vendor.admin_ok(&["customer", "add", "Acme Telecom"]);
    assert_eq!(out, "customer 1 added: Acme Telecom\n");

    std::fs::write(
        vendor.path("spec.toml"),
        format!(
            "license_key = \"{LICENSE_KEY}\"\ncustomer = \"Acme Telecom\"\nkind = \"perpetual\"\n\
             serial = 1\nvalid_from = \"2020-01-01T00:00:00Z\"\n[limits]\ncalls = 100\n"
        ),
    )
    .unwrap();
    let spec = vendor.path("spec.toml");
    let spec = spec.to_str().unwrap();
    let out = vendor.admin_ok(&["license", "create", "--spec", spec, "--contract", "lapsed"]);
    assert!(
        out.starts_with(&format!(
            "license {LICENSE_KEY} created for Acme Telecom: perpetual serial 1, contract \
             lapsed, signed by key {key_id}\nkind         perpetual\n"
        )),
        "{out}"
    );
    let out = vendor.admin_ok(&["license", "update", LICENSE_KEY, "--spec", spec]);
    assert!(
        out.starts_with(&format!("license {LICENSE_KEY} updated: serial 2\n")),
        "{out}"
    );
    let out = vendor.admin_ok(&["contract", LICENSE_KEY, "active"]);
    assert_eq!(
        out,
        format!("contract of {LICENSE_KEY}: active (was lapsed)\n")
    );
    let list = vendor.admin_ok(&["license", "list"]);
    assert!(
        list.starts_with(&format!(
            "{LICENSE_KEY}\tAcme Telecom\tperpetual\tserial 2\tcontract active\tvalid until forever"
        )),
        "{list}"
    );

    // One license: suspended and resumed by the CLI, shown in list and show, audited with
    // the CLI's actor.
    let out = vendor.admin_ok(&["license", "suspend", LICENSE_KEY]);
    assert_eq!(
        out,
        format!("license {LICENSE_KEY} suspended: its leases answer 403 suspended from now on\n")
    );
    let list = vendor.admin_ok(&["license", "list"]);
    assert!(list.trim_end().contains("\tsuspended 20"), "{list}");
    let show = vendor.admin_ok(&["license", "show", LICENSE_KEY]);
    assert!(show.contains("\nstate        suspended 20"), "{show}");
    let out = vendor.admin(&["license", "suspend", "NO_SUCH_LICENSE"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("NO_SUCH_LICENSE"), "{}", out.stderr);
    vendor.admin_ok(&["customer", "suspend", "Acme Telecom"]);
    let out = vendor.admin_ok(&["license", "resume", LICENSE_KEY]);
    assert!(
        out.contains("its customer Acme Telecom is suspended"),
        "{out}"
    );
    vendor.admin_ok(&["customer", "resume", "Acme Telecom"]);
    let list = vendor.admin_ok(&["license", "list"]);
    assert!(list.trim_end().ends_with("\tactive"), "{list}");
    let audit = vendor.admin_ok(&["audit", "--license", LICENSE_KEY, "--json"]);
    assert!(
        audit.contains("\"license.suspend\"") && audit.contains("\"license.resume\""),
        "{audit}"
    );

    let issued = vendor.admin_ok(&[
        "token",
        "issue",
        "--license",
        LICENSE_KEY,
        "--allow",
        "192.0.2.7",
        "--allow",
        "10.0.0.0/8",
        "--note",
        "sp1",
    ]);
    let lines: Vec<&str> = issued.lines().collect();
    assert_eq!(
        lines[0],
        format!("token 1 for license {LICENSE_KEY}, allowed from 192.0.2.7/32 10.0.0.0/8")
    );
    assert!(lines[1].starts_with("tg_"), "{issued}");
    let tokens = vendor.admin_ok(&["token", "list", "--license", LICENSE_KEY]);
    assert!(
        tokens.starts_with(&format!(
            "1\t{LICENSE_KEY}\tactive\tallowed 192.0.2.7/32 10.0.0.0/8\tcreated "
        )) && tokens.trim_end().ends_with("\tlast used never\tsp1"),
        "{tokens}"
    );
    assert!(!tokens.contains(lines[1]), "the token is shown once");
    let out = vendor.admin_ok(&["token", "revoke", "1"]);
    assert!(
        out.starts_with(&format!("token 1 of license {LICENSE_KEY} revoked at ")),
        "{out}"
    );

    let show = vendor.admin_ok(&["license", "show", LICENSE_KEY, "--history"]);
    for line in [
        format!("license      {LICENSE_KEY}"),
        "customer     Acme Telecom".into(),
        "contract     active".into(),
        "serial       2".into(),
        "tokens       0 active, 1 revoked".into(),
        "history:".into(),
    ] {
        assert!(show.lines().any(|l| l == line), "{line:?} in\n{show}");
    }
    assert!(show.contains("  serial 1\tcreated\t") && show.contains("  serial 2\tupdated\t"));
    let export = vendor.admin_ok(&["license", "export", LICENSE_KEY]);
    assert!(
        export.starts_with("-----BEGIN TOLLGATE LICENSE-----"),
        "{export}"
    );

    let out = vendor.admin_ok(&["customer", "suspend", "Acme Telecom"]);
    assert!(out.contains("suspended"), "{out}");
    let customers = vendor.admin_ok(&["customer", "list"]);
    assert!(customers.starts_with("1\tAcme Telecom\t") && customers.contains("\tsuspended "));
    vendor.admin_ok(&["customer", "resume", "Acme Telecom"]);
    assert!(
        vendor
            .admin_ok(&["customer", "list"])
            .trim_end()
            .ends_with("\tactive")
    );

    let reports = vendor.admin_ok(&["reports", "list"]);
    assert!(
        reports.starts_with("id\treceived\tlicense\tnode\t"),
        "{reports}"
    );
    assert_eq!(reports.lines().count(), 1, "the header only: no report yet");
    assert_eq!(vendor.admin_ok(&["reports", "list", "--json"]), "");

    let out = vendor.admin_with_input(
        &["user", "add", "alice", "--role", "viewer"],
        "a long password\n",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "user alice added: viewer\n"),
        "{}",
        out.stderr
    );
    let out = vendor.admin_with_input(&["user", "add", "bob", "--role", "admin"], "short\n");
    assert_eq!(out.code, 2, "a short password is bad input: {}", out.stderr);
    let out = vendor.admin(&["user", "add", "bob", "--role", "owner"]);
    assert_eq!(out.code, 2, "clap refuses an unknown role: {}", out.stderr);
    assert!(
        out.stderr.contains("[possible values: viewer, admin]"),
        "{}",
        out.stderr
    );
    vendor.admin_ok(&["user", "disable", "alice"]);
    assert!(
        vendor
            .admin_ok(&["user", "list"])
            .starts_with("alice\tviewer\tdisabled ")
    );

    let audit = vendor.admin_ok(&["audit", "--limit", "3"]);
    let actions: Vec<&str> = audit
        .lines()
        .map(|l| l.split('\t').nth(3).unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        ["user.disable", "user.add", "customer.resume"],
        "{audit}"
    );
    let json = vendor.admin_ok(&["audit", "--json", "--license", LICENSE_KEY, "--limit", "1"]);
    let entry: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(entry["action"], "token.revoke");
    assert_eq!(entry["detail"]["token_id"], 1);
    assert!(
        entry["actor"].as_str().unwrap().starts_with("admin:"),
        "{entry}"
    );
}

#[test]
fn admin_works_on_a_database_given_by_path() {
    let vendor = Vendor::new("");
    let db = vendor.path("other.db");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(["license-server", "admin", "--db"])
            .arg(&db)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["customer", "add", "Example"]).status.success());
    let out = run(&["customer", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Example"));
    assert!(Path::new(&db).exists());
}

/// The agent's license client against the real server: fetch at start, usage reports
/// stored on the server, reload fetches again, and when the server is gone the license in
/// force keeps working while reload answers 502.
#[test]
fn agent_fetches_at_start_reports_usage_and_survives_the_server_going_away() {
    let vendor = Vendor::new("");
    let server = Server::start(&vendor, true);
    let token = vendor.provision_with("127.0.0.1", "[policy]\nmode = \"enforce\"\ngrace_pct = 0\n");
    let keys: Vec<String> = server
        .banner
        .iter()
        .filter_map(|l| l.strip_prefix("trusted key"))
        .map(|k| format!("\"{}\"", k.trim()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let admin = tollgate_agent::auth::hash_password("pw").unwrap();
    let config = common::write_config(
        dir.path(),
        &format!(
            "[report]\ninterval_s = 1\n\n[license]\ntrusted_keys = [{}]\nserver = \"https://127.0.0.1:{}\"\n\
             token = \"{token}\"\nca_bundle = \"{}\"\n\n\
             [[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n",
            keys.join(", "),
            server.port,
            vendor.path("db/dev-tls/cert.pem").display()
        ),
    );
    // [general] license_key is needed with a server: prepend it.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "[general]\n",
            &format!("[general]\nlicense_key = \"{LICENSE_KEY}\"\n"),
            1,
        ),
    )
    .unwrap();
    let agent = common::Agent::start(&dir.path().join("state"), &config);
    let auth = Some(("ops", "pw"));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http(agent.rt.admin, "GET", "/api/v1/license", auth);
        if body.contains(LICENSE_KEY) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never fetched its license: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    common::send_udp(agent.udp(), b"call-start report-me\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reports = vendor.admin_ok(&["reports", "list", "--json"]);
        if reports.contains("report-me") || reports.contains("\"calls\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no usage report with the call reached the server: {reports}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Over the limit in enforce mode: denials are counted by code in the API, the metrics
    // and the usage reports (issue 18), each report carrying those since the previous one.
    let calls: String = (1..100).map(|i| format!("call-start over-{i}\n")).collect();
    common::send_udp(agent.udp(), calls.as_bytes());
    agent.wait_usage("100 calls", |u| u["calls"] == 100);
    for _ in 0..2 {
        let (status, body) = http(
            agent.rt.admin,
            "GET",
            "/api/v1/admit?call_id=one-more",
            auth,
        );
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(
        agent.usage()["admissions_denied"],
        serde_json::json!({"OVER_LIMIT": 2})
    );
    assert_eq!(
        agent.metric("tollgate_admissions_denied_total{code=\"OVER_LIMIT\"}"),
        Some(2.0)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reports = vendor.admin_ok(&["reports", "list", "--json", "--limit", "1000"]);
        let reported: u64 = reports
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r["report"]["admissions_denied"]["OVER_LIMIT"].as_u64())
            .sum();
        if reported == 2 {
            break;
        }
        assert!(reported < 2, "counted twice: {reports}");
        assert!(
            Instant::now() < deadline,
            "the denials never reached the server: {reports}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Issue 16: the reports carry the node's ledger entries, which the vendor can verify
    // as one chain signed by the key the agent shows.
    let (_, ledger) = http(agent.rt.admin, "GET", "/api/v1/ledger", auth);
    let ledger: serde_json::Value = serde_json::from_str(&ledger).unwrap();
    let key = tollgate_ledger::parse_public_key(ledger["node_public_key"].as_str().unwrap())
        .expect("the agent shows its node key");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reports = vendor.admin_ok(&["reports", "list", "--json", "--limit", "1000"]);
        let mut frames: Vec<Vec<u8>> = reports
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|r| {
                r["report"]["ledger"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .rev()
            })
            .map(|e| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(e.as_str().unwrap())
                    .unwrap()
            })
            .collect();
        frames.reverse(); // reports are listed newest first
        if frames.len() >= 2 {
            let report = tollgate_ledger::verify(&frames.concat(), Some(&key), true);
            assert_eq!(report.finding, None, "{reports}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ledger entries reached the server: {reports}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Issue 17: peak_emergency_calls was sent as the current count. An emergency call
    // that starts and ends between two reports shows as a peak of 1 with 0 current.
    let node_reports = || -> Vec<serde_json::Value> {
        vendor
            .admin_ok(&["reports", "list", "--json", "--limit", "50"])
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|r| r["report"]["node"].clone())
            .collect()
    };
    common::send_udp(agent.udp(), b"call-start sos-1 emergency\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node_reports().iter().any(|n| n["emergency_calls"] == 1) {
        assert!(
            Instant::now() < deadline,
            "no report with the emergency call"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    common::send_udp(agent.udp(), b"call-stop sos-1\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node_reports()
        .iter()
        .any(|n| n["emergency_calls"] == 0 && n["peak_emergency_calls"] == 1)
    {
        assert!(
            Instant::now() < deadline,
            "no report with the ended emergency call as its peak: {:?}",
            node_reports()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = http(agent.rt.admin, "POST", "/api/v1/license/reload", auth);
    assert_eq!(status, 200, "{body}");
    assert!(
        agent
            .metric("tollgate_license_fetches_total{result=\"ok\"}")
            .unwrap_or(0.0)
            >= 2.0
    );

    drop(server);
    let (status, body) = http(agent.rt.admin, "POST", "/api/v1/license/reload", auth);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("connect"), "{body}");
    let (_, body) = http(agent.rt.admin, "GET", "/api/v1/license", auth);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["evaluation"]["license_status"], "OK",
        "the lease still runs: {body}"
    );

    // A new node's start: "waiting for the license server" at info, and nothing at error
    // level before the first fetch has had its chance (MISSION.md).
    let (_, log) = agent.stop();
    assert!(!log.contains('\x1b'), "ANSI escapes in a piped log:\n{log}");
    let fetched = log
        .find("license fetched from the license server")
        .unwrap_or_else(|| panic!("no fetch logged:\n{log}"));
    let before = &log[..fetched];
    let waiting = before
        .lines()
        .find(|l| l.contains("waiting for the license server"))
        .unwrap_or_else(|| panic!("no waiting line before the fetch:\n{log}"));
    assert!(waiting.contains(" INFO "), "{waiting}");
    assert!(
        !before.lines().any(|l| l.contains("ERROR")),
        "an error before the first fetch:\n{before}"
    );
}

/// A body-less HTTP/1.1 request with basic auth: (status, body).
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> (u16, String) {
    common::http(addr, method, path, auth, b"")
}

/// `[license] server` as a list: two servers on one database (an SQLite file shared by two
/// processes; PostgreSQL works the same, see the server crate's `tests/postgres.rs`). The
/// agent fetches from the first and names it as `source`; the first is killed mid-run; a
/// reload is answered by the second, which `source` then names and which receives the
/// usage reports from then on.
#[test]
fn agent_fails_over_to_the_second_server_when_the_first_is_killed() {
    let vendor = Vendor::new("");
    let first = Server::start(&vendor, true);
    let second = Server::start(&vendor, true);
    let token = vendor.provision("127.0.0.1");
    let keys: Vec<String> = first
        .banner
        .iter()
        .filter_map(|l| l.strip_prefix("trusted key"))
        .map(|k| format!("\"{}\"", k.trim()))
        .collect();
    let url = |s: &Server| format!("https://127.0.0.1:{}/", s.port);
    let dir = tempfile::tempdir().unwrap();
    let admin = tollgate_agent::auth::hash_password("pw").unwrap();
    let config = common::write_config(
        dir.path(),
        &format!(
            "[report]\ninterval_s = 1\n\n[license]\ntrusted_keys = [{}]\n\
             server = [\"{}\", \"{}\"]\ntoken = \"{token}\"\nca_bundle = \"{}\"\n\n\
             [[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n",
            keys.join(", "),
            url(&first),
            url(&second),
            vendor.path("db/dev-tls/cert.pem").display()
        ),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "[general]\n",
            &format!("[general]\nlicense_key = \"{LICENSE_KEY}\"\n"),
            1,
        ),
    )
    .unwrap();
    let agent = common::Agent::start(&dir.path().join("state"), &config);
    let auth = Some(("ops", "pw"));
    let license = || {
        let (_, body) = http(agent.rt.admin, "GET", "/api/v1/license", auth);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    while license()["source"].is_null() {
        assert!(
            Instant::now() < deadline,
            "the agent never fetched its license: {}",
            license()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let json = license();
    assert_eq!(
        json["source"],
        url(&first),
        "the first server is tried first"
    );
    assert_eq!(json["license"]["license_key"], LICENSE_KEY);

    drop(first); // SIGKILL, mid-run
    let (status, body) = http(agent.rt.admin, "POST", "/api/v1/license/reload", auth);
    assert_eq!(status, 200, "the second server answers: {body}");
    assert_eq!(license()["source"], url(&second), "{}", license());

    // Usage reports now reach the second server (the same database).
    common::send_udp(agent.udp(), b"call-start after-failover\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reports = vendor.admin_ok(&["reports", "list", "--json", "--limit", "5"]);
        if reports.contains("\"calls\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no usage report after the failover: {reports}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The last good server is remembered: the next reload goes straight to it.
    let (status, body) = http(agent.rt.admin, "POST", "/api/v1/license/reload", auth);
    assert_eq!(status, 200, "{body}");
    assert_eq!(license()["source"], url(&second));
    drop(second);
}

/// `license-server backup --out` while the server runs, `restore --from` into another
/// configuration's (empty) store and key directory; a second restore is refused (exit 2).
#[test]
fn backup_while_running_and_restore_through_the_cli() {
    let vendor = Vendor::new("");
    let server = Server::start(&vendor, true);
    let token = vendor.provision("127.0.0.1");
    runtime().block_on(async {
        server.client(&vendor, &token).fetch_lease().await.unwrap();
    });
    let file = vendor.path("ls.backup");
    let run = |config: &Path, args: &[&str]| {
        let out = Command::new(BIN)
            .args(["license-server", "--config"])
            .arg(config)
            .args(args)
            .output()
            .expect("runs the binary");
        (
            out.status.code().expect("exited"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(
        &vendor.config(),
        &["backup", "--out", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("licenses 1") && stdout.contains("key files: 2"),
        "{stdout}"
    );
    drop(server);

    let target = Vendor::new("");
    let (code, stdout, stderr) = run(
        &target.config(),
        &["restore", "--from", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("tokens 1"), "{stdout}");
    let licenses = target.admin_ok(&["license", "list"]);
    assert!(licenses.contains(LICENSE_KEY), "{licenses}");
    let keys = target.admin_ok(&["key", "list"]);
    assert!(keys.contains("signing"), "{keys}");
    let (code, _, stderr) = run(
        &target.config(),
        &["restore", "--from", file.to_str().unwrap()],
    );
    assert_eq!(code, 2, "a non-empty store is refused: {stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
}

/// `admin token issue --expires`, `admin tokens rotate` (the plural is an alias), the list
/// with states, and the renamed node views (`reports silent-nodes`, `reports ledgers`)
/// beside their former names, on a real server reached by the real client.
#[test]
fn admin_cli_expires_and_rotates_tokens_and_names_the_node_views() {
    let vendor = Vendor::new("");
    let server = Server::start(&vendor, true);
    let first = vendor.provision("127.0.0.1");
    let rt = runtime();
    rt.block_on(server.client(&vendor, &first).fetch_lease())
        .expect("lease with the first token");

    // Issued with an expiry: printed, listed, refused at issue when in the past.
    let expires = tollgate_license::timestamp::format_rfc3339(WallTime::from_unix_ms(
        now_ms() / 1000 * 1000 + 30 * tollgate_license::timestamp::DAY_MS,
    ));
    let out = vendor.admin_ok(&[
        "tokens",
        "issue",
        "--license",
        LICENSE_KEY,
        "--allow",
        "127.0.0.1",
        "--expires",
        &expires,
    ]);
    assert!(
        out.starts_with(&format!(
            "token 2 for license {LICENSE_KEY}, allowed from 127.0.0.1/32, expires {expires}\n"
        )),
        "{out}"
    );
    let past = vendor.admin(&[
        "token",
        "issue",
        "--license",
        LICENSE_KEY,
        "--allow",
        "127.0.0.1",
        "--expires",
        "2020-01-01T00:00:00Z",
    ]);
    assert_eq!(past.code, 2, "{}", past.stderr);
    assert!(past.stderr.contains("not in the future"), "{}", past.stderr);

    // Rotation with a grace of 0: the old token is refused at once, the new one works.
    let out = vendor.admin_ok(&["tokens", "rotate", "1", "--grace-minutes", "0"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("token 3 for license {LICENSE_KEY} replaces token 1, allowed from 127.0.0.1/32")
    );
    let third = lines[1];
    assert!(third.starts_with("tg_") && third != first, "{out}");
    assert_eq!(lines[3], "token 1 is revoked: requests with it answer 403");
    assert_eq!(
        status_of(rt.block_on(server.client(&vendor, &first).fetch_lease())),
        (403, "token_revoked".into())
    );
    rt.block_on(server.client(&vendor, third).fetch_lease())
        .expect("the rotated token works");

    // Rotation with the default grace: a day more for the old token.
    let out = vendor.admin_ok(&["token", "rotate", "3"]);
    let fourth = out
        .lines()
        .find(|l| l.starts_with("tg_"))
        .expect("the new token")
        .to_owned();
    assert!(
        out.lines()
            .any(|l| l.starts_with("token 3 keeps working until ")
                && l.ends_with(", then answers 403 token_expired")),
        "{out}"
    );
    rt.block_on(server.client(&vendor, third).fetch_lease())
        .expect("within its grace period");
    let again = vendor.admin(&["token", "rotate", "3"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("rotated already"), "{}", again.stderr);

    let list = vendor.admin_ok(&["token", "list"]);
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 4, "{list}");
    assert!(
        rows[0][2].starts_with("revoked ") && rows[0][5] == "expires never",
        "{list}"
    );
    assert_eq!(rows[0][6], "replaced by 3", "{list}");
    assert_eq!(rows[1][5], format!("expires {expires}"), "{list}");
    assert!(
        rows[2][2] == "active" && rows[2][5].starts_with("expires "),
        "{list}"
    );
    assert_eq!(rows[2][6], "replaced by 4", "{list}");
    assert!(
        rows[3][2] == "active" && rows[3][5] == "expires never",
        "{list}"
    );
    let audit = vendor.admin_ok(&["audit", "--json"]);
    assert_eq!(
        audit.matches("\"action\":\"token.rotate\"").count(),
        2,
        "{audit}"
    );

    // The node views: the one that reported, under the new names and the old.
    let report = UsageReport {
        node_id: "sp1".into(),
        agent_version: "0.1.0".into(),
        timestamp: WallTime::from_unix_ms(now_ms()),
        since: None,
        license_serial: Some(1),
        node: UsageFigures::default(),
        cluster: None,
        admissions_denied: Default::default(),
        ledger: Vec::new(),
    };
    rt.block_on(server.client(&vendor, &fourth).send_usage(&report))
        .expect("report");
    let silent = vendor.admin_ok(&["reports", "silent-nodes"]);
    assert_eq!(
        silent.lines().count(),
        1,
        "only the header: sp1 reports\n{silent}"
    );
    let all = vendor.admin_ok(&["reports", "silent-nodes", "--all"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with(&format!("Acme Telecom\t{LICENSE_KEY}\tsp1\treporting\t"))),
        "{all}"
    );
    assert_eq!(vendor.admin_ok(&["nodes"]), all, "the former name");
    let ledgers = vendor.admin_ok(&["reports", "ledgers"]);
    assert!(ledgers.starts_with("license\tnode\tkey\t"), "{ledgers}");
    assert_eq!(
        vendor.admin_ok(&["reports", "nodes"]),
        ledgers,
        "the former name"
    );

    // The audit actor without $USER (a systemd unit, cron, a container): the uid's account.
    let out = Command::new(BIN)
        .args(["license-server", "--config"])
        .arg(vendor.config())
        .args(["admin", "customer", "add", "Beta"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("SUDO_USER")
        .env_remove("TOLLGATE_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let audit = vendor.admin_ok(&["audit", "--limit", "1"]);
    let actor = audit.split('\t').nth(2).unwrap_or_default();
    assert!(
        actor != "admin:unknown" && actor.starts_with("admin:") && actor.len() > 6,
        "{audit}"
    );
    if uid == 0 {
        assert_eq!(actor, "admin:root", "{audit}");
    }

    // Logs to a pipe are plain text: no ANSI escapes, fields grep-able.
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape bytes in the log:\n{stderr}"
    );
    assert!(stderr.contains("lease signed license_key="), "{stderr}");
}
