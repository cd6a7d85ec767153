//! What happens to one datagram once it is in user space: sequence check, decode, apply,
//! answer `admit` queries. No sockets here: the caller hands in bytes and the time, and
//! gets back the reply to send (if any), so the whole path is testable without IO.
//!
//! Three formats share the event sockets, told apart by their first byte: `0xFF` is a
//! binary batch, `{` (after optional blanks) an OpenSIPS `event_datagram` JSON-RPC
//! notification (`tollgate-opensips`, one event per datagram, no sequence header), anything
//! else the text protocol.

use std::sync::Arc;

use tollgate_events::{Event, Malformed, Verb};
use tollgate_usage::{
    CallEvent, GroupScratch, MonoTime, Outcome, Owner, SeqVerdict, SequenceTracker, Tables,
};

use crate::stats::{
    DatagramDrop, EventOutcome, EventRefusal, LocalStats, OPENSIPS_APPLIED, OPENSIPS_IGNORED,
};

/// Longest reply datagram built for one received datagram; further `admit` answers in the
/// same datagram are dropped (and counted: `reply_answers_dropped`).
pub const REPLY_BYTES_MAX: usize = 8192;

/// Most call events [`Pending`] holds before it applies them (a bound on its memory:
/// 24 bytes per event). A receive batch of binary datagrams may carry more; it is then
/// applied in runs of this many.
pub const RUN_EVENTS_MAX: usize = 1024;

/// Call events decoded and fingerprinted, their table slots prefetched
/// ([`Tables::call_event`]), waiting to be applied together: a run that goes across the
/// datagrams of one receive batch, applied with one lock per shard instead of one per event
/// ([`Tables::apply_calls`]) and with the cache misses of its events overlapping (software
/// pipelining, as DPDK's bulk hash lookups do). Any other event (a registration, an
/// `admit`, a `sync-*` line) first applies the run queued before it, so every event sees the
/// tables as the datagrams' order leaves them. Drained by [`Pipeline::finish`] before the
/// batch ends; keep one per receive loop (its buffers are reused, nothing is allocated once
/// they have grown).
#[derive(Default)]
pub struct Pending {
    ops: Vec<CallEvent>,
    scratch: GroupScratch,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("len", &self.ops.len())
            .finish()
    }
}

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
    fn after_batch(&self, now: MonoTime);
}

/// Everything one datagram needs: the tables it changes, the sequence tracker that filters
/// replays, and the admission policy that answers queries. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct Pipeline {
    pub tables: Arc<Tables>,
    pub sequences: Arc<SequenceTracker>,
    pub admission: Arc<dyn Admission>,
    pub observer: Option<Arc<dyn BatchObserver>>,
    /// The journal every applied batch is appended to first (`None`: not crash-safe).
    pub journal: Option<Arc<crate::Journal>>,
}

