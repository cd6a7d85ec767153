//! The license in a running agent: upload and reload over real HTTP with 200/401/403,
//! enforcement of new calls through `admit` on the real sockets, persistence across a
//! restart, and the refusals (tampered, rollback, unknown key).

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::{Agent, send_udp, write_config};
use tollgate_license::{LicenseSpec, SigningKey};

const KEY: &str = "TEST_LICENSE_0001";

/// A vendor key and a config that trusts it, with an admin and a viewer.
struct Vendor {
    key: SigningKey,
    config: std::path::PathBuf,
}

fn vendor(dir: &Path, extra: &str) -> Vendor {
    let key = SigningKey::generate();
    let admin = tollgate_agent::auth::hash_password("adminpw").unwrap();
    let viewer = tollgate_agent::auth::hash_password("viewerpw").unwrap();
    let config = write_config(
        dir,
        &format!(
            "[license]\ntrusted_keys = [\"{}\"]\n{extra}\n\n\
             [[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n\n\
             [[admin.users]]\nname = \"noc\"\npassword_hash = \"{viewer}\"\nrole = \"viewer\"\n",
            key.public_key().to_file_string().trim()
        ),
    );
    Vendor { key, config }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Signs a license: `kind_lines` sets kind/validity, `calls` the calls limit, `mode` the policy.
fn license(v: &Vendor, serial: u64, calls: u64, mode: &str, kind_lines: &str) -> String {
    let spec = format!(
        "license_key = \"{KEY}\"\ncustomer = \"Test Telecom\"\nserial = {serial}\n{kind_lines}\n\
         features = [\"pbx\"]\n\n[limits]\ncalls = {calls}\n\n[policy]\nmode = \"{mode}\"\ngrace_pct = 0\n"
    );
    let doc = LicenseSpec::parse(&spec)
        .unwrap()
        .to_document(v.key.key_id(), now_ms())
        .unwrap();
    tollgate_license::sign(&doc, &v.key).unwrap()
}

fn perpetual() -> String {
    "kind = \"perpetual\"\nlease_days = 14".into()
}

/// An HTTP request with optional basic auth: (status, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &str,
) -> (u16, String) {
    common::http(addr, method, path, auth, body.as_bytes())
}

fn admit(agent: &Agent, dir: &Path, line: &str) -> String {
    let client = dir.join(format!("client-{}.sock", rand_suffix()));
    let s = UnixDatagram::bind(&client).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(format!("{line}\n").as_bytes(), agent.unix())
        .unwrap();
    let mut buf = [0u8; 128];
    let n = s.recv(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn upload_and_reload_answer_200_401_403_and_the_license_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let v = vendor(dir.path(), "");
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &v.config);
    let addr = agent.rt.admin;
    let text = license(&v, 1, 100, "warn", &perpetual());

    assert_eq!(request(addr, "PUT", "/api/v1/license", None, &text).0, 401);
    assert_eq!(
        request(
            addr,
            "PUT",
            "/api/v1/license",
            Some(("ops", "wrong")),
            &text
        )
        .0,
        401
    );
    assert_eq!(
        request(
            addr,
            "PUT",
            "/api/v1/license",
            Some(("noc", "viewerpw")),
            &text
        )
        .0,
        403
    );
    let (status, body) = request(
        addr,
        "PUT",
        "/api/v1/license",
        Some(("ops", "adminpw")),
        &text,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"changed\":true"), "{body}");

    assert_eq!(
        request(addr, "GET", "/api/v1/license", None, "").0,
        401,
        "viewer credentials needed"
    );
    let (status, body) = request(
        addr,
        "GET",
        "/api/v1/license",
        Some(("noc", "viewerpw")),
        "",
    );
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["license"]["license_key"], KEY);
    assert_eq!(json["evaluation"]["status"], "OK");

    assert_eq!(
        request(addr, "POST", "/api/v1/license/reload", None, "").0,
        401
    );
    assert_eq!(
        request(
            addr,
            "POST",
            "/api/v1/license/reload",
            Some(("noc", "viewerpw")),
            ""
        )
        .0,
        403
    );
    let (status, body) = request(
        addr,
        "POST",
        "/api/v1/license/reload",
        Some(("ops", "adminpw")),
        "",
    );
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        request(
            addr,
            "GET",
            "/api/v1/features/pbx",
            Some(("noc", "viewerpw")),
            ""
        )
        .0,
        200
    );
    assert_eq!(
        request(
            addr,
            "GET",
            "/api/v1/features/fax",
            Some(("noc", "viewerpw")),
            ""
        )
        .0,
        403
    );

    let (_, log) = agent.stop();
    assert!(
        log.contains(&format!(
            "Valid license: [{KEY}]: 100 calls, unlimited subscribers"
        )),
        "the NGCP-style line is logged at install: {log}"
    );
    let agent = Agent::start(&state, &v.config);
    let (_, body) = request(
        agent.rt.admin,
        "GET",
        "/api/v1/license",
        Some(("noc", "viewerpw")),
        "",
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["license"]["serial"], 1,
        "persisted across the restart: {body}"
    );
}

