//! Snapshots of the tables, so a restarted agent keeps its counts.
//!
//! [`crate::Tables::snapshot`] copies the live entries shard by shard (one lock at a time,
//! so ingest goes on; the result is therefore not an atomic cut across shards, only per
//! shard). [`encode`] / [`decode`] turn a [`Snapshot`] into bytes and back; the agent writes
//! them with temp file + fsync + rename (no file IO here). [`crate::Tables::restore`] puts
//! the entries back, dropping what expired in the meantime.
//!
//! Format version 2 added the wall-clock anchor (`wall_at`), the journal segment the snapshot
//! stops at (`journal_segment`, see [`crate::journal`]) and tombstones; version 1 snapshots
//! still decode (with no anchor, no journal and no tombstones).
//!
//! ```text
//! offset  size  field
//!      0     6  magic "TGSNAP"
//!      6     2  format version, u16 LE (SNAPSHOT_FORMAT_VERSION)
//!      8     8  body length in bytes, u64 LE
//!     16    32  blake3 hash of the body
//!     48     …  body: postcard encoding of `Snapshot`
//! ```
//!
//! **Hostile input.** Decoding never panics. The body length must match the input exactly
//! and the hash must match before postcard sees a byte. postcard reads a length prefix before
//! each `Vec`, but serde pre-allocates at most 1 MiB per `Vec` from a prefix and then grows
//! only as elements actually decode (each element takes input bytes), so memory stays
//! proportional to the input. After decoding, [`Snapshot::validate`] checks the structural
//! limits (contacts per AoR, minute count); [`encode`] asserts the same (assertions in pairs).
//!
//! Fingerprints are stored, not Call-IDs: a snapshot is only meaningful with the key it was
//! taken with, so it carries [`crate::FingerprintKey::id`] and restore refuses another key.
//! The format version also pins the fingerprint algorithm.

use serde::{Deserialize, Serialize};

use crate::peaks::{MINUTE_SLOT_COUNT, MinutePeak};
use crate::registrations::CONTACTS_PER_AOR_LIMIT;
use crate::{MonoTime, WallTime};

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 6] = *b"TGSNAP";
/// The format [`encode`] writes and [`decode`] reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 2;
/// Header length: magic, version, body length, body hash.
pub const SNAPSHOT_HEADER_LEN: usize = 6 + 2 + 8 + 32;

/// The tables' contents at one time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub taken_at: MonoTime,
    /// [`crate::FingerprintKey::id`] of the key the fingerprints were made with.
    pub fingerprint_key_id: u64,
    pub calls: Vec<CallRecord>,
    pub registrations: Vec<AorRecord>,
    pub subscribers: u64,
    pub subscribers_reported_at: Option<MonoTime>,
    /// Minute peaks of the last 24 hours, oldest first.
    pub peaks: Vec<MinutePeak>,
    /// The wall clock when the snapshot was taken; `taken_at` and every time in the
    /// snapshot are on the tables' (monotonic) clock, `wall_at - taken_at` converts them.
    pub wall_at: WallTime,
    /// The first journal segment this snapshot does not contain: replay starts there
    /// (0: no journal).
    pub journal_segment: u64,
    /// Stops of unknown calls still remembered, so their late starts stay ignored.
    pub tombstones: Vec<TombstoneRecord>,
}

/// A stop of an unknown call, remembered until `deadline_s` (see [`crate::calls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneRecord {
    pub fingerprint: [u8; 16],
    pub deadline_s: u32,
}

/// The body of a format-1 snapshot.
#[derive(Debug, Clone, Deserialize)]
struct SnapshotV1 {
    taken_at: MonoTime,
    fingerprint_key_id: u64,
    calls: Vec<CallRecord>,
    registrations: Vec<AorRecord>,
    subscribers: u64,
    subscribers_reported_at: Option<MonoTime>,
    peaks: Vec<MinutePeak>,
}

impl From<SnapshotV1> for Snapshot {
    fn from(v1: SnapshotV1) -> Snapshot {
        Snapshot {
            taken_at: v1.taken_at,
            fingerprint_key_id: v1.fingerprint_key_id,
            calls: v1.calls,
            registrations: v1.registrations,
            subscribers: v1.subscribers,
            subscribers_reported_at: v1.subscribers_reported_at,
            peaks: v1.peaks,
            // Version 1 ran on the wall clock.
            wall_at: WallTime::from_unix_ms(v1.taken_at.unix_ms()),
            journal_segment: 0,
            tombstones: Vec::new(),
        }
    }
}

/// One active call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub fingerprint: [u8; 16],
    /// Unix seconds at which the call ends unless refreshed.
    pub deadline_s: u32,
    /// Unix seconds the call started (saturated to 2024-01-01).
    pub started_s: u32,
    pub emergency: bool,
}

/// One registered AoR and its contacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AorRecord {
    pub fingerprint: [u8; 16],
    /// 1 ..= [`CONTACTS_PER_AOR_LIMIT`] contacts.
    pub contacts: Vec<ContactRecord>,
}

/// One contact of an AoR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    /// The contact's 64-bit keyed hash.
    pub contact_hash: u64,
    /// Unix seconds at which the binding expires.
    pub expires_s: u32,
}

