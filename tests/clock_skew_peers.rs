//! Issue 16: `CLOCK_SKEW` against the mesh peers' time, with no license server at all. Two
//! agents meshed over QUIC (mutual TLS); node 2's wall clock runs 9 months behind
//! (libfaketime, `LD_PRELOAD`, for node 2 only). Node 1's record carries its wall clock;
//! node 2 finds its own clock 270 days behind the peers' time, reports `CLOCK_SKEW`, and
//! judges its license by the peers' time: a term license that ended a month ago is
//! `EXPIRED`, not `OK` as node 2's own clock would have it. Node 1, the honest one, keeps
//! its own time (with two nodes the later clock wins: see `tollgate_replication::clock`).
//!
//! The cluster's certificates are issued (by `tollgate cluster ca / issue`) 300 days back,
//! so that they are valid by both clocks: a node whose clock is before its certificate's
//! start cannot join the mesh at all.
//!
//! Without libfaketime the test says so loudly and passes only when
//! `TOLLGATE_REQUIRE_FAKETIME` is unset.

mod common;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, BIN, write_config};
use tollgate_license::timestamp::format_rfc3339;
use tollgate_license::{LicenseSpec, SigningKey};

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// libfaketime for one process: its wall clock `offset` (e.g. `-270d`) from the real one,
/// its monotonic clock untouched.
fn faketime(dir: &Path, name: &str, offset: &str) -> Vec<(&'static str, OsString)> {
    let rc = dir.join(format!("{name}.faketime"));
    std::fs::write(&rc, format!("{offset}\n")).unwrap();
    vec![
        ("LD_PRELOAD", FAKETIME_LIB.into()),
        ("FAKETIME_TIMESTAMP_FILE", rc.into()),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, OsString)]) -> Vec<(&'static str, &'a OsStr)> {
    env.iter().map(|(k, v)| (*k, v.as_os_str())).collect()
}

