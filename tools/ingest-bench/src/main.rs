//! ingest-bench: the agent's ingest loop vs a bare recvmmsg drain loop, same socket type,
//! same sender, alternating phases in one run. See README.md.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tollgate_events::{CallRef, Event, binary};
use tollgate_ingest::{
    AdmitAll, Endpoint, EventSocket, IngestStats, LoopContext, Pipeline, RecvBatch, RecvMode,
    SocketOptions, drain_loop, receive_loop,
};
use tollgate_usage::{FingerprintKey, SequenceTracker, Tables, TablesConfig};

#[derive(Debug, Parser)]
#[command(about = "Agent ingest loop vs bare recvmmsg drain loop, side by side")]
struct Args {
    /// Seconds per phase.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Alternating drain/agent phase pairs per case (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One short phase pair per case (CI).
    #[arg(long)]
    quick: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Datagrams per recvmmsg.
    #[arg(long, default_value_t = 64)]
    recv_batch: usize,
    /// Let both receivers sleep in the kernel when the queue is empty (the agent's default)
    /// instead of spinning. Sleeping receivers make a loopback sender pay a wake-up per
    /// datagram, so the sender, not the receiver, sets the rate.
    #[arg(long)]
    block: bool,
    /// Print the results as JSON lines too.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Payload {
    /// One text event per datagram: `call-start <id>` then `call-stop <id>`.
    SingleText,
    /// Binary datagrams of up to 1400 bytes, start/stop pairs.
    BatchedBinary,
}

struct Case {
    name: &'static str,
    transport: Transport,
    payload: Payload,
}

const CASES: [Case; 4] = [
    Case {
        name: "udp single-event text",
        transport: Transport::Udp,
        payload: Payload::SingleText,
    },
    Case {
        name: "udp batched binary",
        transport: Transport::Udp,
        payload: Payload::BatchedBinary,
    },
    Case {
        name: "unix single-event text",
        transport: Transport::Unix,
        payload: Payload::SingleText,
    },
    Case {
        name: "unix batched binary",
        transport: Transport::Unix,
        payload: Payload::BatchedBinary,
    },
];

/// Distinct calls in the sender's pool (each started, then stopped).
const CALL_POOL: usize = 1 << 16;

fn datagrams(payload: Payload) -> (Vec<Vec<u8>>, u64) {
    let ids: Vec<String> = (0..CALL_POOL)
        .map(|i| format!("{i:016x}-bench@10.0.0.1"))
        .collect();
    match payload {
        Payload::SingleText => {
            let mut out = Vec::with_capacity(CALL_POOL * 2);
            for chunk in ids.chunks(64) {
                for id in chunk {
                    out.push(format!("call-start {id} tag=ab12cd\n").into_bytes());
                }
                for id in chunk {
                    out.push(format!("call-stop {id} tag=ab12cd\n").into_bytes());
                }
            }
            (out, 1)
        }
        Payload::BatchedBinary => {
            let mut out = Vec::new();
            let mut enc = binary::Encoder::new(1400);
            let mut per = 0u64;
            let events = ids.chunks(16).flat_map(|chunk| {
                let starts = chunk.iter().map(|id| (true, id));
                let stops = chunk.iter().map(|id| (false, id));
                starts.chain(stops).collect::<Vec<_>>()
            });
            for (start, id) in events {
                let call = CallRef {
                    call_id: id.as_bytes(),
                    from_tag: Some(b"ab12cd"),
                };
                let ev = if start {
                    Event::CallStart {
                        call,
                        emergency: false,
                    }
                } else {
                    Event::CallStop { call }
                };
                if enc.push(&ev).is_err() {
                    per = per.max(enc.event_count() as u64);
                    out.push(enc.as_bytes().to_vec());
                    enc.reset(None);
                    enc.push(&ev).ok();
                }
            }
            if !enc.is_empty() {
                out.push(enc.as_bytes().to_vec());
            }
            (out, per)
        }
    }
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

/// Sends the pool round and round with `sendmmsg` (64 datagrams per call, so the sender
/// outpaces the receiver) until `stop`, counting datagrams sent.
fn sender(target: Endpoint, pool: Arc<Vec<Vec<u8>>>, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    pin_to_cpu(1);
    let fd: std::os::fd::OwnedFd = match &target {
        Endpoint::Udp(addr) => {
            match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.connect(addr).map(|()| s)) {
                Ok(s) => s.into(),
                Err(_) => return,
            }
        }
        Endpoint::Unix(path) => {
            match UnixDatagram::unbound().and_then(|s| s.connect(path).map(|()| s)) {
                // Blocking, with a timeout: the sender waits while the receiver's queue is full.
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(Duration::from_millis(50)));
                    s.into()
                }
                Err(_) => return,
            }
        }
    };
    const BATCH: usize = 64;
    let mut iovecs: Vec<libc::iovec> = pool
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: a zeroed msghdr is valid; it points at one iovec of the pool.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();
    let mut n = 0u64;
    let mut at = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let len = BATCH.min(msgs.len() - at);
        // SAFETY: `msgs[at..at + len]` are initialised headers pointing into `pool`, which
        // outlives this loop.
        let rc = unsafe {
            libc::sendmmsg(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                msgs.as_mut_ptr().add(at),
                len as u32,
                0,
            )
        };
        if rc > 0 {
            n += rc as u64;
            at = (at + rc as usize) % msgs.len();
        }
    }
    sent.store(n, Ordering::Relaxed);
}