/// What [`crate::Tables::restore`] put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    pub calls: u64,
    pub contacts: u64,
    /// Calls and contacts that had expired by the time of the restore.
    pub dropped_expired: u64,
    /// Calls and contacts left out because the tables were at their configured caps
    /// (`max_active_calls`, `max_aors`) — a snapshot from an agent with larger caps.
    pub dropped_full: u64,
}

/// Why a snapshot could not be decoded or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a tollgate snapshot (bad magic)")]
    BadMagic,
    #[error("unsupported snapshot format version {0}")]
    UnsupportedVersion(u16),
    #[error("snapshot truncated: {expected_len} bytes expected, {actual_len} present")]
    Truncated { expected_len: u64, actual_len: u64 },
    #[error("snapshot has {0} bytes after its body")]
    TrailingBytes(u64),
    #[error("snapshot checksum mismatch")]
    ChecksumMismatch,
    #[error("snapshot body does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("snapshot body is invalid: {0}")]
    Invalid(&'static str),
    #[error("snapshot was taken with another fingerprint key")]
    KeyMismatch,
}

impl Snapshot {
    /// Checks the structural limits the tables rely on.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.peaks.len() > MINUTE_SLOT_COUNT {
            return Err(SnapshotError::Invalid("more minute peaks than a day has"));
        }
        if self.registrations.iter().any(|aor| aor.contacts.is_empty()) {
            return Err(SnapshotError::Invalid("an AoR without contacts"));
        }
        if self
            .registrations
            .iter()
            .any(|aor| aor.contacts.len() > CONTACTS_PER_AOR_LIMIT)
        {
            return Err(SnapshotError::Invalid("an AoR with too many contacts"));
        }
        Ok(())
    }

    /// Number of registered contacts in the snapshot.
    pub fn contact_count(&self) -> u64 {
        self.registrations
            .iter()
            .map(|aor| aor.contacts.len() as u64)
            .sum()
    }

    /// Number of emergency calls in the snapshot.
    pub fn emergency_call_count(&self) -> u64 {
        self.calls.iter().filter(|call| call.emergency).count() as u64
    }
}

/// Encodes a snapshot: header then postcard body (module doc).
///
/// Panics if the snapshot breaks [`Snapshot::validate`]: only [`crate::Tables::snapshot`]
/// and [`decode`] make snapshots, and both uphold it.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    assert!(snapshot.validate().is_ok(), "encoding an invalid snapshot");
    let body = postcard::to_stdvec(snapshot).expect("postcard cannot fail on a Vec writer");
    frame_body(&body)
}

/// Puts the header (magic, version, length, hash) in front of a body. [`encode`] uses it;
/// tests and the fuzz target use it to feed arbitrary bodies past the checksum.
pub fn frame_body(body: &[u8]) -> Vec<u8> {
    frame_body_version(body, SNAPSHOT_FORMAT_VERSION)
}

/// [`frame_body`] with an explicit format version (tests of older versions).
pub fn frame_body_version(body: &[u8], version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + body.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    debug_assert_eq!(out.len(), SNAPSHOT_HEADER_LEN);
    out.extend_from_slice(body);
    out
}