fn tollgate(args: &[&str], env: &[(&'static str, OsString)]) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tollgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn license(json: &serde_json::Value) -> (String, String, Option<i64>) {
    (
        json["clock"]["status"].as_str().unwrap_or("").to_owned(),
        json["clock"]["source"].as_str().unwrap_or("").to_owned(),
        json["clock"]["skew_ms"].as_i64(),
    )
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_json(agent: &Agent, path: &str) -> serde_json::Value {
    let (code, body) = agent.get(path);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_clock_nine_months_behind_its_peer_is_clock_skew_and_the_expired_license_is_not_ok() {
    if !Path::new(FAKETIME_LIB).exists() {
        assert!(
            std::env::var_os("TOLLGATE_REQUIRE_FAKETIME").is_none(),
            "libfaketime is required ({FAKETIME_LIB}; apt-get install faketime)"
        );
        eprintln!(
            "SKIPPED LOUDLY: {FAKETIME_LIB} not installed; the peers' CLOCK_SKEW test did not run"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The cluster CA and both node certificates, issued 300 days ago.
    let issued_back = faketime(d, "issue", "-300d");
    let ca_dir = d.join("ca");
    let certs = d.join("certs");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    tollgate(
        &["cluster", "ca", "--out-dir", &path(&ca_dir)],
        &issued_back,
    );
    for node in ["n1", "n2"] {
        tollgate(
            &[
                "cluster",
                "issue",
                "--ca-dir",
                &path(&ca_dir),
                "--node",
                node,
                "--out-dir",
                &path(&certs),
            ],
            &issued_back,
        );
    }

    // A term license that ended 30 days ago by real time (valid by node 2's clock).
    let vendor = SigningKey::generate();
    let now = tollgate_events::WallTime::from_unix_ms(now_ms());
    let day = tollgate_license::timestamp::DAY;
    let spec = format!(
        "license_key = \"PEERS_1\"\ncustomer = \"Skew Telecom\"\nkind = \"term\"\nserial = 3\n\
         issued_at = \"{}\"\nvalid_from = \"{}\"\nvalid_until = \"{}\"\n[limits]\ncalls = 10\n",
        format_rfc3339(now - 400 * day),
        format_rfc3339(now - 400 * day),
        format_rfc3339(now - 30 * day)
    );
    let doc = LicenseSpec::parse(&spec)
        .unwrap()
        .to_document(vendor.key_id(), now - 400 * day)
        .unwrap();
    let license_file = d.join("license.txt");
    std::fs::write(
        &license_file,
        tollgate_license::sign(&doc, &vendor).unwrap(),
    )
    .unwrap();

    let config = |node: &str, seeds: &[String]| {
        let node_dir = d.join(node);
        std::fs::create_dir_all(&node_dir).unwrap();
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let config = write_config(
            &node_dir,
            &format!(
                "[mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nseeds = [{}]\nca = \"{}\"\n\
                 cert = \"{}\"\nkey = \"{}\"\n\n[license]\nfile = \"{}\"\ntrusted_keys = [\"{}\"]\n",
                seeds.join(", "),
                ca_dir.join("ca.pem").display(),
                certs.join(format!("{node}.pem")).display(),
                certs.join(format!("{node}.key")).display(),
                license_file.display(),
                vendor.public_key().to_file_string().trim(),
            ),
        );
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("node_id = \"test-node\"", &format!("node_id = \"{node}\""));
        std::fs::write(&config, text).unwrap();
        config
    };

    let one = Agent::start(&d.join("n1/state"), &config("n1", &[]));
    let seed = vec![one.rt.mesh.expect("a mesh address").to_string()];
    let back = faketime(d, "n2", "-270d");
    let state2 = d.join("n2/state");
    assert!(!state2.join("license.state").exists());
    let two = Agent::start_with_env(&state2, &config("n2", &seed), &env_refs(&back));

    // Node 2: CLOCK_SKEW against the peers, about 270 days behind.
    let json = wait_for("CLOCK_SKEW against the peers on node 2", 60, || {
        let json = get_json(&two, "/api/v1/license");
        let (status, source, _) = license(&json);
        (status == "CLOCK_SKEW" && source == "peers").then_some(json)
    });
    let skew_ms = license(&json).2.unwrap();
    assert!(
        (260 * DAY_MS as i64..280 * DAY_MS as i64).contains(&skew_ms),
        "{json:#}"
    );
    // And its license, valid by its own clock, is judged by the peers' time: EXPIRED.
    let json = wait_for("node 2's license EXPIRED", 30, || {
        let json = get_json(&two, "/api/v1/license");
        (json["evaluation"]["status"] == "EXPIRED").then_some(json)
    });
    assert_eq!(
        json["license"]["serial"], 3,
        "installed by node 2's clock: {json:#}"
    );
    assert!(
        json["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("CLOCK_SKEW") && e.contains("the peers'")),
        "{json:#}"
    );

    // Node 1 keeps its own time: its peer's clock is behind, not its own.
    let json = get_json(&one, "/api/v1/license");
    assert_eq!(
        license(&json),
        ("OK".into(), "peers".into(), Some(0)),
        "{json:#}"
    );
    assert_ne!(json["evaluation"]["status"], "OK", "{json:#}");
    // The cluster view shows each node's clock.
    let cluster = get_json(&one, "/api/v1/cluster");
    let clock_of = |node: &str| {
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == node)
            .and_then(|n| n["wall_time_ms"].as_u64())
            .unwrap_or_else(|| panic!("{node}'s wall_time_ms: {cluster:#}"))
    };
    let behind = clock_of("n1").saturating_sub(clock_of("n2"));
    assert!(
        (260 * DAY_MS..280 * DAY_MS).contains(&behind),
        "{cluster:#}"
    );

    let (_, log) = two.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("CLOCK_SKEW") && l.contains("ERROR") && l.contains("peers")),
        "CLOCK_SKEW logged at error:\n{log}"
    );
    let (_, log) = one.stop();
    assert!(
        !log.lines().any(|l| l.contains("CLOCK_SKEW: this node")),
        "the honest node is not skewed:\n{log}"
    );
}