#[test]
fn tampered_unknown_and_rolled_back_licenses_are_refused_with_their_code() {
    let dir = tempfile::tempdir().unwrap();
    let v = vendor(dir.path(), "");
    let agent = Agent::start(&dir.path().join("state"), &v.config);
    let addr = agent.rt.admin;
    let admin = Some(("ops", "adminpw"));

    let tampered = license(&v, 5, 100, "warn", &perpetual()).replace("calls = 100", "calls = 900");
    let (status, body) = request(addr, "PUT", "/api/v1/license", admin, &tampered);
    assert_eq!(
        (
            status,
            body.contains("INVALID") || body.contains("BAD_SIGNATURE")
        ),
        (422, true),
        "{body}"
    );

    let stranger = Vendor {
        key: SigningKey::generate(),
        config: v.config.clone(),
    };
    let (status, body) = request(
        addr,
        "PUT",
        "/api/v1/license",
        admin,
        &license(&stranger, 5, 100, "warn", &perpetual()),
    );
    assert_eq!(status, 422, "{body}");

    assert_eq!(
        request(
            addr,
            "PUT",
            "/api/v1/license",
            admin,
            &license(&v, 5, 100, "warn", &perpetual())
        )
        .0,
        200
    );
    let (status, body) = request(
        addr,
        "PUT",
        "/api/v1/license",
        admin,
        &license(&v, 4, 100, "warn", &perpetual()),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("ROLLBACK"), "{body}");
}

#[test]
fn enforce_mode_denies_new_calls_over_the_limit_but_never_emergency_calls() {
    let dir = tempfile::tempdir().unwrap();
    let v = vendor(dir.path(), "");
    let agent = Agent::start(&dir.path().join("state"), &v.config);
    let text = license(&v, 1, 3, "enforce", &perpetual());
    assert_eq!(
        request(
            agent.rt.admin,
            "PUT",
            "/api/v1/license",
            Some(("ops", "adminpw")),
            &text
        )
        .0,
        200
    );

    assert_eq!(admit(&agent, dir.path(), "admit c1"), "ok");
    send_udp(
        agent.udp(),
        b"call-start c1\ncall-start c2\ncall-start c3\n",
    );
    agent.wait_usage("3 calls", |u| u["calls"] == 3);
    assert_eq!(admit(&agent, dir.path(), "admit c4"), "deny OVER_LIMIT");
    assert_eq!(
        admit(&agent, dir.path(), "admit sos emergency"),
        "ok",
        "emergency calls always pass"
    );
    let (status, body) = request(
        agent.rt.admin,
        "GET",
        "/api/v1/admit?call_id=c4",
        Some(("noc", "viewerpw")),
        "",
    );
    assert_eq!((status, body.contains("OVER_LIMIT")), (403, true), "{body}");
    // Running calls are untouched; a stop makes room again.
    send_udp(agent.udp(), b"call-stop c1\n");
    agent.wait_usage("2 calls", |u| u["calls"] == 2);
    assert_eq!(admit(&agent, dir.path(), "admit c4"), "ok");
    assert_eq!(agent.metric("tollgate_license_enforcing"), Some(1.0));
}

#[test]
fn warn_mode_admits_over_the_limit_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let v = vendor(dir.path(), "");
    let agent = Agent::start(&dir.path().join("state"), &v.config);
    let text = license(&v, 1, 2, "warn", &perpetual());
    assert_eq!(
        request(
            agent.rt.admin,
            "PUT",
            "/api/v1/license",
            Some(("ops", "adminpw")),
            &text
        )
        .0,
        200
    );
    send_udp(
        agent.udp(),
        b"call-start w1\ncall-start w2\ncall-start w3\n",
    );
    agent.wait_usage("3 calls", |u| u["calls"] == 3);
    assert_eq!(admit(&agent, dir.path(), "admit w4"), "ok");
    // The evaluation runs every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.metric("tollgate_license_status{code=\"OVER_LIMIT\"}") != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "status never became OVER_LIMIT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agent.metric("tollgate_license_headroom{limit=\"calls\"}"),
        Some(-1.0)
    );
    let (_, log) = agent.stop();
    assert!(
        log.contains("license limit exceeded: calls at 3 of 2"),
        "{log}"
    );
}

#[test]
fn an_expired_term_license_stops_new_calls_even_in_warn_mode() {
    let dir = tempfile::tempdir().unwrap();
    let license_file = dir.path().join("license.txt");
    let v = vendor(
        dir.path(),
        &format!("file = \"{}\"", license_file.display()),
    );
    let now = now_ms();
    let term = format!(
        "kind = \"term\"\nissued_at = \"{}\"\nvalid_from = \"{}\"\nvalid_until = \"{}\"\nlease_days = 14",
        rfc3339(now - 3 * 86_400_000),
        rfc3339(now - 3 * 86_400_000),
        rfc3339(now - 86_400_000)
    );
    std::fs::write(&license_file, license(&v, 1, 100, "warn", &term)).unwrap();
    let agent = Agent::start(&dir.path().join("state"), &v.config);
    assert_eq!(admit(&agent, dir.path(), "admit t1"), "deny EXPIRED");
    assert_eq!(admit(&agent, dir.path(), "admit t2 emergency"), "ok");
}
