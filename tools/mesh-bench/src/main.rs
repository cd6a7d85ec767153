//! mesh-bench: the cluster mesh over real QUIC on loopback, many `tollgate_mesh::Mesh`
//! instances in one process and one tokio runtime. For each cluster size it measures:
//!
//! 1. **Convergence**: one node's record changes (its calls grow by one); the time until
//!    every other node's published aggregate counts it, per (node, change) and per change
//!    (the last node to see it: "visible everywhere"). Changes go round robin over the
//!    nodes, spaced above the 100 ms push interval so none waits for coalescing.
//! 2. **Steady state**: UDP bytes per node per second (quinn's `udp_tx.bytes`: QUIC headers,
//!    ACKs and all, not IP/UDP headers) in a quiet cluster.
//! 3. **Churn**: the same while every node's usage changes every 100 ms.
//!
//! 4. **Registered AoRs** (`--aor-rates`, issue 15): each node loads a set of AoR
//!    fingerprints; the time until one node's added AoR is counted in every other node's
//!    `registered_subscribers_distinct`; and, for each rate, the UDP bytes per node per second
//!    while every node's set changes that many times a second (adds and removes alternating)
//!    against a baseline with the same record changes and no AoR deltas: the difference is
//!    what the AoR deltas cost, per change per peer.
//!
//! It also counts suspicions and expiries (none should happen: a sign the machine kept up)
//! and transport errors. See README.md.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::Rng as _;
use tokio::task::JoinSet;
use tollgate_mesh::{AorInput, ClusterCa, Mesh, MeshConfig, UdpTotals};
use tollgate_replication::{Config, Event, NodeUsage};

#[derive(Debug, Parser)]
#[command(
    about = "The cluster mesh over real QUIC on loopback: convergence time and bytes per node"
)]
struct Args {
    /// Cluster sizes, one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 16, 64])]
    nodes: Vec<usize>,
    /// Changes timed per cluster size.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Gap between two timed changes, ms (plus up to 50 ms of jitter).
    #[arg(long, default_value_t = 150)]
    gap_ms: u64,
    /// Seconds measured at steady state, and again under churn.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds between the mesh being full and the first measurement (joins, the first
    /// anti-entropy rounds).
    #[arg(long, default_value_t = 6)]
    warmup_seconds: u64,
    /// Under churn, every node's usage changes this often, ms.
    #[arg(long, default_value_t = 100)]
    churn_ms: u64,
    /// Heartbeat interval, ms (default: the replica's, 1500).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Suspect after, ms (default: the replica's, 3000).
    #[arg(long)]
    suspect_ms: Option<u64>,
    /// Expire after, ms (default: the replica's, 10000).
    #[arg(long)]
    expire_ms: Option<u64>,
    /// Worker threads of the runtime every node shares (default: the CPUs available).
    #[arg(long)]
    threads: Option<usize>,
    /// A short run for CI: 3 nodes, 10 changes, 2-second phases; fails on any missed change.
    #[arg(long)]
    quick: bool,
    /// AoR churn rates to measure, changes per second per node (adds and removes
    /// alternating), e.g. `10,100,1000`; none by default. Also times AoR visibility.
    #[arg(long, value_delimiter = ',')]
    aor_rates: Vec<u64>,
    /// After the AoR phases: one node crashes, stays away until the others expire it, each
    /// other node meanwhile adds this many AoRs and removes as many; then it restarts (a new
    /// incarnation, its old set loaded) and the time until every node counts the exact
    /// union is measured. 0 = skip.
    #[arg(long, default_value_t = 0)]
    aor_rejoin_changes: u64,
    /// AoRs each node holds before the AoR phases.
    #[arg(long, default_value_t = 5_000)]
    aor_set: u64,
    /// Also write the results as JSON to this file (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Longest the mesh may take to become full.
const FORM_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one change may take to be visible everywhere before it counts as missed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Targets of issue 5, on loopback.
fn target_p99_ms(nodes: usize) -> Option<f64> {
    (nodes >= 16).then_some(25.0)
}

fn target_steady_bytes(nodes: usize) -> Option<f64> {
    match nodes {
        16 => Some(1_200.0),
        64 => Some(2_800.0),
        _ => None,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.nodes = vec![3];
        args.changes = 10;
        args.seconds = 2;
        args.warmup_seconds = 1;
    }
    ensure!(
        args.nodes.iter().all(|n| *n >= 2),
        "a cluster has at least 2 nodes"
    );
    ensure!(args.changes > 0 && args.seconds > 0, "nothing to measure");
    let defaults = Config::default();
    let replication = Config {
        heartbeat_interval_ms: args.heartbeat_ms.unwrap_or(defaults.heartbeat_interval_ms),
        suspect_after_ms: args.suspect_ms.unwrap_or(defaults.suspect_after_ms),
        expire_after_ms: args.expire_ms.unwrap_or(defaults.expire_after_ms),
        ..defaults
    };
    replication.validate().context("replication timings")?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    println!(
        "mesh-bench: real QUIC on loopback, all nodes in one process ({threads} worker threads); \
         heartbeat {} ms, suspect {} ms, expire {} ms, push {} ms",
        replication.heartbeat_interval_ms,
        replication.suspect_after_ms,
        replication.expire_after_ms,
        replication.push_interval_ms,
    );
    let mut reports = Vec::new();
    for &nodes in &args.nodes {
        let report = runtime
            .block_on(run(nodes, &args, &replication))
            .with_context(|| format!("{nodes} nodes"))?;
        print_row(&report);
        reports.push(report);
    }
    print_table(&reports);
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "heartbeat_ms": replication.heartbeat_interval_ms,
            "suspect_ms": replication.suspect_after_ms,
            "expire_ms": replication.expire_after_ms,
            "threads": threads,
            "seconds": args.seconds,
            "changes": args.changes,
            "results": reports.iter().map(Report::json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&json)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text + "\n").with_context(|| path.display().to_string())?;
        }
    }
    if args.quick {
        for report in &reports {
            ensure!(
                report.missed == 0,
                "{} changes never became visible",
                report.missed
            );
            ensure!(
                report.expiries == 0,
                "{} nodes expired in a quiet run",
                report.expiries
            );
            if let Some(aor) = &report.aor {
                ensure!(
                    aor.missed == 0,
                    "{} AoR adds never became visible",
                    aor.missed
                );
            }
        }
    }
    Ok(())
}

