//! ingest-bench: the agent's receive loop (`tollgate_ingest::receive_loop`) against a bare
//! `recvmmsg` drain loop (`tollgate_ingest::drain_loop`) on the same socket type, the same
//! datagrams and the same receive mode, alternating in one run. See README.md.
//!
//! Two methods:
//! - **full queue** (the receiver's own cost): a sender fills the socket's queue with N
//!   datagrams while nobody reads, then the receiver drains exactly those N, timed from the
//!   first receive to the last. The sender is idle during the measurement, so the figure is
//!   what one receiving core can do.
//! - **live**: a sender on the other core sends as fast as it can for a fixed time while the
//!   receiver reads. On loopback the kernel's receive path runs on the sender's core, so on
//!   a 2-core machine this measures the pair, usually sender-bound.
//!
//! As root the tool moves itself into a fresh network namespace so it can raise
//! `net.unix.max_dgram_qlen` there (a unix queue must hold N datagrams) without touching
//! the host, and uses `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` for large enough buffers.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
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
    /// full-queue, live, or both.
    #[arg(long, default_value = "both")]
    method: String,
    /// Datagrams per full-queue fill (single-event cases; batched cases use a quarter).
    #[arg(long, default_value_t = 200_000)]
    fill: usize,
    /// Seconds per live phase.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Alternating drain/agent pairs per case (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Small and short (CI): proves the tool works; not for reporting.
    #[arg(long)]
    quick: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Datagrams per recvmmsg.
    #[arg(long, default_value_t = 64)]
    recv_batch: usize,
    /// Receivers sleep in the kernel when the queue is empty (the agent's default) instead
    /// of spinning (`[ingest] busy_poll`).
    #[arg(long)]
    block: bool,
    /// Stay in the current network namespace (needs max_dgram_qlen raised by hand).
    #[arg(long)]
    no_netns: bool,
    /// Print the results as JSON lines too.
    #[arg(long)]
    json: bool,
    /// Journal every batch as the agent does (`[state]`, crash-exact state): a journal
    /// directory in the temp dir, synced every this many ms (the agent's default is 1000;
    /// 0 syncs every batch). Compare a run with and one without.
    #[arg(long)]
    journal_fsync_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Payload {
    /// One text event per datagram: `call-start <id> tag=…` then `call-stop <id> tag=…`.
    SingleText,
    /// Binary datagrams of start/stop pairs, up to this many bytes each.
    BatchedBinary(usize),
}

struct Case {
    name: &'static str,
    transport: Transport,
    payload: Payload,
}

const CASES: [Case; 6] = [
    Case {
        name: "udp single-event text",
        transport: Transport::Udp,
        payload: Payload::SingleText,
    },
    Case {
        name: "udp batched binary 1400",
        transport: Transport::Udp,
        payload: Payload::BatchedBinary(1400),
    },
    Case {
        name: "udp batched binary 8192",
        transport: Transport::Udp,
        payload: Payload::BatchedBinary(8192),
    },
    Case {
        name: "unix single-event text",
        transport: Transport::Unix,
        payload: Payload::SingleText,
    },
    Case {
        name: "unix batched binary 1400",
        transport: Transport::Unix,
        payload: Payload::BatchedBinary(1400),
    },
    Case {
        name: "unix batched binary 8192",
        transport: Transport::Unix,
        payload: Payload::BatchedBinary(8192),
    },
];

/// Distinct calls in the sender's pool (each started, then stopped).
const CALL_POOL: usize = 1 << 16;

