//! Sans-IO usage tables: what is in use on this node right now.
//!
//! [`Tables`] holds the active calls and the registrations a SIP proxy reported, plus the
//! provisioned-subscriber gauge, and answers [`Tables::usage`] — the counts a license is
//! held against — without taking a lock. Events come in through
//! [`Tables::apply`]`(now, &Event)`; time only ever comes in as an argument.
//!
//! - [`calls`]: active calls keyed by a keyed fingerprint of Call-ID + From-tag, ending at a
//!   stop or at `max_call_duration_s` after the start or last refresh.
//! - [`registrations`]: AoR → contacts with their expiry; an AoR with a live contact is a
//!   registered subscriber.
//! - [`fingerprint`]: the keyed 128-bit fingerprints (xxh3-128 with a secret; why, and the
//!   measurements, are there).
//! - [`sequence`]: per-sender datagram numbering: duplicates, losses, restarts.
//! - [`peaks`]: highest usage since start and per minute over the last 24 hours.
//! - [`snapshot`]: the tables as bytes, so a restarted agent keeps its counts.
//! - [`owners`]: which sender reported each call and contact (a byte in spare bits).
//! - [`reconcile`]: heal the tables from a proxy's own list of dialogs and contacts.
//! - [`sync`]: such lists pushed by the proxy as `sync-*` text lines.
//!
//! **Invariants.**
//! - Every event is idempotent: a duplicate start, a stop without a start, a second stop, a
//!   refresh of an unknown call, a removal of an unknown contact change nothing.
//! - Counts equal the entries in the tables: each shard keeps its counters next to its map,
//!   updated under the shard's lock; [`Tables::usage`] sums them with relaxed loads, at a
//!   cost independent of the number of entries. A sum is not an atomic cut across shards.
//! - An expired call or contact is counted until [`Tables::sweep`] removes it (the IO layer
//!   calls it periodically) or the next event for it arrives; every event treats it as
//!   absent, so no outcome depends on when the sweep ran.
//! - Every table has a bound: configured ([`TablesConfig`]: `max_active_calls`,
//!   `max_aors`, `max_contacts_per_aor`, `max_expires_s`) or a named constant (tombstones
//!   per shard, sequence senders, minute slots). An event that would pass a configured bound
//!   is refused with an [`Outcome`] the caller counts by reason
//!   ([`Outcome::CallsTableFull`], [`Outcome::RegistrationsTableFull`],
//!   [`Outcome::BadNumber`]); nothing is ever silently clamped.
//!
//! **What this crate deliberately lacks:** sockets, clocks, threads, files, logging, license
//! logic. It never stores Call-IDs, AoRs or contacts, only keyed fingerprints of them. It
//! does not decide admission; it only counts.

pub mod aors;
pub mod calls;
pub mod fingerprint;
mod fpmap;
pub mod journal;
pub mod owners;
pub mod peaks;
pub mod reconcile;
pub mod registrations;
pub mod sequence;
pub mod snapshot;
pub mod sync;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tollgate_events::{CallRef, Event};

pub use aors::{
    AOR_CHANGES_MAX, AOR_TEXT_OVERHEAD_BYTES, AOR_TEXTS_BYTES_MAX, AorChange, AorDrain,
    AorIndexEntry, cluster_fingerprint,
};
pub use calls::{CallEvent, GROUP_PREFETCH_AHEAD, GroupScratch, Swept, TOMBSTONES_PER_SHARD_MAX};
pub use fingerprint::{Fingerprint, FingerprintKey, Fingerprinter};
pub use owners::{OWNERS_MAX, Owner, Owners};
pub use peaks::{MINUTE_SLOT_COUNT, MinutePeak, PeakCounts, Peaks};
pub use reconcile::{
    Correction, Corrections, Pass, ProxyList, Run, STEP_ENTRIES_DEFAULT, Scope,
    TOUCHED_PER_SHARD_MAX,
};
pub use registrations::CONTACTS_PER_AOR_LIMIT;
pub use sequence::{SEQ_SENDERS_MAX, SEQ_WINDOW_LEN, SeqVerdict, SequenceTracker};
pub use snapshot::{
    AorRecord, CallOwner, CallRecord, ContactOwner, ContactRecord, Frame, Restored, Snapshot,
    SnapshotError, SnapshotMeta, SnapshotOwners, SnapshotWriter, TombstoneRecord,
    decode as decode_snapshot, encode as encode_snapshot,
};
pub use sync::{CompleteList, SyncLists, SyncResult};

use calls::{CallEntry, CallTable, Restore};
use registrations::{Binding, RegTable};

pub use tollgate_events::{MonoTime, WallTime};

