//! The journal's on-disk format (sans-IO): what the agent appends before it applies a batch,
//! so a restart can replay everything applied since the last snapshot.
//!
//! A journal is a directory of segments, `<state_dir>/journal/<n:020>.journal`, numbered
//! from 1. A snapshot names the first segment it does **not** contain
//! ([`crate::Snapshot::journal_segment`]); at start the agent restores the snapshot and
//! replays every segment from that number on, in order.
//!
//! ```text
//! segment header (SEGMENT_HEADER_LEN = 40 bytes)
//!      0     6  magic "TGJRNL"
//!      6     2  format version, u16 LE (JOURNAL_FORMAT_VERSION)
//!      8     8  segment number, u64 LE
//!     16     8  fingerprint key id, u64 LE (replay refuses another key)
//!     24     8  clock offset: wall clock − tables clock at open, ms, i64 LE
//!     32     8  xxh3-64 of bytes 0..32
//! then records, each:
//!      0     4  body length, u32 LE
//!      4     8  xxh3-64 of the body, seeded with the body length
//!     12     …  body: receive time (tables clock, ms, u64 LE; bit 63 set: a corrections
//!               record), then for a batch each datagram as length (u32 LE) + bytes, or
//!               for corrections: owner name length (u8), owner name, then each correction
//!               as a tag (u8) and its fields (fingerprints 16 bytes, hashes u64 LE,
//!               times u32 LE unix seconds, flags u8 0/1):
//!                 1 remove call      call
//!                 2 add call         call, deadline, started, emergency
//!                 3 set emergency    call, emergency
//!                 4 remove contact   aor, contact hash
//!                 5 add contact      aor, contact hash, expires
//!                 6 set expiry       aor, contact hash, expires
//! ```
//!
//! Version 2 added corrections records (reconciliation, [`crate::reconcile`]); a version-1
//! segment has only batches and still reads.
//!
//! A record is one receive batch: the datagrams that passed the sequence check, exactly as
//! received (text, binary or OpenSIPS JSON), or events a HEP tracker derived, as text
//! lines. Replay decodes and applies them at the recorded time, skipping `seq` headers (the
//! check was made when they arrived) and `admit` queries. A corrections record is what one
//! reconciliation step changed ([`crate::Correction`]), appended before it was applied under
//! the same lock as the batches; replay applies it with [`crate::Tables::apply_corrections`],
//! entries added taking the named owner.
//!
//! **Torn tails.** A crash or power loss can cut the last record. [`Records`] stops at the
//! first record whose length runs past the end or whose checksum fails and reports where
//! ([`RecordError`]); the reader drops the rest. In the last segment that is the expected
//! torn tail; anywhere else it is damage (a state reset, see the agent).
//!
//! A keyed MAC (the ledger) can be added as a new format version; readers refuse versions
//! they do not know.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::MonoTime;
use crate::fingerprint::Fingerprint;
use crate::reconcile::Correction;

/// First bytes of every segment.
pub const JOURNAL_MAGIC: [u8; 6] = *b"TGJRNL";
/// The format this module writes and reads.
pub const JOURNAL_FORMAT_VERSION: u16 = 2;
/// Set in a record's time field: the record holds corrections, not datagrams.
const CORRECTIONS_FLAG: u64 = 1 << 63;
/// Segment header length.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Record header length (body length + checksum).
pub const RECORD_HEADER_LEN: usize = 12;
/// Largest record body accepted when reading (a batch of 1024 × 64 KiB datagrams fits).
pub const RECORD_BODY_MAX: usize = 1024 * 65_540 + 8;

/// A segment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: u64,
    pub fingerprint_key_id: u64,
    /// Wall clock minus tables clock when the segment was opened, in ms.
    pub clock_offset_ms: i64,
}

