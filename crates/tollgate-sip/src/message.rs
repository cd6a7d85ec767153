//! The SIP message parser: zero-copy over the message bytes, sufficient for metering, not a
//! full RFC 3261 stack.
//!
//! What it reads:
//! - the start line: a request (`METHOD SP Request-URI SP SIP/2.0`) or a status line
//!   (`SIP/2.0 SP code SP reason`; the reason may be missing);
//! - header lines `name: value`, names compared case-insensitively, with the compact forms
//!   `i` Call-ID, `f` From, `t` To, `m` Contact, `v` Via, `x` Session-Expires,
//!   `l` Content-Length (Via and Content-Length are recognised, not used);
//! - the mandatory Call-ID, From, To and CSeq (a message without one of them is
//!   [`SipError::MissingHeader`]; when one appears twice, the first wins), the From and To
//!   tags, the CSeq number and method, Expires, Session-Expires with `;refresher=`;
//! - the Contact list, lazily ([`SipMessage::contacts`]): several Contact headers and
//!   comma-separated lists, `*`, `name-addr` with quoted display names (which may hold
//!   commas), `addr-spec`, and each contact's `;expires=`.
//!
//! Rules and tolerances, documented because they decide what counts:
//! - Lines end in CRLF; a bare LF is accepted too. Leading empty lines (keep-alives) are
//!   skipped. The header section ends at the first empty line, or at the end of the input
//!   (a message cut after its headers still parses). The body is never read.
//! - **Folded lines are tolerated**: a line starting with a space or a tab continues the
//!   previous header (RFC 3261 §7.3.1). The value slice then spans the fold, and the value
//!   parsers treat CR and LF like spaces. A Call-ID may not contain whitespace.
//! - A header line without a colon, or with a name that is not a token, is
//!   [`SipError::BadHeaderLine`]. At most [`HEADER_COUNT_MAX`] header lines are read
//!   ([`SipError::TooManyHeaders`] beyond).
//! - An Expires or Session-Expires value that is not delta-seconds is ignored (`None`), not
//!   an error: a malformed Expires on an INVITE must not lose the call. Numbers above
//!   `u32::MAX` saturate, as RFC 3261 says for Expires.
//! - Contacts are checked only when asked for: an error in a Contact header does not stop
//!   the message from counting as a call. At most [`CONTACT_COUNT_MAX`] contacts are read
//!   ([`SipError::TooManyContacts`] beyond).
//! - Methods are case-sensitive (RFC 3261); `SIP/2.0` is not.

/// Most header lines read from one message.
pub const HEADER_COUNT_MAX: usize = 128;

/// Most contacts read from one message, all Contact headers together.
pub const CONTACT_COUNT_MAX: usize = 32;

/// Why a message could not be parsed. Low cardinality: [`SipError::as_str`] is a metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SipError {
    #[error("empty message")]
    Empty,
    #[error("malformed start line")]
    BadStartLine,
    #[error("header line without a colon or with a bad name")]
    BadHeaderLine,
    #[error("more than {HEADER_COUNT_MAX} header lines")]
    TooManyHeaders,
    #[error("no {name} header")]
    MissingHeader { name: &'static str },
    #[error("malformed {name} header")]
    BadHeader { name: &'static str },
    #[error("malformed contact")]
    BadContact,
    #[error("more than {CONTACT_COUNT_MAX} contacts")]
    TooManyContacts,
}

impl SipError {
    /// Number of distinct labels, for arrays of counters indexed by [`SipError::index`].
    pub const COUNT: usize = 8;
    /// The labels, indexed by [`SipError::index`].
    pub const LABELS: [&'static str; SipError::COUNT] = [
        "empty",
        "bad_start_line",
        "bad_header_line",
        "too_many_headers",
        "missing_header",
        "bad_header",
        "bad_contact",
        "too_many_contacts",
    ];

    pub fn index(self) -> usize {
        match self {
            SipError::Empty => 0,
            SipError::BadStartLine => 1,
            SipError::BadHeaderLine => 2,
            SipError::TooManyHeaders => 3,
            SipError::MissingHeader { .. } => 4,
            SipError::BadHeader { .. } => 5,
            SipError::BadContact => 6,
            SipError::TooManyContacts => 7,
        }
    }

    /// Metric label (`reason="…"`).
    pub fn as_str(self) -> &'static str {
        SipError::LABELS[self.index()]
    }
}

