//! ingest-bench: the agent's receive loop (`tollgate_ingest::receive_loop`) against a bare
//! `recvmmsg` drain loop (`tollgate_ingest::drain_loop`) on the same socket, the same
//! datagrams, the same sender and the same receive mode, alternating in one run. See
//! README.md.
//!
//! Methods:
//! - **live**: a sender on the other CPU sends as fast as the kernel takes it (`sendmmsg`,
//!   with `UDP_SEGMENT` GSO over UDP) for a fixed time while the receiver, pinned to CPU 0,
//!   reads. Datagrams of one case all have the same size (a stop ends in `\r\n` to match
//!   its start's length), and the stream holds `--open-calls` calls open: call `i` starts
//!   and call `i - open_calls` stops.
//! - **full queue** (the receiver's own cost): the sender fills the socket's queue with N
//!   datagrams while nobody reads, then the receiver drains exactly those N, timed. The
//!   sender is idle during the measurement.
//! - **in process**: the pipeline over the same datagrams in receive batches, no socket.
//! - **table**: `Tables::apply` alone at several numbers of open calls (ns per event).
//! - **threads**: full queue with 1 and N `SO_REUSEPORT` sockets on one port, one pinned
//!   receiver each, all sharing one set of tables (events/s of the whole).
//! - **recv-cost**: the drain loop alone, bare vs asking for the source address vs also
//!   asking for an `SO_RXQ_OVFL` control message per datagram: what each request costs.
//!
//! The drain loop asks the kernel for nothing but the bytes (no source address, no control
//! message); the agent's loop asks for the source address (it may answer `admit`); both
//! print what they ask for.
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
use tollgate_usage::{FingerprintKey, Owner, SequenceTracker, Tables, TablesConfig, Timestamp};

/// Events per prefetch batch in `--method table`.
const TABLE_BATCH: usize = 16;
/// Events per grouped run in `--method table`: a receive batch of 64 binary datagrams of
/// 1400 bytes (30 events each).
const TABLE_RUN: usize = 1920;

#[derive(Debug, Parser)]
#[command(about = "Agent ingest loop vs bare recvmmsg drain loop, side by side")]
struct Args {
    /// live, full-queue, both (those two), in-process, table, threads, recv-cost, journal
    /// (journal on vs off, side by side), or all (live, full-queue, in-process).
    #[arg(long, default_value = "both")]
    method: String,
    /// Datagrams per full-queue fill (single-event cases; batched cases use fewer, by size).
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
    /// Calls the sender's stream holds open (call i starts, call i - open_calls stops).
    #[arg(long, default_value_t = 65_536)]
    open_calls: usize,
    /// Datagrams per UDP GSO send (`UDP_SEGMENT`); 0 sends each datagram on its own.
    #[arg(long, default_value_t = 64)]
    gso: usize,
    /// Open calls for `--method table`, comma-separated.
    #[arg(long, default_value = "65536,1000000,10000000")]
    table_sizes: String,
    /// Receiver counts for `--method threads`, comma-separated.
    #[arg(long, default_value = "1,2")]
    threads: String,
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
    /// Whether the agent loop asks for each UDP datagram's source address, as the agent
    /// does with `[ingest] udp_replies` (default true); `false` measures an agent whose
    /// queries go to `[ingest] admit_udp`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    udp_replies: bool,
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
    /// One text event per datagram: `call-start <id> tag=…\n` or `call-stop <id> tag=…\r\n`.
    SingleText,
    /// Binary datagrams of start/stop events, up to this many bytes each.
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

const FROM_TAG: &[u8] = b"ab12cd";

/// Call-IDs are fixed-width, so every start (and every stop) has the same length.
/// `sender` (0–9) keeps the calls of several senders apart.
fn call_id(i: usize, sender: usize) -> String {
    format!("{i:016x}-bench{}@10.0.0.1", sender % 10)
}

/// Same-size datagrams, back to back, that a sender cycles through: the event stream
/// `start(i), stop(i - open_calls)` over a cycle of `cycle` Call-IDs (mod `cycle`).
struct Pool {
    bytes: Vec<u8>,
    size: usize,
    count: usize,
    events_per_datagram: u64,
    open_calls: usize,
    cycle: usize,
    sender: usize,
}

impl Pool {
    fn new(payload: Payload, open_calls: usize, sender: usize) -> anyhow::Result<Self> {
        let open_calls = open_calls.max(1);
        let events_per_datagram = match payload {
            Payload::SingleText => 1,
            Payload::BatchedBinary(size) => {
                let mut enc = binary::Encoder::new(size);
                let id = call_id(0, sender);
                let mut n = 0;
                while enc.push(&start_event(&id, n % 2 == 0)).is_ok() {
                    n += 1;
                }
                // An even count: every datagram carries as many starts as stops.
                (n - n % 2).max(2)
            }
        };
        // The cycle is a whole number of datagrams and at least twice the window.
        let per_pairs = (events_per_datagram / 2).max(1);
        let cycle = (2 * open_calls).div_ceil(per_pairs) * per_pairs;
        let mut bytes = Vec::new();
        let mut sizes = std::collections::BTreeSet::new();
        let stream = (0..cycle).flat_map(|i| {
            [
                (true, call_id(i, sender)),
                (false, call_id((i + cycle - open_calls) % cycle, sender)),
            ]
        });
        match payload {
            Payload::SingleText => {
                for (start, id) in stream {
                    let line = if start {
                        format!("call-start {id} tag=ab12cd\n")
                    } else {
                        format!("call-stop {id} tag=ab12cd\r\n")
                    };
                    sizes.insert(line.len());
                    bytes.extend_from_slice(line.as_bytes());
                }
            }
            Payload::BatchedBinary(size) => {
                let mut enc = binary::Encoder::new(size);
                for (start, id) in stream {
                    enc.push(&start_event(&id, start))
                        .context("an event fits an empty datagram")?;
                    if enc.event_count() == events_per_datagram {
                        sizes.insert(enc.len());
                        bytes.extend_from_slice(enc.as_bytes());
                        enc.reset(None);
                    }
                }
                anyhow::ensure!(enc.is_empty(), "the stream fills whole datagrams");
            }
        }
        anyhow::ensure!(sizes.len() == 1, "datagram sizes differ: {sizes:?}");
        let size = *sizes.first().context("an empty pool")?;
        Ok(Pool {
            count: bytes.len() / size,
            bytes,
            size,
            events_per_datagram: events_per_datagram as u64,
            open_calls,
            cycle,
            sender,
        })
    }