/// The former name of [`MonoTime`] (the tables' clock), kept so code written against it
/// still builds; new code names [`MonoTime`].
pub type Timestamp = MonoTime;

/// Largest shard count [`Tables::new`] uses.
pub const SHARD_COUNT_MAX: usize = 4096;

/// Default [`TablesConfig::max_active_calls`].
pub const MAX_ACTIVE_CALLS_DEFAULT: u64 = 10_000_000;
/// Default [`TablesConfig::max_aors`].
pub const MAX_AORS_DEFAULT: u64 = 10_000_000;
/// Default [`TablesConfig::max_contacts_per_aor`].
pub const MAX_CONTACTS_PER_AOR_DEFAULT: u32 = 32;
/// Default [`TablesConfig::max_expires_s`]: 7 days.
pub const MAX_EXPIRES_S_DEFAULT: u32 = 7 * 86_400;

/// Tunables of [`Tables`]. The agent validates ranges (an out-of-range value is a
/// configuration error); [`Tables::new`] only keeps them usable (at least 1).
#[derive(Debug, Clone)]
pub struct TablesConfig {
    /// A call with no stop and no refresh ends this long after its start or last refresh.
    /// At least 1 (0 is taken as 1).
    pub max_call_duration_s: u32,
    /// Shards per table; rounded up to a power of two within `1 ..= SHARD_COUNT_MAX`.
    pub shard_count: usize,
    /// How long a stop for an unknown call makes a late start of that call be ignored
    /// (see [`calls`]); 0 disables tombstones.
    pub tombstone_ttl_s: u32,
    /// Most active calls held; a start of a new call beyond it is refused
    /// ([`Outcome::CallsTableFull`]).
    pub max_active_calls: u64,
    /// Most AoRs held; a `reg` for a new AoR beyond it is refused
    /// ([`Outcome::RegistrationsTableFull`]).
    pub max_aors: u64,
    /// Most contacts tracked per AoR; a further contact replaces the one expiring first
    /// ([`Outcome::ContactReplaced`]). At most [`CONTACTS_PER_AOR_LIMIT`].
    pub max_contacts_per_aor: u32,
    /// Largest `expires` a `reg` may carry; above it the event is [`Outcome::BadNumber`].
    pub max_expires_s: u32,
    /// Mixed into the home slot of every call in the call table's maps (each shard derives
    /// its own). Entropy, passed in like the fingerprint key: the agent draws it from the
    /// OS at every start. Tables that restore a snapshot must not share the writer's seed,
    /// or the restore piles keys into long runs (`fpmap`'s module doc: 15.6 s instead of
    /// ~1 s at 10 M calls); the default (a constant) suits tables that never restore
    /// another's snapshot. Layout only: no count or decision depends on it.
    pub map_seed: u64,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            max_call_duration_s: 4 * 3600,
            shard_count: 64,
            tombstone_ttl_s: 32,
            max_active_calls: MAX_ACTIVE_CALLS_DEFAULT,
            max_aors: MAX_AORS_DEFAULT,
            max_contacts_per_aor: MAX_CONTACTS_PER_AOR_DEFAULT,
            max_expires_s: MAX_EXPIRES_S_DEFAULT,
            map_seed: MAP_SEED_DEFAULT,
        }
    }
}

/// [`TablesConfig::map_seed`]'s default: any constant will do for tables that never
/// restore a snapshot written by tables with the same seed.
pub const MAP_SEED_DEFAULT: u64 = 0x7011_6a7e_5eed_0001;

/// The counts, read without a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub calls: u64,
    pub emergency_calls: u64,
    pub registered_subscribers: u64,
    pub registered_contacts: u64,
    pub subscribers: u64,
    pub subscribers_reported_at: Option<MonoTime>,
}

/// What one event did to the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    CallStarted,
    CallAlreadyActive,
    /// A start that arrived after a stop of the same call (a tombstone): ignored.
    CallAlreadyStopped,
    CallStopped,
    CallUnknown,
    CallRefreshed,
    ContactAdded,
    ContactRefreshed,
    ContactRemoved,
    ContactUnknown,
    SubscribersSet,
    /// A contact beyond `max_contacts_per_aor`: it replaced the AoR's contact that expires
    /// first (the AoR stays registered; `registered_contacts` is a lower bound then).
    ContactReplaced,
    /// Refused: a new call while `max_active_calls` calls are active. Nothing changed.
    CallsTableFull,
    /// Refused: a new AoR while `max_aors` AoRs are registered. Nothing changed.
    RegistrationsTableFull,
    /// Refused: a number out of range (`expires` above `max_expires_s`, `subscribers` above
    /// [`tollgate_events::SUBSCRIBERS_MAX`]). Nothing changed.
    BadNumber,
    /// Not a change (an `admit` query).
    NotAChange,
}

