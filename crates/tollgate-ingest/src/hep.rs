//! The HEPv3 collector: a UDP socket that receives the capture packets a SIP server mirrors
//! (Kamailio `siptrace`, OpenSIPS `proto_hep`, FreeSWITCH, Asterisk `res_hep`, drachtio)
//! and turns them into usage events, for platforms that should need no change at all.
//!
//! Data path, per `recvmmsg` batch (one wall-clock read, one tracker lock):
//!
//! ```text
//! datagram ─▶ tollgate_hep::decode ─▶ auth key check ─▶ SIP (proto 1) ─▶ MirrorTracker::handle_payload ─▶ OwnedEvent ─▶ Tables::apply
//!              │ error: counted by reason   │ mismatch: auth_failed   └▶ LOG (proto 100) ─▶ text-protocol lines ─▶ Tables::apply
//! ```
//!
//! The [`MirrorTracker`] (dialogs and registrations from mirrored SIP, with set semantics:
//! a stateful proxy mirrors every message twice) lives behind a mutex that a receive thread
//! holds for one batch; [`MirrorTracker::expire`] runs about once a second, from whichever
//! thread sees the second pass first (a receive times out every
//! [`RECV_TIMEOUT`](crate::RECV_TIMEOUT), so this happens on an idle socket too).
//!
//! Counters: the generic ones (datagrams, bytes, events by verb, outcomes, batches, kernel
//! drops) in an [`IngestStats`] of the collector's own, packets by [`HepResult`], and the
//! tracker's [`TrackerCounters`], copied out by [`HepHandle::snapshot`] as a plain
//! [`HepSnapshot`]; the agent renders them (this crate writes no Prometheus text).
//!
//! What it deliberately lacks: HEP over TCP, HEPv1/v2, gzip payloads (counted as
//! `unsupported_payload`), sequence checks (HEP has no sequence numbers: mirrored
//! duplicates are absorbed by the tracker), and `admit` replies (an `admit` line in a LOG
//! packet is counted, never answered). What mirroring itself cannot see (a dialog that the
//! proxy times out without a BYE) is in `tollgate-sip`'s documentation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tollgate_hep::HepError;
use tollgate_sip::{MirrorTracker, OwnedEvent};
use tollgate_usage::{MonoTime, Owner};

pub use tollgate_sip::{TrackerConfig, TrackerCounters};

use crate::stats::{IngestStats, LocalStats, StatsSnapshot, ThreadStats};
use crate::{
    Endpoint, EventSocket, IngestError, Pipeline, RecvBatch, RecvMode, SocketOptions, is_transient,
    tables_clock,
};

/// The collector's default address (MISSION.md). It is off unless configured.
pub const HEP_DEFAULT_LISTEN: &str = "127.0.0.1:9060";

/// How often the tracker is swept ([`MirrorTracker::expire`]).
pub const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest auth key accepted in the configuration, in bytes.
pub const AUTH_KEY_LEN_MAX: usize = 256;

/// What the collector needs.
#[derive(Debug, Clone)]
pub struct HepConfig {
    pub listen: SocketAddr,
    /// When set, only packets whose auth key chunk (type 14) equals it are used; the others
    /// are counted as `auth_failed` and dropped. When unset, keys are ignored.
    pub auth_key: Option<Vec<u8>>,
    /// The mirror tracker's tunables. Set `dialog_idle_max_ms` to the tables'
    /// `max_call_duration` and `emergency_numbers` to the platform's.
    pub tracker: TrackerConfig,
    /// Threads reading the socket (they share the tracker; one is plenty below ~100k
    /// packets per second).
    pub threads: usize,
    /// Datagrams per `recvmmsg` call.
    pub recv_batch: usize,
    /// Largest datagram accepted whole (a HEP packet is at most 65535 bytes); a larger one
    /// is counted as `oversize`.
    pub max_datagram_bytes: usize,
    pub recv_mode: RecvMode,
    pub socket: SocketOptions,
}

