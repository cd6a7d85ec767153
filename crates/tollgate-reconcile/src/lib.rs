//! Sans-IO parsers of a SIP proxy's own lists: its dialogs and its registered contacts, as
//! the proxy answers them over JSON-RPC.
//!
//! | proxy | dialogs | contacts | transport |
//! | --- | --- | --- | --- |
//! | Kamailio 5.x | `dlg.list` | `ul.dump` | `jsonrpcs` over `xhttp` |
//! | OpenSIPS 3.x | `dlg_list` | `ul_dump` | MI over `mi_http` (JSON-RPC 2.0) |
//!
//! [`request`] builds the request body; [`parse`] reads an answer **as a stream** (any
//! [`std::io::Read`]: the IO layer feeds it the HTTP body chunk by chunk) and hands every
//! confirmed dialog and live contact to a [`ListSink`] as it goes, keeping nothing but the
//! entry being read. So a 100 000-dialog answer (tens of MB) never exists as a JSON tree.
//!
//! What counts (exactly what the event paths count):
//! - a dialog in state 3 (confirmed, not yet acknowledged) or 4 (confirmed); states 1–2
//!   (not answered) and 5 (deleted, kept a moment by the proxy) are skipped. It is keyed by
//!   Call-ID and the caller's From-tag (Kamailio `call-id` + `caller.tag`, OpenSIPS `callid`
//!   + `caller_tag`), as the integration guides send `call-start <call-id> tag=<from-tag>`;
//! - its emergency flag: Kamailio's dialog variable `emergency` (`$dlg_var(emergency)`,
//!   anything but empty or `0` is emergency); when the answer has no such variable the flag
//!   is unknown (`None`) and the agent keeps its own;
//! - a contact whose `Expires` is a number of seconds left (> 0) or `permanent`; `expired`
//!   and `deleted` contacts are skipped. Every usrloc domain (table) is read.
//!
//! **Bounds.** At most [`Limits::entries_max`] dialogs plus contacts per answer
//! ([`ParseError::TooLarge`] past it); fields longer than [`FIELD_LEN_MAX`] (which no event
//! can carry either) are skipped and counted; nesting is bounded by serde_json's recursion
//! limit; the IO layer bounds the bytes. Any answer that is not the documented shape is
//! [`ParseError::Garbage`]: the IO layer then changes nothing. The parsers are fuzzed
//! (`fuzz/fuzz_targets/reconcile_answer.rs`).
//!
//! **What this crate deliberately lacks:** sockets, HTTP, clocks, the tables. It turns bytes
//! into list entries; `tollgate-usage` does the diff, `tollgate-agent` the IO.

use std::fmt;
use std::io::Read;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tollgate_events::{CallRef, FIELD_LEN_MAX};

/// Which proxy answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    Kamailio,
    Opensips,
}

impl ProxyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Kamailio => "kamailio",
            ProxyKind::Opensips => "opensips",
        }
    }
}

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Dialogs,
    Contacts,
}

/// The JSON-RPC method of a list.
pub fn method(proxy: ProxyKind, list: ListKind) -> &'static str {
    match (proxy, list) {
        (ProxyKind::Kamailio, ListKind::Dialogs) => "dlg.list",
        (ProxyKind::Kamailio, ListKind::Contacts) => "ul.dump",
        (ProxyKind::Opensips, ListKind::Dialogs) => "dlg_list",
        (ProxyKind::Opensips, ListKind::Contacts) => "ul_dump",
    }
}

/// The JSON-RPC 2.0 request body asking for a list.
pub fn request(proxy: ProxyKind, list: ListKind) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"{}","id":1}}"#,
        method(proxy, list)
    )
}

/// When a listed contact expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    /// In this many seconds (at least 1).
    In(u32),
    /// Never (a static contact).
    Permanent,
}

/// Receives the entries of a list as they are parsed.
pub trait ListSink {
    /// A confirmed dialog; `emergency` is `None` when the answer does not say.
    fn call(&mut self, call: CallRef<'_>, emergency: Option<bool>);
    /// A live contact of an AoR.
    fn contact(&mut self, aor: &[u8], contact: &[u8], expires: Expires);
}

/// Bounds of one answer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most dialogs plus contacts (skipped ones included).
    pub entries_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries_max: 4_000_000,
        }
    }
}