/// Why a segment or record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("segment header missing or cut short")]
    HeaderTruncated,
    #[error("not a journal segment (bad magic)")]
    BadMagic,
    #[error("unsupported journal format version {0}")]
    UnsupportedVersion(u16),
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    #[error("record at byte {offset} cut short")]
    Truncated { offset: usize },
    #[error("record at byte {offset} fails its checksum")]
    Checksum { offset: usize },
    #[error("record at byte {offset} is malformed")]
    Malformed { offset: usize },
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[..6].copy_from_slice(&JOURNAL_MAGIC);
        out[6..8].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.segment.to_le_bytes());
        out[16..24].copy_from_slice(&self.fingerprint_key_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.clock_offset_ms.to_le_bytes());
        let sum = xxh3_64(&out[..32]);
        out[32..40].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads a segment's header; returns it and the records that follow.
    pub fn decode(bytes: &[u8]) -> Result<(SegmentHeader, &[u8]), RecordError> {
        let present = bytes.len().min(JOURNAL_MAGIC.len());
        if bytes[..present] != JOURNAL_MAGIC[..present] {
            return Err(RecordError::BadMagic);
        }
        let Some((header, rest)) = bytes.split_at_checked(SEGMENT_HEADER_LEN) else {
            return Err(RecordError::HeaderTruncated);
        };
        let version = u16::from_le_bytes([header[6], header[7]]);
        if version != JOURNAL_FORMAT_VERSION && version != 1 {
            return Err(RecordError::UnsupportedVersion(version));
        }
        if xxh3_64(&header[..32]).to_le_bytes() != header[32..40] {
            return Err(RecordError::HeaderChecksum);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[i..i + 8]);
            b
        };
        Ok((
            SegmentHeader {
                segment: u64::from_le_bytes(u64_at(8)),
                fingerprint_key_id: u64::from_le_bytes(u64_at(16)),
                clock_offset_ms: i64::from_le_bytes(u64_at(24)),
            },
            rest,
        ))
    }
}

/// Builds one record in a reused buffer: [`begin`](Self::begin), [`push`](Self::push) each
/// datagram, then [`finish`](Self::finish) for the bytes to append.
#[derive(Debug, Default)]
pub struct RecordBuilder {
    buf: Vec<u8>,
    datagrams: usize,
}

impl RecordBuilder {
    pub fn begin(&mut self, now: MonoTime) {
        self.buf.clear();
        self.datagrams = 0;
        self.buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        self.buf.extend_from_slice(&now.unix_ms().to_le_bytes());
    }

