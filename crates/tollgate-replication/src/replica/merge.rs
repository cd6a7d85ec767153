//! The merge of other nodes' records and heartbeats into the table: the merge rule
//! ([`crate::merge_order`]) with its side effects (liveness restarts, events, the
//! provisioned-subscriber report, advertised license serials), and the duplicate-node alarm
//! when this node's own id comes back with a version it never emitted.

use std::cmp::Ordering;

use super::liveness::Tombstone;
use super::{Destination, Entry, Event, NodeState, Replica, Transmit, TransmitKind, state_at};
use crate::NODES_MAX;
use crate::frame::{AorDelta, AorHeartbeat, Frame, Heartbeat};
use crate::record::{NodeUsage, Record, merge_order};

impl Replica {
    pub(super) fn note_subscribers(&mut self, usage: &NodeUsage) {
        if usage.subscribers_reported_at == 0 {
            return;
        }
        let report = (usage.subscribers_reported_at, usage.subscribers);
        if report > self.subscribers_latest {
            self.subscribers_latest = report;
        }
    }

    pub(super) fn note_advance(&mut self, now: u64) {
        let due = now.saturating_add(self.config.suspect_after_ms);
        self.liveness_due = Some(self.liveness_due.map_or(due, |at| at.min(due)));
    }

    pub(super) fn handle_heartbeat(&mut self, now: u64, peer: &str, heartbeat: Heartbeat) {
        self.apply_heartbeat(now, peer, heartbeat, None);
    }

    /// A heartbeat that carries AoR changes: the changes go to the copy first, then the
    /// record moves like a heartbeat's, taking the new `aor_seq` (its other content is the
    /// one held when `changed_seq` is not past it).
    pub(super) fn handle_aor_heartbeat(&mut self, now: u64, peer: &str, heartbeat: AorHeartbeat) {
        let AorHeartbeat {
            incarnation,
            seq,
            changed_seq,
            aor_seq,
            adds,
            removes,
        } = heartbeat;
        self.handle_aor_delta(
            now,
            peer,
            AorDelta {
                incarnation,
                seq: aor_seq,
                adds,
                removes,
            },
        );
        let heartbeat = Heartbeat {
            incarnation,
            seq,
            changed_seq,
        };
        if self.apply_heartbeat(now, peer, heartbeat, Some(aor_seq)) {
            self.aor_check_behind(now, peer, (incarnation, aor_seq));
        }
    }

    /// Moves `peer`'s record to the heartbeat's seq when its content is current (with
    /// `aor_seq`, if given, as its new AoR seq); else pulls the record. `true` when applied.
    fn apply_heartbeat(
        &mut self,
        now: u64,
        peer: &str,
        heartbeat: Heartbeat,
        aor_seq: Option<u64>,
    ) -> bool {
        let version = heartbeat.version();
        let applied = match self.entries.get_mut(peer) {
            Some(entry) if version <= entry.record.version() => {
                self.stats.records_stale += 1;
                return false;
            }
            Some(entry)
                if heartbeat.incarnation == entry.record.incarnation
                    && entry.record.seq >= heartbeat.changed_seq =>
            {
                entry.record.seq = heartbeat.seq;
                entry.content_since = heartbeat.changed_seq;
                if let Some(aor_seq) = aor_seq {
                    entry.record.aor_seq = aor_seq;
                    entry.content_since = heartbeat.seq;
                }
                entry.advanced_at = now;
                let back = matches!(entry.reported, NodeState::Suspect | NodeState::Expired);
                if !entry.record.is_left() {
                    entry.reported = NodeState::Live;
                }
                Some(back.then(|| Event::NodeUp {
                    node_id: peer.to_owned(),
                    incarnation: heartbeat.incarnation,
                }))
            }
            _ => None,
        };
        match applied {
            Some(event) => {
                self.stats.heartbeats_applied += 1;
                if let Some(event) = event {
                    self.push_event(event);
                }
                self.note_advance(now);
                true
            }
            None => {
                if self
                    .tombstones
                    .get(peer)
                    .is_some_and(|tombstone| tombstone.blocks(version))
                {
                    self.stats.records_tombstoned += 1;
                    return false;
                }
                self.stats.heartbeats_unmatched += 1;
                let interval = self.config.push_interval_ms;
                if self.allow(peer, now, interval, |peer| &mut peer.last_record_request_at) {
                    self.enqueue(Transmit {
                        to: Destination::Peer(peer.to_owned()),
                        kind: TransmitKind::Datagram,
                        frame: Frame::PullRecord,
                    });
                }
                false
            }
        }
    }

