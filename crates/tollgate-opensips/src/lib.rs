//! Sans-IO decoder of the notifications OpenSIPS 3.x sends with `event_datagram`, so that an
//! OpenSIPS operator needs nothing but `subscribe_event(…, "udp:127.0.0.1:7171")` (or
//! `"unix:<state_dir>/events.sock"`) to feed a tollgate agent.
//!
//! Each event is one datagram holding one JSON-RPC 2.0 notification:
//!
//! ```json
//! {"jsonrpc":"2.0","method":"E_DLG_STATE_CHANGED","params":{"hash_entry":1234,"hash_id":5678,
//!  "callid":"1-4242@127.0.1.1","from_tag":"4242SIPpTag001","to_tag":"4243SIPpTag011",
//!  "old_state":2,"new_state":4}}
//! ```
//!
//! [`decode`] maps it to at most one event (an [`OwnedEvent`] of `tollgate-sip`):
//!
//! | method | params used | event |
//! | --- | --- | --- |
//! | `E_DLG_STATE_CHANGED` | `callid`, `from_tag`, `old_state`, `new_state` | `CallStart` on entering 3 (confirmed, not acked) or 4 (confirmed) from 1 (unconfirmed) or 2 (early); `CallStop` on entering 5 (deleted) from 3 or 4; nothing otherwise (1/2 → 5 is a failed call, 3 → 4 is the ACK) |
//! | `E_UL_CONTACT_INSERT`, `_UPDATE`, `_REFRESH` | `aor`, `uri`, `expires` | `Register` with `expires_s` = `expires` (absolute unix seconds) − `now`, 0 (removal) when that is ≤ 0; `expires` 0 is a permanent contact: [`PERMANENT_EXPIRES_S`] |
//! | `E_UL_CONTACT_DELETE` | `aor`, `uri` | `Register` with `expires_s` 0 |
//! | `E_UL_AOR_INSERT`, `E_UL_AOR_DELETE`, `E_UL_LATENCY_UPDATE` | — | nothing (`Ok(None)`) |
//! | anything else | — | [`OpensipsError::UnknownMethod`] (count it, drop it) |
//!
//! Numbers (`old_state`, `new_state`, `expires`) are accepted as JSON numbers or as strings
//! of decimal digits. An empty `from_tag` means none. Other parameters (`to_tag`, ids,
//! `domain` — the usrloc table, such as `location`, not a SIP domain —, `callid` of a
//! contact, …) are ignored; `aor` is used as OpenSIPS sends it (`alice@example.com`, or
//! `alice` without `use_domain`). OpenSIPS dialog events carry no Request-URI, so calls from
//! this path are never flagged emergency.
//!
//! ```
//! use tollgate_opensips::decode;
//! use tollgate_events::MonoTime;
//!
//! let now = MonoTime::from_unix_secs(1_700_000_000);
//! let json = br#"{"jsonrpc":"2.0","method":"E_UL_CONTACT_INSERT","params":{"domain":"location",
//!     "aor":"alice@example.com","uri":"sip:alice@10.0.0.1:5060","expires":1700003600}}"#;
//! let event = decode(json, now)?.expect("an event");
//! assert_eq!(event.to_string(), "reg alice@example.com sip:alice@10.0.0.1:5060 3600");
//! # Ok::<(), tollgate_opensips::OpensipsError>(())
//! ```
//!
//! Stateless: OpenSIPS runs the dialog state machine, so its events are authoritative
//! (including dialogs it times out, which mirroring cannot see). Not the hot path: the JSON
//! is parsed into a `serde_json::Value`. [`looks_like_json`] tells these datagrams apart
//! from the text and binary event formats on the same sockets.
//!
//! What this crate deliberately lacks: sockets, clocks, state, and OpenSIPS's other events
//! (statistics, load balancer, …), and the pre-3.0 `event_datagram` text format.

use serde_json::{Map, Value};
use tollgate_events::MonoTime;
use tollgate_sip::{OwnedCall, OwnedEvent};

/// `expires_s` given to a permanent contact (usrloc `expires` 0): the tables saturate it, so
/// the contact lasts until deleted.
pub const PERMANENT_EXPIRES_S: u32 = u32::MAX;

/// Largest notification decoded, in bytes (a datagram cannot be larger anyway).
pub const NOTIFICATION_LEN_MAX: usize = 65_536;

/// OpenSIPS dialog states (`dlg_hash.h`).
pub mod dlg_state {
    pub const UNCONFIRMED: i64 = 1;
    pub const EARLY: i64 = 2;
    pub const CONFIRMED_NOT_ACKED: i64 = 3;
    pub const CONFIRMED: i64 = 4;
    pub const DELETED: i64 = 5;
}

