//! The mirror tracker: turns mirrored SIP messages into call and registration events.
//!
//! A plain struct with a `&mut self` API and the time passed in: the IO layer owns it
//! (behind a mutex if several threads feed it), calls [`MirrorTracker::handle`] for every
//! SIP message (with the HEP capture id that says which node saw it), applies the events it
//! appends to `out`, and calls [`MirrorTracker::expire`] about once a second.
//!
//! # The rules
//!
//! Dialogs are keyed by **capture id + Call-ID + From-tag**, where the From-tag is the
//! caller's: a request or response travelling from the callee carries the caller's tag in
//! its To header, so a message is matched by its From-tag first, then by its To-tag.
//! Set semantics throughout: a proxy mirrors every relayed message twice (in and out) and
//! UDP retransmits, so every rule below fires at most once per dialog, whatever the number
//! of copies.
//!
//! - **Start**: the first 2xx to INVITE for a dialog that is neither established nor ended
//!   emits `CallStart`. The INVITE itself only creates a *pending* entry that remembers
//!   whether the call is an emergency call; a 2xx without a pending entry (the INVITE was
//!   not mirrored, or the agent restarted) still starts the call.
//! - **Emergency**: a call is an emergency call when its initial INVITE's Request-URI is an
//!   `urn:service:sos…` URN or a `sip:`/`sips:`/`tel:` URI whose user part is one of
//!   [`TrackerConfig::emergency_numbers`] (default `112`, `911`), or when the 2xx's To URI
//!   is one (for calls whose INVITE was not seen).
//! - **Stop**: a BYE request, from either side, emits `CallStop` at once (its 200 is not
//!   awaited). A BYE for a dialog the tracker does not know (it restarted, or its table
//!   was full) emits `CallStop` for both of the message's tags: one of them is the
//!   caller's, the other is a no-op for the tables.
//! - **Failed**: a final response ≥ 300 to the initial INVITE before any 2xx forgets the
//!   pending entry and counts a failed call; no event. 401 and 407 are challenges, not
//!   failures: the pending entry waits for the INVITE with credentials. A 2xx from another fork that
//!   arrives after it still starts the call (then flagged emergency only by its To URI).
//! - **CANCEL** changes nothing: a 200 can cross it, and then the call is counted.
//! - **Refresh**: a re-INVITE or UPDATE request in an established dialog, and its 2xx,
//!   emit `CallRefresh` (once per CSeq and direction). The 2xx of the initial INVITE again
//!   (a retransmission or a mirrored copy) changes nothing.
//! - **Session-Expires** (RFC 4028): the value in a 2xx to INVITE or UPDATE arms a session
//!   timer; a dialog without a refresh for that long ends with `CallStop` in
//!   [`MirrorTracker::expire`] (counted as `calls_stopped_session_expired`). A 2xx without
//!   the header disarms it.
//! - **Dialog gone**: a 481 or 408 to an in-dialog request (re-INVITE, UPDATE, INFO, …, not
//!   CANCEL, not BYE, not the initial INVITE) emits `CallStop` (RFC 3261 §12.2.1.2).
//! - **Registrations**: only a 200 OK to REGISTER counts. Its Contact list *replaces* the
//!   bindings of its address-of-record (the To URI, [`normalize_aor`]d, per capture id):
//!   every listed contact is emitted with its expiry (the contact's `;expires=` over the
//!   Expires header over [`TrackerConfig::default_register_expires_s`]), every previously
//!   known contact that is no longer listed is emitted with expiry 0, and an empty list
//!   (or `*`) unregisters every known contact. A copy of the same 200 (same Call-ID, CSeq
//!   not higher) changes nothing. Contacts also lapse by themselves: the tables keep their
//!   own expiry; the tracker forgets lapsed contacts in `expire`.
//!
//! # What mirroring cannot see
//!
//! A dialog that the proxy ends without a BYE on the wire (Kamailio's `default_timeout`,
//! a UA that vanishes) sends nothing: the call stays counted until the tables'
//! `max_call_duration` (and the tracker forgets it after
//! [`TrackerConfig::dialog_idle_max_ms`] without a refresh, emitting nothing). A contact
//! that the registrar removes without a 200 (expiry, `usrloc` timer) is only removed by the
//! tables' own expiry. The authoritative paths (Kamailio `dialog` event routes, OpenSIPS
//! `event_datagram`) do not have these gaps.
//!
//! # Bounds
//!
//! Every table has a configured limit, itself capped by a named constant
//! ([`PENDING_COUNT_MAX`], [`DIALOG_COUNT_MAX`], [`ENDED_COUNT_MAX`], [`AOR_COUNT_MAX`];
//! contacts per AoR by [`CONTACT_COUNT_MAX`]). A full table refuses new entries and counts
//! it; events are still emitted where they can be (a call starts even when the dialog table
//! is full; its BYE then stops it as an unknown dialog). Pending entries expire after
//! [`TrackerConfig::pending_ttl_ms`], ended dialogs (kept so that late copies of the 200 or
//! the BYE change nothing) after [`TrackerConfig::ended_ttl_ms`].

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{Equivalent, HashMap};
use tollgate_events::MonoTime;

