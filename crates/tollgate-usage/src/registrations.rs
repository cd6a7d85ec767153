//! The registrations table: AoR fingerprint → the AoR's live contacts with their expiry.
//!
//! An AoR is a *registered subscriber* while it has at least one live contact. Contacts
//! within an AoR are told apart by a 64-bit keyed hash of the contact (collisions within one
//! AoR: ~n²/2^65, negligible). The first binding is stored inline, further ones in a boxed
//! spill `Vec`, so a single-contact AoR costs one 40-byte map slot and no allocation.
//!
//! **Invariant:** every map entry has at least one binding; a shard's `registered_subscribers`
//! and `registered_contacts` atomics equal its number of entries and of bindings (written
//! under the shard lock, read without it).
//!
//! **Expiry** works as for calls: an expired binding is counted until the sweep removes it or
//! the next `reg` for the same AoR touches it (which prunes the AoR's expired bindings first),
//! and every event treats an expired binding as absent.
//!
//! **Bounds** ([`crate::TablesConfig`]): at most `max_aors` AoRs, checked like the calls
//! cap (free while every shard is within its share); a `reg` for a new AoR beyond it is
//! refused with [`Outcome::RegistrationsTableFull`] and changes nothing. An AoR tracks at
//! most `max_contacts_per_aor` contacts (default 32, at most [`CONTACTS_PER_AOR_LIMIT`]); a
//! further contact replaces the binding that expires first ([`Outcome::ContactReplaced`]),
//! so `registered_contacts` is then a lower bound (the registered-subscriber count, which
//! licenses are about, is unaffected). A `reg` whose `expires` is above `max_expires_s` is
//! refused with [`Outcome::BadNumber`] (expiry times are u32 seconds: a huge `expires`
//! would saturate at 2106 and never expire).
//!
//! **Measured** (`tools/table-memory`, `benches/tables.rs`): 86 heap bytes per contact at
//! 1 M single-contact AoRs, 45.5 at 3 contacts per AoR (target ≤ 128); a `reg`
//! add/refresh/remove cycle ~69 ns (3 events).

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use parking_lot::Mutex;

use crate::Outcome;
use crate::calls::{Cap, Restore, Swept, add, shrink_if_sparse};
use crate::fingerprint::{BuildIdentityHasher, Fingerprint};
use crate::owners::Owner;
use crate::reconcile::Touched;

/// Highest `max_contacts_per_aor` allowed (see the module doc): an AoR's contacts are
/// searched linearly.
pub const CONTACTS_PER_AOR_LIMIT: usize = 1024;

/// Bits of the contact hash a binding keeps; the top byte holds the binding's owner.
pub(crate) const CONTACT_HASH_MASK: u64 = (1 << 56) - 1;

/// One contact of an AoR: 12 bytes, alignment 4. The contact is told apart by 56 bits of
/// its keyed hash (collisions within one AoR ~n²/2^57); the top byte is the owner (the
/// sender that reported it, see [`crate::owners`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Binding {
    contact: [u32; 2],
    /// Unix seconds; the binding is gone when `now_s >= expires_s`.
    pub(crate) expires_s: u32,
}

impl Binding {
    pub(crate) fn new(contact_hash: u64, expires_s: u32) -> Self {
        Self::owned(contact_hash, Owner::NONE, expires_s)
    }

    pub(crate) fn owned(contact_hash: u64, owner: Owner, expires_s: u32) -> Self {
        let packed = (contact_hash & CONTACT_HASH_MASK) | (u64::from(owner.0) << 56);
        Binding {
            contact: [packed as u32, (packed >> 32) as u32],
            expires_s,
        }
    }

    /// The contact's hash (56 bits).
    pub(crate) fn contact_hash(self) -> u64 {
        (u64::from(self.contact[0]) | (u64::from(self.contact[1]) << 32)) & CONTACT_HASH_MASK
    }

    pub(crate) fn owner(self) -> Owner {
        Owner((self.contact[1] >> 24) as u8)
    }

    pub(crate) fn set_owner(&mut self, owner: Owner) {
        self.contact[1] = (self.contact[1] & 0x00FF_FFFF) | (u32::from(owner.0) << 24);
    }

    pub(crate) fn is_expired(self, now_s: u32) -> bool {
        now_s >= self.expires_s
    }
}

/// The bindings of one AoR: the first inline, the rest spilled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AorEntry {
    first: Binding,
    #[allow(
        clippy::box_collection,
        reason = "a thin 8-byte pointer keeps the map slot at 40 bytes"
    )]
    more: Option<Box<Vec<Binding>>>,
}