    /// Starts the calls the stream expects open at its beginning (so the first stops stop
    /// something and the table holds `open_calls` from the first datagram on).
    fn preload(&self, tables: &Tables, now: Timestamp) {
        for i in self.cycle - self.open_calls..self.cycle {
            let id = call_id(i, self.sender);
            tables.apply(now, &start_event(&id, true));
        }
    }
}

fn start_event(id: &str, start: bool) -> Event<'_> {
    let call = CallRef {
        call_id: id.as_bytes(),
        from_tag: Some(FROM_TAG),
    };
    if start {
        Event::CallStart {
            call,
            emergency: false,
        }
    } else {
        Event::CallStop { call }
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

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: a valid int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
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
    let _ = setsockopt_int(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        512 << 20,
    );
    Ok(fd)
}

/// `UDP_SEGMENT` (linux/udp.h; not in the `libc` crate for glibc).
const UDP_SEGMENT: libc::c_int = 103;
/// Messages per `sendmmsg` call.
const SEND_MESSAGES_MAX: usize = 16;

/// A sender cycling through a pool: one message per datagram, or with GSO one message per
/// `segments` datagrams (one `UDP_SEGMENT` control message each).
struct Sender<'a> {
    fd: &'a OwnedFd,
    pool: &'a Pool,
    segments: usize,
    // Pointed to by `msgs`; never resized.
    _iovecs: Vec<libc::iovec>,
    _controls: Vec<[u64; 4]>,
    msgs: Vec<libc::mmsghdr>,
    /// Datagrams in each message.
    per_msg: Vec<usize>,
    at: usize,
}

impl<'a> Sender<'a> {
    /// `first` is the datagram to start from (rounded down to a message boundary).
    fn new(fd: &'a OwnedFd, pool: &'a Pool, segments: usize, first: usize) -> Self {
        let segments = segments.clamp(1, 64).min((65_000 / pool.size).max(1));
        let mut iovecs = Vec::new();
        let mut per_msg = Vec::new();
        let mut i = 0;
        while i < pool.count {
            let n = segments.min(pool.count - i);
            iovecs.push(libc::iovec {
                iov_base: pool.bytes[i * pool.size..].as_ptr() as *mut libc::c_void,
                iov_len: n * pool.size,
            });
            per_msg.push(n);
            i += n;
        }
        let cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as libc::size_t;
        let mut controls = vec![[0u64; 4]; if segments > 1 { iovecs.len() } else { 0 }];
        for c in &mut controls {
            // SAFETY: `c` is 32 bytes, 8-aligned: room for a cmsghdr and a u16.
            unsafe {
                let hdr = c.as_mut_ptr().cast::<libc::cmsghdr>();
                (*hdr).cmsg_level = libc::SOL_UDP;
                (*hdr).cmsg_type = UDP_SEGMENT;
                (*hdr).cmsg_len = cmsg_len;
                libc::CMSG_DATA(hdr)
                    .cast::<u16>()
                    .write_unaligned(pool.size as u16);
            }
        }
        let msgs = iovecs
            .iter_mut()
            .enumerate()
            .map(|(m, iov)| {
                // SAFETY: a zeroed msghdr is valid; it points at one iovec of the pool.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                if let Some(c) = controls.get_mut(m) {
                    hdr.msg_control = c.as_mut_ptr().cast();
                    // SAFETY: CMSG_SPACE is a pure computation.
                    hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as libc::size_t;
                }
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect::<Vec<_>>();
        let at = (first % pool.count.max(1)) / segments;
        Sender {
            fd,
            pool,
            segments,
            _iovecs: iovecs,
            _controls: controls,
            msgs,
            per_msg,
            at,
        }
    }

    /// Sends until `count` datagrams were sent (or a little more: whole messages) or `stop`
    /// is set. Returns how many datagrams were sent.
    fn run(&mut self, count: Option<u64>, stop: &AtomicBool) -> anyhow::Result<u64> {
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| sent < c) {
            let want_msgs = count.map_or(SEND_MESSAGES_MAX, |c| {
                ((c - sent) as usize).div_ceil(self.segments)
            });
            let len = want_msgs
                .min(SEND_MESSAGES_MAX)
                .min(self.msgs.len() - self.at);
            // SAFETY: `msgs[at..at + len]` are initialised headers pointing into the pool
            // and the controls, which outlive this call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    self.msgs.as_mut_ptr().add(self.at),
                    len as u32,
                    0,
                )
            };
            if rc > 0 {
                let rc = rc as usize;
                sent += self.per_msg[self.at..self.at + rc].iter().sum::<usize>() as u64;
                self.at = (self.at + rc) % self.msgs.len();
            } else if rc < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut => {}
                    // A full socket buffer on the way (loopback): try again.
                    _ if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    _ => {
                        return Err(e).context(format!(
                            "sendmmsg ({} datagrams of {} B per message)",
                            self.segments, self.pool.size
                        ));
                    }
                }
            }
        }
        Ok(sent)
    }
}

