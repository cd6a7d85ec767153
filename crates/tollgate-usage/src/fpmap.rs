//! An open-addressing map from a keyed 128-bit [`Fingerprint`] to a small `Copy` value,
//! built for the call table: a slot is the 16-byte key and the value side by side (24 bytes
//! for an 8-byte value), no control bytes, no per-entry pointer, no hashing (the key is
//! already a keyed hash: its first word picks the home slot).
//!
//! Why not `hashbrown`: a lookup there touches a control-byte group and then the bucket, two
//! cache lines far apart; here the home slot holds the whole key, so a lookup that misses
//! the cache misses once, and the home slot's address is known from the key alone, so a
//! caller can prefetch it before taking the shard lock ([`FpMap::slot_address`]). Measured
//! in `docs/performance.md` (`ingest-bench --method table`).
//!
//! **Home slot.** The top bits of `(first word ^ seed) * K`, with a seed of the map's own
//! (random, from the IO edge: [`crate::TablesConfig::map_seed`]): doubling or halving keeps the slots' order (slot i goes to 2i or 2i+1), so a
//! resize reinserts in one sweep; and a map filled from another map's iteration order
//! (a snapshot restored, written in slot order) sees its keys in random order. With the
//! key's low bits as home and no seed, that restore piles keys into a few runs while the
//! new map grows: measured 15.6 s instead of ~1 s at 10 M calls.
//!
//! Linear probing with backward-shift deletion: no tombstones, a probe ends at the first
//! empty slot. The all-zero key marks an empty slot, so the (2^-128) all-zero fingerprint
//! lives in a slot of its own beside the array. At most 7/8 of the slots are used; the array
//! doubles when a new key would pass that. Bounds: capacity is a power of two, at least
//! [`FpMap::CAPACITY_MIN`] once anything was inserted.

use crate::fingerprint::Fingerprint;

const EMPTY: Fingerprint = Fingerprint([0, 0]);

/// Most slots used: `LOAD_NUM / LOAD_DEN` of them. Linear probing's miss (a new key)
/// scans ~(1 + 1/(1-a)^2)/2 slots at load a: 8.5 at 3/4, 32 at 7/8.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot<V> {
    key: Fingerprint,
    value: V,
}

/// See the module doc.
pub(crate) struct FpMap<V: Copy + Default> {
    slots: Box<[Slot<V>]>,
    /// `slots.len() - 1` (slots.len() is a power of two), or 0 while unallocated.
    mask: usize,
    /// `64 - log2(slots.len())`: the home slot is the top bits of the mixed key.
    shift: u32,
    /// Mixed into every key before it picks its home (see the module doc).
    seed: u64,
    /// Entries in `slots` (not counting `zero`).
    len: usize,
    /// The value of the all-zero key, which cannot live in `slots`.
    zero: Option<V>,
}

/// Odd 64-bit constant (2^64 / golden ratio) for the multiplicative home.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The home slot of `key` in an array of `64 - shift` bits with this seed (also used by
/// callers that prefetch from published hints).
#[inline]
pub(crate) fn home_slot(key: Fingerprint, seed: u64, shift: u32) -> usize {
    ((key.0[0] ^ seed).wrapping_mul(MIX) >> shift) as usize
}

/// Where a key is: in slot `i`, or the zero key's own place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Slot(usize),
    Zero,
}

impl<V: Copy + Default> FpMap<V> {
    /// Smallest allocated slot array.
    pub(crate) const CAPACITY_MIN: usize = 16;

    #[inline]
    fn home(&self, key: Fingerprint) -> usize {
        home_slot(key, self.seed, self.shift) & self.mask
    }

