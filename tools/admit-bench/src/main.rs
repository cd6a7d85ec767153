//! admit-bench: the `admit` round trip through the agent's real receive loop and license
//! gate, against a bare echo over the same socket type, in alternating rounds. See README.md.
//!
//! The server side is what the agent runs: an [`EventSocket`] bound with the agent's
//! default options, [`receive_loop`] with the agent's default batch, and an [`Admission`]
//! that reads an [`AdmissionGate`] published from the evaluation of a real signed license
//! (enforce mode, a calls limit, so every query also sums the tables' call counters). The
//! baseline server receives with the same [`RecvBatch`] and sends each datagram straight
//! back with the same [`RecvBatch::reply_to`]: the kernel's own round trip plus the
//! syscalls the agent cannot avoid. The client is a SIP proxy asking one question at a time:
//! its own bound socket, `admit <call-id>\n`, wait for the reply, record the time.

use std::io;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tollgate_events::{CallRef, Event};
use tollgate_ingest::{
    Admission, Endpoint, EventSocket, IngestConfig, IngestStats, LoopContext, Pipeline, RecvBatch,
    RecvMode, receive_loop, tables_clock,
};
use tollgate_license::{AdmissionGate, Context, LicenseSpec, SigningKey, TrustedKeys, Usage};
use tollgate_usage::{FingerprintKey, SequenceTracker, Tables, TablesConfig};

#[derive(Debug, Parser)]
#[command(about = "admit round trip over the agent's receive loop vs a bare echo, side by side")]
struct Args {
    /// Round trips measured per case (echo and admit each), after the warm-up.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Round trips not measured at the start of each round.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Echo and admit alternate this many times per transport (the count is split evenly),
    /// so drift on a shared machine hits both alike.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
    /// Longest a case may take; it stops early with what it has.
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// How both sides wait for a datagram: `block` sleeps in the kernel (the agent's
    /// default), `spin` polls (the agent's `[ingest] busy_poll = true`; the client polls too).
    #[arg(long, value_enum, default_value_t = ModeArg::Block)]
    mode: ModeArg,
    /// Calls already running when the queries arrive (their count is read per query).
    #[arg(long, default_value_t = 1_000)]
    calls: u64,
    /// CPU the server (the agent's receive thread) is pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// CPU the client is pinned to.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// Only this transport.
    #[arg(long, value_enum)]
    only: Option<Transport>,
    /// A short run (CI): 2000 round trips per case in one round.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON lines too.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Block,
    Spin,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Unix,
    Udp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Receive and send the datagram back, nothing else.
    Echo,
    /// The agent's receive loop answering `admit` from the license gate.
    Admit,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Echo => "echo",
            Server::Admit => "admit",
        }
    }
}

fn mode_name(mode: RecvMode) -> &'static str {
    match mode {
        RecvMode::Block => "block",
        RecvMode::Spin => "spin",
    }
}

/// The limit in the bench license; with the default grace (10%) calls are admitted up to
/// 11 000 running.
const CALLS_LIMIT: u64 = 10_000;
/// Distinct call ids the client cycles through.
const CALL_ID_COUNT: usize = 1024;
/// How long the client waits for one reply before counting it lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Histogram range: 1 ns to 60 s, 3 significant digits.
const HISTOGRAM_NS_MAX: u64 = 60_000_000_000;

/// Answers `admit` exactly as the agent wires it (`tollgate-agent`'s `LicenseAdmission`):
/// one relaxed load of the published plan, and the running calls (a lock-free sum over the
/// tables' shard counters) only when the plan needs them; a denial counted by code.
struct LicenseAdmission {
    gate: Arc<AdmissionGate>,
    calls: Arc<dyn Fn() -> u64 + Send + Sync>,
    denied: tollgate_license::DenialCounters,
}