/// A SIP method. Methods are case-sensitive: `invite` is `Other(b"invite")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Update,
    Options,
    Prack,
    Info,
    Refer,
    Subscribe,
    Notify,
    Message,
    Publish,
    Other(&'a [u8]),
}

impl<'a> Method<'a> {
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        match bytes {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"UPDATE" => Method::Update,
            b"OPTIONS" => Method::Options,
            b"PRACK" => Method::Prack,
            b"INFO" => Method::Info,
            b"REFER" => Method::Refer,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            other => Method::Other(other),
        }
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Method::Invite => b"INVITE",
            Method::Ack => b"ACK",
            Method::Bye => b"BYE",
            Method::Cancel => b"CANCEL",
            Method::Register => b"REGISTER",
            Method::Update => b"UPDATE",
            Method::Options => b"OPTIONS",
            Method::Prack => b"PRACK",
            Method::Info => b"INFO",
            Method::Refer => b"REFER",
            Method::Subscribe => b"SUBSCRIBE",
            Method::Notify => b"NOTIFY",
            Method::Message => b"MESSAGE",
            Method::Publish => b"PUBLISH",
            Method::Other(bytes) => bytes,
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: Method<'a>, uri: &'a [u8] },
    Response { code: u16, reason: &'a [u8] },
}

/// The URI (without angle brackets) and the tag of a From or To header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub uri: &'a [u8],
    /// The `;tag=` parameter; `None` when absent or empty.
    pub tag: Option<&'a [u8]>,
}

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: Method<'a>,
}

/// Who refreshes the session (RFC 4028 `;refresher=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

/// The Session-Expires header (RFC 4028).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub delta_s: u32,
    pub refresher: Option<Refresher>,
}

/// One element of the Contact list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `Contact: *` (all bindings, in a REGISTER that removes them).
    Star,
    /// A contact URI (without angle brackets) and its `;expires=` parameter.
    Uri { uri: &'a [u8], expires: Option<u32> },
}

/// A parsed message, borrowing from the input. See the module doc for what is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipMessage<'a> {
    pub start: StartLine<'a>,
    pub call_id: &'a [u8],
    pub from: NameAddr<'a>,
    pub to: NameAddr<'a>,
    pub cseq: CSeq<'a>,
    pub expires: Option<u32>,
    pub session_expires: Option<SessionExpires>,
    /// Header lines read (a folded header is one).
    pub header_count: usize,
    /// Everything after the start line; [`Headers`] stops at the empty line.
    header_section: &'a [u8],
}

impl<'a> SipMessage<'a> {
    /// Parses one message. Never panics; never allocates.
    pub fn parse(input: &'a [u8]) -> Result<Self, SipError> {
        parse(input)
    }

    /// The request method, for a request.
    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI, for a request.
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, for a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Request { .. } => None,
            StartLine::Response { code, .. } => Some(code),
        }
    }

    /// All header lines again, in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            rest: self.header_section,
        }
    }

    /// The Contact list, in order, from every Contact header. An error ends the iteration.
    pub fn contacts(&self) -> Contacts<'a> {
        Contacts {
            headers: self.headers(),
            current: &[],
            count: 0,
            done: false,
        }
    }
}

/// One header line: its name as sent and its value with surrounding whitespace removed (a
/// folded value spans its line breaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// The headers this parser knows, by full or compact name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    CallId,
    From,
    To,
    CSeq,
    Contact,
    Via,
    Expires,
    SessionExpires,
    ContentLength,
    Other,
}