/// Whether UDP GSO works here: one GSO send of two segments to a throwaway socket.
fn gso_works() -> bool {
    let Ok(rx) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let Ok(pool) = Pool::new(Payload::SingleText, 4, 0) else {
        return false;
    };
    let Ok(addr) = rx.local_addr() else {
        return false;
    };
    let Ok(fd) = sender_socket(&Endpoint::Udp(addr)) else {
        return false;
    };
    let mut s = Sender::new(&fd, &pool, 2, 0);
    s.run(Some(2), &AtomicBool::new(false)).is_ok()
}

/// Which loop a phase runs.
#[derive(Clone, Copy)]
enum Receiver<'a> {
    /// The bare drain loop, with the batch it asks the kernel with.
    Drain {
        source: bool,
    },
    Agent(&'a Pipeline),
}

/// Whether the agent loop asks for source addresses on UDP (`--udp-replies`, the agent's
/// `[ingest] udp_replies`); on the unix socket it always does.
static AGENT_UDP_SOURCE: AtomicBool = AtomicBool::new(true);

fn recv_batch_for(receiver: Receiver<'_>, recv_batch: usize, udp: bool) -> RecvBatch {
    let agent_source = !udp || AGENT_UDP_SOURCE.load(Ordering::Relaxed);
    match receiver {
        Receiver::Drain { source: false } => RecvBatch::without_source(recv_batch, 16 << 10),
        Receiver::Agent(_) if !agent_source => RecvBatch::without_source(recv_batch, 16 << 10),
        // The agent's loop asks for source addresses: `admit` is answered to the sender.
        Receiver::Drain { source: true } | Receiver::Agent(_) => {
            RecvBatch::new(recv_batch, 16 << 10)
        }
    }
}

/// Runs one receiver on this thread, pinned to `cpu`, while a watcher thread sets `stop`
/// once `target` datagrams have been received or `duration` passes. Returns (datagrams,
/// seconds).
fn receive_until(
    socket: &EventSocket,
    receiver: Receiver<'_>,
    target: Option<u64>,
    duration: Duration,
    recv_batch: usize,
    mode: RecvMode,
    cpu: usize,
) -> (u64, f64) {
    pin_to_cpu(cpu);
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
    let udp = matches!(socket.endpoint(), Endpoint::Udp(_));
    let mut batch = recv_batch_for(receiver, recv_batch, udp);
    match receiver {
        Receiver::Drain { .. } => {
            drain_loop(socket, &mut batch, &stop, mode, &received);
        }
        Receiver::Agent(p) => {
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
    let mut b = RecvBatch::without_source(64, 16 << 10);
    while b.recv_mode(socket.raw_fd(), RecvMode::Block).is_ok() {}
}

/// The phase's settings that do not change between runs.
struct Setup<'a> {
    args: &'a Args,
    mode: RecvMode,
    gso: usize,
}

impl Setup<'_> {
    fn segments(&self, transport: Transport) -> usize {
        if transport == Transport::Udp {
            self.gso
        } else {
            1
        }
    }
}

/// Full-queue method: fill with `fill` datagrams, then time the drain. Datagrams per second.
fn full_queue_phase(
    socket: &EventSocket,
    transport: Transport,
    receiver: Receiver<'_>,
    pool: &Pool,
    fill: u64,
    setup: &Setup<'_>,
) -> anyhow::Result<f64> {
    let fd = sender_socket(socket.endpoint())?;
    let sent = Sender::new(&fd, pool, setup.segments(transport), 0)
        .run(Some(fill), &AtomicBool::new(false))?;
    let (received, seconds) = receive_until(
        socket,
        receiver,
        Some(sent),
        Duration::from_secs(30),
        setup.args.recv_batch,
        setup.mode,
        0,
    );
    if received < sent {
        eprintln!("  {received} of {sent} datagrams arrived: the queue was too small for the fill");
        flush(socket);
    }
    Ok(received as f64 / seconds)
}

/// Live method: a sender on CPU 1 for `seconds` while the receiver reads on CPU 0.
/// Returns (datagrams/s received, datagrams/s sent).
fn live_phase(
    socket: &EventSocket,
    transport: Transport,
    receiver: Receiver<'_>,
    pool: &Arc<Pool>,
    setup: &Setup<'_>,
) -> anyhow::Result<(f64, f64)> {
    let fd = sender_socket(socket.endpoint())?;
    let stop_send = Arc::new(AtomicBool::new(false));
    let segments = setup.segments(transport);
    let sender = {
        let (pool, stop) = (Arc::clone(pool), Arc::clone(&stop_send));
        std::thread::spawn(move || {
            pin_to_cpu(1);
            Sender::new(&fd, &pool, segments, 0).run(None, &stop)
        })
    };
    let (received, seconds) = receive_until(
        socket,
        receiver,
        None,
        Duration::from_secs_f64(setup.args.seconds),
        setup.args.recv_batch,
        setup.mode,
        0,
    );
    stop_send.store(true, Ordering::Relaxed);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    flush(socket);
    Ok((received as f64 / seconds, sent as f64 / seconds))
}

