//! The AoR feed: this node's registered AoRs as cluster-wide fingerprints, and their changes.
//!
//! A cluster counts a subscriber registered through several nodes once: each node
//! publishes the set of its registered AoRs, fingerprinted under a key every node shares
//! (the cluster's AoR key, distributed by the mesh), so the same AoR has the same
//! fingerprint everywhere and nothing readable leaves the node. The feed turns the
//! registration table's transitions into changes of that set:
//!
//! - **Added**: an AoR got a contact while not in the set (its first contact, or a refresh
//!   after a re-keying): its 64-bit fingerprint ([`AorFeed`] computes it from the AoR, the
//!   only moment the text is at hand) goes into the set.
//! - **Removed**: an AoR lost its last contact (`expires 0`, or the sweep, or a
//!   reconciliation that found the proxy without it).
//! - **Added by a reconciliation** (issue 13): the proxy listed an AoR this node did not
//!   have; its cluster fingerprint was computed from the listed text when the list was built
//!   ([`Tables::new_list`] takes the key), so it counts cluster-wide right after the pass.
//!
//! The index (table fingerprint → cluster fingerprint and key generation) is sharded like
//! the table. **Invariant:** after the last event for an AoR, the index holds it exactly
//! when the table does: both paths re-read the table under the index shard's lock, so two
//! threads racing on one AoR cannot leave a phantom or a hole.
//!
//! **Disabled** (standalone agent: no key set) the feed costs one relaxed load per `reg`.
//! **Enabled**, a refresh costs an index lookup (lock and hash); a new AoR also a SipHash
//! of the AoR and a push to the change queue.
//!
//! **Bounds:** at most [`AOR_CHANGES_MAX`] changes wait for [`Tables::drain_aor_changes`];
//! past it the queue is cleared and the drain says `resync` (the caller reloads the whole
//! set from [`Tables::aor_fingerprints`]).
//!
//! **Re-keying:** a new key changes no stored fingerprint at once (the AoR text is gone);
//! each AoR moves to the new key at its next refresh (a remove of the old fingerprint and
//! an add of the new), so a rotation completes within one registration interval.
//!
//! **Before the key is agreed** (a node that just started, with a key of its own, until its
//! set is published: see `tollgate_replication::replica::aors`) the feed keeps the text of
//! each AoR it indexes ([`Tables::retain_aor_texts`], at most [`AOR_TEXTS_BYTES_MAX`]), so
//! that [`Tables::rekey_aors`] moves every AoR to the agreed key at once; an AoR whose text
//! it does not hold (restored from a snapshot, or past the bound) leaves the set and joins
//! again at its next refresh, never counted under two keys. [`Tables::release_aor_texts`]
//! ends it.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_utils::CachePadded;
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use siphasher::sip::SipHasher13;

use crate::Tables;
use crate::fingerprint::{BuildIdentityHasher, Fingerprint};

/// Most changes waiting to be drained.
pub const AOR_CHANGES_MAX: usize = 1 << 20;
/// Most bytes of AoR text kept until the key is agreed (each AoR's text plus
/// [`AOR_TEXT_OVERHEAD_BYTES`]); past it new AoRs are indexed without their text.
pub const AOR_TEXTS_BYTES_MAX: usize = 32 << 20;
/// What one kept text costs beside its bytes (map entry, box header), for the bound.
pub const AOR_TEXT_OVERHEAD_BYTES: usize = 48;

/// One change of this node's AoR set, by cluster fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AorChange {
    Added(u64),
    Removed(u64),
}

/// What [`Tables::drain_aor_changes`] returns.
#[derive(Debug, Default)]
pub struct AorDrain {
    pub changes: Vec<AorChange>,
    /// Changes were lost (the queue overflowed): reload the whole set.
    pub resync: bool,
}

/// One entry of the index: an AoR of the table and its cluster fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AorIndexEntry {
    pub aor: Fingerprint,
    pub fingerprint: u64,
    /// A tag of the key it was computed under (derived from the key, not secret-revealing).
    pub key_tag: u64,
}

#[derive(Clone, Copy)]
struct Key {
    tag: u64,
    k0: u64,
    k1: u64,
}

/// The AoR feed's key as of some moment, to fingerprint AoRs away from the tables (a
/// reconciliation's list, built while the proxy's dump is read).
#[derive(Clone, Copy)]
pub(crate) struct FeedKey(Key);

