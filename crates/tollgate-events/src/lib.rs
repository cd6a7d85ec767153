//! Sans-IO decoders (and the matching encoders) for the events a SIP proxy sends to a
//! tollgate agent.
//!
//! Two wire formats share one event model ([`Event`]):
//! - the line-oriented **text protocol** of MISSION.md (`call-start <call-id> …`), see [`text`];
//! - a compact **binary batch** format for high-rate senders, see [`binary`].
//!
//! [`decode`] looks at the first byte of a datagram and picks the format. Decoding never
//! allocates and never panics: events borrow from the datagram, and a malformed line or
//! record is reported as [`Malformed`] with a low-cardinality reason while the rest of the
//! datagram still decodes.
//!
//! Each format has an encoder beside its decoder ([`text::Encoder`], [`binary::Encoder`],
//! [`text::write_event`]) that refuses, with an [`EncodeError`], whatever would not decode
//! back equal. The formats are specified byte by byte in `docs/protocol.md`.
//!
//! ```
//! use tollgate_events::{CallRef, Event, Malformed, binary, decode};
//!
//! let datagram = decode(b"seq proxy-01 7\ncall-stop abc tag=x\nbogus\n");
//! assert_eq!(datagram.seq.map(|seq| seq.n), Some(7));
//! let stop = Event::CallStop { call: CallRef { call_id: b"abc", from_tag: Some(b"x") } };
//! let items: Vec<_> = datagram.events.collect();
//! assert_eq!(items, [Ok(stop), Err(Malformed::UnknownVerb)]);
//!
//! let mut encoder = binary::Encoder::new(1400);
//! encoder.reset(Some((*b"proxy-01", 8)));
//! encoder.push(&stop)?;
//! let items: Vec<_> = decode(encoder.as_bytes()).events.collect();
//! assert_eq!(items, [Ok(stop)]);
//! # Ok::<(), tollgate_events::EncodeError>(())
//! ```
//!
//! It also holds tollgate's time vocabulary ([`time`]): [`WallTime`] and [`MonoTime`], the
//! two instants every core takes as arguments.
//!
//! What this crate deliberately lacks: sockets, clocks, hashing, any notion of state. It
//! turns bytes into [`Event`]s and back, nothing more.

pub mod binary;
pub mod text;
pub mod time;

pub use time::{MonoTime, WallTime, duration_ms};

#[cfg(test)]
mod test_util;

/// Longest call-id, from-tag, AoR, contact or sender id accepted, in bytes.
pub const FIELD_LEN_MAX: usize = 255;

/// Largest `subscribers` count accepted (2^40, the largest figure a usage report may carry);
/// above it the line or record is [`Malformed::BadNumber`].
pub const SUBSCRIBERS_MAX: u64 = 1 << 40;