impl Header<'_> {
    pub fn kind(&self) -> HeaderKind {
        header_kind(self.name)
    }
}

fn header_kind(name: &[u8]) -> HeaderKind {
    if let [c] = name {
        return match c.to_ascii_lowercase() {
            b'i' => HeaderKind::CallId,
            b'f' => HeaderKind::From,
            b't' => HeaderKind::To,
            b'm' => HeaderKind::Contact,
            b'v' => HeaderKind::Via,
            b'x' => HeaderKind::SessionExpires,
            b'l' => HeaderKind::ContentLength,
            _ => HeaderKind::Other,
        };
    }
    // By length first: one comparison for most names.
    let candidates: &[(&[u8], HeaderKind)] = match name.len() {
        2 => &[(b"to", HeaderKind::To)],
        3 => &[(b"via", HeaderKind::Via)],
        4 => &[(b"from", HeaderKind::From), (b"cseq", HeaderKind::CSeq)],
        7 => &[
            (b"call-id", HeaderKind::CallId),
            (b"contact", HeaderKind::Contact),
            (b"expires", HeaderKind::Expires),
        ],
        14 => &[(b"content-length", HeaderKind::ContentLength)],
        15 => &[(b"session-expires", HeaderKind::SessionExpires)],
        _ => &[],
    };
    candidates
        .iter()
        .find(|(full, _)| eq_folded(name, full))
        .map_or(HeaderKind::Other, |&(_, kind)| kind)
}

/// Whether token `name` equals `lower` (lowercase letters and `-`) ignoring ASCII case:
/// `b | 0x20` lowercases a letter and leaves `-` alone, and no other token byte maps onto a
/// lowercase letter or `-`.
#[inline]
fn eq_folded(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).all(|(&b, &l)| b | 0x20 == l)
}

/// Iterator over header lines, ending at the empty line that ends the header section (or
/// at the end of the input). A malformed line yields one error, then the iteration ends.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<Header<'a>, SipError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        if rest.is_empty() {
            return None;
        }
        let (mut end, mut next) = line_end(rest, 0);
        if end == 0 {
            // The empty line: the body follows.
            self.rest = &[];
            return None;
        }
        while matches!(rest.get(next), Some(b' ' | b'\t')) {
            (end, next) = line_end(rest, next);
        }
        self.rest = rest.get(next..).unwrap_or_default();
        let line = &rest[..end];
        // `token *(SP / HTAB) ":" value`
        let parsed = (|| {
            let name_len = line.iter().take_while(|&&b| is_token(b)).count();
            let (name, rest) = line.split_at(name_len);
            let blanks = rest
                .iter()
                .take_while(|&&b| matches!(b, b' ' | b'\t'))
                .count();
            let value = rest[blanks..].strip_prefix(b":")?;
            if name.is_empty() {
                return None;
            }
            Some(Header {
                name,
                value: trim_lws(value),
            })
        })();
        match parsed {
            Some(header) => Some(Ok(header)),
            None => {
                self.rest = &[];
                Some(Err(SipError::BadHeaderLine))
            }
        }
    }
}

