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
//! anyway: a hash map from fingerprint to the generation of the latest run begun, so a
//! fingerprint touched again costs nothing more and the check is one lookup). A run leaves
//! every entry noted since it began alone, so a call started or stopped (or a contact
//! registered) after the list's start is never undone by a list that predates it. A
//! stop-before-start tombstone also blocks re-adding a call. Past [`TOUCHED_PER_SHARD_MAX`]
//! distinct notes a shard is skipped by the runs then active (counted in
//! [`Corrections::shards_skipped`]); the next run heals it.
//!
//! **Ownership.** Each entry remembers its [`Owner`]; a run with [`Scope::Owner`] touches
//! only that owner's entries (and adds missing ones as that owner), [`Scope::All`] (a single
//! source for the whole node) every entry.
//!
//! **Stall: bounded steps.** Lists are fingerprinted and sorted per shard outside any lock
//! ([`ProxyList::push_call`], [`Tables::reconcile_pass`]). [`Tables::reconcile_step`] then
//! does one bounded piece of work under one shard lock: copy a shard's keys, or examine at
//! most `budget` of them (the sweep: entries the list lacks), or at most `budget` listed
//! entries (the mark: entries the tables lack). Between steps the lock is released fairly,
//! so events wait at most one step, whatever the size of the table or the list (measured
//! with `tools/reconcile-bench`, see `docs/performance.md`). Entries events touch between
//! two steps of a shard are noted and left alone, so stepping changes no outcome.
//!
//! **Journaled.** A step hands its [`Correction`]s (fingerprints and times: explicit
//! enough to apply again exactly) to a callback *before* applying them, under the same lock:
//! the agent appends them to its journal as a record of their own, and start-up replay
//! applies them with [`Tables::apply_corrections`], the code the step itself uses.

use hashbrown::HashMap;

use crate::calls::{CallEntry, CallShard, CallState, emergency_delta};
use crate::fingerprint::{BuildIdentityHasher, Fingerprint, Fingerprinter};
use crate::owners::Owner;
use crate::registrations::{AorEntry, Binding, CONTACT_HASH_MASK, RegShard, RegState};
use crate::{MonoTime, Tables};
use tollgate_events::CallRef;

/// Most distinct entries one shard notes during reconciliation runs before it gives up on
/// them (a shard then is skipped by the runs active at the time; the next run heals it).
pub const TOUCHED_PER_SHARD_MAX: usize = 4096;

/// Entries one [`Tables::reconcile_step`] examines by default: the most work done under one
/// lock (see [`Tables::reconcile_step`]).
pub const STEP_ENTRIES_DEFAULT: usize = 1024;

/// The calls (or AoRs) events touched in one shard while at least one run is active: each
/// noted fingerprint with the generation (the latest run begun) it was last touched in.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    runs: u32,
    generation: u32,
    noted: HashMap<Fingerprint, u32, BuildIdentityHasher>,
    /// The generation at which a note was lost to the bound (0: none since the last reset).
    overflowed_at: u32,
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
        if self.noted.len() >= TOUCHED_PER_SHARD_MAX && !self.noted.contains_key(&fp) {
            self.overflowed_at = self.generation;
        } else {
            self.noted.insert(fp, self.generation);
        }
    }

    /// A run begins: its base generation.
    fn begin(&mut self) -> u32 {
        self.runs += 1;
        self.generation = self.generation.wrapping_add(1).max(1);
        self.generation
    }

    fn end(&mut self) {
        debug_assert!(self.runs > 0);
        self.runs = self.runs.saturating_sub(1);
        if self.runs == 0 {
            self.noted = HashMap::default();
            self.overflowed_at = 0;
        }
    }

    /// Whether notes were lost while the run of generation `base` was active.
    fn overflowed_since(&self, base: u32) -> bool {
        self.overflowed_at != 0 && self.overflowed_at >= base
    }

    /// Whether an event touched `fp` since the run of generation `base` began.
    #[inline]
    fn since(&self, base: u32, fp: &Fingerprint) -> bool {
        self.noted.get(fp).is_some_and(|g| *g >= base)
    }
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

    /// The owner missing entries are added as.
    pub fn owner(self) -> Owner {
        match self {
            Scope::All => Owner::NONE,
            Scope::Owner(own) => own,
        }
    }
}

