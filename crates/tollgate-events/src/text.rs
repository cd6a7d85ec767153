//! The text protocol of MISSION.md, specified in `docs/protocol.md`.
//!
//! ```text
//! seq <sender-id> <n>                      optional first line: per-sender sequence
//! call-start <call-id> [tag=<from-tag>] [emergency]
//! call-stop <call-id> [tag=<from-tag>]
//! call-refresh <call-id> [tag=<from-tag>]
//! reg <aor> <contact> <expires-seconds>     expires 0 removes that contact
//! subscribers <count>
//! admit <call-id> [emergency]
//! sync-begin <sender> <epoch>               a reconciliation list (see docs/protocol.md)
//! sync-call <call-id> [tag=<from-tag>] [emergency]
//! sync-reg <aor> <contact> <expires-seconds>
//! sync-end <sender> <epoch> <calls> <contacts>
//! ```
//!
//! Decoding rules, in short (the document has them all):
//! - A line ends at LF or CR, so `\r\n` works, and a line is never required to end in one.
//!   Empty lines (including the one between CR and LF) are skipped silently. No field ever
//!   contains a CR, an LF or a space.
//! - Fields are separated by exactly one space. An empty field (leading, double or trailing
//!   space, `tag=`) is [`Malformed::EmptyField`]; a field over [`FIELD_LEN_MAX`] bytes is
//!   [`Malformed::FieldTooLong`].
//! - Fields are opaque bytes: nothing is UTF-8 validated, nothing is unescaped.
//! - Verbs that take options (`call-*`, `admit`) answer anything after their required fields
//!   that is not an option they allow, or an option given twice, with
//!   [`Malformed::BadOption`]; verbs without options (`reg`, `subscribers`, `seq`) answer any
//!   further field with [`Malformed::ExtraField`].
//! - Numbers are ASCII decimal digits only (leading zeros allowed; no sign, no spaces) and
//!   must fit their type (`expires` u32, `count` and `n` u64) and `count` must not exceed
//!   [`SUBSCRIBERS_MAX`] (2^40), else [`Malformed::BadNumber`].
//! - The errors of a line are reported left to right: the first bad field decides.
//! - `seq <sender-id> <n>` is only valid as the first line of the datagram (byte 0); later
//!   it is [`Malformed::MisplacedSeq`].
//!
//! Decoding reads each line once, splitting fields as it goes, eight bytes at a time (a
//! safe, std-only SWAR search).
//!
//! **Invariant:** every event [`decode`] yields re-encodes with [`write_event`] and decodes
//! back equal (the fuzz target `text_decoder` checks it).

use crate::{
    CallRef, Datagram, EncodeError, Event, Events, FIELD_LEN_MAX, Malformed, SUBSCRIBERS_MAX, Seq,
    SyncLine,
};

/// Longest line [`write_event`] can produce, terminator included:
/// `call-start <255> tag=<255> emergency\n`.
pub const LINE_LEN_MAX: usize = "call-start ".len()
    + FIELD_LEN_MAX
    + " tag=".len()
    + FIELD_LEN_MAX
    + " emergency".len()
    + "\n".len();

/// Iterator over the event lines of a text datagram. Yields exactly one item per non-empty
/// line, except a well-formed first `seq` line (which is [`Datagram::seq`] instead), so never
/// more items than input bytes.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    /// The lines not read yet.
    rest: &'a [u8],
    /// The error of a malformed first `seq` line, yielded before any event.
    pending: Option<Malformed>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Event<'a>, Malformed>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(reason) = self.pending.take() {
            return Some(Err(reason));
        }
        // Skip empty lines.
        while let [b'\n' | b'\r', rest @ ..] = self.rest {
            self.rest = rest;
        }
        if self.rest.is_empty() {
            return None;
        }
        let mut fields = Fields::new(self.rest);
        let item = decode_fields(&mut fields);
        self.rest = fields.into_next_line();
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let pending = usize::from(self.pending.is_some());
        (pending, Some(pending + self.rest.len()))
    }
}

impl std::iter::FusedIterator for Lines<'_> {}