impl Outcome {
    /// Whether the event changed the tables' contents.
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Outcome::CallStarted
                | Outcome::CallStopped
                | Outcome::CallRefreshed
                | Outcome::ContactAdded
                | Outcome::ContactRefreshed
                | Outcome::ContactRemoved
                | Outcome::SubscribersSet
                | Outcome::ContactReplaced
        )
    }
}

/// Runs of call events shorter than this are applied one lock per event by
/// [`Tables::apply_calls`]; longer ones one lock per shard (measured in
/// `docs/performance.md`).
pub const GROUP_MIN: usize = 128;

/// `subscribers_reported_at` value meaning "never".
const REPORTED_NEVER: u64 = u64::MAX;

/// What [`Tables::prefetch`] computed for one event: the call's fingerprint, if it is a
/// call event. Hand it back to [`Tables::apply_prefetched`] with the same event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefetched(Option<Fingerprint>);

impl Prefetched {
    /// Nothing computed (not a call event).
    pub const NONE: Prefetched = Prefetched(None);
}

/// A call event by its fingerprint, as an events record of the journal holds it
/// ([`journal::Entry::Call`]) and [`Tables::apply_call`] applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOp {
    Start { emergency: bool },
    Stop,
    Refresh,
}

impl CallOp {
    /// The verb of the event this came from, for per-verb counters.
    pub fn verb(self) -> tollgate_events::Verb {
        match self {
            CallOp::Start { .. } => tollgate_events::Verb::CallStart,
            CallOp::Stop => tollgate_events::Verb::CallStop,
            CallOp::Refresh => tollgate_events::Verb::CallRefresh,
        }
    }
}