use crate::event::{OwnedCall, OwnedEvent};
use crate::message::{CONTACT_COUNT_MAX, Contact, Method, SipError, SipMessage, StartLine};
use crate::uri::{is_emergency, normalize_aor};

/// Most pending dialogs (INVITE seen, no final response yet).
pub const PENDING_COUNT_MAX: usize = 1 << 16;
/// Most established dialogs tracked.
pub const DIALOG_COUNT_MAX: usize = 1 << 20;
/// Most recently ended dialogs remembered (so that late copies change nothing).
pub const ENDED_COUNT_MAX: usize = 1 << 16;
/// Most addresses-of-record whose contact set is remembered.
pub const AOR_COUNT_MAX: usize = 1 << 20;
/// Most configured emergency numbers.
pub const EMERGENCY_NUMBER_COUNT_MAX: usize = 32;
/// Longest configured emergency number, in bytes.
pub const EMERGENCY_NUMBER_LEN_MAX: usize = 32;

/// Tunables of a [`MirrorTracker`]. Limits may be lowered (tests do), not raised above the
/// constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// How long an INVITE without a final response is remembered. Default 5 minutes.
    pub pending_ttl_ms: u64,
    /// How long an ended dialog is remembered. Default 64 s (twice the 32 s a SIP
    /// transaction lives, so retransmissions and reordered mirror copies are absorbed).
    pub ended_ttl_ms: u64,
    /// A dialog without a refresh for this long is forgotten, silently: set it to the
    /// tables' `max_call_duration`, which ends the call there. Default 4 hours.
    pub dialog_idle_max_ms: u64,
    /// Expiry of a contact when neither its `;expires=` nor an Expires header gives one
    /// (RFC 3261's default). Default 3600 s.
    pub default_register_expires_s: u32,
    /// User parts (or `tel:` numbers) that make an INVITE an emergency call, besides
    /// `urn:service:sos…`. Default `112`, `911`.
    pub emergency_numbers: Vec<Vec<u8>>,
    pub pending_count_max: usize,
    pub dialog_count_max: usize,
    pub ended_count_max: usize,
    pub aor_count_max: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            pending_ttl_ms: 5 * 60 * 1000,
            ended_ttl_ms: 64 * 1000,
            dialog_idle_max_ms: 4 * 3600 * 1000,
            default_register_expires_s: 3600,
            emergency_numbers: vec![b"112".to_vec(), b"911".to_vec()],
            pending_count_max: PENDING_COUNT_MAX,
            dialog_count_max: DIALOG_COUNT_MAX,
            ended_count_max: ENDED_COUNT_MAX,
            aor_count_max: AOR_COUNT_MAX,
        }
    }
}

/// A [`TrackerConfig`] that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is {value}, above its maximum of {max}")]
    LimitTooHigh {
        name: &'static str,
        value: usize,
        max: usize,
    },
    #[error("{count} emergency numbers, at most {EMERGENCY_NUMBER_COUNT_MAX} are allowed")]
    TooManyEmergencyNumbers { count: usize },
    #[error("emergency number is empty or longer than {EMERGENCY_NUMBER_LEN_MAX} bytes")]
    BadEmergencyNumber,
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value, max) in [
            (
                "pending_count_max",
                self.pending_count_max,
                PENDING_COUNT_MAX,
            ),
            ("dialog_count_max", self.dialog_count_max, DIALOG_COUNT_MAX),
            ("ended_count_max", self.ended_count_max, ENDED_COUNT_MAX),
            ("aor_count_max", self.aor_count_max, AOR_COUNT_MAX),
        ] {
            if value > max {
                return Err(ConfigError::LimitTooHigh { name, value, max });
            }
        }
        let count = self.emergency_numbers.len();
        if count > EMERGENCY_NUMBER_COUNT_MAX {
            return Err(ConfigError::TooManyEmergencyNumbers { count });
        }
        if self
            .emergency_numbers
            .iter()
            .any(|n| n.is_empty() || n.len() > EMERGENCY_NUMBER_LEN_MAX)
        {
            return Err(ConfigError::BadEmergencyNumber);
        }
        Ok(())
    }
}