/// Decodes a text datagram. A first line whose verb is `seq` becomes [`Datagram::seq`]; if it
/// is malformed, `seq` is `None` and the events iterator yields its error first, then the
/// remaining lines.
pub fn decode(datagram: &[u8]) -> Datagram<'_> {
    // A cheap test first: most datagrams do not start with `seq`.
    let starts_with_seq = match datagram {
        [b's', b'e', b'q', after, ..] => matches!(after, b' ' | b'\n' | b'\r'),
        first_line => first_line == b"seq",
    };
    if !starts_with_seq {
        let lines = Lines {
            rest: datagram,
            pending: None,
        };
        return Datagram {
            seq: None,
            events: Events::Text(lines),
        };
    }
    let mut fields = Fields::new(datagram);
    let _seq = fields.next();
    let (seq, pending) = match decode_seq(&mut fields) {
        Ok(seq) => (Some(seq), None),
        Err(reason) => (None, Some(reason)),
    };
    let rest = fields.into_next_line();
    Datagram {
        seq,
        events: Events::Text(Lines { rest, pending }),
    }
}

/// Decodes one event line: `line` up to its first CR or LF (anything after is ignored). A
/// `seq` line here is [`Malformed::MisplacedSeq`]: only [`decode`] accepts one, as the first
/// line. An empty line is [`Malformed::EmptyField`].
pub fn decode_line(line: &[u8]) -> Result<Event<'_>, Malformed> {
    decode_fields(&mut Fields::new(line))
}

/// Decodes the event of one line, reading its fields front to back.
#[inline]
fn decode_fields<'a>(fields: &mut Fields<'a>) -> Result<Event<'a>, Malformed> {
    let verb = fields.next().unwrap_or_default();
    match verb {
        b"call-start" => {
            let call_id = fields.required()?;
            let (from_tag, emergency) = fields.options(true, true)?;
            Ok(Event::CallStart {
                call: CallRef { call_id, from_tag },
                emergency,
            })
        }
        b"call-stop" => {
            let call_id = fields.required()?;
            let (from_tag, _) = fields.options(true, false)?;
            Ok(Event::CallStop {
                call: CallRef { call_id, from_tag },
            })
        }
        b"call-refresh" => {
            let call_id = fields.required()?;
            let (from_tag, _) = fields.options(true, false)?;
            Ok(Event::CallRefresh {
                call: CallRef { call_id, from_tag },
            })
        }
        b"reg" => {
            let aor = fields.required()?;
            let contact = fields.required()?;
            let expires = number(fields.required()?)?;
            let expires_s = u32::try_from(expires).map_err(|_| Malformed::BadNumber)?;
            fields.end()?;
            Ok(Event::Register {
                aor,
                contact,
                expires_s,
            })
        }
        b"subscribers" => {
            let count = number(fields.required()?)?;
            if count > SUBSCRIBERS_MAX {
                return Err(Malformed::BadNumber);
            }
            fields.end()?;
            Ok(Event::Subscribers { count })
        }
        b"admit" => {
            let call_id = fields.required()?;
            let (_, emergency) = fields.options(false, true)?;
            Ok(Event::Admit { call_id, emergency })
        }
        b"seq" => Err(Malformed::MisplacedSeq),
        b"" => Err(Malformed::EmptyField),
        verb if verb.starts_with(b"sync-") => decode_sync(verb, fields).map(Event::Sync),
        _ => Err(Malformed::UnknownVerb),
    }
}

/// The `sync-*` lines (off the hot path).
#[cold]
fn decode_sync<'a>(verb: &[u8], fields: &mut Fields<'a>) -> Result<SyncLine<'a>, Malformed> {
    match verb {
        b"sync-begin" => {
            let sender = fields.required()?;
            let epoch = number(fields.required()?)?;
            fields.end()?;
            Ok(SyncLine::Begin { sender, epoch })
        }
        b"sync-call" => {
            let call_id = fields.required()?;
            let (from_tag, emergency) = fields.options(true, true)?;
            Ok(SyncLine::Call {
                call: CallRef { call_id, from_tag },
                emergency,
            })
        }
        b"sync-reg" => {
            let aor = fields.required()?;
            let contact = fields.required()?;
            let expires = number(fields.required()?)?;
            let expires_s = u32::try_from(expires).map_err(|_| Malformed::BadNumber)?;
            if expires_s == 0 {
                return Err(Malformed::BadNumber);
            }
            fields.end()?;
            Ok(SyncLine::Reg {
                aor,
                contact,
                expires_s,
            })
        }
        b"sync-end" => {
            let sender = fields.required()?;
            let epoch = number(fields.required()?)?;
            let calls = number(fields.required()?)?;
            let contacts = number(fields.required()?)?;
            fields.end()?;
            Ok(SyncLine::End {
                sender,
                epoch,
                calls,
                contacts,
            })
        }
        _ => Err(Malformed::UnknownVerb),
    }
}

