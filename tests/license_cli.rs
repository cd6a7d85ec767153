//! `tollgate license keygen / sign / verify / show` as a real process, in temp dirs: the
//! vendor's workflow end to end, and one exit code per reason a license is refused.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// Exit codes of `tollgate license verify` (its `--help` lists them).
const VALID: i32 = 0;
const CONFIG: i32 = 2;
const MALFORMED: i32 = 10;
const UNKNOWN_KEY: i32 = 11;
const BAD_SIGNATURE: i32 = 12;
const NOT_YET_VALID: i32 = 13;
const EXPIRED: i32 = 14;
const HOST_NOT_LISTED: i32 = 15;
const LEASE_EXPIRED: i32 = 16;
const ROLLBACK: i32 = 17;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tollgate(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("TOLLGATE_LOG")
        .output()
        .expect("runs the binary");
    Output {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A temp dir with one key pair (`vendor.key`, `vendor.pub`) in `keys/`.
struct Vendor {
    dir: tempfile::TempDir,
    key_id: String,
}

impl Vendor {
    fn new() -> Vendor {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = dir.path().join("keys");
        let out = tollgate(&[
            "license",
            "keygen",
            "--out-dir",
            path(&keys),
            "--name",
            "vendor",
        ]);
        assert_eq!(out.code, 0, "keygen: {}", out.stderr);
        let key_id = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("key id"))
            .expect("prints the key id")
            .trim()
            .to_owned();
        Vendor { dir, key_id }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("keys/vendor.key")
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("keys/vendor.pub")
    }

    /// Signs `spec` into `<name>.lic` and returns its path.
    fn sign(&self, name: &str, spec: &str) -> PathBuf {
        let spec_path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&spec_path, spec).expect("writes spec");
        let license = self.dir.path().join(format!("{name}.lic"));
        let out = tollgate(&[
            "license",
            "sign",
            "--key",
            path(&self.key()),
            "--spec",
            path(&spec_path),
            "--out",
            path(&license),
        ]);
        assert_eq!(out.code, 0, "sign: {}", out.stderr);
        license
    }

    fn verify(&self, license: &Path, extra: &[&str]) -> Output {
        let public = self.public();
        let mut args = vec!["license", "verify", "--trusted", path(&public)];
        args.extend_from_slice(extra);
        args.push(path(license));
        tollgate(&args)
    }
}

const TERM_SPEC: &str = r#"
license_key = "ABCDEFGHI_123456789_a1b2c3d4e5f6"
customer = "Example Telecom GmbH"
kind = "term"
serial = 42
valid_from = "2025-01-01T00:00:00Z"
valid_until = "2099-01-01T00:00:00Z"
features = ["pbx", "fax"]

[limits]
calls = 10000
subscribers = 1000000
registered_subscribers = 2000000

[policy]
mode = "enforce"
"#;

