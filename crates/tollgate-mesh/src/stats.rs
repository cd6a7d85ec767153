//! Counters of the transport: frames and bytes by frame and by how they travelled, errors
//! and connection closes by reason, UDP traffic from quinn's connection statistics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use tollgate_replication::{Frame, TransmitKind};

/// Frame names in wire order ([`Frame::name`]); the keys of the per-frame counters.
pub const FRAME_NAMES: [&str; 15] = [
    "record",
    "heartbeat",
    "pull_record",
    "digest",
    "table",
    "pull",
    "license_pull",
    "license",
    "aor_key",
    "aor_summary",
    "aor_delta",
    "aor_ranges",
    "record_aors",
    "aor_pull",
    "aor_heartbeat",
];

pub(crate) fn frame_index(frame: &Frame) -> usize {
    let index = match frame {
        Frame::Record(_) => 0,
        Frame::Heartbeat(_) => 1,
        Frame::PullRecord => 2,
        Frame::Digest(_) => 3,
        Frame::Table(_) => 4,
        Frame::Pull => 5,
        Frame::LicensePull { .. } => 6,
        Frame::License { .. } => 7,
        Frame::AorKey(_) => 8,
        Frame::AorSummary(_) => 9,
        Frame::AorDelta(_) => 10,
        Frame::AorRanges(_) => 11,
        Frame::RecordAors(_) => 12,
        Frame::AorPull { .. } => 13,
        Frame::AorHeartbeat(_) => 14,
    };
    debug_assert_eq!(FRAME_NAMES[index], frame.name());
    index
}

/// Frames and their encoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub frames: u64,
    pub bytes: u64,
}

/// UDP traffic of the mesh's connections (QUIC headers, ACKs and handshakes included; IP and
/// UDP headers not), as quinn counts it: closed connections plus the live ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpTotals {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_datagrams: u64,
    pub rx_datagrams: u64,
    /// ACK frames sent (alone or riding on other frames).
    pub tx_ack_frames: u64,
    /// QUIC DATAGRAM frames sent.
    pub tx_datagram_frames: u64,
    /// QUIC PING frames sent (keep-alives and loss probes).
    pub tx_ping_frames: u64,
    /// QUIC STREAM frames sent.
    pub tx_stream_frames: u64,
    /// Packets quinn declared lost.
    pub lost_packets: u64,
}

impl UdpTotals {
    pub(crate) fn of(stats: &quinn::ConnectionStats) -> UdpTotals {
        UdpTotals {
            tx_bytes: stats.udp_tx.bytes,
            rx_bytes: stats.udp_rx.bytes,
            tx_datagrams: stats.udp_tx.datagrams,
            rx_datagrams: stats.udp_rx.datagrams,
            tx_ack_frames: stats.frame_tx.acks,
            tx_datagram_frames: stats.frame_tx.datagram,
            tx_ping_frames: stats.frame_tx.ping,
            tx_stream_frames: stats.frame_tx.stream,
            lost_packets: stats.path.lost_packets,
        }
    }

    pub(crate) fn add(&mut self, other: &UdpTotals) {
        self.tx_bytes += other.tx_bytes;
        self.rx_bytes += other.rx_bytes;
        self.tx_datagrams += other.tx_datagrams;
        self.rx_datagrams += other.rx_datagrams;
        self.tx_ack_frames += other.tx_ack_frames;
        self.tx_datagram_frames += other.tx_datagram_frames;
        self.tx_ping_frames += other.tx_ping_frames;
        self.tx_stream_frames += other.tx_stream_frames;
        self.lost_packets += other.lost_packets;
    }
}

