//! `tollgate-loadgen`: synthetic SIP usage traffic for a tollgate agent, the library behind
//! `tollgate loadgen …` and the load of `tollgate demo`.
//!
//! Two traffic models ([`Mode`]):
//! - **flood**: call start/stop pairs as fast as the socket takes them (optionally capped at
//!   `--rate` datagrams per second), keeping a window of open calls; for benchmarks.
//! - **erlang**: Poisson call arrivals at `--cps`, exponential holding times with mean
//!   `--hold`, optional call refreshes, registrations refreshed at about half their expiry
//!   with a little churn, and a periodic `subscribers` count; paced in real time by
//!   sleeping until the next event is due.
//!
//! Events go out as text or binary datagrams (the encoders of `tollgate-events`), batched
//! up to `--batch` events and `--max-datagram-bytes`, over UDP or a unix datagram socket,
//! each datagram with a per-sender sequence header unless `--no-seq`: numbers start at 1
//! and grow by one per datagram, a datagram given up on leaves a gap (as a lost one would).
//! Or, with `--format hep` (`--hep`), as the SIP messages a stateful proxy would mirror to
//! a HEP collector, one HEPv3 packet per message over UDP (14 packets per call: see the
//! `hep` module), so the agent's HEP path can be measured against its native protocol.
//! Call-ids (`lg<n>-<seed>@<sender>`), AoRs and from-tags derive from the sender id, the
//! seed and a counter: unique per run, replayed by the same `--seed` and `--sender-id`.
//!
//! The code is split the sans-IO way: [`Model`] is a seeded, deterministic state machine
//! that, given the time since the start, yields the next [`Action`]s (tested with a
//! simulated clock); the datagram builder names and encodes them; [`run`] is the thin
//! blocking loop that sleeps, sends and keeps the [`Report`]'s books. The report's
//! `expected_*` counts are what the agent should count, given every datagram handed to the
//! kernel, so a test can compare them with the agent's.
//!
//! `examples/sink_bench.rs` runs the generator against a bare draining sink: the sender's
//! ceiling, to compare ingest figures with.
//!
//! What this crate deliberately lacks: async (it is one blocking thread: run it on its own
//! thread), `admit` queries and their reply latency, sending from several sockets or
//! threads, and any knowledge of loss beyond the sending socket (a receiver that
//! drops datagrams makes the agent's counts differ from the `expected_*` ones). Two runs
//! with the same `--sender-id` against one agent look to it like a restarted sender.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

mod args;
mod encode;
mod hep;
mod ids;
mod ledger;
mod model;
mod report;
mod socket;

pub use args::{
    ACTIVE_CALLS_MAX, BATCH_MAX, CONTACTS_PER_AOR_MAX, DATAGRAM_BYTES_MAX, DATAGRAM_BYTES_MIN,
    FLOOD_WINDOW_MAX, Format, LoadgenArgs, Mode, REGISTRATIONS_MAX, SENDER_ID_LEN_MAX, Target,
    TargetError,
};
pub use encode::binary_sender;
pub use ledger::VerbCounts;
pub use model::{
    Action, CHURN_FRACTION, Model, ModelConfig, REGISTRATION_RAMP, SUBSCRIBERS_INTERVAL,
};
pub use report::{EndReason, Progress, ProgressSnapshot, Report};

use encode::{Builder, Pushed};
use ledger::Ledger;
use socket::{Sent, Socket};

/// A partly filled datagram is sent after at most this long, so batching adds little
/// latency when events trickle in (erlang mode).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// Longest single sleep, so a raised stop flag is seen within this long.
pub const SLEEP_SLICE_MAX: Duration = Duration::from_millis(50);

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid loadgen arguments: {0}")]
    InvalidArgs(String),
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot send to {target}: {source}")]
    Send {
        target: String,
        source: std::io::Error,
    },
}

/// Generates and sends traffic until `--duration`, `--max-events` or `stop`, then reports.
/// Blocks the calling thread.
pub fn run(args: &LoadgenArgs, stop: &AtomicBool) -> Result<Report, LoadgenError> {
    run_with_progress(args, stop, &Progress::default())
}