/// One change a reconciliation makes, explicit enough to be journaled and applied again
/// exactly ([`Tables::apply_corrections`]): fingerprints and times, no Call-IDs. Entries
/// added take the owner the corrections are applied with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// A phantom call: removed.
    RemoveCall { call: Fingerprint },
    /// A missing call: added (or replacing its own expired entry or a tombstone).
    AddCall {
        call: Fingerprint,
        deadline_s: u32,
        started_s: u32,
        emergency: bool,
    },
    /// The proxy's emergency flag for a call counted here.
    SetEmergency { call: Fingerprint, emergency: bool },
    /// A phantom contact: removed (its AoR too when it was the last).
    RemoveContact { aor: Fingerprint, contact_hash: u64 },
    /// A missing contact: added.
    AddContact {
        aor: Fingerprint,
        contact_hash: u64,
        expires_s: u32,
    },
    /// The proxy's expiry for a contact registered here.
    SetExpiry {
        aor: Fingerprint,
        contact_hash: u64,
        expires_s: u32,
    },
}

impl Correction {
    /// The shard index (in a table of `shard_mask + 1` shards) the correction falls in.
    fn shard(&self, shard_mask: u64) -> usize {
        let fp = match self {
            Correction::RemoveCall { call }
            | Correction::AddCall { call, .. }
            | Correction::SetEmergency { call, .. } => call,
            Correction::RemoveContact { aor, .. }
            | Correction::AddContact { aor, .. }
            | Correction::SetExpiry { aor, .. } => aor,
        };
        (fp.0[1] & shard_mask) as usize
    }

