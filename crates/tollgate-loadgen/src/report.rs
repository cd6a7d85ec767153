//! What a run did: live counters while it runs ([`Progress`]) and the final [`Report`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::args::{Format, Mode};
use crate::ledger::VerbCounts;

/// Counters a live view can read while [`run_with_progress`](crate::run_with_progress)
/// runs on another thread. Updated once per datagram, with relaxed ordering: each counter
/// is exact, a snapshot across them is approximate.
#[derive(Debug, Default)]
pub struct Progress {
    pub events_sent: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Calls the agent should see up right now.
    pub active_calls: AtomicU64,
    /// AoRs the agent should see registered right now.
    pub registered_aors: AtomicU64,
    /// Datagrams given up on (see [`Report::datagrams_dropped`]).
    pub datagrams_dropped: AtomicU64,
}

/// A plain copy of [`Progress`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    pub events_sent: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub active_calls: u64,
    pub registered_aors: u64,
    pub datagrams_dropped: u64,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            events_sent: self.events_sent.load(Relaxed),
            datagrams_sent: self.datagrams_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            active_calls: self.active_calls.load(Relaxed),
            registered_aors: self.registered_aors.load(Relaxed),
            datagrams_dropped: self.datagrams_dropped.load(Relaxed),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `--duration` elapsed.
    Duration,
    /// `--max-events` events were generated.
    MaxEvents,
    /// The caller's stop flag was raised (Ctrl-C, demo shutdown).
    Stopped,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::Duration => "duration elapsed",
            EndReason::MaxEvents => "max events reached",
            EndReason::Stopped => "stopped",
        })
    }
}

/// The outcome of a run. The `expected_*` fields are what the agent should count right
/// after the run, given every datagram that was handed to the kernel and none that was
/// not; only loss on the way (a full receive buffer) makes the agent see less.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub target: String,
    pub mode: Mode,
    pub format: Format,
    pub sender_id: String,
    /// The seed used; pass it as `--seed` (with the same `--sender-id`) to replay the run.
    pub seed: u64,
    pub ended_by: EndReason,
    pub elapsed_s: f64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub events_sent: u64,
    pub events_by_verb: VerbCounts,
    /// `call-start` events sent.
    pub calls_started: u64,
    /// `call-stop` events sent (the end-of-run stops of `--stop-at-end` included).
    pub calls_stopped: u64,
    pub expected_active_calls: u64,
    pub expected_emergency_calls: u64,
    /// AoRs with at least one contact registered.
    pub expected_registered_subscribers: u64,
    pub expected_registered_contacts: u64,
    /// The last `subscribers` count sent, if any.
    pub expected_provisioned_subscribers: Option<u64>,
    /// Erlang arrivals not started because the model's active-call limit was reached.
    pub calls_skipped_at_limit: u64,
    /// Sends retried after the socket was full (EAGAIN, ENOBUFS).
    pub send_retries: u64,
    /// Sends answered "connection refused" (nobody listening at the target).
    pub send_refused: u64,
    /// Datagrams given up on (refused twice, or still full after the retry time); their
    /// events are not in the counts above.
    pub datagrams_dropped: u64,
    pub events_dropped: u64,
    pub events_per_s: f64,
    pub datagrams_per_s: f64,
}

impl fmt::Display for Report {
    /// A few lines, without a trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.events_by_verb;
        write!(
            f,
            "loadgen {mode} → {target} ({format}, sender {sender}, seed {seed}): {ended} after {elapsed:.2} s",
            mode = self.mode,
            target = self.target,
            format = self.format,
            sender = self.sender_id,
            seed = self.seed,
            ended = self.ended_by,
            elapsed = self.elapsed_s,
        )?;
        write!(
            f,
            "\n  sent      {} events in {} datagrams, {} bytes ({:.0} events/s, {:.0} datagrams/s)",
            self.events_sent,
            self.datagrams_sent,
            self.bytes_sent,
            self.events_per_s,
            self.datagrams_per_s,
        )?;
        write!(
            f,
            "\n  by verb   call-start {} · call-stop {} · call-refresh {} · reg {} · subscribers {}",
            v.call_start, v.call_stop, v.call_refresh, v.reg, v.subscribers,
        )?;
        write!(
            f,
            "\n  expected  {} active calls ({} emergency), {} registered subscribers ({} contacts)",
            self.expected_active_calls,
            self.expected_emergency_calls,
            self.expected_registered_subscribers,
            self.expected_registered_contacts,
        )?;
        if let Some(count) = self.expected_provisioned_subscribers {
            write!(f, ", {count} provisioned subscribers")?;
        }
        if self.send_retries + self.send_refused + self.datagrams_dropped > 0 {
            write!(
                f,
                "\n  trouble   {} send retries, {} refused, {} datagrams ({} events) dropped",
                self.send_retries, self.send_refused, self.datagrams_dropped, self.events_dropped,
            )?;
        }
        if self.calls_skipped_at_limit > 0 {
            write!(
                f,
                "\n  limit     {} arrivals skipped at {} active calls",
                self.calls_skipped_at_limit,
                crate::args::ACTIVE_CALLS_MAX
            )?;
        }
        Ok(())
    }
}