/// The pipeline alone, no socket: the datagrams of the pool in batches of `recv_batch`, as
/// `receive_loop` hands them over (`Pipeline::process_pipelined`, then `finish` per batch),
/// `fill` datagrams, best of five. Datagrams per second.
fn in_process(pipeline: &Pipeline, pool: &Pool, fill: u64, recv_batch: usize) -> f64 {
    pin_to_cpu(0);
    let mut stats = tollgate_ingest::LocalStats::default();
    let mut reply = Vec::new();
    let now = tollgate_ingest::tables_clock();
    let datagrams: Vec<&[u8]> = pool.bytes.chunks_exact(pool.size).collect();
    let mut pending = tollgate_ingest::Pending::default();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let mut done = 0u64;
            for batch in datagrams.chunks(recv_batch.max(1)).cycle() {
                if done >= fill {
                    break;
                }
                for d in batch {
                    reply.clear();
                    pipeline.process_pipelined(now, d, &mut stats, &mut reply, &mut pending);
                }
                pipeline.finish(now, &mut pending, &mut stats);
                done += batch.len() as u64;
            }
            done as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn new_pipeline(args: &Args, dir: &std::path::Path, name: &str) -> anyhow::Result<Pipeline> {
    new_pipeline_with(args.journal_fsync_ms, dir, name)
}

/// A pipeline with a journal synced every `journal_fsync_ms` (`None`: no journal).
fn new_pipeline_with(
    journal_fsync_ms: Option<u64>,
    dir: &std::path::Path,
    name: &str,
) -> anyhow::Result<Pipeline> {
    Ok(Pipeline {
        tables: Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([7; 32]),
        )),
        sequences: Arc::new(SequenceTracker::with_key(&FingerprintKey([8; 32]))),
        admission: Arc::new(AdmitAll),
        observer: None,
        journal: match journal_fsync_ms {
            Some(ms) => Some(Arc::new(tollgate_ingest::Journal::open(
                &dir.join(format!("journal-{}", name.replace(' ', "_"))),
                1,
                7,
                0,
                Duration::from_millis(ms),
                // No checkpoints here: unbounded, so every batch is appended.
                u64::MAX,
                // Records are sealed with a keyed MAC, as the agent's are.
                [9; 32],
            )?)),
            None => None,
        },
    })
}

fn fill_for(args: &Args, payload: Payload) -> u64 {
    (match payload {
        Payload::SingleText => args.fill,
        Payload::BatchedBinary(size) => args.fill * 100 / size.max(100),
    }) as u64
}

fn endpoint_for(transport: Transport, dir: &std::path::Path) -> anyhow::Result<Endpoint> {
    Ok(match transport {
        Transport::Udp => Endpoint::Udp("127.0.0.1:0".parse()?),
        Transport::Unix => Endpoint::Unix(PathBuf::from(dir).join("bench.sock")),
    })
}

const BENCH_SOCKET: SocketOptions = SocketOptions {
    receive_buffer_bytes: 1 << 30,
    unix_mode: 0o600,
};

/// live / full-queue / in-process over the cases.
fn socket_methods(
    method: &str,
    args: &Args,
    setup: &Setup<'_>,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    println!("\n{method} ({} calls open in the stream):", args.open_calls);
    if method != "in-process" {
        let describe = |r, udp| recv_batch_for(r, args.recv_batch, udp).describe(setup.mode);
        println!(
            "  drain loop asks: {}",
            describe(Receiver::Drain { source: false }, true)
        );
        println!(
            "  agent loop asks: {} over udp (--udp-replies {}), {} over unix",
            describe(
                Receiver::Drain {
                    source: AGENT_UDP_SOURCE.load(Ordering::Relaxed)
                },
                true
            ),
            AGENT_UDP_SOURCE.load(Ordering::Relaxed),
            describe(Receiver::Drain { source: true }, false)
        );
    }
    println!(
        "{:<26} {:>14} {:>14} {:>7} {:>16} {:>11}",
        "case", "drain dgram/s", "agent dgram/s", "ratio", "agent events/s", "open calls"
    );
    for case in CASES
        .iter()
        .filter(|c| args.only.as_deref().is_none_or(|o| c.name.contains(o)))
    {
        let pool = Arc::new(Pool::new(case.payload, args.open_calls, 0)?);
        let socket = EventSocket::bind(&endpoint_for(case.transport, dir)?, &BENCH_SOCKET)?;
        let pipeline = new_pipeline(args, dir, case.name)?;
        pool.preload(&pipeline.tables, tollgate_ingest::tables_clock());
        // The agent's journal-sync thread, when journalling with an interval.
        let _syncer = pipeline
            .journal
            .clone()
            .filter(|_| args.journal_fsync_ms != Some(0))
            .map(|j| {
                let every = Duration::from_millis(args.journal_fsync_ms.unwrap_or(1000));
                std::thread::spawn(move || {
                    // Ends with the process.
                    loop {
                        std::thread::sleep(every);
                        j.sync();
                    }
                })
            });
        let per = pool.events_per_datagram as f64;
        if method == "in-process" {
            let rate = in_process(
                &pipeline,
                &pool,
                fill_for(args, case.payload),
                args.recv_batch,
            );
            println!(
                "{:<26} {:>14} {:>14.0} {:>7} {:>16.0} {:>11}   ({:.1} ns per datagram, {:.1} ns per event, no socket)",
                case.name,
                "-",
                rate,
                "-",
                rate * per,
                pipeline.tables.usage().calls,
                1e9 / rate,
                1e9 / rate / per
            );
            continue;
        }
        let (mut drain, mut agent, mut ratios, mut offered) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let (d, a) = if method == "live" {
                let (d, sent_d) = live_phase(
                    &socket,
                    case.transport,
                    Receiver::Drain { source: false },
                    &pool,
                    setup,
                )?;
                let (a, sent_a) = live_phase(
                    &socket,
                    case.transport,
                    Receiver::Agent(&pipeline),
                    &pool,
                    setup,
                )?;
                offered.push(sent_d.min(sent_a));
                (d, a)
            } else {
                let fill = fill_for(args, case.payload);
                (
                    full_queue_phase(
                        &socket,
                        case.transport,
                        Receiver::Drain { source: false },
                        &pool,
                        fill,
                        setup,
                    )?,
                    full_queue_phase(
                        &socket,
                        case.transport,
                        Receiver::Agent(&pipeline),
                        &pool,
                        fill,
                        setup,
                    )?,
                )
            };
            drain.push(d);
            agent.push(a);
            ratios.push(if d > 0.0 { a / d } else { 0.0 });
        }
        let (d, a, r) = (median(drain), median(agent), median(ratios));
        let open = pipeline.tables.usage().calls;
        println!(
            "{:<26} {:>14.0} {:>14.0} {:>7.3} {:>16.0} {:>11}",
            case.name,
            d,
            a,
            r,
            a * per,
            open
        );
        if method == "live" {
            println!(
                "{:<26} sender offered >= {:.0} dgram/s ({} B datagrams of {} events{})",
                "",
                median(offered),
                pool.size,
                pool.events_per_datagram,
                if setup.segments(case.transport) > 1 {
                    format!(", GSO {} per send", setup.segments(case.transport))
                } else {
                    String::new()
                }
            );
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "method": method, "case": case.name, "drain_datagrams_per_s": d,
                    "agent_datagrams_per_s": a, "ratio": r, "datagram_bytes": pool.size,
                    "events_per_datagram": pool.events_per_datagram, "agent_events_per_s": a * per,
                    "open_calls_at_end": open,
                })
            );
        }
    }
    Ok(())
}

