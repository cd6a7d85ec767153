//! `tollgate demo`: the whole system on loopback in one command, as real processes of this
//! binary: a license server (`--dev`, its own CA-less self-signed certificate), provisioned
//! through its admin CLI like a vendor would; three agents meshed over QUIC with mutual TLS
//! from a demo cluster CA, which fetch their license from the server at start, report usage
//! to it, and hold the license against the cluster's usage; a load generator per agent (text over UDP, binary batches
//! over the unix socket); a live view refreshed in place; and a summary that checks every
//! agent's counts against what its generator says it left running.

use std::io::{BufRead as _, BufReader, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use tollgate_agent::RuntimeInfo;
use tollgate_agent::http::UsageReport;
use tollgate_loadgen::{LoadgenArgs, Report};

use crate::Failure;

const LICENSE_KEY: &str = "DEMO_000000001_c0ffee";
const TOKEN_LINE_PREFIX: &str = "tg_";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the load runs, in seconds (Ctrl-C ends it early).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Agents (nodes) to start, meshed over QUIC with mutual TLS from a demo cluster CA.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Call attempts per second, per node.
    #[arg(long, default_value_t = 150)]
    cps: u32,
    /// Mean call holding time in seconds (exponential).
    #[arg(long, default_value_t = 30)]
    hold: u32,
    /// Registered AoRs per node.
    #[arg(long, default_value_t = 2000)]
    registrations: u32,
    /// Print one line per second instead of redrawing the screen.
    #[arg(long)]
    plain: bool,
}

/// Lets the demo build `LoadgenArgs` from the same flags a user would type.
#[derive(Debug, Parser)]
struct LoadgenCli {
    #[command(flatten)]
    args: LoadgenArgs,
}

fn loadgen_args(flags: &[String]) -> anyhow::Result<LoadgenArgs> {
    let argv = std::iter::once("loadgen".to_owned()).chain(flags.iter().cloned());
    LoadgenCli::try_parse_from(argv)
        .map(|c| c.args)
        .context("demo load generator")
}

/// A child process of this binary, terminated (SIGTERM, then kill) when dropped.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn spawn(name: &str, args: &[&str], log: &Path) -> anyhow::Result<Process> {
        let exe = std::env::current_exe().context("locate the tollgate binary")?;
        let log = std::fs::File::create(log).context("create a log file")?;
        let child = Command::new(exe)
            .args(args)
            .env("TOLLGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
        })
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(process = %self.name, "did not stop in time; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// The license server: its process, port, trusted-key lines and certificate.
struct Vendor {
    process: Process,
    port: u16,
    trusted_keys: Vec<String>,
    cert: PathBuf,
    config: PathBuf,
}

fn start_license_server(dir: &Path) -> anyhow::Result<Vendor> {
    let config = dir.join("license-server.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndatabase = \"db/license-server.db\"\nlease_days = 14\n\n[signing]\nkey_dir = \"keys\"\n",
    )?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut process = Process::spawn(
        "license-server",
        &["license-server", "--config", &config_arg, "--dev"],
        &dir.join("license-server.log"),
    )?;
    let stdout = process
        .child
        .stdout
        .take()
        .context("license server stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let last = line.starts_with("trusted key");
                banner.push(line);
                if last {
                    while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                        banner.push(l);
                    }
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => bail!(
                "the license server exited; see {}",
                dir.join("license-server.log").display()
            ),
        }
    }
    let port = banner
        .first()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("license server banner: {banner:?}"))?;
    let trusted_keys = banner
        .iter()
        .filter_map(|l| l.strip_prefix("trusted key"))
        .map(|k| k.trim().to_owned())
        .collect();
    Ok(Vendor {
        process,
        port,
        trusted_keys,
        cert: dir.join("db/dev-tls/cert.pem"),
        config,
    })
}

