//! `tollgate license keygen / sign / verify / show`: the vendor's key and document tools.
//!
//! Thin glue over `tollgate_license`, which owns the format, signing and every check: this
//! module reads and writes files, reads the clock, prints, and picks exit codes.
//!
//! - `keygen` writes `NAME.key` (created exclusively, mode 0600) and `NAME.pub`; it never
//!   prints the private key.
//! - `sign` turns a TOML spec into an armored license.
//! - `verify` answers with one line (or JSON) and an exit code per reason ([`Verdict`]).
//! - `show` prints the document in plain words, whether its signature verifies, and the
//!   `Valid license: …` line an agent logs when it loads it.
//!
//! Exit codes: 0 ok, 1 the tool failed (a file cannot be read or written), 2 bad usage or
//! bad input (options, key files, a spec, an unreadable license for `show`), and for
//! `verify` 10 to 17, one per reason (see [`Verdict`] and `tollgate license verify --help`).

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use tollgate_events::WallTime;
use tollgate_license::keys::{KEY_FILE_LEN_MAX, TRUSTED_KEYS_TEXT_LEN_MAX};
use tollgate_license::timestamp::{format_rfc3339, parse_rfc3339};
use tollgate_license::{
    Context, Document, LICENSE_TEXT_LEN_MAX, LicenseSpec, Mode, Refusal, SigningKey, StatusCode,
    TrustedKeys, Usage, VerifyError,
};

use crate::Failure;

const VERIFY_ABOUT: &str = "\
Verify a license file against trusted public keys: is it authentic (signed by one of the
--trusted keys, unchanged since), and is it in force here and now (valid from, valid until,
signature lease, host binding)?

Prints one line, `<STATUS>: <reason>` (or a JSON object with --json), and exits with a code
that says why:

  0   valid: authentic and in force
  1   the tool failed (e.g. the license file cannot be read)
  2   bad usage: a bad option, or a --trusted file that cannot be read or holds no key
  10  malformed: not a license text (armor, encoding, size, or a body that does not parse)
  11  unknown key: signed by a key id that is not among the --trusted keys
  12  bad signature: the text was changed after it was signed
  13  not yet valid: before valid_from (the signature is authentic)
  14  expired: past valid_until of a term or subscription license (authentic)
  15  host not listed: bound to hosts that do not include --host-id (authentic)
  16  lease ended: past signature_valid_until, renew it from the license server (authentic)
  17  rollback: serial lower than --min-serial (authentic)

The first failure decides, checked in this order: malformed, unknown key, bad signature,
rollback, host, not yet valid, expired, lease. Without --host-id a host-bound license is
reported as such but its binding is not checked.";

const SHOW_ABOUT: &str = "\
Show a license in plain words: license key, customer, kind, serial, validity, signature
lease, limits, features, hosts, policy and signing key id. With --trusted, also whether the
signature verifies and the license's status now (same checks as `verify`). Ends with the
`Valid license: [KEY]: …` line an agent logs when it loads this license.

The document is shown even when its signature does not verify: the output then says so,
and its contents must not be trusted. Exit code 0 when the license could be read and shown
(whatever its status: use `verify` for a verdict), 2 when it is not a license text.";

const SIGN_ABOUT: &str = "\
Sign a license spec (TOML) with a private key and write the armored license.

The spec holds the license's fields without `key_id` (the signing key supplies it):
license_key, customer, kind (perpetual | term | subscription), serial, optional issued_at
(default: now), valid_from (default: issued_at), valid_until (required for term and
subscription), signature_valid_until or lease_days, features, host_ids, [limits] calls /
subscribers / registered_subscribers (absent = unlimited), [policy] mode (warn | enforce),
warn_at_pct, grace_pct, emergency_exempt. Times are UTC like 2030-01-01T00:00:00Z. See
docs/license-format.md.

Errors in the spec or key name the problem and exit with code 2.";

const KEYGEN_ABOUT: &str = "\
Create an Ed25519 signing key pair for licenses: DIR/NAME.key (the private key, mode 0600)
and DIR/NAME.pub (the public key agents trust). Prints the key id and both paths, never the
private key. An existing key pair is never overwritten unless --force is given.

Rotation: generate a new pair, have agents trust the new .pub beside the old one, re-sign
licenses with the new key, then drop the old .pub.";

