//! Snapshots of the tables, so a restarted agent keeps its counts.
//!
//! A snapshot is written **streaming, shard by shard**: [`crate::Tables::write_snapshot`]
//! copies one shard's live entries (under that shard's lock only, so ingest goes on), writes
//! them as a frame and moves on. The tables are never copied whole: memory beyond the tables
//! is one shard's entries. The result is therefore not an atomic cut across shards, only per
//! shard; the journal makes up for that (see the agent's recovery). Reading is streaming too:
//! [`crate::Tables::restore_reader`] reads the file through [`open_reader`] in two passes,
//! one frame in memory at a time: the first checks the hash and structure whole, the second
//! restores frame by frame. [`encode`] / [`decode`] turn a whole [`Snapshot`] into bytes and
//! back (tests, tools, the fuzz target); the agent writes through the durable-write module
//! (no file IO here).
//!
//! Format version 4 (written now; version 3 is the same without the owner frames):
//!
//! ```text
//! offset  size  field
//!      0     6  magic "TGSNAP"
//!      6     2  format version, u16 LE (SNAPSHOT_FORMAT_VERSION = 4)
//!      8     …  frames, each a postcard-encoded `Frame`:
//!                 Meta (exactly one, first), Owners (the owner names, once), then any
//!                 number of Calls / Tombstones / Registrations frames of at most
//!                 FRAME_ENTRIES_MAX entries each, each Calls or Registrations frame
//!                 followed by CallOwners / ContactOwners frames naming the owner id of
//!                 its entries that have one, then
//!                 End { calls, tombstones, aors, contacts } (the counts must add up)
//!   len−48     6  end magic "TGSEND"
//!   len−42     2  zero
//!   len−40     8  bytes before the trailer (= len − 48), u64 LE
//!   len−32    32  blake3 hash of every byte before the trailer
//! ```
//!
//! The hash and length sit in a trailer because the writer does not know them until the
//! last shard is written. A cut file has no trailer ([`SnapshotError::Unterminated`]).
//! New frame kinds are added as new `Frame` variants at the end (postcard numbers variants
//! in order), with a new format version so older readers refuse what they cannot restore.
//! Version 4 added the owners ([`SnapshotOwners`]: who reported each call and contact, so a
//! reconciliation source still corrects its own entries after a restart); a version-3 file
//! restores with no owners.
//!
//! Versions 1 and 2 (one postcard body after a header with its length and hash) still
//! decode. Version 2 added the wall-clock anchor (`wall_at`), the journal segment the
//! snapshot stops at (`journal_segment`, see [`crate::journal`]) and tombstones; version 1
//! has no anchor, no journal and no tombstones.
//!
//! ```text
//! version 1 and 2
//! offset  size  field
//!      0     6  magic "TGSNAP"
//!      6     2  format version, u16 LE
//!      8     8  body length in bytes, u64 LE
//!     16    32  blake3 hash of the body
//!     48     …  body: postcard encoding of `Snapshot`
//! ```
//!
//! **Hostile input.** Decoding never panics. The length and hash must match before postcard
//! sees a byte. postcard reads a length prefix before each `Vec`, but serde pre-allocates at
//! most 1 MiB per `Vec` from a prefix and then grows only as elements actually decode (each
//! element takes input bytes), so memory stays proportional to the input. Every frame is
//! checked against the structural limits (entries per frame, contacts per AoR, minute count);
//! the writer asserts the same (assertions in pairs).
//!
//! Fingerprints are stored, not Call-IDs: a snapshot is only meaningful with the key it was
//! taken with, so it carries [`crate::FingerprintKey::id`] and restore refuses another key.
//! The format version also pins the fingerprint algorithm.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::peaks::{MINUTE_SLOT_COUNT, MinutePeak};
use crate::registrations::CONTACTS_PER_AOR_LIMIT;
use crate::{MonoTime, WallTime};

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 6] = *b"TGSNAP";
/// The format [`encode`] and [`SnapshotWriter`] write; [`decode`] also reads 1, 2 and 3.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 4;
/// Header length of versions 1 and 2: magic, version, body length, body hash.
pub const SNAPSHOT_HEADER_LEN: usize = 6 + 2 + 8 + 32;
/// Header length of version 3: magic, version.
pub const SNAPSHOT_V3_HEADER_LEN: usize = 6 + 2;
/// First bytes of a version-3 trailer.
pub const SNAPSHOT_END_MAGIC: [u8; 6] = *b"TGSEND";
/// Version-3 trailer length: end magic, zero, length, hash.
pub const SNAPSHOT_TRAILER_LEN: usize = 6 + 2 + 8 + 32;
/// Most entries in one frame (the writer splits larger shards).
pub const FRAME_ENTRIES_MAX: usize = 65_536;

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
    /// Who reported the entries (format 4; empty before). Not part of the version-1/2 body.
    #[serde(skip)]
    pub owners: SnapshotOwners,
}