#[cfg(test)]
impl Pipeline {
    /// The tests' pipeline over `tables`: a fixed sequence-tracker key, every query
    /// admitted, no observer, no journal.
    pub(crate) fn for_tests(tables: Arc<Tables>) -> Self {
        Pipeline {
            tables,
            sequences: Arc::new(SequenceTracker::with_key(&tollgate_usage::FingerprintKey(
                [8; 32],
            ))),
            admission: Arc::new(crate::AdmitAll),
            observer: None,
            journal: None,
        }
    }
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
        now: MonoTime,
        datagram: &[u8],
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        let mut pending = Pending::default();
        self.process_pipelined(now, datagram, stats, reply, &mut pending);
        self.finish(now, &mut pending, stats);
    }

    /// [`process`](Self::process) that leaves the datagram's trailing call events in
    /// `pending`, prefetched and not applied yet, to be applied with those of the next
    /// datagrams of the batch; the caller ends the batch with [`finish`](Self::finish).
    pub fn process_pipelined(
        &self,
        now: MonoTime,
        datagram: &[u8],
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
        pending: &mut Pending,
    ) {
        if self.check_sequence(now, datagram, stats) {
            self.apply_pipelined(now, datagram, stats, reply, pending);
        }
    }

    /// Applies every call event queued in `pending`.
    pub fn finish(&self, now: MonoTime, pending: &mut Pending, stats: &mut LocalStats) {
        if pending.ops.is_empty() {
            return;
        }
        let Pending { ops, scratch } = pending;
        self.tables.apply_calls(now, ops, scratch, |i, outcome| {
            count_outcome(ops[i].op.verb(), outcome, stats);
        });
        ops.clear();
    }

    /// Queues a call event (fingerprinted, its slot prefetched), applying the run first when
    /// it is full.
    #[inline]
    fn queue_call(
        &self,
        now: MonoTime,
        event: &Event<'_>,
        owner: Owner,
        stats: &mut LocalStats,
        pending: &mut Pending,
    ) {
        if let Some(call) = self.tables.call_event(event, owner) {
            self.queue(now, call, stats, pending);
        }
    }

    /// Queues a call event whose slot was prefetched, applying the run first when it is
    /// full.
    #[inline]
    pub(crate) fn queue(
        &self,
        now: MonoTime,
        call: CallEvent,
        stats: &mut LocalStats,
        pending: &mut Pending,
    ) {
        if pending.ops.len() >= RUN_EVENTS_MAX {
            self.finish(now, pending, stats);
        }
        pending.ops.push(call);
    }

    /// The first half of [`process`](Self::process): counts the datagram and checks its
    /// sequence header; `false` means a replay, dropped (and counted). The receive loop calls
    /// this for a whole batch, journals what passed, then applies it.
    pub fn check_sequence(&self, now: MonoTime, datagram: &[u8], stats: &mut LocalStats) -> bool {
        stats.datagrams += 1;
        stats.bytes += datagram.len() as u64;
        if tollgate_opensips::looks_like_json(datagram) {
            return true;
        }
        if let Some(seq) = &tollgate_events::decode(datagram).seq {
            match self.sequences.check(now, seq) {
                SeqVerdict::Fresh { lost } => {
                    stats.lost_datagrams = stats.lost_datagrams.saturating_add(lost);
                }
                SeqVerdict::Restarted { lost } => {
                    stats.sender_restarts += 1;
                    stats.lost_datagrams = stats.lost_datagrams.saturating_add(lost);
                }
                SeqVerdict::Duplicate => {
                    stats.dropped[DatagramDrop::Duplicate as usize] += 1;
                    return false;
                }
            }
        }
        true
    }

    /// The second half of [`process`](Self::process): decodes and applies a datagram that
    /// passed [`check_sequence`](Self::check_sequence).
    pub fn apply_datagram(
        &self,
        now: MonoTime,
        datagram: &[u8],
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        let mut pending = Pending::default();
        self.apply_pipelined(now, datagram, stats, reply, &mut pending);
        self.finish(now, &mut pending, stats);
    }

    /// [`apply_datagram`](Self::apply_datagram) through `pending` (see
    /// [`process_pipelined`](Self::process_pipelined)).
    pub fn apply_pipelined(
        &self,
        now: MonoTime,
        datagram: &[u8],
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
        pending: &mut Pending,
    ) {
        if tollgate_opensips::looks_like_json(datagram) {
            self.finish(now, pending, stats);
            self.process_opensips(now, datagram, stats, reply);
            return;
        }
        let decoded = tollgate_events::decode(datagram);
        // Who reported these entries: a reconciliation source corrects only its own.
        let owner = decoded
            .seq
            .as_ref()
            .map_or(Owner::NONE, |seq| self.tables.owners().intern(seq.sender));
        for item in decoded.events {
            match item {
                Ok(
                    event @ (Event::CallStart { .. }
                    | Event::CallStop { .. }
                    | Event::CallRefresh { .. }),
                ) => self.queue_call(now, &event, owner, stats, pending),
                Ok(Event::Sync(line)) => {
                    self.finish(now, pending, stats);
                    stats.events[Verb::Sync as usize] += 1;
                    self.tables
                        .sync_line(now, decoded.seq.map(|seq| seq.sender), &line);
                }
                Ok(event) => {
                    self.finish(now, pending, stats);
                    self.apply_from(now, &event, owner, stats, reply);
                }
                Err(reason) => stats.malformed[reason as usize] += 1,
            }
        }
    }

    /// Applies a journalled datagram again at its original receive time (start-up replay):
    /// no sequence check (it was made when the datagram arrived), no `admit` answers; the
    /// sender's `seq` header still names the owner of what it reports.
    pub fn replay(&self, now: MonoTime, datagram: &[u8], stats: &mut LocalStats) {
        let mut no_reply = Vec::new();
        if tollgate_opensips::looks_like_json(datagram) {
            if let Ok(Some(event)) = tollgate_opensips::decode(datagram, now) {
                self.apply(now, &event.as_event(), stats, &mut no_reply);
            }
            return;
        }
        let decoded = tollgate_events::decode(datagram);
        let owner = decoded
            .seq
            .as_ref()
            .map_or(Owner::NONE, |seq| self.tables.owners().intern(seq.sender));
        for event in decoded.events.flatten() {
            match event {
                Event::Sync(line) => {
                    self.tables
                        .sync_line(now, decoded.seq.map(|seq| seq.sender), &line);
                }
                Event::Admit { .. } => {}
                event => {
                    no_reply.clear();
                    self.apply_from(now, &event, owner, stats, &mut no_reply);
                }
            }
        }
    }

    /// One OpenSIPS notification: decoded (not on the hot path: JSON), applied, counted by
    /// result.
    #[cold]
    fn process_opensips(
        &self,
        now: MonoTime,
        datagram: &[u8],
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        match tollgate_opensips::decode(datagram, now) {
            Ok(Some(event)) => {
                stats.opensips[OPENSIPS_APPLIED] += 1;
                self.apply(now, &event.as_event(), stats, reply);
            }
            Ok(None) => stats.opensips[OPENSIPS_IGNORED] += 1,
            Err(error) => stats.opensips[2 + error.index()] += 1,
        }
    }

    /// Lets the observer see the tables after a batch.
    #[inline]
    pub fn after_batch(&self, now: MonoTime) {
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

    /// Counts, as lost, the unseen tails of senders silent for `idle_ms` (see
    /// [`SequenceTracker::sweep_idle`]). Called by the agent's sweeper, not on the hot path.
    pub fn sweep_idle_senders(&self, now: MonoTime, idle_ms: u64, stats: &mut LocalStats) {
        let lost = self.sequences.sweep_idle(now, idle_ms);
        stats.lost_datagrams = stats.lost_datagrams.saturating_add(lost);
    }

    /// Applies one decoded event (and answers it into `reply` if it is an `admit`).
    ///
    /// A number a table refuses as out of range (`expires` above `max_expires_s`) is
    /// counted as malformed (`bad_number`), like one the decoder refuses; an event a full
    /// table refuses is counted by [`EventRefusal`].
    #[inline]
    pub(crate) fn apply(
        &self,
        now: MonoTime,
        event: &Event<'_>,
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        self.apply_from(now, event, Owner::NONE, stats, reply);
    }

    /// [`Pipeline::apply`] for an event reported by `owner`.
    #[inline]
    pub(crate) fn apply_from(
        &self,
        now: MonoTime,
        event: &Event<'_>,
        owner: Owner,
        stats: &mut LocalStats,
        reply: &mut Vec<u8>,
    ) {
        if let Event::Admit { call_id, emergency } = *event {
            stats.events[event.verb() as usize] += 1;
            let decision = self.admission.decide(call_id, emergency);
            let outcome = match decision {
                Decision::Admit => EventOutcome::AdmitOk,
                Decision::Deny(_) => EventOutcome::AdmitDenied,
            };
            stats.outcomes[outcome as usize] += 1;
            write_decision(decision, reply, stats);
            return;
        }
        let outcome = self.tables.apply_from(now, event, owner);
        count_outcome(event.verb(), outcome, stats);
    }
}

