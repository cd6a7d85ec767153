//! Per-sender datagram sequence tracking: duplicates, losses, restarts.
//!
//! A sender that numbers its datagrams (`seq <sender-id> <n>`) gets an anti-replay window
//! like IPsec's (RFC 4303 §3.4.3, ring bitmap as in RFC 6479): the highest number seen
//! (`top`) and a [`SEQ_WINDOW_LEN`]-bit bitmap of the numbers `top - 1023 ..= top`.
//!
//! - A number in the window that was seen → [`SeqVerdict::Duplicate`]: the caller drops the
//!   whole datagram (a retransmission changes nothing).
//! - A number in the window not yet seen (reordering) → `Fresh { lost: 0 }`.
//! - A number above `top` → `Fresh { lost }`, where `lost` counts the numbers that slid out
//!   of the window in this step without ever being seen. Reordering within the window is
//!   therefore never counted as loss; loss is known one window late.
//! - A number more than a window *below* `top` → [`SeqVerdict::Restarted`]: taken as a sender
//!   restart (its counter began again). The window restarts at that number, the datagram is
//!   applied, and [`SequenceTracker::restarts_total`] counts it. A datagram delayed by more
//!   than a window is indistinguishable from a restart; then the next in-order datagram looks
//!   like a jump and its gap is counted as lost. **Boundary:** a sender that restarts at a
//!   number still inside the old window has its first datagrams dropped as duplicates, so
//!   senders should start their counter from a value that grows across restarts (e.g. the
//!   start time in microseconds).
//!
//! Numbers below the first one seen from a sender are never counted as lost (the sender may
//! have sent them before we started). Senders are keyed by a keyed fingerprint of the sender
//! id; at most [`SEQ_SENDERS_MAX`] are tracked. When full, the least recently seen eighth is
//! evicted in one pass (amortised O(1) per new sender, counted in
//! [`SequenceTracker::evicted_total`]); an evicted sender starts afresh.

use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;
use parking_lot::Mutex;
use tollgate_events::Seq;

use crate::Timestamp;
use crate::fingerprint::{BuildIdentityHasher, Fingerprint, FingerprintKey, Fingerprinter};

/// Numbers per sender window.
pub const SEQ_WINDOW_LEN: u64 = 1024;
const WINDOW_WORDS: usize = (SEQ_WINDOW_LEN / 64) as usize;

/// Most senders tracked at once.
pub const SEQ_SENDERS_MAX: usize = 4096;

/// What to do with a datagram, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Apply the datagram; `lost` datagrams of this sender are now known lost.
    Fresh { lost: u64 },
    /// Seen before: drop the whole datagram.
    Duplicate,
    /// Far behind the window: the sender restarted. Apply the datagram.
    Restarted,
}

#[derive(Debug, Clone)]
struct Window {
    top: u64,
    /// Lowest number losses are accounted from: the first number seen.
    floor: u64,
    /// Bit `s % SEQ_WINDOW_LEN` is set iff `s` in `top - 1023 ..= top` was seen.
    bits: [u64; WINDOW_WORDS],
    last_used: u64,
}

impl Window {
    fn new(n: u64, last_used: u64) -> Self {
        let mut window = Window {
            top: n,
            floor: n,
            bits: [0; WINDOW_WORDS],
            last_used,
        };
        window.set(n);
        window
    }

    fn position(n: u64) -> (usize, u64) {
        let p = n % SEQ_WINDOW_LEN;
        ((p / 64) as usize, 1u64 << (p % 64))
    }

    fn is_set(&self, n: u64) -> bool {
        let (word, bit) = Self::position(n);
        self.bits[word] & bit != 0
    }

    fn set(&mut self, n: u64) {
        let (word, bit) = Self::position(n);
        self.bits[word] |= bit;
    }

    fn clear(&mut self, n: u64) {
        let (word, bit) = Self::position(n);
        self.bits[word] &= !bit;
    }

    /// While the window still reaches below `floor`, losses need a per-number check.
    fn is_young(&self) -> bool {
        self.top < self.floor.saturating_add(SEQ_WINDOW_LEN - 1)
    }

    fn check(&mut self, n: u64) -> SeqVerdict {
        if n > self.top {
            let lost = self.advance(n);
            return SeqVerdict::Fresh { lost };
        }
        if self.top - n >= SEQ_WINDOW_LEN {
            *self = Window::new(n, self.last_used);
            return SeqVerdict::Restarted;
        }
        if self.is_set(n) {
            return SeqVerdict::Duplicate;
        }
        self.set(n);
        SeqVerdict::Fresh { lost: 0 }
    }