/// What the tracker did, by reason, for metrics. Counters only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrackerCounters {
    pub requests: u64,
    pub responses: u64,
    /// Messages [`MirrorTracker::handle_payload`] could not parse, by
    /// [`SipError::index`] (labels in [`SipError::LABELS`]).
    pub malformed: [u64; SipError::COUNT],
    /// Initial INVITEs that created a pending entry.
    pub invites: u64,
    pub calls_started: u64,
    /// Of `calls_started`: started by a 2xx without a pending INVITE.
    pub calls_started_without_invite: u64,
    /// Of `calls_started`: emergency calls.
    pub calls_started_emergency: u64,
    /// Final ≥ 300 to a pending INVITE.
    pub calls_failed: u64,
    pub calls_stopped_bye: u64,
    /// 481 or 408 to an in-dialog request.
    pub calls_stopped_dialog_gone: u64,
    pub calls_stopped_session_expired: u64,
    /// BYEs for dialogs the tracker did not know (stops emitted for both tags).
    pub bye_unknown: u64,
    pub calls_refreshed: u64,
    /// re-INVITE / UPDATE for dialogs the tracker did not know (no event).
    pub refresh_unknown: u64,
    /// Copies and retransmissions that changed nothing.
    pub duplicates: u64,
    /// 200 OKs to REGISTER applied.
    pub registers: u64,
    /// 200 OKs to REGISTER ignored: bad Contact list or empty AoR.
    pub registers_malformed: u64,
    pub contacts_registered: u64,
    pub contacts_removed: u64,
    pub pending_expired: u64,
    /// Dialogs forgotten after `dialog_idle_max_ms` without a refresh (no event).
    pub dialogs_forgotten: u64,
    pub pending_full: u64,
    pub dialogs_full: u64,
    pub ended_full: u64,
    pub aors_full: u64,
}

impl TrackerCounters {
    /// Every counter but `malformed`, as `(name, value)`, for metric export.
    pub fn pairs(&self) -> [(&'static str, u64); 25] {
        [
            ("requests", self.requests),
            ("responses", self.responses),
            ("invites", self.invites),
            ("calls_started", self.calls_started),
            (
                "calls_started_without_invite",
                self.calls_started_without_invite,
            ),
            ("calls_started_emergency", self.calls_started_emergency),
            ("calls_failed", self.calls_failed),
            ("calls_stopped_bye", self.calls_stopped_bye),
            ("calls_stopped_dialog_gone", self.calls_stopped_dialog_gone),
            (
                "calls_stopped_session_expired",
                self.calls_stopped_session_expired,
            ),
            ("bye_unknown", self.bye_unknown),
            ("calls_refreshed", self.calls_refreshed),
            ("refresh_unknown", self.refresh_unknown),
            ("duplicates", self.duplicates),
            ("registers", self.registers),
            ("registers_malformed", self.registers_malformed),
            ("contacts_registered", self.contacts_registered),
            ("contacts_removed", self.contacts_removed),
            ("pending_expired", self.pending_expired),
            ("dialogs_forgotten", self.dialogs_forgotten),
            ("pending_full", self.pending_full),
            ("dialogs_full", self.dialogs_full),
            ("ended_full", self.ended_full),
            ("aors_full", self.aors_full),
            ("malformed_total", self.malformed.iter().sum()),
        ]
    }
}

/// The key of a dialog: capture id, Call-ID and the caller's From-tag (empty when the
/// caller sent none), in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DialogKey {
    capture_id: u32,
    call_id_len: usize,
    /// Call-ID then From-tag.
    bytes: Box<[u8]>,
}

