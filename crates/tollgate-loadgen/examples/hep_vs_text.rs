//! End-to-end ingest of mirrored SIP (HEPv3) against the native text protocol: the same
//! flood of calls, sent by the loadgen over loopback UDP to the agent's own receive code
//! (`tollgate_ingest::Ingest` for text, `tollgate_ingest::HepIngest` for HEP, in this
//! process, on the agent's default settings), one format after the other.
//!
//! Per format it prints what the sender achieved (calls/s, datagrams/s), what the receiver
//! got (datagrams, kernel drops), the receiving thread's CPU time per call (from
//! `/proc/self/task/*/stat`, 10 ms ticks), and whether the tables ended with exactly the
//! report's counts.
//!
//! ```text
//! cargo run --release -p tollgate-loadgen --example hep_vs_text -- --duration 5 --runs 3
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Parser;
use tollgate_ingest::{
    AdmitAll, Endpoint, HepConfig, HepIngest, Ingest, IngestConfig, Pipeline, StatsSnapshot,
};
use tollgate_loadgen::{Format, LoadgenArgs, Mode, Report, Target};
use tollgate_usage::{FingerprintKey, SequenceTracker, Tables, TablesConfig};

#[derive(Parser)]
struct Cli {
    /// Seconds of flood per format and run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Runs per format (alternating); the table shows each.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Calls kept open during the flood.
    #[arg(long, default_value_t = 1000)]
    flood_window: u32,
    /// Cap on datagrams per second (default: as fast as the socket takes them).
    #[arg(long)]
    rate: Option<f64>,
}

enum Receiver {
    Text(Ingest),
    Hep(HepIngest),
}

impl Receiver {
    fn start(format: Format, pipeline: Pipeline) -> (Self, std::net::SocketAddr) {
        let any = "127.0.0.1:0".parse().unwrap();
        match format {
            Format::Hep => {
                let hep = HepIngest::start(&HepConfig::new(any), pipeline).expect("start hep");
                let addr = hep.local_addr();
                (Receiver::Hep(hep), addr)
            }
            _ => {
                let ingest =
                    Ingest::start(&[Endpoint::Udp(any)], &IngestConfig::default(), pipeline)
                        .expect("start ingest");
                let Endpoint::Udp(addr) = ingest.endpoints()[0] else {
                    unreachable!()
                };
                (Receiver::Text(ingest), addr)
            }
        }
    }

    fn stats(&self) -> StatsSnapshot {
        match self {
            Receiver::Text(i) => i.stats().snapshot(),
            Receiver::Hep(h) => h.stats().snapshot(),
        }
    }

    fn thread_name(&self) -> &'static str {
        match self {
            Receiver::Text(_) => "ingest-0",
            Receiver::Hep(_) => "hep-0",
        }
    }

    fn shutdown(self) {
        match self {
            Receiver::Text(i) => i.shutdown(),
            Receiver::Hep(h) => h.shutdown(),
        }
    }
}

/// CPU time (user + system) of this process's thread named `name`, in seconds.
fn thread_cpu_s(name: &str) -> f64 {
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let utime: f64 = fields[11].parse().unwrap_or(f64::NAN);
        let stime: f64 = fields[12].parse().unwrap_or(f64::NAN);
        return (utime + stime) / ticks_per_s;
    }
    f64::NAN
}

struct Row {
    format: Format,
    report: Report,
    received: u64,
    kernel_drops: u64,
    cpu_s: f64,
    exact: bool,
}

fn run_one(cli: &Cli, format: Format, run: usize) -> Row {
    let tables = Arc::new(Tables::new(
        TablesConfig::default(),
        FingerprintKey([7; 32]),
    ));
    let pipeline = Pipeline {
        tables: Arc::clone(&tables),
        sequences: Arc::new(SequenceTracker::with_key(&FingerprintKey([8; 32]))),
        admission: Arc::new(AdmitAll),
        observer: None,
        journal: None,
    };
    let (receiver, addr) = Receiver::start(format, pipeline);
    let args = LoadgenArgs {
        target: Target::Udp(addr),
        format,
        mode: Mode::Flood,
        flood_window: cli.flood_window,
        duration: cli.duration,
        rate: cli.rate,
        seed: Some(run as u64 + 1),
        sender_id: Some(format!("bench-{run}")),
        ..LoadgenArgs::default()
    };
    // Let the receive thread start and name itself.
    std::thread::sleep(Duration::from_millis(50));
    let cpu_before = thread_cpu_s(receiver.thread_name());
    let report = tollgate_loadgen::run(&args, &AtomicBool::new(false)).expect("loadgen run");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = receiver.stats();
    while stats.totals.datagrams + stats.kernel_drops < report.datagrams_sent
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
        stats = receiver.stats();
    }
    let cpu_s = thread_cpu_s(receiver.thread_name()) - cpu_before;
    let usage = tables.usage();
    let exact = usage.calls == report.expected_active_calls;
    receiver.shutdown();
    Row {
        format,
        received: stats.totals.datagrams,
        kernel_drops: stats.kernel_drops,
        report,
        cpu_s,
        exact,
    }
}

fn main() {
    let cli = Cli::parse();
    println!(
        "| format | calls/s sent | datagrams/s sent | bytes/call | received | kernel drops | receiver CPU | receiver CPU per call | counts exact |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for run in 0..cli.runs {
        for format in [Format::Text, Format::Hep] {
            let row = run_one(&cli, format, run);
            let r = &row.report;
            let calls_per_s = r.calls_started as f64 / r.elapsed_s;
            let cpu_share = row.cpu_s / r.elapsed_s;
            let cpu_per_call_us = row.cpu_s * 1e6 / r.calls_started.max(1) as f64;
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} % | {:.2} µs | {} |",
                row.format,
                calls_per_s,
                r.datagrams_per_s,
                r.bytes_sent as f64 / r.calls_started.max(1) as f64,
                row.received,
                row.kernel_drops,
                cpu_share * 100.0,
                cpu_per_call_us,
                if row.exact { "yes" } else { "NO" },
            );
        }
    }
}