/// [`run`], updating `progress` after every datagram so another thread can show it live.
pub fn run_with_progress(
    args: &LoadgenArgs,
    stop: &AtomicBool,
    progress: &Progress,
) -> Result<Report, LoadgenError> {
    let config = args.validate()?;
    let socket = Socket::connect(&config.target)?;
    let names = ids::Names::new(&config.sender_id, config.model.seed);
    let hep = (config.format == Format::Hep).then(|| {
        hep::HepWriter::new(
            names.clone(),
            config.hep_capture_id,
            config.hep_auth_key.clone(),
            config.model.registrations,
            config.model.reg_expires_s,
        )
    });
    let builder = Builder::new(
        config.format,
        names,
        &config.sender_id,
        config.seq,
        config.batch,
        config.datagram_bytes_max,
    );
    let mut sender = Sender {
        socket,
        builder,
        hep,
        ledger: Ledger::new(config.model.registrations),
        progress,
        stop,
        rate: config.rate,
        start: Instant::now(),
        batch_deadline: None,
        datagrams_sent: 0,
        bytes_sent: 0,
        datagrams_dropped: 0,
        events_dropped: 0,
    };
    let mut model = Model::new(config.model.clone());
    let mut events_generated: u64 = 0;
    let ended_by = loop {
        if stop.load(Relaxed) {
            break EndReason::Stopped;
        }
        if config.events_max.is_some_and(|max| events_generated >= max) {
            break EndReason::MaxEvents;
        }
        let now = sender.start.elapsed();
        if config.duration.is_some_and(|d| now >= d) {
            break EndReason::Duration;
        }
        if let Some(action) = model.poll_action(now) {
            events_generated += 1;
            sender.push(action)?;
            continue;
        }
        // Nothing due: send a batch that has waited long enough, then sleep until the next
        // event, the batch's deadline or the end, whichever comes first.
        if sender.batch_deadline.is_some_and(|d| now >= d) {
            sender.flush()?;
        }
        let mut wake = model.poll_timeout();
        if let Some(deadline) = sender.batch_deadline {
            wake = wake.min(deadline);
        }
        if let Some(duration) = config.duration {
            wake = wake.min(duration);
        }
        sender.sleep_until(wake);
    };
    sender.flush()?;
    if config.stop_at_end {
        for stop_action in model.drain_active() {
            sender.push(stop_action)?;
        }
        sender.flush()?;
    }
    let elapsed_s = sender.start.elapsed().as_secs_f64();
    let ledger = &sender.ledger;
    let events_sent = ledger.verbs.total();
    let per_s = |n: u64| {
        if elapsed_s > 0.0 {
            n as f64 / elapsed_s
        } else {
            0.0
        }
    };
    Ok(Report {
        target: config.target.to_string(),
        mode: config.model.mode,
        format: config.format,
        sender_id: config.sender_id.clone(),
        seed: config.model.seed,
        ended_by,
        elapsed_s,
        datagrams_sent: sender.datagrams_sent,
        bytes_sent: sender.bytes_sent,
        events_sent,
        events_by_verb: ledger.verbs,
        calls_started: ledger.verbs.call_start,
        calls_stopped: ledger.verbs.call_stop,
        expected_active_calls: ledger.active_calls(),
        expected_emergency_calls: ledger.emergency_calls(),
        expected_registered_subscribers: ledger.registered_aors(),
        expected_registered_contacts: ledger.registered_contacts(),
        expected_provisioned_subscribers: ledger.subscribers(),
        calls_skipped_at_limit: model.calls_skipped(),
        send_retries: sender.socket.stats.retries,
        send_refused: sender.socket.stats.refused,
        datagrams_dropped: sender.datagrams_dropped,
        events_dropped: sender.events_dropped,
        events_per_s: per_s(events_sent),
        datagrams_per_s: per_s(sender.datagrams_sent),
    })
}

/// The IO half: batches actions into datagrams, sends them, keeps the books.
struct Sender<'a> {
    socket: Socket,
    builder: Builder,
    /// `--format hep`: every action goes out as its packets at once (no batching).
    hep: Option<hep::HepWriter>,
    ledger: Ledger,
    progress: &'a Progress,
    stop: &'a AtomicBool,
    rate: Option<f64>,
    start: Instant,
    /// When the datagram being built must be sent at the latest.
    batch_deadline: Option<Duration>,
    datagrams_sent: u64,
    bytes_sent: u64,
    datagrams_dropped: u64,
    events_dropped: u64,
}