    /// Moves `top` up to `n`, returning how many numbers left the window unseen.
    fn advance(&mut self, n: u64) -> u64 {
        debug_assert!(n > self.top);
        let distance = n - self.top;
        let mut lost = 0;
        if self.is_young() {
            // Old numbers leaving the window: `top - 1023 ..= n - 1024`, those ≥ floor.
            let leaving_end = n.saturating_sub(SEQ_WINDOW_LEN); // inclusive
            let leaving_start = self.top.saturating_sub(SEQ_WINDOW_LEN - 1).max(self.floor);
            if leaving_end >= leaving_start && n >= SEQ_WINDOW_LEN {
                let last_in_old_window = leaving_end.min(self.top);
                for old in leaving_start..=last_in_old_window {
                    lost += u64::from(!self.is_set(old));
                }
                // Numbers above the old top that never entered the window.
                lost += leaving_end - last_in_old_window;
            }
            if distance >= SEQ_WINDOW_LEN {
                self.bits = [0; WINDOW_WORDS];
            } else {
                for s in self.top + 1..=n {
                    self.clear(s);
                }
            }
        } else if distance >= SEQ_WINDOW_LEN {
            let seen: u64 = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
            lost = (SEQ_WINDOW_LEN - seen) + (distance - SEQ_WINDOW_LEN);
            self.bits = [0; WINDOW_WORDS];
        } else {
            // The positions of `top + 1 ..= n` held `top + 1 - 1024 ..= n - 1024`, all ≥ floor.
            let seen = self.take_range((self.top + 1) % SEQ_WINDOW_LEN, distance);
            lost = distance - seen;
        }
        self.top = n;
        self.set(n);
        lost
    }

    /// Clears `len` ring positions from `start` (wrapping); returns how many were set.
    fn take_range(&mut self, mut start: u64, mut len: u64) -> u64 {
        debug_assert!(len < SEQ_WINDOW_LEN);
        let mut ones = 0;
        while len > 0 {
            let word = (start / 64) as usize;
            let bit = start % 64;
            let take = (64 - bit).min(len);
            let mask = if take == 64 {
                u64::MAX
            } else {
                ((1u64 << take) - 1) << bit
            };
            ones += u64::from((self.bits[word] & mask).count_ones());
            self.bits[word] &= !mask;
            start = (start + take) % SEQ_WINDOW_LEN;
            len -= take;
        }
        ones
    }
}

struct SeqState {
    senders: HashMap<Fingerprint, Window, BuildIdentityHasher>,
    /// Logical clock for least-recently-seen eviction.
    clock: u64,
}

/// Per-sender sequence tracking (see the module doc). `&self` API, one internal lock.
pub struct SequenceTracker {
    fingerprinter: Fingerprinter,
    state: Mutex<SeqState>,
    restarts_total: AtomicU64,
    evicted_total: AtomicU64,
}

impl Default for SequenceTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SequenceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceTracker")
            .field("senders", &self.sender_count())
            .field("restarts_total", &self.restarts_total())
            .field("evicted_total", &self.evicted_total())
            .finish()
    }
}

impl SequenceTracker {
    /// A tracker with a fresh random fingerprint key (sequence state is not persisted).
    pub fn new() -> Self {
        Self::with_key(&FingerprintKey::random())
    }

    pub fn with_key(key: &FingerprintKey) -> Self {
        SequenceTracker {
            fingerprinter: Fingerprinter::new(key),
            state: Mutex::new(SeqState {
                senders: HashMap::with_capacity_and_hasher(
                    SEQ_SENDERS_MAX,
                    BuildIdentityHasher::default(),
                ),
                clock: 0,
            }),
            restarts_total: AtomicU64::new(0),
            evicted_total: AtomicU64::new(0),
        }
    }