impl FeedKey {
    /// The cluster fingerprint of `aor` under this key.
    pub(crate) fn fingerprint(&self, aor: &[u8]) -> u64 {
        sip(self.0.k0, self.0.k1, aor)
    }

    pub(crate) fn tag(&self) -> u64 {
        self.0.tag
    }
}

type Index = HashMap<Fingerprint, (u64, u64), BuildIdentityHasher>;

pub(crate) struct AorFeed {
    enabled: AtomicBool,
    key: RwLock<Option<Key>>,
    shards: Box<[CachePadded<Mutex<Index>>]>,
    changes: Mutex<(Vec<AorChange>, bool)>,
    /// Texts kept until the key is agreed; `None` when not kept (the usual case).
    texts: Mutex<Option<Texts>>,
    texts_on: AtomicBool,
}

#[derive(Default)]
struct Texts {
    by_aor: HashMap<Fingerprint, Box<[u8]>, BuildIdentityHasher>,
    bytes: usize,
}

impl AorFeed {
    pub(crate) fn new(shard_count: usize) -> Self {
        AorFeed {
            enabled: AtomicBool::new(false),
            key: RwLock::new(None),
            shards: (0..shard_count)
                .map(|_| CachePadded::new(Mutex::new(Index::default())))
                .collect(),
            changes: Mutex::new((Vec::new(), false)),
            texts: Mutex::new(None),
            texts_on: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn shard(&self, aor: Fingerprint) -> &Mutex<Index> {
        &self.shards[(aor.0[1] as usize) & (self.shards.len() - 1)]
    }

    fn push(&self, change: AorChange) {
        let mut queue = self.changes.lock();
        if queue.0.len() >= AOR_CHANGES_MAX {
            queue.0.clear();
            queue.1 = true;
        }
        queue.0.push(change);
    }

    fn keep_text(&self, aor: Fingerprint, text: &[u8]) {
        if !self.texts_on.load(Ordering::Relaxed) {
            return;
        }
        let mut texts = self.texts.lock();
        let Some(texts) = texts.as_mut() else {
            return;
        };
        if texts.by_aor.contains_key(&aor) {
            return;
        }
        let cost = text.len() + AOR_TEXT_OVERHEAD_BYTES;
        if texts.bytes + cost > AOR_TEXTS_BYTES_MAX {
            return;
        }
        texts.bytes += cost;
        texts.by_aor.insert(aor, text.into());
    }

    fn forget_text(&self, aor: Fingerprint) {
        if !self.texts_on.load(Ordering::Relaxed) {
            return;
        }
        if let Some(texts) = self.texts.lock().as_mut()
            && let Some(text) = texts.by_aor.remove(&aor)
        {
            texts.bytes -= text.len() + AOR_TEXT_OVERHEAD_BYTES;
        }
    }
}

/// The cluster fingerprint of an AoR: SipHash-1-3 (64 bits) under the cluster's AoR key.
pub fn cluster_fingerprint(key: &[u8; 32], aor: &[u8]) -> u64 {
    let (k0, k1) = sip_keys(key);
    sip(k0, k1, aor)
}

fn sip_keys(key: &[u8; 32]) -> (u64, u64) {
    let (k0, k1, _) = derive(key);
    (k0, k1)
}

/// SipHash keys and a public tag of the key, all one-way from it.
fn derive(key: &[u8; 32]) -> (u64, u64, u64) {
    let derived = blake3::derive_key("tollgate 2026 cluster AoR fingerprint", key);
    let word = |i: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&derived[i * 8..i * 8 + 8]);
        u64::from_le_bytes(bytes)
    };
    (word(0), word(1), word(2))
}

fn sip(k0: u64, k1: u64, aor: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = SipHasher13::new_with_keys(k0, k1);
    hasher.write(aor);
    hasher.finish()
}

impl Tables {
    /// Starts (or re-keys) the AoR feed under the cluster's AoR key.
    pub fn set_aor_key(&self, key: &[u8; 32]) {
        let (k0, k1, tag) = derive(key);
        *self.aor_feed.key.write() = Some(Key { tag, k0, k1 });
        self.aor_feed.enabled.store(true, Ordering::Relaxed);
    }

    /// Keeps the text of each AoR indexed from now on, so that [`Tables::rekey_aors`] can move
    /// it to another key (until [`Tables::release_aor_texts`]). Call it before ingest starts.
    pub fn retain_aor_texts(&self) {
        *self.aor_feed.texts.lock() = Some(Texts::default());
        self.aor_feed.texts_on.store(true, Ordering::Relaxed);
    }

