//! A deterministic simulated network that drives many [`Replica`]s: a virtual clock,
//! per-link latency with jitter, seeded datagram loss, partitions, crashes, restarts and
//! graceful leaves. No socket, no thread, no clock: the same seed gives the same run, byte
//! for byte.
//!
//! **The model.**
//! - Every frame is encoded with [`encode`] and decoded with [`decode`] at the receiver, so
//!   the codec is in every run and traffic is counted in real encoded bytes.
//! - A link between two nodes has a fixed one-way latency drawn once per link from
//!   `latency_ms_min..=latency_ms_max`, plus up to `jitter_ms` per frame (frames reorder).
//! - Datagrams are lost with probability `loss`. Stream frames are never lost; a "lost" one
//!   is delivered one round trip late (QUIC retransmits it).
//! - Connections: two nodes whose link is allowed (topology, partition) and who both run get
//!   connected one round trip after they could talk ([`Replica::peer_connected`] on both);
//!   a connection whose link is cut is declared gone `idle_timeout_ms` later
//!   ([`Replica::peer_disconnected`]), like a QUIC idle timeout. A graceful leave closes its
//!   connections at once (after one latency). A frame refused by `decode` or
//!   `handle_frame` closes that connection; it reconnects one round trip later.
//! - A crashed node stops at once; frames already on the wire still arrive at live nodes. A
//!   restart is a new [`Replica`] with the next incarnation and empty state.
//! - Traffic per node counts frames sent, their encoded bytes, and a wire estimate: encoded
//!   bytes plus `packet_overhead_bytes` per datagram and per started 1200-byte packet of a
//!   stream frame (QUIC short header, AEAD tag, frame header, UDP and IP headers: about 50
//!   bytes with IPv4).
//! - QUIC acknowledgements, as quinn sends them: a receiver owes the sender an ACK for every
//!   packet it got (every one is ack-eliciting: datagrams and stream frames alike). The ACK
//!   rides on the next frame the receiver sends that peer within `ack_delay_ms` (25 ms, the
//!   QUIC default); otherwise, or at once on the second packet owed, it goes in an ACK-only
//!   packet (`packet_overhead_bytes + ack_frame_bytes`), counted in
//!   [`Traffic::ack_only_packets_sent`] and in the wire bytes. An ACK that rides costs
//!   `ack_frame_bytes`. ACK-only packets are not delivered: they change nothing else.
//!
//! Scenario tests are lists of [`Op`]s run by [`Sim::run_scenario`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::rc::Rc;

use crate::MonoTime;
use crate::config::Config;
use crate::frame::{DATAGRAM_BYTES_MAX, FRAME_BYTES_MAX, Frame, decode, encode};
use crate::record::NodeUsage;
use crate::replica::{Destination, Event, HandleError, NodeState, Replica, TransmitKind};
use crate::rng::Rng;

/// Bytes of one QUIC packet's payload assumed when a stream frame is split in packets.
pub const STREAM_PACKET_BYTES: u64 = 1200;

/// Which links may exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// Every node may connect to every other (what membership from records leads to).
    FullMesh,
    /// Only these links (by node index), e.g. `[(0, 1), (1, 2)]`: A and C only through B.
    Links(Vec<(usize, usize)>),
}

/// The simulated network's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub node_count: usize,
    pub seed: u64,
    pub latency_ms_min: u64,
    pub latency_ms_max: u64,
    pub jitter_ms: u64,
    /// Probability that a datagram is lost, `0.0..=1.0`.
    pub loss: f64,
    pub idle_timeout_ms: u64,
    pub packet_overhead_bytes: u64,
    /// How long a receiver holds an ACK back, waiting for a frame of its own to carry it.
    pub ack_delay_ms: u64,
    /// Bytes of one ACK frame.
    pub ack_frame_bytes: u64,
    pub topology: Topology,
    /// The replicas' settings (each node gets its own address and a seed derived from
    /// `seed`).
    pub replica: Config,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            node_count: 3,
            seed: 1,
            latency_ms_min: 50,
            latency_ms_max: 300,
            jitter_ms: 5,
            loss: 0.0,
            idle_timeout_ms: 5_000,
            packet_overhead_bytes: 50,
            ack_delay_ms: 25,
            ack_frame_bytes: 6,
            topology: Topology::FullMesh,
            replica: Config::default(),
        }
    }
}

/// Traffic of one node since the last [`Sim::reset_traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub datagrams_sent: u64,
    pub stream_frames_sent: u64,
    /// Encoded frame bytes sent (every copy of a frame sent to several peers counts).
    pub frame_bytes_sent: u64,
    /// `frame_bytes_sent` plus the per-packet overhead estimate, plus ACKs (riding or in
    /// ACK-only packets).
    pub wire_bytes_sent: u64,
    /// QUIC ACK-only packets: an ACK that found no frame to ride on in time.
    pub ack_only_packets_sent: u64,
    pub frames_received: u64,
    /// Datagrams this node sent that the network dropped.
    pub datagrams_lost: u64,
    /// Frames this node received and refused (`decode` or `handle_frame` error).
    pub frames_refused: u64,
}

/// Which nodes an expectation looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Every running node.
    Every,
    Node(usize),
}

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Let virtual time pass, ms.
    Run(u64),
    SetUsage(usize, NodeUsage),
    /// Sets only the node's calls, keeping the rest of its usage.
    SetCalls(usize, u64),
    /// kill -9: the node stops at once, its peers notice by silence.
    Crash(usize),
    /// A fresh process: the next incarnation, empty state, zero usage.
    Restart(usize),
    /// Graceful shutdown ([`Replica::leave`]), then the node stops.
    Leave(usize),
    /// Nodes in different groups cannot talk; nodes in no group form one more group.
    Partition(Vec<Vec<usize>>),
    Heal,
    Loss(f64),
    /// The aggregate's calls, as seen by these nodes.
    ExpectCalls(Who, u64),
    /// How `at` sees `node` (`None`: not in its table).
    ExpectState {
        at: Who,
        node: usize,
        state: Option<NodeState>,
    },
}