    /// Checks one datagram's sequence header. `now` is not used yet: recency is a logical
    /// clock, so the verdicts depend only on the order of calls.
    pub fn check(&self, _now: Timestamp, seq: &Seq<'_>) -> SeqVerdict {
        let sender = self.fingerprinter.sender(seq.sender);
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.clock += 1;
        let clock = state.clock;
        if let Some(window) = state.senders.get_mut(&sender) {
            window.last_used = clock;
            let verdict = window.check(seq.n);
            if verdict == SeqVerdict::Restarted {
                self.restarts_total.fetch_add(1, Ordering::Relaxed);
            }
            return verdict;
        }
        if state.senders.len() >= SEQ_SENDERS_MAX {
            let evicted = evict_least_recent(&mut state.senders);
            self.evicted_total.fetch_add(evicted, Ordering::Relaxed);
        }
        debug_assert!(state.senders.len() < SEQ_SENDERS_MAX);
        state.senders.insert(sender, Window::new(seq.n, clock));
        SeqVerdict::Fresh { lost: 0 }
    }

    /// Senders tracked now.
    pub fn sender_count(&self) -> usize {
        self.state.lock().senders.len()
    }

    /// Restarts detected since creation.
    pub fn restarts_total(&self) -> u64 {
        self.restarts_total.load(Ordering::Relaxed)
    }

    /// Senders evicted to stay within [`SEQ_SENDERS_MAX`] since creation.
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total.load(Ordering::Relaxed)
    }
}

