//! Reconciliation: heal the tables from a SIP proxy's own list of its dialogs and contacts.
//!
//! Events travel as datagrams; a lost stop leaves a phantom call, a lost start a call never
//! counted. A proxy can list its own truth (Kamailio `dlg.list` / `ul.dump`, OpenSIPS
//! `dlg_list` / `ul_dump`, or `sync-*` lines from a script). The IO layer fetches such a list
//! into a [`ProxyList`] and [`Tables::reconcile`] makes the entries the list's source owns
//! equal to it:
//!
//! - a call the proxy lists and the tables lack is added (`missing_call`); one the tables
//!   have and the proxy does not list is removed (`phantom_call`); the emergency flag is
//!   taken from the proxy when the list says it;
//! - likewise contacts (`missing_contact`, `phantom_contact`), with the proxy's expiry.
//!
//! **Race-free (mark and sweep by epochs).** Events keep flowing while a list is fetched.
//! [`Tables::begin_run`] is called *before* the list is requested: from then on every event
//! notes the call or AoR it touched in its shard ([`Touched`], under the shard lock it holds
//! anyway). [`Tables::reconcile`] leaves every noted entry alone, so a call started or
//! stopped (or a contact registered) after the list's start is never undone by a list that
//! predates it. A stop-before-start tombstone also blocks re-adding a call. Past
//! [`TOUCHED_PER_SHARD_MAX`] notes a shard is skipped for that run (counted in
//! [`Corrections::shards_skipped`]); the next run heals it.
//!
//! **Ownership.** Each entry remembers its [`Owner`]; a run with [`Scope::Owner`] touches
//! only that owner's entries (and adds missing ones as that owner), [`Scope::All`] (a single
//! source for the whole node) every entry.
//!
//! **Stall.** Lists are fingerprinted and sorted per shard outside any lock
//! ([`ProxyList::push_call`], …); [`Tables::reconcile`] then holds one shard lock at a time
//! while it diffs that shard's entries against that shard's part of the list.

use crate::calls::{CallEntry, emergency_delta};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::owners::Owner;
use crate::registrations::{AorEntry, Binding, CONTACT_HASH_MASK};
use crate::{MonoTime, Tables};
use tollgate_events::CallRef;

/// Most entries one shard notes during reconciliation runs before it gives up on them.
pub const TOUCHED_PER_SHARD_MAX: usize = 4096;

/// The calls (or AoRs) events touched in one shard while at least one run is active.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    runs: u32,
    list: Vec<Fingerprint>,
    overflowed: bool,
}

impl Touched {
    /// Notes `fp` if a run is active. The common case (no run) is one compare.
    #[inline(always)]
    pub(crate) fn note(&mut self, fp: Fingerprint) {
        if self.runs != 0 {
            self.note_active(fp);
        }
    }

    #[cold]
    fn note_active(&mut self, fp: Fingerprint) {
        if self.list.len() < TOUCHED_PER_SHARD_MAX {
            self.list.push(fp);
        } else {
            self.overflowed = true;
        }
    }

    fn begin(&mut self) -> u32 {
        self.runs += 1;
        self.list.len() as u32
    }

    fn end(&mut self) {
        debug_assert!(self.runs > 0);
        self.runs = self.runs.saturating_sub(1);
        if self.runs == 0 {
            self.list = Vec::new();
            self.overflowed = false;
        }
    }

    /// What was noted since `base`, or `None` if notes were lost to the bound.
    fn since(&self, base: u32) -> Option<&[Fingerprint]> {
        (!self.overflowed).then(|| self.list.get(base as usize..).unwrap_or_default())
    }
}

fn contains(touched: &[Fingerprint], fp: &Fingerprint) -> bool {
    touched.contains(fp)
}

/// An active reconciliation: from [`Tables::begin_run`] to [`Tables::finish_run`].
#[derive(Debug)]
#[must_use = "a run must be finished with Tables::finish_run"]
pub struct Run {
    call_bases: Box<[u32]>,
    reg_bases: Box<[u32]>,
}

/// Which entries a run may correct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every entry, whoever reported it (one source for the whole node).
    All,
    /// Only the entries this owner reported; missing ones are added as this owner.
    Owner(Owner),
}

impl Scope {
    #[inline]
    fn covers(self, owner: Owner) -> bool {
        match self {
            Scope::All => true,
            Scope::Owner(own) => own == owner,
        }
    }

    fn owner(self) -> Owner {
        match self {
            Scope::All => Owner::NONE,
            Scope::Owner(own) => own,
        }
    }
}