/// Decodes bytes made by [`encode`]. Never panics; see the module doc on hostile input.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let magic_len = SNAPSHOT_MAGIC.len();
    let present = bytes.len().min(magic_len);
    if bytes[..present] != SNAPSHOT_MAGIC[..present] {
        return Err(SnapshotError::BadMagic);
    }
    let truncated = |expected_len: usize| SnapshotError::Truncated {
        expected_len: expected_len as u64,
        actual_len: bytes.len() as u64,
    };
    if bytes.len() < magic_len + 2 {
        return Err(truncated(SNAPSHOT_HEADER_LEN));
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if version != SNAPSHOT_FORMAT_VERSION && version != 1 {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let Some((header, body)) = bytes.split_at_checked(SNAPSHOT_HEADER_LEN) else {
        return Err(truncated(SNAPSHOT_HEADER_LEN));
    };
    let mut body_len = [0u8; 8];
    body_len.copy_from_slice(&header[8..16]);
    let body_len = u64::from_le_bytes(body_len);
    let actual_len = body.len() as u64;
    if actual_len < body_len {
        return Err(SnapshotError::Truncated {
            expected_len: (SNAPSHOT_HEADER_LEN as u64).saturating_add(body_len),
            actual_len: bytes.len() as u64,
        });
    }
    if actual_len > body_len {
        return Err(SnapshotError::TrailingBytes(actual_len - body_len));
    }
    if blake3::hash(body).as_bytes() != &header[16..48] {
        return Err(SnapshotError::ChecksumMismatch);
    }
    let (snapshot, rest) = if version == 1 {
        let (v1, rest) = postcard::take_from_bytes::<SnapshotV1>(body)?;
        (Snapshot::from(v1), rest)
    } else {
        postcard::take_from_bytes::<Snapshot>(body)?
    };
    if !rest.is_empty() {
        return Err(SnapshotError::Invalid("bytes after the postcard body"));
    }
    snapshot.validate()?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            taken_at: MonoTime::from_unix_secs(1_750_000_000),
            fingerprint_key_id: 42,
            calls: vec![CallRecord {
                fingerprint: [1; 16],
                deadline_s: 1_750_010_000,
                started_s: 1_750_000_000,
                emergency: true,
            }],
            registrations: vec![AorRecord {
                fingerprint: [2; 16],
                contacts: vec![
                    ContactRecord {
                        contact_hash: 7,
                        expires_s: 1_750_003_600,
                    },
                    ContactRecord {
                        contact_hash: 8,
                        expires_s: 1_750_000_600,
                    },
                ],
            }],
            subscribers: 1234,
            subscribers_reported_at: Some(MonoTime::from_unix_secs(1_749_999_000)),
            peaks: vec![MinutePeak {
                minute_start: MonoTime::from_unix_secs(1_749_999_960),
                calls: 3,
                registered_subscribers: 1,
            }],
            wall_at: WallTime::from_unix_secs(1_750_000_100),
            journal_segment: 9,
            tombstones: vec![TombstoneRecord {
                fingerprint: [3; 16],
                deadline_s: 1_750_000_030,
            }],
        }
    }

    #[test]
    fn encode_then_decode_gives_the_same_snapshot() {
        let snapshot = sample();
        assert_eq!(decode(&encode(&snapshot)).ok(), Some(snapshot));
        assert_eq!(
            decode(&encode(&Snapshot::default())).ok(),
            Some(Snapshot::default())
        );
    }

    #[test]
    fn a_version_1_snapshot_still_decodes() {
        #[derive(Serialize)]
        struct V1<'a> {
            taken_at: MonoTime,
            fingerprint_key_id: u64,
            calls: &'a [CallRecord],
            registrations: &'a [AorRecord],
            subscribers: u64,
            subscribers_reported_at: Option<MonoTime>,
            peaks: &'a [MinutePeak],
        }
        let s = sample();
        let body = postcard::to_stdvec(&V1 {
            taken_at: s.taken_at,
            fingerprint_key_id: s.fingerprint_key_id,
            calls: &s.calls,
            registrations: &s.registrations,
            subscribers: s.subscribers,
            subscribers_reported_at: s.subscribers_reported_at,
            peaks: &s.peaks,
        })
        .unwrap();
        let decoded = decode(&frame_body_version(&body, 1)).unwrap();
        assert_eq!(decoded.calls, s.calls);
        assert_eq!(decoded.wall_at.unix_ms(), s.taken_at.unix_ms());
        assert_eq!(decoded.journal_segment, 0);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut bytes = encode(&sample());
        bytes[0] = b'X';
        assert!(matches!(decode(&bytes), Err(SnapshotError::BadMagic)));
        assert!(matches!(decode(b"hello"), Err(SnapshotError::BadMagic)));
    }

    #[test]
    fn other_versions_are_refused() {
        let mut bytes = encode(&sample());
        bytes[6] = 9;
        assert!(matches!(
            decode(&bytes),
            Err(SnapshotError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            match decode(&bytes[..len]) {
                Err(SnapshotError::Truncated { .. }) => {}
                other => panic!("length {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert!(matches!(
            decode(&bytes),
            Err(SnapshotError::TrailingBytes(1))
        ));
    }

    #[test]
    fn a_flipped_body_bit_is_a_checksum_mismatch() {
        let mut bytes = encode(&sample());
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode(&bytes),
            Err(SnapshotError::ChecksumMismatch)
        ));
    }

    /// Wraps a body in a valid header, as a hostile writer would.
    fn with_header(body: &[u8]) -> Vec<u8> {
        frame_body(body)
    }

    #[test]
    fn a_huge_length_prefix_fails_without_allocating_it() {
        // taken_at 0, key id 0, then calls: length 2^62 and no elements.
        let body = [0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(matches!(
            decode(&with_header(&body)),
            Err(SnapshotError::Postcard(_))
        ));
    }

    #[test]
    fn a_huge_body_length_is_truncated_not_allocated() {
        let mut bytes = encode(&sample());
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(SnapshotError::Truncated { .. })
        ));
    }

    #[test]
    fn structurally_invalid_bodies_are_refused() {
        let mut empty_aor = sample();
        empty_aor.registrations[0].contacts.clear();
        let body = postcard::to_stdvec(&empty_aor).unwrap();
        assert!(matches!(
            decode(&with_header(&body)),
            Err(SnapshotError::Invalid(_))
        ));

        let mut too_many_peaks = sample();
        too_many_peaks.peaks = vec![too_many_peaks.peaks[0]; MINUTE_SLOT_COUNT + 1];
        let body = postcard::to_stdvec(&too_many_peaks).unwrap();
        assert!(matches!(
            decode(&with_header(&body)),
            Err(SnapshotError::Invalid(_))
        ));
    }

    #[test]
    fn errors_read_in_lowercase() {
        for e in [
            SnapshotError::BadMagic,
            SnapshotError::UnsupportedVersion(2),
            SnapshotError::ChecksumMismatch,
            SnapshotError::KeyMismatch,
        ] {
            let text = e.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'));
        }
    }
}
