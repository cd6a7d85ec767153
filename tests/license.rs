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
        .to_document(
            v.key.key_id(),
            tollgate_events::WallTime::from_unix_ms(now_ms()),
        )
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
    // Denials are counted by code, the socket's and the API's alike (issue 18).
    assert_eq!(
        agent.usage()["admissions_denied"],
        serde_json::json!({"OVER_LIMIT": 2})
    );
    assert_eq!(
        agent.metric("tollgate_admissions_denied_total{code=\"OVER_LIMIT\"}"),
        Some(2.0)
    );
    assert_eq!(
        agent.metric("tollgate_admissions_denied_total{code=\"EXPIRED\"}"),
        Some(0.0)
    );
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

/// `tollgate status` (table) of a running agent, with the viewer's credentials.
fn status_table(agent: &Agent) -> String {
    let out = std::process::Command::new(common::BIN)
        .args([
            "status",
            "--user",
            "noc",
            "--password",
            "viewerpw",
            "--admin",
        ])
        .arg(format!("http://{}", agent.rt.admin))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The license report (viewer).
fn license_report(agent: &Agent) -> serde_json::Value {
    let (status, body) = request(
        agent.rt.admin,
        "GET",
        "/api/v1/license",
        Some(("noc", "viewerpw")),
        "",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Issue 18: a license refused at start reports its own code in the API, `tollgate status`
/// and `admit` (under `unlicensed_mode = "enforce"`), never `NO_LICENSE`.
#[test]
fn a_license_refused_at_start_reports_its_own_code() {
    let now = now_ms();
    let expired_term = format!(
        "kind = \"term\"\nissued_at = \"{}\"\nvalid_from = \"{}\"\nvalid_until = \"{}\"\nlease_days = 14",
        rfc3339(now - 3 * 86_400_000),
        rfc3339(now - 3 * 86_400_000),
        rfc3339(now - 86_400_000)
    );
    let future = format!(
        "kind = \"term\"\nissued_at = \"{}\"\nvalid_from = \"{}\"\nvalid_until = \"{}\"\nlease_days = 14",
        rfc3339(now),
        rfc3339(now + 10 * 86_400_000),
        rfc3339(now + 20 * 86_400_000)
    );
    // (expected code, the [license] file's text from the vendor, host_id)
    type Make = Box<dyn Fn(&Vendor) -> String>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "INVALID",
            Box::new(|v| {
                license(v, 5, 100, "warn", &perpetual()).replace("calls = 100", "calls = 900")
            }),
            "",
        ),
        (
            "HOST_MISMATCH",
            Box::new(|v| {
                license(
                    v,
                    5,
                    100,
                    "warn",
                    &format!("{}\nhost_ids = [\"other-host\"]", perpetual()),
                )
            }),
            "host_id = \"this-host\"",
        ),
        (
            "NOT_YET_VALID",
            Box::new(move |v| license(v, 5, 100, "warn", &future)),
            "",
        ),
        (
            "EXPIRED",
            Box::new(move |v| license(v, 5, 100, "warn", &expired_term)),
            "",
        ),
    ];
    for (code, make, host) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("license.txt");
        let v = vendor(
            dir.path(),
            &format!(
                "file = \"{}\"\nunlicensed_mode = \"enforce\"\n{host}",
                file.display()
            ),
        );
        std::fs::write(&file, make(&v)).unwrap();
        let agent = Agent::start(&dir.path().join("state"), &v.config);
        let report = license_report(&agent);
        assert_eq!(report["evaluation"]["status"], code, "{report:#}");
        assert_eq!(report["refused"]["code"], code, "{report:#}");
        assert_eq!(report["refused"]["source"], "reload", "{report:#}");
        assert!(report["license"].is_null(), "{report:#}");
        assert_eq!(
            admit(&agent, dir.path(), "admit c1"),
            format!("deny {code}")
        );
        assert_eq!(admit(&agent, dir.path(), "admit c2 emergency"), "ok");
        let table = status_table(&agent);
        assert!(table.contains(&format!("state {code}")), "{code}: {table}");
        assert!(
            table.contains(&format!("refused {code} from reload")),
            "{table}"
        );
    }
}

