//! Sans-IO SIP for metering from mirrored traffic (HEPv3): a zero-copy message parser and a
//! tracker that turns the messages a proxy relays into call and registration events.
//!
//! - [`message`]: [`SipMessage::parse`] reads the start line, Call-ID, From/To tags, CSeq,
//!   Expires, Session-Expires and (lazily) the Contact list, borrowing from the input.
//!   Sufficient for metering, not a full RFC 3261 stack: the module doc lists what it
//!   reads and what it tolerates (folded lines: yes; bodies: never read).
//! - [`tracker`]: [`MirrorTracker`] keeps dialogs keyed by capture id + Call-ID + From-tag
//!   and the contact sets of addresses-of-record, and emits [`OwnedEvent`]s with set
//!   semantics: a proxy mirrors every relayed message twice and UDP retransmits, and none
//!   of that changes a count. The module doc states every rule.
//! - [`uri`]: address-of-record normalization and emergency-URI detection.
//!
//! ```
//! use tollgate_sip::{MirrorTracker, OwnedEvent, TrackerConfig};
//! use tollgate_events::MonoTime;
//!
//! let invite = b"INVITE sip:bob@example.com SIP/2.0\r\n\
//!     Call-ID: a84b4c76e66710@pc33\r\nFrom: <sip:alice@example.com>;tag=1928301774\r\n\
//!     To: <sip:bob@example.com>\r\nCSeq: 314159 INVITE\r\n\r\n";
//! let ok = b"SIP/2.0 200 OK\r\n\
//!     Call-ID: a84b4c76e66710@pc33\r\nFrom: <sip:alice@example.com>;tag=1928301774\r\n\
//!     To: <sip:bob@example.com>;tag=a6c85cf\r\nCSeq: 314159 INVITE\r\n\r\n";
//! // The hash key is a secret the caller draws from the OS; an example may use a constant.
//! let mut tracker = MirrorTracker::new(TrackerConfig::default(), [1, 2])?;
//! let mut events = Vec::new();
//! let now = MonoTime::from_unix_secs(1_700_000_000);
//! for payload in [&invite[..], ok, ok] {
//!     tracker.handle_payload(now, 1, payload, &mut events)?;
//! }
//! let starts: Vec<String> = events.iter().map(OwnedEvent::to_string).collect();
//! assert_eq!(starts, ["call-start a84b4c76e66710@pc33 tag=1928301774"]);
//! // The IO layer applies `events[0].as_event()` with `Tables::apply`.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What this crate deliberately lacks: sockets, clocks, threads (the tracker takes `now`
//! and `&mut self`; the IO layer owns it), transactions and timers of a real SIP stack,
//! SDP, authentication, and any view of what the wire does not show. In particular a
//! dialog that the proxy times out without a BYE (Kamailio's `default_timeout`) sends
//! nothing to mirror: that call stays counted until the usage tables' maximum call
//! duration ends it. Operators who need exact counts use the proxy's own dialog events
//! (Kamailio `event_route[dialog:*]`, OpenSIPS `E_DLG_STATE_CHANGED`).

pub mod event;
pub mod message;
pub mod tracker;
pub mod uri;

pub use event::{OwnedCall, OwnedEvent};
pub use message::{
    CONTACT_COUNT_MAX, CSeq, Contact, HEADER_COUNT_MAX, Method, NameAddr, SipError, SipMessage,
    StartLine,
};
pub use tracker::{ConfigError, MirrorTracker, TrackerConfig, TrackerCounters};
