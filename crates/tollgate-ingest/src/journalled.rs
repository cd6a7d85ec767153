//! The journalled path of a receive batch, in two passes around one append:
//!
//! 1. [`Pipeline::encode_datagram`], for each datagram that passed the sequence check:
//!    decode it, count what is malformed, and write its events to an *events record*
//!    ([`tollgate_usage::journal`]): call events by the fingerprint the call table keys them
//!    by (17 bytes each), everything else by its fields.
//! 2. The caller appends the record to the journal (one `write(2)`), then, still holding
//!    the journal, [`Pipeline::apply_entries`] applies the record itself and answers the
//!    `admit` queries in it, datagram by datagram.
//!
//! Replay at start runs the same [`Pipeline::apply_entries`] on the records read back
//! (without answering anything), so what a restart rebuilds is what was applied, by
//! construction. Journalling decoded events instead of the datagrams costs a fraction of
//! the bytes (a call event of 40 to 80 bytes becomes 17) and computes nothing twice: the
//! fingerprint made for the record is the one applied.

use tollgate_events::{Event, Verb};
use tollgate_usage::journal::{Entries, Entry, RecordBuilder};
use tollgate_usage::{CallEvent, CallOp, MonoTime, Owner};

use crate::pipeline::{Pending, Pipeline};
use crate::stats::{LocalStats, OPENSIPS_APPLIED, OPENSIPS_IGNORED};

impl Pipeline {
    /// Pass 1 (module doc): writes the events of a datagram that passed
    /// [`check_sequence`](Pipeline::check_sequence) to the events record being built (begun
    /// with [`RecordBuilder::begin_events`]), counting malformed lines and OpenSIPS results.
    /// Returns whether it wrote anything (a datagram entry and at least one event).
    pub fn encode_datagram(
        &self,
        now: MonoTime,
        datagram: &[u8],
        record: &mut RecordBuilder,
        stats: &mut LocalStats,
    ) -> bool {
        if tollgate_opensips::looks_like_json(datagram) {
            return self.encode_opensips(now, datagram, record, stats);
        }
        let decoded = tollgate_events::decode(datagram);
        let sender = decoded.seq.as_ref().map(|seq| seq.sender);
        let mut opened = false;
        for item in decoded.events {
            let event = match item {
                Ok(event) => event,
                Err(reason) => {
                    stats.malformed[reason as usize] += 1;
                    continue;
                }
            };
            if !opened {
                record.push_datagram(sender);
                opened = true;
            }
            let (op, call) = match event {
                Event::CallStart { call, emergency } => (CallOp::Start { emergency }, call),
                Event::CallStop { call } => (CallOp::Stop, call),
                Event::CallRefresh { call } => (CallOp::Refresh, call),
                other => {
                    let written = record.push_event(&other);
                    debug_assert!(written, "a decoded event always fits: {other:?}");
                    continue;
                }
            };
            // Its slot fetched while the next events are decoded and hashed, for pass 2.
            let fingerprint = self.tables.call_fingerprint(call);
            self.tables.prefetch_call(fingerprint);
            record.push_call(op, fingerprint);
        }
        opened
    }

    /// An OpenSIPS notification (not on the hot path: JSON), decoded at `now` (its absolute
    /// expiry becomes a relative one) and counted by result.
    #[cold]
    fn encode_opensips(
        &self,
        now: MonoTime,
        datagram: &[u8],
        record: &mut RecordBuilder,
        stats: &mut LocalStats,
    ) -> bool {
        let event = match tollgate_opensips::decode(datagram, now) {
            Ok(Some(event)) => event,
            Ok(None) => {
                stats.opensips[OPENSIPS_IGNORED] += 1;
                return false;
            }
            Err(error) => {
                stats.opensips[2 + error.index()] += 1;
                return false;
            }
        };
        stats.opensips[OPENSIPS_APPLIED] += 1;
        record.push_datagram(None);
        match event.as_event() {
            Event::CallStart { call, emergency } => record.push_call(
                CallOp::Start { emergency },
                self.tables.call_fingerprint(call),
            ),
            Event::CallStop { call } => {
                record.push_call(CallOp::Stop, self.tables.call_fingerprint(call))
            }
            Event::CallRefresh { call } => {
                record.push_call(CallOp::Refresh, self.tables.call_fingerprint(call))
            }
            other => {
                let written = record.push_event(&other);
                debug_assert!(written, "a decoded event always fits: {other:?}");
            }
        }
        true
    }

