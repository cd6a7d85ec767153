//! Event ingest IO: the agent's UDP and unix datagram sockets, read in `recvmmsg` batches by
//! dedicated threads, each datagram handed to the sans-IO [`Pipeline`].
//!
//! Data path: kernel → [`RecvBatch::recv`] (up to `recv_batch` datagrams per syscall) →
//! [`Pipeline::process_pipelined`] (sequence check, decode, `admit` answers; call events
//! fingerprinted and their table slots prefetched as they are decoded, then applied as one
//! run per batch with one lock per shard, see [`Pending`]) → counters published once per
//! batch. The only clock read is one wall-clock sample per batch; nothing here allocates
//! per datagram.
//!
//! Besides the text and binary formats, the event sockets accept OpenSIPS `event_datagram`
//! notifications unchanged ([`Pipeline::process`] tells them apart by their first byte), and
//! [`HepIngest`] runs a HEPv3 collector on a socket of its own ([`hep`]).
//! Counters are plain structs ([`StatsSnapshot`], [`HepSnapshot`]) with their label names
//! beside them ([`stats::OPENSIPS_RESULTS`], [`HepResult::LABELS`], …); the agent renders
//! them as Prometheus text.
//!
//! What it deliberately lacks: any policy. Usage rules live in `tollgate-usage`, the decoders
//! in `tollgate-events`, admission decisions behind the [`Admission`] trait.

pub mod hep;
pub mod journal;
mod journalled;
mod pipeline;
mod recv;
mod socket;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use hep::{
    HepConfig, HepHandle, HepIngest, HepResult, HepSnapshot, TrackerConfig, TrackerCounters,
};
pub use journal::{Journal, JournalStats, Suspension};
pub use pipeline::{
    Admission, AdmitAll, BatchObserver, Decision, Pending, Pipeline, REPLY_BYTES_MAX,
    RUN_EVENTS_MAX,
};
pub use recv::{RECV_BATCH_MAX, Received, RecvBatch, RecvMode};
pub use socket::{Endpoint, EventSocket, RECV_TIMEOUT, SocketOptions};
pub use stats::{IngestStats, LocalStats, StatsSnapshot, ThreadStats};

use tollgate_events::{MonoTime, WallTime};

/// Failures of the ingest IO.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("cannot start ingest thread: {0}")]
    Spawn(std::io::Error),
    #[error("invalid hep tracker configuration: {0}")]
    Hep(tollgate_sip::ConfigError),
    #[error("hep auth key must be 1 to {} bytes", hep::AUTH_KEY_LEN_MAX)]
    HepAuthKey,
}

/// Tunables of the receive loops.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Threads reading each socket (they share the socket; the kernel spreads datagrams).
    pub threads_per_socket: usize,
    /// Whether the UDP event sockets ask the kernel for each datagram's source address, so
    /// that they can answer `admit` (the default). Without it, `admit` queries they receive
    /// go unanswered and are counted (`replies_unaddressable`): queries then go to
    /// [`IngestConfig::admit_udp`], and every event datagram costs the kernel less
    /// (`docs/performance.md`).
    pub udp_replies: bool,
    /// A UDP socket of its own for `admit` queries: read by one thread, always with source
    /// addresses. It takes any datagram the event sockets take.
    pub admit_udp: Option<std::net::SocketAddr>,
    /// Datagrams per `recvmmsg` call.
    pub recv_batch: usize,
    /// Largest datagram accepted whole; a larger one is counted as `oversize` and dropped.
    pub max_datagram_bytes: usize,
    /// Sleep or spin while a socket's queue is empty.
    pub recv_mode: RecvMode,
    pub socket: SocketOptions,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            threads_per_socket: 1,
            udp_replies: true,
            admit_udp: None,
            recv_batch: 64,
            max_datagram_bytes: 65_535,
            recv_mode: RecvMode::Block,
            socket: SocketOptions::default(),
        }
    }
}

/// The wall clock, as the sans-IO cores want it.
pub fn wall_clock() -> WallTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    WallTime::from_unix_ms(ms as u64)
}