    /// Stops keeping AoR texts and frees them (the key is agreed).
    pub fn release_aor_texts(&self) {
        self.aor_feed.texts_on.store(false, Ordering::Relaxed);
        *self.aor_feed.texts.lock() = None;
    }

    /// Whether AoR texts are kept ([`Tables::retain_aor_texts`]).
    pub fn aor_texts_retained(&self) -> bool {
        self.aor_feed.texts_on.load(Ordering::Relaxed)
    }

    /// Moves this node's whole AoR set to `key` at once (the key agreed before the set was
    /// published): each AoR whose text is kept gets its fingerprint under `key` (a remove
    /// and an add queued); one whose text is not leaves the set (a remove) and joins again at
    /// its next refresh. Returns `(moved, dropped)`.
    pub fn rekey_aors(&self, key: &[u8; 32]) -> (usize, usize) {
        self.set_aor_key(key);
        let (k0, k1, tag) = derive(key);
        let feed = &self.aor_feed;
        let (mut moved, mut dropped) = (0, 0);
        for shard in feed.shards.iter() {
            let mut index = shard.lock();
            let texts = feed.texts.lock();
            let mut changes: Vec<AorChange> = Vec::new();
            index.retain(|aor, (fingerprint, key_tag)| {
                if *key_tag == tag {
                    return true;
                }
                changes.push(AorChange::Removed(*fingerprint));
                match texts.as_ref().and_then(|texts| texts.by_aor.get(aor)) {
                    Some(text) => {
                        *fingerprint = sip(k0, k1, text);
                        *key_tag = tag;
                        changes.push(AorChange::Added(*fingerprint));
                        moved += 1;
                        true
                    }
                    None => {
                        dropped += 1;
                        false
                    }
                }
            });
            drop(texts);
            drop(index);
            for change in changes {
                feed.push(change);
            }
        }
        (moved, dropped)
    }

    /// Whether the AoR feed runs (a cluster key is set).
    pub(crate) fn aor_feed_enabled(&self) -> bool {
        self.aor_feed.enabled()
    }

    /// The feed's key now, when it runs.
    pub(crate) fn aor_feed_key(&self) -> Option<FeedKey> {
        if !self.aor_feed.enabled() {
            return None;
        }
        self.aor_feed.key.read().map(FeedKey)
    }

    /// A reconciliation gave `aor` a contact; `fingerprint` is its cluster fingerprint under
    /// the key tagged `tag`, computed from the text the proxy listed. Like a `reg`: added to
    /// the set if not in it under the current key; nothing when the key changed since (the
    /// AoR then joins at its next refresh). Its text is not kept: before the key is agreed,
    /// a re-keying drops it until its next refresh, as one restored from a snapshot.
    pub(crate) fn aor_registered_as(&self, aor: Fingerprint, fingerprint: u64, tag: u64) {
        let feed = &self.aor_feed;
        let Some(key) = *feed.key.read() else {
            return;
        };
        if key.tag != tag {
            return;
        }
        let mut index = feed.shard(aor).lock();
        let old = match index.get(&aor) {
            Some((_, held)) if *held == key.tag => return,
            held => held.map(|(fingerprint, _)| *fingerprint),
        };
        // Re-read the table under the index lock (see the module invariant).
        if !self.registrations.is_registered(aor) {
            return;
        }
        index.insert(aor, (fingerprint, key.tag));
        drop(index);
        if let Some(old) = old.filter(|old| *old != fingerprint) {
            feed.push(AorChange::Removed(old));
        }
        if old != Some(fingerprint) {
            feed.push(AorChange::Added(fingerprint));
        }
    }

    /// A `reg` left `aor` registered (`text` is the AoR as sent).
    #[inline]
    pub(crate) fn aor_registered(&self, aor: Fingerprint, text: &[u8]) {
        let feed = &self.aor_feed;
        let Some(key) = *feed.key.read() else {
            return;
        };
        let mut index = feed.shard(aor).lock();
        match index.get(&aor) {
            Some((_, tag)) if *tag == key.tag => {}
            held => {
                let old = held.map(|(fingerprint, _)| *fingerprint);
                // Re-read the table under the index lock (see the module invariant).
                if !self.registrations.is_registered(aor) {
                    return;
                }
                let fingerprint = sip(key.k0, key.k1, text);
                index.insert(aor, (fingerprint, key.tag));
                feed.keep_text(aor, text);
                drop(index);
                if let Some(old) = old.filter(|old| *old != fingerprint) {
                    feed.push(AorChange::Removed(old));
                }
                if old != Some(fingerprint) {
                    feed.push(AorChange::Added(fingerprint));
                }
            }
        }
    }

