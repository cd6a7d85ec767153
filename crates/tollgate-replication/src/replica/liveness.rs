//! Liveness: a node is live, suspect, expired or left by the local instant its record last
//! advanced ([`state_at`]) and counted by the expired rule ([`counted`]); the sweep announces
//! transitions, removes expired and left records, and keeps a tombstone of each so that
//! stale relays cannot bring it back.

use super::{Config, Entry, Event, NodeState, Replica, TOMBSTONES_MAX};
use crate::record::Version;

#[derive(Debug, Clone, Copy)]
pub(super) struct Tombstone {
    pub(super) version: Version,
    pub(super) removed_at: u64,
}

impl Tombstone {
    /// Versions the dead node may have emitted before it went silent: up to the one this
    /// node held, and one seq more. Heartbeats go to each peer on its own schedule, so when a
    /// node dies its last heartbeat round has reached some peers and not others: they hold
    /// two consecutive seqs, and the later one proves nothing. A node that was only cut off
    /// kept emitting, a new seq per interval, and is welcome back.
    pub(super) fn blocks(&self, version: Version) -> bool {
        Tombstone::blocks_after(self.version, version)
    }

    /// Whether `version` is refused after a node last seen at `last` expired.
    pub(super) fn blocks_after(last: Version, version: Version) -> bool {
        version.incarnation < last.incarnation
            || (version.incarnation == last.incarnation
                && version.seq <= last.seq.saturating_add(1))
    }
}

impl Replica {
    /// Liveness transitions (events), removal of expired and left records (tombstones),
    /// tombstone expiry; and the instant of the next such change.
    pub(super) fn sweep(&mut self, now: u64) {
        let config = &self.config;
        // An expired record stays (shown, not counted past its hold) this long after expiry.
        let kept_ms = config.expired_rule.hold_ms().max(config.expired_visible_ms);
        let mut next: Option<u64> = None;
        let mut consider = |at: u64| next = Some(next.map_or(at, |next| next.min(at)));
        let mut removed: Vec<String> = Vec::new();
        let mut events: Vec<Event> = Vec::new();
        for (node_id, entry) in &mut self.entries {
            let state = state_at(entry, now, config);
            if state != entry.reported {
                match state {
                    NodeState::Suspect => events.push(Event::NodeSuspect {
                        node_id: node_id.clone(),
                    }),
                    NodeState::Expired => events.push(Event::NodeExpired {
                        node_id: node_id.clone(),
                        incarnation: entry.record.incarnation,
                    }),
                    // Only an advance makes a node live or left, and it sets `reported`.
                    NodeState::Live | NodeState::Left => {}
                }
                entry.reported = state;
            }
            let suspect_at = entry.advanced_at.saturating_add(config.suspect_after_ms);
            let expire_at = entry.advanced_at.saturating_add(config.expire_after_ms);
            let remove_at = if entry.record.is_left() {
                expire_at
            } else {
                expire_at.saturating_add(kept_ms)
            };
            if now >= remove_at {
                removed.push(node_id.clone());
            } else if let Some(at) = [suspect_at, expire_at, remove_at]
                .into_iter()
                .find(|at| *at > now)
            {
                consider(at);
            }
        }
        for node_id in removed {
            if let Some(entry) = self.entries.remove(&node_id) {
                if self.tombstones.len() >= TOMBSTONES_MAX
                    && !self.tombstones.contains_key(&node_id)
                    && let Some(oldest) = self
                        .tombstones
                        .iter()
                        .min_by_key(|(_, tombstone)| tombstone.removed_at)
                        .map(|(node_id, _)| node_id.clone())
                {
                    self.tombstones.remove(&oldest);
                }
                self.tombstones.insert(
                    node_id.clone(),
                    Tombstone {
                        version: entry.record.version(),
                        removed_at: now,
                    },
                );
                events.push(Event::NodeRemoved { node_id });
            }
        }
        let ttl = config.tombstone_ttl_ms;
        self.tombstones
            .retain(|_, tombstone| tombstone.removed_at.saturating_add(ttl) > now);
        for tombstone in self.tombstones.values() {
            consider(tombstone.removed_at.saturating_add(ttl));
        }
        self.liveness_due = next;
        for event in events {
            self.push_event(event);
        }
    }
}

pub(super) fn state_at(entry: &Entry, now: u64, config: &Config) -> NodeState {
    if entry.record.is_left() {
        return NodeState::Left;
    }
    let age = now.saturating_sub(entry.advanced_at);
    if age < config.suspect_after_ms {
        NodeState::Live
    } else if age < config.expire_after_ms {
        NodeState::Suspect
    } else {
        NodeState::Expired
    }
}

pub(super) fn counted(entry: &Entry, state: NodeState, now: u64, config: &Config) -> bool {
    match state {
        NodeState::Live | NodeState::Suspect => true,
        NodeState::Left => false,
        NodeState::Expired => {
            let age = now.saturating_sub(entry.advanced_at);
            age < config
                .expire_after_ms
                .saturating_add(config.expired_rule.hold_ms())
        }
    }
}
