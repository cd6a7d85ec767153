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
//!               record; bit 62 set: an events record), then
//!               for an events record, its entries (below);
//!               for a batch of datagrams, each datagram as length (u32 LE) + bytes;
//!               for corrections: owner name length (u8), owner name, then each correction
//!               as a tag (u8) and its fields (fingerprints 16 bytes, hashes u64 LE,
//!               times u32 LE unix seconds, flags u8 0/1):
//!                 1 remove call      call
//!                 2 add call         call, deadline, started, emergency
//!                 3 set emergency    call, emergency
//!                 4 remove contact   aor, contact hash
//!                 5 add contact      aor, contact hash, expires
//!                 6 set expiry       aor, contact hash, expires
//!
//! events record entries, each a tag (u8) and its fields (byte strings as length u16 LE +
//! bytes, integers LE, fingerprints 16 bytes):
//!   0x01 datagram                  (the entries up to the next datagram entry came in one
//!   0x02 datagram from   sender     datagram; `from`: it had a `seq` header of `sender`)
//!   0x10 call-start      call fingerprint          (17 bytes: the common case)
//!   0x11 call-start emergency   call fingerprint
//!   0x12 call-stop       call fingerprint
//!   0x13 call-refresh    call fingerprint
//!   0x20 reg             aor, contact, expires u32
//!   0x21 subscribers     count u64
//!   0x22 admit           call-id  (0x23: emergency); answered live, skipped by replay
//!   0x30 sync-begin      sender, epoch u64
//!   0x31 sync-call       flags u8 (bit 0 emergency, bit 1 has tag), call-id[, tag]
//!   0x32 sync-reg        aor, contact, expires u32
//!   0x33 sync-end        sender, epoch u64, calls u64, contacts u64
//! ```
//!
//! Version 2 added corrections records (reconciliation, [`crate::reconcile`]); version 3
//! added events records. Older segments still read.
//!
//! **Events records** are what the receive loop journals: one per receive batch (or per
//! [`EVENTS_RECORD_FLUSH_BYTES`] of it), the batch's events *decoded*, call events by the
//! fingerprint the call table keys them by (17 bytes instead of the 40 to 80 of a text or
//! binary event), everything else by its fields. The receive loop builds the record, appends
//! it, then applies the record itself ([`Record::entries`]), the same way replay does:
//! live apply and replay run one code path, at the recorded receive time. A record of
//! *datagrams* holds them exactly as received: the HEP collector journals the events its
//! tracker derived that way, as text lines, and replay decodes them, skipping `seq` headers
//! (the check was made when they arrived) and `admit` queries. A corrections record is what one
//! reconciliation step changed ([`crate::Correction`]), appended before it was applied under
//! the same lock as the batches; replay applies it with [`crate::Tables::apply_corrections`],
//! entries added taking the named owner.
//!
//! **Torn tails.** A crash or power loss can cut the last record. [`Records`] stops at the
//! first record whose length runs past the end or whose checksum fails and reports where
//! ([`RecordError`]); the reader drops the rest. In the last segment that is the expected
//! torn tail; anywhere else it is damage (a state reset, see the agent).
//!
//! **Keyed (version 4).** From version 4 the record header's 8 bytes after the length are
//! not an xxh3 checksum but a MAC: the first 8 bytes of BLAKE3 keyed with a secret derived
//! from the node key (issue 16), over the previous record's MAC, the length and the body.
//! The first record's "previous MAC" is the keyed BLAKE3 of the segment header, so every
//! record is bound to its segment (number, fingerprint key, clock) and to its place in the
//! chain: an edited, inserted, removed or reordered record fails its MAC, and so does every
//! later one ([`MacChain`]). The writer seals each record as it appends it; the reader
//! checks with the same key ([`records_keyed`]). A record that fails its MAC and ends exactly
//! at the end of the last segment is a torn tail (a power loss can leave a whole-length
//! record of garbage); anywhere else it is an edit or damage: a state reset
//! (`journal_unauthenticated`). Without the key a reader can parse but not authenticate
//! ([`records_unchecked`]). Readers refuse versions they do not know.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use tollgate_events::{CallRef, Event, SyncLine};