    /// `aor` may have lost its last contact.
    pub(crate) fn aor_maybe_gone(&self, aor: Fingerprint) {
        let feed = &self.aor_feed;
        let mut index = feed.shard(aor).lock();
        if !index.contains_key(&aor) || self.registrations.is_registered(aor) {
            return;
        }
        if let Some((fingerprint, _)) = index.remove(&aor) {
            feed.forget_text(aor);
            drop(index);
            feed.push(AorChange::Removed(fingerprint));
        }
    }

    /// The changes of this node's AoR set since the last drain.
    pub fn drain_aor_changes(&self) -> AorDrain {
        let mut queue = self.aor_feed.changes.lock();
        let (changes, resync) = std::mem::take(&mut *queue);
        AorDrain { changes, resync }
    }

    /// This node's AoR set: every cluster fingerprint in the index.
    pub fn aor_fingerprints(&self) -> Vec<u64> {
        let mut all = Vec::new();
        for shard in self.aor_feed.shards.iter() {
            all.extend(shard.lock().values().map(|(fingerprint, _)| *fingerprint));
        }
        all
    }

    /// The index, for the IO layer to persist beside a snapshot.
    pub fn aor_index(&self) -> Vec<AorIndexEntry> {
        let mut all = Vec::new();
        for shard in self.aor_feed.shards.iter() {
            all.extend(
                shard
                    .lock()
                    .iter()
                    .map(|(aor, (fingerprint, key_tag))| AorIndexEntry {
                        aor: *aor,
                        fingerprint: *fingerprint,
                        key_tag: *key_tag,
                    }),
            );
        }
        all
    }

