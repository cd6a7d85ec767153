//! `tollgate ledger`: verify a node's usage ledger, export it for an auditor.
//!
//! Exit codes of `verify` (also in docs/ledger.md): 0 intact, 1 cannot read, 2 bad usage,
//! then one per finding: 10 malformed, 11 bad_signature, 12 chain_break, 13 gap,
//! 14 out_of_order, 15 fork, 16 reset, 17 key_change.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tollgate_ledger::{SignedEntry, decode_frames, verify};

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LedgerCommand {
    /// Verify a ledger: every signature, every hash link, no missing, reordered or forked
    /// entry, one key. Exit 0 when intact, else the finding's exit code (docs/ledger.md),
    /// naming the first bad entry.
    Verify(VerifyArgs),
    /// Print the ledger's entries as JSON lines, for an auditor.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// A ledger directory (`<state_dir>/ledger`: the whole chain, from seq 0) or one
    /// segment file.
    path: PathBuf,
    /// The node's public key (base64 or hex, from `tollgate status` or
    /// `GET /api/v1/ledger`): every entry must be signed by it.
    #[arg(long)]
    public_key: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// A ledger directory or segment file; default: `<state dir>/ledger`.
    path: Option<PathBuf>,
    /// The agent's state directory, when no path is given.
    #[arg(long, default_value = tollgate_agent::config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Only entries whose interval ends at or after this time (RFC 3339 or Unix ms).
    #[arg(long)]
    since: Option<String>,
    /// Only entries whose interval ends before this time (RFC 3339 or Unix ms).
    #[arg(long)]
    until: Option<String>,
}

pub fn run(args: LedgerArgs) -> Result<(), Failure> {
    match args.command {
        LedgerCommand::Verify(a) => run_verify(a),
        LedgerCommand::Export(a) => run_export(a),
    }
}

fn read(path: &Path) -> Result<(Vec<u8>, bool), Failure> {
    tollgate_agent::ledger::read_ledger(path)
        .with_context(|| format!("cannot read the ledger at {}", path.display()))
        .map_err(Failure::Runtime)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run_verify(args: VerifyArgs) -> Result<(), Failure> {
    let key = match &args.public_key {
        Some(text) => Some(tollgate_ledger::parse_public_key(text).ok_or_else(|| {
            Failure::Config(anyhow::anyhow!(
                "--public-key: not a 32-byte key in base64 or hex"
            ))
        })?),
        None => None,
    };
    let (bytes, whole) = read(&args.path)?;
    let report = verify(&bytes, key.as_ref(), whole);
    if args.json {
        let body = serde_json::json!({
            "path": args.path,
            "intact": report.finding.is_none(),
            "entries": report.entries,
            "head": report.head.map(|h| serde_json::json!({
                "seq": h.seq,
                "hash": hex(&h.hash),
                "node_public_key": tollgate_ledger::public_key_text(&h.node_key),
                "interval_end_ms": h.interval_end_ms,
            })),
            "finding": report.finding.as_ref().map(|f| serde_json::json!({
                "kind": f.kind,
                "exit_code": f.kind.exit_code(),
                "index": f.index,
                "offset": f.offset,
                "seq": f.seq,
                "detail": f.detail,
            })),
        });
        println!("{body}");
    }
    match report.finding {
        None => {
            if !args.json {
                let head = report.head.map_or("no entry".to_owned(), |h| {
                    format!(
                        "head seq {} hash {} signed by {}",
                        h.seq,
                        hex(&h.hash),
                        tollgate_ledger::public_key_text(&h.node_key)
                    )
                });
                println!(
                    "intact: {} entries, {head}: {}",
                    report.entries,
                    args.path.display()
                );
            }
            Ok(())
        }
        Some(f) => {
            if !args.json {
                println!(
                    "{}: entry #{} (seq {}, byte offset {}): {}",
                    f.kind,
                    f.index,
                    f.seq.map_or("?".to_owned(), |s| s.to_string()),
                    f.offset,
                    f.detail
                );
            }
            Err(Failure::Finding(f.kind))
        }
    }
}

/// A time bound: RFC 3339 or Unix milliseconds.
fn parse_bound(flag: &str, text: &str) -> Result<u64, Failure> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    tollgate_license::timestamp::parse_rfc3339(text)
        .map(tollgate_events::WallTime::unix_ms)
        .map_err(|e| {
            Failure::Config(anyhow::anyhow!(
                "{flag} {text:?}: {e} (RFC 3339, e.g. 2026-01-31T00:00:00Z, or Unix ms)"
            ))
        })
}

fn run_export(args: ExportArgs) -> Result<(), Failure> {
    let since = args
        .since
        .as_deref()
        .map(|t| parse_bound("--since", t))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| parse_bound("--until", t))
        .transpose()?;
    let path = args
        .path
        .unwrap_or_else(|| args.state_dir.join(tollgate_agent::ledger::LEDGER_DIR));
    let (bytes, whole) = read(&path)?;
    let report = verify(&bytes, None, whole);
    if let Some(f) = &report.finding {
        eprintln!(
            "tollgate: warning: the ledger is not intact ({} at entry #{}): {}; run `tollgate ledger verify`",
            f.kind, f.index, f.detail
        );
    }
    let (entries, _) = decode_frames(&bytes);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in entries.iter().filter(|e| {
        let end = e.entry.interval_end_ms;
        since.is_none_or(|s| end >= s) && until.is_none_or(|u| end < u)
    }) {
        use std::io::Write as _;
        writeln!(out, "{}", export_line(e)).map_err(|e| Failure::Runtime(e.into()))?;
    }
    Ok(())
}

/// One entry as an auditor's JSON line (field names: docs/ledger.md).
pub fn export_line(e: &SignedEntry) -> serde_json::Value {
    let x = &e.entry;
    let denied: serde_json::Map<String, serde_json::Value> = x
        .denied
        .iter()
        .map(|(code, n)| (code.clone(), serde_json::Value::from(*n)))
        .collect();
    serde_json::json!({
        "seq": e.seq,
        "hash": hex(&e.hash()),
        "prev_hash": hex(&e.prev_hash),
        "node_public_key": tollgate_ledger::public_key_text(&e.node_key),
        "signature": hex(&e.signature),
        "signature_valid": e.signature_valid(),
        "node_id": x.node_id,
        "incarnation": x.incarnation,
        "interval_start_ms": x.interval_start_ms,
        "interval_end_ms": x.interval_end_ms,
        "interval_end": tollgate_license::timestamp::format_rfc3339(
            tollgate_events::WallTime::from_unix_ms(x.interval_end_ms),
        ),
        "counts": x.counts,
        "peaks": x.peaks,
        "license_serial": x.license_serial,
        "license_status": x.license_status,
        "admissions_denied": denied,
        "state_resets": x.state_resets,
    })
}