/// The journal's cost side by side: per case, one agent loop without a journal and one
/// journalling every batch (synced every `--journal-fsync-ms`, default 1000, by a thread
/// like the agent's), full queue, alternating in one run (the order flips every run); the
/// ratio is the median of each run's on/off.
fn journal_method(args: &Args, setup: &Setup<'_>, dir: &std::path::Path) -> anyhow::Result<()> {
    let fsync_ms = args.journal_fsync_ms.unwrap_or(1000);
    println!(
        "\njournal on vs off (full queue, journal synced every {fsync_ms} ms, {} calls open in the stream):",
        args.open_calls
    );
    println!(
        "{:<26} {:>14} {:>14} {:>7} {:>16} {:>16} {:>11}",
        "case",
        "off dgram/s",
        "on dgram/s",
        "on/off",
        "off events/s",
        "on events/s",
        "journal B/ev"
    );
    for case in CASES
        .iter()
        .filter(|c| args.only.as_deref().is_none_or(|o| c.name.contains(o)))
    {
        let pool = Arc::new(Pool::new(case.payload, args.open_calls, 0)?);
        let socket = EventSocket::bind(&endpoint_for(case.transport, dir)?, &BENCH_SOCKET)?;
        let off = new_pipeline_with(None, dir, case.name)?;
        let on = new_pipeline_with(Some(fsync_ms), dir, case.name)?;
        let now = tollgate_ingest::tables_clock();
        pool.preload(&off.tables, now);
        pool.preload(&on.tables, now);
        let journal = on.journal.clone().context("journal")?;
        let _syncer = (fsync_ms > 0).then(|| {
            let j = Arc::clone(&journal);
            std::thread::spawn(move || {
                // Ends with the process.
                loop {
                    std::thread::sleep(Duration::from_millis(fsync_ms));
                    j.sync();
                }
            })
        });
        let fill = fill_for(args, case.payload);
        let (mut rates_off, mut rates_on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let phase = |p: &Pipeline| {
            full_queue_phase(
                &socket,
                case.transport,
                Receiver::Agent(p),
                &pool,
                fill,
                setup,
            )
        };
        for run in 0..args.runs {
            let (a, b) = if run % 2 == 0 {
                let a = phase(&off)?;
                (a, phase(&on)?)
            } else {
                let b = phase(&on)?;
                (phase(&off)?, b)
            };
            rates_off.push(a);
            rates_on.push(b);
            ratios.push(if a > 0.0 { b / a } else { 0.0 });
        }
        let per = pool.events_per_datagram as f64;
        let journalled_events = (args.runs as u64 * fill) as f64 * per;
        let bytes_per_event =
            journal.stats.bytes.load(Ordering::Relaxed) as f64 / journalled_events.max(1.0);
        let (a, b, r) = (median(rates_off), median(rates_on), median(ratios));
        let mac_ns = mac_ns_per_event(bytes_per_event, args.recv_batch as f64 * per);
        println!(
            "{:<26} {:>14.0} {:>14.0} {:>7.3} {:>16.0} {:>16.0} {:>11.1}   (MAC {:.2} ns/event = {:.1} % of an off event)",
            case.name,
            a,
            b,
            r,
            a * per,
            b * per,
            bytes_per_event,
            mac_ns,
            mac_ns * a * per / 1e7
        );
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "method": "journal", "case": case.name, "off_datagrams_per_s": a,
                    "on_datagrams_per_s": b, "ratio_on_off": r, "datagram_bytes": pool.size,
                    "events_per_datagram": pool.events_per_datagram,
                    "journal_bytes_per_event": bytes_per_event, "fsync_ms": fsync_ms,
                })
            );
        }
    }
    Ok(())
}