/// One event, borrowing its strings from the datagram it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A call was answered (`call-start`).
    CallStart { call: CallRef<'a>, emergency: bool },
    /// A call ended (`call-stop`).
    CallStop { call: CallRef<'a> },
    /// A call is still up (`call-refresh`): pushes its maximum-duration deadline out.
    CallRefresh { call: CallRef<'a> },
    /// A registration binding (`reg`); `expires_s == 0` removes that contact.
    Register {
        aor: &'a [u8],
        contact: &'a [u8],
        expires_s: u32,
    },
    /// The number of provisioned subscribers on the platform (`subscribers`), at most
    /// [`SUBSCRIBERS_MAX`].
    Subscribers { count: u64 },
    /// A query, not a change: may this call be admitted (`admit`)?
    Admit { call_id: &'a [u8], emergency: bool },
    /// One line of a reconciliation list (`sync-*`, text only): not applied as an event but
    /// collected until its `sync-end`.
    Sync(SyncLine<'a>),
}

/// The lines of a reconciliation list pushed by a proxy (text protocol only):
///
/// ```text
/// sync-begin <sender> <epoch>
/// sync-call <call-id> [tag=<from-tag>] [emergency]
/// sync-reg <aor> <contact> <expires-seconds>
/// sync-end <sender> <epoch> <calls> <contacts>
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncLine<'a> {
    /// A new list from `sender`; `epoch` tells its lists apart.
    Begin { sender: &'a [u8], epoch: u64 },
    /// A call the sender has.
    Call { call: CallRef<'a>, emergency: bool },
    /// A contact the sender has, expiring in `expires_s` seconds (at least 1).
    Reg {
        aor: &'a [u8],
        contact: &'a [u8],
        expires_s: u32,
    },
    /// The list is complete: it had `calls` calls and `contacts` contacts.
    End {
        sender: &'a [u8],
        epoch: u64,
        calls: u64,
        contacts: u64,
    },
}

/// Identity of one call: Call-ID plus the optional From-tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallRef<'a> {
    pub call_id: &'a [u8],
    pub from_tag: Option<&'a [u8]>,
}

/// The kind of an [`Event`], for per-verb counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verb {
    CallStart = 0,
    CallStop = 1,
    CallRefresh = 2,
    Register = 3,
    Subscribers = 4,
    Admit = 5,
    /// Any `sync-*` line (text only).
    Sync = 6,
}

impl Verb {
    /// Number of verbs, for arrays of counters indexed by `verb as usize`.
    pub const COUNT: usize = 7;
    pub const ALL: [Verb; Verb::COUNT] = [
        Verb::CallStart,
        Verb::CallStop,
        Verb::CallRefresh,
        Verb::Register,
        Verb::Subscribers,
        Verb::Admit,
        Verb::Sync,
    ];

    /// The text-protocol spelling, also used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::CallStart => "call-start",
            Verb::CallStop => "call-stop",
            Verb::CallRefresh => "call-refresh",
            Verb::Register => "reg",
            Verb::Subscribers => "subscribers",
            Verb::Admit => "admit",
            Verb::Sync => "sync",
        }
    }
}

impl Event<'_> {
    pub fn verb(&self) -> Verb {
        match self {
            Event::CallStart { .. } => Verb::CallStart,
            Event::CallStop { .. } => Verb::CallStop,
            Event::CallRefresh { .. } => Verb::CallRefresh,
            Event::Register { .. } => Verb::Register,
            Event::Subscribers { .. } => Verb::Subscribers,
            Event::Admit { .. } => Verb::Admit,
            Event::Sync(_) => Verb::Sync,
        }
    }
}

/// The optional per-sender sequence header of a datagram (`seq <sender-id> <n>` in text,
/// the header fields in binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq<'a> {
    /// Opaque sender identity (text: the token as sent; binary: the 8 header bytes).
    pub sender: &'a [u8],
    pub n: u64,
}

/// Why a line, record or datagram was dropped. Low cardinality: used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum Malformed {
    #[error("unknown verb")]
    UnknownVerb = 0,
    #[error("missing field")]
    MissingField = 1,
    #[error("unexpected extra field")]
    ExtraField = 2,
    #[error("invalid number")]
    BadNumber = 3,
    #[error("field longer than 255 bytes")]
    FieldTooLong = 4,
    #[error("empty field (double space or trailing space)")]
    EmptyField = 5,
    #[error("unknown option")]
    BadOption = 6,
    #[error("seq line not first")]
    MisplacedSeq = 7,
    #[error("bad binary header")]
    BadHeader = 8,
    #[error("unsupported binary version")]
    BadVersion = 9,
    #[error("binary record runs past the end")]
    Truncated = 10,
    #[error("binary datagram has bytes after its last record")]
    TrailingBytes = 11,
    #[error("datagram truncated by the receive buffer")]
    Oversize = 12,
}

