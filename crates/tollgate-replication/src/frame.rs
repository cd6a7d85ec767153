//! The frames replicas exchange, and their codec.
//!
//! A frame on the wire is one version byte ([`FRAME_VERSION`]) followed by the postcard
//! encoding of [`Frame`]; nothing may follow it. Every decoded frame is validated
//! ([`Frame::validate`]) before it is returned, and every frame is validated again (debug
//! builds) before it is encoded: assertions in pairs.
//!
//! | frame | sent as | to | when |
//! | --- | --- | --- | --- |
//! | [`Frame::Record`] | datagram (stream at leave and on connect) | every peer | own record changed (coalesced, at most every `push_interval_ms`) |
//! | [`Frame::RecordAors`] | datagram (stream when it does not fit one) | every peer | own record changed and its AoR set with it: the push carries the set's changes |
//! | [`Frame::Heartbeat`] | datagram | one peer | per peer: every `heartbeat_interval_ms` from the pair's leader, answered at once by the other |
//! | [`Frame::PullRecord`] | datagram | one peer | its heartbeat named content this node lacks |
//! | [`Frame::Digest`] | stream | `anti_entropy_fanout` random peers | every `anti_entropy_interval_ms` (digest mode) |
//! | [`Frame::Table`] | stream | one peer, or random peers | answer to `Pull`/`Digest` (only what the peer lacks: content, or a node it does not hear); anti-entropy (table mode) |
//! | [`Frame::Pull`] | stream | one peer | a joiner, once, on its first connection |
//! | [`Frame::LicensePull`] | stream | one peer | that peer advertises a higher license serial |
//! | [`Frame::License`] | stream | one peer | answer to `LicensePull` |
//! | [`Frame::AorKey`] | stream | one peer, or every peer | on connect; when this node adopts or rotates the cluster's AoR key |
//! | [`Frame::AorDelta`] | stream | one peer, or every peer | answer to `AorPull` from the owner's log of recent changes; more changes in one push than one frame holds |
//! | [`Frame::AorSummary`] | stream | one peer, or every peer | on connect; every `anti_entropy_interval_ms` |
//! | [`Frame::AorRanges`] | stream | one peer | a copy's summary differs: range hashes, answered with sub-range hashes or members |
//! | [`Frame::AorPull`] | stream | one peer | a copy learned (from a record, a summary or a later change) that it misses changes of that peer's set |
//! | [`Frame::AorHeartbeat`] | datagram (stream when it does not fit one) | every peer | own AoR set changed and nothing else of the record: a heartbeat with the changes |
//!
//! **Version 2** (this one) added `Record::aor_seq`, [`Frame::RecordAors`],
//! [`Frame::AorPull`] and [`Frame::AorHeartbeat`]; version 1 sent every AoR change as an `AorDelta` on a stream of its
//! own. A node refuses frames of any other version (`unknown_version`): nodes of different
//! frame versions do not mesh (see `docs/replication.md`, "Frame versions").

use serde::{Deserialize, Serialize};

use crate::NODES_MAX;
use crate::record::{Record, RecordError, Version, validate_node_id};

/// The version byte every frame starts with. 2: records carry `aor_seq` and the set changes
/// ride in record pushes; 3: records carry the owner's wall time (issue 16). Nodes of
/// different versions refuse each other's frames (`unknown_version`), so a cluster is
/// upgraded all at once.
pub const FRAME_VERSION: u8 = 3;

/// Largest encoded frame accepted or produced, in bytes (a full table of [`NODES_MAX`]
/// records of the largest size fits, with room).
pub const FRAME_BYTES_MAX: usize = 512 * 1024;

/// Largest encoded frame sent as a datagram, in bytes: fits the 1200-byte UDP payload QUIC
/// guarantees, minus QUIC's own header. A [`Frame::Record`] of the largest record is
/// [`RECORD_FRAME_BYTES_MAX`], well below.
pub const DATAGRAM_BYTES_MAX: usize = 1100;

/// Upper bound of an encoded [`Frame::Record`]: version byte, variant, node id (length +
/// bytes), incarnation, seq, flags, address (length + bytes), license serial, eight usage
/// counters, AoR seq, wall time — each u64 a varint of at most 10 bytes (a test checks the
/// bound).
pub const RECORD_FRAME_BYTES_MAX: usize = 1
    + 1
    + (1 + crate::record::NODE_ID_LEN_MAX)
    + 10
    + 10
    + 1
    + (2 + crate::record::ADDRESS_LEN_MAX)
    + 10
    + 8 * 10
    + 10
    + 10;