/// What sealing a record costs per event (`tollgate_usage::journal::MacChain::seal`, keyed
/// BLAKE3 over the record): a record of `events` events of `bytes_per_event` bytes each,
/// sealed over and over, best of five.
fn mac_ns_per_event(bytes_per_event: f64, events: f64) -> f64 {
    use tollgate_usage::journal::{MacChain, SEGMENT_HEADER_LEN};
    let len = (bytes_per_event * events).max(1.0) as usize;
    let mut record = vec![0x5au8; 12 + len];
    record[..4].copy_from_slice(&(len as u32).to_le_bytes());
    let chain = MacChain::new(&[9; 32], &[0; SEGMENT_HEADER_LEN]);
    let rounds = (50_000_000 / len).clamp(10, 100_000);
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(chain.seal(std::hint::black_box(&record)));
            }
            t.elapsed().as_nanos() as f64 / rounds as f64 / events.max(1.0)
        })
        .fold(f64::MAX, f64::min)
}

/// `Tables::apply` alone: `open` calls held open while call i starts and call i - open
/// stops, ns per event (Call-ID formatting included; it is measured alone too).
fn table_method(args: &Args) -> anyhow::Result<()> {
    println!(
        "\ntable (Tables::apply, start of call i + stop of call i - open, From-tag, 64 shards):"
    );
    println!(
        "{:>12} {:>14} {:>18} {:>12} {:>14} {:>14} {:>12} {:>11} {:>12}",
        "open calls",
        "ns/event",
        "batch+prefetch ns",
        "grouped ns",
        "id format ns",
        "events timed",
        "snapshot ms",
        "restore ms",
        "snap B/call"
    );
    pin_to_cpu(0);
    for open in args
        .table_sizes
        .split(',')
        .map(|s| s.trim().parse::<usize>())
    {
        let open = open.context("--table-sizes: numbers")?;
        let tables = Tables::new(
            TablesConfig {
                max_active_calls: (open as u64 * 2).max(1 << 20),
                ..TablesConfig::default()
            },
            FingerprintKey([7; 32]),
        );
        let cycle = 2 * open;
        let now = tollgate_ingest::tables_clock();
        let mut buf = *b"0000000000000000-bench@10.0.0.1";
        let mut id = |i: usize| -> [u8; 31] {
            let hex = b"0123456789abcdef";
            for (k, b) in buf[..16].iter_mut().enumerate() {
                *b = hex[(i >> (60 - 4 * k)) & 0xf];
            }
            buf
        };
        let apply = |tables: &Tables, i: usize, start: bool, id: &[u8; 31]| {
            let call = CallRef {
                call_id: id,
                from_tag: Some(FROM_TAG),
            };
            let ev = if start {
                Event::CallStart {
                    call,
                    emergency: false,
                }
            } else {
                Event::CallStop { call }
            };
            std::hint::black_box(tables.apply(now, &ev));
            i
        };
        for i in cycle - open..cycle {
            apply(&tables, i, true, &id(i));
        }
        let pairs = if args.quick { 50_000 } else { 2_000_000 }.max(open / 4);
        let mut at = 0usize;
        // Plain: one event after the other.
        let mut plain = f64::MAX;
        // Batched: the fingerprints of TABLE_BATCH events computed and their slots
        // prefetched, then the events applied (what the pipeline does per recvmmsg batch).
        let mut batched = f64::MAX;
        let mut grouped = f64::MAX;
        let mut scratch = tollgate_usage::GroupScratch::default();
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..pairs {
                let i = at % cycle;
                apply(&tables, i, true, &id(i));
                let j = (at + cycle - open) % cycle;
                apply(&tables, j, false, &id(j));
                at += 1;
            }
            plain = plain.min(t.elapsed().as_secs_f64() / (2 * pairs) as f64);
            let t = Instant::now();
            let mut ids = [[0u8; 31]; TABLE_BATCH];
            for _ in 0..pairs / (TABLE_BATCH / 2) {
                for k in 0..TABLE_BATCH / 2 {
                    ids[2 * k] = id((at + k) % cycle);
                    ids[2 * k + 1] = id((at + k + cycle - open) % cycle);
                }
                at += TABLE_BATCH / 2;
                let events: [Event<'_>; TABLE_BATCH] = std::array::from_fn(|k| {
                    let call = CallRef {
                        call_id: &ids[k],
                        from_tag: Some(FROM_TAG),
                    };
                    if k % 2 == 0 {
                        Event::CallStart {
                            call,
                            emergency: false,
                        }
                    } else {
                        Event::CallStop { call }
                    }
                });
                let prefetched = events.each_ref().map(|e| tables.prefetch(e));
                for (e, p) in events.iter().zip(prefetched) {
                    std::hint::black_box(tables.apply_prefetched(now, e, Owner::NONE, p));
                }
            }
            batched = batched.min(t.elapsed().as_secs_f64() / (2 * pairs) as f64);
            // Grouped: runs of TABLE_RUN events fingerprinted and prefetched, then applied
            // with one lock per shard (`Tables::apply_calls`), as the pipeline applies a
            // receive batch of binary datagrams.
            let t = Instant::now();
            let mut ids = vec![[0u8; 31]; TABLE_RUN];
            let mut ops = Vec::with_capacity(TABLE_RUN);
            for _ in 0..pairs / (TABLE_RUN / 2) {
                for k in 0..TABLE_RUN / 2 {
                    ids[2 * k] = id((at + k) % cycle);
                    ids[2 * k + 1] = id((at + k + cycle - open) % cycle);
                }
                at += TABLE_RUN / 2;
                ops.clear();
                for (k, call_id) in ids.iter().enumerate() {
                    let call = CallRef {
                        call_id,
                        from_tag: Some(FROM_TAG),
                    };
                    let event = if k % 2 == 0 {
                        Event::CallStart {
                            call,
                            emergency: false,
                        }
                    } else {
                        Event::CallStop { call }
                    };
                    ops.extend(tables.call_event(&event, Owner::NONE));
                }
                tables.apply_calls(now, &ops, &mut scratch, |_, outcome| {
                    std::hint::black_box(outcome);
                });
            }
            grouped = grouped.min(t.elapsed().as_secs_f64() / (2 * pairs) as f64);
        }
        anyhow::ensure!(
            tables.usage().calls == open as u64,
            "the table holds {} calls, not {open}",
            tables.usage().calls
        );
        // Snapshot cost at this size: the tables walked and encoded, as the agent's
        // checkpoint does (restore measured too: a restart).
        let t = Instant::now();
        let snapshot = tables.snapshot(now);
        let bytes = tollgate_usage::encode_snapshot(&snapshot);
        let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
        let restored = Tables::new(
            TablesConfig {
                max_active_calls: (open as u64 * 2).max(1 << 20),
                // Not the writer's seed: the agent draws a fresh one at every start.
                map_seed: tollgate_usage::MAP_SEED_DEFAULT ^ 1,
                ..TablesConfig::default()
            },
            FingerprintKey([7; 32]),
        );
        let t = Instant::now();
        let decoded = tollgate_usage::decode_snapshot(&bytes)?;
        restored.restore(now, &decoded)?;
        let restore_ms = t.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(restored.usage().calls == open as u64, "restore lost calls");
        drop((restored, decoded, snapshot));
        let t = Instant::now();
        let mut sink = 0u8;
        for i in 0..2 * pairs {
            sink ^= std::hint::black_box(id(i))[3];
        }
        std::hint::black_box(sink);
        let format_ns = t.elapsed().as_secs_f64() * 1e9 / (2 * pairs) as f64;
        println!(
            "{:>12} {:>14.1} {:>18.1} {:>12.1} {:>14.1} {:>14} {:>12.1} {:>11.1} {:>12.1}",
            open,
            plain * 1e9,
            batched * 1e9,
            grouped * 1e9,
            format_ns,
            2 * pairs,
            snapshot_ms,
            restore_ms,
            bytes.len() as f64 / open as f64,
        );
        if args.json {
            println!(
                "{}",
                serde_json::json!({"method": "table", "open_calls": open, "ns_per_event": plain * 1e9,
                    "ns_per_event_batched_prefetch": batched * 1e9,
                    "ns_per_event_grouped": grouped * 1e9, "id_format_ns": format_ns,
                    "snapshot_ms": snapshot_ms, "restore_ms": restore_ms})
            );
        }
    }
    Ok(())
}