/// What one answer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parsed {
    /// Entries read (dialogs or contacts), whatever their state.
    pub entries: u64,
    /// Entries handed to the sink.
    pub listed: u64,
    /// Entries skipped: not confirmed, expired or deleted, or with a field over 255 bytes.
    pub skipped: u64,
}

/// Why an answer was not used. Whatever the reason, nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The proxy answered a JSON-RPC error (e.g. the module is not loaded).
    #[error("the proxy answered error {code}: {message}")]
    Rpc { code: i64, message: String },
    /// Not JSON, or not the documented shape.
    #[error("unexpected answer: {0}")]
    Garbage(String),
    /// More than [`Limits::entries_max`] entries.
    #[error("more than {0} entries")]
    TooLarge(u64),
    /// The reader failed (the connection broke, the byte limit was reached).
    #[error("reading the answer: {0}")]
    Io(String),
}

impl ParseError {
    /// Low-cardinality label (`result` of `tollgate_reconcile_runs_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            ParseError::Rpc { .. } => "rpc_error",
            ParseError::Garbage(_) => "garbage",
            ParseError::TooLarge(_) => "too_large",
            ParseError::Io(_) => "io",
        }
    }
}

/// Parses one answer of `proxy` to the `list` request, streaming from `reader`.
pub fn parse(
    proxy: ProxyKind,
    list: ListKind,
    reader: impl Read,
    sink: &mut dyn ListSink,
    limits: Limits,
) -> Result<Parsed, ParseError> {
    let mut ctx = Ctx {
        sink,
        limits,
        parsed: Parsed::default(),
        too_large: false,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let outcome = Envelope {
        ctx: &mut ctx,
        proxy,
        list,
    }
    .deserialize(&mut de)
    .and_then(|outcome| de.end().map(|()| outcome));
    match outcome {
        Ok(Ok(())) => Ok(ctx.parsed),
        Ok(Err(rpc)) => Err(rpc),
        Err(_) if ctx.too_large => Err(ParseError::TooLarge(limits.entries_max)),
        Err(e) if e.is_io() => Err(ParseError::Io(e.to_string())),
        Err(e) => Err(ParseError::Garbage(e.to_string())),
    }
}

struct Ctx<'s> {
    sink: &'s mut dyn ListSink,
    limits: Limits,
    parsed: Parsed,
    too_large: bool,
}

impl Ctx<'_> {
    /// Counts one entry; false (and the parse stops) past the bound.
    fn entry(&mut self) -> bool {
        self.parsed.entries += 1;
        if self.parsed.entries > self.limits.entries_max {
            self.too_large = true;
            return false;
        }
        true
    }
}

fn too_large<E: de::Error>() -> E {
    E::custom("too many entries")
}

/// A map key, matched against the names a visitor wants (index), without allocating.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|name| *name == v))
    }
}

/// A JSON-RPC 2.0 response: `result` goes to the list's visitor, `error` is the answer.
struct Envelope<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    proxy: ProxyKind,
    list: ListKind,
}

impl<'de> DeserializeSeed<'de> for Envelope<'_, '_> {
    type Value = Result<(), ParseError>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

#[derive(serde::Deserialize)]
struct RpcError {
    code: i64,
    #[serde(default)]
    message: String,
}

impl<'de> Visitor<'de> for Envelope<'_, '_> {
    type Value = Result<(), ParseError>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC response object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut result = None;
        let mut error = None;
        while let Some(key) = map.next_key_seed(Key(&["result", "error"]))? {
            match key {
                Some(0) if result.is_none() => {
                    let seed = ResultSeed {
                        ctx: &mut *self.ctx,
                        proxy: self.proxy,
                        list: self.list,
                    };
                    map.next_value_seed(seed)?;
                    result = Some(());
                }
                Some(1) if error.is_none() => error = Some(map.next_value::<RpcError>()?),
                Some(_) => return Err(de::Error::custom("duplicate key")),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (result, error) {
            (_, Some(e)) => Ok(Err(ParseError::Rpc {
                code: e.code,
                message: e.message.chars().take(200).collect(),
            })),
            (Some(()), None) => Ok(Ok(())),
            (None, None) => Err(de::Error::custom("neither result nor error")),
        }
    }
}

/// The `result` member, by proxy and list.
struct ResultSeed<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    proxy: ProxyKind,
    list: ListKind,
}

impl<'de> DeserializeSeed<'de> for ResultSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match (self.proxy, self.list) {
            // [ {dialog}, … ]
            (ProxyKind::Kamailio, ListKind::Dialogs) => d.deserialize_seq(Each {
                ctx: self.ctx,
                item: Item::KamailioDialog,
            }),
            // {"Dialogs": [ {dialog}, … ], "count"?: n}
            (ProxyKind::Opensips, ListKind::Dialogs) => d.deserialize_map(Member {
                ctx: self.ctx,
                key: "Dialogs",
                then: Then::Each(Item::OpensipsDialog),
            }),
            // {"Domains": [ {"Domain": {"AoRs": [ {"Info": {aor}} ]}} ]}
            (ProxyKind::Kamailio, ListKind::Contacts) => d.deserialize_map(Member {
                ctx: self.ctx,
                key: "Domains",
                then: Then::Each(Item::KamailioDomainWrapper),
            }),
            // {"Domains": [ {"name": …, "AORs": [ {aor} ]} ]}
            (ProxyKind::Opensips, ListKind::Contacts) => d.deserialize_map(Member {
                ctx: self.ctx,
                key: "Domains",
                then: Then::Each(Item::OpensipsDomain),
            }),
        }
    }
}

