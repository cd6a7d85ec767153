//! `tollgate demo`: the whole node on loopback in one command. An agent on a temporary state
//! dir with ephemeral ports, two load generators against it (text over UDP, binary batches
//! over the unix socket), a live view refreshed in place, and a summary that checks the
//! agent's counts against what the generators say they left running.

use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tollgate_agent::RuntimeInfo;
use tollgate_agent::http::UsageReport;
use tollgate_loadgen::{LoadgenArgs, Report};

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long the load runs, in seconds (Ctrl-C ends it early).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Call attempts per second, per generator (two generators run).
    #[arg(long, default_value_t = 150)]
    cps: u32,
    /// Mean call holding time in seconds (exponential).
    #[arg(long, default_value_t = 30)]
    hold: u32,
    /// Registered AoRs per generator.
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

fn loadgen_args(flags: &[String]) -> Result<LoadgenArgs, Failure> {
    let argv = std::iter::once("loadgen".to_owned()).chain(flags.iter().cloned());
    LoadgenCli::try_parse_from(argv)
        .map(|c| c.args)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("demo load generator: {e}")))
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let state_dir = dir.path().join("agent");
    let mut config = tollgate_agent::Config::load(None, Some(&state_dir))
        .map_err(|e| Failure::Config(e.into()))?;
    config.node_id = "demo-1".into();
    config.events_udp = Some("127.0.0.1:0".parse().context("address")?);
    config.admin_listen = "127.0.0.1:0".parse().context("address")?;
    config.report_interval = Duration::from_secs(10);
    // A vendor key and a license sized so this run crosses the warning threshold and then
    // the calls limit (in warn mode: the page and the log say so, calls still pass).
    let vendor = tollgate_license::SigningKey::generate();
    config.trusted_keys = tollgate_license::TrustedKeys::single(vendor.public_key());
    let license_path = dir.path().join("license.txt");
    std::fs::write(&license_path, demo_license(&vendor, &args)?)
        .context("write the demo license")?;
    config.license_file = Some(license_path);

    let rt = crate::runtime()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<RuntimeInfo>();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = rt.spawn(async move {
        tollgate_agent::run(
            config,
            async {
                let _ = agent_stopped.await;
            },
            move |info| {
                let _ = ready_tx.send(info.clone());
            },
        )
        .await
    });
    let info = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("the demo agent did not start"))?;
    let udp = info.events_udp.context("demo agent has no UDP socket")?;
    let unix = info
        .events_unix
        .clone()
        .context("demo agent has no unix socket")?;

    let common = |target: String, sender: &str| {
        vec![
            "--mode".into(),
            "erlang".into(),
            "--target".into(),
            target,
            "--sender-id".into(),
            sender.into(),
            "--cps".into(),
            args.cps.to_string(),
            "--hold".into(),
            args.hold.to_string(),
            "--registrations".into(),
            args.registrations.to_string(),
            "--duration".into(),
            args.duration.to_string(),
        ]
    };
    let mut text_flags = common(format!("udp:{udp}"), "demo-text");
    text_flags.extend(["--format", "text", "--subscribers", "25000"].map(String::from));
    let mut binary_flags = common(format!("unix:{}", unix.display()), "demo-binary");
    binary_flags.extend(
        [
            "--format",
            "binary",
            "--batch",
            "16",
            "--emergency-pct",
            "2",
            "--seed",
            "7",
            "--contacts-per-aor",
            "2",
        ]
        .map(String::from),
    );
    let generators = [loadgen_args(&text_flags)?, loadgen_args(&binary_flags)?];

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            crate::shutdown_signal().await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    let handles: Vec<_> = generators
        .into_iter()
        .map(|g| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || tollgate_loadgen::run(&g, &stop))
        })
        .collect();

    let admin = format!("http://{}", info.admin);
    let client = reqwest::Client::new();
    let fetch_license = |client: &reqwest::Client| -> Option<serde_json::Value> {
        let url = format!("{admin}/api/v1/license");
        rt.block_on(async { client.get(&url).send().await.ok()?.json().await.ok() })
    };
    let fetch = |client: &reqwest::Client| {
        let url = format!("{admin}/api/v1/usage");
        rt.block_on(async {
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json::<UsageReport>()
                .await
        })
    };

    let live = !args.plain && std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last: Option<(Instant, u64)> = None;
    while !stop.load(Ordering::Relaxed) && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
        let Ok(r) = fetch(&client) else { continue };
        let now = Instant::now();
        let rate = last
            .map(|(t, e)| {
                (r.ingest.events.saturating_sub(e)) as f64 / now.duration_since(t).as_secs_f64()
            })
            .unwrap_or(0.0);
        last = Some((now, r.ingest.events));
        let elapsed = started.elapsed().as_secs();
        if live {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\x1b[H\x1b[2J");
            let _ = writeln!(
                out,
                "tollgate demo — {elapsed}s of {}s (Ctrl-C to stop)\n",
                args.duration
            );
            let _ = write!(out, "{}", crate::status::render(&r, &admin));
            if let Some(l) = fetch_license(&client) {
                let _ = write!(out, "{}", crate::status::render_license(&l));
            }
            let _ = writeln!(out, "events/s: {rate:.0}");
            let _ = writeln!(out, "\nstate dir: {}", state_dir.display());
            let _ = out.flush();
        } else {
            println!(
                "t={elapsed:>3}s calls={} emergency={} registered_subscribers={} contacts={} subscribers={} peak_calls={} events/s={rate:.0}",
                r.calls,
                r.emergency_calls,
                r.registered_subscribers,
                r.registered_contacts,
                r.subscribers,
                r.peak_calls
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
    // Let the agent drain its sockets before the final count.
    std::thread::sleep(Duration::from_millis(500));
    let fin = fetch(&client).context("cannot read the agent's final usage")?;
    let _ = stop_agent.send(());
    rt.block_on(agent)
        .map_err(|e| anyhow::anyhow!("agent task: {e}"))?
        .map_err(|e| Failure::Runtime(e.into()))?;

    let expected_calls: u64 = reports.iter().map(|r| r.expected_active_calls).sum();
    let expected_emergency: u64 = reports.iter().map(|r| r.expected_emergency_calls).sum();
    let expected_aors: u64 = reports
        .iter()
        .map(|r| r.expected_registered_subscribers)
        .sum();
    let expected_contacts: u64 = reports.iter().map(|r| r.expected_registered_contacts).sum();
    let sent: u64 = reports.iter().map(|r| r.events_sent).sum();
    println!(
        "\nSummary after {}s: {sent} events sent by two generators",
        started.elapsed().as_secs()
    );
    let check = |what: &str, agent: u64, expected: u64| {
        let mark = if agent == expected { "ok" } else { "MISMATCH" };
        println!("  {what:<24} agent {agent:>8}   generators {expected:>8}   {mark}");
        agent == expected
    };
    let all = [
        check("active calls", fin.calls, expected_calls),
        check("emergency calls", fin.emergency_calls, expected_emergency),
        check(
            "registered subscribers",
            fin.registered_subscribers,
            expected_aors,
        ),
        check(
            "registered contacts",
            fin.registered_contacts,
            expected_contacts,
        ),
    ];
    println!(
        "  peak calls {}, malformed {}, duplicates {}, lost {}, kernel drops {}",
        fin.peak_calls,
        fin.ingest.malformed,
        fin.ingest.duplicate_datagrams,
        fin.ingest.lost_datagrams,
        fin.ingest.kernel_drops
    );
    if all.iter().all(|ok| *ok) {
        println!("The agent's counts match what the generators left running.");
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "the agent's counts differ from the generators'"
        )))
    }
}