/// Finds, for each socket of a `SO_REUSEPORT` group, a sender socket the kernel steers to it.
fn senders_per_socket(group: &[EventSocket]) -> anyhow::Result<Vec<OwnedFd>> {
    let mut found: Vec<Option<OwnedFd>> = group.iter().map(|_| None).collect();
    let mut batch = RecvBatch::without_source(8, 64);
    for _ in 0..1000 {
        if found.iter().all(Option::is_some) {
            break;
        }
        let fd = sender_socket(group[0].endpoint())?;
        // SAFETY: sends one byte from a valid buffer on a connected socket.
        unsafe { libc::send(fd.as_raw_fd(), b"\n".as_ptr().cast(), 1, 0) };
        let deadline = Instant::now() + Duration::from_secs(5);
        'probe: while Instant::now() < deadline {
            for (k, s) in group.iter().enumerate() {
                if batch.recv_mode(s.raw_fd(), RecvMode::Spin).is_ok() {
                    if found[k].is_none() {
                        found[k] = Some(fd);
                    }
                    break 'probe;
                }
            }
        }
    }
    found
        .into_iter()
        .map(|f| f.context("no sender source port reached one of the sockets"))
        .collect()
}

/// Full queue with n `SO_REUSEPORT` sockets and n pinned receivers sharing one `Tables`
/// (as the agent does), and for comparison with one `Tables` per receiver (what sharing
/// costs: the shard locks' cache lines travel between the cores).
fn threads_method(args: &Args, setup: &Setup<'_>, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "\nthreads (full queue, one SO_REUSEPORT socket and one pinned receiver per thread, shared tables, {} calls open):",
        args.open_calls
    );
    println!(
        "{:<26} {:>8} {:>16} {:>16} {:>7} {:>18}",
        "case", "threads", "drain events/s", "agent events/s", "ratio", "own tables ev/s"
    );
    let counts: Vec<usize> = args
        .threads
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--threads: numbers")?;
    for case in CASES.iter().filter(|c| {
        c.transport == Transport::Udp && args.only.as_deref().is_none_or(|o| c.name.contains(o))
    }) {
        // Each sender has calls of its own (as separate proxies would).
        let pools = (0..counts.iter().copied().max().unwrap_or(1))
            .map(|k| Pool::new(case.payload, args.open_calls, k))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let per = pools[0].events_per_datagram as f64;
        for &n in &counts {
            let group =
                EventSocket::bind_group(&endpoint_for(case.transport, dir)?, &BENCH_SOCKET, n)?;
            let senders = senders_per_socket(&group)?;
            let pipeline = new_pipeline(args, dir, case.name)?;
            for pool in &pools[..n] {
                pool.preload(&pipeline.tables, tollgate_ingest::tables_clock());
            }
            let own: Vec<Pipeline> = pools[..n]
                .iter()
                .map(|pool| {
                    let p = new_pipeline(args, dir, case.name)?;
                    pool.preload(&p.tables, tollgate_ingest::tables_clock());
                    Ok(p)
                })
                .collect::<anyhow::Result<_>>()?;
            let fill = fill_for(args, case.payload) / n as u64;
            // Receiver k runs the agent's loop on `agents[k]`, or the drain loop for None.
            let run = |agents: &[Option<&Pipeline>]| -> anyhow::Result<f64> {
                for (fd, pool) in senders.iter().zip(&pools) {
                    Sender::new(fd, pool, setup.segments(case.transport), 0)
                        .run(Some(fill), &AtomicBool::new(false))?;
                }
                let results: Vec<(u64, f64)> = std::thread::scope(|scope| {
                    let handles: Vec<_> = group
                        .iter()
                        .enumerate()
                        .map(|(k, s)| {
                            let receiver = match agents[k] {
                                Some(p) => Receiver::Agent(p),
                                None => Receiver::Drain { source: false },
                            };
                            scope.spawn(move || {
                                receive_until(
                                    s,
                                    receiver,
                                    Some(fill),
                                    Duration::from_secs(30),
                                    args.recv_batch,
                                    setup.mode,
                                    k,
                                )
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or((0, f64::MAX)))
                        .collect()
                });
                let total: u64 = results.iter().map(|r| r.0).sum();
                let slowest = results.iter().map(|r| r.1).fold(0.0, f64::max);
                for s in &group {
                    flush(s);
                }
                Ok(total as f64 / slowest)
            };
            let (mut drain, mut agent, mut apart) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.runs {
                drain.push(run(&vec![None; n])?);
                agent.push(run(&vec![Some(&pipeline); n])?);
                apart.push(run(&own.iter().map(Some).collect::<Vec<_>>())?);
            }
            let (d, a, o) = (
                median(drain) * per,
                median(agent) * per,
                median(apart) * per,
            );
            println!(
                "{:<26} {:>8} {:>16.0} {:>16.0} {:>7.3} {:>18.0}",
                case.name,
                n,
                d,
                a,
                a / d,
                o
            );
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"method": "threads", "case": case.name, "threads": n,
                        "drain_events_per_s": d, "agent_events_per_s": a, "agent_own_tables_events_per_s": o})
                );
            }
        }
    }
    Ok(())
}

