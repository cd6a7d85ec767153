//! The binary batch format, specified byte by byte in `docs/protocol.md`.
//!
//! ```text
//! header (24 bytes, big-endian):
//!   FF 54 47 | version u8 = 1 | flags u8 (bit 0: has sequence) | reserved u8 = 0
//!   | count u16 | sender [u8; 8] | seq u64
//! then `count` records:
//!   len u16 (bytes after this field) | verb u8 | flags u8 (bit 0: emergency, bit 1: from-tag)
//!   | fields of the verb (keys as `len u8` + 1..=255 bytes, integers big-endian)
//! ```
//!
//! Decoding rules, in short:
//! - A bad header rejects the whole datagram with one error ([`Malformed::BadHeader`] or
//!   [`Malformed::BadVersion`]).
//! - Every record carries its length, so a record that is wrong inside (unknown verb, flag
//!   not allowed for its verb, empty key, field running past the record, bytes left over)
//!   costs only itself: the next record still decodes.
//! - A record running past the end of the datagram, or a datagram ending before `count`
//!   records, is [`Malformed::Truncated`] and ends the datagram; bytes after `count` records
//!   are [`Malformed::TrailingBytes`] (once, after the events).
//!
//! **Invariant:** the encoding is canonical: a datagram that decodes without error is
//! exactly what [`Encoder`] builds from its sequence header and events (the fuzz target
//! `binary_decoder` checks it).

use crate::{CallRef, Datagram, EncodeError, Event, Events, FIELD_LEN_MAX, Malformed, Seq, Verb};

/// First bytes of every binary datagram. The first byte (0xFF) never starts valid UTF-8,
/// so it can never be the start of a text datagram.
pub const MAGIC: [u8; 3] = [0xFF, b'T', b'G'];

/// The format version this crate reads and writes.
pub const VERSION: u8 = 1;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 24;

/// Header flag: the sender and seq fields hold a sequence header ([`Datagram::seq`]).
pub const FLAG_SEQ: u8 = 0x01;

/// Record flag: the call is an emergency call (`call-start`, `admit`).
pub const FLAG_EMERGENCY: u8 = 0x01;

/// Record flag: a from-tag key follows the call-id (`call-start`, `call-stop`, `call-refresh`).
pub const FLAG_TAG: u8 = 0x02;

/// Most records in one datagram (the header's `count` is a u16).
pub const RECORD_COUNT_MAX: usize = u16::MAX as usize;

/// Longest record, its length field included: a `reg` with two 255-byte keys.
pub const RECORD_LEN_MAX: usize = 2 + 1 + 1 + (1 + FIELD_LEN_MAX) * 2 + 4;

/// The verb code of a record.
pub const fn verb_code(verb: Verb) -> u8 {
    verb as u8 + 1
}

fn verb_from_code(code: u8) -> Option<Verb> {
    Verb::ALL
        .get(usize::from(code.checked_sub(1)?))
        .copied()
        .filter(|verb| *verb != Verb::Sync)
}

/// The record flags a verb allows.
const fn flags_allowed(verb: Verb) -> u8 {
    match verb {
        Verb::CallStart => FLAG_EMERGENCY | FLAG_TAG,
        Verb::CallStop | Verb::CallRefresh => FLAG_TAG,
        Verb::Admit => FLAG_EMERGENCY,
        Verb::Register | Verb::Subscribers | Verb::Sync => 0,
    }
}

/// Decodes a binary datagram. A bad header rejects it whole ([`Events::Rejected`]).
pub fn decode(datagram: &[u8]) -> Datagram<'_> {
    match header(datagram) {
        Ok((seq, count, records)) => Datagram {
            seq,
            events: Events::Binary(Records {
                rest: records,
                remaining: count,
                done: false,
            }),
        },
        Err(reason) => Datagram {
            seq: None,
            events: Events::Rejected(Some(reason)),
        },
    }
}

/// Checks the header; returns the sequence header, the record count and the bytes after
/// the header.
fn header(datagram: &[u8]) -> Result<(Option<Seq<'_>>, u16, &[u8]), Malformed> {
    if !datagram.starts_with(&MAGIC) {
        return Err(Malformed::BadHeader);
    }
    match datagram.get(3) {
        Some(&VERSION) => {}
        Some(_) => return Err(Malformed::BadVersion),
        None => return Err(Malformed::BadHeader),
    }
    let Some((header, records)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err(Malformed::BadHeader);
    };
    let &[
        _,
        _,
        _,
        _,
        flags,
        reserved,
        c0,
        c1,
        ref sender @ ..,
        n0,
        n1,
        n2,
        n3,
        n4,
        n5,
        n6,
        n7,
    ] = header;
    let count = u16::from_be_bytes([c0, c1]);
    let n = u64::from_be_bytes([n0, n1, n2, n3, n4, n5, n6, n7]);
    if flags & !FLAG_SEQ != 0 || reserved != 0 {
        return Err(Malformed::BadHeader);
    }
    let seq = if flags & FLAG_SEQ != 0 {
        Some(Seq {
            sender: sender.as_slice(),
            n,
        })
    } else if n != 0 || *sender != [0; 8] {
        // Canonical form: without FLAG_SEQ the sequence fields are zero.
        return Err(Malformed::BadHeader);
    } else {
        None
    };
    Ok((seq, count, records))
}

