//! The record each node owns, its validation, and the merge rule.
//!
//! **The merge rule.** Per node id, the record with the larger [`Version`] —
//! `(incarnation, seq)`, compared lexicographically — wins. The owner never emits two
//! different records under one version (the incarnation is persisted and grows at every
//! restart; the seq grows at every emission), so a version names exactly one record and the
//! rule is a join: idempotent, commutative, associative. Two different records under one
//! version can only come from a duplicate node id or a forger; [`merge_order`] still orders
//! them (by content) so every node keeps the same one, and the owner raises an alarm when it
//! sees one carrying its own id.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tollgate_events::WallTime;

/// Longest node id, in bytes. The node id is also the DNS SAN of the node's certificate.
pub const NODE_ID_LEN_MAX: usize = 64;

/// Longest mesh address a record carries (`host:port`, `[v6]:port`, a DNS name), in bytes.
pub const ADDRESS_LEN_MAX: usize = 128;

/// Where a record stands in its owner's history: `(incarnation, seq)`, ordered
/// lexicographically.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Grows at every restart (persisted by the IO layer).
    pub incarnation: u64,
    /// Grows at every emission within one incarnation; it is also the heartbeat.
    pub seq: u64,
}

impl Version {
    pub const fn new(incarnation: u64, seq: u64) -> Self {
        Version { incarnation, seq }
    }

    /// The version after this one: `seq + 1`, or a new incarnation when seq is exhausted.
    pub const fn next(self) -> Version {
        match self.seq.checked_add(1) {
            Some(seq) => Version {
                incarnation: self.incarnation,
                seq,
            },
            None => Version {
                incarnation: self.incarnation.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.incarnation, self.seq)
    }
}

/// Record flags. Unknown bits are refused by [`Record::validate`] (a new flag is a new
/// frame version).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Flags(u8);

impl Flags {
    pub const EMPTY: Flags = Flags(0);
    /// The node shut down gracefully: its usage is zero and it drops out of every sum at once.
    pub const LEFT: Flags = Flags(1);
    const KNOWN_BITS: u8 = 1;

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// `None` when `bits` holds a flag this version does not know.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::KNOWN_BITS == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// What a node uses right now, as its agent counts it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeUsage {
    pub calls: u64,
    pub emergency_calls: u64,
    pub registered_subscribers: u64,
    pub registered_contacts: u64,
    /// Provisioned subscribers on the whole platform, as last reported to this node. A
    /// platform-wide figure: the cluster keeps the latest report, it never sums them.
    pub subscribers: u64,
    /// When `subscribers` was reported, Unix ms; 0 = never.
    pub subscribers_reported_at: u64,
    /// Highest concurrent calls this node has seen (its own peak, shown per node).
    pub peak_calls: u64,
    /// Highest registered subscribers this node has seen.
    pub peak_registered_subscribers: u64,
}

/// One node's replicated record. Each node owns exactly one and is the only one that emits it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Record {
    /// Stable node id, ≤ [`NODE_ID_LEN_MAX`] bytes of `[A-Za-z0-9._-]`; also the DNS SAN of
    /// the node's certificate.
    pub node_id: String,
    pub incarnation: u64,
    pub seq: u64,
    pub flags: Flags,
    /// The node's mesh address, so peers learn whom to dial; may be empty (unknown).
    pub address: String,
    /// Serial of the license the node holds and has verified; 0 = none.
    pub license_serial: u64,
    pub usage: NodeUsage,
    /// Seq of the node's registered-AoR set as of this record (frame version 2): the set
    /// changes travel with the record push that names them ([`crate::Frame::RecordAors`]),
    /// and a copy that sees a record name a later seq than it holds asks the owner for the
    /// missing changes ([`crate::Frame::AorPull`]). The set's version is
    /// `(incarnation, aor_seq)`; 0 = no change since the start of the incarnation.
    pub aor_seq: u64,
    /// The owner's wall clock when it stamped this record (raw, as its system clock read
    /// it; [`WallTime::ZERO`] = not known). Restamped at least every
    /// [`crate::WALL_STAMP_INTERVAL_MS`], so peers can tell a clock that disagrees with
    /// theirs (`CLOCK_SKEW`, issue 16; see [`crate::clock`]).
    pub wall_time: WallTime,
}

impl Record {
    pub const fn version(&self) -> Version {
        Version::new(self.incarnation, self.seq)
    }

    pub const fn is_left(&self) -> bool {
        self.flags.contains(Flags::LEFT)
    }

    /// Structural checks applied to every record that comes off the wire.
    pub fn validate(&self) -> Result<(), RecordError> {
        validate_node_id(&self.node_id)?;
        validate_address(&self.address)?;
        if Flags::from_bits(self.flags.bits()).is_none() {
            return Err(RecordError::UnknownFlags {
                bits: self.flags.bits(),
            });
        }
        Ok(())
    }
}

/// Why a record, node id or address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty node id")]
    NodeIdEmpty,
    #[error("node id of {len} bytes, more than {NODE_ID_LEN_MAX}")]
    NodeIdTooLong { len: usize },
    #[error("node id holds a byte outside [A-Za-z0-9._-]")]
    NodeIdByte,
    #[error("address of {len} bytes, more than {ADDRESS_LEN_MAX}")]
    AddressTooLong { len: usize },
    #[error("address holds a control, space or non-ASCII byte")]
    AddressByte,
    #[error("unknown flag bits {bits:#04x}")]
    UnknownFlags { bits: u8 },
}