use crate::fingerprint::Fingerprint;
use crate::reconcile::Correction;
use crate::{CallOp, MonoTime};

/// First bytes of every segment.
pub const JOURNAL_MAGIC: [u8; 6] = *b"TGJRNL";
/// The format this module writes and reads.
pub const JOURNAL_FORMAT_VERSION: u16 = 4;
/// The first version whose records carry a MAC instead of a checksum.
pub const KEYED_FORMAT_VERSION: u16 = 4;
/// Length of a record's MAC (version 4) or checksum (earlier versions).
pub const RECORD_MAC_LEN: usize = 8;
/// Set in a record's time field: the record holds corrections, not datagrams.
const CORRECTIONS_FLAG: u64 = 1 << 63;
/// Set in a record's time field: the record holds decoded events (entries), not datagrams.
const EVENTS_FLAG: u64 = 1 << 62;
/// An events record under construction is appended (and applied) once its body passes this
/// many bytes, so a record stays far below [`RECORD_BODY_MAX`] whatever the batch holds (an
/// entry takes at most 3 times the bytes of the event it came from).
pub const EVENTS_RECORD_FLUSH_BYTES: usize = 1 << 20;
/// Segment header length.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Record header length (body length + MAC, or checksum before version 4).
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
    /// A keyed record whose MAC does not match (edited, damaged, or written with another
    /// node key); `last`: it ends exactly where the bytes end (a torn tail looks the same).
    #[error("record at byte {offset} fails its MAC (edited or damaged)")]
    Unauthenticated { offset: usize, last: bool },
}

/// The MAC chain of one segment (module doc): the key and the MAC of the record before.
#[derive(Clone)]
pub struct MacChain {
    key: [u8; 32],
    prev: [u8; RECORD_MAC_LEN],
}

impl std::fmt::Debug for MacChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacChain").finish_non_exhaustive()
    }
}

impl MacChain {
    /// The chain of the segment whose encoded header is `header`.
    pub fn new(key: &[u8; 32], header: &[u8; SEGMENT_HEADER_LEN]) -> Self {
        let mut prev = [0u8; RECORD_MAC_LEN];
        prev.copy_from_slice(&blake3::keyed_hash(key, header).as_bytes()[..RECORD_MAC_LEN]);
        MacChain { key: *key, prev }
    }