const _: () = assert!(RECORD_FRAME_BYTES_MAX <= DATAGRAM_BYTES_MAX);

/// Most records in one [`Frame::Table`].
pub const TABLE_RECORDS_MAX: usize = NODES_MAX;

/// Most entries in one [`Frame::Digest`].
pub const DIGEST_ENTRIES_MAX: usize = NODES_MAX;

/// Largest license document carried by [`Frame::License`], in bytes.
pub const LICENSE_BYTES_MAX: usize = 64 * 1024;

/// Most fingerprints (adds and removes, or members) in one AoR frame: 60 000 × 8 bytes fits
/// [`FRAME_BYTES_MAX`] with room.
pub const AOR_FRAME_FPS_MAX: usize = 60_000;

/// Most range items in one [`Frame::AorRanges`].
pub const AOR_RANGE_ITEMS_MAX: usize = 4096;

/// Length of the cluster's AoR key, bytes.
pub const AOR_KEY_LEN: usize = 32;

/// An AoR fingerprint on the wire: 8 bytes, little-endian (postcard writes a `u64` as a
/// varint, 10 bytes for a random one).
pub type WireFp = [u8; 8];

/// The cluster-wide key AoR fingerprints are computed under. Among the keys nodes hold, the
/// one with the highest `generation` wins, then the oldest (`created_at_ms`), then the
/// larger bytes: a node that starts with a fresh key of the current generation adopts the
/// cluster's, and a rotation (generation + 1) replaces it everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AorKey {
    pub generation: u64,
    /// Unix ms when the key was made.
    pub created_at_ms: u64,
    pub key: [u8; AOR_KEY_LEN],
}

impl AorKey {
    /// Whether `self` wins over `other` (see the type's documentation).
    pub fn beats(&self, other: &AorKey) -> bool {
        (
            self.generation,
            std::cmp::Reverse(self.created_at_ms),
            self.key,
        ) > (
            other.generation,
            std::cmp::Reverse(other.created_at_ms),
            other.key,
        )
    }

    /// A public 64-bit identifier of the key (a one-way derivation), for logs and the
    /// cluster view.
    pub fn id(&self) -> u64 {
        let mut id = 0xcbf2_9ce4_8422_2325u64 ^ self.generation;
        for byte in self.key {
            id ^= u64::from(byte);
            id = id.wrapping_mul(0x0100_0000_01b3);
        }
        crate::aorset::mix(id)
    }
}

/// Where the owner's AoR set stands: its `(incarnation, seq)`, its size and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AorSummary {
    pub incarnation: u64,
    pub seq: u64,
    pub count: u64,
    pub hash: u64,
}

/// One batch of changes to the sender's own AoR set: the set at `seq - 1` plus these is the
/// set at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AorDelta {
    pub incarnation: u64,
    pub seq: u64,
    pub adds: Vec<WireFp>,
    pub removes: Vec<WireFp>,
}

/// A record push that carries the AoR changes it names: the owner's set at
/// `(record.incarnation, record.aor_seq - 1)` plus these is its set at
/// `(record.incarnation, record.aor_seq)`. The changes ride in the datagram that carries the
/// record anyway, so an AoR change costs its 8 bytes (and two list lengths per push), not a
/// QUIC packet and its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAors {
    pub record: Record,
    pub adds: Vec<WireFp>,
    pub removes: Vec<WireFp>,
}

/// The owner's record moved to `seq` and only its AoR set changed (to `aor_seq`, by these
/// changes): a heartbeat carrying AoR changes, sent instead of a [`RecordAors`] when the rest
/// of the record is as it was at `changed_seq`. A receiver holding the record at
/// `(incarnation, s)` with `changed_seq <= s` moves it to `seq` with `aor_seq`; otherwise it
/// pulls the record ([`Frame::PullRecord`]). The changes apply to the copy either way, like
/// a push's. Saves the record's ~50 bytes when registrations change without changing the
/// node's counts (an add and a remove in one push interval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AorHeartbeat {
    pub incarnation: u64,
    pub seq: u64,
    /// The seq at which the record's content other than `aor_seq` last changed (`<= seq`).
    pub changed_seq: u64,
    pub aor_seq: u64,
    pub adds: Vec<WireFp>,
    pub removes: Vec<WireFp>,
}

