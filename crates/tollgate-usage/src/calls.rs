//! The active-calls table: sharded maps from call fingerprint to a 8-byte entry.
//!
//! **Invariant:** a shard's `calls` and `emergency_calls` atomics equal the number of
//! non-tombstone entries (and of those with the emergency flag) in its map. They are written
//! only while the shard lock is held and read by [`crate::Tables::usage`] without it.
//!
//! **Expiry.** A call ends at its deadline (start or last refresh + `max_call_duration_s`).
//! An expired entry stays (and is counted) until the sweep removes it or the next event for
//! the same call touches it; every event treats an expired entry exactly as an absent one,
//! so outcomes do not depend on when the sweep ran.
//!
//! **Tombstones (stop before start).** A stop for an unknown call leaves a tombstone for
//! `tombstone_ttl_s` (default 32 s): a start arriving within that time (reordered behind its
//! stop, or a late retransmission) is ignored with [`Outcome::CallAlreadyStopped`]. This
//! costs nothing on the normal path: a start only looks at the flag when it finds an entry
//! (which it must look up anyway to be idempotent), and only stops of unknown calls insert.
//! Tombstones are not counted as calls, are not snapshotted, and are capped per shard
//! ([`TOMBSTONES_PER_SHARD_MAX`]) so a flood of bogus stops cannot grow the table without
//! bound: past the cap a stop without start just changes nothing. A stop does *not* leave a
//! tombstone for a call it ended: a duplicate start after its stop is caught by the
//! datagram sequence check ([`crate::SequenceTracker`]) when the sender numbers its
//! datagrams, and otherwise counts until `max_call_duration_s` — the documented bound.
//!
//! **Bound:** at most `max_active_calls` calls ([`crate::TablesConfig`]); a start of a new
//! call beyond it is refused with [`Outcome::CallsTableFull`] and changes nothing (a start
//! of a call already present, or one replacing its own expired entry, is never refused).
//! The check costs nothing while every shard holds at most its share
//! (`max_active_calls / shard_count`): then the total cannot exceed the cap. Only once a
//! shard is past its share (the table is near full) does a new start sum the shard
//! counters (~64 relaxed loads). Exact with one ingest thread; with several, starts racing
//! in different shards at the very edge can pass the cap by at most one call per thread.
//!
//! **Layout.** Each shard's map is an open-addressing table of 24-byte slots (16-byte
//! fingerprint + 8-byte [`CallEntry`], [`crate::fpmap`]): the home slot follows from the
//! fingerprint, so the ingest path prefetches it for the next events of a batch before
//! applying the current one ([`crate::Tables::prefetch`]); a cache miss then overlaps
//! others instead of stalling alone. Tried first and replaced: `hashbrown` (a control-byte
//! group and a bucket on two cache lines per lookup, neither addressable from outside).
//!
//! **Measured** (`docs/performance.md`: `tools/table-memory`, `ingest-bench --method
//! table`): 50.4 heap bytes per call at 1 M calls (24-byte slots at most 3/4 full, ~32–64
//! bytes depending on where a shard is in its doubling); ns per event at 65 536, 1 M and
//! 10 M open calls, plain and batched with prefetch, in `docs/performance.md`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::fingerprint::Fingerprint;
use crate::fpmap::{Entry, FpMap};
use crate::owners::Owner;
use crate::reconcile::Touched;
use crate::{CallOp, Outcome};

/// Most tombstones one shard holds (see the module doc). 64 shards × 1024 × 24 bytes ≈ 3 MiB.
pub const TOMBSTONES_PER_SHARD_MAX: u32 = 1024;

/// In [`CallTable::apply_grouped`], how many events of a shard's group ahead of the one
/// being applied have their slot prefetched.
pub const GROUP_PREFETCH_AHEAD: usize = 16;

/// A call event reduced to what the table needs: its fingerprint (computed once, see
/// [`crate::Tables::call_event`]), what it does and who reported it. 24 bytes, no borrow of
/// the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallEvent {
    pub fingerprint: Fingerprint,
    pub op: CallOp,
    pub owner: Owner,
}

