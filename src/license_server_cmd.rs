//! `tollgate license-server [--config FILE] [--dev]` and `tollgate license-server admin …`:
//! thin glue over `tollgate_license_server`, which owns the configuration, the database, the
//! keys, the HTTPS API and the admin commands. This module reads the clock, prints what an
//! operator needs at start, and maps errors to exit codes (2 configuration or input, 1
//! failure).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tollgate_agent::systemd;
use tollgate_license_server::{Config, LicenseServer, ServerError, Started};

use crate::Failure;
use crate::license_server_admin_cmd::{self, AdminArgs};

const DETAILS: &str = "\
Agents fetch their signed license (a lease) over HTTPS by license key with an API token
bound to their address, and send usage reports. Licenses, tokens, reports and an audit log
live in an embedded SQLite database; `admin` manages them.

With --config FILE: the server's TOML configuration (listen, default 0.0.0.0:7443; database;
[tls] cert and key; [signing] key_dir; lease_days; subscription_period_days;
lease_reuse_minutes). Relative paths are relative to the file. See docs/license-server.md.

Without --config: development mode on 127.0.0.1:7443, files in ./license-server-dev.
--dev: a self-signed certificate for localhost, 127.0.0.1 and ::1 (generated once, its
SHA-256 fingerprint and file printed so clients can trust it) and a first signing key if the
key directory has none.

Signing keys (*.key in the key directory) must be mode 0600: the server refuses to start
otherwise. Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failure, 2 configuration.";

#[derive(Debug, clap::Args)]
#[command(after_long_help = DETAILS)]
pub struct LicenseServerArgs {
    /// The server's configuration file (TOML). Without it: development mode on loopback.
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Development mode: a generated self-signed certificate and a first signing key.
    #[arg(long, global = true)]
    dev: bool,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum ServerCommand {
    Admin(AdminArgs),
    /// Write a consistent backup of the database and the signing keys to one file (mode
    /// 0600), while servers run. See docs/license-server.md.
    Backup {
        /// The backup file to write (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into the (empty) database and key directory the config names:
    /// SQLite or PostgreSQL, whichever the backup came from.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

pub fn run(args: LicenseServerArgs) -> Result<(), Failure> {
    match &args.command {
        Some(ServerCommand::Admin(admin)) => {
            license_server_admin_cmd::run(admin, args.config.as_deref(), args.dev)
        }
        Some(ServerCommand::Backup { out }) => {
            let config = backup_config(args.config.as_deref())?;
            let summary = tollgate_license_server::backup::backup(
                &config.database,
                &config.key_dir,
                out,
                now_ms(),
            )
            .map_err(backup_failure)?;
            print_summary("backup written to", out, &summary);
            Ok(())
        }
        Some(ServerCommand::Restore { from }) => {
            let config = backup_config(args.config.as_deref())?;
            let summary =
                tollgate_license_server::backup::restore(&config.database, &config.key_dir, from)
                    .map_err(backup_failure)?;
            print_summary("restored from", from, &summary);
            println!("into {} and {}", config.database, config.key_dir.display());
            Ok(())
        }
        None => serve(args.config.as_deref(), args.dev),
    }
}

fn serve(config_path: Option<&Path>, dev: bool) -> Result<(), Failure> {
    let config = Config::load(config_path, dev).map_err(|e| Failure::Config(e.into()))?;
    if config_path.is_none() {
        tracing::warn!(
            listen = %config.listen,
            database = %config.database,
            "no --config: development mode (self-signed certificate, loopback only)"
        );
    }
    crate::runtime()?.block_on(async move {
        let signal = crate::shutdown_signal();
        let server = LicenseServer::start(&config).map_err(server_failure)?;
        print_started(server.started());
        // systemd (`Type=notify`): ready once the HTTPS listener is bound, a watchdog ping
        // from the server's runtime, and `STOPPING=1` when a signal arrives.
        systemd::notify(&format!(
            "READY=1\nSTATUS=serving on https://{}",
            server.started().local_addr
        ));
        let watchdog = systemd::watchdog_interval().map(|every| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    systemd::notify("WATCHDOG=1");
                }
            })
        });
        let result = server
            .run_until(async {
                signal.await;
                systemd::notify("STOPPING=1");
            })
            .await
            .map_err(server_failure);
        if let Some(w) = watchdog {
            w.abort();
        }
        result
    })
}

/// What an operator (or a script, or a test) reads on stdout at start.
fn print_started(started: &Started) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "tollgate license server listening on https://{}",
        started.local_addr
    );
    let self_signed = if started.dev {
        "  (self-signed: clients trust this file)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "certificate  {}{self_signed}",
        started.cert_path.display()
    );
    let _ = writeln!(out, "sha256       {}", started.fingerprint_sha256);
    let _ = writeln!(out, "database     {}", started.database);
    let _ = writeln!(out, "key dir      {}", started.key_dir.display());
    if let Some(created) = &started.created_key {
        let _ = writeln!(out, "created key  {}", created.display());
    }
    let _ = writeln!(out, "signing key  {}", started.signing_key_id);
    for line in &started.public_keys {
        let _ = writeln!(out, "trusted key  {line}");
    }
    let _ = out.flush();
}

fn server_failure(e: ServerError) -> Failure {
    if e.is_config() {
        Failure::Config(e.into())
    } else {
        Failure::Runtime(e.into())
    }
}

/// The files a backup or restore works on: the config's (TLS is not needed).
fn backup_config(config_path: Option<&Path>) -> Result<Config, Failure> {
    Config::load(config_path, true).map_err(|e| Failure::Config(e.into()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn print_summary(what: &str, path: &Path, summary: &tollgate_license_server::backup::Summary) {
    let rows: Vec<String> = summary
        .rows
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    println!("{what} {}", path.display());
    println!(
        "schema version {}; rows: {}; key files: {}",
        summary.schema_version,
        rows.join(", "),
        summary.key_files
    );
}

fn backup_failure(e: tollgate_license_server::backup::BackupError) -> Failure {
    if e.is_user_error() {
        Failure::Config(e.into())
    } else {
        Failure::Runtime(e.into())
    }
}