impl AorHeartbeat {
    pub const fn version(&self) -> Version {
        Version::new(self.incarnation, self.seq)
    }
}

/// One range of an [`Frame::AorRanges`] exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AorRange {
    /// The sender holds `count` fingerprints hashing to `hash` in `[lo, hi]`.
    Hash {
        lo: u64,
        hi: u64,
        count: u64,
        hash: u64,
    },
    /// The owner's members in `[lo, hi]`, all of them.
    Members { lo: u64, hi: u64, fps: Vec<WireFp> },
}

impl AorRange {
    pub const fn bounds(&self) -> (u64, u64) {
        match self {
            AorRange::Hash { lo, hi, .. } | AorRange::Members { lo, hi, .. } => (*lo, *hi),
        }
    }
}

/// Range reconciliation of `owner`'s AoR set. Sent by a node holding a copy to the owner
/// (`summary` empty: its hashes of the copy), and by the owner back (`summary`: its set as
/// of the answer; members of small or missing ranges, hashes of the sub-ranges of large
/// ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AorRanges {
    pub owner: String,
    pub summary: Option<AorSummary>,
    pub ranges: Vec<AorRange>,
}

/// One frame. The variant order is the wire format (postcard writes the variant index):
/// append, never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The sender's own record. **Security rule:** accepted only when `node_id` is the
    /// authenticated id of the sending peer.
    Record(Record),
    /// The sender's own record moved to a new seq without changing content.
    Heartbeat(Heartbeat),
    /// "Send me your own record": the receiver got a heartbeat it could not apply.
    PullRecord,
    /// Anti-entropy, digest mode: the versions the sender holds. The receiver answers with a
    /// [`Frame::Table`] of what it holds newer (or the sender lacks).
    Digest(Vec<DigestEntry>),
    /// Records of any nodes, relayed by an authenticated peer (the only frame that may carry
    /// other nodes' records).
    Table(Vec<Record>),
    /// "Send me your whole table": a joiner's first request.
    Pull,
    /// "Send me your license document": the sender saw this peer advertise `serial`.
    LicensePull { serial: u64 },
    /// A license document, armored, exactly as the agent handed it over. Verification is the
    /// agent's job, not this crate's.
    License { armored: Vec<u8> },
    /// The cluster's AoR key as the sender holds it (mutual TLS keeps it on the mesh).
    AorKey(AorKey),
    /// The sender's own AoR set, summarized. Accepted only from its owner (the sender).
    AorSummary(AorSummary),
    /// Changes to the sender's own AoR set.
    AorDelta(AorDelta),
    /// Range reconciliation of one node's AoR set (see [`AorRanges`]).
    AorRanges(AorRanges),
    /// The sender's own record and the AoR changes it names (version 2). **Security rule:**
    /// as for [`Frame::Record`], accepted only from the node it describes.
    RecordAors(RecordAors),
    /// "I hold your AoR set at `(incarnation, seq)`: send me the changes after it" (version
    /// 2). Answered with the logged [`Frame::AorDelta`]s, or with a summary when the log does
    /// not reach back that far (the copy then reconciles by ranges).
    AorPull { incarnation: u64, seq: u64 },
    /// The sender's own record moved to a new seq with only its AoR set changed, and the
    /// changes (version 2). Applies to the sending peer only, like [`Frame::Heartbeat`].
    AorHeartbeat(AorHeartbeat),
}

/// "My record is now at `(incarnation, seq)`, with the content it had at `changed_seq`."
///
/// The node id is the authenticated id of the sending peer. A receiver holding the sender's
/// record at `(incarnation, s)` with `changed_seq <= s` knows its content is current and
/// moves it to `seq`; otherwise it asks for the record ([`Frame::PullRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub incarnation: u64,
    pub seq: u64,
    /// The seq at which the record's content last changed (`<= seq`).
    pub changed_seq: u64,
}

impl Heartbeat {
    pub const fn version(&self) -> Version {
        Version::new(self.incarnation, self.seq)
    }
}