    fn mac(&self, len: [u8; 4], body: &[u8]) -> [u8; RECORD_MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.prev);
        h.update(&len);
        h.update(body);
        let mut out = [0u8; RECORD_MAC_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..RECORD_MAC_LEN]);
        out
    }

    /// The header of `record` (as [`RecordBuilder::finish`] made it) with its MAC in place
    /// of the checksum, and the chain after it: the writer keeps the chain only once the
    /// record is written.
    pub fn seal(&self, record: &[u8]) -> ([u8; RECORD_HEADER_LEN], MacChain) {
        debug_assert!(record.len() >= RECORD_HEADER_LEN);
        let mut header = [0u8; RECORD_HEADER_LEN];
        header.copy_from_slice(&record[..RECORD_HEADER_LEN]);
        let mac = self.mac(
            [header[0], header[1], header[2], header[3]],
            &record[RECORD_HEADER_LEN..],
        );
        header[4..].copy_from_slice(&mac);
        (
            header,
            MacChain {
                key: self.key,
                prev: mac,
            },
        )
    }
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

    /// The format version of a segment whose header [`decode`](Self::decode)s.
    pub fn version(bytes: &[u8]) -> Option<u16> {
        Some(u16::from_le_bytes([*bytes.get(6)?, *bytes.get(7)?]))
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
        if !(1..=JOURNAL_FORMAT_VERSION).contains(&version) {
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

    /// Starts an events record (module doc) received at `now`: then
    /// [`push_datagram`](Self::push_datagram), [`push_call`](Self::push_call) and
    /// [`push_event`](Self::push_event), and [`finish`](Self::finish).
    pub fn begin_events(&mut self, now: MonoTime) {
        debug_assert!(now.unix_ms() & (CORRECTIONS_FLAG | EVENTS_FLAG) == 0);
        self.buf.clear();
        self.datagrams = 0;
        self.buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        self.buf
            .extend_from_slice(&(now.unix_ms() | EVENTS_FLAG).to_le_bytes());
    }

    /// The entries that follow came in one datagram, with a `seq` header of `sender`.
    #[inline]
    pub fn push_datagram(&mut self, sender: Option<&[u8]>) {
        match sender {
            None => self.buf.push(ENTRY_DATAGRAM),
            Some(sender) => {
                self.buf.push(ENTRY_DATAGRAM_FROM);
                put_bytes(&mut self.buf, sender);
            }
        }
        self.datagrams += 1;
    }

    /// A call event, by the fingerprint the call table keys it by.
    #[inline]
    pub fn push_call(&mut self, op: CallOp, call: Fingerprint) {
        let tag = match op {
            CallOp::Start { emergency: false } => ENTRY_CALL_START,
            CallOp::Start { emergency: true } => ENTRY_CALL_START_EMERGENCY,
            CallOp::Stop => ENTRY_CALL_STOP,
            CallOp::Refresh => ENTRY_CALL_REFRESH,
        };
        let mut entry = [0u8; 17];
        entry[0] = tag;
        entry[1..].copy_from_slice(&call.to_bytes());
        self.buf.extend_from_slice(&entry);
    }

    /// Any event but a call event (those go by fingerprint, [`push_call`](Self::push_call)),
    /// by its fields. Returns `false`, writing nothing, for a call event or a field longer
    /// than 65 535 bytes (neither comes from a decoder).
    pub fn push_event(&mut self, event: &Event<'_>) -> bool {
        let fits = |fields: &[&[u8]]| fields.iter().all(|f| f.len() <= usize::from(u16::MAX));
        let out = &mut self.buf;
        match *event {
            Event::CallStart { .. } | Event::CallStop { .. } | Event::CallRefresh { .. } => {
                return false;
            }
            Event::Register {
                aor,
                contact,
                expires_s,
            }
            | Event::Sync(SyncLine::Reg {
                aor,
                contact,
                expires_s,
            }) => {
                if !fits(&[aor, contact]) {
                    return false;
                }
                out.push(if matches!(event, Event::Register { .. }) {
                    ENTRY_REG
                } else {
                    ENTRY_SYNC_REG
                });
                put_bytes(out, aor);
                put_bytes(out, contact);
                out.extend_from_slice(&expires_s.to_le_bytes());
            }
            Event::Subscribers { count } => {
                out.push(ENTRY_SUBSCRIBERS);
                out.extend_from_slice(&count.to_le_bytes());
            }
            Event::Admit { call_id, emergency } => {
                if !fits(&[call_id]) {
                    return false;
                }
                out.push(if emergency {
                    ENTRY_ADMIT_EMERGENCY
                } else {
                    ENTRY_ADMIT
                });
                put_bytes(out, call_id);
            }
            Event::Sync(SyncLine::Begin { sender, epoch }) => {
                if !fits(&[sender]) {
                    return false;
                }
                out.push(ENTRY_SYNC_BEGIN);
                put_bytes(out, sender);
                out.extend_from_slice(&epoch.to_le_bytes());
            }
            Event::Sync(SyncLine::Call { call, emergency }) => {
                let tag = call.from_tag.unwrap_or_default();
                if !fits(&[call.call_id, tag]) {
                    return false;
                }
                out.push(ENTRY_SYNC_CALL);
                out.push(u8::from(emergency) | (u8::from(call.from_tag.is_some()) << 1));
                put_bytes(out, call.call_id);
                if let Some(tag) = call.from_tag {
                    put_bytes(out, tag);
                }
            }
            Event::Sync(SyncLine::End {
                sender,
                epoch,
                calls,
                contacts,
            }) => {
                if !fits(&[sender]) {
                    return false;
                }
                out.push(ENTRY_SYNC_END);
                put_bytes(out, sender);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&calls.to_le_bytes());
                out.extend_from_slice(&contacts.to_le_bytes());
            }
        }
        true
    }

    /// Any entry ([`Entry`]): what [`Entries`] reads back re-encodes to the same bytes.
    pub fn push_entry(&mut self, entry: &Entry<'_>) -> bool {
        match *entry {
            Entry::Datagram { sender } => self.push_datagram(sender),
            Entry::Call { op, call } => self.push_call(op, call),
            Entry::Event(event) => return self.push_event(&event),
        }
        true
    }

    /// Bytes of the record's body so far.
    pub fn body_len(&self) -> usize {
        self.buf.len().saturating_sub(RECORD_HEADER_LEN)
    }

    /// The entries of the events record being built (the receive loop applies them after
    /// appending the record; they are not checked again: this builder wrote them).
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            rest: self.buf.get(RECORD_HEADER_LEN + 8..).unwrap_or_default(),
        }
    }

    /// Datagrams pushed since [`begin`](Self::begin) or [`begin_events`](Self::begin_events).
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