/// A failed expectation of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub step: usize,
    pub at_ms: u64,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} (t = {} ms): {}",
            self.step, self.at_ms, self.message
        )
    }
}

impl std::error::Error for ScenarioError {}

#[derive(Debug)]
struct SimNode {
    node_id: String,
    replica: Option<Replica>,
    incarnation: u64,
    /// Grows at every restart: frames for an earlier life are dropped.
    life: u64,
    timer_generation: u64,
    timer_at: Option<u64>,
    usage: NodeUsage,
    events: Vec<(u64, Event)>,
    traffic: Traffic,
}

#[derive(Debug)]
enum Happening {
    Timer {
        node: usize,
        generation: u64,
    },
    Deliver {
        from: usize,
        from_life: u64,
        to: usize,
        to_life: u64,
        bytes: Rc<[u8]>,
    },
    Connect {
        a: usize,
        b: usize,
    },
    Disconnect {
        a: usize,
        b: usize,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    order: u64,
    happening: Happening,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

#[derive(Debug, Clone, Copy)]
struct AcksOwed {
    since: u64,
    packets: u64,
}

/// The simulated cluster.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    now: u64,
    nodes: Vec<SimNode>,
    index: BTreeMap<String, usize>,
    allowed: Vec<Vec<bool>>,
    latency: Vec<Vec<u64>>,
    group: Vec<usize>,
    connected: Vec<Vec<bool>>,
    link_pending: Vec<Vec<bool>>,
    /// `acks_owed[receiver][sender]`: packets the receiver has not acknowledged yet, and
    /// when the first of them arrived.
    acks_owed: Vec<Vec<Option<AcksOwed>>>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    rng: Rng,
    same_instant_timers: u64,
}

/// The node id of node `index` in a simulation.
pub fn node_id(index: usize) -> String {
    format!("node-{index:03}")
}

impl Sim {
    /// Starts every node at t = 0 (incarnation 1) and lets them connect.
    pub fn new(config: SimConfig) -> Sim {
        let count = config.node_count;
        let mut rng = Rng::new(config.seed);
        let mut latency = vec![vec![0; count]; count];
        let spread = config.latency_ms_max.saturating_sub(config.latency_ms_min);
        for (a, b) in (0..count).flat_map(|a| (a + 1..count).map(move |b| (a, b))) {
            let ms = config.latency_ms_min + rng.below(spread + 1);
            latency[a][b] = ms;
            latency[b][a] = ms;
        }
        let mut allowed = vec![vec![false; count]; count];
        match &config.topology {
            Topology::FullMesh => {
                for (a, row) in allowed.iter_mut().enumerate() {
                    for (b, cell) in row.iter_mut().enumerate() {
                        *cell = a != b;
                    }
                }
            }
            Topology::Links(links) => {
                for &(a, b) in links {
                    assert!(a < count && b < count && a != b, "bad link {a}-{b}");
                    allowed[a][b] = true;
                    allowed[b][a] = true;
                }
            }
        }
        let nodes = (0..count)
            .map(|index| SimNode {
                node_id: node_id(index),
                replica: None,
                incarnation: 0,
                life: 0,
                timer_generation: 0,
                timer_at: None,
                usage: NodeUsage::default(),
                events: Vec::new(),
                traffic: Traffic::default(),
            })
            .collect();
        let index = (0..count).map(|index| (node_id(index), index)).collect();
        let mut sim = Sim {
            config,
            now: 0,
            nodes,
            index,
            allowed,
            latency,
            group: vec![0; count],
            connected: vec![vec![false; count]; count],
            link_pending: vec![vec![false; count]; count],
            acks_owed: vec![vec![None; count]; count],
            queue: BinaryHeap::new(),
            order: 0,
            rng,
            same_instant_timers: 0,
        };
        for node in 0..count {
            sim.start(node);
        }
        sim.update_links();
        sim
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node_id(&self, node: usize) -> &str {
        &self.nodes[node].node_id
    }

    /// The node's replica, `None` while it is stopped.
    pub fn replica(&self, node: usize) -> Option<&Replica> {
        self.nodes[node].replica.as_ref()
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].replica.is_some()
    }

    /// Every event the node's replicas produced, with the instant.
    pub fn events(&self, node: usize) -> &[(u64, Event)] {
        &self.nodes[node].events
    }

    /// What the node sent since the last [`Sim::reset_traffic`], ACK-only packets whose
    /// delay has run out included.
    pub fn traffic(&self, node: usize) -> Traffic {
        let mut traffic = self.nodes[node].traffic;
        let due = self.acks_owed[node]
            .iter()
            .flatten()
            .filter(|owed| self.ack_only_due(owed))
            .count() as u64;
        traffic.ack_only_packets_sent += due;
        traffic.wire_bytes_sent += due * self.ack_only_bytes();
        traffic
    }

    pub fn reset_traffic(&mut self) {
        // ACK-only packets already due belong to the period that ends.
        for row in &mut self.acks_owed {
            for cell in row.iter_mut() {
                if cell.is_some_and(|owed| {
                    owed.since.saturating_add(self.config.ack_delay_ms) <= self.now
                }) {
                    *cell = None;
                }
            }
        }
        for node in &mut self.nodes {
            node.traffic = Traffic::default();
        }
    }