impl HepConfig {
    /// Defaults for everything but the address.
    pub fn new(listen: SocketAddr) -> Self {
        HepConfig {
            listen,
            auth_key: None,
            tracker: TrackerConfig::default(),
            threads: 1,
            recv_batch: 64,
            max_datagram_bytes: tollgate_hep::PACKET_LEN_MAX,
            recv_mode: RecvMode::Block,
            socket: SocketOptions::default(),
        }
    }
}

/// What became of one HEP datagram: the `result` label of `tollgate_hep_packets_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HepResult {
    /// A SIP message handed to the tracker.
    Sip = 0,
    /// A SIP packet whose payload did not parse (the reason is in the tracker's counters).
    SipMalformed = 1,
    /// A LOG packet whose lines were applied as text-protocol events.
    Log = 2,
    /// Another protocol type (RTCP, …), or none: ignored.
    OtherProtocol = 3,
    /// The auth key was missing or wrong.
    AuthFailed = 4,
    /// Larger than the receive slot.
    Oversize = 5,
    /// Not decodable: `Decode + HepError as u8` for each [`HepError`].
    Decode = 6,
}

impl HepResult {
    pub const COUNT: usize = 6 + HepError::COUNT;
    /// The labels, by index: the six results above, then [`HepError::as_str`] of each
    /// [`HepError::ALL`] (a unit test keeps the two in step).
    pub const LABELS: [&'static str; HepResult::COUNT] = [
        "sip",
        "sip_malformed",
        "log",
        "other_protocol",
        "auth_failed",
        "oversize",
        "bad_magic",
        "unsupported_version",
        "length_mismatch",
        "bad_chunk_length",
        "bad_fixed_size",
        "missing_payload",
        "unsupported_payload",
    ];

    /// Index into [`HepResult::LABELS`] of a decode error.
    pub fn decode_error_index(error: HepError) -> usize {
        HepResult::Decode as usize + error as usize
    }
}

/// Packet counters shared by the collector's threads (added to once per batch).
#[derive(Debug)]
struct Shared {
    packets: [AtomicU64; HepResult::COUNT],
    /// Wall-clock ms at which the next tracker sweep is due.
    next_expire_ms: AtomicU64,
}

/// A point-in-time copy of every collector counter.
#[derive(Debug, Clone, Default)]
pub struct HepSnapshot {
    /// Datagrams, bytes, events by verb, outcomes, LOG lines malformed, batches, kernel drops.
    pub ingest: StatsSnapshot,
    /// By [`HepResult::LABELS`] index.
    pub packets: [u64; HepResult::COUNT],
    pub tracker: TrackerCounters,
    /// Established dialogs the tracker follows.
    pub dialogs: usize,
    /// INVITEs waiting for their final response.
    pub pending: usize,
    /// Addresses-of-record with remembered contacts.
    pub aors: usize,
}

impl HepSnapshot {
    /// Packets by label.
    pub fn packets(&self, label: &str) -> u64 {
        HepResult::LABELS
            .iter()
            .position(|l| *l == label)
            .map_or(0, |i| self.packets[i])
    }
}

/// A running HEP collector, until [`HepIngest::shutdown`].
#[derive(Debug)]
pub struct HepIngest {
    handle: HepHandle,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// A cheap, cloneable view of a running collector's address and counters (for the admin
/// server), valid after the collector stopped too.
#[derive(Debug, Clone)]
pub struct HepHandle {
    local_addr: SocketAddr,
    tracker: Arc<Mutex<MirrorTracker>>,
    shared: Arc<Shared>,
    stats: IngestStats,
}

impl HepHandle {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every counter, summed over the threads. Takes the tracker's lock briefly.
    pub fn snapshot(&self) -> HepSnapshot {
        let (tracker, dialogs, pending, aors) = {
            let t = self.tracker.lock();
            (
                *t.counters(),
                t.dialog_count(),
                t.pending_count(),
                t.aor_count(),
            )
        };
        HepSnapshot {
            ingest: self.stats.snapshot(),
            packets: std::array::from_fn(|i| self.shared.packets[i].load(Ordering::Relaxed)),
            tracker,
            dialogs,
            pending,
            aors,
        }
    }