const ENTRY_DATAGRAM: u8 = 0x01;
const ENTRY_DATAGRAM_FROM: u8 = 0x02;
const ENTRY_CALL_START: u8 = 0x10;
const ENTRY_CALL_START_EMERGENCY: u8 = 0x11;
const ENTRY_CALL_STOP: u8 = 0x12;
const ENTRY_CALL_REFRESH: u8 = 0x13;
const ENTRY_REG: u8 = 0x20;
const ENTRY_SUBSCRIBERS: u8 = 0x21;
const ENTRY_ADMIT: u8 = 0x22;
const ENTRY_ADMIT_EMERGENCY: u8 = 0x23;
const ENTRY_SYNC_BEGIN: u8 = 0x30;
const ENTRY_SYNC_CALL: u8 = 0x31;
const ENTRY_SYNC_REG: u8 = 0x32;
const ENTRY_SYNC_END: u8 = 0x33;

/// The call operation of tags `ENTRY_CALL_START + 0..=3`.
const CALL_OPS: [CallOp; 4] = [
    CallOp::Start { emergency: false },
    CallOp::Start { emergency: true },
    CallOp::Stop,
    CallOp::Refresh,
];

fn put_bytes(out: &mut Vec<u8>, field: &[u8]) {
    debug_assert!(field.len() <= usize::from(u16::MAX));
    out.extend_from_slice(&(field.len() as u16).to_le_bytes());
    out.extend_from_slice(field);
}

/// One entry of an events record (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// The entries up to the next `Datagram` came in one datagram, from the `seq` sender
    /// named (the owner of what it reports; `None`: no sequence header).
    Datagram { sender: Option<&'a [u8]> },
    /// A call event, by the call's fingerprint.
    Call { op: CallOp, call: Fingerprint },
    /// Any other event, by its fields: never a call event.
    Event(Event<'a>),
}

/// The entries of an events record, in order ([`Record::entries`],
/// [`RecordBuilder::entries`]). Stops at the end or at the first entry that does not parse
/// (a record that reads back whole has none: [`records`] checks).
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    #[inline]
    fn next(&mut self) -> Option<Entry<'a>> {
        let (&tag, rest) = self.rest.split_first()?;
        // The common case first: a call entry, a tag and a fingerprint.
        if tag & !3 == ENTRY_CALL_START
            && let Some((call, rest)) = rest.split_first_chunk::<16>()
        {
            self.rest = rest;
            return Some(Entry::Call {
                op: CALL_OPS[usize::from(tag & 3)],
                call: Fingerprint::from_bytes(*call),
            });
        }
        let mut cursor = Cursor(self.rest);
        let entry = decode_entry(&mut cursor);
        self.rest = if entry.is_some() { cursor.0 } else { &[] };
        entry
    }
}