/// What one run changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Corrections {
    /// Calls counted here that the proxy does not have (removed).
    pub phantom_calls: u64,
    /// Calls the proxy has that were not counted (added).
    pub missing_calls: u64,
    /// Contacts registered here that the proxy does not have (removed).
    pub phantom_contacts: u64,
    /// Contacts the proxy has that were not registered here (added).
    pub missing_contacts: u64,
    /// Calls whose emergency flag was set to the proxy's.
    pub emergency_updates: u64,
    /// Contacts whose expiry was set to the proxy's.
    pub expiry_updates: u64,
    /// Shards left alone because more events touched them during the run than could be
    /// noted ([`TOUCHED_PER_SHARD_MAX`]).
    pub shards_skipped: u64,
    /// Missing calls or AoRs not added because the table is at its configured cap
    /// (`max_active_calls`, `max_aors`).
    #[serde(default)]
    pub refused_full: u64,
}

impl Corrections {
    /// Calls and contacts added or removed.
    pub fn total(&self) -> u64 {
        self.phantom_calls + self.missing_calls + self.phantom_contacts + self.missing_contacts
    }

    pub fn add(&mut self, other: &Corrections) {
        self.phantom_calls += other.phantom_calls;
        self.missing_calls += other.missing_calls;
        self.phantom_contacts += other.phantom_contacts;
        self.missing_contacts += other.missing_contacts;
        self.emergency_updates += other.emergency_updates;
        self.expiry_updates += other.expiry_updates;
        self.refused_full += other.refused_full;
        self.shards_skipped += other.shards_skipped;
    }
}

const EMERGENCY_UNKNOWN: u8 = 0;
const EMERGENCY_NO: u8 = 1;
const EMERGENCY_YES: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListedCall {
    fp: Fingerprint,
    emergency: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListedContact {
    aor: Fingerprint,
    contact_hash: u64,
    expires_s: u32,
}

/// A proxy's list of its calls and contacts, fingerprinted with the tables' key and split by
/// shard as it is built (so nothing but fingerprints is kept: ~24 bytes per call, 32 per
/// contact). Built with [`Tables::new_list`].
#[derive(Clone)]
pub struct ProxyList {
    fingerprinter: Fingerprinter,
    shard_mask: u64,
    calls: Vec<Vec<ListedCall>>,
    contacts: Vec<Vec<ListedContact>>,
    call_count: u64,
    contact_count: u64,
}

impl std::fmt::Debug for ProxyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyList")
            .field("calls", &self.call_count)
            .field("contacts", &self.contact_count)
            .finish_non_exhaustive()
    }
}

impl ProxyList {
    /// A call the proxy has. `emergency`: `None` when the list does not say (the flag
    /// counted here is then kept).
    pub fn push_call(&mut self, call: CallRef<'_>, emergency: Option<bool>) {
        let fp = self.fingerprinter.call(call);
        let emergency = match emergency {
            None => EMERGENCY_UNKNOWN,
            Some(false) => EMERGENCY_NO,
            Some(true) => EMERGENCY_YES,
        };
        self.calls[(fp.0[1] & self.shard_mask) as usize].push(ListedCall { fp, emergency });
        self.call_count += 1;
    }

    /// A contact the proxy has, expiring at `expires_at` (unix seconds; `u32::MAX` for a
    /// permanent one).
    pub fn push_contact(&mut self, aor: &[u8], contact: &[u8], expires_at_s: u32) {
        let aor = self.fingerprinter.aor(aor);
        let contact_hash = self.fingerprinter.contact(contact) & CONTACT_HASH_MASK;
        self.contacts[(aor.0[1] & self.shard_mask) as usize].push(ListedContact {
            aor,
            contact_hash,
            expires_s: expires_at_s,
        });
        self.contact_count += 1;
    }

    /// Calls pushed so far (duplicates included).
    pub fn call_count(&self) -> u64 {
        self.call_count
    }

    /// Contacts pushed so far (duplicates included).
    pub fn contact_count(&self) -> u64 {
        self.contact_count
    }

    /// Sorts each shard's part for lookups (outside any lock); duplicates keep the first.
    fn prepare(&mut self) {
        for calls in &mut self.calls {
            calls.sort_by_key(|c| c.fp);
            calls.dedup_by_key(|c| c.fp);
        }
        for contacts in &mut self.contacts {
            contacts.sort_by_key(|c| (c.aor, c.contact_hash));
            contacts.dedup_by_key(|c| (c.aor, c.contact_hash));
        }
    }
}