/// Which sender reported which entry ([`crate::owners`]), so a reconciliation source still
/// corrects its own entries after a restart. Owner ids are the snapshot's: id `n` is
/// `names[n - 1]`; restore interns the names again and maps the ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotOwners {
    /// At most [`crate::OWNERS_MAX`] names of 1 ..= 255 bytes.
    pub names: Vec<String>,
    /// Calls with an owner (those without have none).
    pub calls: Vec<CallOwner>,
    /// Contacts with an owner.
    pub contacts: Vec<ContactOwner>,
}

/// The owner of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallOwner {
    pub fingerprint: [u8; 16],
    pub owner: u8,
}

/// The owner of one contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactOwner {
    pub aor: [u8; 16],
    pub contact_hash: u64,
    pub owner: u8,
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
            owners: SnapshotOwners::default(),
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
    #[error("snapshot has no valid end marker ({actual_len} bytes): cut short or appended to")]
    Unterminated { actual_len: u64 },
    #[error("snapshot checksum mismatch")]
    ChecksumMismatch,
    #[error("snapshot body does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("snapshot body is invalid: {0}")]
    Invalid(&'static str),
    #[error("snapshot was taken with another fingerprint key")]
    KeyMismatch,
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] io::Error),
}

impl Snapshot {
    /// Checks the structural limits the tables rely on.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.peaks.len() > MINUTE_SLOT_COUNT {
            return Err(SnapshotError::Invalid("more minute peaks than a day has"));
        }
        validate_aors(&self.registrations)
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

/// Everything in a snapshot but its entries: the first frame of a version-3 file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub taken_at: MonoTime,
    pub fingerprint_key_id: u64,
    pub subscribers: u64,
    pub subscribers_reported_at: Option<MonoTime>,
    pub peaks: Vec<MinutePeak>,
    pub wall_at: WallTime,
    pub journal_segment: u64,
}

/// The counts in the `End` frame: what the frames before it must add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FrameCounts {
    pub calls: u64,
    pub tombstones: u64,
    pub aors: u64,
    pub contacts: u64,
}

/// One frame of a version-3 snapshot, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Meta(SnapshotMeta),
    Calls(Vec<CallRecord>),
    Tombstones(Vec<TombstoneRecord>),
    Registrations(Vec<AorRecord>),
    End(FrameCounts),
    /// Format 4: the owner names (once, right after the meta).
    Owners(Vec<String>),
    /// Format 4: owners of calls restored by earlier frames.
    CallOwners(Vec<CallOwner>),
    /// Format 4: owners of contacts restored by earlier frames.
    ContactOwners(Vec<ContactOwner>),
}