    fn is_call(&self) -> bool {
        matches!(
            self,
            Correction::RemoveCall { .. }
                | Correction::AddCall { .. }
                | Correction::SetEmergency { .. }
        )
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
    /// The AoR's cluster fingerprint, under the key of [`ProxyList::aor_key`] (0 without
    /// one): the text is at hand only here, and an AoR the reconciliation adds must reach
    /// the cluster's AoR set at once, not at its next refresh.
    cluster_fp: u64,
}

/// A proxy's list of its calls and contacts, fingerprinted with the tables' key and split by
/// shard as it is built (so nothing but fingerprints is kept: ~24 bytes per call, 40 per
/// contact, its AoR's cluster fingerprint included). Built with [`Tables::new_list`].
#[derive(Clone)]
pub struct ProxyList {
    fingerprinter: Fingerprinter,
    shard_mask: u64,
    calls: Vec<Vec<ListedCall>>,
    contacts: Vec<Vec<ListedContact>>,
    call_count: u64,
    contact_count: u64,
    /// The AoR feed's key when the list was made (a cluster node), to fingerprint AoRs.
    aor_key: Option<crate::aors::FeedKey>,
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
        let aor_text = aor;
        let aor = self.fingerprinter.aor(aor);
        let contact_hash = self.fingerprinter.contact(contact) & CONTACT_HASH_MASK;
        let cluster_fp = self.aor_key.map_or(0, |key| key.fingerprint(aor_text));
        self.contacts[(aor.0[1] & self.shard_mask) as usize].push(ListedContact {
            aor,
            contact_hash,
            expires_s: expires_at_s,
            cluster_fp,
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

/// Where a [`Pass`] is: for each shard, the sweep (entries the list lacks) then the mark
/// (entries the list has), calls first, then contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    CallSweep,
    CallMark,
    RegSweep,
    RegMark,
    Done,
}

/// A reconciliation in progress: a prepared list applied in bounded steps
/// ([`Tables::reconcile_step`]). Made by [`Tables::reconcile_pass`].
#[derive(Debug)]
pub struct Pass {
    list: ProxyList,
    scope: Scope,
    contacts: bool,
    stage: Stage,
    shard: usize,
    /// The current shard's keys, copied at its first sweep step.
    keys: Vec<Fingerprint>,
    loaded: bool,
    cursor: usize,
    ops: Vec<Correction>,
    gone: Vec<Fingerprint>,
    /// AoRs given a contact by this step, with their cluster fingerprints.
    born: Vec<(Fingerprint, u64)>,
    corrections: Corrections,
    steps: u64,
}

impl Pass {
    /// What the steps so far changed.
    pub fn corrections(&self) -> Corrections {
        self.corrections
    }

    /// Whether every shard has been reconciled.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The entries this pass corrects.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// On to the next stage (and shard).
    fn advance(&mut self, shard_count: usize) {
        self.keys.clear();
        self.loaded = false;
        self.cursor = 0;
        self.stage = match self.stage {
            Stage::CallSweep => Stage::CallMark,
            Stage::RegSweep => Stage::RegMark,
            Stage::CallMark | Stage::RegMark if self.shard + 1 < shard_count => {
                self.shard += 1;
                if self.stage == Stage::CallMark {
                    Stage::CallSweep
                } else {
                    Stage::RegSweep
                }
            }
            Stage::CallMark if self.contacts => {
                self.shard = 0;
                Stage::RegSweep
            }
            Stage::CallMark | Stage::RegMark | Stage::Done => Stage::Done,
        };
    }

    /// Leaves the rest of the current shard alone (its notes overflowed).
    fn skip_shard(&mut self, shard_count: usize) {
        self.corrections.shards_skipped += 1;
        if matches!(self.stage, Stage::CallSweep | Stage::RegSweep) {
            self.advance(shard_count);
        }
        self.advance(shard_count);
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
            aor_key: self.aor_feed_key(),
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

    /// Makes the entries `scope` covers equal to `list` in one go: [`Tables::reconcile_pass`]
    /// and [`Tables::reconcile_step`] until done, without a journal. `contacts`: whether the
    /// list covers registrations too (a source that only lists dialogs passes `false`).
    pub fn reconcile(
        &self,
        now: MonoTime,
        run: &Run,
        list: ProxyList,
        scope: Scope,
        contacts: bool,
    ) -> Corrections {
        let mut pass = self.reconcile_pass(list, scope, contacts);
        while !self.reconcile_step(now, run, &mut pass, STEP_ENTRIES_DEFAULT, &mut |_| {}) {}
        pass.corrections()
    }

    /// Prepares `list` (sorted per shard, outside any lock) for [`Tables::reconcile_step`].
    pub fn reconcile_pass(&self, mut list: ProxyList, scope: Scope, contacts: bool) -> Pass {
        assert_eq!(
            list.calls.len(),
            self.shard_count(),
            "list from other tables"
        );
        list.prepare();
        Pass {
            list,
            scope,
            contacts,
            stage: Stage::CallSweep,
            shard: 0,
            keys: Vec::new(),
            loaded: false,
            cursor: 0,
            ops: Vec::new(),
            gone: Vec::new(),
            born: Vec::new(),
            corrections: Corrections::default(),
            steps: 0,
        }
    }

    /// One bounded step of `pass`: under one shard lock, examines at most `budget` entries
    /// (table entries in a sweep, listed ones in a mark; the first step on a shard copies
    /// its keys instead), leaving alone whatever events touched since `run` began. The
    /// corrections it makes are handed to `journal` *before* they are applied, under the
    /// same lock, so an IO layer holding its journal lock across the call records them in
    /// the order the tables see them (replayed with [`Tables::apply_corrections`]). Returns
    /// whether the pass is done.
    pub fn reconcile_step(
        &self,
        now: MonoTime,
        run: &Run,
        pass: &mut Pass,
        budget: usize,
        journal: &mut dyn FnMut(&[Correction]),
    ) -> bool {
        let budget = budget.max(1);
        let now_s = now.unix_secs_u32();
        pass.steps += 1;
        match pass.stage {
            Stage::Done => {}
            Stage::CallSweep | Stage::CallMark => self.call_step(now_s, run, pass, budget, journal),
            Stage::RegSweep | Stage::RegMark => self.reg_step(now_s, run, pass, budget, journal),
        }
        pass.is_done()
    }

    fn call_step(
        &self,
        now_s: u32,
        run: &Run,
        pass: &mut Pass,
        budget: usize,
        journal: &mut dyn FnMut(&[Correction]),
    ) {
        let shard_count = self.shard_count();
        let index = pass.shard;
        let base = run.call_bases[index];
        let shard = &self.calls.shards[index];
        let mut guard = shard.state.lock();
        if guard.touched.overflowed_since(base) {
            parking_lot::MutexGuard::unlock_fair(guard);
            pass.skip_shard(shard_count);
            return;
        }
        let scope = pass.scope;
        let listed = &pass.list.calls[index];
        let mut ops = std::mem::take(&mut pass.ops);
        ops.clear();
        let done = if pass.stage == Stage::CallSweep {
            if !pass.loaded {
                pass.keys.extend(
                    guard
                        .map
                        .iter()
                        .filter(|(_, e)| !e.is_tombstone() && scope.covers(e.owner()))
                        .map(|(fp, _)| *fp),
                );
                pass.loaded = true;
                pass.cursor = 0;
                parking_lot::MutexGuard::unlock_fair(guard);
                if pass.keys.is_empty() {
                    pass.advance(shard_count);
                }
                pass.ops = ops;
                return;
            }
            let end = (pass.cursor + budget).min(pass.keys.len());
            for fp in &pass.keys[pass.cursor..end] {
                let Some(entry) = guard.map.get(fp) else {
                    continue;
                };
                if entry.is_tombstone()
                    || entry.is_expired(now_s)
                    || !scope.covers(entry.owner())
                    || guard.touched.since(base, fp)
                    || listed.binary_search_by_key(fp, |l| l.fp).is_ok()
                {
                    continue;
                }
                ops.push(Correction::RemoveCall { call: *fp });
            }
            pass.cursor = end;
            end >= pass.keys.len()
        } else {
            let end = (pass.cursor + budget).min(listed.len());
            let deadline_s = now_s.saturating_add(self.calls.max_call_duration_s);
            for l in &listed[pass.cursor..end] {
                if guard.touched.since(base, &l.fp) {
                    continue;
                }
                let known = l.emergency != EMERGENCY_UNKNOWN;
                let emergency = l.emergency == EMERGENCY_YES;
                match guard.map.get(&l.fp) {
                    Some(entry) if !entry.is_expired(now_s) => {
                        if entry.is_tombstone()
                            || !known
                            || entry.is_emergency() == emergency
                            || !scope.covers(entry.owner())
                        {
                            continue;
                        }
                        ops.push(Correction::SetEmergency {
                            call: l.fp,
                            emergency,
                        });
                    }
                    _ => ops.push(Correction::AddCall {
                        call: l.fp,
                        deadline_s,
                        started_s: now_s,
                        emergency,
                    }),
                }
            }
            pass.cursor = end;
            end >= listed.len()
        };
        if !ops.is_empty() {
            journal(&ops);
            let owner = scope.owner();
            for op in &ops {
                self.apply_call_op(shard, &mut guard, owner, *op, &mut pass.corrections);
            }
            shard.publish_hint(&guard.map);
        }
        parking_lot::MutexGuard::unlock_fair(guard);
        pass.ops = ops;
        if done {
            pass.advance(shard_count);
        }
    }

    fn reg_step(
        &self,
        now_s: u32,
        run: &Run,
        pass: &mut Pass,
        budget: usize,
        journal: &mut dyn FnMut(&[Correction]),
    ) {
        let shard_count = self.shard_count();
        let index = pass.shard;
        let base = run.reg_bases[index];
        let shard = &self.registrations.shards[index];
        let mut guard = shard.map.lock();
        if guard.touched.overflowed_since(base) {
            parking_lot::MutexGuard::unlock_fair(guard);
            pass.skip_shard(shard_count);
            return;
        }
        let scope = pass.scope;
        let listed = &pass.list.contacts[index];
        let mut ops = std::mem::take(&mut pass.ops);
        ops.clear();
        let done = if pass.stage == Stage::RegSweep {
            if !pass.loaded {
                pass.keys.extend(
                    guard
                        .map
                        .iter()
                        .filter(|(_, e)| e.bindings().any(|b| scope.covers(b.owner())))
                        .map(|(fp, _)| *fp),
                );
                pass.loaded = true;
                pass.cursor = 0;
                parking_lot::MutexGuard::unlock_fair(guard);
                if pass.keys.is_empty() {
                    pass.advance(shard_count);
                }
                pass.ops = ops;
                return;
            }
            let end = (pass.cursor + budget).min(pass.keys.len());
            for aor in &pass.keys[pass.cursor..end] {
                if guard.touched.since(base, aor) {
                    continue;
                }
                let Some(entry) = guard.map.get(aor) else {
                    continue;
                };
                let from = listed.partition_point(|l| l.aor < *aor);
                let to = listed.partition_point(|l| l.aor <= *aor);
                let for_aor = &listed[from..to];
                for b in entry.bindings() {
                    if b.is_expired(now_s)
                        || !scope.covers(b.owner())
                        || for_aor
                            .iter()
                            .any(|l| l.contact_hash == b.contact_hash() && l.expires_s > now_s)
                    {
                        continue;
                    }
                    ops.push(Correction::RemoveContact {
                        aor: *aor,
                        contact_hash: b.contact_hash(),
                    });
                }
            }
            pass.cursor = end;
            end >= pass.keys.len()
        } else {
            let end = (pass.cursor + budget).min(listed.len());
            for l in &listed[pass.cursor..end] {
                if l.expires_s <= now_s || guard.touched.since(base, &l.aor) {
                    continue;
                }
                let existing = guard.map.get(&l.aor).and_then(|entry| {
                    entry
                        .bindings()
                        .find(|b| b.contact_hash() == l.contact_hash)
                });
                match existing {
                    None => {
                        ops.push(Correction::AddContact {
                            aor: l.aor,
                            contact_hash: l.contact_hash,
                            expires_s: l.expires_s,
                        });
                        pass.born.push((l.aor, l.cluster_fp));
                    }
                    Some(b) if scope.covers(b.owner()) && b.expires_s != l.expires_s => {
                        ops.push(Correction::SetExpiry {
                            aor: l.aor,
                            contact_hash: l.contact_hash,
                            expires_s: l.expires_s,
                        });
                    }
                    Some(_) => {}
                }
            }
            pass.cursor = end;
            end >= listed.len()
        };
        let mut gone = std::mem::take(&mut pass.gone);
        if !ops.is_empty() {
            journal(&ops);
            let owner = scope.owner();
            for op in &ops {
                self.apply_reg_op(
                    shard,
                    &mut guard,
                    owner,
                    *op,
                    &mut pass.corrections,
                    &mut gone,
                );
            }
        }
        parking_lot::MutexGuard::unlock_fair(guard);
        if self.aor_feed_enabled() {
            for aor in gone.drain(..) {
                self.aor_maybe_gone(aor);
            }
            // AoRs the proxy has and this node did not: into the cluster's AoR set now.
            if let Some(key) = pass.list.aor_key {
                for (aor, fingerprint) in pass.born.drain(..) {
                    self.aor_registered_as(aor, fingerprint, key.tag());
                }
            }
        }
        gone.clear();
        pass.born.clear();
        pass.gone = gone;
        pass.ops = ops;
        if done {
            pass.advance(shard_count);
        }
    }

    /// Applies corrections read back from the journal (start-up replay), exactly as
    /// [`Tables::reconcile_step`] applied them; entries added take `owner`.
    pub fn apply_corrections(&self, owner: Owner, corrections: &[Correction]) -> Corrections {
        let mut counts = Corrections::default();
        let mask = self.shard_count() as u64 - 1;
        let mut gone = Vec::new();
        for op in corrections {
            let index = op.shard(mask);
            if op.is_call() {
                let shard = &self.calls.shards[index];
                let mut state = shard.state.lock();
                self.apply_call_op(shard, &mut state, owner, *op, &mut counts);
                shard.publish_hint(&state.map);
            } else {
                let shard = &self.registrations.shards[index];
                let mut state = shard.map.lock();
                self.apply_reg_op(shard, &mut state, owner, *op, &mut counts, &mut gone);
                drop(state);
                for aor in gone.drain(..) {
                    self.aor_maybe_gone(aor);
                }
            }
        }
        counts
    }

    /// One call correction, under the shard's lock.
    fn apply_call_op(
        &self,
        shard: &CallShard,
        state: &mut CallState,
        owner: Owner,
        op: Correction,
        counts: &mut Corrections,
    ) {
        match op {
            Correction::RemoveCall { call } => {
                if let Some(old) = state.map.get(&call).copied()
                    && !old.is_tombstone()
                {
                    state.map.remove(&call);
                    self.calls
                        .count(shard, -1, -emergency_delta(old.is_emergency()));
                    counts.phantom_calls += 1;
                }
            }
            Correction::AddCall {
                call,
                deadline_s,
                started_s,
                emergency,
            } => {
                let new = CallEntry::call(deadline_s, started_s, emergency, owner);
                match state.map.get_mut(&call) {
                    Some(entry) if entry.is_tombstone() => {
                        if !self.calls.has_room_with(shard, 0) {
                            counts.refused_full += 1;
                            return;
                        }
                        *entry = new;
                        state.tombstones -= 1;
                        self.calls.count(shard, 1, emergency_delta(emergency));
                    }
                    Some(entry) => {
                        let old = *entry;
                        *entry = new;
                        self.calls.count(
                            shard,
                            0,
                            emergency_delta(emergency) - emergency_delta(old.is_emergency()),
                        );
                    }
                    None => {
                        if !self.calls.has_room_with(shard, 0) {
                            counts.refused_full += 1;
                            return;
                        }
                        state.map.insert(call, new);
                        self.calls.count(shard, 1, emergency_delta(emergency));
                    }
                }
                counts.missing_calls += 1;
            }
            Correction::SetEmergency { call, emergency } => {
                if let Some(entry) = state.map.get_mut(&call)
                    && !entry.is_tombstone()
                    && entry.is_emergency() != emergency
                {
                    let delta = emergency_delta(emergency) - emergency_delta(entry.is_emergency());
                    entry.set_emergency(emergency);
                    self.calls.count(shard, 0, delta);
                    counts.emergency_updates += 1;
                }
            }
            Correction::RemoveContact { .. }
            | Correction::AddContact { .. }
            | Correction::SetExpiry { .. } => debug_assert!(false, "a contact op on calls"),
        }
    }

    /// One contact correction, under the shard's lock; AoRs left empty go to `gone`.
    fn apply_reg_op(
        &self,
        shard: &RegShard,
        state: &mut RegState,
        owner: Owner,
        op: Correction,
        counts: &mut Corrections,
        gone: &mut Vec<Fingerprint>,
    ) {
        match op {
            Correction::RemoveContact { aor, contact_hash } => {
                let Some(entry) = state.map.get_mut(&aor) else {
                    return;
                };
                let Some(position) = entry.position(contact_hash) else {
                    return;
                };
                counts.phantom_contacts += 1;
                if entry.remove(position) {
                    state.map.remove(&aor);
                    self.registrations.count(shard, -1, -1);
                    gone.push(aor);
                } else {
                    self.registrations.count(shard, 0, -1);
                }
            }
            Correction::AddContact {
                aor,
                contact_hash,
                expires_s,
            } => {
                let binding = Binding::owned(contact_hash & CONTACT_HASH_MASK, owner, expires_s);
                match state.map.get_mut(&aor) {
                    None => {
                        if !self.registrations.has_room_with(shard, 0) {
                            counts.refused_full += 1;
                            return;
                        }
                        state.map.insert(aor, AorEntry::new(binding));
                        self.registrations.count(shard, 1, 1);
                        counts.missing_contacts += 1;
                    }
                    Some(entry) => {
                        if entry.position(contact_hash).is_some() {
                            return;
                        }
                        let grew = entry.push(binding, self.registrations.max_contacts_per_aor);
                        self.registrations.count(shard, 0, i64::from(grew));
                        counts.missing_contacts += 1;
                    }
                }
            }
            Correction::SetExpiry {
                aor,
                contact_hash,
                expires_s,
            } => {
                if let Some(entry) = state.map.get_mut(&aor)
                    && let Some(position) = entry.position(contact_hash)
                    && let Some(slot) = entry.get_mut(position)
                    && slot.expires_s != expires_s
                {
                    slot.expires_s = expires_s;
                    counts.expiry_updates += 1;
                }
            }
            Correction::RemoveCall { .. }
            | Correction::AddCall { .. }
            | Correction::SetEmergency { .. } => debug_assert!(false, "a call op on contacts"),
        }
    }
}

#[cfg(test)]
mod tests;