/// One line of a [`Frame::Digest`]: a node and the version of its record the sender holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub node_id: String,
    pub version: Version,
}

/// Why a frame was refused. Malformed input from the network: count it, close that
/// connection, go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes, more than {FRAME_BYTES_MAX}")]
    TooLong { len: usize },
    #[error("unknown frame version {0}")]
    UnknownVersion(u8),
    #[error("malformed frame body")]
    Malformed,
    #[error("bytes after the frame body")]
    TrailingBytes,
    #[error("invalid record: {0}")]
    Record(#[from] RecordError),
    #[error("table of {count} records, more than {TABLE_RECORDS_MAX}")]
    TooManyRecords { count: usize },
    #[error("digest of {count} entries, more than {DIGEST_ENTRIES_MAX}")]
    TooManyDigestEntries { count: usize },
    #[error("license of {len} bytes, more than {LICENSE_BYTES_MAX}")]
    LicenseTooLong { len: usize },
    #[error("heartbeat whose content changed after its seq")]
    HeartbeatFromTheFuture,
    #[error("AoR frame of {count} fingerprints, more than {AOR_FRAME_FPS_MAX}")]
    TooManyAors { count: usize },
    #[error("AoR ranges frame of {count} ranges, more than {AOR_RANGE_ITEMS_MAX}")]
    TooManyAorRanges { count: usize },
    #[error("AoR range whose low end is above its high end")]
    AorRangeInverted,
}

impl FrameError {
    /// A short, low-cardinality name for counters (`reason` label).
    pub const fn reason(&self) -> &'static str {
        match self {
            FrameError::Empty => "empty",
            FrameError::TooLong { .. } => "too_long",
            FrameError::UnknownVersion(_) => "unknown_version",
            FrameError::Malformed => "malformed",
            FrameError::TrailingBytes => "trailing_bytes",
            FrameError::Record(_) => "invalid_record",
            FrameError::TooManyRecords { .. } => "too_many_records",
            FrameError::TooManyDigestEntries { .. } => "too_many_digest_entries",
            FrameError::LicenseTooLong { .. } => "license_too_long",
            FrameError::HeartbeatFromTheFuture => "heartbeat_from_the_future",
            FrameError::TooManyAors { .. } => "too_many_aors",
            FrameError::TooManyAorRanges { .. } => "too_many_aor_ranges",
            FrameError::AorRangeInverted => "aor_range_inverted",
        }
    }
}

