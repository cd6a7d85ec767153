//! The agent's log lines as an operator's tools read them: stderr written to a file (as
//! systemd or a shell redirect does) carries no ANSI escapes and is grep-able for its codes
//! (`code="INVALID"`); with `[log] format = "json"` every line is one JSON object with the
//! fields at the top level.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, write_config};
use tollgate_license::{LicenseSpec, SigningKey};

/// A license file whose signature no longer matches (one byte of the body changed), and a
/// config that trusts the key it was signed with: refused at start with `INVALID`.
fn tampered_license_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let key = SigningKey::generate();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let spec = "license_key = \"TEST_LOGS_0001\"\ncustomer = \"Log Test\"\nserial = 3\n\
                kind = \"perpetual\"\nlease_days = 14\n\n[limits]\ncalls = 10\n";
    let doc = LicenseSpec::parse(spec)
        .unwrap()
        .to_document(
            key.key_id(),
            tollgate_events::WallTime::from_unix_ms(now_ms),
        )
        .unwrap();
    let armored = tollgate_license::sign(&doc, &key).unwrap();
    let tampered = armored.replacen("Log Test", "Log Tesx", 1);
    assert_ne!(
        armored, tampered,
        "the customer name is in the armored text"
    );
    let license = dir.join("license.txt");
    std::fs::write(&license, tampered).unwrap();
    write_config(
        dir,
        &format!(
            "[license]\nfile = {license:?}\ntrusted_keys = [\"{}\"]\n\n{extra}",
            key.public_key().to_file_string().trim()
        ),
    )
}

/// Runs the agent with stderr to a file until `ready` shows in it, stops it with SIGTERM and
/// returns the file's bytes.
fn run_to_file(dir: &Path, config: &Path, ready: &str) -> Vec<u8> {
    let log = dir.join("agent.log");
    let mut child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("TOLLGATE_LOG", "info")
        .env_remove("TOLLGATE_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap().contains(ready) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "agent exited with {status}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {ready:?} in the log: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    std::fs::read(&log).unwrap()
}

#[test]
fn a_log_file_is_plain_text_and_greppable_for_its_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = tampered_license_config(dir.path(), "");
    let log = run_to_file(dir.path(), &config, "agent ready");
    assert!(
        !log.contains(&0x1b),
        "escape bytes in a log file:\n{}",
        String::from_utf8_lossy(&log)
    );
    let text = String::from_utf8(log).unwrap();
    let refused = text
        .lines()
        .find(|l| l.contains("license file refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{text}"));
    assert!(
        refused.contains("code=\"INVALID\"") && refused.contains("ERROR"),
        "{refused}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(" INFO ") && l.contains("agent ready"))
    );
}

#[test]
fn json_format_writes_one_object_per_line_with_the_fields_at_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let config = tampered_license_config(dir.path(), "[log]\nformat = \"json\"\n");
    let log = run_to_file(dir.path(), &config, "agent ready");
    assert!(!log.contains(&0x1b));
    let text = String::from_utf8(log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    let refused = lines
        .iter()
        .find(|l| l["message"] == "license file refused")
        .unwrap_or_else(|| panic!("no refusal logged:\n{text}"));
    assert_eq!(refused["level"], "ERROR");
    assert_eq!(refused["code"], "INVALID");
    let ready = lines
        .iter()
        .find(|l| l["message"] == "agent ready")
        .unwrap();
    assert_eq!(ready["node_id"], "test-node");
}

#[test]
fn an_unknown_log_format_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[log]\nformat = \"xml\"\n");
    let out = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.format"), "{err}");
}