/// Iterator over the records of a binary datagram. Every item but a final
/// [`Malformed::Truncated`] or [`Malformed::TrailingBytes`] consumes at least the two bytes
/// of a record length, so there are never more items than input bytes.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    /// The records not read yet.
    rest: &'a [u8],
    /// Records the header announced that are not read yet.
    remaining: u16,
    /// Set after a framing error or the end of the records.
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Event<'a>, Malformed>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.remaining == 0 {
            self.done = true;
            return (!self.rest.is_empty()).then_some(Err(Malformed::TrailingBytes));
        }
        let Some((len, rest)) = self.rest.split_first_chunk::<2>() else {
            self.done = true;
            return Some(Err(Malformed::Truncated));
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            self.done = true;
            return Some(Err(Malformed::Truncated));
        }
        let (record, rest) = rest.split_at(len);
        self.rest = rest;
        self.remaining -= 1;
        Some(decode_record(record))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        (
            1.min(usize::from(self.remaining) + self.rest.len()),
            Some(usize::from(self.remaining) + 1),
        )
    }
}

impl std::iter::FusedIterator for Records<'_> {}

/// Decodes the body of one record (after its length field).
#[inline]
fn decode_record(record: &[u8]) -> Result<Event<'_>, Malformed> {
    let [code, flags, fields @ ..] = record else {
        return Err(Malformed::Truncated);
    };
    let verb = verb_from_code(*code).ok_or(Malformed::UnknownVerb)?;
    if flags & !flags_allowed(verb) != 0 {
        return Err(Malformed::BadOption);
    }
    let emergency = flags & FLAG_EMERGENCY != 0;
    let mut fields = Reader(fields);
    let event = match verb {
        Verb::CallStart => Event::CallStart {
            call: fields.call(*flags)?,
            emergency,
        },
        Verb::CallStop => Event::CallStop {
            call: fields.call(*flags)?,
        },
        Verb::CallRefresh => Event::CallRefresh {
            call: fields.call(*flags)?,
        },
        Verb::Register => Event::Register {
            aor: fields.key()?,
            contact: fields.key()?,
            expires_s: u32::from_be_bytes(fields.array()?),
        },
        Verb::Subscribers => {
            let count = u64::from_be_bytes(fields.array()?);
            if count > crate::SUBSCRIBERS_MAX {
                return Err(Malformed::BadNumber);
            }
            Event::Subscribers { count }
        }
        Verb::Admit => Event::Admit {
            call_id: fields.key()?,
            emergency,
        },
        Verb::Sync => return Err(Malformed::UnknownVerb),
    };
    if !fields.0.is_empty() {
        return Err(Malformed::ExtraField);
    }
    Ok(event)
}

/// Reads the fields of one record, front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A key: `len u8` then 1..=255 bytes.
    #[inline]
    fn key(&mut self) -> Result<&'a [u8], Malformed> {
        let (&len, rest) = self.0.split_first().ok_or(Malformed::Truncated)?;
        let len = usize::from(len);
        if len == 0 {
            return Err(Malformed::EmptyField);
        }
        if rest.len() < len {
            return Err(Malformed::Truncated);
        }
        let (key, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(key)
    }

    /// A call-id, then a from-tag if the record flags say so.
    #[inline]
    fn call(&mut self, flags: u8) -> Result<CallRef<'a>, Malformed> {
        let call_id = self.key()?;
        let from_tag = if flags & FLAG_TAG != 0 {
            Some(self.key()?)
        } else {
            None
        };
        Ok(CallRef { call_id, from_tag })
    }

    /// A fixed-size integer's bytes.
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let (bytes, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(Malformed::Truncated)?;
        self.0 = rest;
        Ok(*bytes)
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

/// The sequence header of a binary datagram: 8 opaque sender bytes (often a u64's
/// `to_be_bytes()`) and the sender's sequence number.
pub type SeqHeader = ([u8; 8], u64);

/// Builds binary datagrams no larger than a size limit: the header, then records until one
/// no longer fits ([`EncodeError::BatchFull`]: send, [`reset`](Self::reset), push it again).
/// The header's count is kept current, so [`as_bytes`](Self::as_bytes) is a complete
/// datagram at any time. Reuses its buffer across datagrams.
#[derive(Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
    size_max: usize,
    count: u16,
}

impl Encoder {
    /// An empty datagram without sequence header, of at most `size_max` bytes.
    ///
    /// # Panics
    /// If `size_max` is smaller than [`HEADER_LEN`].
    pub fn new(size_max: usize) -> Self {
        assert!(
            size_max >= HEADER_LEN,
            "size_max {size_max} below the header length"
        );
        let mut encoder = Encoder {
            buf: Vec::with_capacity(size_max.min(65_536)),
            size_max,
            count: 0,
        };
        encoder.reset(None);
        encoder
    }