/// What the elements of an array (or the value of a member) are.
#[derive(Debug, Clone, Copy)]
enum Item {
    KamailioDialog,
    OpensipsDialog,
    /// `{"Domain": {…}}`
    KamailioDomainWrapper,
    /// `{"Domain": …, "AoRs": [ {"Info": …} ]}`
    KamailioDomain,
    /// `{"Info": {aor}}`
    KamailioAorWrapper,
    /// `{"AoR": …, "Contacts": […]}`
    KamailioAorInfo,
    OpensipsDomain,
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Each(Item),
    One(Item),
}

/// An object of which one member matters; the rest is skipped.
struct Member<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    key: &'static str,
    then: Then,
}

impl<'de> Visitor<'de> for Member<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object with {:?}", self.key)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let keys: &'static [&'static str] = match self.key {
            "Dialogs" => &["Dialogs"],
            "Domains" => &["Domains"],
            "Domain" => &["Domain"],
            "AoRs" => &["AoRs"],
            "Info" => &["Info"],
            _ => &[],
        };
        let mut seen = false;
        while let Some(key) = map.next_key_seed(Key(keys))? {
            match key {
                Some(_) if !seen => {
                    seen = true;
                    match self.then {
                        Then::Each(item) => map.next_value_seed(EachSeed {
                            ctx: &mut *self.ctx,
                            item,
                        })?,
                        Then::One(item) => map.next_value_seed(OneSeed {
                            ctx: &mut *self.ctx,
                            item,
                        })?,
                    }
                }
                Some(_) => return Err(de::Error::custom("duplicate key")),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !seen {
            return Err(de::Error::custom(format_args!("missing {:?}", self.key)));
        }
        Ok(())
    }
}

struct EachSeed<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    item: Item,
}

impl<'de> DeserializeSeed<'de> for EachSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(Each {
            ctx: self.ctx,
            item: self.item,
        })
    }
}

/// An array whose elements are all `item`.
struct Each<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    item: Item,
}

impl<'de> Visitor<'de> for Each<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(OneSeed {
                ctx: &mut *self.ctx,
                item: self.item,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct OneSeed<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    item: Item,
}

impl<'de> DeserializeSeed<'de> for OneSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let ctx = self.ctx;
        match self.item {
            Item::KamailioDialog => d.deserialize_map(Dialog {
                ctx,
                proxy: ProxyKind::Kamailio,
            }),
            Item::OpensipsDialog => d.deserialize_map(Dialog {
                ctx,
                proxy: ProxyKind::Opensips,
            }),
            Item::KamailioDomainWrapper => d.deserialize_map(Member {
                ctx,
                key: "Domain",
                then: Then::One(Item::KamailioDomain),
            }),
            Item::KamailioDomain => d.deserialize_map(Member {
                ctx,
                key: "AoRs",
                then: Then::Each(Item::KamailioAorWrapper),
            }),
            Item::KamailioAorWrapper => d.deserialize_map(Member {
                ctx,
                key: "Info",
                then: Then::One(Item::KamailioAorInfo),
            }),
            Item::KamailioAorInfo => d.deserialize_map(Aor {
                ctx,
                proxy: ProxyKind::Kamailio,
            }),
            Item::OpensipsDomain => d.deserialize_map(OpensipsDomain { ctx }),
        }
    }
}