/// The tables' clock: Unix milliseconds at the first call (the wall clock then), advanced
/// by the monotonic clock since. Durations (call deadlines, contact expiry, sweeps, the HEP
/// tracker) run on it, so a step of the wall clock (NTP, an operator) changes no expiry;
/// the wall clock is for display, snapshots and reports, and a snapshot records both
/// (`Snapshot::wall_at`) so a restart converts its times.
pub fn tables_clock() -> MonoTime {
    CLOCK.now()
}

/// The process's [`MonotonicClock`], anchored at its first use.
static CLOCK: std::sync::LazyLock<MonotonicClock> =
    std::sync::LazyLock::new(|| MonotonicClock::new(wall_clock()));

/// A clock that reads `anchor` at creation and advances with `Instant` only.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    anchor: WallTime,
    started: std::time::Instant,
}

impl MonotonicClock {
    pub fn new(anchor: WallTime) -> Self {
        MonotonicClock {
            anchor,
            started: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> MonoTime {
        let elapsed = self.started.elapsed().as_millis() as u64;
        MonoTime::from_unix_ms(self.anchor.unix_ms().saturating_add(elapsed))
    }

    /// `wall - now()`: what to add to this clock's times to show them as wall-clock times.
    pub fn offset_to(&self, wall: WallTime) -> i64 {
        wall.unix_ms() as i64 - self.now().unix_ms() as i64
    }
}

/// Wall clock minus tables clock, now (ms).
pub fn clock_offset_ms() -> i64 {
    CLOCK.offset_to(wall_clock())
}

/// Sockets read the same way: one endpoint's socket(s).
struct Group {
    /// One socket shared by `threads` threads, or a `SO_REUSEPORT` group read by one thread
    /// each.
    sockets: Vec<EventSocket>,
    threads: usize,
    /// Asks for source addresses, to answer `admit`.
    replies: bool,
    /// The dedicated admit socket ([`IngestConfig::admit_udp`]).
    admit: bool,
}

/// Running ingest: one or more threads per socket until [`Ingest::shutdown`].
#[derive(Debug)]
pub struct Ingest {
    sockets: Vec<Arc<EventSocket>>,
    /// The dedicated admit socket, when configured.
    admit: Option<Endpoint>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    stats: IngestStats,
}

impl Ingest {
    /// Binds every endpoint and starts reading. Fails without leaving threads behind.
    ///
    /// With several threads per socket, a UDP endpoint gets one `SO_REUSEPORT` socket per
    /// thread ([`EventSocket::bind_group`]): each thread reads its own queue, and the kernel
    /// keeps each sender on one of them (so a sender's datagrams stay in order). A unix
    /// endpoint has one socket that its threads share.
    pub fn start(
        endpoints: &[Endpoint],
        config: &IngestConfig,
        pipeline: Pipeline,
    ) -> Result<Self, IngestError> {
        let threads = config.threads_per_socket.max(1);
        let mut groups = endpoints
            .iter()
            .map(|e| {
                let sockets = EventSocket::bind_group(e, &config.socket, threads)?;
                Ok(Group {
                    threads: if sockets.len() > 1 { 1 } else { threads },
                    sockets,
                    replies: matches!(e, Endpoint::Unix(_)) || config.udp_replies,
                    admit: false,
                })
            })
            .collect::<Result<Vec<_>, IngestError>>()?;
        if let Some(addr) = config.admit_udp {
            groups.push(Group {
                sockets: vec![EventSocket::bind(&Endpoint::Udp(addr), &config.socket)?],
                threads: 1,
                replies: true,
                admit: true,
            });
        }
        Self::start_groups(groups, config, pipeline)
    }

    /// Starts reading sockets that are already bound, `threads_per_socket` threads sharing
    /// each.
    pub fn start_on(
        sockets: Vec<EventSocket>,
        config: &IngestConfig,
        pipeline: Pipeline,
    ) -> Result<Self, IngestError> {
        let threads = config.threads_per_socket.max(1);
        let groups = sockets
            .into_iter()
            .map(|s| Group {
                replies: matches!(s.endpoint(), Endpoint::Unix(_)) || config.udp_replies,
                sockets: vec![s],
                threads,
                admit: false,
            })
            .collect();
        Self::start_groups(groups, config, pipeline)
    }

    /// Each group is one endpoint: one socket shared by `threads_per_socket` threads, or
    /// one socket per thread (a `SO_REUSEPORT` group).
    fn start_groups(
        groups: Vec<Group>,
        config: &IngestConfig,
        pipeline: Pipeline,
    ) -> Result<Self, IngestError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = IngestStats::default();
        let mut ingest = Ingest {
            sockets: Vec::new(),
            admit: None,
            threads: Vec::new(),
            stop,
            stats,
        };
        let mut last = None;
        for group in groups {
            let threads_each = group.threads.max(1);
            let sockets_in_group = group.sockets.len();
            let replies = group.replies;
            for socket in group.sockets {
                let socket = Arc::new(socket);
                if socket.receive_buffer_bytes < config.socket.receive_buffer_bytes {
                    tracing::warn!(
                        endpoint = %socket.endpoint(),
                        requested = config.socket.receive_buffer_bytes,
                        granted = socket.receive_buffer_bytes,
                        "receive buffer capped by the kernel; raise net.core.rmem_max to absorb bursts"
                    );
                }
                let drops = ingest.stats.register_socket();
                for _ in 0..threads_each {
                    let (socket, pipeline, stop) = (
                        Arc::clone(&socket),
                        pipeline.clone(),
                        Arc::clone(&ingest.stop),
                    );
                    let (thread_stats, drops) = (ingest.stats.register(), Arc::clone(&drops));
                    let mut batch = if replies {
                        RecvBatch::new(config.recv_batch, config.max_datagram_bytes)
                    } else {
                        RecvBatch::without_source(config.recv_batch, config.max_datagram_bytes)
                    };
                    let mode = config.recv_mode;
                    let spawned = std::thread::Builder::new()
                        .name(format!("ingest-{}", ingest.threads.len()))
                        .spawn(move || {
                            let ctx = LoopContext {
                                stats: &thread_stats,
                                kernel_drops: &drops,
                                stop: &stop,
                                mode,
                            };
                            receive_loop(&socket, &pipeline, &mut batch, &ctx)
                        });
                    match spawned {
                        Ok(handle) => ingest.threads.push(handle),
                        Err(e) => {
                            ingest.stop_threads();
                            return Err(IngestError::Spawn(e));
                        }
                    }
                }
                if group.admit {
                    ingest.admit = Some(socket.endpoint().clone());
                }
                last = Some(socket.endpoint().clone());
                if !group.admit {
                    ingest.sockets.push(socket);
                }
            }
            if let Some(endpoint) = last.take() {
                tracing::info!(
                    %endpoint,
                    threads = threads_each * sockets_in_group,
                    sockets = sockets_in_group,
                    admit_replies = replies,
                    admit_only = group.admit,
                    "ingest listening"
                );
            }
        }
        Ok(ingest)
    }

    /// The bound event endpoints, in the order given (with real ports when 0 was asked
    /// for); an endpoint read by a `SO_REUSEPORT` group is listed once. The admit socket is
    /// [`Ingest::admit_endpoint`].
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::with_capacity(self.sockets.len());
        for s in &self.sockets {
            if out.last() != Some(s.endpoint()) {
                out.push(s.endpoint().clone());
            }
        }
        out
    }