/// [`Frame`] as written: the same variants in the same order, borrowing the entries.
#[derive(Serialize)]
enum FrameOut<'a> {
    Meta(&'a SnapshotMeta),
    Calls(&'a [CallRecord]),
    Tombstones(&'a [TombstoneRecord]),
    Registrations(&'a [AorRecord]),
    End(FrameCounts),
    Owners(&'a [String]),
    CallOwners(&'a [CallOwner]),
    ContactOwners(&'a [ContactOwner]),
}

impl SnapshotMeta {
    fn validate(&self) -> Result<(), SnapshotError> {
        if self.peaks.len() > MINUTE_SLOT_COUNT {
            return Err(SnapshotError::Invalid("more minute peaks than a day has"));
        }
        Ok(())
    }
}

fn validate_owner_names(names: &[String]) -> Result<(), SnapshotError> {
    if names.len() > crate::OWNERS_MAX {
        return Err(SnapshotError::Invalid(
            "more owner names than owners can be",
        ));
    }
    if names
        .iter()
        .any(|n| n.is_empty() || n.len() > tollgate_events::FIELD_LEN_MAX)
    {
        return Err(SnapshotError::Invalid(
            "an owner name out of 1 to 255 bytes",
        ));
    }
    Ok(())
}

fn validate_aors(aors: &[AorRecord]) -> Result<(), SnapshotError> {
    if aors.iter().any(|aor| aor.contacts.is_empty()) {
        return Err(SnapshotError::Invalid("an AoR without contacts"));
    }
    if aors
        .iter()
        .any(|aor| aor.contacts.len() > CONTACTS_PER_AOR_LIMIT)
    {
        return Err(SnapshotError::Invalid("an AoR with too many contacts"));
    }
    Ok(())
}

/// Counts bytes and hashes them on their way to `W`.
struct Hashing<W> {
    out: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes a version-3 snapshot frame by frame (module doc): [`new`](Self::new) with the
/// meta, then entries in any order and any number of calls, then [`finish`](Self::finish).
pub struct SnapshotWriter<W: Write> {
    out: Hashing<W>,
    counts: FrameCounts,
    buf: Vec<u8>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the header and the meta frame.
    ///
    /// Panics if `meta` holds more minute peaks than a day has (a bug: the peaks table
    /// cannot).
    pub fn new(out: W, meta: &SnapshotMeta) -> io::Result<Self> {
        assert!(meta.validate().is_ok(), "snapshot meta breaks its limits");
        let mut w = SnapshotWriter {
            out: Hashing {
                out,
                hasher: blake3::Hasher::new(),
                len: 0,
            },
            counts: FrameCounts::default(),
            buf: Vec::new(),
        };
        w.out.write_all(&SNAPSHOT_MAGIC)?;
        w.out.write_all(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
        w.frame(&FrameOut::Meta(meta))?;
        Ok(w)
    }

    fn frame(&mut self, frame: &FrameOut<'_>) -> io::Result<()> {
        self.buf.clear();
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(frame, buf).map_err(io::Error::other)?;
        self.out.write_all(&self.buf)
    }

    pub fn calls(&mut self, calls: &[CallRecord]) -> io::Result<()> {
        for chunk in calls.chunks(FRAME_ENTRIES_MAX) {
            self.frame(&FrameOut::Calls(chunk))?;
            self.counts.calls += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn tombstones(&mut self, tombstones: &[TombstoneRecord]) -> io::Result<()> {
        for chunk in tombstones.chunks(FRAME_ENTRIES_MAX) {
            self.frame(&FrameOut::Tombstones(chunk))?;
            self.counts.tombstones += chunk.len() as u64;
        }
        Ok(())
    }

    /// Panics if an AoR has no contacts or more than [`CONTACTS_PER_AOR_LIMIT`] (a bug:
    /// the registration table cannot).
    pub fn registrations(&mut self, aors: &[AorRecord]) -> io::Result<()> {
        assert!(
            validate_aors(aors).is_ok(),
            "snapshot AoRs break their limits"
        );
        for chunk in aors.chunks(FRAME_ENTRIES_MAX) {
            self.frame(&FrameOut::Registrations(chunk))?;
            self.counts.aors += chunk.len() as u64;
            self.counts.contacts += chunk.iter().map(|a| a.contacts.len() as u64).sum::<u64>();
        }
        Ok(())
    }

    /// The owner names (call once, before any owners frame).
    ///
    /// Panics past [`crate::OWNERS_MAX`] names or with a name out of 1 ..= 255 bytes (a bug:
    /// the owner table cannot hold them).
    pub fn owners(&mut self, names: &[String]) -> io::Result<()> {
        assert!(
            validate_owner_names(names).is_ok(),
            "owner names break their limits"
        );
        self.frame(&FrameOut::Owners(names))
    }

    pub fn call_owners(&mut self, owners: &[CallOwner]) -> io::Result<()> {
        for chunk in owners.chunks(FRAME_ENTRIES_MAX) {
            self.frame(&FrameOut::CallOwners(chunk))?;
        }
        Ok(())
    }

    pub fn contact_owners(&mut self, owners: &[ContactOwner]) -> io::Result<()> {
        for chunk in owners.chunks(FRAME_ENTRIES_MAX) {
            self.frame(&FrameOut::ContactOwners(chunk))?;
        }
        Ok(())
    }

    /// Writes the end frame and the trailer; returns the writer and the file's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.frame(&FrameOut::End(self.counts))?;
        let Hashing {
            mut out,
            hasher,
            len,
        } = self.out;
        let mut trailer = [0u8; SNAPSHOT_TRAILER_LEN];
        trailer[..6].copy_from_slice(&SNAPSHOT_END_MAGIC);
        trailer[8..16].copy_from_slice(&len.to_le_bytes());
        trailer[16..48].copy_from_slice(hasher.finalize().as_bytes());
        out.write_all(&trailer)?;
        out.flush()?;
        Ok((out, len + SNAPSHOT_TRAILER_LEN as u64))
    }
}

/// Encodes a whole snapshot in the current format (module doc).
///
/// Panics if the snapshot breaks [`Snapshot::validate`]: only [`crate::Tables::snapshot`]
/// and [`decode`] make snapshots, and both uphold it.
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    assert!(snapshot.validate().is_ok(), "encoding an invalid snapshot");
    let meta = SnapshotMeta {
        taken_at: snapshot.taken_at,
        fingerprint_key_id: snapshot.fingerprint_key_id,
        subscribers: snapshot.subscribers,
        subscribers_reported_at: snapshot.subscribers_reported_at,
        peaks: snapshot.peaks.clone(),
        wall_at: snapshot.wall_at,
        journal_segment: snapshot.journal_segment,
    };
    let written = (|| {
        let mut w = SnapshotWriter::new(Vec::new(), &meta)?;
        w.owners(&snapshot.owners.names)?;
        w.calls(&snapshot.calls)?;
        w.call_owners(&snapshot.owners.calls)?;
        w.tombstones(&snapshot.tombstones)?;
        w.registrations(&snapshot.registrations)?;
        w.contact_owners(&snapshot.owners.contacts)?;
        w.finish()
    })();
    written.expect("writing to a Vec cannot fail").0
}

/// Wraps arbitrary frame bytes in a valid version-3 header and trailer, as a hostile writer
/// would: tests and the fuzz target use it to reach the frame decoder past the hash.
pub fn frame_frames(frames: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_V3_HEADER_LEN + frames.len() + SNAPSHOT_TRAILER_LEN);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(frames);
    let hash = blake3::hash(&out);
    let len = out.len() as u64;
    out.extend_from_slice(&SNAPSHOT_END_MAGIC);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Puts a version-2 header (magic, version, length, hash) in front of a body: tests and the
/// fuzz target use it to feed arbitrary bodies past the checksum.
pub fn frame_body(body: &[u8]) -> Vec<u8> {
    frame_body_version(body, 2)
}

/// [`frame_body`] with an explicit format version (1 or 2).
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

/// A snapshot file opened for reading (after the header and hash checks).
pub enum Opened<'a> {
    /// Versions 1 and 2: one body, decoded whole.
    Whole(Snapshot),
    /// Version 3: the meta and the entry frames after it.
    Frames(SnapshotMeta, Frames<'a>),
}

/// The entry frames of a version-3 snapshot (Calls, Tombstones, Registrations), checked one
/// by one; the end frame's counts are checked when it is reached. Yields an error (once)
/// and stops at the first bad frame.
pub struct Frames<'a> {
    rest: &'a [u8],
    counts: FrameCounts,
    done: bool,
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.step();
        if !matches!(result, Some(Ok(_))) {
            self.done = true;
        }
        result
    }
}

impl Frames<'_> {
    fn step(&mut self) -> Option<Result<Frame, SnapshotError>> {
        if self.rest.is_empty() {
            return Some(Err(SnapshotError::Invalid("no end frame")));
        }
        let (frame, rest) = match postcard::take_from_bytes::<Frame>(self.rest) {
            Ok(x) => x,
            Err(e) => return Some(Err(e.into())),
        };
        self.rest = rest;
        match check_frame(&mut self.counts, frame) {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) if self.rest.is_empty() => None,
            Ok(None) => Some(Err(SnapshotError::Invalid("frames after the end frame"))),
            Err(e) => Some(Err(e)),
        }
    }
}

/// Checks one decoded frame after the meta against the structure (module doc), adding its
/// entries to `counts`: `Ok(None)` for a valid end frame.
fn check_frame(counts: &mut FrameCounts, frame: Frame) -> Result<Option<Frame>, SnapshotError> {
    let c = counts;
    let len = match &frame {
        Frame::Meta(_) => return Err(SnapshotError::Invalid("a second meta frame")),
        Frame::End(end) => {
            if *end != *c {
                return Err(SnapshotError::Invalid(
                    "the end frame's counts do not add up",
                ));
            }
            return Ok(None);
        }
        Frame::Calls(v) => {
            c.calls += v.len() as u64;
            v.len()
        }
        Frame::Tombstones(v) => {
            c.tombstones += v.len() as u64;
            v.len()
        }
        Frame::Registrations(v) => {
            validate_aors(v)?;
            c.aors += v.len() as u64;
            c.contacts += v.iter().map(|a| a.contacts.len() as u64).sum::<u64>();
            v.len()
        }
        Frame::Owners(names) => {
            validate_owner_names(names)?;
            names.len()
        }
        Frame::CallOwners(v) => v.len(),
        Frame::ContactOwners(v) => v.len(),
    };
    if len > FRAME_ENTRIES_MAX {
        return Err(SnapshotError::Invalid("a frame with too many entries"));
    }
    Ok(Some(frame))
}

/// Bytes read from the file at a time while streaming (more when a frame is larger).
const READ_CHUNK: usize = 256 * 1024;

/// A snapshot file opened for streaming ([`open_reader`]).
pub enum OpenedReader<R> {
    /// Versions 1 and 2: one body, read and decoded whole (only older agents wrote them).
    Whole(Box<Snapshot>),
    /// Versions 3 and 4: the meta and a reader of the entry frames after it.
    Frames(SnapshotMeta, Box<FrameReader<R>>),
}

/// The entry frames of a version-3/4 snapshot read from a file, one frame in memory at a
/// time, every byte hashed on the way: [`FrameReader::next_frame`] returns `Ok(None)` after
/// the end frame once the whole body matched the trailer's hash. Errors are those of
/// [`Frames`]; a body whose hash does not match is [`SnapshotError::ChecksumMismatch`],
/// whatever else is wrong with it (as [`open`] reports it).
pub struct FrameReader<R> {
    /// The body after the header, up to the trailer.
    input: io::Take<R>,
    hasher: blake3::Hasher,
    hash: [u8; 32],
    buf: Vec<u8>,
    start: usize,
    counts: FrameCounts,
    done: bool,
}

impl<R: io::Read> FrameReader<R> {
    /// Reads more of the body into `buf`; `false` at its end.
    fn fill(&mut self) -> Result<bool, SnapshotError> {
        self.buf.drain(..self.start);
        self.start = 0;
        let want = READ_CHUNK.max(self.buf.len());
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let mut got = 0;
        let result = loop {
            match self.input.read(&mut self.buf[old + got..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    got += n;
                    if got == want {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.truncate(old + got);
        self.hasher.update(&self.buf[old..]);
        result.map_err(SnapshotError::Io)?;
        Ok(got > 0)
    }

    /// The rest of the body hashed: a mismatch replaces `error` (the bytes are not what the
    /// writer wrote, so what they decode to says nothing).
    fn fail(&mut self, error: SnapshotError) -> SnapshotError {
        self.done = true;
        let mut sink = [0u8; 64 * 1024];
        loop {
            match self.input.read(&mut sink) {
                Ok(0) => break,
                Ok(n) => {
                    self.hasher.update(&sink[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return SnapshotError::Io(e),
            }
        }
        if self.hasher.finalize().as_bytes() != &self.hash {
            return SnapshotError::ChecksumMismatch;
        }
        error
    }

    /// The next decoded frame (Meta first, from [`open_reader`]).
    fn decode_next(&mut self) -> Result<Option<Frame>, SnapshotError> {
        loop {
            let pending = &self.buf[self.start..];
            if !pending.is_empty() {
                match postcard::take_from_bytes::<Frame>(pending) {
                    Ok((frame, rest)) => {
                        self.start = self.buf.len() - rest.len();
                        return Ok(Some(frame));
                    }
                    Err(postcard::Error::DeserializeUnexpectedEnd) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !self.fill()? {
                return if self.buf.len() > self.start {
                    Err(postcard::Error::DeserializeUnexpectedEnd.into())
                } else {
                    Ok(None)
                };
            }
        }
    }

    /// The file, to read it again.
    pub fn into_inner(self) -> R {
        self.input.into_inner()
    }

    /// The next entry frame, `Ok(None)` once the end frame is read and the body's hash
    /// matched. After an error, `Ok(None)`.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let frame = match self.decode_next() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(self.fail(SnapshotError::Invalid("no end frame"))),
            Err(e) => return Err(self.fail(e)),
        };
        match check_frame(&mut self.counts, frame) {
            Ok(Some(frame)) => Ok(Some(frame)),
            Ok(None) => {
                if self.start < self.buf.len() || self.fill()? {
                    return Err(self.fail(SnapshotError::Invalid("frames after the end frame")));
                }
                self.done = true;
                if self.hasher.finalize().as_bytes() != &self.hash {
                    return Err(SnapshotError::ChecksumMismatch);
                }
                Ok(None)
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// [`open`] for a file: checks the header and the trailer, and opens the frames for reading
/// one at a time (the body's hash is checked as it streams, see [`FrameReader`]). Memory is
/// one frame, whatever the file's size. Never panics.
pub fn open_reader<R: io::Read + io::Seek>(mut input: R) -> Result<OpenedReader<R>, SnapshotError> {
    let file_len = input.seek(io::SeekFrom::End(0))?;
    input.seek(io::SeekFrom::Start(0))?;
    let mut header = Vec::with_capacity(SNAPSHOT_V3_HEADER_LEN);
    (&mut input)
        .take(SNAPSHOT_V3_HEADER_LEN as u64)
        .read_to_end(&mut header)?;
    let present = header.len().min(SNAPSHOT_MAGIC.len());
    if header[..present] != SNAPSHOT_MAGIC[..present] {
        return Err(SnapshotError::BadMagic);
    }
    if header.len() < SNAPSHOT_V3_HEADER_LEN {
        return Err(SnapshotError::Truncated {
            expected_len: SNAPSHOT_V3_HEADER_LEN as u64,
            actual_len: file_len,
        });
    }
    let version = u16::from_le_bytes([header[6], header[7]]);
    match version {
        1 | 2 => {
            let mut bytes = header;
            input.read_to_end(&mut bytes)?;
            decode_whole(&bytes, version).map(|s| OpenedReader::Whole(Box::new(s)))
        }
        3 | SNAPSHOT_FORMAT_VERSION => {
            let unterminated = SnapshotError::Unterminated {
                actual_len: file_len,
            };
            let Some(body_end) = file_len.checked_sub(SNAPSHOT_TRAILER_LEN as u64) else {
                return Err(unterminated);
            };
            if body_end < SNAPSHOT_V3_HEADER_LEN as u64 {
                return Err(unterminated);
            }
            input.seek(io::SeekFrom::Start(body_end))?;
            let mut trailer = [0u8; SNAPSHOT_TRAILER_LEN];
            input.read_exact(&mut trailer)?;
            let mut len = [0u8; 8];
            len.copy_from_slice(&trailer[8..16]);
            if trailer[..6] != SNAPSHOT_END_MAGIC
                || trailer[6..8] != [0, 0]
                || u64::from_le_bytes(len) != body_end
            {
                return Err(unterminated);
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&trailer[16..48]);
            input.seek(io::SeekFrom::Start(SNAPSHOT_V3_HEADER_LEN as u64))?;
            let mut hasher = blake3::Hasher::new();
            hasher.update(&header);
            let mut reader = FrameReader {
                input: input.take(body_end - SNAPSHOT_V3_HEADER_LEN as u64),
                hasher,
                hash,
                buf: Vec::new(),
                start: 0,
                counts: FrameCounts::default(),
                done: false,
            };
            let meta = match reader.decode_next() {
                Ok(Some(Frame::Meta(meta))) => match meta.validate() {
                    Ok(()) => meta,
                    Err(e) => return Err(reader.fail(e)),
                },
                Ok(_) => {
                    return Err(
                        reader.fail(SnapshotError::Invalid("the first frame is not the meta"))
                    );
                }
                Err(e) => return Err(reader.fail(e)),
            };
            Ok(OpenedReader::Frames(meta, Box::new(reader)))
        }
        other => Err(SnapshotError::UnsupportedVersion(other)),
    }
}

/// Checks the header, length and hash, and opens the body. Never panics.
pub fn open(bytes: &[u8]) -> Result<Opened<'_>, SnapshotError> {
    let magic_len = SNAPSHOT_MAGIC.len();
    let present = bytes.len().min(magic_len);
    if bytes[..present] != SNAPSHOT_MAGIC[..present] {
        return Err(SnapshotError::BadMagic);
    }
    if bytes.len() < magic_len + 2 {
        return Err(SnapshotError::Truncated {
            expected_len: SNAPSHOT_V3_HEADER_LEN as u64,
            actual_len: bytes.len() as u64,
        });
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    match version {
        1 | 2 => decode_whole(bytes, version).map(Opened::Whole),
        3 | SNAPSHOT_FORMAT_VERSION => {
            let unterminated = SnapshotError::Unterminated {
                actual_len: bytes.len() as u64,
            };
            let Some(body_end) = bytes.len().checked_sub(SNAPSHOT_TRAILER_LEN) else {
                return Err(unterminated);
            };
            if body_end < SNAPSHOT_V3_HEADER_LEN {
                return Err(unterminated);
            }
            let (body, trailer) = bytes.split_at(body_end);
            let mut len = [0u8; 8];
            len.copy_from_slice(&trailer[8..16]);
            if trailer[..6] != SNAPSHOT_END_MAGIC
                || trailer[6..8] != [0, 0]
                || u64::from_le_bytes(len) != body_end as u64
            {
                return Err(unterminated);
            }
            if blake3::hash(body).as_bytes() != &trailer[16..48] {
                return Err(SnapshotError::ChecksumMismatch);
            }
            let frames = &body[SNAPSHOT_V3_HEADER_LEN..];
            let (first, rest) = postcard::take_from_bytes::<Frame>(frames)?;
            let Frame::Meta(meta) = first else {
                return Err(SnapshotError::Invalid("the first frame is not the meta"));
            };
            meta.validate()?;
            Ok(Opened::Frames(
                meta,
                Frames {
                    rest,
                    counts: FrameCounts::default(),
                    done: false,
                },
            ))
        }
        other => Err(SnapshotError::UnsupportedVersion(other)),
    }
}

/// Decodes bytes made by [`encode`] (or by an older version). Never panics; see the module
/// doc on hostile input.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    match open(bytes)? {
        Opened::Whole(snapshot) => Ok(snapshot),
        Opened::Frames(meta, frames) => {
            let mut s = Snapshot {
                taken_at: meta.taken_at,
                fingerprint_key_id: meta.fingerprint_key_id,
                subscribers: meta.subscribers,
                subscribers_reported_at: meta.subscribers_reported_at,
                peaks: meta.peaks,
                wall_at: meta.wall_at,
                journal_segment: meta.journal_segment,
                ..Snapshot::default()
            };
            for frame in frames {
                match frame? {
                    Frame::Calls(v) => s.calls.extend(v),
                    Frame::Tombstones(v) => s.tombstones.extend(v),
                    Frame::Registrations(v) => s.registrations.extend(v),
                    Frame::Owners(names) => s.owners.names = names,
                    Frame::CallOwners(v) => s.owners.calls.extend(v),
                    Frame::ContactOwners(v) => s.owners.contacts.extend(v),
                    Frame::Meta(_) | Frame::End(_) => {
                        unreachable!("Frames yields entry frames only")
                    }
                }
            }
            debug_assert!(s.validate().is_ok());
            Ok(s)
        }
    }
}

/// Versions 1 and 2: header with length and hash, then one postcard body.
fn decode_whole(bytes: &[u8], version: u16) -> Result<Snapshot, SnapshotError> {
    let truncated = |expected_len: usize| SnapshotError::Truncated {
        expected_len: expected_len as u64,
        actual_len: bytes.len() as u64,
    };
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

    /// The sample with enough calls for three frames (two full, one of 3).
    fn sample_over_three_frames() -> Snapshot {
        let mut s = sample();
        s.calls = (0..FRAME_ENTRIES_MAX as u32 * 2 + 3)
            .map(|i| CallRecord {
                fingerprint: [(i % 251) as u8; 16],
                deadline_s: i,
                started_s: i,
                emergency: i % 7 == 0,
            })
            .collect();
        s
    }

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
            owners: SnapshotOwners {
                names: vec!["kam1".into(), "hep-7".into()],
                calls: vec![CallOwner {
                    fingerprint: [1; 16],
                    owner: 2,
                }],
                contacts: vec![ContactOwner {
                    aor: [2; 16],
                    contact_hash: 8,
                    owner: 1,
                }],
            },
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
    fn a_version_3_file_restores_with_no_owners() {
        let s = sample();
        let meta = SnapshotMeta {
            taken_at: s.taken_at,
            fingerprint_key_id: s.fingerprint_key_id,
            subscribers: s.subscribers,
            subscribers_reported_at: s.subscribers_reported_at,
            peaks: s.peaks.clone(),
            wall_at: s.wall_at,
            journal_segment: s.journal_segment,
        };
        let mut frames = postcard::to_stdvec(&FrameOut::Meta(&meta)).unwrap();
        for frame in [
            FrameOut::Calls(&s.calls),
            FrameOut::Tombstones(&s.tombstones),
            FrameOut::Registrations(&s.registrations),
            FrameOut::End(FrameCounts {
                calls: 1,
                tombstones: 1,
                aors: 1,
                contacts: 2,
            }),
        ] {
            frames.extend(postcard::to_stdvec(&frame).unwrap());
        }
        let mut v3 = frame_frames(&frames);
        v3[6..8].copy_from_slice(&3u16.to_le_bytes());
        // The trailer hashes the version too: rebuild it.
        let body_end = v3.len() - SNAPSHOT_TRAILER_LEN;
        let hash = blake3::hash(&v3[..body_end]);
        v3[body_end + 16..].copy_from_slice(hash.as_bytes());
        let decoded = decode(&v3).unwrap();
        assert_eq!(decoded.owners, SnapshotOwners::default());
        assert_eq!(decoded.calls, s.calls);
        assert_eq!(decode(&encode(&s)).unwrap().owners, s.owners);
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
    fn every_truncation_is_reported_as_cut_short() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            match decode(&bytes[..len]) {
                Err(SnapshotError::Truncated { .. } | SnapshotError::Unterminated { .. }) => {}
                other => panic!("length {len}: {other:?}"),
            }
        }
        let v2 = frame_body(&postcard::to_stdvec(&sample()).unwrap());
        // Version 2 had no owners.
        let without_owners = Snapshot {
            owners: SnapshotOwners::default(),
            ..sample()
        };
        assert_eq!(decode(&v2).ok(), Some(without_owners));
        for len in 0..v2.len() {
            match decode(&v2[..len]) {
                Err(SnapshotError::Truncated { .. }) => {}
                other => panic!("version 2, length {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert!(matches!(
            decode(&bytes),
            Err(SnapshotError::Unterminated { .. })
        ));
        let mut v2 = frame_body(&postcard::to_stdvec(&sample()).unwrap());
        v2.push(0);
        assert!(matches!(decode(&v2), Err(SnapshotError::TrailingBytes(1))));
    }

    #[test]
    fn large_snapshots_are_split_into_bounded_frames() {
        let s = sample_over_three_frames();
        let bytes = encode(&s);
        let Ok(Opened::Frames(meta, frames)) = open(&bytes) else {
            panic!("a version-3 snapshot")
        };
        assert_eq!(meta.journal_segment, s.journal_segment);
        let sizes: Vec<usize> = frames
            .filter_map(|f| match f.unwrap() {
                Frame::Calls(v) => Some(v.len()),
                Frame::Tombstones(v) => Some(v.len() + 1_000_000),
                Frame::Registrations(v) => Some(v.len() + 2_000_000),
                Frame::Owners(_) | Frame::CallOwners(_) | Frame::ContactOwners(_) => None,
                Frame::Meta(_) | Frame::End(_) => unreachable!(),
            })
            .collect();
        assert_eq!(
            sizes,
            vec![
                FRAME_ENTRIES_MAX,
                FRAME_ENTRIES_MAX,
                3,
                1_000_001,
                2_000_001
            ]
        );
        assert_eq!(decode(&bytes).ok(), Some(s));
    }

    /// Every frame of `bytes` read through [`open_reader`], as [`decode`] reads them.
    fn decode_streamed(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let (meta, mut frames) = match open_reader(io::Cursor::new(bytes))? {
            OpenedReader::Whole(s) => return Ok(*s),
            OpenedReader::Frames(meta, frames) => (meta, frames),
        };
        let mut s = Snapshot {
            taken_at: meta.taken_at,
            fingerprint_key_id: meta.fingerprint_key_id,
            subscribers: meta.subscribers,
            subscribers_reported_at: meta.subscribers_reported_at,
            peaks: meta.peaks,
            wall_at: meta.wall_at,
            journal_segment: meta.journal_segment,
            ..Snapshot::default()
        };
        while let Some(frame) = frames.next_frame()? {
            match frame {
                Frame::Calls(v) => s.calls.extend(v),
                Frame::Tombstones(v) => s.tombstones.extend(v),
                Frame::Registrations(v) => s.registrations.extend(v),
                Frame::Owners(names) => s.owners.names = names,
                Frame::CallOwners(v) => s.owners.calls.extend(v),
                Frame::ContactOwners(v) => s.owners.contacts.extend(v),
                Frame::Meta(_) | Frame::End(_) => unreachable!(),
            }
        }
        Ok(s)
    }

    /// The error's kind, to compare the two readers.
    fn kind(r: &Result<Snapshot, SnapshotError>) -> String {
        match r {
            Ok(s) => format!("ok {}", s.calls.len()),
            Err(SnapshotError::Postcard(_)) => "postcard".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_streamed_reader_agrees_with_decode_on_every_cut_and_flip() {
        let v2 = frame_body(&postcard::to_stdvec(&sample()).unwrap());
        for bytes in [encode(&sample()), encode(&Snapshot::default()), v2] {
            assert_eq!(kind(&decode_streamed(&bytes)), kind(&decode(&bytes)));
            assert_eq!(decode_streamed(&bytes).unwrap(), decode(&bytes).unwrap());
            for len in 0..bytes.len() {
                let cut = &bytes[..len];
                assert_eq!(kind(&decode_streamed(cut)), kind(&decode(cut)), "cut {len}");
            }
            for i in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[i] ^= 0x10;
                assert_eq!(
                    kind(&decode_streamed(&flipped)),
                    kind(&decode(&flipped)),
                    "byte {i}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(kind(&decode_streamed(&longer)), kind(&decode(&longer)));
        }
    }

    #[test]
    fn the_streamed_reader_reads_frames_larger_than_its_chunk() {
        let s = sample_over_three_frames();
        let bytes = encode(&s);
        assert!(bytes.len() > 4 * READ_CHUNK);
        assert_eq!(decode_streamed(&bytes).ok(), Some(s));
        // A hash mismatch is reported as such even where the frames break too.
        let mut bad = bytes.clone();
        bad[SNAPSHOT_V3_HEADER_LEN + 1] ^= 0xff;
        assert!(matches!(
            decode_streamed(&bad),
            Err(SnapshotError::ChecksumMismatch)
        ));
        // Structural checks still apply, past a valid hash.
        let structural = [
            frames(&[Frame::Calls(Vec::new())]),
            frames(&[Frame::Meta(SnapshotMeta::default())]),
            frame_frames(&[0xff; 40]),
        ];
        for bad in structural {
            assert!(matches!(
                decode_streamed(&bad),
                Err(SnapshotError::Invalid(_) | SnapshotError::Postcard(_))
            ));
        }
    }

    /// Encodes frames as a hostile writer would, past the hash.
    fn frames(frames: &[Frame]) -> Vec<u8> {
        let mut body = Vec::new();
        for f in frames {
            body = postcard::to_extend(f, body).unwrap();
        }
        frame_frames(&body)
    }

    #[test]
    fn frames_that_break_the_structure_are_refused() {
        let meta = Frame::Meta(SnapshotMeta::default());
        let call = CallRecord {
            fingerprint: [1; 16],
            deadline_s: 9,
            started_s: 1,
            emergency: false,
        };
        let end = |calls| {
            Frame::End(FrameCounts {
                calls,
                ..FrameCounts::default()
            })
        };
        let good = frames(&[meta.clone(), Frame::Calls(vec![call]), end(1)]);
        assert_eq!(decode(&good).unwrap().calls, vec![call]);
        for (what, bad) in [
            ("no meta", frames(&[Frame::Calls(vec![call]), end(1)])),
            ("no end", frames(&[meta.clone(), Frame::Calls(vec![call])])),
            (
                "wrong count",
                frames(&[meta.clone(), Frame::Calls(vec![call]), end(2)]),
            ),
            (
                "after end",
                frames(&[meta.clone(), end(0), Frame::Calls(vec![call])]),
            ),
            ("two metas", frames(&[meta.clone(), meta.clone(), end(0)])),
            (
                "empty AoR",
                frames(&[
                    meta.clone(),
                    Frame::Registrations(vec![AorRecord {
                        fingerprint: [2; 16],
                        contacts: Vec::new(),
                    }]),
                    end(0),
                ]),
            ),
            (
                "frame too large",
                frames(&[
                    meta.clone(),
                    Frame::Calls(vec![call; FRAME_ENTRIES_MAX + 1]),
                    end(FRAME_ENTRIES_MAX as u64 + 1),
                ]),
            ),
            ("garbage", frame_frames(&[0xff; 40])),
        ] {
            assert!(
                matches!(
                    decode(&bad),
                    Err(SnapshotError::Invalid(_) | SnapshotError::Postcard(_))
                ),
                "{what}: {:?}",
                decode(&bad)
            );
        }
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
        let mut bytes = frame_body(&postcard::to_stdvec(&sample()).unwrap());
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