/// Counts what one applied event did.
#[inline]
pub(crate) fn count_outcome(verb: Verb, outcome: Outcome, stats: &mut LocalStats) {
    {
        let outcome = match outcome {
            Outcome::BadNumber => {
                stats.malformed[Malformed::BadNumber as usize] += 1;
                return;
            }
            Outcome::CallsTableFull => {
                stats.events[verb as usize] += 1;
                stats.refused[EventRefusal::CallsTableFull as usize] += 1;
                return;
            }
            Outcome::RegistrationsTableFull => {
                stats.events[verb as usize] += 1;
                stats.refused[EventRefusal::RegistrationsTableFull as usize] += 1;
                return;
            }
            Outcome::ContactReplaced => EventOutcome::ContactReplaced,
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
            Outcome::NotAChange => {
                stats.events[verb as usize] += 1;
                return;
            }
        };
        stats.events[verb as usize] += 1;
        stats.outcomes[outcome as usize] += 1;
    }
}

fn write_decision(decision: Decision, reply: &mut Vec<u8>, stats: &mut LocalStats) {
    let (word, code): (&[u8], &str) = match decision {
        Decision::Admit => (b"ok", ""),
        Decision::Deny(code) => (b"deny ", code),
    };
    if reply.len() + word.len() + code.len() + 1 > REPLY_BYTES_MAX {
        stats.reply_answers_dropped += 1;
        return;
    }
    reply.extend_from_slice(word);
    reply.extend_from_slice(code.as_bytes());
    reply.push(b'\n');
}