    /// The dedicated admit socket's address ([`IngestConfig::admit_udp`], with its real
    /// port when 0 was asked for).
    pub fn admit_endpoint(&self) -> Option<&Endpoint> {
        self.admit.as_ref()
    }

    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// Stops the threads (within [`RECV_TIMEOUT`]) and closes the sockets. Datagrams already
    /// received are applied before the threads exit.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// What a receive loop reports to and listens to.
#[derive(Debug, Clone, Copy)]
pub struct LoopContext<'a> {
    pub stats: &'a ThreadStats,
    /// The socket's cumulative kernel drop count, raised with `fetch_max`.
    pub kernel_drops: &'a AtomicU64,
    pub stop: &'a AtomicBool,
    pub mode: RecvMode,
}

/// The agent's receive loop on one socket, until `stop` is set. Public so the bench tool can
/// run exactly this loop beside a bare drain loop.
pub fn receive_loop(
    socket: &EventSocket,
    pipeline: &Pipeline,
    batch: &mut RecvBatch,
    ctx: &LoopContext<'_>,
) {
    let LoopContext {
        stats,
        kernel_drops,
        stop,
        mode,
    } = *ctx;
    let fd = socket.raw_fd();
    let mut local = LocalStats::default();
    let mut reply = Vec::with_capacity(REPLY_BYTES_MAX);
    let mut error_logged = false;
    let mut record = tollgate_usage::journal::RecordBuilder::default();
    let mut accepted: Vec<usize> = Vec::with_capacity(batch.capacity());
    // Call events of a whole batch are applied as one run (see `Pending`).
    let mut pending = Pending::default();
    while !stop.load(Ordering::Relaxed) {
        let n = match batch.recv_mode(fd, mode) {
            Ok(n) => n,
            Err(e) if is_transient(&e) => {
                if mode == RecvMode::Spin {
                    std::hint::spin_loop();
                }
                continue;
            }
            Err(e) => {
                local.recv_errors += 1;
                if !error_logged {
                    tracing::error!(endpoint = %socket.endpoint(), error = %e, "receive failed");
                    error_logged = true;
                }
                stats.publish(&mut local);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = tables_clock();
        local.record_batch(n);
        let Some(journal) = &pipeline.journal else {
            for received in batch.iter() {
                if received.truncated {
                    pipeline.reject_oversize(received.data.len(), &mut local);
                    continue;
                }
                reply.clear();
                pipeline.process_pipelined(
                    now,
                    received.data,
                    &mut local,
                    &mut reply,
                    &mut pending,
                );
                send_reply(batch, fd, received.slot, &reply, &mut local);
            }
            pipeline.finish(now, &mut pending, &mut local);
            pipeline.after_batch(now);
            if let Some(d) = batch.kernel_drops() {
                kernel_drops.fetch_max(u64::from(d), Ordering::Relaxed);
            }
            stats.publish(&mut local);
            continue;
        };
        // Journalled: check every datagram's sequence and write the events of those that
        // passed to one events record; append it, then apply the record itself while still
        // holding the journal (its order is the tables'). See `journalled`.
        record.begin_events(now);
        accepted.clear();
        for received in batch.iter() {
            if received.truncated {
                pipeline.reject_oversize(received.data.len(), &mut local);
            } else if pipeline.check_sequence(now, received.data, &mut local)
                && pipeline.encode_datagram(now, received.data, &mut record, &mut local)
            {
                accepted.push(received.slot);
                if record.body_len() >= tollgate_usage::journal::EVENTS_RECORD_FLUSH_BYTES {
                    append_and_apply(
                        journal,
                        pipeline,
                        now,
                        &mut record,
                        &accepted,
                        &mut reply,
                        &mut pending,
                        batch,
                        fd,
                        &mut local,
                    );
                    record.begin_events(now);
                    accepted.clear();
                }
            }
        }
        if !accepted.is_empty() {
            append_and_apply(
                journal,
                pipeline,
                now,
                &mut record,
                &accepted,
                &mut reply,
                &mut pending,
                batch,
                fd,
                &mut local,
            );
        }
        pipeline.after_batch(now);
        if let Some(d) = batch.kernel_drops() {
            kernel_drops.fetch_max(u64::from(d), Ordering::Relaxed);
        }
        stats.publish(&mut local);
    }
    stats.publish(&mut local);
}

/// Appends an events record and applies it under the journal; `accepted` maps the record's
/// datagrams to their receive slots, for the answers.
#[allow(clippy::too_many_arguments)]
fn append_and_apply(
    journal: &Journal,
    pipeline: &Pipeline,
    now: MonoTime,
    record: &mut tollgate_usage::journal::RecordBuilder,
    accepted: &[usize],
    reply: &mut Vec<u8>,
    pending: &mut Pending,
    batch: &RecvBatch,
    fd: i32,
    local: &mut LocalStats,
) {
    let mut held = journal.lock();
    held.append(record.finish());
    pipeline.apply_entries(
        now,
        record.entries(),
        pending,
        local,
        Some(reply),
        |d, answers, local| {
            send_reply(batch, fd, accepted[d], answers, local);
        },
    );
    // Applied before the journal is let go: its order is the tables' order.
    drop(held);
}

fn send_reply(batch: &RecvBatch, fd: i32, slot: usize, reply: &[u8], local: &mut LocalStats) {
    if !reply.is_empty() {
        match batch.reply_to(fd, slot, reply) {
            Ok(true) => local.replies += 1,
            Ok(false) => local.replies_unaddressable += 1,
            Err(_) => local.reply_errors += 1,
        }
    }
}

/// A bare drain loop: receive in the same batches and count, nothing else. The baseline the
/// ingest benchmark compares [`receive_loop`] against. Publishes the datagrams received so
/// far into `received` once per batch, as [`receive_loop`] publishes its counters.
pub fn drain_loop(
    socket: &EventSocket,
    batch: &mut RecvBatch,
    stop: &AtomicBool,
    mode: RecvMode,
    received: &AtomicU64,
) -> (u64, u64) {
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        match batch.recv_mode(socket.raw_fd(), mode) {
            Ok(n) => {
                datagrams += n as u64;
                bytes += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                received.store(datagrams, Ordering::Relaxed);
            }
            Err(e) if is_transient(&e) => {
                if mode == RecvMode::Spin {
                    std::hint::spin_loop();
                }
            }
            Err(_) => break,
        }
    }
    (datagrams, bytes)
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Instant;

    use tollgate_usage::{FingerprintKey, Tables, TablesConfig};

    use super::*;

    /// With two threads the UDP endpoint is two `SO_REUSEPORT` sockets on one port, listed
    /// once, and every sender's event is applied (the kernel spreads senders over the
    /// sockets: `socket::tests::a_udp_group_shares_one_port_and_every_socket_receives`).
    #[test]
    fn two_threads_read_one_udp_port_and_apply_every_sender() {
        let tables = Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([3; 32]),
        ));
        let pipeline = Pipeline::for_tests(Arc::clone(&tables));
        let config = IngestConfig {
            threads_per_socket: 2,
            ..IngestConfig::default()
        };
        let ingest = Ingest::start(
            &[Endpoint::Udp("127.0.0.1:0".parse().unwrap())],
            &config,
            pipeline,
        )
        .unwrap();
        let endpoints = ingest.endpoints();
        assert_eq!(endpoints.len(), 1, "{endpoints:?}");
        assert_eq!(ingest.sockets.len(), 2);
        let Endpoint::Udp(addr) = endpoints[0] else {
            panic!("{endpoints:?}")
        };
        const SENDERS: usize = 40;
        for i in 0..SENDERS {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(format!("call-start sender-{i}").as_bytes(), addr)
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while tables.usage().calls < SENDERS as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tables.usage().calls, SENDERS as u64);
        ingest.shutdown();
    }

    /// `admit_udp` answers queries; with `udp_replies` off the event socket reads no source
    /// address, so a query there is counted as unanswerable while its events still apply.
    #[test]
    fn admit_socket_answers_and_an_event_socket_without_replies_counts_queries() {
        let tables = Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([3; 32]),
        ));
        let pipeline = Pipeline::for_tests(Arc::clone(&tables));
        let config = IngestConfig {
            udp_replies: false,
            admit_udp: Some("127.0.0.1:0".parse().unwrap()),
            ..IngestConfig::default()
        };
        let ingest = Ingest::start(
            &[Endpoint::Udp("127.0.0.1:0".parse().unwrap())],
            &config,
            pipeline,
        )
        .unwrap();
        let [Endpoint::Udp(events)] = ingest.endpoints()[..] else {
            panic!("{:?}", ingest.endpoints())
        };
        let Some(&Endpoint::Udp(admit)) = ingest.admit_endpoint() else {
            panic!("no admit socket")
        };
        assert_ne!(events, admit);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tx.send_to(b"admit a\n", admit).unwrap();
        let mut buf = [0u8; 64];
        let n = tx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ok\n");
        tx.send_to(b"admit b\ncall-start c\n", events).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The admit socket's reply reaches us before its worker publishes the count.
        while (tables.usage().calls < 1
            || ingest.stats().snapshot().totals.replies_unaddressable < 1
            || ingest.stats().snapshot().totals.replies < 1)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tables.usage().calls, 1);
        let stats = ingest.stats().snapshot();
        assert_eq!(stats.totals.replies_unaddressable, 1);
        assert_eq!(stats.totals.replies, 1);
        ingest.shutdown();
    }
}