    pub fn push(&mut self, datagram: &[u8]) {
        self.buf
            .extend_from_slice(&(datagram.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(datagram);
        self.datagrams += 1;
    }

    /// Datagrams pushed since [`begin`](Self::begin).
    pub fn len(&self) -> usize {
        self.datagrams
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams == 0
    }

    /// Builds a corrections record (then [`finish`](Self::finish) it): what one
    /// reconciliation step changed, entries added taking `owner` (at most 255 bytes; empty:
    /// no owner).
    pub fn corrections(&mut self, now: MonoTime, owner: &[u8], corrections: &[Correction]) {
        debug_assert!(now.unix_ms() & CORRECTIONS_FLAG == 0);
        debug_assert!(owner.len() <= u8::MAX as usize);
        let owner = &owner[..owner.len().min(u8::MAX as usize)];
        self.buf.clear();
        self.datagrams = 0;
        self.buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        self.buf
            .extend_from_slice(&(now.unix_ms() | CORRECTIONS_FLAG).to_le_bytes());
        self.buf.push(owner.len() as u8);
        self.buf.extend_from_slice(owner);
        for c in corrections {
            encode_correction(&mut self.buf, c);
        }
    }

    /// Fills in the header and returns the whole record.
    pub fn finish(&mut self) -> &[u8] {
        let body_len = self.buf.len() - RECORD_HEADER_LEN;
        let sum = xxh3_64_with_seed(&self.buf[RECORD_HEADER_LEN..], body_len as u64);
        self.buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        self.buf[4..12].copy_from_slice(&sum.to_le_bytes());
        &self.buf
    }
}

/// Puts a record header (length, checksum) in front of an arbitrary body, as a hostile or
/// buggy writer would: tests and the fuzz target use it to reach the body parser past the
/// checksum. [`RecordBuilder`] is the writer's way.
pub fn frame_record_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxh3_64_with_seed(body, body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

const TAG_REMOVE_CALL: u8 = 1;
const TAG_ADD_CALL: u8 = 2;
const TAG_SET_EMERGENCY: u8 = 3;
const TAG_REMOVE_CONTACT: u8 = 4;
const TAG_ADD_CONTACT: u8 = 5;
const TAG_SET_EXPIRY: u8 = 6;

fn encode_correction(out: &mut Vec<u8>, c: &Correction) {
    match *c {
        Correction::RemoveCall { call } => {
            out.push(TAG_REMOVE_CALL);
            out.extend_from_slice(&call.to_bytes());
        }
        Correction::AddCall {
            call,
            deadline_s,
            started_s,
            emergency,
        } => {
            out.push(TAG_ADD_CALL);
            out.extend_from_slice(&call.to_bytes());
            out.extend_from_slice(&deadline_s.to_le_bytes());
            out.extend_from_slice(&started_s.to_le_bytes());
            out.push(u8::from(emergency));
        }
        Correction::SetEmergency { call, emergency } => {
            out.push(TAG_SET_EMERGENCY);
            out.extend_from_slice(&call.to_bytes());
            out.push(u8::from(emergency));
        }
        Correction::RemoveContact { aor, contact_hash } => {
            out.push(TAG_REMOVE_CONTACT);
            out.extend_from_slice(&aor.to_bytes());
            out.extend_from_slice(&contact_hash.to_le_bytes());
        }
        Correction::AddContact {
            aor,
            contact_hash,
            expires_s,
        } => {
            out.push(TAG_ADD_CONTACT);
            out.extend_from_slice(&aor.to_bytes());
            out.extend_from_slice(&contact_hash.to_le_bytes());
            out.extend_from_slice(&expires_s.to_le_bytes());
        }
        Correction::SetExpiry {
            aor,
            contact_hash,
            expires_s,
        } => {
            out.push(TAG_SET_EXPIRY);
            out.extend_from_slice(&aor.to_bytes());
            out.extend_from_slice(&contact_hash.to_le_bytes());
            out.extend_from_slice(&expires_s.to_le_bytes());
        }
    }
}

/// Reads fixed-size fields off the front of a slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn fp(&mut self) -> Option<Fingerprint> {
        self.take::<16>().map(Fingerprint::from_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn flag(&mut self) -> Option<bool> {
        match self.take::<1>()? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

fn decode_correction(c: &mut Cursor<'_>) -> Option<Correction> {
    let [tag] = c.take::<1>()?;
    Some(match tag {
        TAG_REMOVE_CALL => Correction::RemoveCall { call: c.fp()? },
        TAG_ADD_CALL => Correction::AddCall {
            call: c.fp()?,
            deadline_s: c.u32()?,
            started_s: c.u32()?,
            emergency: c.flag()?,
        },
        TAG_SET_EMERGENCY => Correction::SetEmergency {
            call: c.fp()?,
            emergency: c.flag()?,
        },
        TAG_REMOVE_CONTACT => Correction::RemoveContact {
            aor: c.fp()?,
            contact_hash: c.u64()?,
        },
        TAG_ADD_CONTACT => Correction::AddContact {
            aor: c.fp()?,
            contact_hash: c.u64()?,
            expires_s: c.u32()?,
        },
        TAG_SET_EXPIRY => Correction::SetExpiry {
            aor: c.fp()?,
            contact_hash: c.u64()?,
            expires_s: c.u32()?,
        },
        _ => return None,
    })
}

/// A corrections record read back: the owner entries added take and the corrections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrectionsRecord<'a> {
    pub owner: &'a [u8],
    pub corrections: Vec<Correction>,
}

/// Parses a corrections payload; `None` unless it is whole and exact.
fn parse_corrections(body: &[u8]) -> Option<CorrectionsRecord<'_>> {
    let (&owner_len, rest) = body.split_first()?;
    let (owner, rest) = rest.split_at_checked(usize::from(owner_len))?;
    let mut cursor = Cursor(rest);
    let mut corrections = Vec::new();
    while !cursor.0.is_empty() {
        corrections.push(decode_correction(&mut cursor)?);
    }
    Some(CorrectionsRecord { owner, corrections })
}

/// One record read back.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub now: MonoTime,
    corrections: bool,
    body: &'a [u8],
}

impl<'a> Record<'a> {
    /// Whether this is a corrections record ([`Record::corrections`]) rather than a batch
    /// of datagrams.
    pub fn is_corrections(&self) -> bool {
        self.corrections
    }

    /// The corrections of a corrections record (`None` for a batch).
    pub fn corrections(&self) -> Option<CorrectionsRecord<'a>> {
        if !self.corrections {
            return None;
        }
        parse_corrections(self.body)
    }

    /// The record's datagrams, in order (none for a corrections record).
    pub fn datagrams(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = if self.corrections { &[][..] } else { self.body };
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_at_checked(4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let (datagram, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(datagram)
        })
    }
}

/// The records of a segment (after its header), stopping at the first bad one.
#[derive(Debug)]
pub struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    base: usize,
    /// Set once a bad record stopped the iteration.
    pub error: Option<RecordError>,
}

