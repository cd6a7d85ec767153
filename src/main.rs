//! `tollgate`: one binary, one subcommand per role. This file only parses the command line,
//! sets up logging, dispatches to the crates and maps errors to exit codes.

#[cfg(feature = "cluster-ca")]
mod cluster_cmd;
#[cfg(all(feature = "license-server", feature = "cluster-ca"))]
mod demo;
mod ledger_cmd;
mod license_cmd;
#[cfg(feature = "license-server")]
mod license_server_admin_cmd;
#[cfg(feature = "license-server")]
mod license_server_cmd;
#[cfg(not(all(feature = "license-server", feature = "cluster-ca")))]
mod missing_feature;
mod status;

#[cfg(feature = "cluster-ca")]
use cluster_cmd::ClusterArgs;
#[cfg(all(feature = "license-server", feature = "cluster-ca"))]
use demo::DemoArgs;
#[cfg(feature = "license-server")]
use license_server_cmd::LicenseServerArgs;
#[cfg(not(feature = "cluster-ca"))]
use missing_feature::Args as ClusterArgs;
#[cfg(not(all(feature = "license-server", feature = "cluster-ca")))]
use missing_feature::Args as DemoArgs;
#[cfg(not(feature = "license-server"))]
use missing_feature::Args as LicenseServerArgs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_agent::config::LogFormat;

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

/// Usage metering and license enforcement for SIP platforms.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `tollgate_agent=debug`.
    #[arg(long, global = true, env = "TOLLGATE_LOG", default_value = "info")]
    log: String,

    /// Log line format on stderr: `text` or `json` (one object per line). For the agent,
    /// overrides `[log] format`.
    #[arg(long, global = true, env = "TOLLGATE_LOG_FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the per-node agent: ingest call and registration events, count usage, serve the
    /// admin API (default 127.0.0.1:7173). Works with no config file (loopback only).
    Agent(AgentArgs),
    /// Show usage from a running agent (as a table, or the raw JSON).
    Status(status::StatusArgs),
    /// Send synthetic traffic to an agent: Poisson call arrivals with exponential holding
    /// times and registrations (erlang), or a max-rate flood of start/stop pairs.
    Loadgen(tollgate_loadgen::LoadgenArgs),
    /// Vendor tools for signed licenses: create a signing key pair, sign a license spec,
    /// verify a license file, show one in plain words.
    License(license_cmd::LicenseArgs),
    /// Run the vendor's license server: HTTPS leases and usage reports for agents, API tokens
    /// bound to client addresses, SQLite store; `admin` manages customers, licenses, tokens,
    /// reports and signing keys.
    LicenseServer(LicenseServerArgs),
    /// The cluster's certificate authority and node certificates for the QUIC mesh
    /// (mutual TLS): `ca` creates the CA, `issue --node NAME` a node's certificate.
    Cluster(ClusterArgs),
    /// The whole system on loopback: a license server, three meshed agents with load, a live
    /// view (~20 s or Ctrl-C) and an exact-count check.
    Demo(DemoArgs),
    /// The node's signed usage ledger: `verify` a ledger directory or segment (exit 0 when
    /// intact, else the finding's exit code), `export` its entries as JSON lines.
    Ledger(ledger_cmd::LedgerArgs),
    /// Hash a password for `[[admin.users]] password_hash` (argon2id). Reads the password
    /// from the first line of standard input.
    HashPassword,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// TOML configuration file; every key is optional (see docs/configuration.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// State directory (snapshots, keys, the unix event socket); overrides `[state] dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration (as clap does; also
/// a command this build lacks), 3 could not reach the agent (status), 10-17 a ledger finding
/// (`ledger verify`).
#[derive(Debug)]
pub(crate) enum Failure {
    /// `ledger verify` found this; already printed.
    Finding(tollgate_ledger::FindingKind),
    Config(anyhow::Error),
    /// Only a build without some features makes it (see `missing_feature`).
    #[cfg_attr(
        all(feature = "license-server", feature = "cluster-ca"),
        allow(dead_code)
    )]
    Usage(anyhow::Error),
    Unreachable(anyhow::Error),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(multicall_args());
    // The agent's `[log] format` is in its config: it starts logging once that is read.
    if !matches!(cli.command, Command::Agent(_)) {
        let quiet = matches!(cli.command, Command::Demo(_));
        init_logging(&cli.log, cli.log_format.unwrap_or_default(), quiet);
    }
    let result = match cli.command {
        Command::Agent(args) => run_agent(args, &cli.log, cli.log_format),
        Command::Status(args) => status::run(args),
        Command::Loadgen(args) => run_loadgen(args),
        Command::License(args) => license_cmd::run(args),
        Command::LicenseServer(args) => run_license_server(args),
        Command::Cluster(args) => run_cluster(args),
        Command::Demo(args) => run_demo(args),
        Command::Ledger(args) => ledger_cmd::run(args),
        Command::HashPassword => hash_password(),
    };
    exit_code(result)
}