impl Admission for LicenseAdmission {
    #[inline]
    fn decide(&self, _call_id: &[u8], emergency: bool) -> tollgate_ingest::Decision {
        match self.gate.decide_with(emergency, || (self.calls)()) {
            tollgate_license::Decision::Admit => tollgate_ingest::Decision::Admit,
            tollgate_license::Decision::Deny(code) => {
                self.denied.record(code);
                tollgate_ingest::Decision::Deny(code.as_str())
            }
        }
    }
}

/// The gate as the agent publishes it: a license signed, verified and evaluated by the
/// license crate (enforce mode, a calls limit).
fn license_gate(now: tollgate_events::WallTime, calls: u64) -> anyhow::Result<AdmissionGate> {
    let key = SigningKey::from_seed(&[42; 32]);
    let spec = LicenseSpec::parse(&format!(
        "license_key = \"ADMIT-BENCH\"\ncustomer = \"admit-bench\"\nkind = \"perpetual\"\n\
         serial = 1\n[limits]\ncalls = {CALLS_LIMIT}\n[policy]\nmode = \"enforce\"\n"
    ))?;
    let text = tollgate_license::sign(&spec.to_document(key.key_id(), now)?, &key)?;
    let license =
        tollgate_license::verify(text.as_bytes(), &TrustedKeys::single(key.public_key()))?;
    let usage = Usage {
        calls,
        ..Usage::default()
    };
    let evaluation = tollgate_license::evaluate(Some(&license), &Context::at(now), &usage);
    ensure!(
        evaluation.admission.calls_admit_max.is_some(),
        "the bench plan must check calls: {:?}",
        evaluation.admission
    );
    Ok(AdmissionGate::new(evaluation.admission))
}

fn pin_to_cpu(cpu: usize) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The bare baseline: the same batch receive, each datagram sent straight back.
fn echo_loop(socket: &EventSocket, batch: &mut RecvBatch, stop: &AtomicBool, mode: RecvMode) {
    let fd = socket.raw_fd();
    while !stop.load(Ordering::Relaxed) {
        match batch.recv_mode(fd, mode) {
            Ok(_) => {
                for received in batch.iter() {
                    let _ = batch.reply_to(fd, received.slot, received.data);
                }
            }
            Err(e) if is_transient(&e) => std::hint::spin_loop(),
            Err(_) => break,
        }
    }
}

/// Runs `server` on `socket` until `stop` (the receive timeout bounds how long that takes).
fn serve(
    socket: &EventSocket,
    server: Server,
    pipeline: &Pipeline,
    mode: RecvMode,
    cpu: usize,
    stop: &AtomicBool,
) {
    pin_to_cpu(cpu);
    let config = IngestConfig::default();
    let mut batch = RecvBatch::new(config.recv_batch, config.max_datagram_bytes);
    match server {
        Server::Echo => echo_loop(socket, &mut batch, stop, mode),
        Server::Admit => {
            let stats = IngestStats::default();
            let thread_stats = stats.register();
            let drops = AtomicU64::new(0);
            let ctx = LoopContext {
                stats: &thread_stats,
                kernel_drops: &drops,
                stop,
                mode,
            };
            receive_loop(socket, pipeline, &mut batch, &ctx);
        }
    }
}

/// The SIP proxy's side: its own bound socket, connected to the agent's.
struct Client {
    socket: ClientSocket,
    /// Poll for the reply instead of sleeping in the kernel.
    spin: bool,
}

enum ClientSocket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

impl Client {
    fn connect(target: &Endpoint, dir: &Path, mode: RecvMode) -> anyhow::Result<Client> {
        let socket = match target {
            Endpoint::Unix(path) => {
                // Bound, so the agent has an address to reply to.
                let own = dir.join("client.sock");
                let _ = std::fs::remove_file(&own);
                let socket = UnixDatagram::bind(&own).context("bind client socket")?;
                socket
                    .connect(path)
                    .context("connect to the agent socket")?;
                socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
                ClientSocket::Unix(socket)
            }
            Endpoint::Udp(addr) => {
                let socket = UdpSocket::bind("127.0.0.1:0").context("bind client socket")?;
                socket
                    .connect(addr)
                    .context("connect to the agent socket")?;
                socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
                ClientSocket::Udp(socket)
            }
        };
        let client = Client {
            socket,
            spin: mode == RecvMode::Spin,
        };
        client.set_nonblocking(client.spin)?;
        Ok(client)
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match &self.socket {
            ClientSocket::Unix(s) => s.set_nonblocking(nonblocking),
            ClientSocket::Udp(s) => s.set_nonblocking(nonblocking),
        }
    }

    fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        match &self.socket {
            ClientSocket::Unix(s) => s.send(datagram),
            ClientSocket::Udp(s) => s.send(datagram),
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.socket {
            ClientSocket::Unix(s) => s.recv(buf),
            ClientSocket::Udp(s) => s.recv(buf),
        }
    }

    /// Waits for one reply: sleeping in the kernel (up to the read timeout), or polling.
    fn recv_reply(&self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.spin {
            return self.recv(buf);
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    std::hint::spin_loop();
                }
                other => return other,
            }
        }
    }

    /// Drops replies left over from an earlier round (a late reply after a timeout).
    fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 256];
        self.set_nonblocking(true)?;
        while self.recv(&mut buf).is_ok() {}
        self.set_nonblocking(self.spin)
    }
}

/// What one case measured.
struct Measured {
    histogram: Histogram<u64>,
    lost: u64,
    wrong: u64,
}

impl Measured {
    fn new() -> anyhow::Result<Measured> {
        Ok(Measured {
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_NS_MAX, 3)?,
            lost: 0,
            wrong: 0,
        })
    }
}

/// Everything a round needs besides which server and how many round trips.
struct Setup<'a> {
    socket: &'a EventSocket,
    client: &'a Client,
    pipeline: &'a Pipeline,
    mode: RecvMode,
    server_cpu: usize,
    /// The queries, cycled through (the echo server gets the same bytes).
    datagrams: &'a [Vec<u8>],
    /// The reply every query must get from the admit server.
    expected_admit: &'a [u8],
    warmup: u64,
    /// The case stops early at this time with what it has.
    deadline: Instant,
}

/// One round of one case: start the server, run `warmup + count` round trips (or until the
/// deadline), stop the server.
fn round(
    setup: &Setup<'_>,
    server: Server,
    count: u64,
    measured: &mut Measured,
) -> anyhow::Result<()> {
    let Setup {
        socket,
        client,
        pipeline,
        mode,
        server_cpu,
        datagrams,
        expected_admit,
        warmup,
        deadline,
    } = *setup;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let server_thread =
            scope.spawn(|| serve(socket, server, pipeline, mode, server_cpu, &stop));
        let mut buf = [0u8; 256];
        let mut result = Ok(());
        for i in 0..warmup + count {
            if Instant::now() > deadline {
                break;
            }
            let datagram = &datagrams[i as usize % datagrams.len()];
            let started = Instant::now();
            if let Err(e) = client.send(datagram) {
                result = Err(anyhow::Error::from(e).context("send"));
                break;
            }
            let reply = client.recv_reply(&mut buf);
            let elapsed_ns = started.elapsed().as_nanos();
            let n = match reply {
                Ok(n) => n,
                Err(e) if is_transient(&e) => {
                    measured.lost += 1;
                    continue;
                }
                Err(e) => {
                    result = Err(anyhow::Error::from(e).context("receive"));
                    break;
                }
            };
            let expected = match server {
                Server::Echo => datagram.as_slice(),
                Server::Admit => expected_admit,
            };
            if &buf[..n] != expected {
                measured.wrong += 1;
            }
            if i >= warmup {
                let ns = u64::try_from(elapsed_ns).unwrap_or(u64::MAX);
                measured.histogram.saturating_record(ns.max(1));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = server_thread.join();
        result
    })?;
    client.drain()?;
    Ok(())
}