    /// Starts a new datagram, with a sequence header if `seq` is given.
    pub fn reset(&mut self, seq: Option<SeqHeader>) {
        self.buf.clear();
        self.count = 0;
        let (flags, (sender, n)) = match seq {
            Some(seq) => (FLAG_SEQ, seq),
            None => (0, ([0; 8], 0)),
        };
        self.buf.extend_from_slice(&MAGIC);
        self.buf.extend_from_slice(&[VERSION, flags, 0]);
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        self.buf.extend_from_slice(&sender);
        self.buf.extend_from_slice(&n.to_be_bytes());
        debug_assert_eq!(self.buf.len(), HEADER_LEN);
    }

    /// Appends one record, or refuses it (nothing written) if a key is empty or too long,
    /// or the datagram has no room left (size limit or [`RECORD_COUNT_MAX`]).
    pub fn push(&mut self, event: &Event<'_>) -> Result<(), EncodeError> {
        let len = record_len(event)?;
        if usize::from(self.count) >= RECORD_COUNT_MAX || self.buf.len() + len > self.size_max {
            return Err(EncodeError::BatchFull);
        }
        let start = self.buf.len();
        let body_len = u16::try_from(len - 2).map_err(|_| EncodeError::BatchFull)?;
        self.buf.extend_from_slice(&body_len.to_be_bytes());
        self.buf
            .extend_from_slice(&[verb_code(event.verb()), record_flags(event)]);
        match *event {
            Event::CallStart { call, .. }
            | Event::CallStop { call }
            | Event::CallRefresh { call } => {
                self.key(call.call_id);
                if let Some(tag) = call.from_tag {
                    self.key(tag);
                }
            }
            Event::Register {
                aor,
                contact,
                expires_s,
            } => {
                self.key(aor);
                self.key(contact);
                self.buf.extend_from_slice(&expires_s.to_be_bytes());
            }
            Event::Subscribers { count } => self.buf.extend_from_slice(&count.to_be_bytes()),
            Event::Admit { call_id, .. } => self.key(call_id),
            Event::Sync(_) => unreachable!("record_len refuses sync lines"),
        }
        debug_assert_eq!(self.buf.len() - start, len);
        self.count += 1;
        self.buf[6..8].copy_from_slice(&self.count.to_be_bytes());
        Ok(())
    }

    fn key(&mut self, key: &[u8]) {
        debug_assert!((1..=FIELD_LEN_MAX).contains(&key.len()));
        self.buf.push(key.len() as u8);
        self.buf.extend_from_slice(key);
    }

    /// The datagram so far, ready to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes in the datagram so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no record has been pushed since the last reset.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records pushed since the last reset.
    pub fn event_count(&self) -> usize {
        usize::from(self.count)
    }

    /// The size limit given to [`new`](Self::new).
    pub fn size_max(&self) -> usize {
        self.size_max
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// The encoded length of an event's record, its length field included, after checking its
/// keys.
pub fn record_len(event: &Event<'_>) -> Result<usize, EncodeError> {
    let fields = match *event {
        Event::CallStart { call, .. } | Event::CallStop { call } | Event::CallRefresh { call } => {
            key_len("call_id", call.call_id)?
                + match call.from_tag {
                    Some(tag) => key_len("from_tag", tag)?,
                    None => 0,
                }
        }
        Event::Register { aor, contact, .. } => {
            key_len("aor", aor)? + key_len("contact", contact)? + 4
        }
        Event::Subscribers { count } => {
            if count > crate::SUBSCRIBERS_MAX {
                return Err(EncodeError::OutOfRange { field: "count" });
            }
            8
        }
        Event::Admit { call_id, .. } => key_len("call_id", call_id)?,
        Event::Sync(_) => return Err(EncodeError::TextOnly),
    };
    Ok(2 + 1 + 1 + fields)
}

/// The record flags of an event.
fn record_flags(event: &Event<'_>) -> u8 {
    let tag = |call: CallRef<'_>| if call.from_tag.is_some() { FLAG_TAG } else { 0 };
    let emergency = |emergency: bool| if emergency { FLAG_EMERGENCY } else { 0 };
    match *event {
        Event::CallStart { call, emergency: e } => tag(call) | emergency(e),
        Event::CallStop { call } | Event::CallRefresh { call } => tag(call),
        Event::Admit { emergency: e, .. } => emergency(e),
        Event::Register { .. } | Event::Subscribers { .. } | Event::Sync(_) => 0,
    }
}

fn key_len(field: &'static str, key: &[u8]) -> Result<usize, EncodeError> {
    if key.is_empty() {
        return Err(EncodeError::EmptyField { field });
    }
    if key.len() > FIELD_LEN_MAX {
        return Err(EncodeError::FieldTooLong {
            field,
            len: key.len(),
        });
    }
    Ok(1 + key.len())
}

#[cfg(test)]
mod tests;