/// Iterates the records in `bytes` (a segment without its header). `base` is the byte
/// offset of `bytes` in the file, for error messages.
pub fn records(bytes: &[u8], base: usize) -> Records<'_> {
    Records {
        bytes,
        offset: 0,
        base,
        error: None,
    }
}

impl<'a> Records<'a> {
    /// Bytes of good records read so far (where a torn tail starts).
    pub fn good_len(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.error.is_some() || self.offset == self.bytes.len() {
            return None;
        }
        let at = self.base + self.offset;
        let rest = &self.bytes[self.offset..];
        let Some((header, after)) = rest.split_at_checked(RECORD_HEADER_LEN) else {
            self.error = Some(RecordError::Truncated { offset: at });
            return None;
        };
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if !(8..=RECORD_BODY_MAX).contains(&body_len) {
            self.error = Some(RecordError::Malformed { offset: at });
            return None;
        }
        let Some((body, _)) = after.split_at_checked(body_len) else {
            self.error = Some(RecordError::Truncated { offset: at });
            return None;
        };
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&header[4..12]);
        if xxh3_64_with_seed(body, body_len as u64) != u64::from_le_bytes(sum) {
            self.error = Some(RecordError::Checksum { offset: at });
            return None;
        }
        let mut now = [0u8; 8];
        now.copy_from_slice(&body[..8]);
        let now = u64::from_le_bytes(now);
        let record = Record {
            now: MonoTime::from_unix_ms(now & !CORRECTIONS_FLAG),
            corrections: now & CORRECTIONS_FLAG != 0,
            body: &body[8..],
        };
        let whole = if record.corrections {
            // A corrections payload must parse exactly.
            parse_corrections(record.body).is_some()
        } else {
            // The datagram lengths must cover the body exactly.
            let mut covered = 0usize;
            for d in record.datagrams() {
                covered += 4 + d.len();
            }
            covered == record.body.len()
        };
        if !whole {
            self.error = Some(RecordError::Malformed { offset: at });
            return None;
        }
        self.offset += RECORD_HEADER_LEN + body_len;
        Some(record)
    }
}

/// File name of segment `n`.
pub fn segment_file_name(n: u64) -> String {
    format!("{n:020}.journal")
}