/// Percentiles in ns.
struct Figures {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Figures {
    fn of(h: &Histogram<u64>) -> Figures {
        Figures {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn values(&self) -> [u64; 5] {
        [self.p50, self.p90, self.p99, self.p999, self.max]
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn signed_us(ns: i64) -> String {
    format!("{:+.1}", ns as f64 / 1000.0)
}

/// Binds the agent's socket for `transport` with the agent's default options.
fn bind(transport: Transport, dir: &Path) -> anyhow::Result<EventSocket> {
    let endpoint = match transport {
        Transport::Unix => Endpoint::Unix(dir.join("events.sock")),
        Transport::Udp => Endpoint::Udp("127.0.0.1:0".parse()?),
    };
    Ok(EventSocket::bind(
        &endpoint,
        &IngestConfig::default().socket,
    )?)
}

struct Case {
    transport: Transport,
    mode: RecvMode,
    echo: Measured,
    admit: Measured,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.count = 2_000;
        args.warmup = 200;
        args.rounds = 1;
    }
    ensure!(
        args.rounds >= 1 && args.count >= args.rounds,
        "--count must be ≥ --rounds ≥ 1"
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let now = tables_clock();
    let tables = Arc::new(Tables::new(
        TablesConfig::default(),
        FingerprintKey([7; 32]),
    ));
    for i in 0..args.calls {
        let call_id = format!("{i:016x}-running@10.0.0.2");
        let call = CallRef {
            call_id: call_id.as_bytes(),
            from_tag: None,
        };
        tables.apply(
            now,
            &Event::CallStart {
                call,
                emergency: false,
            },
        );
    }
    let calls_now = tables.usage().calls;
    ensure!(calls_now == args.calls, "the tables hold {calls_now} calls");
    // Licenses are judged by the wall clock (the tables clock is monotonic).
    let gate = Arc::new(license_gate(tollgate_ingest::wall_clock(), calls_now)?);
    let plan = gate.plan();
    let expected_admit = format!("{}\n", gate.decide(calls_now, false).as_reply());
    let pipeline = Pipeline {
        tables: Arc::clone(&tables),
        sequences: Arc::new(SequenceTracker::with_key(&FingerprintKey([8; 32]))),
        admission: Arc::new(LicenseAdmission {
            gate: Arc::clone(&gate),
            calls: {
                let tables = Arc::clone(&tables);
                Arc::new(move || tables.usage().calls)
            },
            denied: tollgate_license::DenialCounters::new(),
        }),
        observer: None,
        journal: None,
    };
    let datagrams: Vec<Vec<u8>> = (0..CALL_ID_COUNT)
        .map(|i| format!("admit {i:016x}-bench@10.0.0.1\n").into_bytes())
        .collect();

    let modes: &[RecvMode] = match args.mode {
        ModeArg::Block => &[RecvMode::Block],
        ModeArg::Spin => &[RecvMode::Spin],
        ModeArg::Both => &[RecvMode::Block, RecvMode::Spin],
    };
    // Two pollers on one CPU take turns at the scheduler's tick: milliseconds, not a figure.
    let same_cpu = args.server_cpu % cpus == args.client_cpu % cpus;
    let modes: Vec<RecvMode> = match (same_cpu, args.mode) {
        (true, ModeArg::Spin) => bail!("--mode spin needs the server and client on two CPUs"),
        (true, _) => vec![RecvMode::Block],
        (false, _) => modes.to_vec(),
    };
    let transports: Vec<Transport> = [Transport::Unix, Transport::Udp]
        .into_iter()
        .filter(|t| args.only.is_none_or(|o| o == *t))
        .collect();

    println!(
        "admit-bench: {} round trips per case in {} alternating round(s) after {} warm-up each; \
         server CPU {}, client CPU {} of {cpus}; {calls_now} calls running, plan {plan:?}, \
         reply {:?}",
        args.count,
        args.rounds,
        args.warmup,
        args.server_cpu % cpus,
        args.client_cpu % cpus,
        expected_admit.trim_end()
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    pin_to_cpu(args.client_cpu);
    let per_round = args.count / args.rounds;
    let mut cases = Vec::new();
    for &transport in &transports {
        for &mode in &modes {
            let socket = bind(transport, dir.path())?;
            let client = Client::connect(socket.endpoint(), dir.path(), mode)?;
            let setup = Setup {
                socket: &socket,
                client: &client,
                pipeline: &pipeline,
                mode,
                server_cpu: args.server_cpu,
                datagrams: &datagrams,
                expected_admit: expected_admit.as_bytes(),
                warmup: args.warmup,
                deadline: Instant::now() + Duration::from_secs_f64(args.max_seconds),
            };
            let mut case = Case {
                transport,
                mode,
                echo: Measured::new()?,
                admit: Measured::new()?,
            };
            for r in 0..args.rounds {
                let count = if r + 1 == args.rounds {
                    args.count - per_round * (args.rounds - 1)
                } else {
                    per_round
                };
                for (server, measured) in [
                    (Server::Echo, &mut case.echo),
                    (Server::Admit, &mut case.admit),
                ] {
                    round(&setup, server, count, measured)?;
                }
            }
            cases.push(case);
        }
    }

    println!(
        "{:<6} {:<6} {:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "socket",
        "mode",
        "server",
        "count",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "lost"
    );
    let mut failures = Vec::new();
    for case in &cases {
        let echo = Figures::of(&case.echo.histogram);
        let admit = Figures::of(&case.admit.histogram);
        for (server, figures, measured) in [
            (Server::Echo, &echo, &case.echo),
            (Server::Admit, &admit, &case.admit),
        ] {
            let [p50, p90, p99, p999, max] = figures.values().map(us);
            println!(
                "{:<6} {:<6} {:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}",
                case.transport.name(),
                mode_name(case.mode),
                server.name(),
                figures.count,
                p50,
                p90,
                p99,
                p999,
                max,
                measured.lost
            );
            if measured.wrong > 0 {
                failures.push(format!(
                    "{} {} {}: {} wrong replies",
                    case.transport.name(),
                    mode_name(case.mode),
                    server.name(),
                    measured.wrong
                ));
            }
            if figures.count == 0 {
                failures.push(format!(
                    "{} {} {}: nothing measured",
                    case.transport.name(),
                    mode_name(case.mode),
                    server.name()
                ));
            }
        }
        let delta = |i: usize| admit.values()[i] as i64 - echo.values()[i] as i64;
        println!(
            "{:<6} {:<6} {:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "",
            "",
            "admit-echo",
            "",
            signed_us(delta(0)),
            signed_us(delta(1)),
            signed_us(delta(2)),
            signed_us(delta(3)),
            signed_us(delta(4)),
        );
        if args.json {
            let case_json = |server: Server, f: &Figures, m: &Measured| {
                serde_json::json!({
                    "transport": case.transport.name(), "mode": mode_name(case.mode),
                    "server": server.name(), "count": f.count, "lost": m.lost, "wrong": m.wrong,
                    "p50_ns": f.p50, "p90_ns": f.p90, "p99_ns": f.p99, "p999_ns": f.p999,
                    "max_ns": f.max,
                })
            };
            println!("{}", case_json(Server::Echo, &echo, &case.echo));
            let mut json = case_json(Server::Admit, &admit, &case.admit);
            json["over_echo_p50_ns"] = delta(0).into();
            json["over_echo_p99_ns"] = delta(2).into();
            println!("{json}");
        }
    }
    for case in cases.iter().filter(|c| c.transport == Transport::Unix) {
        let p99 = Figures::of(&case.admit.histogram).p99;
        println!(
            "target: admit p99 ≤ 20 µs over the unix socket ({}): {} µs, {}",
            mode_name(case.mode),
            us(p99),
            if p99 <= 20_000 { "met" } else { "NOT met" }
        );
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}