/// Evicts the least recently seen eighth (at least one); returns how many.
fn evict_least_recent(senders: &mut HashMap<Fingerprint, Window, BuildIdentityHasher>) -> u64 {
    let mut recency: Vec<u64> = senders.values().map(|w| w.last_used).collect();
    let nth = recency.len() / 8;
    if recency.is_empty() {
        return 0;
    }
    let (_, &mut threshold, _) = recency.select_nth_unstable(nth);
    let before = senders.len();
    senders.retain(|_, window| window.last_used > threshold);
    (before - senders.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> SequenceTracker {
        SequenceTracker::with_key(&FingerprintKey([3; 32]))
    }

    /// Feeds `numbers` from one sender and returns the verdicts.
    fn check(numbers: &[u64]) -> Vec<SeqVerdict> {
        let t = tracker();
        numbers
            .iter()
            .map(|&n| {
                t.check(
                    Timestamp(0),
                    &Seq {
                        sender: b"proxy-1",
                        n,
                    },
                )
            })
            .collect()
    }

    const FRESH: SeqVerdict = SeqVerdict::Fresh { lost: 0 };

    #[test]
    fn in_order_numbers_are_fresh_without_loss() {
        assert_eq!(check(&[1, 2, 3, 4]), vec![FRESH; 4]);
    }

    #[test]
    fn a_number_seen_before_is_a_duplicate() {
        assert_eq!(
            check(&[1, 2, 2, 1]),
            vec![FRESH, FRESH, SeqVerdict::Duplicate, SeqVerdict::Duplicate]
        );
    }

    #[test]
    fn reordering_within_the_window_is_not_loss() {
        assert_eq!(check(&[10, 12, 11, 13]), vec![FRESH; 4]);
        // Even a number below the first one seen is applied once.
        assert_eq!(
            check(&[10, 9, 9]),
            vec![FRESH, FRESH, SeqVerdict::Duplicate]
        );
    }

    #[test]
    fn gaps_count_as_lost_once_they_leave_the_window() {
        let t = tracker();
        let at = |n| t.check(Timestamp(0), &Seq { sender: b"s", n });
        assert_eq!(at(5000), FRESH);
        assert_eq!(at(5002), FRESH); // 5001 missing, still in the window
        assert_eq!(at(5001 + SEQ_WINDOW_LEN - 1), FRESH);
        // 5001 slides out unseen now.
        assert_eq!(at(5001 + SEQ_WINDOW_LEN), SeqVerdict::Fresh { lost: 1 });
    }

    #[test]
    fn a_jump_beyond_the_window_counts_every_number_skipped() {
        let t = tracker();
        let at = |n| t.check(Timestamp(0), &Seq { sender: b"s", n });
        for n in 0..2 * SEQ_WINDOW_LEN {
            assert_eq!(at(n), FRESH);
        }
        let top = 2 * SEQ_WINDOW_LEN - 1;
        // Numbers top+1 .. top+5000 skipped; of them, the ones now below the window are lost.
        let n = top + 5001;
        assert_eq!(
            at(n),
            SeqVerdict::Fresh {
                lost: 5000 - (SEQ_WINDOW_LEN - 1)
            }
        );
    }

    #[test]
    fn numbers_before_the_first_one_seen_are_never_lost() {
        let t = tracker();
        let at = |n| t.check(Timestamp(0), &Seq { sender: b"s", n });
        assert_eq!(at(100_000), FRESH);
        assert_eq!(
            at(100_000 + 3 * SEQ_WINDOW_LEN),
            SeqVerdict::Fresh {
                lost: 3 * SEQ_WINDOW_LEN - 1 - (SEQ_WINDOW_LEN - 1)
            }
        );
    }

    #[test]
    fn young_and_steady_windows_count_loss_alike() {
        // Every third number missing, once from the sender's first datagram (young window)
        // and once after two full windows (steady): the loss reported is exactly the missing
        // numbers that have left the window.
        for prefix in [0, 2 * SEQ_WINDOW_LEN] {
            let t = tracker();
            let start = 1_000;
            let mut numbers: Vec<u64> = (start..start + prefix).collect();
            let pattern_start = start + prefix;
            let pattern_end = pattern_start + 4 * SEQ_WINDOW_LEN; // exclusive
            let missing = |n: u64| n > pattern_start && (n - pattern_start) % 3 == 1;
            numbers.extend((pattern_start..pattern_end).filter(|&n| !missing(n)));
            let mut lost = 0;
            for &n in &numbers {
                match t.check(Timestamp(0), &Seq { sender: b"s", n }) {
                    SeqVerdict::Fresh { lost: l } => lost += l,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let top = *numbers.last().unwrap_or(&0);
            let left = (pattern_start..=top - SEQ_WINDOW_LEN)
                .filter(|&n| missing(n))
                .count();
            assert_eq!(lost, left as u64, "prefix {prefix}");
        }
    }

    #[test]
    fn a_number_far_behind_the_window_is_a_restart() {
        let t = tracker();
        let at = |n| t.check(Timestamp(0), &Seq { sender: b"s", n });
        assert_eq!(at(10_000), FRESH);
        assert_eq!(at(1), SeqVerdict::Restarted);
        assert_eq!(t.restarts_total(), 1);
        assert_eq!(at(2), FRESH);
        assert_eq!(at(1), SeqVerdict::Duplicate);
    }

    #[test]
    fn senders_are_tracked_apart() {
        let t = tracker();
        assert_eq!(t.check(Timestamp(0), &Seq { sender: b"a", n: 1 }), FRESH);
        assert_eq!(t.check(Timestamp(0), &Seq { sender: b"b", n: 1 }), FRESH);
        assert_eq!(
            t.check(Timestamp(0), &Seq { sender: b"a", n: 1 }),
            SeqVerdict::Duplicate
        );
    }

    #[test]
    fn the_least_recently_seen_senders_are_evicted_when_full() {
        let t = tracker();
        let sender = |i: usize| format!("sender-{i}").into_bytes();
        for i in 0..SEQ_SENDERS_MAX {
            t.check(
                Timestamp(0),
                &Seq {
                    sender: &sender(i),
                    n: 1,
                },
            );
        }
        // Sender 0 is seen again, so it is the most recent.
        assert_eq!(
            t.check(
                Timestamp(0),
                &Seq {
                    sender: &sender(0),
                    n: 1
                }
            ),
            SeqVerdict::Duplicate
        );
        t.check(
            Timestamp(0),
            &Seq {
                sender: b"newcomer",
                n: 1,
            },
        );
        assert!(t.sender_count() <= SEQ_SENDERS_MAX);
        assert_eq!(t.evicted_total(), (SEQ_SENDERS_MAX / 8 + 1) as u64);
        assert_eq!(
            t.check(
                Timestamp(0),
                &Seq {
                    sender: &sender(0),
                    n: 1
                }
            ),
            SeqVerdict::Duplicate
        );
        // Sender 1 was among the least recent: evicted, so it starts afresh.
        assert_eq!(
            t.check(
                Timestamp(0),
                &Seq {
                    sender: &sender(1),
                    n: 1
                }
            ),
            FRESH
        );
    }

    #[test]
    fn extreme_numbers_do_not_overflow() {
        assert_eq!(
            check(&[u64::MAX, 0, u64::MAX]),
            vec![
                FRESH,
                SeqVerdict::Restarted,
                SeqVerdict::Fresh {
                    lost: u64::MAX - SEQ_WINDOW_LEN
                }
            ]
        );
        assert_eq!(
            check(&[0, u64::MAX]),
            vec![
                FRESH,
                SeqVerdict::Fresh {
                    lost: u64::MAX - SEQ_WINDOW_LEN
                }
            ]
        );
    }
}