/// Reusable buffers of [`crate::Tables::apply_calls`] (the grouping by shard), so that a
/// receive loop allocates them once.
#[derive(Debug, Default)]
pub struct GroupScratch {
    /// Indices of the run's events, grouped by shard.
    order: Vec<u32>,
    /// Per shard, where its group ends in `order` (a prefix sum; one extra entry).
    ends: Vec<u32>,
}

/// Times in entries are u32 unix seconds (until 2106). `started` is informational (snapshots
/// carry it): stored as unix seconds modulo 2^22 (48.5 days) and read back as the latest
/// such second not after `now`, so it is exact for calls younger than 48 days.
const STARTED_BITS: u32 = 22;
const STARTED_MASK: u32 = (1 << STARTED_BITS) - 1;
const EMERGENCY_FLAG: u32 = 1 << 31;
const TOMBSTONE_FLAG: u32 = 1 << 30;
const OWNER_SHIFT: u32 = STARTED_BITS;
const OWNER_MASK: u32 = 0xFF << OWNER_SHIFT;

/// One active call (or tombstone): 8 bytes, so a map slot is 24 bytes with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CallEntry {
    /// The call ends (or the tombstone lapses) when `now_s >= deadline_s`.
    deadline_s: u32,
    /// Emergency flag (bit 31), tombstone flag (bit 30), owner (bits 22..30, see
    /// [`crate::owners`]), started modulo 2^22 (bits 0..22).
    meta: u32,
}

const _: () = assert!(size_of::<CallEntry>() == 8);
const _: () = assert!(size_of::<(Fingerprint, CallEntry)>() == 24);

impl CallEntry {
    pub(crate) fn call(deadline_s: u32, started_s: u32, emergency: bool, owner: Owner) -> Self {
        let meta = (started_s & STARTED_MASK)
            | (u32::from(owner.0) << OWNER_SHIFT)
            | if emergency { EMERGENCY_FLAG } else { 0 };
        CallEntry { deadline_s, meta }
    }

    pub(crate) fn owner(self) -> Owner {
        Owner(((self.meta & OWNER_MASK) >> OWNER_SHIFT) as u8)
    }

    pub(crate) fn set_owner(&mut self, owner: Owner) {
        self.meta = (self.meta & !OWNER_MASK) | (u32::from(owner.0) << OWNER_SHIFT);
    }

    pub(crate) fn set_emergency(&mut self, emergency: bool) {
        if emergency {
            self.meta |= EMERGENCY_FLAG;
        } else {
            self.meta &= !EMERGENCY_FLAG;
        }
    }

    fn tombstone(deadline_s: u32) -> Self {
        CallEntry {
            deadline_s,
            meta: TOMBSTONE_FLAG,
        }
    }

    pub(crate) fn deadline_s(self) -> u32 {
        self.deadline_s
    }

    pub(crate) fn is_emergency(self) -> bool {
        self.meta & EMERGENCY_FLAG != 0
    }

    pub(crate) fn is_tombstone(self) -> bool {
        self.meta & TOMBSTONE_FLAG != 0
    }

    /// Unix seconds the call started: the latest second not after `now_s` that matches the
    /// stored 22 bits (exact for calls younger than 48.5 days).
    pub(crate) fn started_s(self, now_s: u32) -> u32 {
        let age = now_s.wrapping_sub(self.meta & STARTED_MASK) & STARTED_MASK;
        now_s.saturating_sub(age)
    }

    pub(crate) fn is_expired(self, now_s: u32) -> bool {
        now_s >= self.deadline_s
    }
}

/// Open addressing, 24-byte slots, home slot from the key ([`crate::fpmap`]).
pub(crate) type CallMap = FpMap<CallEntry>;

pub(crate) struct CallState {
    pub(crate) map: CallMap,
    pub(crate) tombstones: u32,
    /// Calls touched by an event while a reconciliation runs (see [`crate::reconcile`]).
    pub(crate) touched: Touched,
}

pub(crate) struct CallShard {
    pub(crate) state: Mutex<CallState>,
    calls: AtomicU64,
    emergency_calls: AtomicU64,
    /// The map's slot array and mask as of the last change under the lock, so a thread
    /// can prefetch a key's home slot before taking the lock ([`CallTable::prefetch`]).
    /// Read without the lock, possibly stale: only ever used as a prefetch address.
    slots_hint: AtomicUsize,
    shift_hint: AtomicU32,
    /// The map's seed (fixed for its life).
    seed: u64,
}