/// The datagrams a sender cycles through, and the events each carries (max).
fn datagrams(payload: Payload) -> (Vec<Vec<u8>>, u64) {
    let ids: Vec<String> = (0..CALL_POOL)
        .map(|i| format!("{i:016x}-bench@10.0.0.1"))
        .collect();
    match payload {
        Payload::SingleText => {
            let mut out = Vec::with_capacity(CALL_POOL * 2);
            for chunk in ids.chunks(64) {
                out.extend(
                    chunk
                        .iter()
                        .map(|id| format!("call-start {id} tag=ab12cd\n").into_bytes()),
                );
                out.extend(
                    chunk
                        .iter()
                        .map(|id| format!("call-stop {id} tag=ab12cd\n").into_bytes()),
                );
            }
            (out, 1)
        }
        Payload::BatchedBinary(size) => {
            let mut out = Vec::new();
            let mut enc = binary::Encoder::new(size);
            let mut per = 0u64;
            for chunk in ids.chunks(16) {
                let starts = chunk.iter().map(|id| (true, id));
                for (start, id) in starts.chain(chunk.iter().map(|id| (false, id))) {
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
                        let _ = enc.push(&ev);
                    }
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

fn setsockopt_int(fd: i32, name: i32, value: i32) {
    // SAFETY: a valid int option of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// A connected sender socket with a large send buffer.
fn sender_socket(target: &Endpoint) -> anyhow::Result<OwnedFd> {
    let fd: OwnedFd = match target {
        Endpoint::Udp(addr) => {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.connect(addr)?;
            s.into()
        }
        Endpoint::Unix(path) => {
            let s = UnixDatagram::unbound()?;
            s.connect(path)?;
            s.set_write_timeout(Some(Duration::from_millis(200)))?;
            s.into()
        }
    };
    setsockopt_int(fd.as_raw_fd(), libc::SO_SNDBUFFORCE, 512 << 20);
    Ok(fd)
}

/// Sends datagrams from `pool` with sendmmsg (64 per call) until `count` were sent or
/// `stop` is set. Returns how many were sent.
fn send_datagrams(fd: &OwnedFd, pool: &[Vec<u8>], count: Option<u64>, stop: &AtomicBool) -> u64 {
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
    let (mut sent, mut at) = (0u64, 0usize);
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| sent < c) {
        let want = count.map_or(BATCH, |c| ((c - sent) as usize).min(BATCH));
        let len = want.min(msgs.len() - at);
        // SAFETY: `msgs[at..at + len]` are initialised headers pointing into `pool`, which
        // outlives this call.
        let rc =
            unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr().add(at), len as u32, 0) };
        if rc > 0 {
            sent += rc as u64;
            at = (at + rc as usize) % msgs.len();
        }
    }
    sent
}

/// Runs one receiver (the drain loop when `pipeline` is None, else the agent's loop) on this
/// thread, pinned to CPU 0, while a watcher thread sets `stop` once `target` datagrams have
/// been received or `deadline` passes. Returns (datagrams, seconds from first receive).
fn receive_until(
    socket: &EventSocket,
    pipeline: Option<&Pipeline>,
    target: Option<u64>,
    duration: Duration,
    recv_batch: usize,
    mode: RecvMode,
) -> (u64, f64) {
    pin_to_cpu(0);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let stats = IngestStats::default();
    let thread_stats = stats.register();
    let started = Instant::now();
    let watcher = {
        let (stop, received, thread_stats) = (
            Arc::clone(&stop),
            Arc::clone(&received),
            Arc::clone(&thread_stats),
        );
        std::thread::spawn(move || {
            pin_to_cpu(1);
            loop {
                let n = received
                    .load(Ordering::Relaxed)
                    .max(thread_stats.datagrams());
                if target.is_some_and(|t| n >= t) || started.elapsed() >= duration {
                    stop.store(true, Ordering::Relaxed);
                    return started.elapsed().as_secs_f64();
                }
                // Sleep, not spin: a spinning watcher slows the receiver down when the two
                // vCPUs share a physical core (measured: up to 2x on batched datagrams).
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let mut batch = RecvBatch::new(recv_batch, 16 << 10);
    match pipeline {
        None => {
            drain_loop(socket, &mut batch, &stop, mode, &received);
        }
        Some(p) => {
            let drops = AtomicU64::new(0);
            let ctx = LoopContext {
                stats: &thread_stats,
                kernel_drops: &drops,
                stop: &stop,
                mode,
            };
            receive_loop(socket, p, &mut batch, &ctx);
        }
    }
    let elapsed = watcher.join().unwrap_or(duration.as_secs_f64());
    let n = received
        .load(Ordering::Relaxed)
        .max(stats.snapshot().totals.datagrams);
    (n, elapsed)
}

/// Empties the socket's queue (receives until one receive times out).
fn flush(socket: &EventSocket) {
    let mut b = RecvBatch::new(64, 16 << 10);
    while b.recv_mode(socket.raw_fd(), RecvMode::Block).is_ok() {}
}

/// Full-queue method: fill with `fill` datagrams, then time the drain. Datagrams per second.
fn full_queue_phase(
    socket: &EventSocket,
    pipeline: Option<&Pipeline>,
    pool: &[Vec<u8>],
    fill: u64,
    args: &Args,
    mode: RecvMode,
) -> anyhow::Result<f64> {
    let fd = sender_socket(socket.endpoint())?;
    let never = AtomicBool::new(false);
    let sent = send_datagrams(&fd, pool, Some(fill), &never);
    let (received, seconds) = receive_until(
        socket,
        pipeline,
        Some(sent),
        Duration::from_secs(30),
        args.recv_batch,
        mode,
    );
    if received < sent {
        eprintln!(
            "  {} of {sent} datagrams arrived: the queue was too small for the fill",
            received
        );
        flush(socket);
    }
    Ok(received as f64 / seconds)
}

/// Live method: a sender on CPU 1 for `seconds` while the receiver reads.
fn live_phase(
    socket: &EventSocket,
    pipeline: Option<&Pipeline>,
    pool: &Arc<Vec<Vec<u8>>>,
    args: &Args,
    mode: RecvMode,
) -> anyhow::Result<f64> {
    let fd = sender_socket(socket.endpoint())?;
    let stop_send = Arc::new(AtomicBool::new(false));
    let sender = {
        let (pool, stop) = (Arc::clone(pool), Arc::clone(&stop_send));
        std::thread::spawn(move || {
            pin_to_cpu(1);
            send_datagrams(&fd, &pool, None, &stop)
        })
    };
    let (received, seconds) = receive_until(
        socket,
        pipeline,
        None,
        Duration::from_secs_f64(args.seconds),
        args.recv_batch,
        mode,
    );
    stop_send.store(true, Ordering::Relaxed);
    let _ = sender.join();
    flush(socket);
    Ok(received as f64 / seconds)
}

/// The pipeline alone, no socket: `Pipeline::process` over the pool, `fill` datagrams, best
/// of five. Datagrams per second.
fn in_process(pipeline: &Pipeline, pool: &[Vec<u8>], fill: u64) -> f64 {
    pin_to_cpu(0);
    let mut stats = tollgate_ingest::LocalStats::default();
    let mut reply = Vec::new();
    let now = tollgate_ingest::tables_clock();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for d in pool.iter().cycle().take(fill as usize) {
                pipeline.process(now, d, &mut stats, &mut reply);
            }
            fill as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// As root: a private network namespace with loopback up and a long unix datagram queue.
fn private_netns() -> anyhow::Result<()> {
    // SAFETY: unshare affects only this process; no other threads exist yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    // SAFETY: an ioctl on a fresh datagram socket with a zeroed, named ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        libc::close(fd);
        if rc != 0 {
            anyhow::bail!("bring lo up: {}", std::io::Error::last_os_error());
        }
    }
    std::fs::write("/proc/sys/net/unix/max_dgram_qlen", "1048576")
        .context("raise max_dgram_qlen")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 0.3;
        args.runs = 1;
        args.fill = 20_000;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let netns = if root && !args.no_netns {
        match private_netns() {
            Ok(()) => "private network namespace".to_owned(),
            Err(e) => format!("host namespace ({e})"),
        }
    } else {
        "host namespace".to_owned()
    };
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let mode = if args.block {
        RecvMode::Block
    } else {
        RecvMode::Spin
    };
    println!(
        "ingest-bench: {netns}, net.unix.max_dgram_qlen {}, net.core.rmem_max {}, recv_batch {}, receive mode {mode:?}, {} run(s), cpus {}",
        read("/proc/sys/net/unix/max_dgram_qlen"),
        read("/proc/sys/net/core/rmem_max"),
        args.recv_batch,
        args.runs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    let methods: Vec<&str> = match args.method.as_str() {
        "both" => vec!["full-queue", "live"],
        "all" => vec!["in-process", "full-queue", "live"],
        m @ ("full-queue" | "live" | "in-process") => vec![m],
        other => {
            anyhow::bail!("--method {other}: expected full-queue, live, in-process, both or all")
        }
    };
    for method in methods {
        println!("\n{method}:");
        println!(
            "{:<26} {:>14} {:>14} {:>7} {:>16}",
            "case", "drain dgram/s", "agent dgram/s", "ratio", "agent events/s"
        );
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
                    receive_buffer_bytes: 1 << 30,
                    unix_mode: 0o600,
                },
            )?;
            let pipeline = Pipeline {
                tables: Arc::new(Tables::new(
                    TablesConfig::default(),
                    FingerprintKey([7; 32]),
                )),
                sequences: Arc::new(SequenceTracker::default()),
                admission: Arc::new(AdmitAll),
                observer: None,
                journal: match args.journal_fsync_ms {
                    Some(ms) => Some(Arc::new(tollgate_ingest::Journal::open(
                        &dir.path()
                            .join(format!("journal-{}", case.name.replace(' ', "_"))),
                        1,
                        7,
                        0,
                        std::time::Duration::from_millis(ms),
                    )?)),
                    None => None,
                },
            };
            // The agent's journal-sync thread, when journalling with an interval.
            let _syncer = pipeline
                .journal
                .clone()
                .filter(|_| args.journal_fsync_ms != Some(0))
                .map(|j| {
                    let every =
                        std::time::Duration::from_millis(args.journal_fsync_ms.unwrap_or(1000));
                    std::thread::spawn(move || {
                        // Ends with the process.
                        loop {
                            std::thread::sleep(every);
                            j.sync();
                        }
                    })
                });
            let fill = match case.payload {
                Payload::SingleText => args.fill,
                Payload::BatchedBinary(size) => args.fill * 100 / size.max(100),
            } as u64;
            let (mut drain, mut agent, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            if method == "in-process" {
                let per = in_process(&pipeline, &pool, fill);
                println!(
                    "{:<26} {:>14} {:>14.0} {:>7} {:>16.0}   ({:.1} ns per datagram, {:.1} ns per event, no socket)",
                    case.name,
                    "-",
                    per,
                    "-",
                    per * events_per_datagram as f64,
                    1e9 / per,
                    1e9 / per / events_per_datagram as f64
                );
                continue;
            }
            for _ in 0..args.runs {
                let (d, a) = if method == "live" {
                    (
                        live_phase(&socket, None, &pool, &args, mode)?,
                        live_phase(&socket, Some(&pipeline), &pool, &args, mode)?,
                    )
                } else {
                    (
                        full_queue_phase(&socket, None, &pool, fill, &args, mode)?,
                        full_queue_phase(&socket, Some(&pipeline), &pool, fill, &args, mode)?,
                    )
                };
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
                        "method": method, "case": case.name, "drain_datagrams_per_s": d,
                        "agent_datagrams_per_s": a, "ratio": r,
                        "events_per_datagram": events_per_datagram, "agent_events_per_s": events,
                    })
                );
            }
        }
    }
    Ok(())
}