#[inline]
fn decode_entry<'a>(c: &mut Cursor<'a>) -> Option<Entry<'a>> {
    let [tag] = c.take::<1>()?;
    let call = |c: &mut Cursor<'a>, op| Some(Entry::Call { op, call: c.fp()? });
    Some(match tag {
        ENTRY_CALL_START => return call(c, CallOp::Start { emergency: false }),
        ENTRY_CALL_STOP => return call(c, CallOp::Stop),
        ENTRY_CALL_START_EMERGENCY => return call(c, CallOp::Start { emergency: true }),
        ENTRY_CALL_REFRESH => return call(c, CallOp::Refresh),
        ENTRY_DATAGRAM => Entry::Datagram { sender: None },
        ENTRY_DATAGRAM_FROM => Entry::Datagram {
            sender: Some(c.bytes()?),
        },
        ENTRY_REG => Entry::Event(Event::Register {
            aor: c.bytes()?,
            contact: c.bytes()?,
            expires_s: c.u32()?,
        }),
        ENTRY_SUBSCRIBERS => Entry::Event(Event::Subscribers { count: c.u64()? }),
        ENTRY_ADMIT | ENTRY_ADMIT_EMERGENCY => Entry::Event(Event::Admit {
            call_id: c.bytes()?,
            emergency: tag == ENTRY_ADMIT_EMERGENCY,
        }),
        ENTRY_SYNC_BEGIN => Entry::Event(Event::Sync(SyncLine::Begin {
            sender: c.bytes()?,
            epoch: c.u64()?,
        })),
        ENTRY_SYNC_CALL => {
            let [flags] = c.take::<1>()?;
            if flags > 3 {
                return None;
            }
            let call_id = c.bytes()?;
            let from_tag = if flags & 2 != 0 {
                Some(c.bytes()?)
            } else {
                None
            };
            Entry::Event(Event::Sync(SyncLine::Call {
                call: CallRef { call_id, from_tag },
                emergency: flags & 1 != 0,
            }))
        }
        ENTRY_SYNC_REG => Entry::Event(Event::Sync(SyncLine::Reg {
            aor: c.bytes()?,
            contact: c.bytes()?,
            expires_s: c.u32()?,
        })),
        ENTRY_SYNC_END => Entry::Event(Event::Sync(SyncLine::End {
            sender: c.bytes()?,
            epoch: c.u64()?,
            calls: c.u64()?,
            contacts: c.u64()?,
        })),
        _ => return None,
    })
}

/// Whether an events payload parses whole.
fn entries_whole(body: &[u8]) -> bool {
    let mut cursor = Cursor(body);
    while !cursor.0.is_empty() {
        if decode_entry(&mut cursor).is_none() {
            return false;
        }
    }
    true
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
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(u16::from_le_bytes(self.take::<2>()?));
        let (field, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(field)
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

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Datagrams as received ([`Record::datagrams`]).
    Datagrams,
    /// A reconciliation step ([`Record::corrections`]).
    Corrections,
    /// Decoded events ([`Record::entries`]).
    Events,
}

/// One record read back.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub now: MonoTime,
    pub kind: RecordKind,
    body: &'a [u8],
}

impl<'a> Record<'a> {
    /// Whether this is a corrections record ([`Record::corrections`]) rather than a batch
    /// of datagrams.
    pub fn is_corrections(&self) -> bool {
        self.kind == RecordKind::Corrections
    }

    /// The corrections of a corrections record (`None` for a batch).
    pub fn corrections(&self) -> Option<CorrectionsRecord<'a>> {
        if !self.is_corrections() {
            return None;
        }
        parse_corrections(self.body)
    }

    /// The entries of an events record (none for another kind).
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            rest: if self.kind == RecordKind::Events {
                self.body
            } else {
                &[]
            },
        }
    }

    /// The record's datagrams, in order (none for another kind).
    pub fn datagrams(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = if self.kind == RecordKind::Datagrams {
            self.body
        } else {
            &[][..]
        };
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_at_checked(4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let (datagram, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(datagram)
        })
    }
}