impl CallShard {
    fn new(seed: u64) -> Self {
        let map = CallMap::with_seed(seed);
        CallShard {
            seed,
            state: Mutex::new(CallState {
                map,
                tombstones: 0,
                touched: Touched::default(),
            }),
            calls: AtomicU64::new(0),
            emergency_calls: AtomicU64::new(0),
            slots_hint: AtomicUsize::new(0),
            shift_hint: AtomicU32::new(63),
        }
    }

    /// Publishes where the map's slots are now (the caller holds the lock and may have
    /// grown or shrunk the map). Two relaxed stores on the shard's own cache line.
    #[inline]
    pub(crate) fn publish_hint(&self, map: &CallMap) {
        let (slots, shift) = map.slot_array();
        if self.slots_hint.load(Ordering::Relaxed) != slots {
            self.shift_hint.store(shift, Ordering::Relaxed);
            self.slots_hint.store(slots, Ordering::Relaxed);
        }
    }

    /// Adjusts the counters; the caller holds this shard's lock (a plain load + store is
    /// enough: no other writer can run).
    #[inline]
    pub(crate) fn count(&self, calls: i64, emergency_calls: i64) {
        add(&self.calls, calls);
        if emergency_calls != 0 {
            add(&self.emergency_calls, emergency_calls);
        }
    }
}

#[inline]
pub(crate) fn add(counter: &AtomicU64, delta: i64) {
    let old = counter.load(Ordering::Relaxed);
    debug_assert!(
        delta >= 0 || old >= delta.unsigned_abs(),
        "counter went below zero"
    );
    counter.store(old.wrapping_add_signed(delta), Ordering::Relaxed);
}

pub(crate) fn emergency_delta(emergency: bool) -> i64 {
    i64::from(emergency)
}

/// What a sweep of some shards removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Calls that reached their deadline.
    pub calls: u64,
    /// Registered contacts that reached their expiry.
    pub contacts: u64,
    /// Tombstones that lapsed.
    pub tombstones: u64,
    /// Shards visited by this call.
    pub shards: usize,
    /// Whether this call visited the last shard, completing a pass over the tables.
    pub pass_completed: bool,
}

/// A cap on the sum of per-shard counters, checked without summing while every shard is
/// within its share (see the module doc).
#[derive(Debug)]
pub(crate) struct Cap {
    max: u64,
    /// `max / shard_count`: while no shard holds more, the sum is within `max`.
    share: u64,
    /// Shards holding more than `share`.
    over_share: CachePadded<AtomicUsize>,
}