/// Where the line starting at `from` ends: (end of its content, start of the next line).
fn line_end(s: &[u8], from: usize) -> (usize, usize) {
    let tail = s.get(from..).unwrap_or_default();
    match find_lf(tail) {
        Some(i) => {
            let lf = from + i;
            let end = if i > 0 && s[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            (end, lf + 1)
        }
        None => {
            let end = if tail.last() == Some(&b'\r') {
                s.len() - 1
            } else {
                s.len()
            };
            (end, s.len())
        }
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Index of the first LF in `hay`, eight bytes at a time (SWAR, std only and safe): with
/// `x` a little-endian word XORed with repeated LFs, `(x - 0x0101…) & !x & 0x8080…` marks
/// the zero bytes of `x`, the lowest mark exactly (higher ones may be borrow artefacts).
fn find_lf(hay: &[u8]) -> Option<usize> {
    const LF: u64 = LO * b'\n' as u64;
    let (chunks, tail) = hay.as_chunks::<8>();
    for (i, chunk) in chunks.iter().enumerate() {
        let x = u64::from_le_bytes(*chunk) ^ LF;
        let hits = x.wrapping_sub(LO) & !x & HI;
        if hits != 0 {
            return Some(i * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let j = tail.iter().position(|&b| b == b'\n')?;
    Some(chunks.len() * 8 + j)
}

/// Parses one message (see the module doc).
pub fn parse(input: &[u8]) -> Result<SipMessage<'_>, SipError> {
    let mut s = input;
    while let [b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    if s.is_empty() {
        return Err(SipError::Empty);
    }
    let (end, next) = line_end(s, 0);
    let start = start_line(&s[..end])?;
    let header_section = s.get(next..).unwrap_or_default();

    let mut call_id = None;
    let mut from = None;
    let mut to = None;
    let mut cseq = None;
    let mut expires = None;
    let mut session_expires = None;
    let mut header_count = 0;
    for header in (Headers {
        rest: header_section,
    }) {
        let header = header?;
        header_count += 1;
        if header_count > HEADER_COUNT_MAX {
            return Err(SipError::TooManyHeaders);
        }
        let value = header.value;
        match header.kind() {
            HeaderKind::CallId if call_id.is_none() => {
                if value.is_empty() || value.iter().any(|&b| is_lws(b)) {
                    return Err(SipError::BadHeader { name: "call-id" });
                }
                call_id = Some(value);
            }
            HeaderKind::From if from.is_none() => {
                from = Some(name_addr(value).ok_or(SipError::BadHeader { name: "from" })?);
            }
            HeaderKind::To if to.is_none() => {
                to = Some(name_addr(value).ok_or(SipError::BadHeader { name: "to" })?);
            }
            HeaderKind::CSeq if cseq.is_none() => {
                cseq = Some(parse_cseq(value).ok_or(SipError::BadHeader { name: "cseq" })?);
            }
            HeaderKind::Expires if expires.is_none() => expires = Some(delta_seconds(value)),
            HeaderKind::SessionExpires if session_expires.is_none() => {
                session_expires = Some(parse_session_expires(value));
            }
            _ => {}
        }
    }
    Ok(SipMessage {
        start,
        call_id: call_id.ok_or(SipError::MissingHeader { name: "call-id" })?,
        from: from.ok_or(SipError::MissingHeader { name: "from" })?,
        to: to.ok_or(SipError::MissingHeader { name: "to" })?,
        cseq: cseq.ok_or(SipError::MissingHeader { name: "cseq" })?,
        expires: expires.flatten(),
        session_expires: session_expires.flatten(),
        header_count,
        header_section,
    })
}

fn start_line(line: &[u8]) -> Result<StartLine<'_>, SipError> {
    const VERSION: &[u8] = b"SIP/2.0";
    let bad = SipError::BadStartLine;
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let (version, rest) = split_sp(line).ok_or(bad)?;
        if !version.eq_ignore_ascii_case(VERSION) {
            return Err(bad);
        }
        let (code, reason) = split_sp(rest).unwrap_or((rest, &[]));
        let [a, b, c] = *code else { return Err(bad) };
        if ![a, b, c].iter().all(u8::is_ascii_digit) || !(b'1'..=b'6').contains(&a) {
            return Err(bad);
        }
        let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
        return Ok(StartLine::Response { code, reason });
    }
    let (method, rest) = split_sp(line).ok_or(bad)?;
    let (uri, version) = split_sp(rest).ok_or(bad)?;
    if method.is_empty()
        || !method.iter().all(|&b| is_token(b))
        || uri.is_empty()
        || uri.iter().any(|&b| is_lws(b))
        || !version.eq_ignore_ascii_case(VERSION)
    {
        return Err(bad);
    }
    Ok(StartLine::Request {
        method: Method::from_bytes(method),
        uri,
    })
}

/// Splits at the first space.
fn split_sp(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b' ')?;
    Some((&s[..i], &s[i + 1..]))
}

fn parse_cseq(value: &[u8]) -> Option<CSeq<'_>> {
    let digits_len = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let (digits, rest) = value.split_at(digits_len);
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let seq = u32::try_from(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
    .ok()?;
    if !rest.first().copied().is_some_and(is_lws) {
        return None;
    }
    let method = trim_lws(rest);
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return None;
    }
    Some(CSeq {
        seq,
        method: Method::from_bytes(method),
    })
}

/// Delta-seconds, saturating at `u32::MAX`; `None` unless the value is digits only.
fn delta_seconds(value: &[u8]) -> Option<u32> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u32, |n, &d| {
        n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    }))
}