    fn ack_only_due(&self, owed: &AcksOwed) -> bool {
        owed.since.saturating_add(self.config.ack_delay_ms) <= self.now
    }

    fn ack_only_bytes(&self) -> u64 {
        self.config.packet_overhead_bytes + self.config.ack_frame_bytes
    }

    /// `receiver` got `packets` ack-eliciting packets from `sender`: it owes ACKs, and sends
    /// an ACK-only packet at once from the second one owed (quinn acknowledges every other
    /// packet immediately).
    fn owe_acks(&mut self, receiver: usize, sender: usize, packets: u64) {
        let now = self.now;
        let owed = self.acks_owed[receiver][sender].get_or_insert(AcksOwed {
            since: now,
            packets: 0,
        });
        owed.packets += packets;
        if owed.packets >= 2 {
            self.acks_owed[receiver][sender] = None;
            let bytes = self.ack_only_bytes();
            let traffic = &mut self.nodes[receiver].traffic;
            traffic.ack_only_packets_sent += 1;
            traffic.wire_bytes_sent += bytes;
        }
    }

    /// `sender` sends `receiver` a frame now: the ACKs it owes ride on it, unless their
    /// delay ran out before (then they went in an ACK-only packet).
    fn settle_acks(&mut self, sender: usize, receiver: usize) {
        let Some(owed) = self.acks_owed[sender][receiver].take() else {
            return;
        };
        let bytes = if self.ack_only_due(&owed) {
            self.nodes[sender].traffic.ack_only_packets_sent += 1;
            self.ack_only_bytes()
        } else {
            self.config.ack_frame_bytes
        };
        self.nodes[sender].traffic.wire_bytes_sent += bytes;
    }

    /// Forgets the ACKs between two nodes (their connection is gone).
    fn forget_acks(&mut self, a: usize, b: usize) {
        self.acks_owed[a][b] = None;
        self.acks_owed[b][a] = None;
    }

    /// One-way latency of the link between two nodes, ms (without jitter).
    pub fn latency_ms(&self, a: usize, b: usize) -> u64 {
        self.latency[a][b]
    }

    pub fn set_loss(&mut self, loss: f64) {
        self.config.loss = loss;
    }