/// A snapshot of the mesh's counters ([`crate::Mesh::stats`]), cumulative since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Frames sent (a frame to every peer counts once per peer), by frame name.
    pub frames_sent: BTreeMap<&'static str, Count>,
    /// Frames received and decoded, by frame name.
    pub frames_received: BTreeMap<&'static str, Count>,
    pub datagrams_sent: Count,
    pub datagrams_received: Count,
    /// Stream frames queued to send (one unidirectional stream each).
    pub streams_sent: Count,
    pub streams_received: Count,
    /// Refusals and failures by low-cardinality reason: frame decode errors
    /// (`FrameError::reason`), frames the replica refused (`HandleError::reason`), TLS and
    /// handshake failures, dial failures, send failures.
    pub errors: BTreeMap<&'static str, u64>,
    /// Connections that ended, by reason (`idle_timeout`, `peer_shutdown`, `replaced`, …).
    pub closes: BTreeMap<&'static str, u64>,
    /// Authenticated connections this node accepted.
    pub connections_accepted: u64,
    /// Authenticated connections this node dialed.
    pub connections_dialed: u64,
    /// Connections replaced by a newer one to the same peer.
    pub connections_replaced: u64,
    pub dials_started: u64,
    /// Peers connected now.
    pub peers_connected: usize,
    pub udp: UdpTotals,
    /// The replica's own counters.
    pub replica: tollgate_replication::Stats,
}

#[derive(Default)]
pub(crate) struct Counters {
    sent: [FrameCounter; FRAME_NAMES.len()],
    received: [FrameCounter; FRAME_NAMES.len()],
    datagrams_sent: FrameCounter,
    datagrams_received: FrameCounter,
    streams_sent: FrameCounter,
    streams_received: FrameCounter,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_dialed: AtomicU64,
    pub(crate) connections_replaced: AtomicU64,
    pub(crate) dials_started: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    closes: Mutex<BTreeMap<&'static str, u64>>,
    /// UDP totals of connections no longer tracked.
    retired: Mutex<UdpTotals>,
}

#[derive(Default)]
struct FrameCounter {
    frames: AtomicU64,
    bytes: AtomicU64,
}

impl FrameCounter {
    fn add(&self, bytes: usize) {
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    fn get(&self) -> Count {
        Count {
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
}

impl Counters {
    pub(crate) fn sent(&self, index: usize, kind: TransmitKind, bytes: usize) {
        self.sent[index].add(bytes);
        match kind {
            TransmitKind::Datagram => self.datagrams_sent.add(bytes),
            TransmitKind::Stream => self.streams_sent.add(bytes),
        }
    }

    pub(crate) fn received(&self, frame: &Frame, kind: TransmitKind, bytes: usize) {
        self.received[frame_index(frame)].add(bytes);
        match kind {
            TransmitKind::Datagram => self.datagrams_received.add(bytes),
            TransmitKind::Stream => self.streams_received.add(bytes),
        }
    }

    pub(crate) fn error(&self, reason: &'static str) {
        *self.errors.lock().entry(reason).or_default() += 1;
    }

    pub(crate) fn close(&self, reason: &'static str) {
        *self.closes.lock().entry(reason).or_default() += 1;
    }

    /// A connection is no longer tracked: keep its traffic in the totals.
    pub(crate) fn retire(&self, connection: &quinn::Connection) {
        self.retired.lock().add(&UdpTotals::of(&connection.stats()));
    }

    pub(crate) fn snapshot(
        &self,
        live: impl Iterator<Item = UdpTotals>,
        peers_connected: usize,
        replica: tollgate_replication::Stats,
    ) -> MeshStats {
        let by_name = |counters: &[FrameCounter; FRAME_NAMES.len()]| {
            FRAME_NAMES
                .iter()
                .zip(counters)
                .map(|(name, counter)| (*name, counter.get()))
                .collect()
        };
        let mut udp = *self.retired.lock();
        for totals in live {
            udp.add(&totals);
        }
        MeshStats {
            frames_sent: by_name(&self.sent),
            frames_received: by_name(&self.received),
            datagrams_sent: self.datagrams_sent.get(),
            datagrams_received: self.datagrams_received.get(),
            streams_sent: self.streams_sent.get(),
            streams_received: self.streams_received.get(),
            errors: self.errors.lock().clone(),
            closes: self.closes.lock().clone(),
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_dialed: self.connections_dialed.load(Relaxed),
            connections_replaced: self.connections_replaced.load(Relaxed),
            dials_started: self.dials_started.load(Relaxed),
            peers_connected,
            udp,
            replica,
        }
    }
}