    /// Pass 2 (module doc), and replay: applies the entries of an events record received at
    /// `now`, in effect in order: call entries are queued in `pending` (their slots
    /// prefetched) and applied as runs with one lock per shard ([`Pipeline::finish`]), each
    /// run before the next entry that is not a call and at the end. With `answers` (a
    /// buffer), `admit` queries are answered: each datagram's answers are handed to `reply`
    /// with the datagram's index in the record (0, 1, …) once its last entry is applied;
    /// without (replay), they are skipped.
    pub fn apply_entries(
        &self,
        now: MonoTime,
        entries: Entries<'_>,
        pending: &mut Pending,
        stats: &mut LocalStats,
        answers: Option<&mut Vec<u8>>,
        mut reply: impl FnMut(usize, &[u8], &mut LocalStats),
    ) {
        let mut unused = Vec::new();
        let answer = answers.is_some();
        let reply_buf = answers.unwrap_or(&mut unused);
        let mut owner = Owner::NONE;
        let mut sender: Option<&[u8]> = None;
        let mut datagram: Option<usize> = None;
        reply_buf.clear();
        for entry in entries {
            match entry {
                Entry::Call { op, call } => {
                    self.tables.prefetch_call(call);
                    self.queue(
                        now,
                        CallEvent {
                            fingerprint: call,
                            op,
                            owner,
                        },
                        stats,
                        pending,
                    );
                }
                Entry::Datagram { sender: from } => {
                    if let Some(d) = datagram
                        && !reply_buf.is_empty()
                    {
                        reply(d, reply_buf, stats);
                        reply_buf.clear();
                    }
                    datagram = Some(datagram.map_or(0, |d| d + 1));
                    sender = from;
                    owner = from.map_or(Owner::NONE, |s| self.tables.owners().intern(s));
                }
                Entry::Event(Event::Sync(line)) => {
                    self.finish(now, pending, stats);
                    stats.events[Verb::Sync as usize] += 1;
                    self.tables.sync_line(now, sender, &line);
                }
                Entry::Event(event @ Event::Admit { .. }) => {
                    if answer {
                        self.finish(now, pending, stats);
                        self.apply_from(now, &event, owner, stats, reply_buf);
                    }
                }
                Entry::Event(event) => {
                    self.finish(now, pending, stats);
                    self.apply_from(now, &event, owner, stats, reply_buf);
                }
            }
        }
        self.finish(now, pending, stats);
        if let Some(d) = datagram
            && !reply_buf.is_empty()
        {
            reply(d, reply_buf, stats);
            reply_buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tollgate_usage::{FingerprintKey, Tables, TablesConfig};

    use super::*;

    fn pipeline() -> Pipeline {
        Pipeline::for_tests(Arc::new(Tables::new(
            TablesConfig::default(),
            FingerprintKey([7; 32]),
        )))
    }

    /// The datagrams of one batch, journalled (encode, then apply the record) and replayed
    /// (the record applied again on fresh tables), end like the same datagrams processed
    /// without a journal: same tables, same counters, same answers.
    #[test]
    fn an_events_record_applies_and_replays_like_the_datagrams() {
        let datagrams: Vec<Vec<u8>> = vec![
            b"seq kam1 1\ncall-start c1 tag=a\ncall-start c2 emergency\nadmit c3\n".to_vec(),
            b"call-stop c1 tag=a\ncall-refresh c2\nbogus line\nreg sip:a@x sip:a@h 60\n".to_vec(),
            b"subscribers 1200\nadmit c4 emergency\ncall-start\n".to_vec(),
            b"seq kam1 2\nsync-begin kam1 1\nsync-call c2 emergency\nsync-end kam1 1 1 0\n"
                .to_vec(),
            br#"{"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"hash_entry":1,"hash_id":2,"callid":"j1","from_tag":"t","to_tag":"u","old_state":1,"new_state":4}}"#.to_vec(),
            b"only junk\n".to_vec(),
            {
                let mut enc = tollgate_events::binary::Encoder::new(1400);
                enc.reset(None);
                for i in 0..20 {
                    let id = format!("bin{i}");
                    let call = tollgate_events::CallRef {
                        call_id: id.as_bytes(),
                        from_tag: Some(b"t"),
                    };
                    enc.push(&Event::CallStart {
                        call,
                        emergency: false,
                    })
                    .unwrap();
                }
                enc.into_vec()
            },
        ];
        let now = MonoTime::from_unix_secs(1_750_000_000);
        let plain = pipeline();
        let (mut plain_stats, mut plain_replies) = (LocalStats::default(), Vec::new());
        for d in &datagrams {
            let mut reply = Vec::new();
            plain.process(now, d, &mut plain_stats, &mut reply);
            plain_replies.push(reply);
        }
        let journalled = pipeline();
        let mut stats = LocalStats::default();
        let mut record = RecordBuilder::default();
        record.begin_events(now);
        let mut with_entries = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            assert!(journalled.check_sequence(now, d, &mut stats));
            if journalled.encode_datagram(now, d, &mut record, &mut stats) {
                with_entries.push(i);
            }
        }
        assert_eq!(with_entries, [0, 1, 2, 3, 4, 6]);
        let mut replies = vec![Vec::new(); datagrams.len()];
        let mut buf = Vec::new();
        journalled.apply_entries(
            now,
            record.entries(),
            &mut Pending::default(),
            &mut stats,
            Some(&mut buf),
            |d, r, _| {
                replies[with_entries[d]] = r.to_vec();
            },
        );
        assert_eq!(replies, plain_replies);
        assert_eq!(replies[0], b"ok\n");
        assert_eq!(format!("{stats:?}"), format!("{plain_stats:?}"));
        assert_eq!(journalled.tables.usage(), plain.tables.usage());
        assert_eq!(plain.tables.usage().calls, 22);
        // Replay on fresh tables: the same state, nothing answered.
        let replayed = pipeline();
        let mut replay_stats = LocalStats::default();
        replayed.apply_entries(
            now,
            record.entries(),
            &mut Pending::default(),
            &mut replay_stats,
            None,
            |_, _, _| panic!("replay answers nothing"),
        );
        assert_eq!(replayed.tables.usage(), plain.tables.usage());
        // The same calls are open: stopping each gives the same outcome.
        for id in ["c1", "c2", "j1", "bin3"] {
            for tag in [None, Some(&b"a"[..]), Some(b"t")] {
                let call = tollgate_events::CallRef {
                    call_id: id.as_bytes(),
                    from_tag: tag,
                };
                let stop = Event::CallStop { call };
                assert_eq!(
                    replayed.tables.apply(now, &stop),
                    plain.tables.apply(now, &stop),
                    "{id} {tag:?}"
                );
            }
        }
    }
}