/// Expected concurrent calls after `t` seconds of Erlang traffic from empty:
/// λ·h·(1 − e^(−t/h)) with λ the total arrival rate and h the mean holding time.
fn expected_calls(cps_total: f64, hold: f64, t: f64) -> f64 {
    cps_total * hold * (1.0 - (-t / hold).exp())
}

/// A subscription license for the demo, its calls limit just under what the run will reach.
fn demo_license(vendor: &tollgate_license::SigningKey, args: &DemoArgs) -> Result<String, Failure> {
    let peak = expected_calls(
        2.0 * f64::from(args.cps),
        f64::from(args.hold.max(1)),
        args.duration as f64,
    );
    let calls = ((peak * 0.95) as u64).max(10);
    let subscribers = 100_000;
    let registered = (u64::from(args.registrations) * 5 / 2).max(10);
    let spec = format!(
        "license_key = \"DEMO_000000001_c0ffee\"\ncustomer = \"Demo Telecom\"\nkind = \"subscription\"\n\
         serial = 1\nvalid_until = \"{}\"\nlease_days = 14\nfeatures = [\"pbx\", \"sms\"]\n\n\
         [limits]\ncalls = {calls}\nsubscribers = {subscribers}\nregistered_subscribers = {registered}\n\n\
         [policy]\nmode = \"warn\"\n",
        rfc3339_in_days(30)
    );
    let now_ms = tollgate_ingest::wall_clock().unix_ms();
    let document = tollgate_license::LicenseSpec::parse(&spec)
        .and_then(|s| s.to_document(vendor.key_id(), now_ms))
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("demo license spec: {e}")))?;
    tollgate_license::sign(&document, vendor)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("sign: {e}")))
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