    /// An empty map whose homes are mixed with `seed`. A map filled from another map's
    /// iteration order (a snapshot restored) must have a different seed, or its keys pile
    /// into long runs while it grows (see the module doc): the caller passes entropy in.
    pub(crate) fn with_seed(seed: u64) -> Self {
        FpMap {
            slots: Box::new([]),
            mask: 0,
            shift: 63,
            seed,
            len: 0,
            zero: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated (entries it holds before the next doubling: 7/8 of it).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Heap bytes held by the slot array.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    /// Where the slot array is and its `shift` (see [`home_slot`]), for a prefetch by a
    /// thread that does not hold the lock (see `CallShard`): only an address, never read
    /// through here. The address is 0 while nothing is allocated.
    pub(crate) fn slot_array(&self) -> (usize, u32) {
        if self.slots.is_empty() {
            return (0, self.shift);
        }
        (self.slots.as_ptr() as usize, self.shift)
    }

    #[inline]
    fn find(&self, key: Fingerprint) -> Option<At> {
        if key == EMPTY {
            return self.zero.is_some().then_some(At::Zero);
        }
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Some(At::Slot(i));
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    pub(crate) fn get(&self, key: &Fingerprint) -> Option<&V> {
        match self.find(*key)? {
            At::Slot(i) => Some(&self.slots[i].value),
            At::Zero => self.zero.as_ref(),
        }
    }

    pub(crate) fn get_mut(&mut self, key: &Fingerprint) -> Option<&mut V> {
        match self.find(*key)? {
            At::Slot(i) => Some(&mut self.slots[i].value),
            At::Zero => self.zero.as_mut(),
        }
    }

    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &Fingerprint) -> bool {
        self.find(*key).is_some()
    }

    /// Inserts or replaces; returns the value replaced.
    pub(crate) fn insert(&mut self, key: Fingerprint, value: V) -> Option<V> {
        match self.entry(key) {
            Entry::Occupied(mut o) => Some(std::mem::replace(o.get_mut(), value)),
            Entry::Vacant(v) => {
                v.insert(value);
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &Fingerprint) -> Option<V> {
        let at = self.find(*key)?;
        Some(self.remove_at(at))
    }

    /// The entry of `key`, present or not.
    pub(crate) fn entry(&mut self, key: Fingerprint) -> Entry<'_, V> {
        match self.find(key) {
            Some(at) => Entry::Occupied(OccupiedEntry { map: self, at }),
            None => Entry::Vacant(VacantEntry { map: self, key }),
        }
    }

    /// Inserts a key known to be absent.
    fn insert_new(&mut self, key: Fingerprint, value: V) -> &mut V {
        if key == EMPTY {
            debug_assert!(self.zero.is_none());
            return self.zero.insert(value);
        }
        if (self.len + 1) * LOAD_DEN > self.slots.len() * LOAD_NUM {
            self.resize((self.slots.len() * 2).max(Self::CAPACITY_MIN));
        }
        let mut i = self.home(key);
        while self.slots[i].key != EMPTY {
            debug_assert!(self.slots[i].key != key, "insert_new of a present key");
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot { key, value };
        self.len += 1;
        &mut self.slots[i].value
    }

    fn remove_at(&mut self, at: At) -> V {
        let i = match at {
            At::Zero => return self.zero.take().unwrap_or_default(),
            At::Slot(i) => i,
        };
        let removed = self.slots[i].value;
        self.vacate(i);
        self.len -= 1;
        removed
    }

    /// Empties slot `hole`, shifting back the entries after it that may not stay behind an
    /// empty slot (backward-shift deletion: every entry stays reachable from its home).
    fn vacate(&mut self, mut hole: usize) {
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let key = self.slots[j].key;
            if key == EMPTY {
                break;
            }
            // Distance from home: the entry at j may move to `hole` if its home is not
            // cyclically within (hole, j].
            let home = self.home(key);
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = Slot {
            key: EMPTY,
            value: V::default(),
        };
    }

    /// Keeps the entries for which `keep` answers true (it may change them). Each entry is
    /// shown exactly once.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Fingerprint, &mut V) -> bool) {
        if let Some(v) = self.zero.as_mut()
            && !keep(&EMPTY, v)
        {
            self.zero = None;
        }
        if self.len == 0 {
            return;
        }
        // Start just after an empty slot: no probe run wraps past the start, so a removal
        // only shifts entries not yet visited into the slot being visited.
        let Some(start) = (0..self.slots.len()).find(|&i| self.slots[i].key == EMPTY) else {
            unreachable!("a map at most 7/8 full has an empty slot");
        };
        let mut step = 1;
        while step <= self.slots.len() {
            let i = (start + step) & self.mask;
            let slot = &mut self.slots[i];
            if slot.key == EMPTY || keep(&slot.key, &mut slot.value) {
                step += 1;
                continue;
            }
            self.vacate(i);
            self.len -= 1;
            // Slot i now holds an entry shifted back from later in the run (or is empty):
            // visit it again. An entry never moves back past `start`.
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Fingerprint, &V)> + '_ {
        self.zero.iter().map(|v| (&EMPTY, v)).chain(
            self.slots
                .iter()
                .filter(|s| s.key != EMPTY)
                .map(|s| (&s.key, &s.value)),
        )
    }

    /// Reallocates to hold at least `len` entries (keeps at least [`Self::CAPACITY_MIN`]
    /// slots; never below what the entries need).
    pub(crate) fn shrink_to(&mut self, len: usize) {
        let need = (len.max(self.len) * LOAD_DEN)
            .div_ceil(LOAD_NUM)
            .next_power_of_two();
        let want = need.max(Self::CAPACITY_MIN);
        if want < self.slots.len() {
            self.resize(want);
        }
    }

    fn resize(&mut self, capacity: usize) {
        debug_assert!(capacity.is_power_of_two() && capacity * LOAD_NUM >= self.len * LOAD_DEN);
        let old = std::mem::replace(
            &mut self.slots,
            vec![
                Slot {
                    key: EMPTY,
                    value: V::default()
                };
                capacity
            ]
            .into_boxed_slice(),
        );
        self.mask = capacity - 1;
        self.shift = 64 - capacity.trailing_zeros();
        for slot in old.iter().filter(|s| s.key != EMPTY) {
            let mut i = self.home(slot.key);
            while self.slots[i].key != EMPTY {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = *slot;
        }
    }
}

pub(crate) enum Entry<'a, V: Copy + Default> {
    Occupied(OccupiedEntry<'a, V>),
    Vacant(VacantEntry<'a, V>),
}

pub(crate) struct OccupiedEntry<'a, V: Copy + Default> {
    map: &'a mut FpMap<V>,
    at: At,
}

impl<V: Copy + Default> OccupiedEntry<'_, V> {
    pub(crate) fn get(&self) -> &V {
        match self.at {
            At::Slot(i) => &self.map.slots[i].value,
            At::Zero => self.map.zero.as_ref().unwrap_or_else(|| unreachable!()),
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut V {
        match self.at {
            At::Slot(i) => &mut self.map.slots[i].value,
            At::Zero => self.map.zero.as_mut().unwrap_or_else(|| unreachable!()),
        }
    }

    pub(crate) fn remove(self) -> V {
        self.map.remove_at(self.at)
    }
}

pub(crate) struct VacantEntry<'a, V: Copy + Default> {
    map: &'a mut FpMap<V>,
    key: Fingerprint,
}

impl<'a, V: Copy + Default> VacantEntry<'a, V> {
    pub(crate) fn insert(self, value: V) -> &'a mut V {
        self.map.insert_new(self.key, value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn fp(a: u64, b: u64) -> Fingerprint {
        Fingerprint([a, b])
    }

    #[test]
    fn insert_get_remove_and_the_zero_key() {
        let mut m: FpMap<u64> = FpMap::with_seed(0);
        assert!(m.is_empty() && m.capacity() == 0);
        assert_eq!(m.insert(fp(1, 1), 10), None);
        assert_eq!(m.insert(fp(0, 0), 20), None);
        assert_eq!(m.insert(fp(1, 1), 11), Some(10));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&fp(0, 0)), Some(&20));
        assert_eq!(m.iter().count(), 2);
        assert_eq!(m.remove(&fp(0, 0)), Some(20));
        assert_eq!(m.remove(&fp(0, 0)), None);
        assert_eq!(m.get(&fp(1, 1)), Some(&11));
        assert_eq!(m.capacity(), FpMap::<u64>::CAPACITY_MIN);
        assert_eq!(m.heap_bytes(), 16 * 24);
    }

    const SEED: u64 = 0x5eed_0f70_116a_7e00;

    /// Keys whose home is the first slot (`top` false) or the last (`top` true) at every
    /// capacity up to 256 slots, for a map seeded with [`SEED`].
    fn crowded(top: bool, count: usize) -> Vec<Fingerprint> {
        (1u64..)
            .map(|i| fp(i, i))
            .filter(|k| home_slot(*k, SEED, 56) == if top { 255 } else { 0 })
            .take(count)
            .collect()
    }

    #[test]
    fn colliding_homes_wrap_around_and_survive_removals() {
        let mut m: FpMap<u64> = FpMap::with_seed(SEED);
        // All at home 15 of 16 slots: the run wraps to 0, 1, ...
        let keys = crowded(true, 10);
        for (i, k) in keys.iter().enumerate() {
            m.insert(*k, i as u64);
        }
        assert_eq!(m.capacity(), 16);
        // Remove from the middle of the run: the rest stay reachable.
        m.remove(&keys[3]);
        m.remove(&keys[0]);
        for (i, k) in keys.iter().enumerate() {
            let want = (i != 3 && i != 0).then_some(i as u64);
            assert_eq!(m.get(k).copied(), want, "key {i}");
        }
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 4);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.contains_key(k), i % 2 == 0 && i != 0, "key {i}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8, u64),
        Remove(u8, u8),
        Retain(u64),
        Shrink,
        Bump(u8, u8),
    }

    /// Keys from a small space: the zero key, keys crowded at the first and at the last
    /// home slot (long runs, runs that wrap), and ordinary ones.
    fn key(a: u8, b: u8) -> Fingerprint {
        static POOL: std::sync::LazyLock<Vec<Fingerprint>> = std::sync::LazyLock::new(|| {
            let mut pool = vec![EMPTY];
            pool.extend(crowded(false, 30));
            pool.extend(crowded(true, 30));
            pool.extend((0..60).map(|i| fp(i * 0x9E37, i)));
            pool
        });
        POOL[(usize::from(a) * 3 + usize::from(b)) % POOL.len()]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..50u8, 0..3u8, any::<u64>()).prop_map(|(a, b, v)| Op::Insert(a, b, v)),
            4 => (0..50u8, 0..3u8).prop_map(|(a, b)| Op::Remove(a, b)),
            1 => (1..5u64).prop_map(Op::Retain),
            1 => Just(Op::Shrink),
            2 => (0..50u8, 0..3u8).prop_map(|(a, b)| Op::Bump(a, b)),
        ]
    }