fn parse_session_expires(value: &[u8]) -> Option<SessionExpires> {
    let digits_len = value.iter().take_while(|b| b.is_ascii_digit()).count();
    let (digits, rest) = value.split_at(digits_len);
    let delta_s = delta_seconds(digits)?;
    let (params, rest) = params(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let refresher = match param(params, b"refresher") {
        Some(Some(v)) if v.eq_ignore_ascii_case(b"uac") => Some(Refresher::Uac),
        Some(Some(v)) if v.eq_ignore_ascii_case(b"uas") => Some(Refresher::Uas),
        _ => None,
    };
    Some(SessionExpires { delta_s, refresher })
}

fn name_addr(value: &[u8]) -> Option<NameAddr<'_>> {
    let (address, rest) = address(value)?;
    if !rest.is_empty() {
        return None;
    }
    Some(NameAddr {
        uri: address.uri,
        tag: param(address.params, b"tag").flatten(),
    })
}

/// One `name-addr` or `addr-spec` with its header parameters.
#[derive(Debug, Clone, Copy)]
struct Address<'a> {
    uri: &'a [u8],
    /// `*( ";" param )`, whitespace included, validated.
    params: &'a [u8],
}

/// Reads one address at the start of `s` (after optional whitespace). Returns it and what
/// follows: nothing, or a comma and the rest of a list.
fn address(s: &[u8]) -> Option<(Address<'_>, &[u8])> {
    let s = skip_lws(s);
    let (uri, after) = match s.first()? {
        b'"' => {
            let after_name = skip_lws(skip_quoted(s)?);
            angle(after_name.strip_prefix(b"<")?)?
        }
        _ => match s
            .iter()
            .position(|&b| matches!(b, b'<' | b',' | b';' | b'"'))
        {
            Some(i) if s[i] == b'<' => angle(&s[i + 1..])?,
            Some(i) if s[i] == b'"' => return None,
            _ => {
                let end = s
                    .iter()
                    .position(|&b| matches!(b, b';' | b',') || is_lws(b))
                    .unwrap_or(s.len());
                s.split_at(end)
            }
        },
    };
    if uri.is_empty() {
        return None;
    }
    let (params, rest) = params(after)?;
    Some((Address { uri, params }, rest))
}

/// The URI up to `>` (whitespace trimmed), and what follows the `>`.
fn angle(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = s.iter().position(|&b| b == b'>')?;
    Some((trim_lws(&s[..end]), &s[end + 1..]))
}

/// Skips a quoted string (with backslash escapes) at the start of `s`.
fn skip_quoted(s: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    loop {
        match s.get(i)? {
            b'\\' => i += 2,
            b'"' => return s.get(i + 1..),
            _ => i += 1,
        }
    }
}

/// Validates `*( LWS ";" param )` at the start of `s`, up to a comma or the end. Returns
/// the parameters and the rest (empty or starting with a comma).
fn params(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut rest = s;
    loop {
        let t = skip_lws(rest);
        match t.first() {
            None | Some(b',') => {
                let params = &s[..s.len() - rest.len()];
                return Some((params, t));
            }
            Some(b';') => rest = next_param(&t[1..])?.2,
            Some(_) => return None,
        }
    }
}