/// Why a notification was dropped. Low cardinality: [`OpensipsError::as_str`] is a metric
/// label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpensipsError {
    #[error("notification longer than {NOTIFICATION_LEN_MAX} bytes")]
    TooLong,
    #[error("not json")]
    BadJson,
    #[error("not a json-rpc 2.0 notification with a method and object params")]
    BadEnvelope,
    #[error("unknown event {method}")]
    UnknownMethod { method: String },
    #[error("no {name} parameter")]
    MissingParam { name: &'static str },
    #[error("bad {name} parameter")]
    BadParam { name: &'static str },
}

impl OpensipsError {
    pub const COUNT: usize = 6;
    pub const LABELS: [&'static str; OpensipsError::COUNT] = [
        "too_long",
        "bad_json",
        "bad_envelope",
        "unknown_method",
        "missing_param",
        "bad_param",
    ];

    /// Index into [`OpensipsError::LABELS`], for arrays of counters.
    pub fn index(&self) -> usize {
        match self {
            OpensipsError::TooLong => 0,
            OpensipsError::BadJson => 1,
            OpensipsError::BadEnvelope => 2,
            OpensipsError::UnknownMethod { .. } => 3,
            OpensipsError::MissingParam { .. } => 4,
            OpensipsError::BadParam { .. } => 5,
        }
    }

    /// Metric label (`reason="…"`).
    pub fn as_str(&self) -> &'static str {
        OpensipsError::LABELS[self.index()]
    }
}

/// Whether a datagram looks like a JSON notification: its first byte that is not a space,
/// tab, CR or LF is `{`. No text-protocol line and no binary batch starts that way.
pub fn looks_like_json(datagram: &[u8]) -> bool {
    datagram
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        == Some(&b'{')
}

/// Decodes one notification received at `now` (see the crate doc for the mapping).
/// `Ok(None)`: a well-formed notification that changes nothing.
pub fn decode(json: &[u8], now: MonoTime) -> Result<Option<OwnedEvent>, OpensipsError> {
    if json.len() > NOTIFICATION_LEN_MAX {
        return Err(OpensipsError::TooLong);
    }
    let value: Value = serde_json::from_slice(json).map_err(|_| OpensipsError::BadJson)?;
    let envelope = value.as_object().ok_or(OpensipsError::BadEnvelope)?;
    if envelope.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(OpensipsError::BadEnvelope);
    }
    let method = envelope
        .get("method")
        .and_then(Value::as_str)
        .ok_or(OpensipsError::BadEnvelope)?;
    let params = match envelope.get("params") {
        Some(Value::Object(params)) => params,
        None => &Map::new(),
        Some(_) => return Err(OpensipsError::BadEnvelope),
    };
    match method {
        "E_DLG_STATE_CHANGED" => dialog(params),
        "E_UL_CONTACT_INSERT" | "E_UL_CONTACT_UPDATE" | "E_UL_CONTACT_REFRESH" => {
            let expires = number(params, "expires")?;
            let expires_s = if expires == 0 {
                PERMANENT_EXPIRES_S
            } else {
                let left = expires.saturating_sub(i64::from(now.unix_secs_u32()));
                u32::try_from(left.max(0)).unwrap_or(u32::MAX)
            };
            contact(params, expires_s)
        }
        "E_UL_CONTACT_DELETE" => contact(params, 0),
        "E_UL_AOR_INSERT" | "E_UL_AOR_DELETE" | "E_UL_LATENCY_UPDATE" => Ok(None),
        other => Err(OpensipsError::UnknownMethod {
            method: other.chars().take(64).collect(),
        }),
    }
}

fn dialog(params: &Map<String, Value>) -> Result<Option<OwnedEvent>, OpensipsError> {
    use dlg_state::*;
    let old = number(params, "old_state")?;
    let new = number(params, "new_state")?;
    let started =
        matches!(new, CONFIRMED_NOT_ACKED | CONFIRMED) && matches!(old, UNCONFIRMED | EARLY);
    let stopped = new == DELETED && matches!(old, CONFIRMED_NOT_ACKED | CONFIRMED);
    if !started && !stopped {
        return Ok(None);
    }
    let call_id = string(params, "callid")?;
    if call_id.is_empty() {
        return Err(OpensipsError::BadParam { name: "callid" });
    }
    let from_tag = string(params, "from_tag")?;
    let call = OwnedCall::new(
        call_id.as_bytes(),
        (!from_tag.is_empty()).then_some(from_tag.as_bytes()),
    );
    Ok(Some(if started {
        OwnedEvent::CallStart {
            call,
            emergency: false,
        }
    } else {
        OwnedEvent::CallStop { call }
    }))
}

fn contact(
    params: &Map<String, Value>,
    expires_s: u32,
) -> Result<Option<OwnedEvent>, OpensipsError> {
    let aor = string(params, "aor")?;
    let uri = string(params, "uri")?;
    if aor.is_empty() {
        return Err(OpensipsError::BadParam { name: "aor" });
    }
    if uri.is_empty() {
        return Err(OpensipsError::BadParam { name: "uri" });
    }
    Ok(Some(OwnedEvent::Register {
        aor: aor.as_bytes().to_vec(),
        contact: uri.as_bytes().to_vec(),
        expires_s,
    }))
}

fn string<'a>(
    params: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, OpensipsError> {
    match params.get(name) {
        None | Some(Value::Null) => Err(OpensipsError::MissingParam { name }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(OpensipsError::BadParam { name }),
    }
}

/// An integer given as a JSON number or as a string of digits (optionally signed).
fn number(params: &Map<String, Value>, name: &'static str) -> Result<i64, OpensipsError> {
    let bad = OpensipsError::BadParam { name };
    match params.get(name) {
        None | Some(Value::Null) => Err(OpensipsError::MissingParam { name }),
        Some(Value::Number(n)) => n.as_i64().ok_or(bad),
        Some(Value::String(s)) => s.trim().parse::<i64>().map_err(|_| bad),
        Some(_) => Err(bad),
    }
}

#[cfg(test)]
mod tests;