/// How [`Records`] checks each record's 8 bytes after the length.
#[derive(Debug, Clone)]
enum Check {
    /// An xxh3 checksum (versions 1 to 3).
    Checksum,
    /// A MAC, checked along the chain (version 4).
    Mac(MacChain),
    /// A MAC, not checked (no key).
    Unchecked,
}

/// The records of a segment (after its header), stopping at the first bad one.
#[derive(Debug)]
pub struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    base: usize,
    check: Check,
    /// Set once a bad record stopped the iteration.
    pub error: Option<RecordError>,
}

/// Iterates the records in `bytes` (a segment of version 1 to 3 without its header,
/// checksummed). `base` is the byte offset of `bytes` in the file, for error messages.
pub fn records(bytes: &[u8], base: usize) -> Records<'_> {
    Records {
        bytes,
        offset: 0,
        base,
        check: Check::Checksum,
        error: None,
    }
}

/// Iterates the records of a keyed segment (version 4), checking each MAC along `chain`
/// ([`MacChain::new`] with the segment's header).
pub fn records_keyed(bytes: &[u8], base: usize, chain: MacChain) -> Records<'_> {
    Records {
        check: Check::Mac(chain),
        ..records(bytes, base)
    }
}

/// Iterates the records of a keyed segment without the key: parsed, not authenticated.
pub fn records_unchecked(bytes: &[u8], base: usize) -> Records<'_> {
    Records {
        check: Check::Unchecked,
        ..records(bytes, base)
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
        let mut next_chain = None;
        match &self.check {
            Check::Checksum => {
                if xxh3_64_with_seed(body, body_len as u64) != u64::from_le_bytes(sum) {
                    self.error = Some(RecordError::Checksum { offset: at });
                    return None;
                }
            }
            Check::Mac(chain) => {
                let len = [header[0], header[1], header[2], header[3]];
                let mac = chain.mac(len, body);
                if mac != sum {
                    self.error = Some(RecordError::Unauthenticated {
                        offset: at,
                        last: RECORD_HEADER_LEN + body_len == rest.len(),
                    });
                    return None;
                }
                next_chain = Some(MacChain {
                    key: chain.key,
                    prev: mac,
                });
            }
            Check::Unchecked => {}
        }
        let mut now = [0u8; 8];
        now.copy_from_slice(&body[..8]);
        let now = u64::from_le_bytes(now);
        let kind = match (now & CORRECTIONS_FLAG != 0, now & EVENTS_FLAG != 0) {
            (false, false) => Some(RecordKind::Datagrams),
            (true, false) => Some(RecordKind::Corrections),
            (false, true) => Some(RecordKind::Events),
            (true, true) => None,
        };
        let Some(kind) = kind else {
            self.error = Some(RecordError::Malformed { offset: at });
            return None;
        };
        let record = Record {
            now: MonoTime::from_unix_ms(now & !(CORRECTIONS_FLAG | EVENTS_FLAG)),
            kind,
            body: &body[8..],
        };
        let whole = match kind {
            // A corrections or events payload must parse exactly.
            RecordKind::Corrections => parse_corrections(record.body).is_some(),
            RecordKind::Events => entries_whole(record.body),
            RecordKind::Datagrams => {
                // The datagram lengths must cover the body exactly.
                let mut covered = 0usize;
                for d in record.datagrams() {
                    covered += 4 + d.len();
                }
                covered == record.body.len()
            }
        };
        if !whole {
            self.error = Some(RecordError::Malformed { offset: at });
            return None;
        }
        self.offset += RECORD_HEADER_LEN + body_len;
        if let Some(chain) = next_chain {
            self.check = Check::Mac(chain);
        }
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
    fn events_records_round_trip_every_entry() {
        let call = CallRef {
            call_id: b"c1@h",
            from_tag: Some(b"t"),
        };
        let entries = [
            Entry::Datagram { sender: None },
            Entry::Call {
                op: CallOp::Start { emergency: false },
                call: Fingerprint([1, 2]),
            },
            Entry::Call {
                op: CallOp::Start { emergency: true },
                call: Fingerprint([3, 4]),
            },
            Entry::Call {
                op: CallOp::Stop,
                call: Fingerprint([5, 6]),
            },
            Entry::Call {
                op: CallOp::Refresh,
                call: Fingerprint([7, u64::MAX]),
            },
            Entry::Datagram {
                sender: Some(b"kam1"),
            },
            Entry::Event(Event::Register {
                aor: b"sip:a@x",
                contact: b"sip:a@h",
                expires_s: 60,
            }),
            Entry::Event(Event::Subscribers { count: 1 << 40 }),
            Entry::Event(Event::Admit {
                call_id: b"c2",
                emergency: true,
            }),
            Entry::Event(Event::Admit {
                call_id: b"",
                emergency: false,
            }),
            Entry::Event(Event::Sync(SyncLine::Begin {
                sender: b"kam1",
                epoch: 9,
            })),
            Entry::Event(Event::Sync(SyncLine::Call {
                call,
                emergency: true,
            })),
            Entry::Event(Event::Sync(SyncLine::Call {
                call: CallRef {
                    call_id: b"c3",
                    from_tag: None,
                },
                emergency: false,
            })),
            Entry::Event(Event::Sync(SyncLine::Reg {
                aor: b"a",
                contact: b"c",
                expires_s: 1,
            })),
            Entry::Event(Event::Sync(SyncLine::End {
                sender: b"kam1",
                epoch: 9,
                calls: 2,
                contacts: 1,
            })),
        ];
        let mut b = RecordBuilder::default();
        b.begin_events(MonoTime::from_unix_ms(1_700_000_000_123));
        for e in &entries {
            assert!(b.push_entry(e), "{e:?}");
        }
        assert!(!b.push_event(&Event::CallStop { call }));
        assert_eq!(b.entries().collect::<Vec<_>>(), entries);
        assert_eq!(b.len(), 2);
        // 17 bytes for a call event.
        let mut one = RecordBuilder::default();
        one.begin_events(MonoTime::from_unix_ms(1));
        one.push_datagram(None);
        one.push_call(CallOp::Stop, Fingerprint([1, 2]));
        assert_eq!(one.body_len(), 8 + 1 + 17);
        let mut bytes = segment(&[(1, &[b"call-start a\n"])]);
        bytes.extend_from_slice(b.finish());
        let (_, rest) = SegmentHeader::decode(&bytes).unwrap();
        let mut it = records(rest, SEGMENT_HEADER_LEN);
        let got: Vec<Record<'_>> = it.by_ref().collect();
        assert_eq!(it.error, None);
        assert_eq!(
            got.iter().map(|r| r.kind).collect::<Vec<_>>(),
            [RecordKind::Datagrams, RecordKind::Events]
        );
        assert_eq!(got[1].now.unix_ms(), 1_700_000_000_123);
        assert_eq!(got[1].entries().collect::<Vec<_>>(), entries);
        assert_eq!(got[1].datagrams().count(), 0);
        assert_eq!(got[0].entries().count(), 0);
        assert!(got[1].corrections().is_none());
    }

    /// A keyed segment as the writer makes it: header, then records sealed along the chain.
    fn keyed_segment(key: &[u8; 32], bodies: &[&[u8]]) -> (Vec<u8>, [u8; SEGMENT_HEADER_LEN]) {
        let head = SegmentHeader {
            segment: 3,
            fingerprint_key_id: 42,
            clock_offset_ms: 0,
        }
        .encode();
        let mut out = head.to_vec();
        let mut chain = MacChain::new(key, &head);
        let mut b = RecordBuilder::default();
        for (i, text) in bodies.iter().enumerate() {
            b.begin(MonoTime::from_unix_ms(i as u64 + 1));
            b.push(text);
            let record = b.finish();
            let (header, next) = chain.seal(record);
            out.extend_from_slice(&header);
            out.extend_from_slice(&record[RECORD_HEADER_LEN..]);
            chain = next;
        }
        (out, head)
    }

    fn read_keyed(key: &[u8; 32], bytes: &[u8]) -> (usize, Option<RecordError>) {
        let head: [u8; SEGMENT_HEADER_LEN] = bytes[..SEGMENT_HEADER_LEN].try_into().unwrap();
        let mut it = records_keyed(
            &bytes[SEGMENT_HEADER_LEN..],
            SEGMENT_HEADER_LEN,
            MacChain::new(key, &head),
        );
        let n = it.by_ref().count();
        (n, it.error)
    }

    #[test]
    fn keyed_records_read_back_and_an_edit_a_swap_or_another_key_fails_the_mac() {
        let key = [4u8; 32];
        let bodies: [&[u8]; 3] = [b"call-start a\n", b"call-stop a\n", b"call-start b\n"];
        let (bytes, _) = keyed_segment(&key, &bodies);
        assert_eq!(read_keyed(&key, &bytes), (3, None));
        let first = SEGMENT_HEADER_LEN;
        let second = first + RECORD_HEADER_LEN + 8 + 4 + bodies[0].len();
        // One byte of the first record's text edited, its xxh3 recomputed would not help:
        // the MAC fails there, and it is not the tail.
        let mut edited = bytes.clone();
        edited[second - 3] ^= 0x01;
        assert_eq!(
            read_keyed(&key, &edited),
            (
                0,
                Some(RecordError::Unauthenticated {
                    offset: first,
                    last: false
                })
            )
        );
        // The first two records swapped: both are whole, the chain breaks.
        let len1 = second - first;
        let mut swapped = bytes[..first].to_vec();
        swapped.extend_from_slice(&bytes[second..second + (second - first) - 1]);
        let third = second + len1 - 1;
        swapped.extend_from_slice(&bytes[first..second]);
        swapped.extend_from_slice(&bytes[third..]);
        assert_eq!(swapped.len(), bytes.len());
        assert!(matches!(
            read_keyed(&key, &swapped),
            (0, Some(RecordError::Unauthenticated { .. }))
        ));
        // The segment header edited (another segment number): the chain's start moves.
        let mut renumbered = bytes.clone();
        renumbered[8] ^= 1;
        let sum = xxh3_64(&renumbered[..32]);
        renumbered[32..40].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(read_keyed(&key, &renumbered), (0, Some(_))));
        // Another node's key.
        assert!(matches!(
            read_keyed(&[5u8; 32], &bytes),
            (0, Some(RecordError::Unauthenticated { last: false, .. }))
        ));
        // The last record's bytes garbled (whole length): a torn tail, `last`.
        let mut torn = bytes.clone();
        let end = torn.len() - 2;
        torn[end] ^= 0xff;
        assert!(matches!(
            read_keyed(&key, &torn),
            (2, Some(RecordError::Unauthenticated { last: true, .. }))
        ));
        // Read without the key: parsed, not checked.
        let mut it = records_unchecked(&edited[first..], first);
        assert_eq!(it.by_ref().count(), 3);
    }

    #[test]
    fn a_bad_events_payload_is_malformed() {
        for payload in [
            &[0x10, 1, 2][..],       // a fingerprint cut short
            &[0x7f][..],             // unknown tag
            &[0x02, 5, 0, b'a'][..], // a sender longer than the payload
            &[0x31, 4, 0, 0][..],    // sync-call flags beyond bits 0 and 1
            &[0x21, 1, 2, 3][..],    // a count cut short
        ] {
            let mut body = (2u64 | EVENTS_FLAG).to_le_bytes().to_vec();
            body.extend_from_slice(payload);
            let bytes = frame_record_body(&body);
            let mut it = records(&bytes, 0);
            assert_eq!(it.by_ref().count(), 0, "{payload:?}");
            assert!(matches!(it.error, Some(RecordError::Malformed { .. })));
        }
        // Both kind flags at once.
        let body = (2u64 | EVENTS_FLAG | CORRECTIONS_FLAG).to_le_bytes();
        let bytes = frame_record_body(&body);
        let mut it = records(&bytes, 0);
        assert_eq!(it.by_ref().count(), 0);
        assert!(matches!(it.error, Some(RecordError::Malformed { .. })));
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