/// One parameter after its `;`: name, optional value (quotes removed), and the rest.
#[allow(clippy::type_complexity)]
fn next_param(s: &[u8]) -> Option<(&[u8], Option<&[u8]>, &[u8])> {
    let s = skip_lws(s);
    let name_len = s.iter().take_while(|&&b| is_token(b)).count();
    if name_len == 0 {
        return None;
    }
    let (name, rest) = s.split_at(name_len);
    let after_name = skip_lws(rest);
    let Some(after_eq) = after_name.strip_prefix(b"=") else {
        return Some((name, None, rest));
    };
    let v = skip_lws(after_eq);
    if v.first() == Some(&b'"') {
        let rest = skip_quoted(v)?;
        let quoted = &v[..v.len() - rest.len()];
        return Some((name, Some(&quoted[1..quoted.len() - 1]), rest));
    }
    let value_len = v
        .iter()
        .take_while(|&&b| !matches!(b, b';' | b',' | b'"') && !is_lws(b))
        .count();
    if value_len == 0 {
        return None;
    }
    Some((name, Some(&v[..value_len]), &v[value_len..]))
}

/// The value of parameter `name` (case-insensitive) in validated `params`: `None` when
/// absent, `Some(None)` when present without a value.
fn param<'a>(params: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    let mut rest = params;
    loop {
        rest = skip_lws(rest).strip_prefix(b";")?;
        let (n, value, after) = next_param(rest)?;
        if n.eq_ignore_ascii_case(name) {
            return Some(value.filter(|v| !v.is_empty()));
        }
        rest = after;
    }
}

/// Iterator over the Contact list of a message ([`SipMessage::contacts`]).
#[derive(Debug, Clone)]
pub struct Contacts<'a> {
    headers: Headers<'a>,
    /// What is left of the current Contact header's list.
    current: &'a [u8],
    count: usize,
    done: bool,
}

impl<'a> Contacts<'a> {
    fn fail(&mut self, error: SipError) -> Option<Result<Contact<'a>, SipError>> {
        self.done = true;
        Some(Err(error))
    }

    fn counted(&mut self, contact: Contact<'a>) -> Option<Result<Contact<'a>, SipError>> {
        self.count += 1;
        if self.count > CONTACT_COUNT_MAX {
            return self.fail(SipError::TooManyContacts);
        }
        Some(Ok(contact))
    }
}

impl<'a> Iterator for Contacts<'a> {
    type Item = Result<Contact<'a>, SipError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let current = skip_lws(self.current);
            if let Some(rest) = current.strip_prefix(b",") {
                self.current = rest; // a separator (or an empty list element)
                continue;
            }
            if !current.is_empty() {
                let Some((address, rest)) = address(current) else {
                    return self.fail(SipError::BadContact);
                };
                self.current = rest;
                let expires = match param(address.params, b"expires") {
                    None => None,
                    Some(value) => match value.and_then(delta_seconds) {
                        Some(expires) => Some(expires),
                        None => return self.fail(SipError::BadContact),
                    },
                };
                return self.counted(Contact::Uri {
                    uri: address.uri,
                    expires,
                });
            }
            match self.headers.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(error)) => return self.fail(error),
                Some(Ok(header)) if header.kind() == HeaderKind::Contact => {
                    if header.value == b"*" {
                        return self.counted(Contact::Star);
                    }
                    self.current = header.value;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 `token` characters: alphanumerics and `-.!%*_+`'~`.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    table
};

#[inline]
fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

fn skip_lws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_lws(b)).count();
    &s[n..]
}

fn trim_lws(s: &[u8]) -> &[u8] {
    let s = skip_lws(s);
    let n = s.iter().rev().take_while(|&&b| is_lws(b)).count();
    &s[..s.len() - n]
}

#[cfg(test)]
mod tests;