/// A string field, or `None` if longer than [`FIELD_LEN_MAX`] or empty.
fn field(s: String) -> Option<String> {
    (!s.is_empty() && s.len() <= FIELD_LEN_MAX).then_some(s)
}

/// One dialog object.
struct Dialog<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    proxy: ProxyKind,
}

/// `{"name": "value"}` objects of Kamailio's `variables` array: is `emergency` set?
struct Variables;

impl<'de> DeserializeSeed<'de> for Variables {
    type Value = Option<bool>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Variables {
    type Value = Option<bool>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of variables")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut emergency = None;
        while let Some(found) = seq.next_element_seed(Variable)? {
            if found.is_some() {
                emergency = found;
            }
        }
        Ok(emergency)
    }
}

struct Variable;

impl<'de> DeserializeSeed<'de> for Variable {
    type Value = Option<bool>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Variable {
    type Value = Option<bool>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a variable object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut emergency = None;
        while let Some(key) = map.next_key_seed(Key(&["emergency"]))? {
            match key {
                Some(_) => {
                    let value = map.next_value::<serde_json::Value>()?;
                    emergency = Some(match value {
                        serde_json::Value::String(s) => !(s.is_empty() || s == "0"),
                        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
                        serde_json::Value::Bool(b) => b,
                        _ => false,
                    });
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(emergency)
    }
}

/// Kamailio's `caller` object: its `tag`.
struct Caller;

impl<'de> DeserializeSeed<'de> for Caller {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Caller {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a caller object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tag = None;
        while let Some(key) = map.next_key_seed(Key(&["tag"]))? {
            match key {
                Some(_) => tag = Some(map.next_value::<String>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(tag)
    }
}

impl<'de> Visitor<'de> for Dialog<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a dialog object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const KAMAILIO: &[&str] = &["call-id", "state", "caller", "variables"];
        const OPENSIPS: &[&str] = &["callid", "state", "caller_tag"];
        let keys = match self.proxy {
            ProxyKind::Kamailio => KAMAILIO,
            ProxyKind::Opensips => OPENSIPS,
        };
        let (mut call_id, mut state, mut tag, mut emergency) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(Key(keys))? {
            match (self.proxy, key) {
                (_, Some(0)) => call_id = Some(map.next_value::<String>()?),
                (_, Some(1)) => state = Some(map.next_value::<u64>()?),
                (ProxyKind::Kamailio, Some(2)) => tag = map.next_value_seed(Caller)?,
                (ProxyKind::Kamailio, Some(3)) => emergency = map.next_value_seed(Variables)?,
                (ProxyKind::Opensips, Some(2)) => tag = Some(map.next_value::<String>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !self.ctx.entry() {
            return Err(too_large());
        }
        let (Some(call_id), Some(state)) = (call_id, state) else {
            return Err(de::Error::custom("dialog without call id or state"));
        };
        let confirmed = matches!(state, 3 | 4);
        let tag = tag.and_then(field);
        match field(call_id) {
            Some(call_id) if confirmed => {
                self.ctx.sink.call(
                    CallRef {
                        call_id: call_id.as_bytes(),
                        from_tag: tag.as_deref().map(str::as_bytes),
                    },
                    emergency,
                );
                self.ctx.parsed.listed += 1;
            }
            _ => self.ctx.parsed.skipped += 1,
        }
        Ok(())
    }
}

/// A contact's `Expires`: seconds left, or a word.
fn expires(value: serde_json::Value) -> Option<Expires> {
    match value {
        serde_json::Value::Number(n) => {
            let s = n.as_u64()?;
            (s > 0).then(|| Expires::In(u32::try_from(s).unwrap_or(u32::MAX)))
        }
        serde_json::Value::String(s) if s == "permanent" => Some(Expires::Permanent),
        _ => None,
    }
}

/// One AoR: Kamailio `{"AoR": …, "Contacts": [ {"Contact": {…}} ]}`, OpenSIPS
/// `{"AOR": …, "Contacts": [ {…} ]}`.
struct Aor<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    proxy: ProxyKind,
}

/// A contact, before it is known which AoR it belongs to (if `Contacts` precedes the AoR).
struct Contact {
    address: String,
    expires: Option<Expires>,
}

impl<'de> Visitor<'de> for Aor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AoR object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let keys: &[&str] = match self.proxy {
            ProxyKind::Kamailio => &["AoR", "Contacts"],
            ProxyKind::Opensips => &["AOR", "Contacts"],
        };
        let mut aor: Option<String> = None;
        let mut pending: Vec<Contact> = Vec::new();
        while let Some(key) = map.next_key_seed(Key(keys))? {
            match key {
                Some(0) => aor = Some(map.next_value::<String>()?),
                Some(1) => map.next_value_seed(Contacts {
                    proxy: self.proxy,
                    out: &mut pending,
                    entries_left: self
                        .ctx
                        .limits
                        .entries_max
                        .saturating_sub(self.ctx.parsed.entries),
                    too_large: &mut self.ctx.too_large,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(aor) = aor else {
            return Err(de::Error::custom("AoR without its name"));
        };
        let aor = field(aor);
        for contact in pending {
            if !self.ctx.entry() {
                return Err(too_large());
            }
            match (&aor, field(contact.address), contact.expires) {
                (Some(aor), Some(address), Some(expires)) => {
                    self.ctx
                        .sink
                        .contact(aor.as_bytes(), address.as_bytes(), expires);
                    self.ctx.parsed.listed += 1;
                }
                _ => self.ctx.parsed.skipped += 1,
            }
        }
        Ok(())
    }
}

/// The `Contacts` array of one AoR, collected (an AoR has at most a few dozen; the bound
/// still applies).
struct Contacts<'o> {
    proxy: ProxyKind,
    out: &'o mut Vec<Contact>,
    entries_left: u64,
    too_large: &'o mut bool,
}

impl<'de> DeserializeSeed<'de> for Contacts<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Contacts<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of contacts")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(contact) = seq.next_element_seed(ContactSeed {
            proxy: self.proxy,
            wrapped: self.proxy == ProxyKind::Kamailio,
        })? {
            if self.out.len() as u64 >= self.entries_left {
                *self.too_large = true;
                return Err(too_large());
            }
            self.out.push(contact);
        }
        Ok(())
    }
}

/// One contact: Kamailio wraps it (`{"Contact": {"Address": …, "Expires": …}}`), OpenSIPS
/// does not (`{"Contact": "sip:…", "Expires": …}`).
struct ContactSeed {
    proxy: ProxyKind,
    wrapped: bool,
}

impl<'de> DeserializeSeed<'de> for ContactSeed {
    type Value = Contact;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Contact, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ContactSeed {
    type Value = Contact;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a contact object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Contact, A::Error> {
        if self.wrapped {
            let mut contact = None;
            while let Some(key) = map.next_key_seed(Key(&["Contact"]))? {
                match key {
                    Some(_) if contact.is_none() => {
                        contact = Some(map.next_value_seed(ContactSeed {
                            proxy: self.proxy,
                            wrapped: false,
                        })?);
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            return contact.ok_or_else(|| de::Error::custom("contact without Contact"));
        }
        let keys: &[&str] = match self.proxy {
            ProxyKind::Kamailio => &["Address", "Expires"],
            ProxyKind::Opensips => &["Contact", "Expires"],
        };
        let (mut address, mut expires_value) = (None, None);
        while let Some(key) = map.next_key_seed(Key(keys))? {
            match key {
                Some(0) => address = Some(map.next_value::<String>()?),
                Some(1) => expires_value = Some(map.next_value::<serde_json::Value>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let address = address.ok_or_else(|| de::Error::custom("contact without address"))?;
        Ok(Contact {
            address,
            expires: expires_value.and_then(expires),
        })
    }
}

/// An OpenSIPS usrloc domain: `{"name": …, "hash_size": …, "AORs": [ {aor} ]}`.
struct OpensipsDomain<'c, 's> {
    ctx: &'c mut Ctx<'s>,
}

impl<'de> Visitor<'de> for OpensipsDomain<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a domain object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key(&["AORs"]))? {
            match key {
                Some(_) => map.next_value_seed(AorsSeed {
                    ctx: &mut *self.ctx,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct AorsSeed<'c, 's> {
    ctx: &'c mut Ctx<'s>,
}

impl<'de> DeserializeSeed<'de> for AorsSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for AorsSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of AoRs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(AorSeed {
                ctx: &mut *self.ctx,
                proxy: ProxyKind::Opensips,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct AorSeed<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    proxy: ProxyKind,
}

impl<'de> DeserializeSeed<'de> for AorSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(Aor {
            ctx: self.ctx,
            proxy: self.proxy,
        })
    }
}

#[cfg(test)]
mod tests;
