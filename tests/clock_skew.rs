//! Issue 16: `CLOCK_SKEW`. An agent whose wall clock runs 9 months behind (libfaketime,
//! `LD_PRELOAD`, for the agent only), with no `license.state` and its license server
//! reachable: the lease answer carries the server's time, the agent reports `CLOCK_SKEW`,
//! and judges the license by the server's time — a term license that ended a month ago is
//! `EXPIRED`, not `OK` as the agent's own clock would have it.
//!
//! Without libfaketime the test says so loudly and passes only when
//! `TOLLGATE_REQUIRE_FAKETIME` is unset.

mod common;
#[path = "common/vendor.rs"]
mod vendor;

use std::path::Path;

use common::Agent;
use vendor::{Server, Vendor, now_ms, wait_for};

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const DAY_MS: u64 = 86_400_000;

#[test]
fn a_clock_nine_months_back_is_clock_skew_and_the_expired_license_is_not_ok() {
    if !Path::new(FAKETIME_LIB).exists() {
        assert!(
            std::env::var_os("TOLLGATE_REQUIRE_FAKETIME").is_none(),
            "libfaketime is required ({FAKETIME_LIB}; apt-get install faketime)"
        );
        eprintln!("SKIPPED LOUDLY: {FAKETIME_LIB} not installed; the CLOCK_SKEW test did not run");
        return;
    }
    let vendor = Vendor::new();
    let server = Server::start(&vendor);
    // A term license that ended 30 days ago (by real time).
    let token = vendor.provision("term", now_ms() - 30 * DAY_MS);
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime.rc");
    std::fs::write(&offset, "-270d\n").unwrap();
    // SAFETY: the only test in this binary sets these before it starts any thread of its
    // own; the server and the admin commands are started without LD_PRELOAD.
    unsafe {
        std::env::set_var("LD_PRELOAD", FAKETIME_LIB);
        std::env::set_var("FAKETIME_TIMESTAMP_FILE", &offset);
        std::env::set_var("FAKETIME_NO_CACHE", "1");
        std::env::set_var("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, server.agent_config(&vendor, &token, "skewed-node")).unwrap();
    // A fresh state dir: no license.state, so no recorded time watermark; only the server's
    // time can tell the agent its clock is wrong. (Once started, the agent writes
    // license.state as soon as its first fetch installs a license, which can be before
    // `Agent::start` returns: checking for it afterwards was a race.)
    let state = dir.path().join("state");
    assert!(!state.join("license.state").exists());
    let agent = Agent::start(&state, &config);

    let license = wait_for("CLOCK_SKEW in GET /api/v1/license", 60, || {
        let (code, body) = agent.get("/api/v1/license");
        assert_eq!(code, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        (json["clock"]["status"] == "CLOCK_SKEW" && !json["evaluation"].is_null()).then_some(json)
    });
    // The agent's clock really is 9 months back, and the skew says so.
    let skew_ms = license["clock"]["skew_ms"].as_i64().unwrap();
    assert!(
        (260 * DAY_MS as i64..280 * DAY_MS as i64).contains(&skew_ms),
        "{license:#}"
    );
    let status = wait_for("a status other than OK", 30, || {
        let (_, body) = agent.get("/api/v1/license");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let status = json["evaluation"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        (status == "EXPIRED").then_some(json)
    });
    assert_ne!(status["evaluation"]["status"], "OK", "{status:#}");
    assert!(
        status["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("CLOCK_SKEW")),
        "{status:#}"
    );
    let (_, log) = agent.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("CLOCK_SKEW") && l.contains("ERROR")),
        "CLOCK_SKEW logged at error:\n{log}"
    );
}
