//! The admin API and web page over HTTPS (`[admin] tls_cert` / `tls_key`), against a real
//! agent: curl with basic auth in the URL as operators call it (`curl -k
//! https://ops:secret@host:port/api/v1/license/reload`), reqwest trusting the CA,
//! `tollgate status` over HTTPS, plain HTTP refused and counted, and a bad key pair refused
//! at start with exit code 2.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Agent, BIN, write_config};
use tollgate_license::{LicenseSpec, SigningKey};
use tollgate_mesh::ClusterCa;

const KEY: &str = "TEST_HTTPS_0001";

/// A CA, and a server certificate for `localhost` written as a chain file (leaf, then the
/// CA) with its key. Returns (ca.pem, chain.pem, key.pem).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca = ClusterCa::generate("admin test CA").unwrap();
    let leaf = ca.issue("localhost").unwrap();
    let ca_path = dir.join("ca.pem");
    let chain = dir.join("admin-chain.pem");
    let key = dir.join("admin.key");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    std::fs::write(&chain, format!("{}{}", leaf.cert_pem, ca.cert_pem())).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (ca_path, chain, key)
}

/// A config with HTTPS, an admin `ops` (password `secret`), and a license file signed by a
/// key the agent trusts.
fn https_config(dir: &Path, cert: &Path, key: &Path) -> std::path::PathBuf {
    let vendor = SigningKey::generate();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let spec = format!(
        "license_key = \"{KEY}\"\ncustomer = \"Test Telecom\"\nserial = 1\nkind = \"perpetual\"\nlease_days = 14\n\n\
         [limits]\ncalls = 100\n\n[policy]\nmode = \"warn\"\n"
    );
    let doc = LicenseSpec::parse(&spec)
        .unwrap()
        .to_document(
            vendor.key_id(),
            tollgate_events::WallTime::from_unix_ms(now_ms),
        )
        .unwrap();
    let license = dir.join("license.txt");
    std::fs::write(&license, tollgate_license::sign(&doc, &vendor).unwrap()).unwrap();
    let hash = tollgate_agent::auth::hash_password("secret").unwrap();
    write_config(
        dir,
        &format!(
            "[license]\nfile = {license:?}\ntrusted_keys = [\"{}\"]\n\n\
             [[admin.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n",
            vendor.public_key().to_file_string().trim()
        ),
    )
    .tap_admin_tls(cert, key)
}

trait TapAdminTls {
    fn tap_admin_tls(self, cert: &Path, key: &Path) -> Self;
}

impl TapAdminTls for std::path::PathBuf {
    /// Adds `tls_cert` / `tls_key` to the `[admin]` table `write_config` wrote.
    fn tap_admin_tls(self, cert: &Path, key: &Path) -> Self {
        let text = std::fs::read_to_string(&self).unwrap();
        let text = text.replacen(
            "[admin]\n",
            &format!("[admin]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
            1,
        );
        std::fs::write(&self, text).unwrap();
        self
    }
}

fn curl(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn admin_api_and_page_over_https_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, chain, key) = certificates(dir.path());
    let config = https_config(dir.path(), &chain, &key);
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &config);
    let port = agent.rt.admin.port();
    let runtime: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    assert_eq!(runtime["admin_tls"], true, "{runtime}");

    // curl as the operators do: credentials in the URL, -k for a private CA.
    let reload = format!("https://ops:secret@127.0.0.1:{port}/api/v1/license/reload");
    let (code, body) = curl(&["-k", "-X", "POST", "-w", "\n%{http_code}", &reload]);
    assert_eq!(code, Some(0), "curl failed: {body}");
    assert!(body.ends_with("\n200"), "reload over HTTPS: {body}");
    assert!(body.contains("\"serial\":1"), "{body}");
    let wrong = format!("https://ops:wrong@127.0.0.1:{port}/api/v1/license/reload");
    let (_, body) = curl(&["-k", "-X", "POST", "-w", "\n%{http_code}", &wrong]);
    assert!(
        body.ends_with("\n401"),
        "a wrong password over HTTPS: {body}"
    );
    // Verified against the CA, by name.
    let (code, body) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("localhost:{port}:127.0.0.1"),
        &format!("https://localhost:{port}/healthz"),
    ]);
    assert_eq!((code, body.trim()), (Some(0), "ok"));
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let (code, _) = curl(&[&format!("http://127.0.0.1:{port}/healthz")]);
    assert_ne!(
        code,
        Some(0),
        "plain HTTP must not be served on the TLS port"
    );

    // reqwest trusting the CA: the API, the page and the metrics.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap(),
            )
            .resolve("localhost", agent.rt.admin)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let base = format!("https://localhost:{port}");
        let reload = client
            .post(format!("{base}/api/v1/license/reload"))
            .basic_auth("ops", Some("secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(reload.status(), 200);
        let usage: serde_json::Value = client
            .get(format!("{base}/api/v1/usage"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(usage["node_id"], "test-node");
        let page = client.get(&base).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<html"));
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
        };
        assert!(series("tollgate_admin_tls_handshakes_total{result=\"ok\"}") >= 4.0);
        assert!(series("tollgate_admin_tls_handshakes_total{result=\"failed\"}") >= 1.0);
    });

    // tollgate status: by address with --ca, and through the state dir (it trusts the
    // chain file the agent serves).
    let out = Command::new(BIN)
        .args(["status", "--json", "--admin"])
        .arg(format!("https://localhost:{port}"))
        .arg("--ca")
        .arg(&ca)
        .output()
        .unwrap();
    // `localhost` may resolve to ::1 first, where nothing listens; 127.0.0.1 is tried too.
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["status", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("test-node"));
    let out = Command::new(BIN)
        .args(["status", "--admin"])
        .arg(format!("https://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "an untrusted certificate is not reachable"
    );
    let out = Command::new(BIN)
        .args(["status", "--insecure", "--admin"])
        .arg(format!("https://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, chain, _) = certificates(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, _, other_key) = certificates(&other);
    let config = write_config(dir.path(), "").tap_admin_tls(&chain, &other_key);
    let out = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.tls_cert"), "{err}");

    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[admin]\n",
        &format!("[admin]\ntls_cert = {chain:?}\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.tls_key"));
}