impl Tables {
    /// An empty list to fill from a proxy's answer.
    pub fn new_list(&self) -> ProxyList {
        let shard_count = self.shard_count();
        ProxyList {
            fingerprinter: self.fingerprinter.clone(),
            shard_mask: shard_count as u64 - 1,
            calls: vec![Vec::new(); shard_count],
            contacts: vec![Vec::new(); shard_count],
            call_count: 0,
            contact_count: 0,
        }
    }

    /// Starts noting what events touch; call before requesting the proxy's list, and always
    /// end with [`Tables::finish_run`]. Runs may overlap.
    pub fn begin_run(&self) -> Run {
        let call_bases = self
            .calls
            .shards
            .iter()
            .map(|shard| shard.state.lock().touched.begin())
            .collect();
        let reg_bases = self
            .registrations
            .shards
            .iter()
            .map(|shard| shard.map.lock().touched.begin())
            .collect();
        Run {
            call_bases,
            reg_bases,
        }
    }

    /// Ends a run (whether or not its list was applied).
    pub fn finish_run(&self, run: Run) {
        debug_assert_eq!(run.call_bases.len(), self.calls.shards.len());
        for shard in self.calls.shards.iter() {
            shard.state.lock().touched.end();
        }
        for shard in self.registrations.shards.iter() {
            shard.map.lock().touched.end();
        }
    }

    /// Makes the entries `scope` covers equal to `list`, shard by shard (one lock at a
    /// time), leaving alone whatever events touched since `run` began. `contacts`: whether
    /// the list covers registrations too (a source that only lists dialogs passes `false`).
    pub fn reconcile(
        &self,
        now: MonoTime,
        run: &Run,
        mut list: ProxyList,
        scope: Scope,
        contacts: bool,
    ) -> Corrections {
        assert_eq!(
            list.calls.len(),
            self.shard_count(),
            "list from other tables"
        );
        list.prepare();
        let now_s = now.unix_secs_u32();
        let mut corrections = Corrections::default();
        for (index, listed) in list.calls.iter().enumerate() {
            self.reconcile_call_shard(
                index,
                now_s,
                run.call_bases[index],
                listed,
                scope,
                &mut corrections,
            );
        }
        if contacts {
            for (index, listed) in list.contacts.iter().enumerate() {
                self.reconcile_reg_shard(
                    index,
                    now_s,
                    run.reg_bases[index],
                    listed,
                    scope,
                    &mut corrections,
                );
            }
        }
        corrections
    }

    fn reconcile_call_shard(
        &self,
        index: usize,
        now_s: u32,
        base: u32,
        listed: &[ListedCall],
        scope: Scope,
        corrections: &mut Corrections,
    ) {
        let shard = &self.calls.shards[index];
        let mut guard = shard.state.lock();
        let state = &mut *guard;
        let Some(touched) = state.touched.since(base) else {
            corrections.shards_skipped += 1;
            return;
        };
        let (mut calls_delta, mut emergency_delta_sum) = (0i64, 0i64);
        // Sweep: what the proxy does not list.
        let mut phantoms = 0u64;
        state.map.retain(|fp, entry| {
            if entry.is_tombstone()
                || entry.is_expired(now_s)
                || !scope.covers(entry.owner())
                || listed.binary_search_by_key(fp, |l| l.fp).is_ok()
                || contains(touched, fp)
            {
                return true;
            }
            phantoms += 1;
            calls_delta -= 1;
            emergency_delta_sum -= emergency_delta(entry.is_emergency());
            false
        });
        corrections.phantom_calls += phantoms;
        // Mark: what the proxy lists.
        let deadline_s = now_s.saturating_add(self.calls.max_call_duration_s);
        for l in listed {
            let known = l.emergency != EMERGENCY_UNKNOWN;
            let emergency = l.emergency == EMERGENCY_YES;
            match state.map.get_mut(&l.fp) {
                Some(entry) if !entry.is_expired(now_s) => {
                    if entry.is_tombstone()
                        || !known
                        || entry.is_emergency() == emergency
                        || !scope.covers(entry.owner())
                        || contains(touched, &l.fp)
                    {
                        continue;
                    }
                    emergency_delta_sum +=
                        emergency_delta(emergency) - emergency_delta(entry.is_emergency());
                    entry.set_emergency(emergency);
                    corrections.emergency_updates += 1;
                }
                existing => {
                    if contains(touched, &l.fp) {
                        continue;
                    }
                    let new = CallEntry::call(deadline_s, now_s, emergency, scope.owner());
                    match existing {
                        // Expired: as if absent.
                        Some(entry) => {
                            let old = *entry;
                            if old.is_tombstone() {
                                if !self.calls.has_room_with(shard, calls_delta) {
                                    corrections.refused_full += 1;
                                    continue;
                                }
                                state.tombstones -= 1;
                                calls_delta += 1;
                            }
                            *entry = new;
                            emergency_delta_sum += emergency_delta(emergency)
                                - if old.is_tombstone() {
                                    0
                                } else {
                                    emergency_delta(old.is_emergency())
                                };
                        }
                        None => {
                            if !self.calls.has_room_with(shard, calls_delta) {
                                corrections.refused_full += 1;
                                continue;
                            }
                            state.map.insert(l.fp, new);
                            calls_delta += 1;
                            emergency_delta_sum += emergency_delta(emergency);
                        }
                    }
                    corrections.missing_calls += 1;
                }
            }
        }
        shard.publish_hint(&state.map);
        self.calls.count(shard, calls_delta, emergency_delta_sum);
    }