impl Frame {
    /// A short name for counters and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Frame::Record(_) => "record",
            Frame::Heartbeat(_) => "heartbeat",
            Frame::PullRecord => "pull_record",
            Frame::Digest(_) => "digest",
            Frame::Table(_) => "table",
            Frame::Pull => "pull",
            Frame::LicensePull { .. } => "license_pull",
            Frame::License { .. } => "license",
            Frame::AorKey(_) => "aor_key",
            Frame::AorSummary(_) => "aor_summary",
            Frame::AorDelta(_) => "aor_delta",
            Frame::AorRanges(_) => "aor_ranges",
            Frame::RecordAors(_) => "record_aors",
            Frame::AorPull { .. } => "aor_pull",
            Frame::AorHeartbeat(_) => "aor_heartbeat",
        }
    }

    /// Structural checks: every bound named in this module, every record valid.
    pub fn validate(&self) -> Result<(), FrameError> {
        match self {
            Frame::Record(record) => record.validate()?,
            Frame::Heartbeat(heartbeat) => {
                if heartbeat.changed_seq > heartbeat.seq {
                    return Err(FrameError::HeartbeatFromTheFuture);
                }
            }
            Frame::PullRecord | Frame::Pull | Frame::LicensePull { .. } => {}
            Frame::Digest(entries) => {
                if entries.len() > DIGEST_ENTRIES_MAX {
                    return Err(FrameError::TooManyDigestEntries {
                        count: entries.len(),
                    });
                }
                for entry in entries {
                    validate_node_id(&entry.node_id)?;
                }
            }
            Frame::Table(records) => {
                if records.len() > TABLE_RECORDS_MAX {
                    return Err(FrameError::TooManyRecords {
                        count: records.len(),
                    });
                }
                for record in records {
                    record.validate()?;
                }
            }
            Frame::License { armored } => {
                if armored.len() > LICENSE_BYTES_MAX {
                    return Err(FrameError::LicenseTooLong { len: armored.len() });
                }
            }
            Frame::AorKey(_) | Frame::AorSummary(_) | Frame::AorPull { .. } => {}
            Frame::AorHeartbeat(heartbeat) => {
                if heartbeat.changed_seq > heartbeat.seq {
                    return Err(FrameError::HeartbeatFromTheFuture);
                }
                let count = heartbeat.adds.len() + heartbeat.removes.len();
                if count > AOR_FRAME_FPS_MAX {
                    return Err(FrameError::TooManyAors { count });
                }
            }
            Frame::RecordAors(push) => {
                push.record.validate()?;
                let count = push.adds.len() + push.removes.len();
                if count > AOR_FRAME_FPS_MAX {
                    return Err(FrameError::TooManyAors { count });
                }
            }
            Frame::AorDelta(delta) => {
                let count = delta.adds.len() + delta.removes.len();
                if count > AOR_FRAME_FPS_MAX {
                    return Err(FrameError::TooManyAors { count });
                }
            }
            Frame::AorRanges(ranges) => {
                validate_node_id(&ranges.owner)?;
                if ranges.ranges.len() > AOR_RANGE_ITEMS_MAX {
                    return Err(FrameError::TooManyAorRanges {
                        count: ranges.ranges.len(),
                    });
                }
                let mut count = 0;
                for range in &ranges.ranges {
                    let (lo, hi) = range.bounds();
                    if lo > hi {
                        return Err(FrameError::AorRangeInverted);
                    }
                    if let AorRange::Members { fps, .. } = range {
                        count += fps.len();
                    }
                }
                if count > AOR_FRAME_FPS_MAX {
                    return Err(FrameError::TooManyAors { count });
                }
            }
        }
        Ok(())
    }
}

/// Encodes a frame: the version byte, then postcard.
///
/// The frames a [`crate::Replica`] produces are always valid; a hand-built frame that breaks
/// a bound encodes to bytes that [`decode`] refuses (and trips a debug assertion here).
pub fn encode(frame: &Frame) -> Vec<u8> {
    debug_assert_eq!(frame.validate(), Ok(()), "encoding an invalid frame");
    let mut bytes = Vec::with_capacity(64);
    bytes.push(FRAME_VERSION);
    let bytes = postcard::to_extend(frame, bytes).expect("serializing into a Vec cannot fail");
    debug_assert!(bytes.len() <= FRAME_BYTES_MAX, "frame over FRAME_BYTES_MAX");
    bytes
}