/// The drain loop alone: bare, with source addresses, and with source addresses plus an
/// `SO_RXQ_OVFL` control message per datagram (what the agent asked for before).
fn recv_cost_method(args: &Args, setup: &Setup<'_>, dir: &std::path::Path) -> anyhow::Result<()> {
    println!("\nrecv-cost (full queue, drain loop only; what asking the kernel for more costs):");
    println!(
        "{:<26} {:>12} {:>14} {:>18}",
        "case", "bare dgram/s", "+source addr", "+source +RXQ_OVFL"
    );
    for case in CASES
        .iter()
        .filter(|c| args.only.as_deref().is_none_or(|o| c.name.contains(o)))
    {
        let pool = Pool::new(case.payload, args.open_calls, 0)?;
        let socket = EventSocket::bind(&endpoint_for(case.transport, dir)?, &BENCH_SOCKET)?;
        let fill = fill_for(args, case.payload);
        let mut rates = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..args.runs {
            for (k, rate) in rates.iter_mut().enumerate() {
                let ovfl = i32::from(k == 2);
                let _ = setsockopt_int(socket.raw_fd(), libc::SOL_SOCKET, libc::SO_RXQ_OVFL, ovfl);
                rate.push(full_queue_phase(
                    &socket,
                    case.transport,
                    Receiver::Drain { source: k > 0 },
                    &pool,
                    fill,
                    setup,
                )?);
            }
        }
        let _ = setsockopt_int(socket.raw_fd(), libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 0);
        let [bare, source, ovfl] = rates.map(median);
        println!(
            "{:<26} {:>12.0} {:>8.0} ({:.3}) {:>10.0} ({:.3})",
            case.name,
            bare,
            source,
            source / bare,
            ovfl,
            ovfl / bare
        );
    }
    Ok(())
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
    AGENT_UDP_SOURCE.store(args.udp_replies, Ordering::Relaxed);
    if args.quick {
        args.seconds = 0.3;
        args.runs = 1;
        args.fill = 20_000;
        args.open_calls = args.open_calls.min(4096);
        args.table_sizes = "4096".to_owned();
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
    let gso = if args.gso > 1 && !gso_works() {
        eprintln!("UDP GSO (UDP_SEGMENT) refused here: sending one datagram per message");
        1
    } else {
        args.gso.max(1)
    };
    println!(
        "ingest-bench: {netns}, net.unix.max_dgram_qlen {}, net.core.rmem_max {}, recv_batch {}, receive mode {mode:?}, UDP GSO {}, {} run(s), cpus {}, load {}",
        read("/proc/sys/net/unix/max_dgram_qlen"),
        read("/proc/sys/net/core/rmem_max"),
        args.recv_batch,
        if gso > 1 {
            format!("{gso} datagrams per send")
        } else {
            "off".to_owned()
        },
        args.runs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        read("/proc/loadavg"),
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    let setup = Setup {
        args: &args,
        mode,
        gso,
    };
    let methods: Vec<&str> = match args.method.as_str() {
        "both" => vec!["live", "full-queue"],
        "all" => vec!["live", "full-queue", "in-process"],
        m @ ("full-queue" | "live" | "in-process" | "table" | "threads" | "recv-cost"
        | "journal") => vec![m],
        other => anyhow::bail!(
            "--method {other}: expected live, full-queue, in-process, table, threads, recv-cost, journal, both or all"
        ),
    };
    for method in methods {
        match method {
            "table" => table_method(&args)?,
            "threads" => threads_method(&args, &setup, dir.path())?,
            "recv-cost" => recv_cost_method(&args, &setup, dir.path())?,
            "journal" => journal_method(&args, &setup, dir.path())?,
            m => socket_methods(m, &args, &setup, dir.path())?,
        }
    }
    Ok(())
}