    /// Restores a persisted index after [`Tables::restore`]: keeps the entries of AoRs the
    /// table holds (the AoR text is not at hand to fingerprint the others; they join at
    /// their next refresh). Queues no change: hand [`Tables::aor_fingerprints`] to the mesh.
    /// Returns how many entries were kept.
    pub fn restore_aor_index(&self, entries: &[AorIndexEntry]) -> usize {
        let mut kept = 0;
        for entry in entries {
            if !self.registrations.is_registered(entry.aor) {
                continue;
            }
            self.aor_feed
                .shard(entry.aor)
                .lock()
                .insert(entry.aor, (entry.fingerprint, entry.key_tag));
            kept += 1;
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FingerprintKey, MonoTime, TablesConfig};
    use tollgate_events::Event;

    fn reg<'a>(aor: &'a str, contact: &'a str, expires_s: u32) -> Event<'a> {
        Event::Register {
            aor: aor.as_bytes(),
            contact: contact.as_bytes(),
            expires_s,
        }
    }

    fn tables() -> Tables {
        Tables::new(TablesConfig::default(), FingerprintKey([9; 32]))
    }

    #[test]
    fn disabled_feed_queues_nothing() {
        let t = tables();
        t.apply(MonoTime::from_unix_secs(10), &reg("alice", "c1", 60));
        assert!(t.drain_aor_changes().changes.is_empty());
    }

    #[test]
    fn an_aor_is_added_once_and_removed_with_its_last_contact() {
        let t = tables();
        let key = [3u8; 32];
        t.set_aor_key(&key);
        let alice = cluster_fingerprint(&key, b"alice");
        let at = MonoTime::from_unix_secs;
        t.apply(at(10), &reg("alice", "c1", 60));
        t.apply(at(11), &reg("alice", "c2", 60));
        t.apply(at(12), &reg("alice", "c1", 60));
        assert_eq!(t.drain_aor_changes().changes, vec![AorChange::Added(alice)]);
        t.apply(at(13), &reg("alice", "c1", 0));
        assert!(t.drain_aor_changes().changes.is_empty());
        t.apply(at(14), &reg("alice", "c2", 0));
        assert_eq!(
            t.drain_aor_changes().changes,
            vec![AorChange::Removed(alice)]
        );
        // Expiry through the sweep.
        t.apply(at(20), &reg("bob", "c1", 5));
        t.sweep(at(30), usize::MAX);
        let bob = cluster_fingerprint(&key, b"bob");
        assert_eq!(
            t.drain_aor_changes().changes,
            vec![AorChange::Added(bob), AorChange::Removed(bob)]
        );
        assert!(t.aor_fingerprints().is_empty());
    }

    #[test]
    fn a_new_key_moves_each_aor_at_its_next_refresh() {
        let t = tables();
        let (old, new) = ([1u8; 32], [2u8; 32]);
        t.set_aor_key(&old);
        let at = MonoTime::from_unix_secs;
        t.apply(at(10), &reg("alice", "c1", 60));
        t.drain_aor_changes();
        t.set_aor_key(&new);
        t.apply(at(11), &reg("alice", "c1", 60));
        assert_eq!(
            t.drain_aor_changes().changes,
            vec![
                AorChange::Removed(cluster_fingerprint(&old, b"alice")),
                AorChange::Added(cluster_fingerprint(&new, b"alice")),
            ]
        );
        assert_eq!(
            t.aor_fingerprints(),
            vec![cluster_fingerprint(&new, b"alice")]
        );
    }

    #[test]
    fn kept_texts_move_every_aor_to_the_agreed_key_at_once() {
        let t = tables();
        let (own, agreed) = ([1u8; 32], [2u8; 32]);
        t.set_aor_key(&own);
        t.retain_aor_texts();
        let at = MonoTime::from_unix_secs;
        t.apply(at(10), &reg("alice", "c1", 60));
        t.apply(at(10), &reg("bob", "c1", 60));
        t.apply(at(11), &reg("bob", "c1", 0));
        t.drain_aor_changes();
        assert_eq!(t.rekey_aors(&agreed), (1, 0));
        assert_eq!(
            t.drain_aor_changes().changes,
            vec![
                AorChange::Removed(cluster_fingerprint(&own, b"alice")),
                AorChange::Added(cluster_fingerprint(&agreed, b"alice")),
            ]
        );
        assert_eq!(
            t.aor_fingerprints(),
            vec![cluster_fingerprint(&agreed, b"alice")]
        );
        // Released: a later key moves AoRs at their refresh again.
        t.release_aor_texts();
        assert!(!t.aor_texts_retained());
        t.apply(at(12), &reg("carol", "c1", 60));
        t.set_aor_key(&[3; 32]);
        assert!(t.drain_aor_changes().changes.len() == 1);
    }

    #[test]
    fn an_aor_without_its_text_leaves_the_set_at_a_rekeying_and_rejoins_at_its_refresh() {
        let t = tables();
        let (old, agreed) = ([1u8; 32], [2u8; 32]);
        t.set_aor_key(&old);
        let at = MonoTime::from_unix_secs;
        t.apply(at(10), &reg("alice", "c1", 60));
        // Texts kept only from now on (as after a restart restored alice's index entry).
        t.retain_aor_texts();
        t.drain_aor_changes();
        assert_eq!(t.rekey_aors(&agreed), (0, 1));
        assert_eq!(
            t.drain_aor_changes().changes,
            vec![AorChange::Removed(cluster_fingerprint(&old, b"alice"))]
        );
        assert!(t.aor_fingerprints().is_empty());
        t.apply(at(20), &reg("alice", "c1", 60));
        assert_eq!(
            t.aor_fingerprints(),
            vec![cluster_fingerprint(&agreed, b"alice")]
        );
    }

    #[test]
    fn a_restored_index_keeps_only_registered_aors() {
        let key = FingerprintKey([9; 32]);
        let t = Tables::new(TablesConfig::default(), key.clone());
        t.set_aor_key(&[5; 32]);
        let at = MonoTime::from_unix_secs;
        t.apply(at(10), &reg("alice", "c1", 60));
        t.apply(at(10), &reg("bob", "c1", 60));
        let index = t.aor_index();
        let snapshot = t.snapshot(at(11));
        let restored = Tables::new(TablesConfig::default(), key);
        restored.restore(at(12), &snapshot).unwrap();
        restored.apply(at(12), &reg("bob", "c1", 0));
        assert_eq!(restored.restore_aor_index(&index), 1);
        assert_eq!(
            restored.aor_fingerprints(),
            vec![cluster_fingerprint(&[5; 32], b"alice")]
        );
    }
}