impl Vendor {
    fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let exe = std::env::current_exe()?;
        let out = Command::new(exe)
            .args(["license-server", "--config"])
            .arg(&self.config)
            .arg("admin")
            .args(args)
            .env_remove("TOLLGATE_LOG")
            .output()?;
        if !out.status.success() {
            bail!(
                "license-server admin {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Customer, a subscription license sized so the run crosses the warning threshold and
    /// then the calls limit (warn mode: the page and the log say so, calls still pass), and
    /// a token for 127.0.0.1.
    fn provision(&self, dir: &Path, args: &DemoArgs) -> anyhow::Result<String> {
        self.admin(&["customer", "add", "Demo Telecom"])?;
        let cps_total = f64::from(args.cps) * args.nodes as f64;
        let peak = expected_calls(cps_total, f64::from(args.hold.max(1)), args.duration as f64);
        let calls = ((peak * 0.95) as u64).max(10);
        let registered = (u64::from(args.registrations) * args.nodes as u64 * 5 / 2).max(10);
        let spec = format!(
            "license_key = \"{LICENSE_KEY}\"\ncustomer = \"Demo Telecom\"\nkind = \"subscription\"\n\
             serial = 1\nvalid_until = \"{}\"\nfeatures = [\"pbx\", \"sms\"]\n\n\
             [limits]\ncalls = {calls}\nsubscribers = 100000\nregistered_subscribers = {registered}\n\n\
             [policy]\nmode = \"warn\"\n",
            rfc3339_in_days(30)
        );
        let spec_path = dir.join("license-spec.toml");
        std::fs::write(&spec_path, spec)?;
        self.admin(&["license", "create", "--spec", &spec_path.to_string_lossy()])?;
        let out = self.admin(&[
            "token",
            "issue",
            "--license",
            LICENSE_KEY,
            "--allow",
            "127.0.0.1",
        ])?;
        out.lines()
            .find(|l| l.starts_with(TOKEN_LINE_PREFIX))
            .map(str::to_owned)
            .context("the token line")
    }
}

/// Writes the cluster CA and node `i`'s certificate; returns the `[mesh]` section.
fn mesh_section(
    dir: &Path,
    ca: &tollgate_mesh::ClusterCa,
    i: usize,
    seed: Option<std::net::SocketAddr>,
) -> anyhow::Result<String> {
    let ca_file = dir.join("cluster-ca.pem");
    if !ca_file.exists() {
        std::fs::write(&ca_file, ca.cert_pem())?;
    }
    let node = ca.issue(&format!("demo-{i}"))?;
    let (cert, key) = (
        dir.join(format!("node-{i}.pem")),
        dir.join(format!("node-{i}.key")),
    );
    std::fs::write(&cert, &node.cert_pem)?;
    std::fs::write(&key, &node.key_pem)?;
    let seeds = seed.map(|s| format!("\"{s}\"")).unwrap_or_default();
    Ok(format!(
        "\n[mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nseeds = [{seeds}]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca_file.display(),
        cert.display(),
        key.display()
    ))
}

/// Starts agent `i` and waits for its `agent.json`.
fn start_agent(
    dir: &Path,
    i: usize,
    vendor: &Vendor,
    token: &str,
    mesh: &str,
) -> anyhow::Result<(Process, RuntimeInfo)> {
    let state = dir.join(format!("node-{i}"));
    let keys: Vec<String> = vendor
        .trusted_keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect();
    let config = dir.join(format!("node-{i}.toml"));
    std::fs::write(
        &config,
        format!(
            "[general]\nlicense_key = \"{LICENSE_KEY}\"\nnode_id = \"demo-{i}\"\n\n\
             [ingest]\nudp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [report]\ninterval_s = 10\n\n\
             [license]\nserver = \"https://127.0.0.1:{}\"\ntoken = \"{token}\"\nca_bundle = \"{}\"\n\
             trusted_keys = [{}]\n{mesh}",
            vendor.port,
            vendor.cert.display(),
            keys.join(", ")
        ),
    )?;
    let (config_arg, state_arg) = (
        config.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
    );
    let process = Process::spawn(
        &format!("agent demo-{i}"),
        &["agent", "--config", &config_arg, "--state-dir", &state_arg],
        &dir.join(format!("node-{i}.log")),
    )?;
    let runtime = state.join(tollgate_agent::state::RUNTIME_FILE);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(bytes) = std::fs::read(&runtime)
            && let Ok(info) = serde_json::from_slice::<RuntimeInfo>(&bytes)
        {
            return Ok((process, info));
        }
        if Instant::now() > deadline {
            bail!(
                "agent demo-{i} did not start; see {}",
                dir.join(format!("node-{i}.log")).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    if args.nodes == 0 || args.nodes > 16 {
        return Err(Failure::Config(anyhow::anyhow!("--nodes must be 1 to 16")));
    }
    run_demo(&args).map_err(Failure::Runtime)
}

fn run_demo(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()
        .context("temp dir")?;
    let d = dir.path();
    println!("tollgate demo in {} (logs: *.log there)", d.display());
    let mut vendor = start_license_server(d)?;
    let token = vendor.provision(d, args)?;
    println!(
        "license server on https://127.0.0.1:{}, license {LICENSE_KEY} issued",
        vendor.port
    );

    let ca = tollgate_mesh::ClusterCa::generate("tollgate demo cluster")?;
    let mut agents: Vec<(Process, RuntimeInfo)> = Vec::new();
    for i in 1..=args.nodes {
        let mesh = if args.nodes > 1 {
            mesh_section(d, &ca, i, agents.first().and_then(|(_, info)| info.mesh))?
        } else {
            String::new()
        };
        agents.push(start_agent(d, i, &vendor, &token, &mesh)?);
    }
    let rt = crate::runtime().map_err(|_| anyhow::anyhow!("tokio runtime"))?;
    let client = reqwest::Client::new();
    let get = |url: String| {
        rt.block_on(async {
            client
                .get(url)
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        })
    };
    // The agents fetch their license at start: wait for it before the load begins.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, info) in &agents {
        while get(format!("http://{}/api/v1/license", info.admin))
            .is_none_or(|l| l["license"]["license_key"] != LICENSE_KEY)
        {
            if Instant::now() > deadline {
                bail!(
                    "agent {} did not fetch its license from the license server",
                    info.node_id
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            crate::shutdown_signal().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut generators = Vec::new();
    for (i, (_, info)) in agents.iter().enumerate() {
        let (target, format) = if i % 2 == 0 {
            (
                format!("udp:{}", info.events_udp.context("agent UDP address")?),
                "text",
            )
        } else {
            (
                format!(
                    "unix:{}",
                    info.events_unix
                        .clone()
                        .context("agent unix socket")?
                        .display()
                ),
                "binary",
            )
        };
        let mut flags: Vec<String> = [
            "--mode",
            "erlang",
            "--target",
            &target,
            "--format",
            format,
            "--sender-id",
            &format!("demo-gen-{i}"),
            "--seed",
            &(i + 1).to_string(),
            "--cps",
            &args.cps.to_string(),
            "--hold",
            &args.hold.to_string(),
            "--registrations",
            &args.registrations.to_string(),
            "--duration",
            &args.duration.to_string(),
            "--emergency-pct",
            "2",
        ]
        .map(String::from)
        .to_vec();
        if format == "binary" {
            flags.extend(["--batch", "16", "--contacts-per-aor", "2"].map(String::from));
        }
        if i == 0 {
            flags.extend(["--subscribers", "25000"].map(String::from));
        }
        generators.push(loadgen_args(&flags)?);
    }
    let handles: Vec<_> = generators
        .into_iter()
        .map(|g| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || tollgate_loadgen::run(&g, &stop))
        })
        .collect();

    let live = !args.plain && std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_events: Option<(Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
        let usages: Vec<UsageReport> = agents
            .iter()
            .filter_map(|(_, info)| get(format!("http://{}/api/v1/usage", info.admin)))
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        let events: u64 = usages.iter().map(|u| u.ingest.events).sum();
        let now = Instant::now();
        let rate = last_events
            .map(|(t, e)| events.saturating_sub(e) as f64 / now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        last_events = Some((now, events));
        let license = get(format!("http://{}/api/v1/license", agents[0].1.admin));
        let elapsed = started.elapsed().as_secs();
        if live {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\x1b[H\x1b[2J");
            let _ = writeln!(
                out,
                "tollgate demo — {elapsed}s of {}s (Ctrl-C to stop), {rate:.0} events/s\n",
                args.duration
            );
            let _ = writeln!(
                out,
                "{:<10}{:>10}{:>11}{:>14}{:>10}{:>12}",
                "node", "calls", "emergency", "registered", "contacts", "peak calls"
            );
            for u in &usages {
                let _ = writeln!(
                    out,
                    "{:<10}{:>10}{:>11}{:>14}{:>10}{:>12}",
                    u.node_id,
                    u.calls,
                    u.emergency_calls,
                    u.registered_subscribers,
                    u.registered_contacts,
                    u.peak_calls
                );
            }
            if let Some(c) = get(format!("http://{}/api/v1/cluster", agents[0].1.admin)) {
                let _ = write!(out, "{}", crate::status::render_cluster(&c));
            }
            if let Some(l) = &license {
                let _ = write!(out, "{}", crate::status::render_license(l));
            }
            for (_, info) in &agents {
                let _ = writeln!(out, "web page of {}: http://{}/", info.node_id, info.admin);
            }
            let _ = out.flush();
        } else {
            let calls: Vec<String> = usages
                .iter()
                .map(|u| format!("{}={}", u.node_id, u.calls))
                .collect();
            let status = license
                .as_ref()
                .and_then(|l| l["evaluation"]["status"].as_str().map(str::to_owned));
            println!(
                "t={elapsed:>3}s calls {} license {} events/s={rate:.0}",
                calls.join(" "),
                status.unwrap_or_default()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<Report> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("load generator panicked"))?
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<_, _>>()?;
    // Let the agents drain their sockets before the final count.
    std::thread::sleep(Duration::from_millis(500));
    println!("\nSummary after {}s:", started.elapsed().as_secs());
    let mut all_ok = true;
    for ((_, info), report) in agents.iter().zip(&reports) {
        let u: UsageReport = get(format!("http://{}/api/v1/usage", info.admin))
            .and_then(|v| serde_json::from_value(v).ok())
            .with_context(|| format!("final usage of {}", info.node_id))?;
        let checks = [
            ("active calls", u.calls, report.expected_active_calls),
            (
                "emergency calls",
                u.emergency_calls,
                report.expected_emergency_calls,
            ),
            (
                "registered subscribers",
                u.registered_subscribers,
                report.expected_registered_subscribers,
            ),
            (
                "registered contacts",
                u.registered_contacts,
                report.expected_registered_contacts,
            ),
        ];
        for (what, agent, expected) in checks {
            let ok = agent == expected;
            all_ok &= ok;
            println!(
                "  {:<8} {what:<24} agent {agent:>8}   generator {expected:>8}   {}",
                info.node_id,
                if ok { "ok" } else { "MISMATCH" }
            );
        }
        println!(
            "  {:<8} {} events sent; peak calls {}, malformed {}, duplicates {}, lost {}, kernel drops {}",
            info.node_id,
            report.events_sent,
            u.peak_calls,
            u.ingest.malformed,
            u.ingest.duplicate_datagrams,
            u.ingest.lost_datagrams,
            u.ingest.kernel_drops
        );
    }
    if agents.len() > 1 {
        let expected: u64 = reports.iter().map(|r| r.expected_active_calls).sum();
        // The mesh pushes within 100 ms; allow a moment for the last pushes to land.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = None;
        while Instant::now() < deadline {
            seen = get(format!("http://{}/api/v1/cluster", agents[0].1.admin))
                .and_then(|c| c["usage"]["calls"].as_u64());
            if seen == Some(expected) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ok = seen == Some(expected);
        all_ok &= ok;
        println!(
            "  cluster  active calls as {} sees them {:>8}   generators {expected:>8}   {}",
            agents[0].1.node_id,
            seen.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            if ok { "ok" } else { "MISMATCH" }
        );
    }
    for (process, _) in &mut agents {
        process.terminate();
    }
    let reports_json = vendor
        .admin(&["reports", "list", "--json"])
        .unwrap_or_default();
    // One JSON object per line.
    let report_count = reports_json.lines().filter(|l| l.starts_with('{')).count();
    println!("  the license server holds {report_count} usage reports from the agents");
    vendor.process.terminate();
    if all_ok {
        println!("Every agent's counts match what its generator left running.");
        Ok(())
    } else {
        bail!("an agent's counts differ from its generator's")
    }
}

/// Expected concurrent calls after `t` seconds of Erlang traffic from empty:
/// λ·h·(1 − e^(−t/h)) with λ the total arrival rate and h the mean holding time.
fn expected_calls(cps_total: f64, hold: f64, t: f64) -> f64 {
    cps_total * hold * (1.0 - (-t / hold).exp())
}

fn rfc3339_in_days(days: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    at.replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