/// The fields of a `seq` line after the verb.
fn decode_seq<'a>(fields: &mut Fields<'a>) -> Result<Seq<'a>, Malformed> {
    let sender = fields.required()?;
    let n = number(fields.required()?)?;
    fields.end()?;
    Ok(Seq { sender, n })
}

/// Reads the fields of one line, front to back, in a single pass over its bytes: a field
/// ends at a space (another field follows, possibly empty), or at CR, LF or the end of the
/// input (the line ends).
#[derive(Debug)]
struct Fields<'a> {
    /// The bytes after the last field read (and after its terminator).
    rest: &'a [u8],
    /// The last field read ended in a space: the line has another field.
    more: bool,
}

impl<'a> Fields<'a> {
    #[inline]
    fn new(line: &'a [u8]) -> Self {
        Fields {
            rest: line,
            more: true,
        }
    }

    /// The next field, or `None` once the line has ended.
    #[inline(always)]
    fn next(&mut self) -> Option<&'a [u8]> {
        if !self.more {
            return None;
        }
        match find_delimiter(self.rest) {
            Some(i) => {
                let field = &self.rest[..i];
                self.more = self.rest[i] == b' ';
                self.rest = &self.rest[i + 1..];
                Some(field)
            }
            None => {
                let field = self.rest;
                self.rest = &[];
                self.more = false;
                Some(field)
            }
        }
    }

    /// The next field, which must be present, non-empty and not too long.
    #[inline]
    fn required(&mut self) -> Result<&'a [u8], Malformed> {
        let field = self.next().ok_or(Malformed::MissingField)?;
        if field.is_empty() {
            return Err(Malformed::EmptyField);
        }
        if field.len() > FIELD_LEN_MAX {
            return Err(Malformed::FieldTooLong);
        }
        Ok(field)
    }

    /// The options after the required fields: `tag=<from-tag>` and `emergency`, each allowed
    /// at most once and only where the verb takes it, in any order.
    #[inline]
    fn options(
        &mut self,
        tag_allowed: bool,
        emergency_allowed: bool,
    ) -> Result<(Option<&'a [u8]>, bool), Malformed> {
        let mut from_tag = None;
        let mut emergency = false;
        while let Some(option) = self.next() {
            if option.is_empty() {
                return Err(Malformed::EmptyField);
            }
            if option == b"emergency" && emergency_allowed && !emergency {
                emergency = true;
            } else if let Some(tag) = option.strip_prefix(b"tag=")
                && tag_allowed
                && from_tag.is_none()
            {
                if tag.is_empty() {
                    return Err(Malformed::EmptyField);
                }
                if tag.len() > FIELD_LEN_MAX {
                    return Err(Malformed::FieldTooLong);
                }
                from_tag = Some(tag);
            } else {
                return Err(Malformed::BadOption);
            }
        }
        Ok((from_tag, emergency))
    }

    /// No field may follow (verbs without options).
    #[inline]
    fn end(&mut self) -> Result<(), Malformed> {
        match self.next() {
            None => Ok(()),
            Some([]) => Err(Malformed::EmptyField),
            Some(_) => Err(Malformed::ExtraField),
        }
    }

    /// The bytes after this line (after its terminator), whether or not every field was read.
    #[inline]
    fn into_next_line(self) -> &'a [u8] {
        if !self.more {
            return self.rest;
        }
        match find_line_end(self.rest) {
            Some(i) => &self.rest[i + 1..],
            None => &[],
        }
    }
}

/// ASCII decimal digits to u64; no sign, no spaces; overflow is an error.
#[inline]
fn number(field: &[u8]) -> Result<u64, Malformed> {
    let mut n: u64 = 0;
    for &byte in field {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(Malformed::BadNumber);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit)))
            .ok_or(Malformed::BadNumber)?;
    }
    Ok(n)
}