/// The segment number of a file name made by [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".journal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &[&[u8]])]) -> Vec<u8> {
        let mut out = SegmentHeader {
            segment: 7,
            fingerprint_key_id: 42,
            clock_offset_ms: -5,
        }
        .encode()
        .to_vec();
        let mut b = RecordBuilder::default();
        for (now, datagrams) in records {
            b.begin(MonoTime::from_unix_ms(*now));
            for d in *datagrams {
                b.push(d);
            }
            out.extend_from_slice(b.finish());
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let bytes = segment(&[(1, &[b"call-start a\n", b""]), (2, &[b"call-stop a\n"])]);
        let (header, rest) = SegmentHeader::decode(&bytes).unwrap();
        assert_eq!(header.segment, 7);
        assert_eq!(header.fingerprint_key_id, 42);
        assert_eq!(header.clock_offset_ms, -5);
        let mut it = records(rest, SEGMENT_HEADER_LEN);
        let got: Vec<(u64, Vec<Vec<u8>>)> = it
            .by_ref()
            .map(|r| (r.now.unix_ms(), r.datagrams().map(<[u8]>::to_vec).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![b"call-start a\n".to_vec(), Vec::new()]),
                (2, vec![b"call-stop a\n".to_vec()])
            ]
        );
        assert_eq!(it.error, None);
        assert_eq!(it.good_len(), rest.len());
    }

    #[test]
    fn every_cut_keeps_the_whole_records_before_it() {
        let bytes = segment(&[(1, &[b"call-start a\n"]), (2, &[b"call-stop a\n"])]);
        let first_end = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN + 8 + 4 + 13;
        for len in SEGMENT_HEADER_LEN..bytes.len() {
            let (_, rest) = SegmentHeader::decode(&bytes[..len]).unwrap();
            let mut it = records(rest, SEGMENT_HEADER_LEN);
            let n = it.by_ref().count();
            let expected = usize::from(len >= first_end);
            assert_eq!(n, expected, "cut at {len}");
            assert_eq!(
                it.error.is_some(),
                len != SEGMENT_HEADER_LEN && len != first_end,
                "cut at {len}"
            );
        }
        for len in 0..SEGMENT_HEADER_LEN {
            assert!(SegmentHeader::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn a_flipped_bit_stops_the_reader_at_that_record() {
        let mut bytes = segment(&[(1, &[b"call-start a\n"]), (2, &[b"call-stop a\n"])]);
        let last = bytes.len() - 2;
        bytes[last] ^= 0x10;
        let (_, rest) = SegmentHeader::decode(&bytes).unwrap();
        let mut it = records(rest, SEGMENT_HEADER_LEN);
        assert_eq!(it.by_ref().count(), 1);
        assert!(matches!(it.error, Some(RecordError::Checksum { .. })));
        let mut header = segment(&[]);
        header[10] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&header).unwrap_err(),
            RecordError::HeaderChecksum
        );
    }

    #[test]
    fn corrections_records_round_trip_between_batches() {
        let fp = |n: u64| Fingerprint([n, n + 1]);
        let ops = vec![
            Correction::RemoveCall { call: fp(1) },
            Correction::AddCall {
                call: fp(2),
                deadline_s: 10,
                started_s: 5,
                emergency: true,
            },
            Correction::SetEmergency {
                call: fp(3),
                emergency: false,
            },
            Correction::RemoveContact {
                aor: fp(4),
                contact_hash: 77,
            },
            Correction::AddContact {
                aor: fp(5),
                contact_hash: 78,
                expires_s: 600,
            },
            Correction::SetExpiry {
                aor: fp(6),
                contact_hash: 79,
                expires_s: 601,
            },
        ];
        let mut bytes = segment(&[(1, &[b"call-start a\n"])]);
        let mut b = RecordBuilder::default();
        b.corrections(MonoTime::from_unix_ms(2), b"kam1", &ops);
        bytes.extend_from_slice(b.finish());
        b.corrections(MonoTime::from_unix_ms(3), b"", &[]);
        bytes.extend_from_slice(b.finish());
        b.begin(MonoTime::from_unix_ms(4));
        b.push(b"call-stop a\n");
        bytes.extend_from_slice(b.finish());
        let (_, rest) = SegmentHeader::decode(&bytes).unwrap();
        let mut it = records(rest, SEGMENT_HEADER_LEN);
        let got: Vec<Record<'_>> = it.by_ref().collect();
        assert_eq!(it.error, None);
        assert_eq!(got.len(), 4);
        assert!(!got[0].is_corrections() && got[0].corrections().is_none());
        let c = got[1].corrections().unwrap();
        assert_eq!(
            (got[1].now.unix_ms(), c.owner, &c.corrections),
            (2, &b"kam1"[..], &ops)
        );
        assert_eq!(got[1].datagrams().count(), 0);
        let c = got[2].corrections().unwrap();
        assert_eq!((c.owner, c.corrections.len()), (&b""[..], 0));
        assert_eq!(
            got[3].datagrams().collect::<Vec<_>>(),
            vec![&b"call-stop a\n"[..]]
        );
    }

    #[test]
    fn a_bad_corrections_payload_is_malformed() {
        for payload in [
            &[5u8, b'a'][..],  // owner longer than the payload
            &[0, 9][..],       // unknown tag
            &[0, 1, 1, 2][..], // a fingerprint cut short
            &[0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2][..], // a flag of 2
        ] {
            let mut body = (2u64 | CORRECTIONS_FLAG).to_le_bytes().to_vec();
            body.extend_from_slice(payload);
            let bytes = frame_record_body(&body);
            let mut it = records(&bytes, 0);
            assert_eq!(it.by_ref().count(), 0, "{payload:?}");
            assert!(matches!(it.error, Some(RecordError::Malformed { .. })));
        }
    }

    #[test]
    fn a_version_1_segment_still_reads() {
        let mut bytes = segment(&[(1, &[b"call-start a\n"])]);
        bytes[6..8].copy_from_slice(&1u16.to_le_bytes());
        let sum = xxh3_64(&bytes[..32]);
        bytes[32..40].copy_from_slice(&sum.to_le_bytes());
        let (_, rest) = SegmentHeader::decode(&bytes).unwrap();
        assert_eq!(records(rest, SEGMENT_HEADER_LEN).count(), 1);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(12), "00000000000000000012.journal");
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("12.journal"), None);
        assert_eq!(parse_segment_file_name(".x.tmp-1-2"), None);
    }
}