    proptest! {
        /// Acts like a `HashMap` under any sequence of operations.
        #[test]
        fn acts_like_a_hashmap(ops in proptest::collection::vec(op(), 1..400)) {
            let mut m: FpMap<u64> = FpMap::with_seed(SEED);
            let mut model: HashMap<Fingerprint, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(a, b, v) => {
                        prop_assert_eq!(m.insert(key(a, b), v), model.insert(key(a, b), v));
                    }
                    Op::Remove(a, b) => {
                        prop_assert_eq!(m.remove(&key(a, b)), model.remove(&key(a, b)));
                    }
                    Op::Retain(d) => {
                        let mut seen = 0;
                        m.retain(|_, v| { seen += 1; *v % d != 0 });
                        prop_assert_eq!(seen, model.len());
                        model.retain(|_, v| *v % d != 0);
                    }
                    Op::Shrink => m.shrink_to(0),
                    Op::Bump(a, b) => match (m.entry(key(a, b)), model.get_mut(&key(a, b))) {
                        (Entry::Occupied(mut o), Some(v)) => {
                            *o.get_mut() = o.get().wrapping_add(1);
                            *v = v.wrapping_add(1);
                        }
                        (Entry::Vacant(e), None) => {
                            e.insert(7);
                            model.insert(key(a, b), 7);
                        }
                        _ => prop_assert!(false, "entry disagrees with the model"),
                    },
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert!(m.capacity() == 0 || m.len() * LOAD_DEN <= m.capacity() * LOAD_NUM + LOAD_DEN);
            }
            let mut got: Vec<(Fingerprint, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            let mut want: Vec<(Fingerprint, u64)> = model.into_iter().collect();
            got.sort_by_key(|(k, _)| k.0);
            want.sort_by_key(|(k, _)| k.0);
            prop_assert_eq!(got, want);
        }
    }

    /// A map filled in another map's slot order (a snapshot restored) with a seed of its
    /// own does not pile keys into long runs: every probe stays short.
    #[test]
    fn filling_from_another_maps_order_keeps_probes_short() {
        let mut a: FpMap<u64> = FpMap::with_seed(0x0123_4567_89ab_cdef);
        let mut x = 1u64;
        for i in 0..200_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            a.insert(fp(x, i), i);
        }
        let mut b: FpMap<u64> = FpMap::with_seed(0xfedc_ba98_7654_3210);
        for (k, v) in a.iter() {
            b.insert(*k, *v);
        }
        assert_eq!(b.len(), a.len());
        // The longest distance of any entry from its home.
        let longest = (0..b.capacity())
            .filter(|&i| b.slots[i].key != EMPTY)
            .map(|i| i.wrapping_sub(b.home(b.slots[i].key)) & b.mask)
            .max()
            .unwrap_or(0);
        assert!(longest < 200, "an entry sits {longest} slots from home");
    }
}