    /// The generic counters alone (no tracker lock).
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }
}

impl HepIngest {
    /// Binds `config.listen` and starts reading. Events go to `pipeline`'s tables (its
    /// observer sees every batch; its sequence tracker and admission are not used).
    pub fn start(config: &HepConfig, pipeline: Pipeline) -> Result<Self, IngestError> {
        config.tracker.validate().map_err(IngestError::Hep)?;
        if config
            .auth_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > AUTH_KEY_LEN_MAX)
        {
            return Err(IngestError::HepAuthKey);
        }
        let socket = EventSocket::bind(&Endpoint::Udp(config.listen), &config.socket)?;
        Self::start_on(socket, config, pipeline)
    }

    /// Starts reading a UDP socket that is already bound (`config.listen` is not used).
    pub fn start_on(
        socket: EventSocket,
        config: &HepConfig,
        pipeline: Pipeline,
    ) -> Result<Self, IngestError> {
        // The tracker's maps are keyed by Call-IDs from the network: a secret hash key, drawn
        // from the OS once per start (the sans-IO tracker reads no entropy itself).
        let hash_key = [
            rand::RngCore::next_u64(&mut rand::rngs::OsRng),
            rand::RngCore::next_u64(&mut rand::rngs::OsRng),
        ];
        let tracker =
            MirrorTracker::new(config.tracker.clone(), hash_key).map_err(IngestError::Hep)?;
        let Endpoint::Udp(local_addr) = *socket.endpoint() else {
            return Err(IngestError::Bind {
                endpoint: socket.endpoint().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the HEP collector reads a UDP socket",
                ),
            });
        };
        let socket = Arc::new(socket);
        if socket.receive_buffer_bytes < config.socket.receive_buffer_bytes {
            tracing::warn!(
                endpoint = %socket.endpoint(),
                requested = config.socket.receive_buffer_bytes,
                granted = socket.receive_buffer_bytes,
                "receive buffer capped by the kernel; raise net.core.rmem_max to absorb bursts"
            );
        }
        let mut hep = HepIngest {
            handle: HepHandle {
                local_addr,
                tracker: Arc::new(Mutex::new(tracker)),
                shared: Arc::new(Shared {
                    packets: std::array::from_fn(|_| AtomicU64::new(0)),
                    next_expire_ms: AtomicU64::new(0),
                }),
                stats: IngestStats::default(),
            },
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let kernel_drops = hep.handle.stats.register_socket();
        let threads = config.threads.max(1);
        for i in 0..threads {
            let worker = Worker {
                socket: Arc::clone(&socket),
                pipeline: pipeline.clone(),
                tracker: Arc::clone(&hep.handle.tracker),
                shared: Arc::clone(&hep.handle.shared),
                auth_key: config.auth_key.clone(),
                stats: hep.handle.stats.register(),
                kernel_drops: Arc::clone(&kernel_drops),
                stop: Arc::clone(&hep.stop),
                mode: config.recv_mode,
            };
            let mut batch = RecvBatch::new(config.recv_batch, config.max_datagram_bytes);
            let spawned = std::thread::Builder::new()
                .name(format!("hep-{i}"))
                .spawn(move || worker.run(&mut batch));
            match spawned {
                Ok(handle) => hep.threads.push(handle),
                Err(e) => {
                    hep.stop_threads();
                    return Err(IngestError::Spawn(e));
                }
            }
        }
        tracing::info!(
            endpoint = %socket.endpoint(),
            threads,
            auth_key = config.auth_key.is_some(),
            "hep collector listening"
        );
        Ok(hep)
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// Every counter, summed over the threads. Takes the tracker's lock briefly.
    pub fn snapshot(&self) -> HepSnapshot {
        self.handle.snapshot()
    }

    /// The generic counters alone (no tracker lock).
    pub fn stats(&self) -> &IngestStats {
        &self.handle.stats
    }

    /// A view of the address and counters that outlives [`HepIngest::shutdown`].
    pub fn handle(&self) -> HepHandle {
        self.handle.clone()
    }

    /// Stops the threads (within [`RECV_TIMEOUT`](crate::RECV_TIMEOUT)) and closes the
    /// socket. Packets already received are applied first.
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

impl Drop for HepIngest {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// One receive thread's context.
struct Worker {
    socket: Arc<EventSocket>,
    pipeline: Pipeline,
    tracker: Arc<Mutex<MirrorTracker>>,
    shared: Arc<Shared>,
    auth_key: Option<Vec<u8>>,
    stats: Arc<ThreadStats>,
    kernel_drops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mode: RecvMode,
}

/// A thread's reusable buffers and private counters.
#[derive(Default)]
struct Scratch {
    local: LocalStats,
    packets: [u64; HepResult::COUNT],
    events: Vec<OwnedEvent>,
    /// Replies to `admit` lines in LOG packets: built by the pipeline, never sent.
    reply: Vec<u8>,
    /// The derived events as text lines, for the journal.
    lines: Vec<u8>,
    record: tollgate_usage::journal::RecordBuilder,
}

impl Worker {
    fn run(&self, batch: &mut RecvBatch) {
        let fd = self.socket.raw_fd();
        let mut scratch = Scratch::default();
        let mut error_logged = false;
        while !self.stop.load(Ordering::Relaxed) {
            let n = match batch.recv_mode(fd, self.mode) {
                Ok(n) => n,
                Err(e) if is_transient(&e) => {
                    let now = tables_clock();
                    if self.expire_due(now) {
                        let mut tracker = self.tracker.lock();
                        self.expire(now, &mut tracker, &mut scratch);
                        drop(tracker);
                        self.publish(&mut scratch);
                    }
                    if self.mode == RecvMode::Spin {
                        std::hint::spin_loop();
                    }
                    continue;
                }
                Err(e) => {
                    scratch.local.recv_errors += 1;
                    if !error_logged {
                        tracing::error!(endpoint = %self.socket.endpoint(), error = %e, "hep receive failed");
                        error_logged = true;
                    }
                    self.publish(&mut scratch);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let now = tables_clock();
            scratch.local.record_batch(n);
            {
                let mut tracker = self.tracker.lock();
                for received in batch.iter() {
                    scratch.local.datagrams += 1;
                    scratch.local.bytes += received.data.len() as u64;
                    let result = if received.truncated {
                        HepResult::Oversize as usize
                    } else {
                        self.handle(now, received.data, &mut tracker, &mut scratch)
                    };
                    scratch.packets[result] += 1;
                }
                if self.expire_due(now) {
                    self.expire(now, &mut tracker, &mut scratch);
                }
            }
            self.pipeline.after_batch(now);
            if let Some(d) = batch.kernel_drops() {
                self.kernel_drops.fetch_max(u64::from(d), Ordering::Relaxed);
            }
            self.publish(&mut scratch);
        }
        self.publish(&mut scratch);
    }

    /// One datagram; returns its [`HepResult::LABELS`] index.
    fn handle(
        &self,
        now: MonoTime,
        datagram: &[u8],
        tracker: &mut MirrorTracker,
        scratch: &mut Scratch,
    ) -> usize {
        let packet = match tollgate_hep::decode(datagram) {
            Ok(packet) => packet,
            Err(error) => return HepResult::decode_error_index(error),
        };
        if let Some(key) = &self.auth_key
            && !packet.auth_key_matches(key)
        {
            return HepResult::AuthFailed as usize;
        }
        if packet.is_sip() {
            let capture_id = packet.capture_id.unwrap_or(0);
            let parsed =
                tracker.handle_payload(now, capture_id, packet.payload, &mut scratch.events);
            let mut name = [0u8; HEP_OWNER_LEN_MAX];
            let (owner, name) = if scratch.events.is_empty() {
                (Owner::NONE, &[][..])
            } else {
                let name = hep_owner_name(capture_id, &mut name);
                (self.pipeline.tables.owners().intern(name), name)
            };
            self.apply_events(now, owner, name, scratch);
            return match parsed {
                Ok(()) => HepResult::Sip as usize,
                Err(_) => HepResult::SipMalformed as usize,
            };
        }
        if let Some(datagram) = packet.log_events() {
            // The text lines are journalled as they came (replay decodes them the same way).
            let held = self.pipeline.journal.as_ref().map(|journal| {
                scratch.record.begin(now);
                scratch.record.push(packet.payload);
                let mut held = journal.lock();
                held.append(scratch.record.finish());
                held
            });
            for item in datagram.events {
                match item {
                    Ok(event) => {
                        scratch.reply.clear();
                        self.pipeline
                            .apply(now, &event, &mut scratch.local, &mut scratch.reply);
                    }
                    Err(reason) => scratch.local.malformed[reason as usize] += 1,
                }
            }
            drop(held);
            return HepResult::Log as usize;
        }
        HepResult::OtherProtocol as usize
    }

    /// Applies the tracker's events from `owner`, whose interned name is `owner_name` (the
    /// caller has it at hand: looking it up would allocate a `String` per message).
    fn apply_events(&self, now: MonoTime, owner: Owner, owner_name: &[u8], scratch: &mut Scratch) {
        if scratch.events.is_empty() {
            return;
        }
        // Journalled as text lines (what replay decodes) before they are applied; a `seq`
        // line names the capture agent that owns them.
        let held = self.pipeline.journal.as_ref().map(|journal| {
            scratch.lines.clear();
            if owner != Owner::NONE {
                let _ = tollgate_events::text::write_seq(owner_name, 0, &mut scratch.lines);
            }
            for event in &scratch.events {
                // SIP fields never hold the spaces or newlines text cannot carry; an event
                // that did would be applied but not journalled.
                let _ = tollgate_events::text::write_event(&event.as_event(), &mut scratch.lines);
            }
            scratch.record.begin(now);
            scratch.record.push(&scratch.lines);
            let mut held = journal.lock();
            held.append(scratch.record.finish());
            held
        });
        for event in scratch.events.drain(..) {
            scratch.reply.clear();
            self.pipeline.apply_from(
                now,
                &event.as_event(),
                owner,
                &mut scratch.local,
                &mut scratch.reply,
            );
        }
        drop(held);
    }

    /// Whether this thread should sweep the tracker now (at most one thread per interval).
    fn expire_due(&self, now: MonoTime) -> bool {
        let now_ms = now.unix_ms();
        let due = self.shared.next_expire_ms.load(Ordering::Relaxed);
        now_ms >= due
            && self
                .shared
                .next_expire_ms
                .compare_exchange(
                    due,
                    now_ms + EXPIRE_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn expire(&self, now: MonoTime, tracker: &mut MirrorTracker, scratch: &mut Scratch) {
        tracker.expire(now, &mut scratch.events);
        self.apply_events(now, Owner::NONE, &[], scratch);
    }

    fn publish(&self, scratch: &mut Scratch) {
        self.stats.publish(&mut scratch.local);
        for (shared, local) in self.shared.packets.iter().zip(&mut scratch.packets) {
            if *local != 0 {
                shared.fetch_add(*local, Ordering::Relaxed);
                *local = 0;
            }
        }
    }
}

/// Longest owner name of a HEP capture agent: `hep-` and a u32 in decimal.
const HEP_OWNER_LEN_MAX: usize = 4 + 10;

/// The owner name of the entries a HEP capture agent reports: `hep-<capture id>` (so a
/// `[[reconcile]]` source with `sender = "hep-1"` corrects what capture agent 1 mirrored).
fn hep_owner_name(capture_id: u32, buf: &mut [u8; HEP_OWNER_LEN_MAX]) -> &[u8] {
    buf[..4].copy_from_slice(b"hep-");
    let mut digits = [0u8; 10];
    let mut n = capture_id;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = 4 + digits.len() - start;
    buf[4..len].copy_from_slice(&digits[start..]);
    &buf[..len]
}

#[cfg(test)]
mod tests;