#[track_caller]
fn check_verify(out: &Output, code: i32, needle: &str) {
    assert_eq!(
        out.code, code,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    assert_eq!(out.stdout.lines().count(), 1, "one line: {}", out.stdout);
    assert!(
        out.stdout.contains(needle),
        "{:?} should contain {needle:?}",
        out.stdout
    );
}

#[test]
fn keygen_sign_verify_round_trip() {
    let vendor = Vendor::new();
    let license = vendor.sign("term", TERM_SPEC);
    let text = std::fs::read_to_string(&license).expect("reads license");
    assert!(text.starts_with("-----BEGIN TOLLGATE LICENSE-----\n"));
    assert!(text.contains(&format!("key_id = \"{}\"", vendor.key_id)));

    let out = vendor.verify(&license, &[]);
    check_verify(
        &out,
        VALID,
        "OK: term license ABCDEFGHI_123456789_a1b2c3d4e5f6",
    );
    assert!(out.stdout.contains(&vendor.key_id));

    let out = vendor.verify(&license, &["--json"]);
    assert_eq!(out.code, VALID);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["valid"], true);
    assert_eq!(json["status"], "OK");
    assert_eq!(json["license"]["serial"], 42);
    assert_eq!(json["license"]["limits"]["calls"], 10000);

    // Sign to stdout: the same document (Ed25519 is deterministic, but issued_at is "now",
    // so compare what verifies rather than the bytes).
    let spec = vendor.dir.path().join("term.toml");
    let out = tollgate(&[
        "license",
        "sign",
        "--key",
        path(&vendor.key()),
        "--spec",
        path(&spec),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("-----BEGIN TOLLGATE LICENSE-----\n"));
    let piped = vendor.dir.path().join("piped.lic");
    std::fs::write(&piped, &out.stdout).expect("writes");
    check_verify(&vendor.verify(&piped, &[]), VALID, "OK:");
}

#[test]
fn flipped_body_byte_is_a_bad_signature() {
    let vendor = Vendor::new();
    let license = vendor.sign("term", TERM_SPEC);
    let mut bytes = std::fs::read(&license).expect("reads");
    let at = bytes
        .windows(7)
        .position(|w| w == b"Example")
        .expect("customer in the body");
    bytes[at + 2] ^= 0x01; // "Example" → "Exbmple": still valid TOML, a different body.
    std::fs::write(&license, &bytes).expect("writes");
    let out = vendor.verify(&license, &[]);
    check_verify(&out, BAD_SIGNATURE, "bad signature");

    // `show` still displays it, says the signature does not verify, and prints no
    // `Valid license:` line.
    let show = tollgate(&[
        "license",
        "show",
        "--trusted",
        path(&vendor.public()),
        path(&license),
    ]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(show.stdout.contains("NOT VERIFIED: bad signature"));
    assert!(
        !show.stdout.lines().any(|l| l.starts_with("Valid license:")),
        "{}",
        show.stdout
    );
}

#[test]
fn another_vendors_key_is_an_unknown_key() {
    let vendor = Vendor::new();
    let other = Vendor::new();
    assert_ne!(vendor.key_id, other.key_id);
    let license = vendor.sign("term", TERM_SPEC);
    let out = other.verify(&license, &[]);
    check_verify(
        &out,
        UNKNOWN_KEY,
        &format!("unknown key id {}", vendor.key_id),
    );

    // Trusting both (rotation) verifies.
    let out = tollgate(&[
        "license",
        "verify",
        "--trusted",
        path(&other.public()),
        "--trusted",
        path(&vendor.public()),
        path(&license),
    ]);
    check_verify(&out, VALID, "OK:");
}

#[test]
fn term_license_past_valid_until_is_expired_but_authentic() {
    let vendor = Vendor::new();
    let spec = TERM_SPEC
        .replace("2025-01-01T00:00:00Z", "2020-01-01T00:00:00Z")
        .replace("2099-01-01T00:00:00Z", "2021-01-01T00:00:00Z");
    let license = vendor.sign("expired", &spec);
    let out = vendor.verify(&license, &[]);
    check_verify(&out, EXPIRED, "EXPIRED: the term license");
    assert!(out.stdout.contains("expired on 2021-01-01T00:00:00Z"));
    assert!(out.stdout.contains("the signature is authentic"));

    let out = vendor.verify(&license, &["--json"]);
    assert_eq!(out.code, EXPIRED);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["verdict"], "expired");
    assert_eq!(json["authentic"], true);
    assert_eq!(json["exit_code"], EXPIRED);

    // The same license, checked at a time before it ended, is valid.
    let out = vendor.verify(&license, &["--at", "2020-06-01T00:00:00Z"]);
    check_verify(&out, VALID, "OK:");
}

#[test]
fn not_yet_valid_host_lease_and_rollback_each_have_their_code() {
    let vendor = Vendor::new();
    let future = vendor.sign(
        "future",
        &TERM_SPEC.replace("2025-01-01T00:00:00Z", "2098-01-01T00:00:00Z"),
    );
    check_verify(
        &vendor.verify(&future, &[]),
        NOT_YET_VALID,
        "not valid before 2098-01-01T00:00:00Z",
    );

    let bound = vendor.sign(
        "bound",
        &TERM_SPEC.replace("features =", "host_ids = [\"node-a\"]\nfeatures ="),
    );
    check_verify(
        &vendor.verify(&bound, &["--host-id", "node-b"]),
        HOST_NOT_LISTED,
        "not valid on this host (host id node-b)",
    );
    check_verify(
        &vendor.verify(&bound, &["--host-id", "NODE-A"]),
        VALID,
        "OK:",
    );
    check_verify(
        &vendor.verify(&bound, &[]),
        VALID,
        "not checked: no --host-id",
    );

    let leased = vendor.sign(
        "leased",
        &TERM_SPEC.replace(
            "features =",
            "signature_valid_until = \"2025-02-01T00:00:00Z\"\nfeatures =",
        ),
    );
    check_verify(
        &vendor.verify(&leased, &[]),
        LEASE_EXPIRED,
        "lease of license ABCDEFGHI_123456789_a1b2c3d4e5f6 ended",
    );

    let license = vendor.sign("term", TERM_SPEC);
    check_verify(
        &vendor.verify(&license, &["--min-serial", "43"]),
        ROLLBACK,
        "serial 42 is lower than 43",
    );
    check_verify(
        &vendor.verify(&license, &["--min-serial", "42"]),
        VALID,
        "OK:",
    );
}

#[test]
fn malformed_license_and_bad_inputs() {
    let vendor = Vendor::new();
    let junk = vendor.dir.path().join("junk.lic");
    std::fs::write(&junk, "hello, I am not a license\n").expect("writes");
    check_verify(&vendor.verify(&junk, &[]), MALFORMED, "malformed license");

    // A spec error names the field and exits 2.
    let spec = vendor.dir.path().join("bad.toml");
    std::fs::write(&spec, TERM_SPEC.replace("valid_until", "# valid_until")).expect("writes");
    let out = tollgate(&[
        "license",
        "sign",
        "--key",
        path(&vendor.key()),
        "--spec",
        path(&spec),
    ]);
    assert_eq!(out.code, CONFIG);
    assert!(out.stderr.contains("`valid_until`"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    // A trusted "key" that is not one is bad usage, not a verdict.
    let license = vendor.sign("term", TERM_SPEC);
    let out = tollgate(&[
        "license",
        "verify",
        "--trusted",
        path(&vendor.key()),
        path(&license),
    ]);
    assert_eq!(out.code, CONFIG, "{}", out.stderr);
    let out = tollgate(&["license", "verify", path(&license)]);
    assert_eq!(out.code, CONFIG, "--trusted is required");
}

#[test]
fn keygen_refuses_to_overwrite_a_key() {
    let vendor = Vendor::new();
    let before = std::fs::read(vendor.key()).expect("reads key");
    let keys = vendor.dir.path().join("keys");
    let out = tollgate(&[
        "license",
        "keygen",
        "--out-dir",
        path(&keys),
        "--name",
        "vendor",
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    assert_eq!(std::fs::read(vendor.key()).expect("reads key"), before);

    let out = tollgate(&[
        "license",
        "keygen",
        "--out-dir",
        path(&keys),
        "--name",
        "vendor",
        "--force",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_ne!(std::fs::read(vendor.key()).expect("reads key"), before);
    let mode = std::fs::metadata(vendor.key())
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "replaced key keeps mode 0600");
}

#[test]
fn private_key_is_mode_0600_and_never_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tollgate(&["license", "keygen", "--out-dir", path(dir.path())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let key = dir.path().join("license-signing.key");
    let public = dir.path().join("license-signing.pub");
    let mode = std::fs::metadata(&key).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(out.stdout.contains(path(&key)) && out.stdout.contains(path(&public)));
    let secret = std::fs::read_to_string(&key).expect("reads key");
    let seed = secret.trim().rsplit(':').next().expect("three parts");
    assert!(secret.starts_with("tollgate-ed25519-private:"));
    assert!(!out.stdout.contains(seed) && !out.stderr.contains(seed));
}

#[test]
fn show_prints_the_key_and_limits() {
    let vendor = Vendor::new();
    let license = vendor.sign("term", TERM_SPEC);
    let out = tollgate(&[
        "license",
        "show",
        "--trusted",
        path(&vendor.public()),
        path(&license),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for needle in [
        "License       ABCDEFGHI_123456789_a1b2c3d4e5f6",
        "Customer      Example Telecom GmbH",
        "Calls         10000",
        "Subscribers   1000000",
        "Registered    2000000",
        "Features      pbx, fax",
        "Policy        enforce, warn at 90%, grace 10%",
        &format!("Signature     verified with trusted key {}", vendor.key_id),
        "Status        OK at ",
        "Valid license: [ABCDEFGHI_123456789_a1b2c3d4e5f6]: 10000 calls, 1000000 subscribers, \
         2000000 registered subscribers, valid until Thu Jan  1 00:00:00 2099",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            out.stdout
        );
    }

    // Without keys: shown, the signature not checked.
    let out = tollgate(&["license", "show", path(&license)]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("Signature     not checked"));

    let out = tollgate(&["license", "show", "--json", path(&license)]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(
        json["license"]["license_key"],
        "ABCDEFGHI_123456789_a1b2c3d4e5f6"
    );
    assert_eq!(json["signature_checked"], false);
}

#[test]
fn verify_help_lists_the_exit_codes() {
    let out = tollgate(&["license", "verify", "--help"]);
    assert_eq!(out.code, 0);
    for line in [
        "0   valid",
        "10  malformed",
        "11  unknown key",
        "12  bad signature",
        "13  not yet valid",
        "14  expired",
        "15  host not listed",
        "16  lease ended",
        "17  rollback",
    ] {
        assert!(out.stdout.contains(line), "missing {line:?}");
    }
}