#[derive(Debug, clap::Args)]
pub struct LicenseArgs {
    #[command(subcommand)]
    command: LicenseCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LicenseCommand {
    /// Create an Ed25519 signing key pair (NAME.key mode 0600, NAME.pub) and print its key id.
    #[command(long_about = KEYGEN_ABOUT)]
    Keygen(KeygenArgs),
    /// Sign a license spec (TOML) into an armored license file.
    #[command(long_about = SIGN_ABOUT)]
    Sign(SignArgs),
    /// Verify a license against trusted public keys; the exit code says why it fails.
    #[command(long_about = VERIFY_ABOUT)]
    Verify(VerifyArgs),
    /// Show a license in plain words, and whether its signature verifies.
    #[command(long_about = SHOW_ABOUT)]
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Directory for the key pair (created with mode 0700 if it does not exist).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// File name stem: writes NAME.key and NAME.pub ([A-Za-z0-9_.-], not starting with `.`).
    #[arg(long, value_name = "NAME", default_value = "license-signing")]
    name: String,
    /// Replace an existing key pair of that name. The old private key is lost, and licenses
    /// signed with it verify only where its public key is still trusted.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct SignArgs {
    /// The private key file (NAME.key from `tollgate license keygen`).
    #[arg(long, value_name = "FILE.key")]
    key: PathBuf,
    /// The license spec (TOML; see above).
    #[arg(long, value_name = "SPEC.toml")]
    spec: PathBuf,
    /// Write the license to FILE (replaced atomically if it exists) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// What the time and the host are, for `verify` and `show`.
#[derive(Debug, clap::Args)]
struct WhereAndWhen {
    /// This host's id, for a license bound to hosts (`host_ids`; compared case-insensitively).
    /// Without it, a host binding is reported but not checked.
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// Check as of this time instead of now (UTC, like 2030-01-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    at: Option<WallTime>,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// A trusted public key file (NAME.pub), or a file of them (one per line, `#` comments).
    /// Repeat for several (key rotation).
    #[arg(long, value_name = "PUB", required = true)]
    trusted: Vec<PathBuf>,
    #[command(flatten)]
    check: WhereAndWhen,
    /// Refuse a serial lower than N, as an agent that has already accepted serial N does
    /// (rollback).
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
    /// The license file (`-` for stdin).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// Trusted public key file(s), to check the signature (repeatable).
    #[arg(long, value_name = "PUB")]
    trusted: Vec<PathBuf>,
    #[command(flatten)]
    check: WhereAndWhen,
    /// Print the document and the verification result as one JSON object.
    #[arg(long)]
    json: bool,
    /// The license file (`-` for stdin).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

pub fn run(args: LicenseArgs) -> Result<(), Failure> {
    match args.command {
        LicenseCommand::Keygen(args) => keygen(&args),
        LicenseCommand::Sign(args) => sign(&args),
        LicenseCommand::Verify(args) => verify(&args),
        LicenseCommand::Show(args) => show(&args),
    }
}

// ---------------------------------------------------------------------------------------
// keygen

fn keygen(args: &KeygenArgs) -> Result<(), Failure> {
    check_key_name(&args.name).map_err(Failure::Config)?;
    let key_path = args.out_dir.join(format!("{}.key", args.name));
    let pub_path = args.out_dir.join(format!("{}.pub", args.name));
    if !args.force {
        for path in [&key_path, &pub_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(Failure::Config(anyhow!(
                    "{} already exists: refusing to overwrite a key (pass --force to replace \
                     the pair)",
                    path.display()
                )));
            }
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;

    let key = SigningKey::generate_with(&mut rand::rngs::OsRng);
    let public = key.public_key();
    write_file(
        &key_path,
        key.to_file_string().as_bytes(),
        0o600,
        args.force,
    )
    .with_context(|| format!("cannot write {}", key_path.display()))?;
    if let Err(error) = write_file(
        &pub_path,
        public.to_file_string().as_bytes(),
        0o644,
        args.force,
    ) {
        // Never leave half a pair behind: a private key whose public key is missing.
        if !args.force {
            let _ = fs::remove_file(&key_path);
        }
        return Err(Failure::Runtime(
            anyhow::Error::from(error).context(format!("cannot write {}", pub_path.display())),
        ));
    }
    sync_dir(&args.out_dir);
    println!("key id       {}", key.key_id());
    println!(
        "private key  {}  (mode 0600: keep it secret, back it up offline)",
        key_path.display()
    );
    println!(
        "public key   {}  (give it to agents as a trusted key)",
        pub_path.display()
    );
    Ok(())
}

fn check_key_name(name: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(anyhow!(
            "--name {name:?}: 1 to 64 characters of [A-Za-z0-9_.-], not starting with `.`"
        ));
    }
    Ok(())
}

/// Writes `contents` to `path` with exactly `mode` (whatever the umask), durably
/// (`tollgate_durable`: unique temp file, fsync, rename or link, fsync of the directory).
/// Without `replace` the file must not exist; with it, readers see the old file or the new
/// one, and a failed write leaves the old one.
fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()> {
    if replace {
        tollgate_durable::write(path, contents, mode)?;
    } else {
        tollgate_durable::write_new(path, contents, mode)?;
    }
    Ok(())
}

/// Makes a directory entry durable (best effort: not every file system supports it).
fn sync_dir(dir: &Path) {
    let _ = tollgate_durable::sync_dir(dir);
}

// ---------------------------------------------------------------------------------------
// sign

fn sign(args: &SignArgs) -> Result<(), Failure> {
    let key = read_signing_key(&args.key).map_err(Failure::Config)?;
    let spec_text = read_text(&args.spec, LicenseSpec::TEXT_LEN_MAX).map_err(Failure::Config)?;
    let spec_error = |e: tollgate_license::DocumentError| {
        Failure::Config(anyhow!("spec {}: {e}", args.spec.display()))
    };
    let spec = LicenseSpec::parse(&spec_text).map_err(spec_error)?;
    let document = spec
        // Whole seconds: a document's times read better without milliseconds.
        .to_document(key.key_id(), WallTime::from_unix_secs(now().unix_secs()))
        .map_err(spec_error)?;
    let text = tollgate_license::sign(&document, &key).map_err(spec_error)?;
    match &args.out {
        None => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write the license to stdout")?;
        }
        Some(out) => {
            write_file(out, text.as_bytes(), 0o644, true)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {}: license {} serial {} ({}, {}), signed with key {}",
                out.display(),
                document.license_key,
                document.serial,
                document.kind.as_str(),
                document.customer,
                key.key_id()
            );
            println!("{}", tollgate_license::log_line(&document));
        }
    }
    Ok(())
}

fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = read_text(path, KEY_FILE_LEN_MAX)?;
    if let Ok(meta) = fs::metadata(path)
        && meta.mode() & 0o077 != 0
    {
        eprintln!(
            "tollgate: warning: private key {} is readable by others (mode {:04o}); \
             run `chmod 600` on it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    SigningKey::from_file_str(&text).with_context(|| format!("private key {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// verify and show

/// What `verify` concluded. The exit codes are part of the command-line contract (listed in
/// `tollgate license verify --help`); 1 to 3 are taken by `main` for the tool's own failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Valid,
    Malformed,
    UnknownKey,
    BadSignature,
    NotYetValid,
    Expired,
    HostNotListed,
    LeaseExpired,
    Rollback,
}

impl Verdict {
    fn exit_code(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::Malformed => 10,
            Verdict::UnknownKey => 11,
            Verdict::BadSignature => 12,
            Verdict::NotYetValid => 13,
            Verdict::Expired => 14,
            Verdict::HostNotListed => 15,
            Verdict::LeaseExpired => 16,
            Verdict::Rollback => 17,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Malformed => "malformed",
            Verdict::UnknownKey => "unknown_key",
            Verdict::BadSignature => "bad_signature",
            Verdict::NotYetValid => "not_yet_valid",
            Verdict::Expired => "expired",
            Verdict::HostNotListed => "host_not_listed",
            Verdict::LeaseExpired => "lease_expired",
            Verdict::Rollback => "rollback",
        }
    }

    /// Whether the signature checked out (the license is authentic, whatever its status).
    fn is_authentic(self) -> bool {
        !matches!(
            self,
            Verdict::Malformed | Verdict::UnknownKey | Verdict::BadSignature
        )
    }
}

/// The outcome of checking one license text.
struct Report {
    verdict: Verdict,
    /// The license status code (`OK`, `INVALID`, `EXPIRED`, …).
    status: StatusCode,
    /// One line, without the status.
    reason: String,
    /// The authentic document (`None` unless the signature checked out).
    document: Option<Document>,
    /// Whether a host binding was checked (false: there is one, and no host id was given).
    host_checked: bool,
    /// Whole days to `valid_until` and to `signature_valid_until` (negative once past).
    days_to_expiry: Option<i64>,
    days_to_lease_end: Option<i64>,
}

/// Verifies `text` (authentic?) and checks it (in force at `now` on `host_id`?), in the
/// order of the verdicts' exit codes. All the rules are the crate's.
fn check_license(
    text: &[u8],
    trusted: &TrustedKeys,
    host_id: Option<&str>,
    serial_seen_max: Option<u64>,
    now: WallTime,
) -> Report {
    let license = match tollgate_license::verify(text, trusted) {
        Ok(license) => license,
        Err(error) => {
            let (verdict, reason) = match &error {
                VerifyError::Malformed(_) => (Verdict::Malformed, error.to_string()),
                VerifyError::UnknownKey(_) => {
                    let ids: Vec<String> = trusted.iter().map(|k| k.key_id().to_string()).collect();
                    let reason = format!("{error}; trusted: {}", ids.join(", "));
                    (Verdict::UnknownKey, reason)
                }
                VerifyError::BadSignature(_) => (
                    Verdict::BadSignature,
                    format!("{error}: the text was changed after it was signed"),
                ),
            };
            return Report {
                verdict,
                status: error.code(),
                reason,
                document: None,
                host_checked: false,
                days_to_expiry: None,
                days_to_lease_end: None,
            };
        }
    };
    let document = license.document();
    // Without a host id the binding is not checked: stand in a listed host, so the checks
    // after it (not yet valid, expiry) still run.
    let host_checked = host_id.is_some() || document.host_ids.is_empty();
    let context = Context {
        now,
        host_id: host_id.or(document.host_ids.first().map(String::as_str)),
        serial_seen_max,
        time_recorded_max: None,
        unlicensed_mode: Mode::Warn,
    };
    let authentic = "; the signature is authentic";
    let evaluation = tollgate_license::evaluate(Some(&license), &context, &Usage::default());
    let report = |verdict, status, reason| Report {
        verdict,
        status,
        reason,
        document: Some(document.clone()),
        host_checked,
        days_to_expiry: evaluation.days_to_expiry,
        days_to_lease_end: evaluation.days_to_lease_end,
    };
    if let Err(refusal) = license.check(&context) {
        let verdict = match refusal {
            Refusal::Rollback { .. } => Verdict::Rollback,
            Refusal::HostNotListed { .. } => Verdict::HostNotListed,
            Refusal::NotYetValid { .. } => Verdict::NotYetValid,
            Refusal::ClockSetBack { .. } => unreachable!("no recorded time is passed in"),
        };
        let detail = match refusal {
            Refusal::HostNotListed { .. } => {
                format!("; it lists {}", document.host_ids.join(", "))
            }
            Refusal::NotYetValid { .. } => format!(", and it is {}", format_rfc3339(now)),
            _ => String::new(),
        };
        return report(
            verdict,
            refusal.code(),
            format!("{refusal}{detail}{authentic}"),
        );
    }
    let days = |days: Option<i64>| days.map(days_text).unwrap_or_default();
    let kind = document.kind.as_str();
    let at = |at: Option<WallTime>| at.map(format_rfc3339).unwrap_or_default();
    match evaluation.license_status {
        StatusCode::Expired => report(
            Verdict::Expired,
            StatusCode::Expired,
            format!(
                "the {kind} license {} expired on {} ({}){authentic}",
                document.license_key,
                at(document.valid_until),
                days(evaluation.days_to_expiry)
            ),
        ),
        StatusCode::LeaseExpired => report(
            Verdict::LeaseExpired,
            StatusCode::LeaseExpired,
            format!(
                "the signature lease of license {} ended on {} ({}): renew it from the \
                 license server{authentic}",
                document.license_key,
                at(document.signature_valid_until),
                days(evaluation.days_to_lease_end)
            ),
        ),
        status => {
            debug_assert_eq!(status, StatusCode::Ok);
            let until = match document.valid_until {
                Some(until) => format!(
                    "valid until {} ({})",
                    format_rfc3339(until),
                    days(evaluation.days_to_expiry)
                ),
                None => "valid forever".to_owned(),
            };
            let lease = match document.signature_valid_until {
                Some(until) => format!(
                    ", signature valid until {} ({})",
                    format_rfc3339(until),
                    days(evaluation.days_to_lease_end)
                ),
                None => String::new(),
            };
            let hosts = if host_checked {
                String::new()
            } else {
                format!(
                    "; bound to hosts {} (not checked: no --host-id)",
                    document.host_ids.join(", ")
                )
            };
            report(
                Verdict::Valid,
                StatusCode::Ok,
                format!(
                    "{kind} license {} serial {} for {}, signed by trusted key {}, {until}{lease}{hosts}",
                    document.license_key, document.serial, document.customer, document.key_id
                ),
            )
        }
    }
}

/// `in 3 days`, `in less than a day`, `2 days ago` from whole days rounded down (as the
/// crate counts them: one millisecond late is day -1).
fn days_text(days: i64) -> String {
    let plural = |n: i64| if n == 1 { "" } else { "s" };
    match days {
        0 => "in less than a day".to_owned(),
        -1 => "less than a day ago".to_owned(),
        days if days > 0 => format!("in {days} day{}", plural(days)),
        days => {
            let ago = -days - 1;
            format!("{ago} day{} ago", plural(ago))
        }
    }
}

fn verify(args: &VerifyArgs) -> Result<(), Failure> {
    let trusted = read_trusted(&args.trusted).map_err(Failure::Config)?;
    let text = read_license(&args.file)?;
    let now = args.check.at.unwrap_or_else(now);
    let report = check_license(
        &text,
        &trusted,
        args.check.host_id.as_deref(),
        args.min_serial,
        now,
    );
    let mut stdout = io::stdout().lock();
    let printed = if args.json {
        let mut json = report_json(&report, &args.check, now);
        json["file"] = args.file.display().to_string().into();
        writeln!(stdout, "{json}")
    } else {
        writeln!(stdout, "{}: {}", report.status, report.reason)
    };
    printed
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    match report.verdict.exit_code() {
        0 => Ok(()),
        // `Failure` has no room for these codes; everything is printed and flushed.
        code => std::process::exit(i32::from(code)),
    }
}

fn show(args: &ShowArgs) -> Result<(), Failure> {
    let text = read_license(&args.file)?;
    let parsed = tollgate_license::parse(&text)
        .map_err(|e| Failure::Config(anyhow!("{}: {e}", args.file.display())))?;
    let document = &parsed.document;
    let now = args.check.at.unwrap_or_else(now);
    let report = if args.trusted.is_empty() {
        None
    } else {
        let trusted = read_trusted(&args.trusted).map_err(Failure::Config)?;
        Some(check_license(
            &text,
            &trusted,
            args.check.host_id.as_deref(),
            None,
            now,
        ))
    };
    let log_line = tollgate_license::log_line(document);
    if args.json {
        let mut json = match &report {
            Some(report) => report_json(report, &args.check, now),
            None => serde_json::json!({ "checked_at": format_rfc3339(now) }),
        };
        json["signature_checked"] = report.is_some().into();
        json["license"] = document_json(document);
        json["log_line"] = log_line.into();
        println!("{json}");
        return Ok(());
    }
    let mut out = tollgate_license::summary(document, None);
    let mut row = |label: &str, value: &str| out.push_str(&format!("{label:<14}{value}\n"));
    match &report {
        None => row(
            "Signature",
            "not checked (give --trusted PUB to check it; until then, trust nothing above)",
        ),
        Some(report) if report.verdict.is_authentic() => {
            row(
                "Signature",
                &format!("verified with trusted key {}", document.key_id),
            );
            let status = if report.verdict == Verdict::Valid {
                let mut parts = Vec::new();
                if let Some(days) = report.days_to_expiry {
                    parts.push(format!("expires {}", days_text(days)));
                }
                if let Some(days) = report.days_to_lease_end {
                    parts.push(format!("lease ends {}", days_text(days)));
                }
                if !report.host_checked {
                    parts.push("host binding not checked (no --host-id)".to_owned());
                }
                if parts.is_empty() {
                    parts.push("no end date, no lease".to_owned());
                }
                parts.join(", ")
            } else {
                report
                    .reason
                    .trim_end_matches("; the signature is authentic")
                    .to_owned()
            };
            row(
                "Status",
                &format!("{} at {}: {status}", report.status, format_rfc3339(now)),
            );
        }
        Some(report) => row(
            "Signature",
            &format!(
                "NOT VERIFIED: {}; do not trust anything above",
                report.reason
            ),
        ),
    }
    let refused = report.as_ref().is_some_and(|r| !r.verdict.is_authentic());
    if refused {
        out.push_str("\n(an agent refuses this license: no `Valid license:` line)\n");
    } else {
        out.push('\n');
        out.push_str(&log_line);
        out.push('\n');
    }
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    Ok(())
}

fn report_json(report: &Report, check: &WhereAndWhen, now: WallTime) -> serde_json::Value {
    serde_json::json!({
        "valid": report.verdict == Verdict::Valid,
        "verdict": report.verdict.as_str(),
        "exit_code": report.verdict.exit_code(),
        "status": report.status.as_str(),
        "reason": report.reason,
        "authentic": report.verdict.is_authentic(),
        "checked_at": format_rfc3339(now),
        "host_id": check.host_id,
        "host_checked": report.host_checked,
        "license": report.document.as_ref().map(document_json),
    })
}

fn document_json(document: &Document) -> serde_json::Value {
    serde_json::json!({
        "license_key": document.license_key,
        "customer": document.customer,
        "kind": document.kind.as_str(),
        "serial": document.serial,
        "issued_at": format_rfc3339(document.issued_at),
        "valid_from": format_rfc3339(document.valid_from),
        "valid_until": document.valid_until.map(format_rfc3339),
        "signature_valid_until": document.signature_valid_until.map(format_rfc3339),
        "limits": document.limits,
        "features": document.features,
        "host_ids": document.host_ids,
        "policy": document.policy,
        "key_id": document.key_id,
    })
}

// ---------------------------------------------------------------------------------------
// files and time

/// Reads every `--trusted` file (a key, or a list of keys) into one set. Errors are the
/// caller's configuration errors.
fn read_trusted(paths: &[PathBuf]) -> anyhow::Result<TrustedKeys> {
    let mut trusted = TrustedKeys::new();
    for path in paths {
        let text = read_text(path, TRUSTED_KEYS_TEXT_LEN_MAX)?;
        let keys = TrustedKeys::parse(&text)
            .with_context(|| format!("trusted key file {}", path.display()))?;
        if keys.is_empty() {
            return Err(anyhow!(
                "trusted key file {} holds no public key",
                path.display()
            ));
        }
        for key in keys.iter() {
            trusted
                .insert(key.clone())
                .with_context(|| format!("trusted key file {}", path.display()))?;
        }
    }
    Ok(trusted)
}

/// Reads a license text (`-`: stdin), at most one byte more than a license may have, so
/// that an oversized text is refused by the crate as malformed rather than read whole.
fn read_license(path: &Path) -> Result<Vec<u8>, Failure> {
    let limit = LICENSE_TEXT_LEN_MAX as u64 + 1;
    let mut text = Vec::new();
    let read = if path.as_os_str() == "-" {
        io::stdin().lock().take(limit).read_to_end(&mut text)
    } else {
        File::open(path).and_then(|file| file.take(limit).read_to_end(&mut text))
    };
    read.with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text)
}

/// Reads a UTF-8 text file of at most `len_max` bytes.
fn read_text(path: &Path, len_max: usize) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(len_max as u64 + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > len_max {
        return Err(anyhow!("{} is longer than {len_max} bytes", path.display()));
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))
}