impl DialogKey {
    fn new(key: KeyRef<'_>) -> Self {
        let mut bytes = Vec::with_capacity(key.call_id.len() + key.from_tag.len());
        bytes.extend_from_slice(key.call_id);
        bytes.extend_from_slice(key.from_tag);
        DialogKey {
            capture_id: key.capture_id,
            call_id_len: key.call_id.len(),
            bytes: bytes.into_boxed_slice(),
        }
    }

    fn as_ref(&self) -> KeyRef<'_> {
        let (call_id, from_tag) = self.bytes.split_at(self.call_id_len);
        KeyRef {
            capture_id: self.capture_id,
            call_id,
            from_tag,
        }
    }
}

impl Hash for DialogKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

/// A borrowed dialog key, for lookups without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    capture_id: u32,
    call_id: &'a [u8],
    from_tag: &'a [u8],
}

impl Equivalent<DialogKey> for KeyRef<'_> {
    fn equivalent(&self, key: &DialogKey) -> bool {
        *self == key.as_ref()
    }
}

impl KeyRef<'_> {
    fn call(&self) -> OwnedCall {
        let tag = (!self.from_tag.is_empty()).then_some(self.from_tag);
        OwnedCall::new(self.call_id, tag)
    }
}

/// The key a message names with its From-tag.
fn forward<'m>(capture_id: u32, msg: &SipMessage<'m>) -> KeyRef<'m> {
    KeyRef {
        capture_id,
        call_id: msg.call_id,
        from_tag: msg.from.tag.unwrap_or_default(),
    }
}

/// The key a message names with its To-tag (the caller's, when the callee sent it).
fn reverse<'m>(capture_id: u32, msg: &SipMessage<'m>) -> Option<KeyRef<'m>> {
    Some(KeyRef {
        capture_id,
        call_id: msg.call_id,
        from_tag: msg.to.tag?,
    })
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    since_ms: u64,
    emergency: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshKind {
    Invite,
    Update,
}

#[derive(Debug, Clone, Copy)]
struct Dialog {
    /// CSeq of the initial INVITE: its 2xx again is a copy, not a refresh.
    invite_cseq: u32,
    /// Start or last refresh.
    refreshed_ms: u64,
    session_expires_ms: Option<u64>,
    /// The last refresh (CSeq, sent by the caller, kind): its copies change nothing.
    last_refresh: Option<(u32, bool, RefreshKind)>,
    /// Started without its INVITE: the key's From-tag may be the callee's, so a BYE stops
    /// both tags.
    uncertain: bool,
}

#[derive(Debug, Clone, Default)]
struct AorState {
    /// Contact URI and the unix ms it lapses at.
    contacts: Vec<(Box<[u8]>, u64)>,
    /// Hash of the Call-ID and CSeq of the last 200 applied.
    last_register: Option<(u64, u32)>,
}

/// SipHash-1-3 (what std's `RandomState` builds) with a key passed in instead of the
/// process's random keys: the core reads no entropy of its own.
#[derive(Clone)]
struct KeyedState {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KeyedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in a log.
        f.write_str("KeyedState { .. }")
    }
}