// Byte search, eight bytes at a time (SWAR), std only and safe. `(x - 0x0101..*n) & !x &
// 0x8080..` sets the high bit of every byte of `x` below `n` (n <= 0x80), plus possibly of
// bytes above (more significant than) the first such byte, because of the borrow. Loading
// words little-endian, the lowest set bit is thus exactly the first byte below `n`. With
// `n = 1` after XOR with a repeated needle, that is the first byte equal to the needle.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set on the bytes of `x` below `n`: exact for the lowest one (see above).
#[inline(always)]
fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(LO * u64::from(n)) & !x & HI
}

/// Index of the first field delimiter (space, LF or CR) in `hay`. All three are below
/// 0x21, so one comparison per word finds candidates; the rare other control byte (tab,
/// NUL…) is a false candidate and the search resumes after it.
#[inline]
fn find_delimiter(hay: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        let i = start + find_with(&hay[start..], |word| bytes_below(word, 0x21), |b| b < 0x21)?;
        if matches!(hay[i], b' ' | b'\n' | b'\r') {
            return Some(i);
        }
        start = i + 1;
    }
}

/// Index of the first line end (LF or CR) in `hay`.
#[inline]
fn find_line_end(hay: &[u8]) -> Option<usize> {
    const NL: u64 = LO * b'\n' as u64;
    const CR: u64 = LO * b'\r' as u64;
    find_with(
        hay,
        |word| bytes_below(word ^ NL, 1) | bytes_below(word ^ CR, 1),
        |b| b == b'\n' || b == b'\r',
    )
}