fn parse_time(text: &str) -> Result<WallTime, String> {
    parse_rfc3339(text).map_err(str::to_owned)
}

/// The wall clock, read once per command.
fn now() -> WallTime {
    WallTime::from_unix_ms(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_clear_of_main() {
        let all = [
            Verdict::Valid,
            Verdict::Malformed,
            Verdict::UnknownKey,
            Verdict::BadSignature,
            Verdict::NotYetValid,
            Verdict::Expired,
            Verdict::HostNotListed,
            Verdict::LeaseExpired,
            Verdict::Rollback,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(a.exit_code() == 0 || a.exit_code() >= 10, "{a:?}");
            assert!(
                VERIFY_ABOUT.contains(&format!("  {}  ", a.exit_code())),
                "{a:?}"
            );
            for b in &all[i + 1..] {
                assert_ne!(a.exit_code(), b.exit_code());
            }
        }
    }

    #[test]
    fn days_read_as_whole_days() {
        use tollgate_license::timestamp::{DAY_MS, days_until};
        let now = WallTime::from_unix_ms(100 * DAY_MS);
        let check = |at: u64, expected: &str| {
            let at = WallTime::from_unix_ms(at);
            assert_eq!(days_text(days_until(now, at)), expected);
        };
        let now_ms = now.unix_ms();
        check(now_ms + 2 * DAY_MS, "in 2 days");
        check(now_ms + DAY_MS + 1, "in 1 day");
        check(now_ms + 1, "in less than a day");
        check(now_ms - 1, "less than a day ago");
        check(now_ms - DAY_MS - 1, "1 day ago");
        check(now_ms - 3 * DAY_MS - 1, "3 days ago");
    }

    #[test]
    fn key_names_cannot_leave_the_directory() {
        assert!(check_key_name("vendor-2030.a").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(check_key_name(bad).is_err(), "{bad:?}");
        }
    }
}
