//! The operator's web page in a real browser: the real agent with an admin and a viewer, a
//! trusted vendor key, a license and load; `tests/browser/page.test.mjs` drives Debian's
//! chromium through playwright-core against it (numbers match `/api/v1/usage`, the viewer
//! sees Reload disabled and a forced reload answers 403, the admin reloads and uploads a
//! newer license) and saves screenshots under `target/tmp/web_page/`.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules` (`npm ci` there). When
//! one is missing the test says why and passes, unless `TOLLGATE_BROWSER_TESTS=1` (CI), where
//! it fails.

mod common;

use std::path::Path;

use common::{Agent, send_udp, write_config};
use tollgate_license::{LicenseSpec, SigningKey};

const KEY: &str = "WEB_PAGE_TEST_0001";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rfc3339_in_days(days: u64) -> String {
    let at = (now_ms() / 1000 + days * 86_400) as i64;
    time::OffsetDateTime::from_unix_timestamp(at)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A signed term license: `limits` is (calls, subscribers, registered subscribers).
fn license(
    key: &SigningKey,
    serial: u64,
    customer: &str,
    limits: (u64, u64, u64),
    features: &str,
    mode: &str,
) -> String {
    let (calls, subscribers, registered) = limits;
    let spec = format!(
        "license_key = \"{KEY}\"\ncustomer = \"{customer}\"\nkind = \"term\"\nserial = {serial}\n\
         valid_until = \"{}\"\nlease_days = 14\nfeatures = [{features}]\n\n\
         [limits]\ncalls = {calls}\nsubscribers = {subscribers}\nregistered_subscribers = {registered}\n\n\
         [policy]\nmode = \"{mode}\"\nwarn_at_pct = 90\ngrace_pct = 0\n",
        rfc3339_in_days(60)
    );
    let document = LicenseSpec::parse(&spec)
        .unwrap()
        .to_document(
            key.key_id(),
            tollgate_events::WallTime::from_unix_ms(now_ms()),
        )
        .unwrap();
    tollgate_license::sign(&document, key).unwrap()
}

/// Calls near the calls limit (WARNING), provisioned subscribers over theirs (OVER_LIMIT),
/// registrations comfortably under (OK): every gauge colour on one page.
fn send_load(agent: &Agent) {
    let mut calls = String::new();
    for i in 0..19 {
        let emergency = if i == 0 { " emergency" } else { "" };
        calls.push_str(&format!("call-start web-{i}@test tag=t{i}{emergency}\n"));
    }
    send_udp(agent.udp(), calls.as_bytes());
    let mut regs = String::new();
    for i in 0..30 {
        regs.push_str(&format!(
            "reg sip:user{i}@example.com sip:user{i}@10.0.0.{i}:5060 3600\n"
        ));
        if i % 5 == 0 {
            regs.push_str(&format!(
                "reg sip:user{i}@example.com sip:user{i}@10.0.1.{i}:5060 3600\n"
            ));
        }
    }
    send_udp(agent.udp(), regs.as_bytes());
    send_udp(agent.udp(), b"subscribers 1200\n");
    agent.wait_usage("the test load", |u| {
        u["calls"] == 19 && u["registered_subscribers"] == 30 && u["subscribers"] == 1200
    });
}

#[test]
fn page_in_chromium_shows_usage_and_license_and_reloads_and_uploads() {
    if !common::browser::ready("the browser test") {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let vendor = SigningKey::generate();
    let license_file = dir.path().join("license.txt");
    std::fs::write(
        &license_file,
        // Enforced, so the 21st call is denied (OVER_LIMIT) and counted on the page.
        license(
            &vendor,
            1,
            "Test Telecom",
            (20, 1000, 50),
            "\"pbx\"",
            "enforce",
        ),
    )
    .unwrap();
    let upload_file = dir.path().join("license-serial-2.txt");
    std::fs::write(
        &upload_file,
        license(
            &vendor,
            2,
            "Test Telecom Expanded",
            (100, 5000, 200),
            "\"pbx\", \"sms\", \"recording\"",
            "warn",
        ),
    )
    .unwrap();
    let admin = tollgate_agent::auth::hash_password("admin-pw").unwrap();
    let viewer = tollgate_agent::auth::hash_password("viewer-pw").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[license]\nfile = \"{}\"\ntrusted_keys = [\"{}\"]\n\n\
             [[admin.users]]\nname = \"ops\"\npassword_hash = \"{admin}\"\nrole = \"admin\"\n\n\
             [[admin.users]]\nname = \"noc\"\npassword_hash = \"{viewer}\"\nrole = \"viewer\"\n",
            license_file.display(),
            vendor.public_key().to_file_string().trim()
        ),
    );
    let agent = Agent::start(&dir.path().join("state"), &config);
    send_load(&agent);

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_page");
    std::fs::create_dir_all(&screenshots).unwrap();
    common::browser::run_script(
        "page.test.mjs",
        &[
            ("TOLLGATE_URL", format!("http://{}", agent.rt.admin)),
            ("TOLLGATE_EVENTS_UDP", agent.udp().to_string()),
            ("TOLLGATE_ADMIN_USER", "ops".to_string()),
            ("TOLLGATE_ADMIN_PASSWORD", "admin-pw".to_string()),
            ("TOLLGATE_VIEWER_USER", "noc".to_string()),
            ("TOLLGATE_VIEWER_PASSWORD", "viewer-pw".to_string()),
            ("TOLLGATE_UPLOAD_LICENSE", upload_file.display().to_string()),
            ("TOLLGATE_AGENT_PID", agent.child.id().to_string()),
        ],
        &screenshots,
    );

    // The script killed the agent (kill -9) for the stale-state step; what the page
    // uploaded before that is what the agent had in force.
    let mut agent = agent;
    let (status, log) = agent.wait_exit();
    assert!(!status.success(), "the agent was killed: {status}");
    assert!(
        log.contains(&format!("Valid license: [{KEY}]: 100 calls")),
        "the upload from the page installed serial 2: {log}"
    );
    for name in [
        "desktop.png",
        "desktop-after-upload.png",
        "phone.png",
        "stale-desktop.png",
        "stale-phone.png",
    ] {
        assert!(
            screenshots.join(name).exists(),
            "screenshot {name} was saved"
        );
    }
    // The README's screenshot is this test's desktop view: regenerate it on request.
    if std::env::var("TOLLGATE_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        std::fs::copy(
            screenshots.join("desktop.png"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot.png"),
        )
        .unwrap();
    }
}