impl Sender<'_> {
    fn push(&mut self, action: Action) -> Result<(), LoadgenError> {
        if self.hep.is_some() {
            return self.send_hep(action);
        }
        let was_empty = self.builder.is_empty();
        match self.builder.push(action) {
            Pushed::Added => {}
            Pushed::AddedFull => self.flush()?,
            Pushed::NoRoom => {
                self.flush()?;
                let pushed = self.builder.push(action);
                assert_ne!(pushed, Pushed::NoRoom, "one event fits an empty datagram");
                if pushed == Pushed::AddedFull {
                    self.flush()?;
                }
            }
        }
        if was_empty && !self.builder.is_empty() {
            self.batch_deadline = Some(self.start.elapsed() + FLUSH_INTERVAL);
        }
        Ok(())
    }

    /// Sends the datagram being built, if any.
    fn flush(&mut self) -> Result<(), LoadgenError> {
        self.batch_deadline = None;
        if self.builder.is_empty() {
            return Ok(());
        }
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.datagrams_sent as f64 / rate);
            self.sleep_until(due);
        }
        let events = self.builder.actions().len() as u64;
        match self.socket.send(self.builder.bytes(), self.stop)? {
            Sent::Delivered => {
                let bytes = self.builder.bytes().len() as u64;
                for action in self.builder.actions() {
                    self.ledger.apply(action);
                }
                self.datagrams_sent += 1;
                self.bytes_sent += bytes;
                self.progress.events_sent.fetch_add(events, Relaxed);
                self.progress.datagrams_sent.fetch_add(1, Relaxed);
                self.progress.bytes_sent.fetch_add(bytes, Relaxed);
                self.progress
                    .active_calls
                    .store(self.ledger.active_calls(), Relaxed);
                self.progress
                    .registered_aors
                    .store(self.ledger.registered_aors(), Relaxed);
            }
            Sent::Dropped => {
                self.datagrams_dropped += 1;
                self.events_dropped += events;
                self.progress.datagrams_dropped.fetch_add(1, Relaxed);
            }
        }
        self.builder.clear();
        Ok(())
    }

    /// Sends the HEP packets of one action; the books take it when a deciding packet went
    /// out (see the `hep` module).
    fn send_hep(&mut self, action: Action) -> Result<(), LoadgenError> {
        let writer = self.hep.as_mut().expect("hep format");
        let books = writer.build(action, unix_us());
        let mut decided = false;
        for (i, packet) in writer.packets().enumerate() {
            if let Some(rate) = self.rate {
                let due = Duration::from_secs_f64(self.datagrams_sent as f64 / rate);
                sleep_until(self.start, self.stop, due);
            }
            match self.socket.send(packet, self.stop)? {
                Sent::Delivered => {
                    decided |= writer.is_deciding(i);
                    self.datagrams_sent += 1;
                    self.bytes_sent += packet.len() as u64;
                    self.progress.datagrams_sent.fetch_add(1, Relaxed);
                    self.progress
                        .bytes_sent
                        .fetch_add(packet.len() as u64, Relaxed);
                }
                Sent::Dropped => {
                    self.datagrams_dropped += 1;
                    self.progress.datagrams_dropped.fetch_add(1, Relaxed);
                }
            }
        }
        if !decided {
            self.events_dropped += 1;
            return Ok(());
        }
        match books {
            hep::Books::Action => self.ledger.apply(&action),
            hep::Books::ContactSet { aor, mask } => {
                self.ledger.apply_contact_set(&action, aor, mask)
            }
        }
        self.progress.events_sent.fetch_add(1, Relaxed);
        self.progress
            .active_calls
            .store(self.ledger.active_calls(), Relaxed);
        self.progress
            .registered_aors
            .store(self.ledger.registered_aors(), Relaxed);
        Ok(())
    }

    /// Sleeps until `at` (time since start), in slices, returning early on `stop`.
    fn sleep_until(&self, at: Duration) {
        sleep_until(self.start, self.stop, at);
    }
}

/// Sleeps until `at` (time since `start`), in slices, returning early on `stop`.
fn sleep_until(start: Instant, stop: &AtomicBool, at: Duration) {
    loop {
        let now = start.elapsed();
        if now >= at || stop.load(Relaxed) {
            return;
        }
        std::thread::sleep((at - now).min(SLEEP_SLICE_MAX));
    }
}

/// The wall clock in unix microseconds (the capture time of HEP packets).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
