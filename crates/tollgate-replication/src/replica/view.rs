//! The replica's reads of the cluster: the aggregate a license is held against, the view of
//! every node (`GET /api/v1/cluster`, `tollgate status`), and whom the transport should dial.

use super::{Aggregate, DialTarget, Entry, NodeState, NodeView, Replica, counted, state_at};
use crate::record::NodeUsage;
use tollgate_events::MonoTime;

impl Replica {
    /// The cluster-wide figures at `now` (liveness is evaluated at `now`, whether or not
    /// [`Replica::handle_timeout`] ran).
    pub fn aggregate(&self, now: MonoTime) -> Aggregate {
        let now = now.ms();
        let now = now.max(self.now);
        let mut aggregate = Aggregate {
            registered_subscribers_distinct: self.aor.sets.distinct(),
            subscribers: self.subscribers_latest.1,
            subscribers_reported_at: self.subscribers_latest.0,
            license_serial_max: self.license_serial_seen,
            ..Aggregate::default()
        };
        if self.left {
            aggregate.nodes_left += 1;
        } else {
            aggregate.nodes_live += 1;
            add_usage(&mut aggregate, &self.usage);
        }
        for entry in self.entries.values() {
            let state = state_at(entry, now, &self.config);
            match state {
                NodeState::Live => aggregate.nodes_live += 1,
                NodeState::Suspect => aggregate.nodes_suspect += 1,
                NodeState::Left => aggregate.nodes_left += 1,
                NodeState::Expired if counted(entry, state, now, &self.config) => {
                    aggregate.nodes_held += 1
                }
                NodeState::Expired => aggregate.nodes_expired += 1,
            }
            if counted(entry, state, now, &self.config) {
                add_usage(&mut aggregate, &entry.record.usage);
            }
        }
        aggregate
    }

    /// Every node in the table, this one first, then by node id.
    pub fn nodes(&self, now: MonoTime) -> Vec<NodeView> {
        let now = now.ms();
        let now = now.max(self.now);
        let mut views = Vec::with_capacity(self.entries.len() + 1);
        views.push(self.local_view(now));
        views.extend(
            self.entries
                .values()
                .map(|entry| self.entry_view(entry, now)),
        );
        views
    }

    /// One node of the table (or this node), if held.
    pub fn node(&self, node_id: &str, now: MonoTime) -> Option<NodeView> {
        let now = now.ms().max(self.now);
        if node_id == self.own.node_id {
            return Some(self.local_view(now));
        }
        self.entries
            .get(node_id)
            .map(|entry| self.entry_view(entry, now))
    }

    /// Nodes learned from records (live or suspect, with an address) that are not connected:
    /// the transport dials them (with backoff), beside its configured seeds.
    pub fn dial_targets(&self, now: MonoTime) -> Vec<DialTarget> {
        let now = now.ms();
        let now = now.max(self.now);
        self.entries
            .values()
            .filter(|entry| {
                matches!(
                    state_at(entry, now, &self.config),
                    NodeState::Live | NodeState::Suspect
                ) && !entry.record.address.is_empty()
                    && !self.peers.contains_key(&entry.record.node_id)
            })
            .map(|entry| DialTarget {
                node_id: entry.record.node_id.clone(),
                address: entry.record.address.clone(),
            })
            .collect()
    }

    pub(super) fn local_view(&self, now: u64) -> NodeView {
        NodeView {
            node_id: self.own.node_id.clone(),
            address: self.own.address.clone(),
            state: if self.left {
                NodeState::Left
            } else {
                NodeState::Live
            },
            local: true,
            counted: !self.left,
            age_ms: 0,
            wall_time: self.wall_at(now),
            incarnation: self.own.incarnation,
            seq: self.own.seq,
            license_serial: self.license_serial,
            usage: self.usage,
        }
    }

    pub(super) fn entry_view(&self, entry: &Entry, now: u64) -> NodeView {
        let state = state_at(entry, now, &self.config);
        NodeView {
            node_id: entry.record.node_id.clone(),
            address: entry.record.address.clone(),
            state,
            local: false,
            counted: counted(entry, state, now, &self.config),
            age_ms: now.saturating_sub(entry.advanced_at),
            wall_time: super::entry_wall_time(entry, now),
            incarnation: entry.record.incarnation,
            seq: entry.record.seq,
            license_serial: entry.record.license_serial,
            usage: entry.record.usage,
        }
    }
}

pub(super) fn add_usage(aggregate: &mut Aggregate, usage: &NodeUsage) {
    aggregate.calls = aggregate.calls.saturating_add(usage.calls);
    aggregate.emergency_calls = aggregate
        .emergency_calls
        .saturating_add(usage.emergency_calls);
    aggregate.registered_subscribers = aggregate
        .registered_subscribers
        .saturating_add(usage.registered_subscribers);
    aggregate.registered_contacts = aggregate
        .registered_contacts
        .saturating_add(usage.registered_contacts);
}