#[cfg(test)]
mod tests {
    use tollgate_usage::{FingerprintKey, TablesConfig};

    use super::*;
    use crate::stats::{OPENSIPS_RESULT_COUNT, OPENSIPS_RESULTS};

    fn pipeline() -> Pipeline {
        Pipeline::for_tests(Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([7; 32]),
        )))
    }

    fn dialog(old: u8, new: u8) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{{"hash_entry":3116,"hash_id":1804289383,"callid":"1-4242@127.0.1.1","from_tag":"4242SIPpTag001","to_tag":"4243SIPpTag011","old_state":{old},"new_state":{new}}}}}"#
        )
    }

    /// A `sync-*` list of 100 calls across 50 numbered datagrams (`seq fs1 n`), minus the
    /// datagrams in `lost`.
    fn sync_list(epoch: u64, first_seq: u64, lost: &[usize]) -> Vec<String> {
        let mut datagrams = vec![format!("seq fs1 {first_seq}\nsync-begin fs1 {epoch}\n")];
        for d in 1..49 {
            let calls: String = (0..2)
                .map(|i| format!("sync-call c{} tag=t\n", d * 2 + i))
                .collect();
            datagrams.push(format!("seq fs1 {}\n{calls}", first_seq + d as u64));
        }
        datagrams.push(format!(
            "seq fs1 {}\nsync-call c0 tag=t\nsync-call c1 tag=t\nsync-call c98 tag=t\nsync-call c99 tag=t\nsync-end fs1 {epoch} 100 0\n",
            first_seq + 49
        ));
        datagrams
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !lost.contains(i))
            .map(|(_, d)| d)
            .collect()
    }

    #[test]
    fn admit_answers_beyond_a_full_reply_are_dropped_and_counted() {
        let p = pipeline();
        let now = MonoTime::from_unix_secs(1_700_000_000);
        let (mut stats, mut reply) = (LocalStats::default(), Vec::new());
        // 3 bytes per `ok\n`: 2730 answers fit in 8192 bytes, the rest do not.
        let queries: String = (0..3000).map(|i| format!("admit c{i}\n")).collect();
        p.process(now, queries.as_bytes(), &mut stats, &mut reply);
        assert_eq!(reply.len(), REPLY_BYTES_MAX / 3 * 3);
        assert_eq!(
            stats.reply_answers_dropped,
            3000 - REPLY_BYTES_MAX as u64 / 3
        );
        assert_eq!(stats.reply_errors, 0);
    }

    #[test]
    fn sync_lists_over_50_datagrams_heal_or_are_discarded_whole() {
        let p = pipeline();
        let now = MonoTime::from_unix_secs(1_700_000_000);
        let (mut stats, mut reply) = (LocalStats::default(), Vec::new());
        // The sender's own events: a phantom (its stop was lost) and a call it still has.
        p.process(
            now,
            b"seq fs1 1\ncall-start phantom tag=t\ncall-start c5 tag=t\n",
            &mut stats,
            &mut reply,
        );
        // One datagram of the list is lost: the counts in sync-end tell, nothing applies.
        for d in sync_list(1, 2, &[17]) {
            p.process(now, d.as_bytes(), &mut stats, &mut reply);
        }
        assert!(p.tables.take_complete_sync_lists(now).is_empty());
        assert_eq!(p.tables.usage().calls, 2);
        let results = p.tables.sync_lists().results();
        assert_eq!(results[tollgate_usage::SyncResult::Incomplete as usize], 1);
        // The next complete list heals: 99 missing calls added, the phantom removed.
        for d in sync_list(2, 100, &[]) {
            p.process(now, d.as_bytes(), &mut stats, &mut reply);
        }
        let lists = p.tables.take_complete_sync_lists(now);
        assert_eq!(lists.len(), 1);
        for list in lists {
            let c = p
                .tables
                .reconcile(now, &list.run, list.list, list.scope, true);
            p.tables.finish_run(list.run);
            assert_eq!((c.missing_calls, c.phantom_calls), (99, 1));
        }
        assert_eq!(p.tables.usage().calls, 100);
        // 102 lines per list (begin, 100 calls, end), two lines lost with datagram 17.
        assert_eq!(stats.events[Verb::Sync as usize], 2 * 102 - 2);
        assert!(reply.is_empty());
    }

    #[test]
    fn opensips_notifications_share_the_event_sockets() {
        let p = pipeline();
        let now = MonoTime::from_unix_secs(1_700_000_000);
        let (mut stats, mut reply) = (LocalStats::default(), Vec::new());
        let contact = r#" {"jsonrpc":"2.0","method":"E_UL_CONTACT_INSERT","params":{"domain":"location","aor":"alice","uri":"sip:alice@10.0.0.1:5060","expires":1700000600}}"#;
        let datagrams = [
            dialog(1, 2),
            dialog(2, 4),
            dialog(3, 4),
            contact.to_string(),
            "{not json".to_string(),
            r#"{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{}}"#.to_string(),
            "call-start text@h\n".to_string(),
        ];
        for d in &datagrams {
            p.process(now, d.as_bytes(), &mut stats, &mut reply);
        }
        assert!(reply.is_empty());
        let usage = p.tables.usage();
        assert_eq!((usage.calls, usage.registered_contacts), (2, 1));
        let expected: [(&str, u64); OPENSIPS_RESULT_COUNT] = [
            ("applied", 2),
            ("ignored", 2),
            ("too_long", 0),
            ("bad_json", 1),
            ("bad_envelope", 0),
            ("unknown_method", 1),
            ("missing_param", 0),
            ("bad_param", 0),
        ];
        let got: Vec<(&str, u64)> = OPENSIPS_RESULTS
            .iter()
            .copied()
            .zip(stats.opensips)
            .collect();
        assert_eq!(got, expected);
        assert_eq!(stats.datagrams, 7);
        assert_eq!(stats.events[tollgate_events::Verb::CallStart as usize], 2);
        p.process(now, dialog(4, 5).as_bytes(), &mut stats, &mut reply);
        assert_eq!(p.tables.usage().calls, 1);
        let applied = OPENSIPS_RESULTS.iter().position(|r| *r == "applied");
        assert_eq!(applied.map(|i| stats.opensips[i]), Some(3));
    }

    #[test]
    fn hostile_numbers_are_bad_numbers_and_a_seq_jump_is_one_restart() {
        let p = Pipeline {
            tables: Arc::new(Tables::new(
                TablesConfig {
                    max_active_calls: 1,
                    max_expires_s: 3600,
                    ..TablesConfig::default()
                },
                FingerprintKey([7; 32]),
            )),
            ..pipeline()
        };
        let now = MonoTime::from_unix_secs(1_700_000_000);
        let (mut stats, mut reply) = (LocalStats::default(), Vec::new());
        for d in [
            "seq x 0\nsubscribers 18446744073709551615\nsubscribers 1099511627777\n",
            "seq x 18446744073709551615\nreg a c 3601\nreg a c 4294967295\nreg a c 3600\n",
            "call-start c1\ncall-start c2\n",
        ] {
            p.process(now, d.as_bytes(), &mut stats, &mut reply);
        }
        assert_eq!(stats.malformed[Malformed::BadNumber as usize], 4);
        assert_eq!((stats.sender_restarts, stats.lost_datagrams), (1, 0));
        assert_eq!(stats.refused[EventRefusal::CallsTableFull as usize], 1);
        assert_eq!(stats.events[tollgate_events::Verb::Register as usize], 1);
        assert_eq!(stats.events[tollgate_events::Verb::CallStart as usize], 2);
        let usage = p.tables.usage();
        assert_eq!(
            (usage.calls, usage.registered_contacts, usage.subscribers),
            (1, 1, 0)
        );
        assert_eq!(EventRefusal::CallsTableFull.as_str(), "calls_table_full");
    }

    /// One receive batch through the prefetch queue ends with the same tables and counters
    /// as the same datagrams processed one by one: call events are queued, everything else
    /// (registrations, admits, subscribers, malformed lines) drains the queue first.
    #[test]
    fn a_pipelined_batch_ends_like_datagrams_processed_one_by_one() {
        let key = FingerprintKey([9; 32]);
        let new = || Pipeline {
            tables: Arc::new(Tables::new(TablesConfig::default(), key.clone())),
            ..pipeline()
        };
        let (one_by_one, pipelined) = (new(), new());
        // A deterministic mix: starts, stops, refreshes of few calls (so duplicates and
        // stops without starts happen), registrations, admits, junk.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut datagrams: Vec<String> = Vec::new();
        for _ in 0..300 {
            let mut d = String::new();
            for _ in 0..=(x % 3) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = x % 23;
                d += &match (x >> 8) % 9 {
                    0..=2 => format!("call-start c{id} tag=t{}\n", id % 2),
                    3 | 4 => format!("call-stop c{id} tag=t{}\n", id % 2),
                    5 => format!("call-refresh c{id} tag=t{}\n", id % 2),
                    6 => format!("reg sip:u{id}@x sip:c{id}@h 60\n"),
                    7 => format!("admit c{id}\n"),
                    _ => "call-start\n".to_owned(),
                };
            }
            datagrams.push(d);
        }
        // Batches 40 s apart: tombstones (32 s) lapse between them.
        let at = |k: usize| MonoTime::from_unix_secs(1_750_000_000 + 40 * k as u64);
        let (mut stats_a, mut stats_b) = (LocalStats::default(), LocalStats::default());
        let (mut reply_a, mut reply_b) = (Vec::new(), Vec::new());
        for (k, batch) in datagrams.chunks(64).enumerate() {
            for d in batch {
                reply_a.clear();
                one_by_one.process(at(k), d.as_bytes(), &mut stats_a, &mut reply_a);
            }
        }
        let now = at(datagrams.len().div_ceil(64));
        for (k, batch) in datagrams.chunks(64).enumerate() {
            let now = at(k);
            let mut pending = Pending::default();
            for d in batch {
                reply_b.clear();
                pipelined.process_pipelined(
                    now,
                    d.as_bytes(),
                    &mut stats_b,
                    &mut reply_b,
                    &mut pending,
                );
            }
            pipelined.finish(now, &mut pending, &mut stats_b);
            assert!(pending.is_empty());
        }
        assert_eq!(format!("{stats_a:?}"), format!("{stats_b:?}"));
        assert_eq!(one_by_one.tables.usage(), pipelined.tables.usage());
        assert!(one_by_one.tables.usage().calls > 0);
        // The same calls are open in both: stopping each gives the same outcome.
        for id in 0..23 {
            let line = format!("call-stop c{id} tag=t{}", id % 2);
            let event = tollgate_events::decode(line.as_bytes())
                .events
                .next()
                .and_then(Result::ok)
                .unwrap();
            assert_eq!(
                one_by_one.tables.apply(now, &event),
                pipelined.tables.apply(now, &event),
                "{line}"
            );
        }
    }
}
