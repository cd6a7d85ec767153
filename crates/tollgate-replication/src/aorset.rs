//! Registered AoRs across the cluster: every node's set of AoR fingerprints, and their union.
//!
//! Each node owns one set: the keyed 64-bit fingerprints ([`Fp`]) of the AoRs with at least
//! one live contact on it. The owner changes it (adds and removes, sent as deltas); every
//! other node keeps a copy. [`AorSets`] holds all of them in **one** ordered map from
//! fingerprint to the nodes holding it ([`Holders`], by slot), so an AoR held by several
//! nodes costs one map entry, and the union — the number of fingerprints held by at least
//! one *counted* node — is kept incrementally: every add, remove and liveness change adjusts
//! it by the fingerprints it touches.
//!
//! **Range hashes.** A set's digest over a range of fingerprints `[lo, hi]` is `(count,
//! xor of mix(fp))`; over the whole space it is kept per set (O(1) per change) and is what
//! a summary carries; over a sub-range it is computed from the map on demand (a range scan).
//! XOR makes it order-free, so the owner and a copy agree exactly when they hold the same
//! members (up to a 2^-64 accident per comparison).
//!
//! **Memory.** One `BTreeMap<u64, Holders>` entry per distinct fingerprint, 16 bytes of key
//! and value in B-tree leaves of 11; a fingerprint held by more than [`INLINE_HOLDERS`] nodes
//! spills its further holders to a side map. Measured figures: `docs/performance.md`.
//!
//! **Invariants** (checked by [`AorSets::check`] in tests): every map entry has at least one
//! holder; a slot's `count` and `root` equal its members' count and hash; `distinct` equals
//! the number of entries with a counted holder.

use std::collections::BTreeMap;

use crate::NODES_MAX;

/// A keyed fingerprint of an AoR (the agent computes it under the cluster's AoR key).
pub type Fp = u64;

/// Holders stored inline in a map entry; more spill to a side map.
pub const INLINE_HOLDERS: usize = 3;

/// A node's place in [`AorSets`]: 1..=[`NODES_MAX`]; 0 marks an empty inline holder.
pub type Slot = u16;

const _: () = assert!(NODES_MAX < Slot::MAX as usize);