/// The usage tables of one node. `&self` everywhere: share it between threads.
pub struct Tables {
    fingerprinter: Fingerprinter,
    fingerprint_key_id: u64,
    calls: CallTable,
    registrations: RegTable,
    subscribers: AtomicU64,
    subscribers_reported_at_ms: AtomicU64,
    peaks: Peaks,
    sweep_cursor: AtomicUsize,
    owners: Owners,
    sync: SyncLists,
    aor_feed: aors::AorFeed,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("shard_count", &self.shard_count())
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl Tables {
    pub fn new(config: TablesConfig, key: FingerprintKey) -> Self {
        let shard_count = config
            .shard_count
            .clamp(1, SHARD_COUNT_MAX)
            .next_power_of_two();
        Tables {
            fingerprinter: Fingerprinter::new(&key),
            fingerprint_key_id: key.id(),
            calls: CallTable::new(
                shard_count,
                config.max_call_duration_s.max(1),
                config.tombstone_ttl_s,
                config.max_active_calls,
                config.map_seed,
            ),
            registrations: RegTable::new(
                shard_count,
                config.max_aors,
                (config.max_contacts_per_aor as usize).clamp(1, CONTACTS_PER_AOR_LIMIT),
                config.max_expires_s,
            ),
            subscribers: AtomicU64::new(0),
            subscribers_reported_at_ms: AtomicU64::new(REPORTED_NEVER),
            peaks: Peaks::new(),
            sweep_cursor: AtomicUsize::new(0),
            owners: Owners::new(),
            sync: SyncLists::default(),
            aor_feed: aors::AorFeed::new(shard_count),
        }
    }

    /// Applies one event from no known sender ([`Owner::NONE`]). Idempotent (see the crate
    /// doc).
    #[inline]
    pub fn apply(&self, now: MonoTime, event: &Event<'_>) -> Outcome {
        self.apply_from(now, event, Owner::NONE)
    }

    /// The first half of [`Tables::apply_prefetched`]: computes a call event's fingerprint
    /// and asks the CPU to fetch the table slot it lives in, without taking a lock. Called
    /// for the next few events of a batch before the current one is applied (software
    /// pipelining), so their cache misses overlap instead of stalling one by one. Other
    /// events are passed through untouched.
    #[inline]
    pub fn prefetch(&self, event: &Event<'_>) -> Prefetched {
        let fp = match *event {
            Event::CallStart { call, .. }
            | Event::CallStop { call }
            | Event::CallRefresh { call } => self.fingerprinter.call(call),
            _ => return Prefetched(None),
        };
        self.calls.prefetch(fp);
        Prefetched(Some(fp))
    }

    /// A call event as a [`CallEvent`] reported by `owner`, to be applied with
    /// [`Tables::apply_calls`]; `None` for any other event. Its fingerprint is computed and
    /// its slot prefetched as [`Tables::prefetch`] does: the fetch overlaps the decoding and
    /// hashing of the events after it, and a run of a receive batch (a few hundred KB of
    /// slots at most) stays in the core's L2 until it is applied.
    #[inline]
    pub fn call_event(&self, event: &Event<'_>, owner: Owner) -> Option<CallEvent> {
        let (call, op) = match *event {
            Event::CallStart { call, emergency } => (call, CallOp::Start { emergency }),
            Event::CallStop { call } => (call, CallOp::Stop),
            Event::CallRefresh { call } => (call, CallOp::Refresh),
            _ => return None,
        };
        let fingerprint = self.fingerprinter.call(call);
        self.calls.prefetch(fingerprint);
        Some(CallEvent {
            fingerprint,
            op,
            owner,
        })
    }

    /// Applies a run of call events, in effect in their order: each shard's lock is taken
    /// once for all of the run's events in that shard, not once per event (see
    /// `CallTable::apply_grouped`: the order changes between shards only, which changes no
    /// outcome). `each(i, outcome)` is called once for every `events[i]`, not in index
    /// order. Runs shorter than [`GROUP_MIN`] are applied one by one.
    pub fn apply_calls(
        &self,
        now: MonoTime,
        events: &[CallEvent],
        scratch: &mut GroupScratch,
        mut each: impl FnMut(usize, Outcome),
    ) {
        let now_s = now.unix_secs_u32();
        if events.len() < GROUP_MIN {
            for (i, event) in events.iter().enumerate() {
                each(i, self.calls.apply_one(event, now_s));
            }
            return;
        }
        self.calls.apply_grouped(events, now_s, scratch, each);
    }

    /// [`Tables::apply_from`] for an event [`Tables::prefetch`] was called for (with what it
    /// returned): the fingerprint is not computed again. Same outcome as `apply_from`.
    #[inline]
    pub fn apply_prefetched(
        &self,
        now: MonoTime,
        event: &Event<'_>,
        owner: Owner,
        prefetched: Prefetched,
    ) -> Outcome {
        let Prefetched(Some(fp)) = prefetched else {
            return self.apply_from(now, event, owner);
        };
        let now_s = now.unix_secs_u32();
        match *event {
            Event::CallStart { call, emergency } => {
                debug_assert_eq!(fp, self.fingerprinter.call(call));
                self.calls.start(fp, emergency, owner, now_s)
            }
            Event::CallStop { call } => {
                debug_assert_eq!(fp, self.fingerprinter.call(call));
                self.calls.stop(fp, now_s)
            }
            Event::CallRefresh { call } => {
                debug_assert_eq!(fp, self.fingerprinter.call(call));
                self.calls.refresh(fp, now_s)
            }
            _ => self.apply_from(now, event, owner),
        }
    }

    /// The fingerprint a call is keyed by in the call table (what an events record of the
    /// journal holds instead of the Call-ID).
    #[inline]
    pub fn call_fingerprint(&self, call: CallRef<'_>) -> Fingerprint {
        self.fingerprinter.call(call)
    }

    /// Asks the CPU to fetch the call table slot `call` lives in ([`Tables::prefetch`] for a
    /// fingerprint already computed).
    #[inline]
    pub fn prefetch_call(&self, call: Fingerprint) {
        self.calls.prefetch(call);
    }

    /// Applies a call event by its fingerprint ([`Tables::call_fingerprint`]): the same
    /// outcome as [`Tables::apply_from`] with the event it came from.
    #[inline]
    pub fn apply_call(
        &self,
        now: MonoTime,
        op: CallOp,
        call: Fingerprint,
        owner: Owner,
    ) -> Outcome {
        let now_s = now.unix_secs_u32();
        match op {
            CallOp::Start { emergency } => self.calls.start(call, emergency, owner, now_s),
            CallOp::Stop => self.calls.stop(call, now_s),
            CallOp::Refresh => self.calls.refresh(call, now_s),
        }
    }

    /// Applies one event reported by `owner` (see [`owners`]): a call start or a contact
    /// registration records it. Idempotent (see the crate doc).
    #[inline]
    pub fn apply_from(&self, now: MonoTime, event: &Event<'_>, owner: Owner) -> Outcome {
        let now_s = now.unix_secs_u32();
        match *event {
            Event::CallStart { call, emergency } => {
                self.calls
                    .start(self.fingerprinter.call(call), emergency, owner, now_s)
            }
            Event::CallStop { call } => self.calls.stop(self.fingerprinter.call(call), now_s),
            Event::CallRefresh { call } => self.calls.refresh(self.fingerprinter.call(call), now_s),
            Event::Register {
                aor,
                contact,
                expires_s,
            } => {
                let aor_fp = self.fingerprinter.aor(aor);
                let outcome = self.registrations.register(
                    aor_fp,
                    self.fingerprinter.contact(contact),
                    expires_s,
                    owner,
                    now_s,
                );
                if self.aor_feed.enabled() {
                    match outcome {
                        Outcome::ContactAdded | Outcome::ContactRefreshed => {
                            self.aor_registered(aor_fp, aor)
                        }
                        Outcome::ContactRemoved | Outcome::ContactUnknown => {
                            self.aor_maybe_gone(aor_fp)
                        }
                        _ => {}
                    }
                }
                outcome
            }
            Event::Subscribers { count } => {
                if count > tollgate_events::SUBSCRIBERS_MAX {
                    return Outcome::BadNumber;
                }
                self.set_subscribers(now, count);
                Outcome::SubscribersSet
            }
            // A query; `sync-*` lines go through [`Tables::sync_line`].
            Event::Admit { .. } | Event::Sync(_) => Outcome::NotAChange,
        }
    }

    fn set_subscribers(&self, now: MonoTime, count: u64) {
        // Two stores: a concurrent reader may pair one report's count with the next one's
        // time; both are real reports.
        self.subscribers.store(count, Ordering::Relaxed);
        let at = if now.0 == REPORTED_NEVER {
            REPORTED_NEVER - 1
        } else {
            now.0
        };
        self.subscribers_reported_at_ms.store(at, Ordering::Relaxed);
    }

    /// The counts: relaxed loads of per-shard counters, no lock, cost independent of the
    /// number of entries.
    pub fn usage(&self) -> Usage {
        let (calls, emergency_calls) = self.calls.counts();
        let (registered_subscribers, registered_contacts) = self.registrations.counts();
        let reported_at = self.subscribers_reported_at_ms.load(Ordering::Relaxed);
        Usage {
            calls,
            emergency_calls,
            registered_subscribers,
            registered_contacts,
            subscribers: self.subscribers.load(Ordering::Relaxed),
            subscribers_reported_at: (reported_at != REPORTED_NEVER)
                .then_some(MonoTime(reported_at)),
        }
    }

    /// Removes expired calls, contacts and tombstones from up to `shard_budget` shards
    /// (at least one), continuing where the previous sweep stopped. Holds one shard lock
    /// at a time (~36 µs per shard at 1 M calls over 64 shards). A full pass takes
    /// `shard_count()` shards' worth of budget; the IO layer calls this periodically, e.g.
    /// every 100 ms with a budget that completes a pass every second or so. Expired entries
    /// are counted until swept, so the pass period bounds how long usage overstates.
    pub fn sweep(&self, now: MonoTime, shard_budget: usize) -> Swept {
        let now_s = now.unix_secs_u32();
        let shard_count = self.shard_count();
        let mut swept = Swept::default();
        let mut gone = Vec::new();
        let feed = self.aor_feed.enabled();
        for _ in 0..shard_budget.clamp(1, shard_count) {
            let index = self.sweep_cursor.fetch_add(1, Ordering::Relaxed) % shard_count;
            self.calls.sweep_shard(index, now_s, &mut swept);
            self.registrations
                .sweep_shard(index, now_s, &mut swept, feed.then_some(&mut gone));
            for aor in gone.drain(..) {
                self.aor_maybe_gone(aor);
            }
            swept.shards += 1;
            swept.pass_completed |= index == shard_count - 1;
        }
        swept
    }

    /// Shards per table (a power of two).
    pub fn shard_count(&self) -> usize {
        self.calls.shards.len()
    }

    /// The sender names behind [`Owner`] ids.
    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    /// The public id of the fingerprint key these tables use.
    pub fn fingerprint_key_id(&self) -> u64 {
        self.fingerprint_key_id
    }

    /// The peaks these tables' usage reached, as fed by [`Tables::observe_peaks`].
    pub fn peaks(&self) -> &Peaks {
        &self.peaks
    }

    /// Feeds the current usage into [`Tables::peaks`] and returns it. Call once per ingest
    /// batch (see [`peaks`] for why not on every event).
    pub fn observe_peaks(&self, now: MonoTime) -> Usage {
        let usage = self.usage();
        self.peaks
            .observe(now, usage.calls, usage.registered_subscribers);
        self.peaks.observe_interval(
            usage.calls,
            usage.emergency_calls,
            usage.registered_subscribers,
        );
        usage
    }

    /// Appends call shard `index`'s live calls and tombstones as of `now_s`.
    fn collect_calls_shard(
        &self,
        index: usize,
        now_s: u32,
        calls: &mut Vec<CallRecord>,
        tombstones: &mut Vec<TombstoneRecord>,
        owners: &mut Vec<CallOwner>,
    ) {
        let state = self.calls.shards[index].state.lock();
        for (fp, e) in state.map.iter() {
            if e.deadline_s() <= now_s {
                continue;
            }
            if e.is_tombstone() {
                tombstones.push(TombstoneRecord {
                    fingerprint: fp.to_bytes(),
                    deadline_s: e.deadline_s(),
                });
            } else {
                calls.push(CallRecord {
                    fingerprint: fp.to_bytes(),
                    deadline_s: e.deadline_s(),
                    started_s: e.started_s(now_s),
                    emergency: e.is_emergency(),
                });
                if e.owner() != Owner::NONE {
                    owners.push(CallOwner {
                        fingerprint: fp.to_bytes(),
                        owner: e.owner().0,
                    });
                }
            }
        }
    }

    /// Appends registration shard `index`'s AoRs with live contacts as of `now_s`.
    fn collect_registrations_shard(
        &self,
        index: usize,
        now_s: u32,
        aors: &mut Vec<AorRecord>,
        owners: &mut Vec<ContactOwner>,
    ) {
        let map = self.registrations.shards[index].map.lock();
        aors.extend(map.iter().filter_map(|(fp, aor)| {
            owners.extend(
                aor.bindings()
                    .filter(|b| b.expires_s > now_s && b.owner() != Owner::NONE)
                    .map(|b| ContactOwner {
                        aor: fp.to_bytes(),
                        contact_hash: b.contact_hash(),
                        owner: b.owner().0,
                    }),
            );
            let contacts: Vec<ContactRecord> = aor
                .bindings()
                .filter(|b| b.expires_s > now_s)
                .map(|b| ContactRecord {
                    contact_hash: b.contact_hash(),
                    expires_s: b.expires_s,
                })
                .collect();
            (!contacts.is_empty()).then_some(AorRecord {
                fingerprint: fp.to_bytes(),
                contacts,
            })
        }));
    }

    fn snapshot_meta(&self, now: MonoTime) -> SnapshotMeta {
        let usage = self.usage();
        SnapshotMeta {
            taken_at: now,
            fingerprint_key_id: self.fingerprint_key_id,
            subscribers: usage.subscribers,
            subscribers_reported_at: usage.subscribers_reported_at,
            peaks: self.peaks.minutes(now),
            // The tables clock is anchored at Unix time; the agent sets the real wall clock.
            wall_at: WallTime::from_unix_ms(now.unix_ms()),
            journal_segment: 0,
        }
    }

    /// Copies the live contents into memory, shard by shard (one lock at a time). For tests
    /// and tools: the agent streams with [`Tables::write_snapshot`] instead.
    pub fn snapshot(&self, now: MonoTime) -> Snapshot {
        let now_s = now.unix_secs_u32();
        let usage = self.usage();
        let mut calls = Vec::with_capacity(usage.calls as usize);
        let mut tombstones = Vec::new();
        let mut owners = SnapshotOwners {
            names: self.owners.names(),
            ..SnapshotOwners::default()
        };
        for index in 0..self.calls.shards.len() {
            self.collect_calls_shard(index, now_s, &mut calls, &mut tombstones, &mut owners.calls);
        }
        let mut registrations = Vec::with_capacity(usage.registered_subscribers as usize);
        for index in 0..self.registrations.shards.len() {
            self.collect_registrations_shard(
                index,
                now_s,
                &mut registrations,
                &mut owners.contacts,
            );
        }
        let meta = self.snapshot_meta(now);
        let snapshot = Snapshot {
            taken_at: meta.taken_at,
            fingerprint_key_id: meta.fingerprint_key_id,
            calls,
            registrations,
            subscribers: meta.subscribers,
            subscribers_reported_at: meta.subscribers_reported_at,
            peaks: meta.peaks,
            wall_at: meta.wall_at,
            journal_segment: meta.journal_segment,
            tombstones,
            owners,
        };
        debug_assert!(snapshot.validate().is_ok());
        snapshot
    }

    /// Writes a snapshot as of `now` to `out`, streaming: one shard's entries are copied
    /// (under that shard's lock only), written as frames, and the buffer reused for the
    /// next shard, so memory beyond the tables is one shard's entries whatever the table
    /// size. `wall_at` is the wall clock at `now`, `journal_segment` the first journal
    /// segment the snapshot does not contain. Returns the bytes written and the counts.
    pub fn write_snapshot<W: std::io::Write>(
        &self,
        now: MonoTime,
        wall_at: WallTime,
        journal_segment: u64,
        out: W,
    ) -> std::io::Result<(W, u64)> {
        let now_s = now.unix_secs_u32();
        let mut meta = self.snapshot_meta(now);
        meta.wall_at = wall_at;
        meta.journal_segment = journal_segment;
        let mut w = SnapshotWriter::new(out, &meta)?;
        w.owners(&self.owners.names())?;
        let (mut calls, mut tombstones, mut call_owners) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..self.calls.shards.len() {
            calls.clear();
            tombstones.clear();
            call_owners.clear();
            self.collect_calls_shard(index, now_s, &mut calls, &mut tombstones, &mut call_owners);
            w.calls(&calls)?;
            w.call_owners(&call_owners)?;
            w.tombstones(&tombstones)?;
        }
        drop((calls, tombstones, call_owners));
        let (mut aors, mut contact_owners) = (Vec::new(), Vec::new());
        for index in 0..self.registrations.shards.len() {
            aors.clear();
            contact_owners.clear();
            self.collect_registrations_shard(index, now_s, &mut aors, &mut contact_owners);
            w.registrations(&aors)?;
            w.contact_owners(&contact_owners)?;
        }
        w.finish()
    }

    /// Puts a snapshot's entries back, dropping those expired by `now`. Meant for empty
    /// tables at start-up; entries already present are kept as they are (a known contact
    /// keeps the later expiry). The subscriber gauge is restored unless a newer report is
    /// already here; minute peaks are merged.
    pub fn restore(&self, now: MonoTime, snapshot: &Snapshot) -> Result<Restored, SnapshotError> {
        if snapshot.fingerprint_key_id != self.fingerprint_key_id {
            return Err(SnapshotError::KeyMismatch);
        }
        snapshot.validate()?;
        let now_s = now.unix_secs_u32();
        let mut restored = Restored::default();
        self.restore_calls(now_s, &snapshot.calls, &mut restored);
        self.restore_tombstones(now_s, &snapshot.tombstones);
        self.restore_registrations(now_s, &snapshot.registrations, &mut restored);
        let ids = self.intern_owners(&snapshot.owners.names);
        self.restore_call_owners(&ids, &snapshot.owners.calls);
        self.restore_contact_owners(&ids, &snapshot.owners.contacts);
        self.restore_meta(
            now,
            snapshot.subscribers,
            snapshot.subscribers_reported_at,
            &snapshot.peaks,
        );
        Ok(restored)
    }

    /// Restores snapshot bytes (any format version): [`Tables::restore_reader`] on them.
    pub fn restore_bytes(&self, bytes: &[u8]) -> Result<(Restored, SnapshotMeta), SnapshotError> {
        self.restore_reader(std::io::Cursor::new(bytes))
    }

    /// Restores a snapshot file (any format version) as of the time the snapshot was taken,
    /// streaming, in two passes over the file with one frame in memory at a time: the first
    /// checks it whole (trailer, hash, every frame, the end counts) and changes nothing, the
    /// second restores frame by frame. A bad file therefore changes nothing, and no copy of
    /// the file or of the entries is built beside the tables. (Only a file rewritten in
    /// place between the two passes can fail the second one, after some entries went in.)
    /// Versions 1 and 2 (one body) are read whole. Returns what was restored and the
    /// snapshot's meta.
    pub fn restore_reader<R: std::io::Read + std::io::Seek>(
        &self,
        input: R,
    ) -> Result<(Restored, SnapshotMeta), SnapshotError> {
        let (meta, mut frames) = match snapshot::open_reader(input)? {
            snapshot::OpenedReader::Whole(s) => {
                let restored = self.restore(s.taken_at, &s)?;
                let meta = SnapshotMeta {
                    taken_at: s.taken_at,
                    fingerprint_key_id: s.fingerprint_key_id,
                    subscribers: s.subscribers,
                    subscribers_reported_at: s.subscribers_reported_at,
                    peaks: s.peaks,
                    wall_at: s.wall_at,
                    journal_segment: s.journal_segment,
                };
                return Ok((restored, meta));
            }
            snapshot::OpenedReader::Frames(meta, frames) => (meta, frames),
        };
        // Pass 1: check every frame and the hash before the first change.
        while frames.next_frame()?.is_some() {}
        if meta.fingerprint_key_id != self.fingerprint_key_id {
            return Err(SnapshotError::KeyMismatch);
        }
        // Pass 2: restore.
        let snapshot::OpenedReader::Frames(meta, mut frames) =
            snapshot::open_reader(frames.into_inner())?
        else {
            return Err(SnapshotError::Invalid(
                "the file changed while being restored",
            ));
        };
        let now = meta.taken_at;
        let now_s = now.unix_secs_u32();
        let mut restored = Restored::default();
        let mut ids = Vec::new();
        while let Some(frame) = frames.next_frame()? {
            match frame {
                Frame::Calls(v) => self.restore_calls(now_s, &v, &mut restored),
                Frame::Tombstones(v) => self.restore_tombstones(now_s, &v),
                Frame::Registrations(v) => self.restore_registrations(now_s, &v, &mut restored),
                Frame::Owners(names) => ids = self.intern_owners(&names),
                Frame::CallOwners(v) => self.restore_call_owners(&ids, &v),
                Frame::ContactOwners(v) => self.restore_contact_owners(&ids, &v),
                Frame::Meta(_) | Frame::End(_) => {}
            }
        }
        self.restore_meta(
            now,
            meta.subscribers,
            meta.subscribers_reported_at,
            &meta.peaks,
        );
        Ok((restored, meta))
    }

    fn restore_calls(&self, now_s: u32, calls: &[CallRecord], restored: &mut Restored) {
        for call in calls {
            if call.deadline_s <= now_s {
                restored.dropped_expired += 1;
                continue;
            }
            let entry =
                CallEntry::call(call.deadline_s, call.started_s, call.emergency, Owner::NONE);
            match self
                .calls
                .restore(Fingerprint::from_bytes(call.fingerprint), entry)
            {
                Restore::Inserted => restored.calls += 1,
                Restore::Present => {}
                Restore::Full => restored.dropped_full += 1,
            }
        }
    }

    /// This process's owner ids for a snapshot's owner names (index `n - 1` for the
    /// snapshot's id `n`).
    fn intern_owners(&self, names: &[String]) -> Vec<Owner> {
        names
            .iter()
            .map(|name| self.owners.intern(name.as_bytes()))
            .collect()
    }

    /// Gives restored calls their owners back; ids the names do not cover stay unowned.
    fn restore_call_owners(&self, ids: &[Owner], owners: &[CallOwner]) {
        for o in owners {
            let Some(&owner) = usize::from(o.owner).checked_sub(1).and_then(|i| ids.get(i)) else {
                continue;
            };
            let fp = Fingerprint::from_bytes(o.fingerprint);
            let mut state = self.calls.shard(fp).state.lock();
            if let Some(entry) = state.map.get_mut(&fp)
                && !entry.is_tombstone()
            {
                entry.set_owner(owner);
            }
        }
    }

    /// Gives restored contacts their owners back.
    fn restore_contact_owners(&self, ids: &[Owner], owners: &[ContactOwner]) {
        for o in owners {
            let Some(&owner) = usize::from(o.owner).checked_sub(1).and_then(|i| ids.get(i)) else {
                continue;
            };
            let aor = Fingerprint::from_bytes(o.aor);
            let mut state = self.registrations.shard(aor).map.lock();
            if let Some(entry) = state.map.get_mut(&aor)
                && let Some(position) = entry.position(o.contact_hash)
                && let Some(binding) = entry.get_mut(position)
            {
                binding.set_owner(owner);
            }
        }
    }

    fn restore_tombstones(&self, now_s: u32, tombstones: &[TombstoneRecord]) {
        for t in tombstones {
            if t.deadline_s > now_s {
                self.calls
                    .restore_tombstone(Fingerprint::from_bytes(t.fingerprint), t.deadline_s);
            }
        }
    }

    fn restore_registrations(&self, now_s: u32, aors: &[AorRecord], restored: &mut Restored) {
        let mut live = Vec::new();
        for aor in aors {
            live.clear();
            live.extend(
                aor.contacts
                    .iter()
                    .filter(|c| c.expires_s > now_s)
                    .map(|c| Binding::new(c.contact_hash, c.expires_s)),
            );
            restored.dropped_expired += (aor.contacts.len() - live.len()) as u64;
            let (result, contacts) =
                self.registrations
                    .restore(Fingerprint::from_bytes(aor.fingerprint), &live, now_s);
            restored.contacts += contacts;
            if result == Restore::Full {
                restored.dropped_full += live.len() as u64;
            }
        }
    }

    fn restore_meta(
        &self,
        now: MonoTime,
        subscribers: u64,
        subscribers_reported_at: Option<MonoTime>,
        peaks: &[MinutePeak],
    ) {
        let current = self.usage();
        if let Some(reported_at) = subscribers_reported_at
            && current
                .subscribers_reported_at
                .is_none_or(|at| at < reported_at)
        {
            self.set_subscribers(reported_at, subscribers);
        }
        self.peaks.merge_minutes(now, peaks);
    }

    #[cfg(test)]
    fn tombstones(&self) -> u64 {
        self.calls.tombstones()
    }
}

#[cfg(test)]
mod tests;