/// A rolled-back `license.current` (a lower serial than the watermark) is `ROLLBACK` at
/// the next start; `license.previous` is kept but cannot be installed again.
#[test]
fn a_rolled_back_stored_license_is_rollback_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let v = vendor(dir.path(), "unlicensed_mode = \"enforce\"");
    let state = dir.path().join("state");
    let agent = Agent::start(&state, &v.config);
    let admin = Some(("ops", "adminpw"));
    for serial in [4, 5] {
        let text = license(&v, serial, 100, "warn", &perpetual());
        let (status, body) = request(agent.rt.admin, "PUT", "/api/v1/license", admin, &text);
        assert_eq!(status, 200, "{body}");
    }
    let previous = std::fs::read_to_string(state.join("license.previous")).unwrap();
    let (status, body) = request(agent.rt.admin, "PUT", "/api/v1/license", admin, &previous);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("ROLLBACK"), "{body}");
    let (_, log) = agent.stop();
    assert!(!log.contains("panicked"), "{log}");

    // An operator (or an attacker) puts the older document back in place.
    std::fs::copy(
        state.join("license.previous"),
        state.join("license.current"),
    )
    .unwrap();
    let agent = Agent::start(&state, &v.config);
    let report = license_report(&agent);
    assert_eq!(report["evaluation"]["status"], "ROLLBACK", "{report:#}");
    assert_eq!(report["refused"]["source"], "state dir", "{report:#}");
    assert_eq!(report["refused"]["serial"], 4, "{report:#}");
    assert_eq!(admit(&agent, dir.path(), "admit r1"), "deny ROLLBACK");
    assert!(status_table(&agent).contains("state ROLLBACK"));

    // Uploading the right license clears the refusal.
    let text = license(&v, 6, 100, "warn", &perpetual());
    let (status, body) = request(agent.rt.admin, "PUT", "/api/v1/license", admin, &text);
    assert_eq!(status, 200, "{body}");
    let report = license_report(&agent);
    assert_eq!(report["evaluation"]["status"], "OK", "{report:#}");
    assert!(report["refused"].is_null(), "{report:#}");
    assert_eq!(admit(&agent, dir.path(), "admit r2"), "ok");
}

/// Issue 18: an authentic but already-expired license never replaces the one in force.
#[test]
fn an_already_expired_license_is_refused_and_the_current_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let v = vendor(dir.path(), "");
    let agent = Agent::start(&dir.path().join("state"), &v.config);
    let admin = Some(("ops", "adminpw"));
    let text = license(&v, 5, 100, "warn", &perpetual());
    assert_eq!(
        request(agent.rt.admin, "PUT", "/api/v1/license", admin, &text).0,
        200
    );
    let now = now_ms();
    let expired = license(
        &v,
        9,
        100,
        "warn",
        &format!(
            "kind = \"term\"\nissued_at = \"{}\"\nvalid_from = \"{}\"\nvalid_until = \"{}\"\nlease_days = 14",
            rfc3339(now - 3 * 86_400_000),
            rfc3339(now - 3 * 86_400_000),
            rfc3339(now - 86_400_000)
        ),
    );
    let (status, body) = request(agent.rt.admin, "PUT", "/api/v1/license", admin, &expired);
    assert_eq!(status, 422, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "EXPIRED", "{body}");
    let report = license_report(&agent);
    assert_eq!(report["license"]["serial"], 5, "{report:#}");
    assert_eq!(report["evaluation"]["status"], "OK", "{report:#}");
    assert_eq!(admit(&agent, dir.path(), "admit e1"), "ok");
    // Serial 9 was never accepted: serial 6 still supersedes serial 5.
    let text = license(&v, 6, 100, "warn", &perpetual());
    let (status, body) = request(agent.rt.admin, "PUT", "/api/v1/license", admin, &text);
    assert_eq!(status, 200, "{body}");
}