    fn reconcile_reg_shard(
        &self,
        index: usize,
        now_s: u32,
        base: u32,
        listed: &[ListedContact],
        scope: Scope,
        corrections: &mut Corrections,
    ) {
        let shard = &self.registrations.shards[index];
        let mut guard = shard.map.lock();
        let state = &mut *guard;
        let Some(touched) = state.touched.since(base) else {
            corrections.shards_skipped += 1;
            return;
        };
        let (mut subscribers_delta, mut contacts_delta) = (0i64, 0i64);
        // AoRs this pass removes, for the AoR feed (after the shard lock is released).
        let mut gone: Vec<Fingerprint> = Vec::new();
        let feed = self.aor_feed_enabled();
        let listed_for = |aor: &Fingerprint| -> &[ListedContact] {
            let start = listed.partition_point(|l| l.aor < *aor);
            let end = listed.partition_point(|l| l.aor <= *aor);
            &listed[start..end]
        };
        // Sweep: bindings the proxy does not list (expired ones go too, uncounted as
        // corrections: the sweep would have removed them).
        state.map.retain(|aor, entry| {
            if contains(touched, aor) {
                return true;
            }
            let (pruned, empty) = entry.retain_live(now_s);
            contacts_delta -= pruned as i64;
            if empty {
                subscribers_delta -= 1;
                if feed {
                    gone.push(*aor);
                }
                return false;
            }
            let for_aor = listed_for(aor);
            loop {
                let phantom = entry.bindings().position(|b| {
                    scope.covers(b.owner())
                        && !for_aor
                            .iter()
                            .any(|l| l.contact_hash == b.contact_hash() && l.expires_s > now_s)
                });
                let Some(position) = phantom else {
                    return true;
                };
                corrections.phantom_contacts += 1;
                contacts_delta -= 1;
                if entry.remove(position) {
                    subscribers_delta -= 1;
                    if feed {
                        gone.push(*aor);
                    }
                    return false;
                }
            }
        });
        // Mark: contacts the proxy lists.
        let owner = scope.owner();
        for l in listed {
            if l.expires_s <= now_s || contains(touched, &l.aor) {
                continue;
            }
            let binding = Binding::owned(l.contact_hash, owner, l.expires_s);
            match state.map.get_mut(&l.aor) {
                None => {
                    if !self.registrations.has_room_with(shard, subscribers_delta) {
                        corrections.refused_full += 1;
                        continue;
                    }
                    state.map.insert(l.aor, AorEntry::new(binding));
                    subscribers_delta += 1;
                    contacts_delta += 1;
                    corrections.missing_contacts += 1;
                }
                Some(entry) => match entry.position(l.contact_hash) {
                    Some(position) => {
                        if let Some(slot) = entry.get_mut(position)
                            && scope.covers(slot.owner())
                            && slot.expires_s != l.expires_s
                        {
                            slot.expires_s = l.expires_s;
                            corrections.expiry_updates += 1;
                        }
                    }
                    None => {
                        contacts_delta +=
                            i64::from(entry.push(binding, self.registrations.max_contacts_per_aor));
                        corrections.missing_contacts += 1;
                    }
                },
            }
        }
        self.registrations
            .count(shard, subscribers_delta, contacts_delta);
        drop(guard);
        for aor in gone {
            self.aor_maybe_gone(aor);
        }
    }
}

#[cfg(test)]
mod tests;