    /// Runs the events scheduled up to `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: u64) {
        while self.step(until).is_some() {}
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now + ms);
    }

    /// Runs until `converged` holds for every running node, or `deadline`; returns the
    /// instant it first held for all.
    pub fn run_until_all(
        &mut self,
        deadline: u64,
        converged: impl Fn(&Replica) -> bool,
    ) -> Option<u64> {
        let times = self.first_times(deadline, converged);
        times
            .iter()
            .try_fold(self.now.min(deadline), |latest, (_, at)| {
                at.map(|at| latest.max(at))
            })
    }

    /// Runs until `converged` has held at least once on every running node, or `deadline`;
    /// returns, per running node, the first instant it held (`None`: not by the deadline).
    /// A node is re-checked only when something happens to it, so the predicate should be
    /// one that stays true once true (e.g. "sees version V of node X").
    pub fn first_times(
        &mut self,
        deadline: u64,
        converged: impl Fn(&Replica) -> bool,
    ) -> Vec<(usize, Option<u64>)> {
        let now = self.now;
        let mut times: Vec<(usize, Option<u64>)> = (0..self.nodes.len())
            .filter_map(|node| {
                let replica = self.nodes[node].replica.as_ref()?;
                Some((node, converged(replica).then_some(now)))
            })
            .collect();
        let mut slot = vec![usize::MAX; self.nodes.len()];
        for (index, (node, _)) in times.iter().enumerate() {
            slot[*node] = index;
        }
        let mut missing = times.iter().filter(|(_, at)| at.is_none()).count();
        while missing > 0 {
            let Some(touched) = self.step(deadline) else {
                break;
            };
            for node in touched.into_iter().flatten() {
                let Some((_, at)) = times.get_mut(slot[node]) else {
                    continue;
                };
                if at.is_none() && self.nodes[node].replica.as_ref().is_some_and(&converged) {
                    *at = Some(self.now);
                    missing -= 1;
                }
            }
        }
        if missing > 0 {
            self.now = self.now.max(deadline);
        }
        times
    }

    /// Sets a node's usage.
    pub fn set_usage(&mut self, node: usize, usage: NodeUsage) {
        self.nodes[node].usage = usage;
        let now = self.now;
        if let Some(replica) = self.nodes[node].replica.as_mut() {
            replica.set_local_usage(MonoTime(now), usage);
            self.flush(node);
        }
    }

    pub fn set_calls(&mut self, node: usize, calls: u64) {
        let usage = NodeUsage {
            calls,
            ..self.nodes[node].usage
        };
        self.set_usage(node, usage);
    }

    /// Runs `f` on a running node's replica at the current instant, then sends what it
    /// produced.
    pub fn with_replica<T>(&mut self, node: usize, f: impl FnOnce(&mut Replica, u64) -> T) -> T {
        let now = self.now;
        let replica = self.nodes[node]
            .replica
            .as_mut()
            .expect("with_replica on a stopped node");
        let result = f(replica, now);
        self.flush(node);
        result
    }

    /// Hands `frame` to node `to` as if node `from` had sent it (no network): how tests
    /// forge frames. The result is `handle_frame`'s.
    pub fn inject(&mut self, from: usize, to: usize, frame: Frame) -> Result<(), HandleError> {
        let from_id = self.nodes[from].node_id.clone();
        self.with_replica(to, |replica, now| {
            replica.handle_frame(MonoTime(now), &from_id, frame)
        })
    }

    pub fn crash(&mut self, node: usize) {
        for other in 0..self.nodes.len() {
            self.forget_acks(node, other);
        }
        self.nodes[node].replica = None;
        self.nodes[node].timer_at = None;
        self.update_links();
    }

    /// A new process for `node`: the next incarnation, empty state, zero usage.
    pub fn restart(&mut self, node: usize) {
        self.nodes[node].replica = None;
        // The new process dials at once; whatever was pending for the old one is moot (a
        // stale happening re-checks the link when it fires).
        for other in 0..self.nodes.len() {
            self.forget_acks(node, other);
            self.connected[node][other] = false;
            self.connected[other][node] = false;
            self.link_pending[node][other] = false;
            self.link_pending[other][node] = false;
        }
        self.start(node);
        self.update_links();
    }

    pub fn leave(&mut self, node: usize) {
        let now = self.now;
        let Some(replica) = self.nodes[node].replica.as_mut() else {
            return;
        };
        replica.leave(MonoTime(now));
        self.flush(node);
        self.nodes[node].replica = None;
        self.nodes[node].timer_at = None;
        // The transport closes its connections: peers hear it after one latency.
        for other in 0..self.nodes.len() {
            if self.connected[node][other] {
                let at = now + self.latency[node][other] + 1;
                self.schedule(at, Happening::Disconnect { a: node, b: other });
                self.link_pending[node][other] = true;
                self.link_pending[other][node] = true;
            }
        }
        self.update_links();
    }

    /// Nodes in different groups cannot talk; nodes listed in no group form one more group.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        self.group.iter_mut().for_each(|group| *group = 0);
        for (index, members) in groups.iter().enumerate() {
            for &node in *members {
                self.group[node] = index + 1;
            }
        }
        self.update_links();
    }

    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|group| *group = 0);
        self.update_links();
    }

    /// Runs a scenario; the first failed expectation stops it.
    pub fn run_scenario(&mut self, ops: &[Op]) -> Result<(), ScenarioError> {
        for (step, op) in ops.iter().enumerate() {
            let fail = |sim: &Sim, message: String| ScenarioError {
                step,
                at_ms: sim.now,
                message,
            };
            match op {
                Op::Run(ms) => self.run_for(*ms),
                Op::SetUsage(node, usage) => self.set_usage(*node, *usage),
                Op::SetCalls(node, calls) => self.set_calls(*node, *calls),
                Op::Crash(node) => self.crash(*node),
                Op::Restart(node) => self.restart(*node),
                Op::Leave(node) => self.leave(*node),
                Op::Partition(groups) => {
                    let groups: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
                    self.partition(&groups);
                }
                Op::Heal => self.heal(),
                Op::Loss(loss) => self.set_loss(*loss),
                Op::ExpectCalls(who, calls) => {
                    for node in self.who(*who) {
                        let seen = self
                            .replica(node)
                            .map(|r| r.aggregate(MonoTime(self.now)).calls);
                        if seen != Some(*calls) {
                            return Err(fail(
                                self,
                                format!(
                                    "{} sees {seen:?} calls, expected {calls}",
                                    self.nodes[node].node_id
                                ),
                            ));
                        }
                    }
                }
                Op::ExpectState { at, node, state } => {
                    let of = self.nodes[*node].node_id.clone();
                    for viewer in self.who(*at) {
                        let seen = self
                            .replica(viewer)
                            .and_then(|r| r.node(&of, MonoTime(self.now)))
                            .map(|view| view.state);
                        if seen != *state {
                            return Err(fail(
                                self,
                                format!(
                                    "{} sees {of} as {seen:?}, expected {state:?}",
                                    self.nodes[viewer].node_id
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn who(&self, who: Who) -> Vec<usize> {
        match who {
            Who::Every => (0..self.nodes.len())
                .filter(|node| self.is_running(*node))
                .collect(),
            Who::Node(node) => vec![node],
        }
    }

    fn start(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        sim_node.incarnation += 1;
        sim_node.life += 1;
        sim_node.usage = NodeUsage::default();
        sim_node.timer_at = None;
        let config = Config {
            address: format!("10.0.{}.{}:7172", node / 256, node % 256),
            rng_seed: self
                .config
                .seed
                .wrapping_mul(0x9E37_79B9)
                .wrapping_add((node as u64) << 20)
                .wrapping_add(sim_node.incarnation),
            ..self.config.replica.clone()
        };
        let replica = Replica::new(
            config,
            &sim_node.node_id,
            sim_node.incarnation,
            MonoTime(self.now),
        )
        .expect("the simulation's replica config is valid");
        sim_node.replica = Some(replica);
        self.flush(node);
    }

    fn can_talk(&self, a: usize, b: usize) -> bool {
        self.allowed[a][b]
            && self.group[a] == self.group[b]
            && self.nodes[a].replica.is_some()
            && self.nodes[b].replica.is_some()
    }

    /// Schedules connections and disconnections after a change of who can talk.
    fn update_links(&mut self) {
        let count = self.nodes.len();
        for a in 0..count {
            for b in a + 1..count {
                if !self.allowed[a][b] || self.link_pending[a][b] {
                    continue;
                }
                let can_talk = self.can_talk(a, b);
                let at = if self.connected[a][b] && !can_talk {
                    self.now + self.config.idle_timeout_ms
                } else if !self.connected[a][b] && can_talk {
                    self.now + 2 * self.latency[a][b]
                } else {
                    continue;
                };
                let happening = if can_talk {
                    Happening::Connect { a, b }
                } else {
                    Happening::Disconnect { a, b }
                };
                self.link_pending[a][b] = true;
                self.link_pending[b][a] = true;
                self.schedule(at, happening);
            }
        }
    }

    fn schedule(&mut self, at: u64, happening: Happening) {
        self.order += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            order: self.order,
            happening,
        }));
    }

    /// Runs the next scheduled happening if it is due by `until`; returns the nodes it
    /// touched.
    fn step(&mut self, until: u64) -> Option<[Option<usize>; 2]> {
        if self.queue.peek().is_none_or(|next| next.0.at > until) {
            return None;
        }
        let Reverse(scheduled) = self.queue.pop()?;
        if scheduled.at == self.now {
            self.same_instant_timers += 1;
            assert!(
                self.same_instant_timers < 10_000_000,
                "no progress at t = {}",
                self.now
            );
        } else {
            self.same_instant_timers = 0;
        }
        self.now = self.now.max(scheduled.at);
        let now = self.now;
        match scheduled.happening {
            Happening::Timer { node, generation } => {
                if self.nodes[node].timer_generation != generation {
                    return Some([None, None]);
                }
                self.nodes[node].timer_at = None;
                let Some(replica) = self.nodes[node].replica.as_mut() else {
                    return Some([None, None]);
                };
                replica.handle_timeout(MonoTime(now));
                self.flush(node);
                Some([Some(node), None])
            }
            Happening::Deliver {
                from,
                from_life,
                to,
                to_life,
                bytes,
            } => {
                let arrives = self.nodes[from].life == from_life
                    && self.nodes[to].life == to_life
                    && self.nodes[to].replica.is_some()
                    && self.connected[from][to]
                    && self.group[from] == self.group[to];
                if !arrives {
                    return Some([None, None]);
                }
                self.nodes[to].traffic.frames_received += 1;
                let packets = (bytes.len() as u64).div_ceil(STREAM_PACKET_BYTES);
                self.owe_acks(to, from, packets);
                let from_id = self.nodes[from].node_id.clone();
                let result = match decode(&bytes) {
                    Ok(frame) => self.nodes[to]
                        .replica
                        .as_mut()
                        .map_or(Ok(()), |replica| {
                            replica.handle_frame(MonoTime(now), &from_id, frame)
                        })
                        .map_err(|_| ()),
                    Err(_) => Err(()),
                };
                self.flush(to);
                if result.is_err() {
                    self.nodes[to].traffic.frames_refused += 1;
                    self.close(from, to);
                }
                Some([Some(to), None])
            }
            Happening::Connect { a, b } => {
                self.link_pending[a][b] = false;
                self.link_pending[b][a] = false;
                if self.can_talk(a, b) && !self.connected[a][b] {
                    self.connected[a][b] = true;
                    self.connected[b][a] = true;
                    for (x, y) in [(a, b), (b, a)] {
                        let peer = self.nodes[y].node_id.clone();
                        if let Some(replica) = self.nodes[x].replica.as_mut() {
                            // A refused peer id would be a bug of the simulation.
                            replica
                                .peer_connected(MonoTime(now), &peer)
                                .expect("simulated peers have valid, distinct ids");
                            self.flush(x);
                        }
                    }
                }
                self.update_links();
                Some([Some(a), Some(b)])
            }
            Happening::Disconnect { a, b } => {
                self.link_pending[a][b] = false;
                self.link_pending[b][a] = false;
                if !self.can_talk(a, b) && self.connected[a][b] {
                    self.close(a, b);
                }
                self.update_links();
                Some([Some(a), Some(b)])
            }
        }
    }

    /// Closes the connection between two nodes (both sides told), and lets it come back.
    fn close(&mut self, a: usize, b: usize) {
        let now = self.now;
        self.connected[a][b] = false;
        self.connected[b][a] = false;
        self.forget_acks(a, b);
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.nodes[y].node_id.clone();
            if let Some(replica) = self.nodes[x].replica.as_mut() {
                replica.peer_disconnected(MonoTime(now), &peer);
                self.flush(x);
            }
        }
        self.update_links();
    }

    /// Sends what the node's replica produced, records its events, re-arms its timer.
    fn flush(&mut self, node: usize) {
        let now = self.now;
        loop {
            let Some(replica) = self.nodes[node].replica.as_mut() else {
                return;
            };
            let Some(transmit) = replica.poll_transmit(MonoTime(now)) else {
                break;
            };
            let bytes: Rc<[u8]> = encode(&transmit.frame).into();
            let len = bytes.len() as u64;
            match transmit.kind {
                TransmitKind::Datagram => assert!(
                    bytes.len() <= DATAGRAM_BYTES_MAX,
                    "a {} datagram of {} bytes",
                    transmit.frame.name(),
                    bytes.len()
                ),
                TransmitKind::Stream => assert!(bytes.len() <= FRAME_BYTES_MAX),
            }
            let targets: Vec<usize> = match &transmit.to {
                Destination::Peer(peer) => self
                    .index
                    .get(peer)
                    .copied()
                    .filter(|peer| self.connected[node][*peer])
                    .into_iter()
                    .collect(),
                Destination::AllPeers => (0..self.nodes.len())
                    .filter(|peer| self.connected[node][*peer])
                    .collect(),
            };
            for to in targets {
                self.settle_acks(node, to);
                let overhead = self.config.packet_overhead_bytes;
                let traffic = &mut self.nodes[node].traffic;
                traffic.frame_bytes_sent += len;
                let mut latency =
                    self.latency[node][to] + self.rng.below(self.config.jitter_ms + 1);
                let lost = self.rng.unit() < self.config.loss;
                match transmit.kind {
                    TransmitKind::Datagram => {
                        traffic.datagrams_sent += 1;
                        traffic.wire_bytes_sent += len + overhead;
                        if lost {
                            traffic.datagrams_lost += 1;
                            continue;
                        }
                    }
                    TransmitKind::Stream => {
                        traffic.stream_frames_sent += 1;
                        traffic.wire_bytes_sent +=
                            len + overhead * len.div_ceil(STREAM_PACKET_BYTES);
                        if lost {
                            latency += 2 * self.latency[node][to];
                        }
                    }
                }
                let happening = Happening::Deliver {
                    from: node,
                    from_life: self.nodes[node].life,
                    to,
                    to_life: self.nodes[to].life,
                    bytes: Rc::clone(&bytes),
                };
                self.schedule(now + latency, happening);
            }
        }
        let sim_node = &mut self.nodes[node];
        let Some(replica) = sim_node.replica.as_mut() else {
            return;
        };
        while let Some(event) = replica.poll_event() {
            sim_node.events.push((now, event));
        }
        let due = replica.poll_timeout().map(MonoTime::ms);
        if due != sim_node.timer_at {
            sim_node.timer_generation += 1;
            sim_node.timer_at = due;
            if let Some(at) = due {
                let generation = sim_node.timer_generation;
                self.schedule(at.max(now), Happening::Timer { node, generation });
            }
        }
    }
}

/// The registered-AoR union under the simulated network: after any interleaving of adds,
/// removes, losses, partitions, crashes and restarts (a restart restores the node's set, as
/// the agent's snapshot does), once the network is whole again every running node counts
/// exactly the model's distinct AoRs: the union of the running nodes' sets.
#[cfg(test)]
mod aor_tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::aorset::{Fp, mix};

    #[derive(Debug, Clone)]
    enum AorOp {
        Add(usize, u64),
        Remove(usize, u64),
        Run(u64),
        Loss(u8),
        Partition(usize),
        Heal,
        Crash(usize),
        Restart(usize),
    }

    const NODES: usize = 4;

    fn arb_op() -> impl Strategy<Value = AorOp> {
        prop_oneof![
            6 => (0..NODES, 0u64..60).prop_map(|(n, a)| AorOp::Add(n, a)),
            3 => (0..NODES, 0u64..60).prop_map(|(n, a)| AorOp::Remove(n, a)),
            4 => (1u64..4_000).prop_map(AorOp::Run),
            1 => (0u8..40).prop_map(AorOp::Loss),
            1 => (0..NODES).prop_map(AorOp::Partition),
            1 => Just(AorOp::Heal),
            1 => (0..NODES).prop_map(AorOp::Crash),
            1 => (0..NODES).prop_map(AorOp::Restart),
        ]
    }

    fn fp(aor: u64) -> Fp {
        mix(aor ^ 0x5eed)
    }

    /// Runs `ops`, heals, restarts nothing, and checks every running node's count.
    fn check(ops: &[AorOp], seed: u64) -> Result<(), TestCaseError> {
        let mut sim = Sim::new(SimConfig {
            node_count: NODES,
            seed,
            latency_ms_min: 5,
            latency_ms_max: 40,
            ..SimConfig::default()
        });
        let mut model: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); NODES];
        sim.run_for(500);
        for op in ops {
            match *op {
                AorOp::Add(node, aor) if sim.is_running(node) => {
                    model[node].insert(aor);
                    sim.with_replica(node, |r, now| r.aor_add(MonoTime(now), fp(aor)));
                }
                AorOp::Remove(node, aor) if sim.is_running(node) => {
                    model[node].remove(&aor);
                    sim.with_replica(node, |r, now| r.aor_remove(MonoTime(now), fp(aor)));
                }
                AorOp::Add(..) | AorOp::Remove(..) => {}
                AorOp::Run(ms) => sim.run_for(ms),
                AorOp::Loss(percent) => sim.set_loss(f64::from(percent) / 100.0),
                AorOp::Partition(node) => sim.partition(&[&[node]]),
                AorOp::Heal => sim.heal(),
                AorOp::Crash(node) => sim.crash(node),
                AorOp::Restart(node) => {
                    sim.restart(node);
                    let fps: Vec<Fp> = model[node].iter().map(|aor| fp(*aor)).collect();
                    sim.with_replica(node, |r, now| r.aor_load(MonoTime(now), &fps));
                }
            }
            for node in 0..NODES {
                if let Some(replica) = sim.replica(node) {
                    prop_assert_eq!(replica.aor_sets().check(), Ok(()));
                }
            }
        }
        sim.heal();
        sim.set_loss(0.0);
        // Expiry (10 s) and removal of crashed nodes, then two anti-entropy rounds.
        sim.run_for(30_000);
        let expected: BTreeSet<u64> = (0..NODES)
            .filter(|node| sim.is_running(*node))
            .flat_map(|node| model[node].iter().copied())
            .collect();
        for (node, own) in model.iter().enumerate() {
            if let Some(replica) = sim.replica(node) {
                let aggregate = replica.aggregate(MonoTime(sim.now()));
                prop_assert_eq!(
                    aggregate.registered_subscribers_distinct,
                    expected.len() as u64,
                    "node {} at {} ms",
                    node,
                    sim.now()
                );
                let own: BTreeSet<Fp> = own.iter().map(|aor| fp(*aor)).collect();
                let held: BTreeSet<Fp> = replica.aor_members().into_iter().collect();
                prop_assert_eq!(held, own);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn union_equals_the_models_distinct_count(
            ops in proptest::collection::vec(arb_op(), 0..80),
            seed in 1u64..1_000,
        ) {
            check(&ops, seed)?;
        }
    }

    #[test]
    fn one_aor_through_two_nodes_counts_once_and_goes_with_the_last() {
        let ops = [
            AorOp::Add(0, 1),
            AorOp::Add(1, 1),
            AorOp::Add(2, 2),
            AorOp::Run(2_000),
        ];
        check(&ops, 7).unwrap();
        let ops = [AorOp::Add(0, 1), AorOp::Add(1, 1), AorOp::Remove(0, 1)];
        check(&ops, 8).unwrap();
        let ops = [
            AorOp::Add(0, 1),
            AorOp::Add(1, 1),
            AorOp::Run(1_000),
            AorOp::Remove(0, 1),
            AorOp::Remove(1, 1),
        ];
        check(&ops, 9).unwrap();
    }

    #[test]
    fn a_crashed_node_s_aors_drop_at_expiry_and_a_restart_counts_nothing_twice() {
        let mut ops: Vec<AorOp> = (0..50).map(|a| AorOp::Add(0, a)).collect();
        ops.extend((25..75).map(|a| AorOp::Add(1, a)));
        ops.push(AorOp::Run(2_000));
        ops.push(AorOp::Crash(1));
        check(&ops, 11).unwrap();
        ops.push(AorOp::Run(1_000));
        ops.push(AorOp::Restart(1));
        check(&ops, 12).unwrap();
    }

    #[test]
    fn deltas_alone_carry_a_change_within_a_push_and_a_latency() {
        let mut sim = Sim::new(SimConfig {
            node_count: 3,
            seed: 3,
            latency_ms_min: 5,
            latency_ms_max: 40,
            ..SimConfig::default()
        });
        sim.run_for(6_000);
        let distinct = |sim: &Sim| -> Vec<u64> {
            (0..3)
                .map(|n| {
                    sim.replica(n).map_or(0, |r| {
                        r.aggregate(MonoTime(sim.now()))
                            .registered_subscribers_distinct
                    })
                })
                .collect()
        };
        for aor in 0..100 {
            sim.with_replica(aor as usize % 2, |r, now| r.aor_add(MonoTime(now), fp(aor)));
            sim.with_replica(2, |r, now| r.aor_add(MonoTime(now), fp(aor + 50)));
        }
        sim.run_for(250);
        assert_eq!(distinct(&sim), vec![150, 150, 150]);
        for aor in 0..100 {
            sim.with_replica(aor as usize % 2, |r, now| {
                r.aor_remove(MonoTime(now), fp(aor))
            });
        }
        sim.run_for(250);
        assert_eq!(distinct(&sim), vec![100, 100, 100]);
        for node in 0..3 {
            let stats = sim.replica(node).map(|r| r.stats()).unwrap_or_default();
            assert_eq!(stats.aor_reconciliations, 0, "node {node}");
            assert_eq!(stats.aor_deltas_stale, 0, "node {node}");
        }
    }

    /// Frame version 2: AoR changes ride in record pushes, which are datagrams. One lost
    /// with its push is pulled from the owner's log (the next record, change or summary
    /// names a later seq), never reconciled by ranges; and a change is counted everywhere
    /// as soon as the record change that carries it is.
    #[test]
    fn changes_lost_with_their_push_are_pulled_from_the_owners_log() {
        let mut sim = Sim::new(SimConfig {
            node_count: 3,
            seed: 17,
            latency_ms_min: 5,
            latency_ms_max: 40,
            ..SimConfig::default()
        });
        sim.run_for(6_000);
        sim.set_loss(0.25);
        let mut expected = 0u64;
        for aor in 0..300u64 {
            let node = aor as usize % 3;
            sim.with_replica(node, |r, now| r.aor_add(MonoTime(now), fp(aor)));
            // The node's record changes with its set, as the agent's does.
            sim.set_calls(node, aor);
            expected += 1;
            sim.run_for(37);
        }
        sim.set_loss(0.0);
        sim.run_for(3_000);
        let mut pulls = 0;
        for node in 0..3 {
            let replica = sim.replica(node).unwrap();
            assert_eq!(
                replica
                    .aggregate(MonoTime(sim.now()))
                    .registered_subscribers_distinct,
                expected,
                "node {node}"
            );
            let stats = replica.stats();
            assert_eq!(stats.aor_reconciliations, 0, "node {node}: {stats:?}");
            pulls += stats.aor_pulls_sent;
        }
        assert!(pulls > 0, "a quarter of the pushes were lost, none pulled");
        // No loss: no pull, and every change rides a push (no AoR frame of its own).
        let before: Vec<crate::Stats> = (0..3).map(|n| sim.replica(n).unwrap().stats()).collect();
        let mut visible = Vec::new();
        for aor in 300..330u64 {
            let node = aor as usize % 3;
            let started = sim.now();
            sim.with_replica(node, |r, now| r.aor_add(MonoTime(now), fp(aor)));
            expected += 1;
            let mut took = None;
            for _ in 0..200 {
                sim.run_for(1);
                let everywhere = (0..3).all(|n| {
                    sim.replica(n)
                        .unwrap()
                        .aggregate(MonoTime(sim.now()))
                        .registered_subscribers_distinct
                        == expected
                });
                if everywhere {
                    took = Some(sim.now() - started);
                    break;
                }
            }
            visible.push(took.expect("visible everywhere within 200 ms"));
            sim.run_for(150);
        }
        // A push is coalesced for at most push_interval_ms, then one link's latency.
        assert!(visible.iter().all(|ms| *ms <= 100 + 40), "{visible:?}");
        for (node, before) in before.iter().enumerate() {
            let stats = sim.replica(node).unwrap().stats();
            assert_eq!(stats.aor_pulls_sent, before.aor_pulls_sent, "node {node}");
            assert_eq!(
                stats.aor_deltas_stale, before.aor_deltas_stale,
                "node {node}"
            );
        }
    }

    #[test]
    fn the_oldest_key_wins_everywhere_and_a_rotation_replaces_it() {
        use crate::frame::AorKey;
        let mut sim = Sim::new(SimConfig {
            node_count: 3,
            seed: 21,
            latency_ms_min: 5,
            latency_ms_max: 20,
            ..SimConfig::default()
        });
        // Each node starts with its own fresh key; node 1's is the oldest.
        for (node, created_at_ms) in [(0usize, 300u64), (1, 100), (2, 200)] {
            let key = AorKey {
                generation: 1,
                created_at_ms,
                key: [node as u8; 32],
            };
            sim.with_replica(node, |r, now| r.set_aor_key(MonoTime(now), key));
        }
        sim.run_for(2_000);
        let keys = |sim: &Sim| -> Vec<Option<AorKey>> {
            (0..3)
                .map(|n| sim.replica(n).and_then(|r| r.aor_key()))
                .collect()
        };
        let oldest = keys(&sim)[1];
        assert_eq!(oldest.map(|k| k.created_at_ms), Some(100));
        assert_eq!(keys(&sim), vec![oldest; 3]);
        let rotated = sim.with_replica(2, |r, now| r.rotate_aor_key(MonoTime(now), [9; 32], 5_000));
        assert_eq!(rotated.generation, 2);
        sim.run_for(2_000);
        assert_eq!(keys(&sim), vec![Some(rotated); 3]);
        // Every node told its agent about each key it adopted, the rotation last.
        for node in 0..3 {
            let last = sim
                .events(node)
                .iter()
                .rev()
                .find_map(|(_, event)| match event {
                    Event::AorKeyChanged { key } => Some(*key),
                    _ => None,
                });
            assert_eq!(last, Some(rotated), "node {node}");
        }
        // A restarted node with the old key learns the new one.
        sim.restart(0);
        let stale = oldest.unwrap();
        sim.with_replica(0, |r, now| r.set_aor_key(MonoTime(now), stale));
        sim.run_for(2_000);
        assert_eq!(keys(&sim), vec![Some(rotated); 3]);
    }

    /// Issue 15: fresh nodes each start with a key of their own and register AoRs at once,
    /// before any key exchange. Acting as each node's agent (re-keying what it registered
    /// when its replica adopts another key, then `aor_keyed`), no node ever counts more than
    /// the distinct AoRs, whatever the order the keys meet in; and soon every node counts
    /// exactly them.
    #[test]
    fn fresh_nodes_registering_before_key_agreement_count_nothing_twice() {
        use crate::frame::AorKey;
        use std::collections::BTreeSet;
        let keyed = |key: &AorKey, name: u64| -> u64 {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for word in [
                key.generation,
                key.created_at_ms,
                u64::from(key.key[0]),
                name,
            ] {
                h = (h ^ word).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
            }
            h
        };
        let names: [BTreeSet<u64>; 3] = [(0..20).collect(), (10..30).collect(), (25..40).collect()];
        let distinct = names.iter().flatten().collect::<BTreeSet<_>>().len() as u64;
        for seed in 0..6u64 {
            let mut sim = Sim::new(SimConfig {
                node_count: 3,
                seed,
                latency_ms_min: 2,
                latency_ms_max: 40,
                ..SimConfig::default()
            });
            let mut under: Vec<AorKey> = (0..3u64)
                .map(|node| AorKey {
                    generation: 1,
                    // The oldest key differs from seed to seed.
                    created_at_ms: 100 + (node + seed) % 3,
                    key: [node as u8 + 1; 32],
                })
                .collect();
            let start = |sim: &mut Sim, node: usize, key: AorKey| {
                sim.with_replica(node, |r, now| {
                    r.set_aor_key(MonoTime(now), key);
                    for name in &names[node] {
                        r.aor_add(MonoTime(now), keyed(&key, *name));
                    }
                });
            };
            // With an odd seed node 2's IO layer hands it its key late, after the replica
            // heard (and adopted) a peer's.
            let late = seed % 2 == 1;
            for (node, key) in under.iter().enumerate().take(if late { 2 } else { 3 }) {
                start(&mut sim, node, *key);
            }
            for step in 0..600 {
                if late && step == 40 {
                    assert!(sim.replica(2).and_then(|r| r.aor_key()).is_some());
                    under[2] = sim.replica(2).and_then(|r| r.aor_key()).unwrap();
                    let own = AorKey {
                        created_at_ms: 1_000,
                        ..under[2]
                    };
                    start(&mut sim, 2, own);
                    under[2] = own;
                }
                sim.run_for(5);
                for node in 0..3 {
                    let held = sim.replica(node).and_then(|r| r.aor_key());
                    if let Some(held) = held.filter(|held| *held != under[node]) {
                        let old = under[node];
                        sim.with_replica(node, |r, now| {
                            for name in &names[node] {
                                r.aor_remove(MonoTime(now), keyed(&old, *name));
                                r.aor_add(MonoTime(now), keyed(&held, *name));
                            }
                            r.aor_keyed(MonoTime(now), held);
                        });
                        under[node] = held;
                    }
                    let counted = sim.replica(node).map_or(0, |r| {
                        r.aggregate(MonoTime(sim.now()))
                            .registered_subscribers_distinct
                    });
                    assert!(
                        counted <= distinct,
                        "seed {seed}: node {node} counts {counted} of {distinct} at {}",
                        sim.now()
                    );
                }
            }
            for node in 0..3 {
                let replica = sim.replica(node).unwrap();
                assert!(replica.aor_set_published(), "seed {seed}: node {node}");
                assert_eq!(
                    replica
                        .aggregate(MonoTime(sim.now()))
                        .registered_subscribers_distinct,
                    distinct,
                    "seed {seed}: node {node}"
                );
            }
        }
    }
}