/// Decodes and validates one frame. Never panics; every refusal is a [`FrameError`].
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLong { len: bytes.len() });
    }
    let (&version, body) = bytes.split_first().ok_or(FrameError::Empty)?;
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let (frame, rest) =
        postcard::take_from_bytes::<Frame>(body).map_err(|_| FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes);
    }
    frame.validate()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ADDRESS_LEN_MAX, Flags, NODE_ID_LEN_MAX, NodeUsage};

    fn largest_record() -> Record {
        Record {
            node_id: "x".repeat(NODE_ID_LEN_MAX),
            incarnation: u64::MAX,
            seq: u64::MAX,
            flags: Flags::LEFT,
            address: "a".repeat(ADDRESS_LEN_MAX),
            license_serial: u64::MAX,
            usage: NodeUsage {
                calls: u64::MAX,
                emergency_calls: u64::MAX,
                registered_subscribers: u64::MAX,
                registered_contacts: u64::MAX,
                subscribers: u64::MAX,
                subscribers_reported_at: u64::MAX,
                peak_calls: u64::MAX,
                peak_registered_subscribers: u64::MAX,
            },
            aor_seq: u64::MAX,
            wall_time: tollgate_events::WallTime::from_unix_ms(u64::MAX),
        }
    }

    fn check_round_trip(frame: Frame) {
        let bytes = encode(&frame);
        assert_eq!(decode(&bytes), Ok(frame.clone()), "{}", frame.name());
        assert_eq!(encode(&decode(&bytes).unwrap()), bytes);
    }

    #[test]
    fn every_frame_round_trips() {
        let record = largest_record();
        check_round_trip(Frame::Record(record.clone()));
        check_round_trip(Frame::Heartbeat(Heartbeat {
            incarnation: 3,
            seq: 90,
            changed_seq: 12,
        }));
        check_round_trip(Frame::PullRecord);
        check_round_trip(Frame::Digest(vec![DigestEntry {
            node_id: "n1".into(),
            version: Version::new(1, 2),
        }]));
        check_round_trip(Frame::Table(vec![record.clone(), record]));
        check_round_trip(Frame::Pull);
        check_round_trip(Frame::LicensePull { serial: 7 });
        check_round_trip(Frame::License {
            armored: b"-----BEGIN".to_vec(),
        });
        check_round_trip(Frame::AorKey(AorKey {
            generation: 2,
            created_at_ms: 1_700_000_000_000,
            key: [7; AOR_KEY_LEN],
        }));
        check_round_trip(Frame::AorSummary(AorSummary {
            incarnation: 1,
            seq: 9,
            count: 3,
            hash: u64::MAX,
        }));
        check_round_trip(Frame::AorDelta(AorDelta {
            incarnation: 1,
            seq: 10,
            adds: vec![u64::MAX.to_le_bytes(), [1; 8]],
            removes: vec![[2; 8]],
        }));
        check_round_trip(Frame::RecordAors(RecordAors {
            record: largest_record(),
            adds: vec![[3; 8]],
            removes: vec![u64::MAX.to_le_bytes()],
        }));
        check_round_trip(Frame::AorPull {
            incarnation: 4,
            seq: u64::MAX,
        });
        check_round_trip(Frame::AorHeartbeat(AorHeartbeat {
            incarnation: 4,
            seq: 90,
            changed_seq: 12,
            aor_seq: 40,
            adds: vec![[1; 8]],
            removes: Vec::new(),
        }));
        check_round_trip(Frame::AorRanges(AorRanges {
            owner: "n1".into(),
            summary: None,
            ranges: vec![
                AorRange::Hash {
                    lo: 0,
                    hi: u64::MAX,
                    count: 5,
                    hash: 9,
                },
                AorRange::Members {
                    lo: 1,
                    hi: 2,
                    fps: vec![[1; 8]],
                },
            ],
        }));
    }

    #[test]
    fn an_aor_delta_costs_eight_bytes_per_fingerprint() {
        let delta = |n: usize| {
            encode(&Frame::AorDelta(AorDelta {
                incarnation: 3,
                seq: 1000,
                adds: vec![u64::MAX.to_le_bytes(); n],
                removes: Vec::new(),
            }))
            .len()
        };
        assert_eq!(delta(101) - delta(1), 800);
        assert!(delta(1) <= 8 + 10, "{}", delta(1));
    }

    #[test]
    fn aor_changes_in_a_push_cost_eight_bytes_each_and_two_lengths() {
        let record = Record {
            node_id: "node-01".into(),
            address: "10.0.0.1:7172".into(),
            aor_seq: 300,
            ..largest_record()
        };
        let plain = encode(&Frame::Record(record.clone())).len();
        let push = |adds: usize, removes: usize| {
            encode(&Frame::RecordAors(RecordAors {
                record: record.clone(),
                adds: vec![[0xff; 8]; adds],
                removes: vec![[0xff; 8]; removes],
            }))
            .len()
        };
        assert_eq!(push(1, 0), plain + 8 + 2);
        assert_eq!(push(60, 40), plain + 800 + 2);
    }

    #[test]
    fn the_largest_aor_frames_fit_a_frame_and_one_more_is_refused() {
        let full = Frame::AorDelta(AorDelta {
            incarnation: u64::MAX,
            seq: u64::MAX,
            adds: vec![[0xff; 8]; AOR_FRAME_FPS_MAX],
            removes: Vec::new(),
        });
        assert!(encode(&full).len() <= FRAME_BYTES_MAX);
        let Frame::AorDelta(mut over) = full else {
            unreachable!()
        };
        over.removes.push([0; 8]);
        let mut bytes = vec![FRAME_VERSION];
        bytes.extend(postcard::to_allocvec(&Frame::AorDelta(over)).unwrap());
        assert_eq!(
            decode(&bytes),
            Err(FrameError::TooManyAors {
                count: AOR_FRAME_FPS_MAX + 1
            })
        );
        let inverted = Frame::AorRanges(AorRanges {
            owner: "n".into(),
            summary: None,
            ranges: vec![AorRange::Hash {
                lo: 2,
                hi: 1,
                count: 0,
                hash: 0,
            }],
        });
        let mut bytes = vec![FRAME_VERSION];
        bytes.extend(postcard::to_allocvec(&inverted).unwrap());
        assert_eq!(decode(&bytes), Err(FrameError::AorRangeInverted));
    }

    #[test]
    fn the_oldest_key_of_the_highest_generation_wins() {
        let key = |generation, created_at_ms, byte| AorKey {
            generation,
            created_at_ms,
            key: [byte; AOR_KEY_LEN],
        };
        assert!(key(1, 100, 0).beats(&key(1, 200, 9)));
        assert!(key(2, 900, 0).beats(&key(1, 100, 9)));
        assert!(key(1, 100, 9).beats(&key(1, 100, 0)));
        assert!(!key(1, 100, 0).beats(&key(1, 100, 0)));
        assert_ne!(key(1, 100, 0).id(), key(2, 100, 0).id());
    }

    #[test]
    fn the_largest_record_fits_a_datagram() {
        let bytes = encode(&Frame::Record(largest_record()));
        assert_eq!(bytes.len(), RECORD_FRAME_BYTES_MAX);
    }

    #[test]
    fn the_largest_table_fits_a_frame() {
        let records = (0..TABLE_RECORDS_MAX)
            .map(|i| {
                let mut record = largest_record();
                record.node_id = format!("{i:0>64}");
                record
            })
            .collect();
        let bytes = encode(&Frame::Table(records));
        assert!(bytes.len() <= FRAME_BYTES_MAX, "{}", bytes.len());
    }

    #[test]
    fn refusals_name_their_reason() {
        let cases: &[(&[u8], FrameError)] = &[
            (b"", FrameError::Empty),
            (&[4, 5], FrameError::UnknownVersion(4)),
            // Versions 1 (no `aor_seq` in records) and 2 (no `wall_time`): refused, not misread.
            (&[1, 2], FrameError::UnknownVersion(1)),
            (&[2, 2], FrameError::UnknownVersion(2)),
            (&[FRAME_VERSION], FrameError::Malformed),
            (&[FRAME_VERSION, 99], FrameError::Malformed),
            (&[FRAME_VERSION, 2, 0], FrameError::TrailingBytes),
            // Heartbeat { incarnation: 1, seq: 1, changed_seq: 2 }
            (
                &[FRAME_VERSION, 1, 1, 1, 2],
                FrameError::HeartbeatFromTheFuture,
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode(bytes), Err(*error), "{bytes:?}");
        }
        let long = vec![FRAME_VERSION; FRAME_BYTES_MAX + 1];
        assert_eq!(
            decode(&long),
            Err(FrameError::TooLong {
                len: FRAME_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn a_record_with_a_bad_node_id_is_refused() {
        let mut record = largest_record();
        record.node_id = "has space".into();
        let mut bytes = vec![FRAME_VERSION];
        bytes.extend(postcard::to_allocvec(&Frame::Record(record)).unwrap());
        assert_eq!(
            decode(&bytes),
            Err(FrameError::Record(RecordError::NodeIdByte))
        );
    }

    #[test]
    fn oversized_license_and_table_are_refused() {
        let mut bytes = vec![FRAME_VERSION];
        bytes.extend(
            postcard::to_allocvec(&Frame::License {
                armored: vec![0; LICENSE_BYTES_MAX + 1],
            })
            .unwrap(),
        );
        assert_eq!(
            decode(&bytes),
            Err(FrameError::LicenseTooLong {
                len: LICENSE_BYTES_MAX + 1
            })
        );
        let small = Record {
            node_id: "n".into(),
            ..largest_record()
        };
        let mut small = small;
        small.usage = NodeUsage::default();
        small.address.clear();
        let mut bytes = vec![FRAME_VERSION];
        bytes.extend(
            postcard::to_allocvec(&Frame::Table(vec![small; TABLE_RECORDS_MAX + 1])).unwrap(),
        );
        assert_eq!(
            decode(&bytes),
            Err(FrameError::TooManyRecords {
                count: TABLE_RECORDS_MAX + 1
            })
        );
    }
}