struct Report {
    nodes: usize,
    form_ms: u64,
    per_node_us: Histogram<u64>,
    everywhere_us: Histogram<u64>,
    missed: u64,
    steady: Traffic,
    churn: Traffic,
    suspicions: u64,
    expiries: u64,
    errors: u64,
    /// Errors by reason, summed over the nodes.
    error_reasons: std::collections::BTreeMap<&'static str, u64>,
    /// AoR visibility (µs) and churn, when `--aor-rates` was given.
    aor: Option<AorReport>,
}

struct AorReport {
    everywhere_us: Histogram<u64>,
    per_node_us: Histogram<u64>,
    missed: u64,
    /// Per rate: (changes/s per node, baseline B/s per node, with AoR deltas B/s per node).
    churn: Vec<(u64, f64, f64)>,
    /// Every node's set (member indices) at the end of the phases.
    sets: Vec<Vec<u64>>,
    /// Rejoin: (ms away, ms from restart to the exact union everywhere, bytes sent by all
    /// nodes meanwhile).
    rejoin: Option<(u64, u64, u64)>,
}

impl AorReport {
    /// Bytes the AoR deltas cost per change per peer at one rate.
    fn per_change_per_peer(nodes: usize, rate: u64, baseline: f64, with: f64) -> f64 {
        (with - baseline) / (rate as f64 * (nodes - 1) as f64)
    }
}

#[derive(Default)]
struct Traffic {
    tx_bytes_per_s: Spread,
    packets_per_s: Spread,
    ack_frames_per_s: Spread,
    datagram_frames_per_s: Spread,
    ping_frames_per_s: Spread,
    stream_frames_per_s: Spread,
    lost_packets_per_s: Spread,
    cpu_percent: f64,
}