impl Cap {
    pub(crate) fn new(max: u64, shard_count: usize) -> Self {
        Cap {
            max,
            share: max / shard_count as u64,
            over_share: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Whether one more entry fits, for a shard holding `in_shard` now; `total` sums every
    /// shard (called only when the cheap test cannot decide).
    #[inline]
    pub(crate) fn has_room(&self, in_shard: u64, total: impl FnOnce() -> u64) -> bool {
        if in_shard < self.share && self.over_share.load(Ordering::Relaxed) == 0 {
            return true;
        }
        total() < self.max
    }

    /// Whether `starts` new entries all fit, whatever their order; `total` sums every
    /// shard (called unless nothing starts).
    #[inline]
    pub(crate) fn has_room_for(&self, starts: u64, total: impl FnOnce() -> u64) -> bool {
        starts == 0 || total().saturating_add(starts) <= self.max
    }

    /// Notes that a shard's count went from `old` to `new` (under that shard's lock).
    #[inline]
    pub(crate) fn moved(&self, old: u64, new: u64) {
        match (old > self.share, new > self.share) {
            (false, true) => {
                self.over_share.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.over_share.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Each shard's map gets a seed of its own, derived from the tables' one (splitmix64's
/// finalizer over seed + shard index).
fn shard_seed(map_seed: u64, shard: usize) -> u64 {
    let mut z = map_seed.wrapping_add((shard as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) struct CallTable {
    pub(crate) shards: Box<[CachePadded<CallShard>]>,
    shard_mask: u64,
    pub(crate) max_call_duration_s: u32,
    tombstone_ttl_s: u32,
    cap: Cap,
}

impl CallTable {
    pub(crate) fn new(
        shard_count: usize,
        max_call_duration_s: u32,
        tombstone_ttl_s: u32,
        max_active_calls: u64,
        map_seed: u64,
    ) -> Self {
        debug_assert!(shard_count.is_power_of_two());
        debug_assert!(max_call_duration_s > 0);
        CallTable {
            shards: (0..shard_count)
                .map(|i| CachePadded::new(CallShard::new(shard_seed(map_seed, i))))
                .collect(),
            shard_mask: shard_count as u64 - 1,
            max_call_duration_s,
            tombstone_ttl_s,
            cap: Cap::new(max_active_calls, shard_count),
        }
    }

    /// Adjusts a shard's counters (the caller holds its lock) and the cap's bookkeeping.
    /// Every change of a shard's `calls` goes through here.
    #[inline]
    pub(crate) fn count(&self, shard: &CallShard, calls: i64, emergency_calls: i64) {
        if calls != 0 {
            let old = shard.calls.load(Ordering::Relaxed);
            shard.count(calls, emergency_calls);
            self.cap.moved(old, old.wrapping_add_signed(calls));
        } else {
            shard.count(0, emergency_calls);
        }
    }

    /// Whether a new call fits in `shard` (the caller holds its lock).
    #[inline]
    fn has_room(&self, shard: &CallShard) -> bool {
        self.has_room_with(shard, 0)
    }

    /// [`CallTable::has_room`] for a caller that has added `pending` calls to `shard`
    /// without counting them yet (a batch under the shard's lock).
    #[inline]
    pub(crate) fn has_room_with(&self, shard: &CallShard, pending: i64) -> bool {
        let in_shard = shard
            .calls
            .load(Ordering::Relaxed)
            .saturating_add_signed(pending);
        self.cap
            .has_room(in_shard, || self.counts().0.saturating_add_signed(pending))
    }

    /// The shard of a fingerprint: from its second word, so the bits hashbrown uses within a
    /// shard (first word) stay uniform.
    #[inline]
    pub(crate) fn shard(&self, fp: Fingerprint) -> &CallShard {
        &self.shards[self.shard_index(fp)]
    }

    #[inline]
    fn shard_index(&self, fp: Fingerprint) -> usize {
        (fp.0[1] & self.shard_mask) as usize
    }

    /// Asks the CPU to bring `fp`'s home slot into the cache, without the lock: issued for
    /// the events of a batch before they are applied, so the misses overlap instead of
    /// stalling one after the other. Never reads memory; a stale hint only wastes the
    /// prefetch.
    #[inline]
    pub(crate) fn prefetch(&self, fp: Fingerprint) {
        let shard = self.shard(fp);
        let slots = shard.slots_hint.load(Ordering::Relaxed);
        if slots == 0 {
            return;
        }
        // Read apart from `slots`: a torn pair only aims the prefetch elsewhere.
        let shift = shard.shift_hint.load(Ordering::Relaxed);
        let slot_bytes = size_of::<(Fingerprint, CallEntry)>();
        let home = crate::fpmap::home_slot(fp, shard.seed, shift);
        let at = slots.wrapping_add(home.wrapping_mul(slot_bytes));
        prefetch_line(at);
        // The next line: a slot that straddles two lines, and the slots after it, which a
        // stop's backward-shift deletion reads (and a probe past the home slot).
        prefetch_line(at.wrapping_add(64));
    }

    pub(crate) fn start(
        &self,
        fp: Fingerprint,
        emergency: bool,
        owner: Owner,
        now_s: u32,
    ) -> Outcome {
        let shard = self.shard(fp);
        let mut state = shard.state.lock();
        self.start_locked(shard, &mut state, fp, emergency, owner, now_s)
    }

    pub(crate) fn stop(&self, fp: Fingerprint, now_s: u32) -> Outcome {
        let shard = self.shard(fp);
        let mut state = shard.state.lock();
        self.stop_locked(shard, &mut state, fp, now_s)
    }

    pub(crate) fn refresh(&self, fp: Fingerprint, now_s: u32) -> Outcome {
        let shard = self.shard(fp);
        let mut state = shard.state.lock();
        self.refresh_locked(shard, &mut state, fp, now_s)
    }

    /// Applies one call event to `shard`, whose lock the caller holds (`state`).
    #[inline]
    fn apply_locked(
        &self,
        shard: &CallShard,
        state: &mut CallState,
        event: &CallEvent,
        now_s: u32,
    ) -> Outcome {
        let fp = event.fingerprint;
        match event.op {
            CallOp::Start { emergency } => {
                self.start_locked(shard, state, fp, emergency, event.owner, now_s)
            }
            CallOp::Stop => self.stop_locked(shard, state, fp, now_s),
            CallOp::Refresh => self.refresh_locked(shard, state, fp, now_s),
        }
    }

    /// Applies one call event, taking its shard's lock for it alone.
    #[inline]
    pub(crate) fn apply_one(&self, event: &CallEvent, now_s: u32) -> Outcome {
        let shard = self.shard(event.fingerprint);
        let mut state = shard.state.lock();
        self.apply_locked(shard, &mut state, event, now_s)
    }

    /// Applies a run of call events with one lock per shard instead of one per event: the
    /// events are grouped by shard (a stable counting sort, so each shard, and therefore
    /// each call, sees its events in their order), each shard's lock is taken once, and the
    /// slot of the event [`GROUP_PREFETCH_AHEAD`] places ahead in that order is prefetched
    /// while the current one is applied. `each(i, outcome)` is
    /// called for `ops[i]`, shard by shard.
    ///
    /// Events of different shards are applied out of their order. That changes no outcome
    /// (they touch different calls) except at the `max_active_calls` edge, where the order
    /// of starts decides which one is refused; so a run is applied in its own order, one
    /// lock per event, unless the table has room for every start in it (checked once per
    /// run: the shard counters summed).
    pub(crate) fn apply_grouped(
        &self,
        ops: &[CallEvent],
        now_s: u32,
        scratch: &mut GroupScratch,
        mut each: impl FnMut(usize, Outcome),
    ) {
        let starts = ops
            .iter()
            .filter(|e| matches!(e.op, CallOp::Start { .. }))
            .count() as u64;
        let total = || {
            self.shards
                .iter()
                .map(|s| s.calls.load(Ordering::Relaxed))
                .sum()
        };
        if !self.cap.has_room_for(starts, total) || ops.len() > u32::MAX as usize {
            for (i, op) in ops.iter().enumerate() {
                each(i, self.apply_one(op, now_s));
            }
            return;
        }
        let shard_count = self.shards.len();
        let GroupScratch { order, ends } = scratch;
        ends.clear();
        ends.resize(shard_count + 1, 0);
        for op in ops {
            ends[self.shard_index(op.fingerprint) + 1] += 1;
        }
        for s in 1..=shard_count {
            ends[s] += ends[s - 1];
        }
        // `ends[s]` is now where shard s's events begin; filling advances it to where they
        // end (and where shard s + 1's begin).
        order.clear();
        order.resize(ops.len(), 0);
        for (i, op) in ops.iter().enumerate() {
            let s = self.shard_index(op.fingerprint);
            order[ends[s] as usize] = i as u32;
            ends[s] += 1;
        }
        // Prefetched `GROUP_PREFETCH_AHEAD` events ahead in the grouped order, through the
        // shards' published hints (the next groups' shards are not locked yet).
        for &i in order.iter().take(GROUP_PREFETCH_AHEAD) {
            self.prefetch(ops[i as usize].fingerprint);
        }
        let mut begin = 0usize;
        for (shard, &end) in self.shards.iter().zip(&ends[..shard_count]) {
            let end = end as usize;
            if end == begin {
                continue;
            }
            let mut state = shard.state.lock();
            for k in begin..end {
                if let Some(&ahead) = order.get(k + GROUP_PREFETCH_AHEAD) {
                    self.prefetch(ops[ahead as usize].fingerprint);
                }
                let i = order[k] as usize;
                each(i, self.apply_locked(shard, &mut state, &ops[i], now_s));
            }
            drop(state);
            begin = end;
        }
    }

    #[inline]
    fn start_locked(
        &self,
        shard: &CallShard,
        state: &mut CallState,
        fp: Fingerprint,
        emergency: bool,
        owner: Owner,
        now_s: u32,
    ) -> Outcome {
        state.touched.note(fp);
        let new = CallEntry::call(
            now_s.saturating_add(self.max_call_duration_s),
            now_s,
            emergency,
            owner,
        );
        match state.map.entry(fp) {
            Entry::Vacant(vacant) => {
                if !self.has_room(shard) {
                    return Outcome::CallsTableFull;
                }
                vacant.insert(new);
                shard.publish_hint(&state.map);
                self.count(shard, 1, emergency_delta(emergency));
                Outcome::CallStarted
            }
            Entry::Occupied(mut occupied) => {
                let old = *occupied.get();
                if !old.is_expired(now_s) {
                    return if old.is_tombstone() {
                        Outcome::CallAlreadyStopped
                    } else {
                        Outcome::CallAlreadyActive
                    };
                }
                // Expired: as if absent, so this start starts the call anew.
                if old.is_tombstone() {
                    if !self.has_room(shard) {
                        return Outcome::CallsTableFull;
                    }
                    *occupied.get_mut() = new;
                    state.tombstones -= 1;
                    self.count(shard, 1, emergency_delta(emergency));
                } else {
                    *occupied.get_mut() = new;
                    self.count(
                        shard,
                        0,
                        emergency_delta(emergency) - emergency_delta(old.is_emergency()),
                    );
                }
                Outcome::CallStarted
            }
        }
    }

    #[inline]
    fn stop_locked(
        &self,
        shard: &CallShard,
        state: &mut CallState,
        fp: Fingerprint,
        now_s: u32,
    ) -> Outcome {
        state.touched.note(fp);
        let tombstone_allowed =
            self.tombstone_ttl_s > 0 && state.tombstones < TOMBSTONES_PER_SHARD_MAX;
        let tombstone = CallEntry::tombstone(now_s.saturating_add(self.tombstone_ttl_s));
        match state.map.entry(fp) {
            Entry::Occupied(mut occupied) => {
                let old = *occupied.get();
                if old.is_tombstone() {
                    if old.is_expired(now_s) {
                        // A lapsed tombstone is absent: this stop leaves a new one.
                        *occupied.get_mut() = tombstone;
                    }
                    return Outcome::CallUnknown;
                }
                self.count(shard, -1, -emergency_delta(old.is_emergency()));
                if !old.is_expired(now_s) {
                    occupied.remove();
                    return Outcome::CallStopped;
                }
                // Expired: the call already ended; this is a stop without a (live) start.
                if tombstone_allowed {
                    *occupied.get_mut() = tombstone;
                    state.tombstones += 1;
                } else {
                    occupied.remove();
                }
                Outcome::CallUnknown
            }
            Entry::Vacant(vacant) => {
                if tombstone_allowed {
                    vacant.insert(tombstone);
                    state.tombstones += 1;
                    shard.publish_hint(&state.map);
                }
                Outcome::CallUnknown
            }
        }
    }

    #[inline]
    fn refresh_locked(
        &self,
        shard: &CallShard,
        state: &mut CallState,
        fp: Fingerprint,
        now_s: u32,
    ) -> Outcome {
        state.touched.note(fp);
        let Some(entry) = state.map.get_mut(&fp) else {
            return Outcome::CallUnknown;
        };
        let old = *entry;
        if old.is_tombstone() {
            return Outcome::CallUnknown;
        }
        if old.is_expired(now_s) {
            state.map.remove(&fp);
            self.count(shard, -1, -emergency_delta(old.is_emergency()));
            return Outcome::CallUnknown;
        }
        entry.deadline_s = now_s.saturating_add(self.max_call_duration_s);
        Outcome::CallRefreshed
    }

    /// Removes expired calls and lapsed tombstones from shard `index`.
    pub(crate) fn sweep_shard(&self, index: usize, now_s: u32, swept: &mut Swept) {
        let shard = &self.shards[index];
        let mut guard = shard.state.lock();
        let state = &mut *guard;
        let (mut calls, mut emergency_calls, mut tombstones) = (0u64, 0u64, 0u64);
        state.map.retain(|_, entry| {
            if !entry.is_expired(now_s) {
                return true;
            }
            if entry.is_tombstone() {
                tombstones += 1;
            } else {
                calls += 1;
                emergency_calls += u64::from(entry.is_emergency());
            }
            false
        });
        state.tombstones -= tombstones as u32;
        self.count(shard, -(calls as i64), -(emergency_calls as i64));
        shrink_calls_if_sparse(&mut state.map);
        shard.publish_hint(&state.map);
        swept.calls += calls;
        swept.tombstones += tombstones;
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        self.shards
            .iter()
            .fold((0, 0), |(calls, emergency_calls), shard| {
                (
                    calls + shard.calls.load(Ordering::Relaxed),
                    emergency_calls + shard.emergency_calls.load(Ordering::Relaxed),
                )
            })
    }

    /// Inserts a restored call unless the call (or a tombstone) is already present or the
    /// table is full.
    pub(crate) fn restore(&self, fp: Fingerprint, entry: CallEntry) -> Restore {
        debug_assert!(!entry.is_tombstone());
        let shard = self.shard(fp);
        let mut state = shard.state.lock();
        match state.map.entry(fp) {
            Entry::Vacant(vacant) => {
                if !self.has_room(shard) {
                    return Restore::Full;
                }
                vacant.insert(entry);
                shard.publish_hint(&state.map);
                self.count(shard, 1, emergency_delta(entry.is_emergency()));
                Restore::Inserted
            }
            Entry::Occupied(_) => Restore::Present,
        }
    }

    /// Puts back a tombstone from a snapshot (a stop whose late start must still be
    /// ignored after a restart). Within the per-shard cap; never over an entry.
    pub(crate) fn restore_tombstone(&self, fp: Fingerprint, deadline_s: u32) -> bool {
        let shard = self.shard(fp);
        let mut state = shard.state.lock();
        if state.tombstones >= TOMBSTONES_PER_SHARD_MAX {
            return false;
        }
        match state.map.entry(fp) {
            Entry::Vacant(vacant) => {
                vacant.insert(CallEntry::tombstone(deadline_s));
                state.tombstones += 1;
                shard.publish_hint(&state.map);
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn tombstones(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| u64::from(s.state.lock().tombstones))
            .sum()
    }
}

/// What restoring one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restore {
    Inserted,
    Present,
    /// Dropped: the table is at its configured cap.
    Full,
}

/// [`shrink_if_sparse`] for the call map.
pub(crate) fn shrink_calls_if_sparse(map: &mut CallMap) {
    const SHRINK_CAPACITY_MIN: usize = 1024;
    if map.capacity() > SHRINK_CAPACITY_MIN && map.len() < map.capacity() / 8 {
        map.shrink_to(map.len() * 2);
    }
}

/// A prefetch of the cache line holding `address` (a hint: never faults, never reads).
#[inline(always)]
fn prefetch_line(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; it does not dereference and cannot fault
    // on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Gives memory back after a mass expiry, keeping room to double.
pub(crate) fn shrink_if_sparse<K, V, S>(map: &mut HashMap<K, V, S>)
where
    K: Eq + std::hash::Hash,
    S: std::hash::BuildHasher,
{
    const SHRINK_CAPACITY_MIN: usize = 1024;
    if map.capacity() > SHRINK_CAPACITY_MIN && map.len() < map.capacity() / 8 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_packs_flags_owner_and_started() {
        let now_s = 1_750_000_000;
        let mut e = CallEntry::call(now_s + 60, now_s, true, Owner(0xA5));
        assert!(e.is_emergency());
        assert!(!e.is_tombstone());
        assert_eq!(e.owner(), Owner(0xA5));
        assert_eq!(e.started_s(now_s), now_s);
        assert_eq!(e.started_s(now_s + 3600), now_s);
        assert_eq!(e.deadline_s(), now_s + 60);
        e.set_emergency(false);
        assert!(!e.is_emergency());
        assert_eq!(e.owner(), Owner(0xA5));
        let t = CallEntry::tombstone(5);
        assert!(t.is_tombstone() && !t.is_emergency());
        assert_eq!(t.owner(), Owner::NONE);
        // Older than 2^22 s: `started` wraps into the last 48.5 days (informational only).
        let old = CallEntry::call(u32::MAX, now_s, false, Owner::NONE);
        assert_eq!(old.started_s(now_s + (1 << 22) + 5), now_s + (1 << 22));
        // Near the start of time it saturates.
        assert_eq!(CallEntry::call(10, 5, false, Owner::NONE).started_s(3), 0);
    }
}