/// A node id is 1..=[`NODE_ID_LEN_MAX`] bytes of ASCII letters, digits, `.`, `-`, `_` — a
/// string that fits a DNS SAN. The transport checks the same function against the peer's
/// certificate.
pub fn validate_node_id(node_id: &str) -> Result<(), RecordError> {
    if node_id.is_empty() {
        return Err(RecordError::NodeIdEmpty);
    }
    if node_id.len() > NODE_ID_LEN_MAX {
        return Err(RecordError::NodeIdTooLong { len: node_id.len() });
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if !node_id.bytes().all(allowed) {
        return Err(RecordError::NodeIdByte);
    }
    Ok(())
}

/// An address is at most [`ADDRESS_LEN_MAX`] bytes of printable ASCII without spaces.
pub fn validate_address(address: &str) -> Result<(), RecordError> {
    if address.len() > ADDRESS_LEN_MAX {
        return Err(RecordError::AddressTooLong { len: address.len() });
    }
    if !address.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RecordError::AddressByte);
    }
    Ok(())
}

/// The total order of the merge rule for two records of one node: version first, then (for
/// the equal versions only a duplicate node or a forger produces) the records' content, so
/// that every node keeps the same record whatever the order of arrival.
pub fn merge_order(a: &Record, b: &Record) -> Ordering {
    debug_assert_eq!(a.node_id, b.node_id, "merge compares records of one node");
    a.version().cmp(&b.version()).then_with(|| a.cmp(b))
}

/// The merge of two records of one node: the greater by [`merge_order`].
pub fn merge(a: Record, b: Record) -> Record {
    if merge_order(&b, &a) == Ordering::Greater {
        b
    } else {
        a
    }
}

/// A set of records, one per node id, merged by [`merge`]. The model the replica's table is
/// tested against, and a convenient value for the merge-law property tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    records: BTreeMap<String, Record>,
}

impl RecordSet {
    pub fn new() -> Self {
        RecordSet::default()
    }

    /// Merges one record in; `true` when the set changed.
    pub fn insert(&mut self, record: Record) -> bool {
        match self.records.get_mut(&record.node_id) {
            Some(held) => {
                if merge_order(&record, held) == Ordering::Greater {
                    *held = record;
                    true
                } else {
                    false
                }
            }
            None => {
                self.records.insert(record.node_id.clone(), record);
                true
            }
        }
    }

    /// Merges every record of `other` in.
    pub fn merge(&mut self, other: &RecordSet) {
        for record in other.records.values() {
            self.insert(record.clone());
        }
    }

    pub fn get(&self, node_id: &str) -> Option<&Record> {
        self.records.get(node_id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl FromIterator<Record> for RecordSet {
    fn from_iter<I: IntoIterator<Item = Record>>(iter: I) -> Self {
        let mut set = RecordSet::new();
        for record in iter {
            set.insert(record);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node_id: &str, incarnation: u64, seq: u64, calls: u64) -> Record {
        Record {
            node_id: node_id.to_owned(),
            incarnation,
            seq,
            flags: Flags::EMPTY,
            address: String::new(),
            license_serial: 0,
            usage: NodeUsage {
                calls,
                ..NodeUsage::default()
            },
            aor_seq: 0,
            wall_time: WallTime::ZERO,
        }
    }

    #[test]
    fn larger_incarnation_wins_over_larger_seq() {
        let old = record("a", 1, 900, 5);
        let restarted = record("a", 2, 1, 7);
        assert_eq!(merge(old.clone(), restarted.clone()), restarted);
        assert_eq!(merge(restarted.clone(), old), restarted);
    }

    #[test]
    fn equal_versions_with_different_content_pick_the_same_record_either_way() {
        let x = record("a", 1, 5, 1);
        let y = record("a", 1, 5, 2);
        assert_eq!(merge(x.clone(), y.clone()), merge(y, x));
    }

    #[test]
    fn version_next_rolls_into_a_new_incarnation_at_the_end_of_seq() {
        assert_eq!(Version::new(3, 7).next(), Version::new(3, 8));
        assert_eq!(Version::new(3, u64::MAX).next(), Version::new(4, 0));
    }

    #[test]
    fn node_ids_are_dns_san_shaped() {
        for good in ["a", "node-01.example.net", "n_1", &"x".repeat(64)] {
            assert_eq!(validate_node_id(good), Ok(()), "{good}");
        }
        assert_eq!(validate_node_id(""), Err(RecordError::NodeIdEmpty));
        assert_eq!(
            validate_node_id(&"x".repeat(65)),
            Err(RecordError::NodeIdTooLong { len: 65 })
        );
        for bad in ["a b", "a/b", "é", "a\0"] {
            assert_eq!(validate_node_id(bad), Err(RecordError::NodeIdByte), "{bad}");
        }
    }

    #[test]
    fn unknown_flag_bits_are_refused() {
        assert_eq!(Flags::from_bits(1), Some(Flags::LEFT));
        assert_eq!(Flags::from_bits(2), None);
        let mut bad = record("a", 1, 1, 0);
        bad.flags = Flags(0x82);
        assert_eq!(
            bad.validate(),
            Err(RecordError::UnknownFlags { bits: 0x82 })
        );
    }
}