/// The search loop: `hits` marks candidate bytes of a little-endian word (the lowest set
/// bit exact), `is_hit` tests one byte.
#[inline(always)]
fn find_with(hay: &[u8], hits: impl Fn(u64) -> u64, is_hit: impl Fn(u8) -> bool) -> Option<usize> {
    let (chunks, tail) = hay.as_chunks::<8>();
    for (i, chunk) in chunks.iter().enumerate() {
        let hits = hits(u64::from_le_bytes(*chunk));
        if hits != 0 {
            return Some(i * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    if tail.is_empty() {
        return None;
    }
    // The tail: if there was a whole word before it, search the last 8 bytes at once. They
    // overlap bytes already searched, which hold no hit, so the first hit is in the tail.
    if let Some(last) = hay.last_chunk::<8>() {
        let hits = hits(u64::from_le_bytes(*last));
        return (hits != 0).then(|| hay.len() - 8 + (hits.trailing_zeros() / 8) as usize);
    }
    tail.iter().position(|&b| is_hit(b))
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Appends one event as a `\n`-terminated line. On error nothing is written.
///
/// Fields must be 1..=255 bytes without space, CR or LF; whatever else they hold is written
/// as is.
pub fn write_event(event: &Event<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = encoded_len(event)?;
    write_checked(event, len, out);
    Ok(())
}

/// Writes an event whose fields [`encoded_len`] has checked, and which found it `len` long.
fn write_checked(event: &Event<'_>, len: usize, out: &mut Vec<u8>) {
    out.reserve(len);
    let start = out.len();
    match *event {
        Event::CallStart { call, emergency } => {
            out.extend_from_slice(b"call-start ");
            write_call(call, out);
            if emergency {
                out.extend_from_slice(b" emergency");
            }
        }
        Event::CallStop { call } => {
            out.extend_from_slice(b"call-stop ");
            write_call(call, out);
        }
        Event::CallRefresh { call } => {
            out.extend_from_slice(b"call-refresh ");
            write_call(call, out);
        }
        Event::Register {
            aor,
            contact,
            expires_s,
        } => {
            out.extend_from_slice(b"reg ");
            out.extend_from_slice(aor);
            out.push(b' ');
            out.extend_from_slice(contact);
            out.push(b' ');
            write_u64(u64::from(expires_s), out);
        }
        Event::Subscribers { count } => {
            out.extend_from_slice(b"subscribers ");
            write_u64(count, out);
        }
        Event::Admit { call_id, emergency } => {
            out.extend_from_slice(b"admit ");
            out.extend_from_slice(call_id);
            if emergency {
                out.extend_from_slice(b" emergency");
            }
        }
        Event::Sync(SyncLine::Begin { sender, epoch }) => {
            out.extend_from_slice(b"sync-begin ");
            out.extend_from_slice(sender);
            out.push(b' ');
            write_u64(epoch, out);
        }
        Event::Sync(SyncLine::Call { call, emergency }) => {
            out.extend_from_slice(b"sync-call ");
            write_call(call, out);
            if emergency {
                out.extend_from_slice(b" emergency");
            }
        }
        Event::Sync(SyncLine::Reg {
            aor,
            contact,
            expires_s,
        }) => {
            out.extend_from_slice(b"sync-reg ");
            out.extend_from_slice(aor);
            out.push(b' ');
            out.extend_from_slice(contact);
            out.push(b' ');
            write_u64(u64::from(expires_s), out);
        }
        Event::Sync(SyncLine::End {
            sender,
            epoch,
            calls,
            contacts,
        }) => {
            out.extend_from_slice(b"sync-end ");
            out.extend_from_slice(sender);
            for n in [epoch, calls, contacts] {
                out.push(b' ');
                write_u64(n, out);
            }
        }
    }
    out.push(b'\n');
    debug_assert_eq!(out.len() - start, len);
}

/// Appends a `seq <sender> <n>\n` line; it must be the first line of the datagram.
/// On error nothing is written.
pub fn write_seq(sender: &[u8], n: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_field("sender", sender)?;
    out.extend_from_slice(b"seq ");
    out.extend_from_slice(sender);
    out.push(b' ');
    write_u64(n, out);
    out.push(b'\n');
    Ok(())
}

/// The length of the line [`write_event`] would write, after checking every field.
pub fn encoded_len(event: &Event<'_>) -> Result<usize, EncodeError> {
    let emergency_len = |emergency: bool| if emergency { " emergency".len() } else { 0 };
    let len = match *event {
        Event::CallStart { call, emergency } => {
            "call-start ".len() + call_len(call)? + emergency_len(emergency)
        }
        Event::CallStop { call } => "call-stop ".len() + call_len(call)?,
        Event::CallRefresh { call } => "call-refresh ".len() + call_len(call)?,
        Event::Register {
            aor,
            contact,
            expires_s,
        } => {
            check_field("aor", aor)?;
            check_field("contact", contact)?;
            "reg   ".len() + aor.len() + contact.len() + digit_count(u64::from(expires_s))
        }
        Event::Subscribers { count } => {
            if count > SUBSCRIBERS_MAX {
                return Err(EncodeError::OutOfRange { field: "count" });
            }
            "subscribers ".len() + digit_count(count)
        }
        Event::Admit { call_id, emergency } => {
            check_field("call_id", call_id)?;
            "admit ".len() + call_id.len() + emergency_len(emergency)
        }
        Event::Sync(SyncLine::Begin { sender, epoch }) => {
            check_field("sender", sender)?;
            "sync-begin  ".len() + sender.len() + digit_count(epoch)
        }
        Event::Sync(SyncLine::Call { call, emergency }) => {
            "sync-call ".len() + call_len(call)? + emergency_len(emergency)
        }
        Event::Sync(SyncLine::Reg {
            aor,
            contact,
            expires_s,
        }) => {
            check_field("aor", aor)?;
            check_field("contact", contact)?;
            if expires_s == 0 {
                return Err(EncodeError::EmptyField { field: "expires" });
            }
            "sync-reg   ".len() + aor.len() + contact.len() + digit_count(u64::from(expires_s))
        }
        Event::Sync(SyncLine::End {
            sender,
            epoch,
            calls,
            contacts,
        }) => {
            check_field("sender", sender)?;
            "sync-end    ".len()
                + sender.len()
                + digit_count(epoch)
                + digit_count(calls)
                + digit_count(contacts)
        }
    };
    Ok(len + "\n".len())
}

fn call_len(call: CallRef<'_>) -> Result<usize, EncodeError> {
    check_field("call_id", call.call_id)?;
    let mut len = call.call_id.len();
    if let Some(tag) = call.from_tag {
        check_field("from_tag", tag)?;
        len += " tag=".len() + tag.len();
    }
    Ok(len)
}

fn write_call(call: CallRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(call.call_id);
    if let Some(tag) = call.from_tag {
        out.extend_from_slice(b" tag=");
        out.extend_from_slice(tag);
    }
}

/// A field the decoder will read back as is: 1..=255 bytes, no space, CR or LF.
fn check_field(field: &'static str, bytes: &[u8]) -> Result<(), EncodeError> {
    if bytes.is_empty() {
        return Err(EncodeError::EmptyField { field });
    }
    if bytes.len() > FIELD_LEN_MAX {
        return Err(EncodeError::FieldTooLong {
            field,
            len: bytes.len(),
        });
    }
    if bytes.iter().any(|&b| matches!(b, b' ' | b'\r' | b'\n')) {
        return Err(EncodeError::ForbiddenByte { field });
    }
    Ok(())
}

fn digit_count(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Builds text datagrams no larger than a size limit: an optional `seq` line, then events
/// until one no longer fits ([`EncodeError::BatchFull`]: send, [`reset`](Self::reset), push
/// it again). Reuses its buffer across datagrams.
#[derive(Debug, Clone)]
pub struct Encoder {
    buf: Vec<u8>,
    size_max: usize,
    event_count: usize,
}

impl Encoder {
    /// An empty datagram (no `seq` line) of at most `size_max` bytes.
    pub fn new(size_max: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(size_max.min(65_536)),
            size_max,
            event_count: 0,
        }
    }

    /// Starts a new datagram, with a `seq` line if `seq` is given. On error the datagram is
    /// left empty, without `seq` line.
    pub fn reset(&mut self, seq: Option<(&[u8], u64)>) -> Result<(), EncodeError> {
        self.buf.clear();
        self.event_count = 0;
        if let Some((sender, n)) = seq {
            write_seq(sender, n, &mut self.buf)?;
            if self.buf.len() > self.size_max {
                self.buf.clear();
                return Err(EncodeError::BatchFull);
            }
        }
        Ok(())
    }

    /// Appends one event line, or refuses it (nothing written) if a field is invalid or
    /// the line would take the datagram over its size limit.
    pub fn push(&mut self, event: &Event<'_>) -> Result<(), EncodeError> {
        let len = encoded_len(event)?;
        if self.buf.len() + len > self.size_max {
            return Err(EncodeError::BatchFull);
        }
        write_checked(event, len, &mut self.buf);
        self.event_count += 1;
        Ok(())
    }

    /// The datagram so far, ready to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes in the datagram so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if no event has been pushed since the last reset.
    pub fn is_empty(&self) -> bool {
        self.event_count == 0
    }

    /// Events pushed since the last reset.
    pub fn event_count(&self) -> usize {
        self.event_count
    }

    /// The size limit given to [`new`](Self::new).
    pub fn size_max(&self) -> usize {
        self.size_max
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

// ---------------------------------------------------------------------------------------
// The reply to `admit` queries

/// The agent's answer to one `admit` line: `ok` or `deny <code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitReply<'a> {
    Ok,
    /// `code` is one of the license evaluation's stable codes, a single token.
    Deny {
        code: &'a [u8],
    },
}

/// Appends one reply line (`ok\n` or `deny <code>\n`). On error nothing is written.
pub fn write_admit_reply(reply: &AdmitReply<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match *reply {
        AdmitReply::Ok => out.extend_from_slice(b"ok\n"),
        AdmitReply::Deny { code } => {
            check_field("code", code)?;
            out.extend_from_slice(b"deny ");
            out.extend_from_slice(code);
            out.push(b'\n');
        }
    }
    Ok(())
}

/// Decodes a reply datagram: one item per non-empty line, in the order of the `admit` lines
/// of the query datagram. Same line and field rules as events.
pub fn decode_admit_replies(datagram: &[u8]) -> AdmitReplies<'_> {
    AdmitReplies { rest: datagram }
}

/// Iterator over the lines of an admit reply datagram.
#[derive(Debug, Clone)]
pub struct AdmitReplies<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AdmitReplies<'a> {
    type Item = Result<AdmitReply<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        while let [b'\n' | b'\r', rest @ ..] = self.rest {
            self.rest = rest;
        }
        if self.rest.is_empty() {
            return None;
        }
        let mut fields = Fields::new(self.rest);
        let item = match fields.next().unwrap_or_default() {
            b"ok" => fields.end().map(|()| AdmitReply::Ok),
            b"deny" => fields.required().and_then(|code| {
                fields.end()?;
                Ok(AdmitReply::Deny { code })
            }),
            b"" => Err(Malformed::EmptyField),
            _ => Err(Malformed::UnknownVerb),
        };
        self.rest = fields.into_next_line();
        Some(item)
    }
}

impl std::iter::FusedIterator for AdmitReplies<'_> {}

#[cfg(test)]
mod tests;