#[derive(Default, Clone, Copy)]
struct Spread {
    mean: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        Spread {
            mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
            max: values.iter().copied().fold(0.0, f64::max),
        }
    }
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1_000.0
}

impl Report {
    fn json(&self) -> serde_json::Value {
        let latency = |h: &Histogram<u64>| {
            serde_json::json!({
                "samples": h.len(),
                "p50_ms": ms(h, 0.5),
                "p99_ms": ms(h, 0.99),
                "max_ms": h.max() as f64 / 1_000.0,
            })
        };
        let traffic = |t: &Traffic| {
            serde_json::json!({
                "tx_bytes_per_s_mean": t.tx_bytes_per_s.mean,
                "tx_bytes_per_s_max": t.tx_bytes_per_s.max,
                "packets_per_s_mean": t.packets_per_s.mean,
                "ack_frames_per_s_mean": t.ack_frames_per_s.mean,
                "datagram_frames_per_s_mean": t.datagram_frames_per_s.mean,
                "ping_frames_per_s_mean": t.ping_frames_per_s.mean,
                "stream_frames_per_s_mean": t.stream_frames_per_s.mean,
                "lost_packets_per_s_mean": t.lost_packets_per_s.mean,
                "cpu_percent": t.cpu_percent,
            })
        };
        serde_json::json!({
            "nodes": self.nodes,
            "form_ms": self.form_ms,
            "visible_everywhere": latency(&self.everywhere_us),
            "visible_per_node": latency(&self.per_node_us),
            "missed": self.missed,
            "target_p99_ms": target_p99_ms(self.nodes),
            "steady": traffic(&self.steady),
            "target_steady_bytes_per_s": target_steady_bytes(self.nodes),
            "churn": traffic(&self.churn),
            "suspicions": self.suspicions,
            "expiries": self.expiries,
            "errors": self.errors,
            "error_reasons": self.error_reasons,
            "aor": self.aor.as_ref().map(|aor| serde_json::json!({
                "visible_everywhere": latency(&aor.everywhere_us),
                "visible_per_node": latency(&aor.per_node_us),
                "missed": aor.missed,
                "rejoin": aor.rejoin.map(|(away_ms, took_ms, bytes)| serde_json::json!({
                    "away_ms": away_ms,
                    "exact_everywhere_after_ms": took_ms,
                    "bytes_sent": bytes,
                })),
                "churn": aor.churn.iter().map(|(rate, baseline, with)| serde_json::json!({
                    "changes_per_s_per_node": rate,
                    "baseline_tx_bytes_per_s": baseline,
                    "with_aor_tx_bytes_per_s": with,
                    "aor_bytes_per_change_per_peer":
                        AorReport::per_change_per_peer(self.nodes, *rate, *baseline, *with),
                })).collect::<Vec<_>>(),
            })),
        })
    }
}