const _: () = assert!(size_of::<AorEntry>() == 24);
const _: () = assert!(size_of::<(Fingerprint, AorEntry)>() == 40);

impl AorEntry {
    pub(crate) fn new(first: Binding) -> Self {
        AorEntry { first, more: None }
    }

    pub(crate) fn len(&self) -> usize {
        1 + self.more.as_ref().map_or(0, |more| more.len())
    }

    pub(crate) fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        std::iter::once(self.first).chain(self.more.iter().flat_map(|more| more.iter().copied()))
    }

    pub(crate) fn position(&self, contact_hash: u64) -> Option<usize> {
        let contact_hash = contact_hash & CONTACT_HASH_MASK;
        self.bindings()
            .position(|b| b.contact_hash() == contact_hash)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut Binding> {
        match index {
            0 => Some(&mut self.first),
            i => self.more.as_mut().and_then(|more| more.get_mut(i - 1)),
        }
    }

    /// Removes binding `index`; returns `true` if that was the last one (the entry must then
    /// be removed or given a new first binding).
    pub(crate) fn remove(&mut self, index: usize) -> bool {
        debug_assert!(index < self.len());
        let Some(more) = self.more.as_mut() else {
            return true;
        };
        if index == 0 {
            match more.pop() {
                Some(last) => self.first = last,
                None => return true,
            }
        } else if index - 1 < more.len() {
            more.swap_remove(index - 1);
        }
        if more.is_empty() {
            self.more = None;
        }
        false
    }

    /// Adds a binding; past `max` bindings replaces the one expiring first.
    /// Returns whether the number of bindings grew.
    pub(crate) fn push(&mut self, binding: Binding, max: usize) -> bool {
        if self.len() >= max {
            let soonest = self
                .bindings()
                .enumerate()
                .min_by_key(|(_, b)| b.expires_s)
                .map_or(0, |(index, _)| index);
            if let Some(slot) = self.get_mut(soonest) {
                *slot = binding;
            }
            return false;
        }
        self.more.get_or_insert_with(Box::default).push(binding);
        true
    }

    /// Drops expired bindings. Returns how many, and whether none is left (then `first` is
    /// stale: the caller removes the entry or overwrites `first`).
    pub(crate) fn retain_live(&mut self, now_s: u32) -> (u64, bool) {
        let mut removed = 0u64;
        if let Some(more) = self.more.as_mut() {
            let before = more.len();
            more.retain(|b| !b.is_expired(now_s));
            removed += (before - more.len()) as u64;
        }
        let mut empty = false;
        if self.first.is_expired(now_s) {
            removed += 1;
            match self.more.as_mut().and_then(|more| more.pop()) {
                Some(last) => self.first = last,
                None => empty = true,
            }
        }
        if self.more.as_ref().is_some_and(|more| more.is_empty()) {
            self.more = None;
        }
        (removed, empty)
    }
}

pub(crate) type RegMap = HashMap<Fingerprint, AorEntry, BuildIdentityHasher>;

/// A shard's map and the AoRs events touched while a reconciliation runs. Derefs to the map.
#[derive(Default)]
pub(crate) struct RegState {
    pub(crate) map: RegMap,
    pub(crate) touched: Touched,
}

impl std::ops::Deref for RegState {
    type Target = RegMap;
    fn deref(&self) -> &RegMap {
        &self.map
    }
}

impl std::ops::DerefMut for RegState {
    fn deref_mut(&mut self) -> &mut RegMap {
        &mut self.map
    }
}

pub(crate) struct RegShard {
    pub(crate) map: Mutex<RegState>,
    registered_subscribers: AtomicU64,
    registered_contacts: AtomicU64,
}

impl RegShard {
    fn new() -> Self {
        RegShard {
            map: Mutex::new(RegState::default()),
            registered_subscribers: AtomicU64::new(0),
            registered_contacts: AtomicU64::new(0),
        }
    }

    /// Adjusts the counters; the caller holds this shard's lock.
    #[inline]
    pub(crate) fn count(&self, subscribers: i64, contacts: i64) {
        if subscribers != 0 {
            add(&self.registered_subscribers, subscribers);
        }
        if contacts != 0 {
            add(&self.registered_contacts, contacts);
        }
    }
}

pub(crate) struct RegTable {
    pub(crate) shards: Box<[CachePadded<RegShard>]>,
    shard_mask: u64,
    /// Bound on AoRs.
    cap: Cap,
    pub(crate) max_contacts_per_aor: usize,
    max_expires_s: u32,
}