impl BuildHasher for KeyedState {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// Tracks dialogs and registrations from mirrored SIP (see the module doc for the rules).
#[derive(Debug)]
pub struct MirrorTracker {
    config: TrackerConfig,
    hasher: KeyedState,
    pending: HashMap<DialogKey, Pending, KeyedState>,
    dialogs: HashMap<DialogKey, Dialog, KeyedState>,
    /// Ended dialogs and when they ended (unix ms).
    ended: HashMap<DialogKey, u64, KeyedState>,
    /// INVITEs that failed: the CSeq of the failed INVITE and when (unix ms). A copy of that
    /// INVITE mirrored after its final response (the proxy's outgoing leg can be captured
    /// late) is then not a new attempt; a new INVITE with a higher CSeq (after a 3xx, say)
    /// is.
    failed: HashMap<DialogKey, (u32, u64), KeyedState>,
    aors: HashMap<(u32, Box<[u8]>), AorState, KeyedState>,
    counters: TrackerCounters,
}

impl MirrorTracker {
    /// A tracker whose maps hash with SipHash-1-3 keyed by `hash_key`. The keys of those
    /// maps (Call-IDs, tags, AoRs) come from the network, so the key must be secret and
    /// drawn from the OS by the caller (the HEP collector draws one at every start): with
    /// a key an attacker knows, crafted Call-IDs collide and every lookup walks them all.
    /// Tests and benches pass a constant. Layout only: no event depends on the key.
    pub fn new(config: TrackerConfig, hash_key: [u64; 2]) -> Result<Self, ConfigError> {
        config.validate()?;
        let hasher = KeyedState {
            k0: hash_key[0],
            k1: hash_key[1],
        };
        Ok(MirrorTracker {
            config,
            hasher: hasher.clone(),
            pending: HashMap::with_hasher(hasher.clone()),
            dialogs: HashMap::with_hasher(hasher.clone()),
            ended: HashMap::with_hasher(hasher.clone()),
            failed: HashMap::with_hasher(hasher.clone()),
            aors: HashMap::with_hasher(hasher),
            counters: TrackerCounters::default(),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    pub fn counters(&self) -> &TrackerCounters {
        &self.counters
    }

    /// Established dialogs tracked.
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// INVITEs waiting for a final response.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Ended dialogs remembered.
    pub fn ended_count(&self) -> usize {
        self.ended.len()
    }

    /// Addresses-of-record with remembered contacts.
    pub fn aor_count(&self) -> usize {
        self.aors.len()
    }

    /// Parses `payload` as a SIP message and handles it; a message that does not parse is
    /// counted in [`TrackerCounters::malformed`] and returned as the error.
    pub fn handle_payload(
        &mut self,
        now: MonoTime,
        capture_id: u32,
        payload: &[u8],
        out: &mut Vec<OwnedEvent>,
    ) -> Result<(), SipError> {
        match SipMessage::parse(payload) {
            Ok(msg) => {
                self.handle(now, capture_id, &msg, out);
                Ok(())
            }
            Err(error) => {
                self.counters.malformed[error.index()] += 1;
                Err(error)
            }
        }
    }

    /// Handles one message seen at `now` by capture agent `capture_id`, appending the
    /// events it causes to `out`.
    pub fn handle(
        &mut self,
        now: MonoTime,
        capture_id: u32,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        let now_ms = now.unix_ms();
        match msg.start {
            StartLine::Request { method, uri } => {
                self.counters.requests += 1;
                match method {
                    Method::Invite if msg.to.tag.is_none() => {
                        self.initial_invite(now_ms, capture_id, uri, msg);
                    }
                    Method::Invite => {
                        self.refresh(now_ms, capture_id, msg, RefreshKind::Invite, out)
                    }
                    Method::Update => {
                        self.refresh(now_ms, capture_id, msg, RefreshKind::Update, out)
                    }
                    Method::Bye => self.bye(now_ms, capture_id, msg, out),
                    _ => {}
                }
            }
            StartLine::Response { code, .. } => {
                self.counters.responses += 1;
                match (msg.cseq.method, code / 100) {
                    (Method::Invite, 2) => self.invite_ok(now_ms, capture_id, msg, out),
                    (Method::Invite, 3..=6) => {
                        self.invite_failed(now_ms, capture_id, code, msg, out);
                    }
                    (Method::Update, 2) => {
                        self.set_session_expires(capture_id, msg);
                        self.refresh(now_ms, capture_id, msg, RefreshKind::Update, out);
                    }
                    (Method::Register, _) if code == 200 => {
                        self.register_ok(now_ms, capture_id, msg, out);
                    }
                    // The BYE request ended the dialog already; a CANCEL is not in-dialog.
                    (Method::Bye | Method::Cancel | Method::Ack, _) => {}
                    _ if code == 481 || code == 408 => {
                        self.dialog_gone(now_ms, capture_id, msg, out);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sweeps the tables at `now`: expired pending INVITEs and ended dialogs are forgotten,
    /// dialogs past their session timer end (a `CallStop` appended to `out`), idle dialogs
    /// are forgotten, lapsed contacts are forgotten. Cost: one pass over every table; call
    /// it about once a second.
    pub fn expire(&mut self, now: MonoTime, out: &mut Vec<OwnedEvent>) {
        let now_ms = now.unix_ms();
        let pending_ttl_ms = self.config.pending_ttl_ms;
        let before = self.pending.len();
        self.pending
            .retain(|_, pending| now_ms.saturating_sub(pending.since_ms) < pending_ttl_ms);
        self.counters.pending_expired += (before - self.pending.len()) as u64;

        let ended_ttl_ms = self.config.ended_ttl_ms;
        self.ended
            .retain(|_, ended_ms| now_ms.saturating_sub(*ended_ms) < ended_ttl_ms);
        self.failed
            .retain(|_, (_, failed_ms)| now_ms.saturating_sub(*failed_ms) < ended_ttl_ms);

        let idle_max_ms = self.config.dialog_idle_max_ms;
        let gone: Vec<(DialogKey, Dialog)> = self
            .dialogs
            .extract_if(|_, dialog| {
                let idle_ms = now_ms.saturating_sub(dialog.refreshed_ms);
                idle_ms >= idle_max_ms
                    || dialog
                        .session_expires_ms
                        .is_some_and(|session_ms| idle_ms >= session_ms)
            })
            .collect();
        for (key, dialog) in gone {
            let idle_ms = now_ms.saturating_sub(dialog.refreshed_ms);
            if dialog
                .session_expires_ms
                .is_some_and(|session_ms| idle_ms >= session_ms)
            {
                self.counters.calls_stopped_session_expired += 1;
                out.push(OwnedEvent::CallStop {
                    call: key.as_ref().call(),
                });
                self.remember_ended(now_ms, key);
            } else {
                self.counters.dialogs_forgotten += 1;
            }
        }

        self.aors.retain(|_, aor| {
            aor.contacts.retain(|&(_, lapses_ms)| lapses_ms > now_ms);
            !aor.contacts.is_empty()
        });
    }

    /// The established dialog a message belongs to, matched by its From-tag, then its
    /// To-tag; and whether it was the From-tag (the message travels from the caller).
    fn established<'m>(&self, capture_id: u32, msg: &SipMessage<'m>) -> Option<(KeyRef<'m>, bool)> {
        let key = forward(capture_id, msg);
        if self.dialogs.contains_key(&key) {
            return Some((key, true));
        }
        let key = reverse(capture_id, msg)?;
        self.dialogs.contains_key(&key).then_some((key, false))
    }

    fn initial_invite(&mut self, now_ms: u64, capture_id: u32, uri: &[u8], msg: &SipMessage<'_>) {
        let key = forward(capture_id, msg);
        if self.dialogs.contains_key(&key)
            || self.ended.contains_key(&key)
            || self.pending.contains_key(&key)
            || self
                .failed
                .get(&key)
                .is_some_and(|(cseq, _)| msg.cseq.seq <= *cseq)
        {
            self.counters.duplicates += 1;
            return;
        }
        if self.pending.len() >= self.config.pending_count_max {
            self.counters.pending_full += 1;
            return;
        }
        let emergency = is_emergency(uri, &self.config.emergency_numbers);
        self.pending.insert(
            DialogKey::new(key),
            Pending {
                since_ms: now_ms,
                emergency,
            },
        );
        self.counters.invites += 1;
    }

    fn invite_ok(
        &mut self,
        now_ms: u64,
        capture_id: u32,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        if let Some((key, from_caller)) = self.established(capture_id, msg) {
            let is_copy = self
                .dialogs
                .get(&key)
                .is_some_and(|d| from_caller && msg.cseq.seq == d.invite_cseq);
            if is_copy {
                self.counters.duplicates += 1;
            } else {
                self.set_session_expires(capture_id, msg);
                self.refresh(now_ms, capture_id, msg, RefreshKind::Invite, out);
            }
            return;
        }
        let key = forward(capture_id, msg);
        if self.ended.contains_key(&key) {
            self.counters.duplicates += 1;
            return;
        }
        let pending = self.pending.remove(&key);
        let emergency = pending.is_some_and(|p| p.emergency)
            || is_emergency(msg.to.uri, &self.config.emergency_numbers);
        self.counters.calls_started += 1;
        self.counters.calls_started_without_invite += u64::from(pending.is_none());
        self.counters.calls_started_emergency += u64::from(emergency);
        if self.dialogs.len() >= self.config.dialog_count_max {
            self.counters.dialogs_full += 1;
        } else {
            self.dialogs.insert(
                DialogKey::new(key),
                Dialog {
                    invite_cseq: msg.cseq.seq,
                    refreshed_ms: now_ms,
                    session_expires_ms: session_expires_ms(msg),
                    last_refresh: None,
                    uncertain: pending.is_none(),
                },
            );
        }
        out.push(OwnedEvent::CallStart {
            call: key.call(),
            emergency,
        });
    }

    fn invite_failed(
        &mut self,
        now_ms: u64,
        capture_id: u32,
        code: u16,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        if let Some((key, from_caller)) = self.established(capture_id, msg) {
            // A failed re-INVITE leaves the dialog up, unless it says the dialog is gone. A
            // final of the initial INVITE's CSeq after its 2xx comes from another fork.
            let initial = self
                .dialogs
                .get(&key)
                .is_some_and(|d| from_caller && msg.cseq.seq == d.invite_cseq);
            if !initial && (code == 481 || code == 408) {
                self.dialog_gone(now_ms, capture_id, msg, out);
            }
            return;
        }
        if code == 401 || code == 407 {
            return; // a challenge: the INVITE comes again with credentials
        }
        let key = forward(capture_id, msg);
        if let Some((owned, _)) = self.pending.remove_entry(&key) {
            self.counters.calls_failed += 1;
            let max = self.config.ended_count_max;
            if !insert_bounded(&mut self.failed, owned, (msg.cseq.seq, now_ms), max) {
                self.counters.ended_full += 1;
            }
        } else {
            self.counters.duplicates += 1;
        }
    }

    fn refresh(
        &mut self,
        now_ms: u64,
        capture_id: u32,
        msg: &SipMessage<'_>,
        kind: RefreshKind,
        out: &mut Vec<OwnedEvent>,
    ) {
        let Some((key, from_caller)) = self.established(capture_id, msg) else {
            self.counters.refresh_unknown += 1;
            return;
        };
        let Some(dialog) = self.dialogs.get_mut(&key) else {
            return;
        };
        let mark = Some((msg.cseq.seq, from_caller, kind));
        if dialog.last_refresh == mark {
            self.counters.duplicates += 1;
            return;
        }
        dialog.last_refresh = mark;
        dialog.refreshed_ms = now_ms;
        self.counters.calls_refreshed += 1;
        out.push(OwnedEvent::CallRefresh { call: key.call() });
    }

    /// A 2xx to a re-INVITE or UPDATE (re)arms or disarms the session timer.
    fn set_session_expires(&mut self, capture_id: u32, msg: &SipMessage<'_>) {
        if let Some((key, _)) = self.established(capture_id, msg)
            && let Some(dialog) = self.dialogs.get_mut(&key)
        {
            dialog.session_expires_ms = session_expires_ms(msg);
        }
    }

    fn bye(
        &mut self,
        now_ms: u64,
        capture_id: u32,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        if let Some((key, _)) = self.established(capture_id, msg) {
            self.counters.calls_stopped_bye += 1;
            self.end_dialog(now_ms, key, msg, out);
            return;
        }
        let key = forward(capture_id, msg);
        let other = reverse(capture_id, msg).filter(|other| *other != key);
        if self.ended.contains_key(&key) || other.is_some_and(|o| self.ended.contains_key(&o)) {
            self.counters.duplicates += 1;
            return;
        }
        self.counters.bye_unknown += 1;
        self.pending.remove(&key);
        for key in std::iter::once(key).chain(other) {
            out.push(OwnedEvent::CallStop { call: key.call() });
            self.remember_ended(now_ms, DialogKey::new(key));
        }
    }

    fn dialog_gone(
        &mut self,
        now_ms: u64,
        capture_id: u32,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        if msg.to.tag.is_none() {
            return; // not an in-dialog request
        }
        if let Some((key, _)) = self.established(capture_id, msg) {
            self.counters.calls_stopped_dialog_gone += 1;
            self.end_dialog(now_ms, key, msg, out);
        }
    }

    /// Ends an established dialog because of `msg`: `CallStop` (for both of the message's
    /// tags if the dialog's orientation is uncertain), and remembers it as ended.
    fn end_dialog(
        &mut self,
        now_ms: u64,
        key: KeyRef<'_>,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        let Some((owned, dialog)) = self.dialogs.remove_entry(&key) else {
            return;
        };
        out.push(OwnedEvent::CallStop { call: key.call() });
        if dialog.uncertain {
            let other = [msg.from.tag, msg.to.tag]
                .into_iter()
                .flatten()
                .find(|tag| *tag != key.from_tag);
            if let Some(tag) = other {
                let other = KeyRef {
                    from_tag: tag,
                    ..key
                };
                out.push(OwnedEvent::CallStop { call: other.call() });
                self.remember_ended(now_ms, DialogKey::new(other));
            }
        }
        self.remember_ended(now_ms, owned);
    }

    fn remember_ended(&mut self, now_ms: u64, key: DialogKey) {
        let max = self.config.ended_count_max;
        if !insert_bounded(&mut self.ended, key, now_ms, max) {
            self.counters.ended_full += 1;
        }
    }

    fn register_ok(
        &mut self,
        now_ms: u64,
        capture_id: u32,
        msg: &SipMessage<'_>,
        out: &mut Vec<OwnedEvent>,
    ) {
        let aor = normalize_aor(msg.to.uri).into_boxed_slice();
        // The new binding set: (contact, expires); expires 0 means removed.
        let mut listed: Vec<(&[u8], u32)> = Vec::new();
        let mut star = false;
        for contact in msg.contacts() {
            match contact {
                Ok(Contact::Star) => star = true,
                Ok(Contact::Uri { uri, expires }) => {
                    let expires = expires
                        .or(msg.expires)
                        .unwrap_or(self.config.default_register_expires_s);
                    match listed.iter_mut().find(|(u, _)| *u == uri) {
                        Some(entry) => entry.1 = expires,
                        None => listed.push((uri, expires)),
                    }
                }
                Err(_) => {
                    self.counters.registers_malformed += 1;
                    return;
                }
            }
        }
        if aor.is_empty() {
            self.counters.registers_malformed += 1;
            return;
        }
        if star {
            listed.clear();
        }
        debug_assert!(listed.len() <= CONTACT_COUNT_MAX);

        let key = (capture_id, aor);
        let this_register = (self.hasher.hash_one(msg.call_id), msg.cseq.seq);
        let previous = self.aors.get_mut(&key);
        if let Some(state) = &previous
            && let Some((call_hash, cseq)) = state.last_register
            && call_hash == this_register.0
            && this_register.1 <= cseq
        {
            self.counters.duplicates += 1;
            return;
        }
        self.counters.registers += 1;
        let known = previous
            .map(|state| std::mem::take(&mut state.contacts))
            .unwrap_or_default();
        let aor = &key.1;
        for (contact, _) in &known {
            if !listed.iter().any(|(uri, _)| *uri == &contact[..]) {
                self.counters.contacts_removed += 1;
                out.push(OwnedEvent::Register {
                    aor: aor.to_vec(),
                    contact: contact.to_vec(),
                    expires_s: 0,
                });
            }
        }
        let mut contacts = Vec::with_capacity(listed.len());
        for &(uri, expires_s) in &listed {
            if expires_s == 0 {
                self.counters.contacts_removed += 1;
            } else {
                self.counters.contacts_registered += 1;
                let lapses_ms = now_ms.saturating_add(u64::from(expires_s) * 1000);
                contacts.push((Box::<[u8]>::from(uri), lapses_ms));
            }
            out.push(OwnedEvent::Register {
                aor: aor.to_vec(),
                contact: uri.to_vec(),
                expires_s,
            });
        }

        // An AoR left without contacts keeps its entry (so that copies of this 200 are
        // recognised) until the next `expire`.
        if let Some(state) = self.aors.get_mut(&key) {
            state.contacts = contacts;
            state.last_register = Some(this_register);
        } else if contacts.is_empty() {
            // Nothing to remember.
        } else if self.aors.len() >= self.config.aor_count_max {
            self.counters.aors_full += 1;
        } else {
            self.aors.insert(
                key,
                AorState {
                    contacts,
                    last_register: Some(this_register),
                },
            );
        }
    }
}

/// Inserts into a map of at most `max` keys: a new key into a full map is refused (false).
fn insert_bounded<V>(
    map: &mut HashMap<DialogKey, V, KeyedState>,
    key: DialogKey,
    value: V,
    max: usize,
) -> bool {
    if map.len() >= max && !map.contains_key(&key) {
        return false;
    }
    map.insert(key, value);
    true
}

fn session_expires_ms(msg: &SipMessage<'_>) -> Option<u64> {
    msg.session_expires
        .filter(|se| se.delta_s > 0)
        .map(|se| u64::from(se.delta_s) * 1000)
}

#[cfg(test)]
mod tests;