/// The order-free hash of one fingerprint in a range hash (SplitMix64's finalizer).
pub const fn mix(fp: Fp) -> u64 {
    let mut z = fp.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `(count, hash)` of a set over a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeDigest {
    pub count: u64,
    pub hash: u64,
}

impl RangeDigest {
    fn toggle(&mut self, fp: Fp, present: bool) {
        self.hash ^= mix(fp);
        if present {
            self.count += 1;
        } else {
            self.count -= 1;
        }
    }
}

/// The first [`INLINE_HOLDERS`] holders of a fingerprint (0 = empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holders([Slot; INLINE_HOLDERS]);

#[derive(Debug, Clone, Default)]
struct SlotState {
    counted: bool,
    digest: RangeDigest,
}

/// Every node's AoR set and their union. See the module documentation.
#[derive(Debug, Default)]
pub struct AorSets {
    map: BTreeMap<Fp, Holders>,
    /// Holders past the inline ones, for the few fingerprints held by many nodes (ordered,
    /// like `map`: the core reads no hasher keys).
    spill: BTreeMap<Fp, Vec<Slot>>,
    /// Index `slot - 1`; `None` is a free slot.
    slots: Vec<Option<SlotState>>,
    by_node: BTreeMap<String, Slot>,
    distinct: u64,
}

impl AorSets {
    pub fn new() -> Self {
        AorSets::default()
    }

    /// Fingerprints held by at least one counted node: the cluster's registered subscribers.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Distinct fingerprints held by any node, counted or not (the map's size).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The slot of `node_id`, if it has one.
    pub fn slot(&self, node_id: &str) -> Option<Slot> {
        self.by_node.get(node_id).copied()
    }

    /// The slot of `node_id`, created (not counted, empty) when missing; `None` when every
    /// slot is taken (more than [`NODES_MAX`] nodes: refused, like the record table).
    pub fn slot_or_insert(&mut self, node_id: &str) -> Option<Slot> {
        if let Some(slot) = self.slot(node_id) {
            return Some(slot);
        }
        let index = match self.slots.iter().position(Option::is_none) {
            Some(index) => index,
            None if self.slots.len() < NODES_MAX => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return None,
        };
        self.slots[index] = Some(SlotState::default());
        let slot = (index + 1) as Slot;
        self.by_node.insert(node_id.to_owned(), slot);
        Some(slot)
    }

    fn state(&self, slot: Slot) -> Option<&SlotState> {
        self.slots.get(usize::from(slot).checked_sub(1)?)?.as_ref()
    }

    fn state_mut(&mut self, slot: Slot) -> Option<&mut SlotState> {
        self.slots
            .get_mut(usize::from(slot).checked_sub(1)?)?
            .as_mut()
    }

    fn is_counted(&self, slot: Slot) -> bool {
        self.state(slot).is_some_and(|state| state.counted)
    }

    /// The whole-set digest of a slot.
    pub fn digest(&self, slot: Slot) -> RangeDigest {
        self.state(slot)
            .map_or_else(RangeDigest::default, |s| s.digest)
    }

    pub fn counted(&self, slot: Slot) -> bool {
        self.is_counted(slot)
    }

    fn holds(&self, fp: Fp, holders: &Holders, slot: Slot) -> bool {
        holders.0.contains(&slot)
            || (holders.0.iter().all(|h| *h != 0)
                && self.spill.get(&fp).is_some_and(|more| more.contains(&slot)))
    }

    /// Whether any holder of `fp` other than `except` is counted.
    fn counted_elsewhere(&self, fp: Fp, holders: &Holders, except: Slot) -> bool {
        let inline = holders
            .0
            .iter()
            .any(|h| *h != 0 && *h != except && self.is_counted(*h));
        inline
            || self
                .spill
                .get(&fp)
                .is_some_and(|more| more.iter().any(|h| *h != except && self.is_counted(*h)))
    }

    /// Whether `slot` holds `fp`.
    pub fn contains(&self, slot: Slot, fp: Fp) -> bool {
        self.map
            .get(&fp)
            .is_some_and(|holders| self.holds(fp, holders, slot))
    }

    /// `slot` now holds `fp`; `true` when it did not before.
    pub fn insert(&mut self, slot: Slot, fp: Fp) -> bool {
        let holders = self.map.get(&fp).copied().unwrap_or_default();
        if self.holds(fp, &holders, slot) {
            return false;
        }
        let counted = self.is_counted(slot);
        if counted && !self.counted_elsewhere(fp, &holders, slot) {
            self.distinct += 1;
        }
        let mut holders = holders;
        match holders.0.iter().position(|h| *h == 0) {
            Some(free) => holders.0[free] = slot,
            None => self.spill.entry(fp).or_default().push(slot),
        }
        self.map.insert(fp, holders);
        if let Some(state) = self.state_mut(slot) {
            state.digest.toggle(fp, true);
        }
        true
    }

    /// `slot` no longer holds `fp`; `true` when it did.
    pub fn remove(&mut self, slot: Slot, fp: Fp) -> bool {
        let Some(mut holders) = self.map.get(&fp).copied() else {
            return false;
        };
        if !self.holds(fp, &holders, slot) {
            return false;
        }
        if self.is_counted(slot) && !self.counted_elsewhere(fp, &holders, slot) {
            self.distinct -= 1;
        }
        if let Some(index) = holders.0.iter().position(|h| *h == slot) {
            // Refill the inline place from the spill, so inline holders stay packed first.
            let refill = match self.spill.get_mut(&fp) {
                Some(more) => {
                    let last = more.pop();
                    if more.is_empty() {
                        self.spill.remove(&fp);
                    }
                    last
                }
                None => None,
            };
            holders.0[index] = refill.unwrap_or(0);
        } else if let Some(more) = self.spill.get_mut(&fp) {
            more.retain(|h| *h != slot);
            if more.is_empty() {
                self.spill.remove(&fp);
            }
        }
        if holders.0.iter().all(|h| *h == 0) {
            self.map.remove(&fp);
        } else {
            self.map.insert(fp, holders);
        }
        if let Some(state) = self.state_mut(slot) {
            state.digest.toggle(fp, false);
        }
        true
    }

    /// The members of `slot` in `[lo, hi]`, in order.
    pub fn members(&self, slot: Slot, lo: Fp, hi: Fp) -> Vec<Fp> {
        self.map
            .range(lo..=hi)
            .filter(|(fp, holders)| self.holds(**fp, holders, slot))
            .map(|(fp, _)| *fp)
            .collect()
    }

    /// Every member of `slot`, in order.
    pub fn all_members(&self, slot: Slot) -> Vec<Fp> {
        self.members(slot, 0, Fp::MAX)
    }

    /// The digest of `slot` over `[lo, hi]` (a range scan; O(1) for the whole space).
    pub fn range_digest(&self, slot: Slot, lo: Fp, hi: Fp) -> RangeDigest {
        if lo == 0 && hi == Fp::MAX {
            return self.digest(slot);
        }
        let mut digest = RangeDigest::default();
        for (fp, holders) in self.map.range(lo..=hi) {
            if self.holds(*fp, holders, slot) {
                digest.toggle(*fp, true);
            }
        }
        digest
    }

    /// Makes `slot` hold exactly `members` within `[lo, hi]` (members outside are ignored).
    /// Returns how many fingerprints changed.
    pub fn replace_range(&mut self, slot: Slot, lo: Fp, hi: Fp, members: &[Fp]) -> u64 {
        let mut wanted: Vec<Fp> = members
            .iter()
            .copied()
            .filter(|fp| (lo..=hi).contains(fp))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let held = self.members(slot, lo, hi);
        let mut changed = 0;
        for fp in &held {
            if wanted.binary_search(fp).is_err() && self.remove(slot, *fp) {
                changed += 1;
            }
        }
        for fp in wanted {
            if self.insert(slot, fp) {
                changed += 1;
            }
        }
        changed
    }

    /// Counts `slot`'s set in the union (`true`) or not: adjusts the union by every member
    /// held by no other counted node. O(members) on a change, nothing otherwise.
    pub fn set_counted(&mut self, slot: Slot, counted: bool) {
        if self.is_counted(slot) == counted {
            return;
        }
        let members = self.all_members(slot);
        let mut delta = 0u64;
        for fp in &members {
            if let Some(holders) = self.map.get(fp)
                && !self.counted_elsewhere(*fp, holders, slot)
            {
                delta += 1;
            }
        }
        if let Some(state) = self.state_mut(slot) {
            state.counted = counted;
        }
        if counted {
            self.distinct += delta;
        } else {
            self.distinct -= delta;
        }
    }

    /// Empties `slot`'s set (counted or not stays as it was).
    pub fn clear(&mut self, slot: Slot) {
        for fp in self.all_members(slot) {
            self.remove(slot, fp);
        }
    }

    /// Forgets `node_id`'s set and frees its slot.
    pub fn drop_node(&mut self, node_id: &str) {
        let Some(slot) = self.by_node.remove(node_id) else {
            return;
        };
        self.set_counted(slot, false);
        self.clear(slot);
        if let Some(place) = self.slots.get_mut(usize::from(slot) - 1) {
            *place = None;
        }
    }

    /// Nodes with a slot, and whether each is counted.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, Slot, bool)> {
        self.by_node
            .iter()
            .map(|(node_id, slot)| (node_id.as_str(), *slot, self.is_counted(*slot)))
    }

    /// Checks every invariant of the module documentation (tests; O(n)).
    pub fn check(&self) -> Result<(), String> {
        let mut digests: BTreeMap<Slot, RangeDigest> = BTreeMap::new();
        let mut distinct = 0;
        for (fp, holders) in &self.map {
            let mut all: Vec<Slot> = holders.0.iter().copied().filter(|h| *h != 0).collect();
            if all.len() < INLINE_HOLDERS && self.spill.contains_key(fp) {
                return Err(format!("{fp:#x} spills with a free inline place"));
            }
            all.extend(self.spill.get(fp).into_iter().flatten().copied());
            if all.is_empty() {
                return Err(format!("{fp:#x} has no holder"));
            }
            for slot in &all {
                if self.state(*slot).is_none() {
                    return Err(format!("{fp:#x} held by free slot {slot}"));
                }
                digests.entry(*slot).or_default().toggle(*fp, true);
            }
            if all.iter().any(|slot| self.is_counted(*slot)) {
                distinct += 1;
            }
        }
        if distinct != self.distinct {
            return Err(format!("distinct {} but counted {distinct}", self.distinct));
        }
        for (node_id, slot) in &self.by_node {
            let held = self.digest(*slot);
            let seen = digests.get(slot).copied().unwrap_or_default();
            if held != seen {
                return Err(format!("{node_id}: digest {held:?} but members {seen:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn one_aor_on_two_nodes_counts_once() {
        let mut sets = AorSets::new();
        let a = sets.slot_or_insert("a").unwrap();
        let b = sets.slot_or_insert("b").unwrap();
        sets.set_counted(a, true);
        sets.set_counted(b, true);
        assert!(sets.insert(a, 7));
        assert!(sets.insert(b, 7));
        assert!(!sets.insert(b, 7));
        assert_eq!(sets.distinct(), 1);
        assert!(sets.remove(a, 7));
        assert_eq!(sets.distinct(), 1);
        sets.set_counted(b, false);
        assert_eq!(sets.distinct(), 0);
        sets.set_counted(b, true);
        assert_eq!(sets.distinct(), 1);
        assert!(sets.remove(b, 7));
        assert_eq!(sets.distinct(), 0);
        assert!(sets.is_empty());
        sets.check().unwrap();
    }

    #[test]
    fn holders_past_the_inline_ones_spill_and_come_back() {
        let mut sets = AorSets::new();
        let slots: Vec<Slot> = (0..6)
            .map(|i| sets.slot_or_insert(&format!("n{i}")).unwrap())
            .collect();
        for slot in &slots {
            sets.set_counted(*slot, true);
            sets.insert(*slot, 42);
        }
        sets.check().unwrap();
        assert_eq!(sets.distinct(), 1);
        for slot in &slots[..5] {
            sets.remove(*slot, 42);
            sets.check().unwrap();
        }
        assert_eq!(sets.distinct(), 1);
        sets.drop_node("n5");
        assert_eq!(sets.distinct(), 0);
        assert!(sets.is_empty());
        assert!(sets.spill.is_empty());
    }

    #[test]
    fn range_digests_agree_with_members_and_replace_heals_a_copy() {
        let mut sets = AorSets::new();
        let owner = sets.slot_or_insert("owner").unwrap();
        let copy = sets.slot_or_insert("copy").unwrap();
        for fp in (0..1000u64).map(mix) {
            sets.insert(owner, fp);
            if fp % 7 != 0 {
                sets.insert(copy, fp);
            }
        }
        sets.insert(copy, 5);
        assert_ne!(sets.digest(owner), sets.digest(copy));
        let half = Fp::MAX / 2;
        for (lo, hi) in [(0, half), (half + 1, Fp::MAX)] {
            let members = sets.members(owner, lo, hi);
            sets.replace_range(copy, lo, hi, &members);
            assert_eq!(
                sets.range_digest(owner, lo, hi),
                sets.range_digest(copy, lo, hi)
            );
        }
        assert_eq!(sets.digest(owner), sets.digest(copy));
        sets.check().unwrap();
    }

    proptest! {
        /// The union acts like a model: a set of fingerprints per node, and the union of
        /// the counted ones.
        #[test]
        fn union_acts_like_a_model(
            ops in proptest::collection::vec((0u8..4, 0usize..5, 0u64..40), 0..400)
        ) {
            let mut sets = AorSets::new();
            let mut model: Vec<(BTreeSet<u64>, bool)> = vec![(BTreeSet::new(), false); 5];
            for (op, node, fp) in ops {
                let name = format!("n{node}");
                let slot = sets.slot_or_insert(&name).unwrap();
                match op {
                    0 => { sets.insert(slot, fp); model[node].0.insert(fp); }
                    1 => { sets.remove(slot, fp); model[node].0.remove(&fp); }
                    2 => {
                        let counted = fp % 2 == 0;
                        sets.set_counted(slot, counted);
                        model[node].1 = counted;
                    }
                    _ => { sets.drop_node(&name); model[node] = (BTreeSet::new(), false); }
                }
                let union: BTreeSet<u64> = model
                    .iter()
                    .filter(|(_, counted)| *counted)
                    .flat_map(|(set, _)| set.iter().copied())
                    .collect();
                prop_assert_eq!(sets.distinct(), union.len() as u64);
                prop_assert_eq!(sets.check(), Ok(()));
            }
        }
    }
}