    /// The merge rule, plus its side effects: liveness, events, the duplicate-node alarm.
    pub(super) fn merge_record(&mut self, now: u64, record: Record, via: &str) {
        if record.node_id == self.own.node_id {
            self.check_own(now, record, via);
            return;
        }
        self.note_subscribers(&record.usage);
        if record.license_serial > self.license_serial_seen {
            self.license_serial_seen = record.license_serial;
            self.push_event(Event::LicenseAdvertised {
                node_id: record.node_id.clone(),
                serial: record.license_serial,
            });
        }
        if let Some(tombstone) = self.tombstones.get(&record.node_id) {
            if tombstone.blocks(record.version()) {
                self.stats.records_tombstoned += 1;
                return;
            }
            self.tombstones.remove(&record.node_id);
        }
        // An expired record kept visible (`expired_visible_ms`) blocks stale relays as its
        // tombstone would: a laggard's seq + 1 is no evidence that the node lives.
        if let Some(entry) = self.entries.get(&record.node_id)
            && state_at(entry, now, &self.config) == NodeState::Expired
            && Tombstone::blocks_after(entry.record.version(), record.version())
        {
            self.stats.records_tombstoned += 1;
            return;
        }
        let mut events: [Option<Event>; 2] = [None, None];
        match self.entries.get_mut(&record.node_id) {
            Some(entry) => {
                if merge_order(&record, &entry.record) != Ordering::Greater {
                    self.stats.records_stale += 1;
                    return;
                }
                let restarted = record.incarnation > entry.record.incarnation;
                if restarted {
                    events[0] = Some(Event::NodeRestarted {
                        node_id: record.node_id.clone(),
                        incarnation: record.incarnation,
                    });
                }
                if record.is_left() {
                    if restarted || !entry.record.is_left() {
                        events[1] = Some(Event::NodeLeft {
                            node_id: record.node_id.clone(),
                        });
                    }
                } else if !restarted
                    && matches!(entry.reported, NodeState::Suspect | NodeState::Expired)
                {
                    events[1] = Some(Event::NodeUp {
                        node_id: record.node_id.clone(),
                        incarnation: record.incarnation,
                    });
                }
                entry.reported = if record.is_left() {
                    NodeState::Left
                } else {
                    NodeState::Live
                };
                entry.content_since = record.seq;
                if record.wall_time != entry.record.wall_time {
                    entry.wall_at = now;
                }
                entry.record = record;
                entry.advanced_at = now;
            }
            None => {
                // This node is one of NODES_MAX.
                if self.entries.len() + 1 >= NODES_MAX {
                    self.stats.records_table_full += 1;
                    return;
                }
                let reported = if record.is_left() {
                    NodeState::Left
                } else {
                    events[0] = Some(Event::NodeUp {
                        node_id: record.node_id.clone(),
                        incarnation: record.incarnation,
                    });
                    NodeState::Live
                };
                self.entries.insert(
                    record.node_id.clone(),
                    Entry {
                        content_since: record.seq,
                        record,
                        advanced_at: now,
                        wall_at: now,
                        reported,
                    },
                );
            }
        }
        self.stats.records_merged += 1;
        for event in events.into_iter().flatten() {
            self.push_event(event);
        }
        self.note_advance(now);
    }

    /// A record carrying this node's own id. Our own echo is ignored; anything newer than
    /// what we emitted (or equal but different) was emitted by someone else with our id, or
    /// by an earlier life of ours whose incarnation was not persisted: alarm, and move past.
    pub(super) fn check_own(&mut self, now: u64, record: Record, via: &str) {
        let mine = self.own.version();
        let seen = record.version();
        if seen < mine || (seen == mine && record == self.own) {
            return;
        }
        self.alarm(via, Some(seen));
        if self.left {
            return;
        }
        if seen.incarnation > self.own.incarnation {
            self.push_event(Event::IncarnationChanged {
                incarnation: seen.incarnation,
            });
        }
        self.own.incarnation = seen.incarnation;
        self.own.seq = seen.seq;
        self.force_record = true;
        // At once, not coalesced: until then our version names someone else's record.
        self.emit(now, TransmitKind::Datagram);
    }
}