impl RegTable {
    pub(crate) fn new(
        shard_count: usize,
        max_aors: u64,
        max_contacts_per_aor: usize,
        max_expires_s: u32,
    ) -> Self {
        debug_assert!(shard_count.is_power_of_two());
        debug_assert!((1..=CONTACTS_PER_AOR_LIMIT).contains(&max_contacts_per_aor));
        RegTable {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(RegShard::new()))
                .collect(),
            shard_mask: shard_count as u64 - 1,
            cap: Cap::new(max_aors, shard_count),
            max_contacts_per_aor,
            max_expires_s,
        }
    }

    /// Adjusts a shard's counters (the caller holds its lock) and the cap's bookkeeping.
    /// Every change of a shard's `registered_subscribers` goes through here.
    #[inline]
    pub(crate) fn count(&self, shard: &RegShard, subscribers: i64, contacts: i64) {
        if subscribers != 0 {
            let old = shard.registered_subscribers.load(Ordering::Relaxed);
            self.cap.moved(old, old.wrapping_add_signed(subscribers));
        }
        shard.count(subscribers, contacts);
    }

    /// Whether a new AoR fits in `shard` (the caller holds its lock).
    #[inline]
    fn has_room(&self, shard: &RegShard) -> bool {
        self.has_room_with(shard, 0)
    }

    /// [`RegTable::has_room`] for a caller that has added `pending` AoRs to `shard` without
    /// counting them yet (a batch under the shard's lock).
    #[inline]
    pub(crate) fn has_room_with(&self, shard: &RegShard, pending: i64) -> bool {
        let in_shard = shard
            .registered_subscribers
            .load(Ordering::Relaxed)
            .saturating_add_signed(pending);
        self.cap
            .has_room(in_shard, || self.counts().0.saturating_add_signed(pending))
    }

    #[inline]
    pub(crate) fn shard(&self, aor: Fingerprint) -> &RegShard {
        &self.shards[(aor.0[1] & self.shard_mask) as usize]
    }

    /// `reg <aor> <contact> <expires_s>`.
    pub(crate) fn register(
        &self,
        aor: Fingerprint,
        contact_hash: u64,
        expires_s: u32,
        owner: Owner,
        now_s: u32,
    ) -> Outcome {
        if expires_s > self.max_expires_s {
            return Outcome::BadNumber;
        }
        let shard = self.shard(aor);
        let mut guard = shard.map.lock();
        guard.touched.note(aor);
        let entry = guard.map.entry(aor);
        if expires_s == 0 {
            let Entry::Occupied(mut occupied) = entry else {
                return Outcome::ContactUnknown;
            };
            let (pruned, empty) = occupied.get_mut().retain_live(now_s);
            let found = if empty {
                None
            } else {
                occupied.get().position(contact_hash)
            };
            let removed = u64::from(found.is_some());
            let empty = match found {
                Some(index) => occupied.get_mut().remove(index),
                None => empty,
            };
            if empty {
                occupied.remove();
            }
            self.count(shard, -i64::from(empty), -((pruned + removed) as i64));
            return if found.is_some() {
                Outcome::ContactRemoved
            } else {
                Outcome::ContactUnknown
            };
        }
        let binding = Binding::owned(contact_hash, owner, now_s.saturating_add(expires_s));
        match entry {
            Entry::Vacant(vacant) => {
                if !self.has_room(shard) {
                    return Outcome::RegistrationsTableFull;
                }
                vacant.insert(AorEntry::new(binding));
                self.count(shard, 1, 1);
                Outcome::ContactAdded
            }
            Entry::Occupied(mut occupied) => {
                let aor_entry = occupied.get_mut();
                let (pruned, empty) = aor_entry.retain_live(now_s);
                if empty {
                    aor_entry.first = binding;
                    self.count(shard, 0, 1 - pruned as i64);
                    return Outcome::ContactAdded;
                }
                if let Some(slot) = aor_entry
                    .position(contact_hash)
                    .and_then(|index| aor_entry.get_mut(index))
                {
                    slot.expires_s = binding.expires_s;
                    slot.set_owner(owner);
                    self.count(shard, 0, -(pruned as i64));
                    return Outcome::ContactRefreshed;
                }
                let grew = aor_entry.push(binding, self.max_contacts_per_aor);
                self.count(shard, 0, i64::from(grew) - pruned as i64);
                if grew {
                    Outcome::ContactAdded
                } else {
                    Outcome::ContactReplaced
                }
            }
        }
    }

    /// Removes expired bindings (and AoRs left without any) from shard `index`; the AoRs
    /// removed go to `gone` when given (the AoR feed's hook).
    pub(crate) fn sweep_shard(
        &self,
        index: usize,
        now_s: u32,
        swept: &mut Swept,
        mut gone: Option<&mut Vec<Fingerprint>>,
    ) {
        let shard = &self.shards[index];
        let mut map = shard.map.lock();
        let (mut subscribers, mut contacts) = (0u64, 0u64);
        map.retain(|aor, aor_entry| {
            let (removed, empty) = aor_entry.retain_live(now_s);
            contacts += removed;
            subscribers += u64::from(empty);
            if empty && let Some(gone) = gone.as_mut() {
                gone.push(*aor);
            }
            !empty
        });
        self.count(shard, -(subscribers as i64), -(contacts as i64));
        shrink_if_sparse(&mut map.map);
        swept.contacts += contacts;
    }

    /// Whether `aor` is in the table (the AoR feed's re-check; an expired entry not yet
    /// swept counts as registered, like in the counts).
    pub(crate) fn is_registered(&self, aor: Fingerprint) -> bool {
        self.shard(aor).map.lock().contains_key(&aor)
    }

    /// `(registered_subscribers, registered_contacts)`, summed without locks.
    pub(crate) fn counts(&self) -> (u64, u64) {
        self.shards
            .iter()
            .fold((0, 0), |(subscribers, contacts), shard| {
                (
                    subscribers + shard.registered_subscribers.load(Ordering::Relaxed),
                    contacts + shard.registered_contacts.load(Ordering::Relaxed),
                )
            })
    }

    /// Adds restored live bindings to an AoR, merging with what is there (a known contact
    /// keeps the later expiry). Returns how many contacts were added, or `Full` when the AoR
    /// is new and the table is at `max_aors`.
    pub(crate) fn restore(
        &self,
        aor: Fingerprint,
        bindings: &[Binding],
        now_s: u32,
    ) -> (Restore, u64) {
        let shard = self.shard(aor);
        let mut map = shard.map.lock();
        if bindings.is_empty() {
            return (Restore::Present, 0);
        }
        let mut contacts = 0u64;
        let mut result = Restore::Present;
        for &binding in bindings {
            debug_assert!(!binding.is_expired(now_s));
            match map.entry(aor) {
                Entry::Vacant(vacant) => {
                    if !self.has_room(shard) {
                        return (Restore::Full, 0);
                    }
                    vacant.insert(AorEntry::new(binding));
                    self.count(shard, 1, 1);
                    contacts += 1;
                    result = Restore::Inserted;
                }
                Entry::Occupied(mut occupied) => {
                    let aor_entry = occupied.get_mut();
                    match aor_entry
                        .position(binding.contact_hash())
                        .and_then(|index| aor_entry.get_mut(index))
                    {
                        Some(slot) => slot.expires_s = slot.expires_s.max(binding.expires_s),
                        None => {
                            let grew = aor_entry.push(binding, self.max_contacts_per_aor);
                            self.count(shard, 0, i64::from(grew));
                            contacts += u64::from(grew);
                        }
                    }
                }
            }
        }
        (result, contacts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_entry_keeps_first_inline_and_spills_the_rest() {
        let mut e = AorEntry::new(Binding::new(1, 100));
        assert!(e.more.is_none());
        assert!(e.push(Binding::new(2, 200), 32));
        assert!(e.push(Binding::new(3, 300), 32));
        assert_eq!(e.len(), 3);
        // Removing the inline one promotes a spilled one.
        assert!(!e.remove(0));
        assert_eq!(e.len(), 2);
        assert!(e.position(1).is_none());
        assert!(!e.remove(e.position(2).unwrap_or(0)));
        assert!(e.more.is_none());
        assert!(e.remove(0));
    }

    #[test]
    fn retain_live_prunes_and_reports_empty() {
        let mut e = AorEntry::new(Binding::new(1, 100));
        e.push(Binding::new(2, 200), 32);
        e.push(Binding::new(3, 300), 32);
        assert_eq!(e.retain_live(150), (1, false));
        assert_eq!(e.len(), 2);
        assert_eq!(e.retain_live(300), (2, true));
    }

    #[test]
    fn push_past_the_bound_replaces_the_soonest_expiring() {
        let max = 32;
        let mut e = AorEntry::new(Binding::new(0, 1000));
        for i in 1..max as u64 {
            assert!(e.push(Binding::new(i, 1000 + i as u32), max));
        }
        assert!(!e.push(Binding::new(999, 5000), max));
        assert_eq!(e.len(), max);
        assert!(e.position(0).is_none());
        assert!(e.position(999).is_some());
    }
}