async fn run(nodes: usize, args: &Args, replication: &Config) -> anyhow::Result<Report> {
    let ca = ClusterCa::generate("mesh-bench CA")?;
    let mut meshes: Vec<Mesh> = Vec::with_capacity(nodes);
    let mut seed: Option<SocketAddr> = None;
    let started = Instant::now();
    for i in 0..nodes {
        let node_id = format!("node-{i:02}");
        let cert = ca.issue(&node_id)?;
        let mesh = Mesh::start(MeshConfig {
            node_id,
            listen: "127.0.0.1:0".parse()?,
            advertise: None,
            seeds: seed.into_iter().collect(),
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            incarnation: 1,
            replication: replication.clone(),
        })?;
        seed.get_or_insert(mesh.local_addr());
        meshes.push(mesh);
    }
    let full = |meshes: &[Mesh]| {
        meshes.iter().all(|mesh| {
            mesh.stats().peers_connected == nodes - 1 && mesh.aggregate().nodes_live == nodes
        })
    };
    while !full(&meshes) {
        if started.elapsed() > FORM_TIMEOUT {
            bail!("the mesh was not full after {FORM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let form_ms = started.elapsed().as_millis() as u64;
    eprintln!("{nodes} nodes: full mesh after {form_ms} ms; warming up");
    // Liveness transitions from now on: none should happen.
    let suspicions = Arc::new(AtomicU64::new(0));
    let expiries = Arc::new(AtomicU64::new(0));
    let mut watchers = JoinSet::new();
    for mesh in &meshes {
        let mut events = mesh.subscribe();
        let (suspicions, expiries) = (suspicions.clone(), expiries.clone());
        watchers.spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::NodeSuspect { .. }) => suspicions.fetch_add(1, Relaxed),
                    Ok(Event::NodeExpired { .. }) => expiries.fetch_add(1, Relaxed),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => 0,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;

    eprintln!("{nodes} nodes: timing {} changes", args.changes);
    let (per_node_us, everywhere_us, missed) = convergence(&meshes, args).await?;
    eprintln!("{nodes} nodes: steady state for {} s", args.seconds);
    let steady = traffic(&meshes, Duration::from_secs(args.seconds)).await;
    eprintln!("{nodes} nodes: churn for {} s", args.seconds);
    let mut churners = JoinSet::new();
    for mesh in &meshes {
        let mesh = mesh.clone();
        let period = Duration::from_millis(args.churn_ms);
        churners.spawn(async move {
            let offset = rand::thread_rng().gen_range(0..period.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(offset)).await;
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
                let calls = rand::thread_rng().gen_range(0..10_000);
                mesh.set_local_usage(usage(calls));
            }
        });
    }
    let churn = traffic(&meshes, Duration::from_secs(args.seconds)).await;
    churners.abort_all();
    let aor = if args.aor_rates.is_empty() {
        None
    } else {
        Some(aor_phases(&meshes, args).await?)
    };
    let mut error_reasons = std::collections::BTreeMap::new();
    for mesh in &meshes {
        for (reason, count) in mesh.stats().errors {
            *error_reasons.entry(reason).or_insert(0) += count;
        }
    }
    let errors = error_reasons.values().sum();
    let report = Report {
        nodes,
        form_ms,
        per_node_us,
        everywhere_us,
        missed,
        steady,
        churn,
        suspicions: suspicions.load(Relaxed),
        expiries: expiries.load(Relaxed),
        errors,
        error_reasons,
        aor,
    };
    let mut report = report;
    if args.aor_rejoin_changes > 0
        && let Some(aor) = &mut report.aor
    {
        aor.rejoin = Some(rejoin(&mut meshes, &ca, replication, aor, args).await?);
    }
    let mut leaving = JoinSet::new();
    for mesh in meshes {
        leaving.spawn(mesh.shutdown());
    }
    while leaving.join_next().await.is_some() {}
    watchers.abort_all();
    Ok(report)
}

fn usage(calls: u64) -> NodeUsage {
    NodeUsage {
        calls,
        registered_subscribers: calls * 2,
        registered_contacts: calls * 3,
        ..NodeUsage::default()
    }
}

/// Times `args.changes` changes, round robin over the nodes: per (observer, change) and per
/// change (its last observer). Returns the histograms (µs) and the observations missed.
async fn convergence(
    meshes: &[Mesh],
    args: &Args,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64)> {
    let mut per_node = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut everywhere = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut calls = vec![0_u64; meshes.len()];
    let before = meshes[0].aggregate().calls;
    let mut missed = 0;
    for change in 0..args.changes {
        let changer = change % meshes.len();
        calls[changer] += 1;
        // Every change adds one call to the cluster's total.
        let total = before + change as u64 + 1;
        let mut observers = JoinSet::new();
        for (index, mesh) in meshes.iter().enumerate() {
            if index == changer {
                continue;
            }
            let mut aggregate = mesh.watch_aggregate();
            observers.spawn(async move {
                loop {
                    if aggregate.borrow_and_update().calls >= total {
                        return Some(Instant::now());
                    }
                    if aggregate.changed().await.is_err() {
                        return None;
                    }
                }
            });
        }
        let changed_at = Instant::now();
        meshes[changer].set_local_usage(usage(calls[changer]));
        let deadline = tokio::time::Instant::from_std(changed_at + CHANGE_TIMEOUT);
        let mut last = Duration::ZERO;
        let mut seen = 0;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, observers.join_next()).await {
            if let Ok(Some(at)) = done {
                let took = at.duration_since(changed_at);
                per_node.record(took.as_micros().max(1) as u64)?;
                last = last.max(took);
                seen += 1;
            }
        }
        observers.abort_all();
        let expected = meshes.len() as u64 - 1;
        if seen == expected {
            everywhere.record(last.as_micros().max(1) as u64)?;
        } else {
            missed += expected - seen;
        }
        let jitter = rand::thread_rng().gen_range(0..50);
        tokio::time::sleep(Duration::from_millis(args.gap_ms + jitter)).await;
    }
    Ok((per_node, everywhere, missed))
}

/// The last node crashes and stays away until every other node expired it, while each of
/// them adds and removes `aor_rejoin_changes` AoRs; it restarts (incarnation 2, its old set
/// loaded, as a restart from a snapshot would) and is timed to the exact union everywhere.
async fn rejoin(
    meshes: &mut Vec<Mesh>,
    ca: &ClusterCa,
    replication: &Config,
    aor: &mut AorReport,
    args: &Args,
) -> anyhow::Result<(u64, u64, u64)> {
    let nodes = meshes.len();
    let away = nodes - 1;
    let gone = meshes.pop().context("no node")?;
    drop(gone);
    let left_at = Instant::now();
    eprintln!("{nodes} nodes: node {away} crashed; the others churn and expire it");
    for (node, mesh) in meshes.iter().enumerate() {
        let set = &mut aor.sets[node];
        let mut changes = Vec::new();
        let start = 50_000_000u64;
        for i in 0..args.aor_rejoin_changes {
            changes.push((aor_fp(node, start + i), true));
            set.push(start + i);
        }
        for index in set.drain(..args.aor_rejoin_changes as usize) {
            changes.push((aor_fp(node, index), false));
        }
        for chunk in changes.chunks(1_000) {
            mesh.aor(AorInput::Changes(chunk.to_vec())).await?;
        }
    }
    let expired = |meshes: &[Mesh]| {
        meshes
            .iter()
            .all(|mesh| mesh.aggregate().nodes_live + mesh.aggregate().nodes_suspect == nodes - 1)
    };
    while !expired(meshes) || left_at.elapsed() < Duration::from_millis(replication.expire_after_ms)
    {
        if left_at.elapsed() > FORM_TIMEOUT {
            bail!("node {away} never expired");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let away_ms = left_at.elapsed().as_millis() as u64;
    let expected: u64 = aor.sets.iter().map(|set| set.len() as u64).sum();
    let bytes = |meshes: &[Mesh]| -> u64 { meshes.iter().map(|m| m.stats().udp.tx_bytes).sum() };
    let before = bytes(meshes);
    let node_id = format!("node-{away:02}");
    let cert = ca.issue(&node_id)?;
    let started = Instant::now();
    let mesh = Mesh::start(MeshConfig {
        node_id,
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        seeds: vec![meshes[0].local_addr()],
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        incarnation: 2,
        replication: replication.clone(),
    })?;
    let own: Vec<u64> = aor.sets[away].iter().map(|i| aor_fp(away, *i)).collect();
    mesh.aor(AorInput::Load(own)).await?;
    meshes.push(mesh);
    while !meshes.iter().all(|mesh| {
        let aggregate = mesh.aggregate();
        aggregate.registered_subscribers_distinct == expected && aggregate.nodes_live == nodes
    }) {
        if started.elapsed() > FORM_TIMEOUT {
            bail!("the rejoin never converged to {expected}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took_ms = started.elapsed().as_millis() as u64;
    let sent = bytes(meshes).saturating_sub(before);
    eprintln!(
        "{nodes} nodes: node {away} back after {away_ms} ms away: exact union ({expected}) \
         everywhere {took_ms} ms after its restart; {sent} bytes sent meanwhile"
    );
    Ok((away_ms, took_ms, sent))
}

/// A fingerprint for AoR `index` of node `node` (spread over the space, like SipHash's).
fn aor_fp(node: usize, index: u64) -> u64 {
    let mut x = (node as u64) << 40 | index;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The AoR phases: load `aor_set` AoRs per node, time `changes` single adds until every
/// other node counts them, then for each rate a baseline (the records change as the sets
/// would make them) and the same with the AoR deltas.
async fn aor_phases(meshes: &[Mesh], args: &Args) -> anyhow::Result<AorReport> {
    let nodes = meshes.len();
    for (node, mesh) in meshes.iter().enumerate() {
        let set: Vec<u64> = (0..args.aor_set).map(|i| aor_fp(node, i)).collect();
        mesh.aor(AorInput::Load(set)).await?;
    }
    let loaded = nodes as u64 * args.aor_set;
    let started = Instant::now();
    while !meshes
        .iter()
        .all(|mesh| mesh.aggregate().registered_subscribers_distinct == loaded)
    {
        if started.elapsed() > FORM_TIMEOUT {
            bail!("the AoR sets never converged to {loaded}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{nodes} nodes: {loaded} AoRs everywhere after {} ms; timing {} AoR adds",
        started.elapsed().as_millis(),
        args.changes
    );
    let mut per_node = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut everywhere = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut missed = 0;
    let mut next = vec![args.aor_set; nodes];
    for change in 0..args.changes {
        let changer = change % nodes;
        let total = loaded + change as u64 + 1;
        let mut observers = JoinSet::new();
        for (index, mesh) in meshes.iter().enumerate() {
            if index == changer {
                continue;
            }
            let mut aggregate = mesh.watch_aggregate();
            observers.spawn(async move {
                loop {
                    if aggregate
                        .borrow_and_update()
                        .registered_subscribers_distinct
                        >= total
                    {
                        return Some(Instant::now());
                    }
                    if aggregate.changed().await.is_err() {
                        return None;
                    }
                }
            });
        }
        let changed_at = Instant::now();
        let fp = aor_fp(changer, next[changer]);
        next[changer] += 1;
        meshes[changer]
            .aor(AorInput::Changes(vec![(fp, true)]))
            .await?;
        let deadline = tokio::time::Instant::from_std(changed_at + CHANGE_TIMEOUT);
        let (mut last, mut seen) = (Duration::ZERO, 0);
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, observers.join_next()).await {
            if let Ok(Some(at)) = done {
                let took = at.duration_since(changed_at);
                per_node.record(took.as_micros().max(1) as u64)?;
                last = last.max(took);
                seen += 1;
            }
        }
        observers.abort_all();
        if seen == nodes as u64 - 1 {
            everywhere.record(last.as_micros().max(1) as u64)?;
        } else {
            missed += nodes as u64 - 1 - seen;
        }
        let jitter = rand::thread_rng().gen_range(0..50);
        tokio::time::sleep(Duration::from_millis(args.gap_ms + jitter)).await;
    }
    // The indices of each node's members (the loaded AoRs and the timed adds).
    let mut sets: Vec<Vec<u64>> = (0..nodes).map(|node| (0..next[node]).collect()).collect();
    type Members = Arc<std::sync::Mutex<std::collections::VecDeque<u64>>>;
    let mut kept: Vec<Option<Members>> = vec![None; nodes];
    let mut churn = Vec::new();
    for &rate in &args.aor_rates {
        let mut row = [0.0; 2];
        for (phase, with_aors) in [false, true].into_iter().enumerate() {
            eprintln!(
                "{nodes} nodes: {rate} AoR changes/s per node, {} for {} s",
                if with_aors { "with deltas" } else { "baseline" },
                args.seconds
            );
            let mut churners = JoinSet::new();
            for (node, mesh) in meshes.iter().enumerate() {
                // The node's set as the mesh holds it: the loaded AoRs and the timed adds,
                // then what earlier phases with deltas left.
                let members: std::collections::VecDeque<u64> = sets[node].iter().copied().collect();
                let first = next[node];
                next[node] += 1_000_000;
                let shared = Arc::new(std::sync::Mutex::new(members));
                if with_aors {
                    kept[node] = Some(shared.clone());
                }
                churners.spawn(aor_churner(
                    mesh.clone(),
                    node,
                    shared,
                    first,
                    rate,
                    with_aors,
                ));
            }
            // Settle into the rate before measuring.
            tokio::time::sleep(Duration::from_secs(1)).await;
            row[phase] = traffic(meshes, Duration::from_secs(args.seconds))
                .await
                .tx_bytes_per_s
                .mean;
            churners.abort_all();
            while churners.join_next().await.is_some() {}
            for (node, kept) in kept.iter_mut().enumerate() {
                if let Some(shared) = kept.take()
                    && let Ok(members) = shared.lock()
                {
                    sets[node] = members.iter().copied().collect();
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        eprintln!(
            "{nodes} nodes: {rate}/s: baseline {:.0} B/s, with AoR deltas {:.0} B/s per node: \
             {:.1} B per AoR change per peer",
            row[0],
            row[1],
            AorReport::per_change_per_peer(nodes, rate, row[0], row[1])
        );
        churn.push((rate, row[0], row[1]));
    }
    Ok(AorReport {
        everywhere_us: everywhere,
        per_node_us: per_node,
        missed,
        churn,
        sets,
        rejoin: None,
    })
}

/// One node's AoR churn: every 100 ms, `rate / 10` changes alternating between adding a
/// new AoR and removing the oldest member (so the set keeps its size), and the record's
/// registered count as those changes leave it. Without `with_aors` only the record changes.
async fn aor_churner(
    mesh: Mesh,
    node: usize,
    members: Arc<std::sync::Mutex<std::collections::VecDeque<u64>>>,
    first: u64,
    rate: u64,
    with_aors: bool,
) {
    let period = Duration::from_millis(100);
    let offset = rand::thread_rng().gen_range(0..period.as_micros() as u64);
    tokio::time::sleep(Duration::from_micros(offset)).await;
    let mut ticks = tokio::time::interval(period);
    let (mut next, mut budget, mut add) = (first, 0u64, true);
    loop {
        ticks.tick().await;
        budget += rate;
        let mut changes = Vec::new();
        let count = {
            let Ok(mut members) = members.lock() else {
                return;
            };
            while budget >= 10 {
                budget -= 10;
                if add {
                    members.push_back(next);
                    changes.push((aor_fp(node, next), true));
                    next += 1;
                } else if let Some(oldest) = members.pop_front() {
                    changes.push((aor_fp(node, oldest), false));
                }
                add = !add;
            }
            members.len() as u64
        };
        if with_aors && !changes.is_empty() {
            let _ = mesh.aor(AorInput::Changes(changes)).await;
        }
        mesh.set_local_usage(NodeUsage {
            registered_subscribers: count,
            registered_contacts: count,
            ..NodeUsage::default()
        });
    }
}

/// UDP traffic per node over `period`, from quinn's connection statistics.
async fn traffic(meshes: &[Mesh], period: Duration) -> Traffic {
    let sample = || -> Vec<UdpTotals> { meshes.iter().map(|mesh| mesh.stats().udp).collect() };
    let before = sample();
    let cpu_before = cpu_time();
    let started = Instant::now();
    tokio::time::sleep(period).await;
    let after = sample();
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu_before;
    let rate = |field: fn(&UdpTotals) -> u64| -> Vec<f64> {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| field(a).saturating_sub(field(b)) as f64 / seconds)
            .collect()
    };
    Traffic {
        tx_bytes_per_s: Spread::of(&rate(|t| t.tx_bytes)),
        packets_per_s: Spread::of(&rate(|t| t.tx_datagrams)),
        ack_frames_per_s: Spread::of(&rate(|t| t.tx_ack_frames)),
        datagram_frames_per_s: Spread::of(&rate(|t| t.tx_datagram_frames)),
        ping_frames_per_s: Spread::of(&rate(|t| t.tx_ping_frames)),
        stream_frames_per_s: Spread::of(&rate(|t| t.tx_stream_frames)),
        lost_packets_per_s: Spread::of(&rate(|t| t.lost_packets)),
        cpu_percent: 100.0 * cpu.as_secs_f64() / seconds,
    }
}

/// CPU time of this process (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn print_row(report: &Report) {
    let t = &report.steady;
    eprintln!(
        "{} nodes, steady, per node per second: {:.1} packets, {:.1} DATAGRAM frames, \
         {:.1} ACK frames, {:.2} PING frames, {:.2} STREAM frames, {:.2} packets lost",
        report.nodes,
        t.packets_per_s.mean,
        t.datagram_frames_per_s.mean,
        t.ack_frames_per_s.mean,
        t.ping_frames_per_s.mean,
        t.stream_frames_per_s.mean,
        t.lost_packets_per_s.mean,
    );
    if !report.error_reasons.is_empty() {
        eprintln!("{} nodes: errors {:?}", report.nodes, report.error_reasons);
    }
    eprintln!(
        "{} nodes: visible everywhere p50 {:.1} ms p99 {:.1} ms; steady {:.0} B/s per node; \
         churn {:.0} B/s per node",
        report.nodes,
        ms(&report.everywhere_us, 0.5),
        ms(&report.everywhere_us, 0.99),
        report.steady.tx_bytes_per_s.mean,
        report.churn.tx_bytes_per_s.mean,
    );
}

fn print_table(reports: &[Report]) {
    print_records_table(reports);
    let mut out = std::io::stdout().lock();
    if reports.iter().all(|r| r.aor.is_none()) {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| nodes | AoR add visible everywhere p50 / p99 / max (ms) | per node p50 / p99 (ms) | \
         AoR changes/s per node | baseline B/s per node | with AoR deltas | B per AoR change per peer |"
    );
    let _ = writeln!(out, "|{}", "---:|".repeat(7));
    for r in reports {
        let Some(aor) = &r.aor else { continue };
        for (rate, baseline, with) in &aor.churn {
            let _ = writeln!(
                out,
                "| {} | {:.1} / {:.1} / {:.1}{} | {:.1} / {:.1} | {} | {:.0} | {:.0} | {:.1} |",
                r.nodes,
                ms(&aor.everywhere_us, 0.5),
                ms(&aor.everywhere_us, 0.99),
                aor.everywhere_us.max() as f64 / 1_000.0,
                if aor.missed > 0 {
                    format!(" ({} missed)", aor.missed)
                } else {
                    String::new()
                },
                ms(&aor.per_node_us, 0.5),
                ms(&aor.per_node_us, 0.99),
                rate,
                baseline,
                with,
                AorReport::per_change_per_peer(r.nodes, *rate, *baseline, *with),
            );
        }
    }
}

fn print_records_table(reports: &[Report]) {
    let mut out = std::io::stdout().lock();
    let target = |value: Option<f64>, unit: &str| {
        value.map_or_else(|| "-".to_owned(), |v| format!("≤ {v:.0}{unit}"))
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| nodes | visible everywhere p50 / p99 / max (ms) | per node p50 / p99 (ms) | target p99 | \
         steady B/s per node mean / max | target | packets/s per node | ACK frames/s | \
         churn B/s per node mean / max | CPU steady / churn | suspicions / expiries / errors |"
    );
    let _ = writeln!(out, "|{}", "---:|".repeat(11));
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {:.1} / {:.1} / {:.1}{} | {:.1} / {:.1} | {} | {:.0} / {:.0} | {} | {:.1} | {:.1} | {:.0} / {:.0} | {:.0}% / {:.0}% | {} / {} / {} |",
            r.nodes,
            ms(&r.everywhere_us, 0.5),
            ms(&r.everywhere_us, 0.99),
            r.everywhere_us.max() as f64 / 1_000.0,
            if r.missed > 0 {
                format!(" ({} missed)", r.missed)
            } else {
                String::new()
            },
            ms(&r.per_node_us, 0.5),
            ms(&r.per_node_us, 0.99),
            target(target_p99_ms(r.nodes), " ms"),
            r.steady.tx_bytes_per_s.mean,
            r.steady.tx_bytes_per_s.max,
            target(target_steady_bytes(r.nodes), ""),
            r.steady.packets_per_s.mean,
            r.steady.ack_frames_per_s.mean,
            r.churn.tx_bytes_per_s.mean,
            r.churn.tx_bytes_per_s.max,
            r.steady.cpu_percent,
            r.churn.cpu_percent,
            r.suspicions,
            r.expiries,
            r.errors,
        );
    }
}