/// The command line, with `tollgate-license-server …` (the name the Debian package gives the
/// full binary) read as `tollgate license-server …`.
fn multicall_args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|name| name == "tollgate-license-server");
    let version = args.get(1).is_some_and(|a| a == "--version" || a == "-V");
    if called == Some(true) && !version {
        args.insert(1, "license-server".into());
    }
    args
}

fn exit_code(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Finding(kind)) => ExitCode::from(kind.exit_code()),
        Err(Failure::Config(e)) => {
            eprintln!("tollgate: configuration error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Usage(e)) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Unreachable(e)) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::from(3)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(feature = "license-server")]
fn run_license_server(args: LicenseServerArgs) -> Result<(), Failure> {
    license_server_cmd::run(args)
}

#[cfg(not(feature = "license-server"))]
fn run_license_server(args: LicenseServerArgs) -> Result<(), Failure> {
    Err(missing_feature::refuse(
        args,
        "license-server",
        "license-server",
        "the vendor's license server is not part of the node's agent",
    ))
}

#[cfg(feature = "cluster-ca")]
fn run_cluster(args: ClusterArgs) -> Result<(), Failure> {
    cluster_cmd::run(args)
}

#[cfg(not(feature = "cluster-ca"))]
fn run_cluster(args: ClusterArgs) -> Result<(), Failure> {
    Err(missing_feature::refuse(
        args,
        "cluster",
        "cluster-ca",
        "making the cluster CA and node certificates",
    ))
}

#[cfg(all(feature = "license-server", feature = "cluster-ca"))]
fn run_demo(args: DemoArgs) -> Result<(), Failure> {
    demo::run(args)
}

#[cfg(not(all(feature = "license-server", feature = "cluster-ca")))]
fn run_demo(args: DemoArgs) -> Result<(), Failure> {
    Err(missing_feature::refuse(
        args,
        "demo",
        "license-server",
        "the demo runs a license server and makes a cluster CA; it needs the `cluster-ca` \
         feature too",
    ))
}

/// Logs go to stderr: plain text (ANSI colours only when stderr is a terminal, so a file,
/// a pipe or the journal get clean, grep-able `key="value"` lines), or one JSON object per
/// line with the fields at the top level.
fn init_logging(filter: &str, format: LogFormat, quiet: bool) {
    use std::io::IsTerminal as _;
    let filter = if quiet { "warn" } else { filter };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))
}

fn run_agent(args: AgentArgs, log: &str, log_format: Option<LogFormat>) -> Result<(), Failure> {
    let config =
        match tollgate_agent::Config::load(args.config.as_deref(), args.state_dir.as_deref()) {
            Ok(config) => config,
            Err(e) => {
                init_logging(log, log_format.unwrap_or_default(), false);
                return Err(Failure::Config(e.into()));
            }
        };
    init_logging(log, log_format.unwrap_or(config.log_format), false);
    runtime()?.block_on(async move {
        tollgate_agent::run(config, shutdown_signal(), |_| {})
            .await
            .map_err(|e| Failure::Runtime(e.into()))
    })
}

/// Completes on SIGTERM or SIGINT. The handlers are installed by this call (inside the
/// runtime), not when the future is first polled: a SIGTERM that systemd sends right after
/// `READY=1` must stop the process cleanly, not kill it by the default action.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the agent can only be killed; keep running.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn run_loadgen(args: tollgate_loadgen::LoadgenArgs) -> Result<(), Failure> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    // Ctrl-C ends the run early; the report still prints.
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(shutdown_signal());
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let report = tollgate_loadgen::run(&args, &stop).map_err(|e| Failure::Runtime(e.into()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(anyhow::Error::from)?
        );
    } else {
        println!("{report}");
    }
    Ok(())
}

fn hash_password() -> Result<(), Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::Runtime(e.into()))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "empty password on standard input"
        )));
    }
    let hash = tollgate_agent::auth::hash_password(password)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
    println!("{hash}");
    Ok(())
}