impl Malformed {
    pub const COUNT: usize = 13;
    pub const ALL: [Malformed; Malformed::COUNT] = [
        Malformed::UnknownVerb,
        Malformed::MissingField,
        Malformed::ExtraField,
        Malformed::BadNumber,
        Malformed::FieldTooLong,
        Malformed::EmptyField,
        Malformed::BadOption,
        Malformed::MisplacedSeq,
        Malformed::BadHeader,
        Malformed::BadVersion,
        Malformed::Truncated,
        Malformed::TrailingBytes,
        Malformed::Oversize,
    ];

    /// Metric label (`reason="…"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::UnknownVerb => "unknown_verb",
            Malformed::MissingField => "missing_field",
            Malformed::ExtraField => "extra_field",
            Malformed::BadNumber => "bad_number",
            Malformed::FieldTooLong => "field_too_long",
            Malformed::EmptyField => "empty_field",
            Malformed::BadOption => "bad_option",
            Malformed::MisplacedSeq => "misplaced_seq",
            Malformed::BadHeader => "bad_header",
            Malformed::BadVersion => "bad_version",
            Malformed::Truncated => "truncated",
            Malformed::TrailingBytes => "trailing_bytes",
            Malformed::Oversize => "oversize",
        }
    }
}

/// Why an event could not be encoded. Decoding never returns this; it reports [`Malformed`].
///
/// `field` names the offending field: `call_id`, `from_tag`, `aor`, `contact`, `sender` or
/// `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is empty")]
    EmptyField { field: &'static str },
    #[error("{field} is longer than 255 bytes ({len})")]
    FieldTooLong { field: &'static str, len: usize },
    /// Text only: a field may not contain a space, CR or LF (they delimit fields and lines).
    #[error("{field} contains a space, CR or LF")]
    ForbiddenByte { field: &'static str },
    /// A number the decoder would refuse (`count` above [`SUBSCRIBERS_MAX`]).
    #[error("{field} is out of range")]
    OutOfRange { field: &'static str },
    /// The datagram being built has no room for this event (size or record count limit):
    /// send it and start a new one.
    #[error("batch full")]
    BatchFull,
    /// Binary only: `sync-*` lines exist in the text protocol only.
    #[error("sync lines are text only")]
    TextOnly,
}

/// A decoded datagram: its optional sequence header and an iterator over its events.
#[derive(Debug, Clone)]
pub struct Datagram<'a> {
    pub seq: Option<Seq<'a>>,
    pub events: Events<'a>,
}

/// Iterator over the events of one datagram, whichever its format.
#[derive(Debug, Clone)]
pub enum Events<'a> {
    Text(text::Lines<'a>),
    Binary(binary::Records<'a>),
    /// The datagram was rejected as a whole (bad binary header): yields this one error once.
    Rejected(Option<Malformed>),
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<Event<'a>, Malformed>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Events::Text(lines) => lines.next(),
            Events::Binary(records) => records.next(),
            Events::Rejected(reason) => reason.take().map(Err),
        }
    }
}

/// Decodes one datagram, choosing the format by its first byte: [`binary::MAGIC`] starts a
/// binary batch, anything else is text.
#[inline]
pub fn decode(datagram: &[u8]) -> Datagram<'_> {
    if datagram.first() == Some(&binary::MAGIC[0]) {
        binary::decode(datagram)
    } else {
        text::decode(datagram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_all_is_indexed_by_discriminant_and_labels_are_unique() {
        for (i, reason) in Malformed::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        let mut labels: Vec<_> = Malformed::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Malformed::COUNT);
    }

    #[test]
    fn verb_all_is_indexed_by_discriminant() {
        for (i, verb) in Verb::ALL.iter().enumerate() {
            assert_eq!(*verb as usize, i);
        }
    }

    #[test]
    fn decode_dispatches_on_the_first_byte() {
        assert!(matches!(decode(b"call-stop a").events, Events::Text(_)));
        assert!(matches!(decode(b"").events, Events::Text(_)));
        assert!(matches!(
            decode(&[0xFF]).events,
            Events::Rejected(Some(Malformed::BadHeader))
        ));
    }
}
