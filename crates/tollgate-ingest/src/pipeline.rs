//! What happens to one datagram once it is in user space: sequence check, decode, apply,
//! answer `admit` queries. No sockets here: the caller hands in bytes and the time, and
//! gets back the reply to send (if any), so the whole path is testable without IO.

use std::sync::Arc;

use tollgate_events::{Event, Malformed};
use tollgate_usage::{Outcome, SeqVerdict, SequenceTracker, Tables, Timestamp};

use crate::stats::{DatagramDrop, EventOutcome, LocalStats};

/// Longest reply datagram built for one received datagram; further `admit` answers in the
/// same datagram are dropped (and counted as reply errors).
pub const REPLY_BYTES_MAX: usize = 8192;

/// The answer to an `admit` query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Denied, with a stable code (`deny <CODE>` on the wire).
    Deny(&'static str),
}

/// Decides `admit` queries. Implementations must answer from a lock-free read of state that
/// is computed elsewhere: this runs on the ingest thread for every query.
pub trait Admission: Send + Sync + 'static {
    fn decide(&self, call_id: &[u8], emergency: bool) -> Decision;
}

/// Admits everything: the policy when no license logic is wired in.
#[derive(Debug, Default, Clone, Copy)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn decide(&self, _call_id: &[u8], _emergency: bool) -> Decision {
        Decision::Admit
    }
}

/// Called once per receive batch, after its datagrams were applied (e.g. to sample peaks).
/// Runs on the ingest thread: keep it to a few atomic operations.
pub trait BatchObserver: Send + Sync + 'static {
    fn after_batch(&self, now: Timestamp);
}

/// Everything one datagram needs: the tables it changes, the sequence tracker that filters
/// replays, and the admission policy that answers queries. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct Pipeline {
    pub tables: Arc<Tables>,
    pub sequences: Arc<SequenceTracker>,
    pub admission: Arc<dyn Admission>,
    pub observer: Option<Arc<dyn BatchObserver>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Processes one datagram received at `now`. Answers to `admit` queries are appended to
    /// `reply` (one `\n`-terminated line per query, in order); the caller sends `reply` back
    /// to the datagram's source when it is not empty.
    pub fn process(
        &self,
        now: Timestamp,
        datagram: &[u8],
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        stats.datagrams += 1;
        stats.bytes += datagram.len() as u64;
        let decoded = tollgate_events::decode(datagram);
        if let Some(seq) = &decoded.seq {
            match self.sequences.check(now, seq) {
                SeqVerdict::Fresh { lost } => stats.lost_datagrams += lost,
                SeqVerdict::Restarted => stats.sender_restarts += 1,
                SeqVerdict::Duplicate => {
                    stats.dropped[DatagramDrop::Duplicate as usize] += 1;
                    return;
                }
            }
        }
        for item in decoded.events {
            match item {
                Ok(event) => self.apply(now, &event, stats, reply),
                Err(reason) => stats.malformed[reason as usize] += 1,
            }
        }
    }

    /// Lets the observer see the tables after a batch.
    #[inline]
    pub fn after_batch(&self, now: Timestamp) {
        if let Some(observer) = &self.observer {
            observer.after_batch(now);
        }
    }

    /// Counts a datagram that did not fit the receive slot: it is dropped whole, since a cut
    /// datagram's last event may be cut too.
    pub fn reject_oversize(&self, datagram_len: usize, stats: &mut LocalStats) {
        stats.datagrams += 1;
        stats.bytes += datagram_len as u64;
        stats.dropped[DatagramDrop::Oversize as usize] += 1;
        stats.malformed[Malformed::Oversize as usize] += 1;
    }

    #[inline]
    fn apply(
        &self,
        now: Timestamp,
        event: &Event<'_>,
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        stats.events[event.verb() as usize] += 1;
        if let Event::Admit { call_id, emergency } = *event {
            let decision = self.admission.decide(call_id, emergency);
            let outcome = match decision {
                Decision::Admit => EventOutcome::AdmitOk,
                Decision::Deny(_) => EventOutcome::AdmitDenied,
            };
            stats.outcomes[outcome as usize] += 1;
            write_decision(decision, reply, stats);
            return;
        }
        let outcome = match self.tables.apply(now, event) {
            Outcome::CallStarted => EventOutcome::CallStarted,
            Outcome::CallAlreadyActive => EventOutcome::CallAlreadyActive,
            Outcome::CallAlreadyStopped => EventOutcome::CallAlreadyStopped,
            Outcome::CallStopped => EventOutcome::CallStopped,
            Outcome::CallUnknown => EventOutcome::CallUnknown,
            Outcome::CallRefreshed => EventOutcome::CallRefreshed,
            Outcome::ContactAdded => EventOutcome::ContactAdded,
            Outcome::ContactRefreshed => EventOutcome::ContactRefreshed,
            Outcome::ContactRemoved => EventOutcome::ContactRemoved,
            Outcome::ContactUnknown => EventOutcome::ContactUnknown,
            Outcome::SubscribersSet => EventOutcome::SubscribersSet,
            Outcome::NotAChange => return,
        };
        stats.outcomes[outcome as usize] += 1;
    }
}

fn write_decision(decision: Decision, reply: &mut Vec<u8>, stats: &mut LocalStats) {
    let (word, code): (&[u8], &str) = match decision {
        Decision::Admit => (b"ok", ""),
        Decision::Deny(code) => (b"deny ", code),
    };
    if reply.len() + word.len() + code.len() + 1 > REPLY_BYTES_MAX {
        stats.reply_errors += 1;
        return;
    }
    reply.extend_from_slice(word);
    reply.extend_from_slice(code.as_bytes());
    reply.push(b'\n');
}