struct Phase {
    datagrams_per_s: f64,
}

fn run_phase(
    socket: &EventSocket,
    pipeline: Option<&Pipeline>,
    pool: &Arc<Vec<Vec<u8>>>,
    seconds: f64,
    recv_batch: usize,
    mode: RecvMode,
) -> anyhow::Result<Phase> {
    let stop_recv = Arc::new(AtomicBool::new(false));
    let stop_send = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let send_thread = {
        let (t, p, s, c) = (
            socket.endpoint().clone(),
            Arc::clone(pool),
            Arc::clone(&stop_send),
            Arc::clone(&sent),
        );
        std::thread::spawn(move || sender(t, p, s, c))
    };
    pin_to_cpu(0);
    let mut batch = RecvBatch::new(recv_batch, 2048);
    // Warm up briefly, then measure a fixed wall-clock window.
    let timer = {
        let stop = Arc::clone(&stop_recv);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let received = match pipeline {
        None => drain_loop(socket, &mut batch, &stop_recv, mode).0,
        Some(p) => {
            let stats = IngestStats::default();
            let thread_stats = stats.register();
            let drops = AtomicU64::new(0);
            let ctx = LoopContext {
                stats: &thread_stats,
                kernel_drops: &drops,
                stop: &stop_recv,
                mode,
            };
            receive_loop(socket, p, &mut batch, &ctx);
            stats.snapshot().totals.datagrams
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    stop_send.store(true, Ordering::Relaxed);
    let _ = timer.join();
    let _ = send_thread.join();
    // Drain what is left so the next phase starts from an empty queue: once the sender has
    // stopped, a receive times out (RECV_TIMEOUT) as soon as the queue is empty.
    let mut leftover = RecvBatch::new(recv_batch, 2048);
    while leftover.recv(socket.raw_fd()).is_ok() {}
    if std::env::var_os("INGEST_BENCH_DEBUG").is_some() {
        let sent = sent.load(Ordering::Relaxed);
        eprintln!("  phase: sent {sent} received {received} in {elapsed:.2}s");
    }
    Ok(Phase {
        datagrams_per_s: received as f64 / elapsed,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 0.5;
        args.runs = 1;
    }
    let qlen = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").unwrap_or_default();
    let rmem = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default();
    println!(
        "ingest-bench: {} s per phase, {} run(s), recv_batch {}, cpus {}, net.unix.max_dgram_qlen {}, net.core.rmem_max {}",
        args.seconds,
        args.runs,
        args.recv_batch,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        qlen.trim(),
        rmem.trim()
    );
    println!(
        "{:<26} {:>14} {:>14} {:>7} {:>16}",
        "case", "drain dgram/s", "agent dgram/s", "ratio", "agent events/s"
    );
    let mode = if args.block {
        RecvMode::Block
    } else {
        RecvMode::Spin
    };
    let dir = tempfile::tempdir().context("temp dir")?;
    for case in CASES
        .iter()
        .filter(|c| args.only.as_deref().is_none_or(|o| c.name.contains(o)))
    {
        let (pool, events_per_datagram) = datagrams(case.payload);
        let pool = Arc::new(pool);
        let endpoint = match case.transport {
            Transport::Udp => Endpoint::Udp("127.0.0.1:0".parse()?),
            Transport::Unix => Endpoint::Unix(PathBuf::from(dir.path()).join("bench.sock")),
        };
        let socket = EventSocket::bind(
            &endpoint,
            &SocketOptions {
                receive_buffer_bytes: 8 << 20,
                unix_mode: 0o600,
            },
        )?;
        let tables = Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([7; 32]),
        ));
        let pipeline = Pipeline {
            tables,
            sequences: Arc::new(SequenceTracker::default()),
            admission: Arc::new(AdmitAll),
            observer: None,
        };
        let (mut drain, mut agent, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let d = run_phase(&socket, None, &pool, args.seconds, args.recv_batch, mode)?
                .datagrams_per_s;
            let a = run_phase(
                &socket,
                Some(&pipeline),
                &pool,
                args.seconds,
                args.recv_batch,
                mode,
            )?
            .datagrams_per_s;
            drain.push(d);
            agent.push(a);
            ratios.push(if d > 0.0 { a / d } else { 0.0 });
        }
        let (d, a, r) = (median(drain), median(agent), median(ratios));
        let events = a * events_per_datagram as f64;
        println!(
            "{:<26} {:>14.0} {:>14.0} {:>7.3} {:>16.0}",
            case.name, d, a, r, events
        );
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "case": case.name, "drain_datagrams_per_s": d, "agent_datagrams_per_s": a,
                    "ratio": r, "events_per_datagram": events_per_datagram, "agent_events_per_s": events,
                })
            );
        }
    }
    Ok(())
}
