//! Per-sender datagram sequence tracking: duplicates, losses, restarts.
//!
//! A sender that numbers its datagrams (`seq <sender-id> <n>`) gets an anti-replay window
//! like IPsec's (RFC 4303 §3.4.3, ring bitmap as in RFC 6479): the highest number seen
//! (`top`) and a [`SEQ_WINDOW_LEN`]-bit bitmap of the numbers `top - 1023 ..= top`.
//!
//! - A number in the window that was seen → [`SeqVerdict::Duplicate`]: the caller drops the
//!   whole datagram (a retransmission changes nothing).
//! - A number in the window not yet seen (reordering) → `Fresh { lost: 0 }`.
//! - A number above `top` by less than a window → `Fresh { lost }`, where `lost` counts the
//!   numbers that slid out of the window in this step without ever being seen. Reordering
//!   within the window is therefore never counted as loss; loss is known one window late.
//! - A number a window or more away from `top`, above or below → [`SeqVerdict::Restarted`]:
//!   taken as a sender restart (its counter began again, from zero or from a clock). The
//!   window restarts at that number, the datagram is applied, and
//!   [`SequenceTracker::restarts_total`] counts it once; the jump itself is never counted as
//!   lost (`seq x 0` then `seq x 18446744073709551615` is one restart, no loss). The old
//!   run's unseen numbers still in its window are its tail: they are counted as lost then
//!   (`Restarted { lost }`). A burst of a window or more of consecutive losses is
//!   indistinguishable from a restart, and a datagram delayed by more than a window looks
//!   like one too. **Boundary:** a sender that restarts at a number still inside the old
//!   window has its first datagrams dropped as duplicates, so senders should start their
//!   counter from a value that grows across restarts (e.g. the start time in microseconds).
//! - The tail of a sender that stops sending never slides out of its window:
//!   [`SequenceTracker::sweep_idle`] counts it once the sender has been silent for
//!   [`SEQ_IDLE_MS`] (the agent calls it from its sweeper). A datagram of that tail arriving
//!   later still is applied, and stays counted as lost.
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

use crate::MonoTime;
use crate::fingerprint::{BuildIdentityHasher, Fingerprint, FingerprintKey, Fingerprinter};

/// Numbers per sender window.
pub const SEQ_WINDOW_LEN: u64 = 1024;
const WINDOW_WORDS: usize = (SEQ_WINDOW_LEN / 64) as usize;

/// Most senders tracked at once.
pub const SEQ_SENDERS_MAX: usize = 4096;

/// A sender silent this long has the unseen numbers of its window counted as lost
/// ([`SequenceTracker::sweep_idle`]).
pub const SEQ_IDLE_MS: u64 = 10_000;

/// What to do with a datagram, by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Apply the datagram; `lost` datagrams of this sender are now known lost.
    Fresh { lost: u64 },
    /// Seen before: drop the whole datagram.
    Duplicate,
    /// A window or more away from the last number: the sender restarted. Apply the
    /// datagram; `lost` numbers of the old run's window were never seen.
    Restarted { lost: u64 },
}

#[derive(Debug, Clone)]
struct Window {
    top: u64,
    /// Lowest number losses are accounted from: the first number seen, or the one after
    /// `top` once an idle sender's tail was counted.
    floor: u64,
    /// Bit `s % SEQ_WINDOW_LEN` is set iff `s` in `top - 1023 ..= top` was seen.
    bits: [u64; WINDOW_WORDS],
    last_used: u64,
    /// Wall-clock milliseconds of the last datagram.
    last_seen_ms: u64,
}

impl Window {
    fn new(n: u64, last_used: u64, now_ms: u64) -> Self {
        let mut window = Window {
            top: n,
            floor: n,
            bits: [0; WINDOW_WORDS],
            last_used,
            last_seen_ms: now_ms,
        };
        window.set(n);
        window
    }

    /// Numbers of the window at or above `floor` not seen (at most a window's worth).
    fn unseen_tail(&self) -> u64 {
        let low = self.top.saturating_sub(SEQ_WINDOW_LEN - 1).max(self.floor);
        if low > self.top {
            return 0;
        }
        (low..=self.top).map(|s| u64::from(!self.is_set(s))).sum()
    }

    /// Counts the unseen tail as lost and moves `floor` past `top`, so those numbers are
    /// never counted again.
    fn close_tail(&mut self) -> u64 {
        let lost = self.unseen_tail();
        self.floor = self.top.saturating_add(1);
        lost
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
        if n.abs_diff(self.top) >= SEQ_WINDOW_LEN {
            let lost = self.unseen_tail();
            *self = Window::new(n, self.last_used, self.last_seen_ms);
            return SeqVerdict::Restarted { lost };
        }
        if n > self.top {
            let lost = self.advance(n);
            return SeqVerdict::Fresh { lost };
        }
        if self.is_set(n) {
            return SeqVerdict::Duplicate;
        }
        self.set(n);
        SeqVerdict::Fresh { lost: 0 }
    }

    /// Moves `top` up to `n` (less than a window above it), returning how many numbers
    /// left the window unseen.
    fn advance(&mut self, n: u64) -> u64 {
        debug_assert!(n > self.top);
        let distance = n - self.top;
        debug_assert!(distance < SEQ_WINDOW_LEN);
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
            for s in self.top + 1..=n {
                self.clear(s);
            }
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
    /// A tracker whose sender ids are fingerprinted with `key` (the agent passes a fresh
    /// random one: sequence state is not persisted).
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

    /// Checks one datagram's sequence header. The verdict depends only on the order of
    /// calls (recency for eviction is a logical clock); `now` only marks when the sender was
    /// last heard, for [`SequenceTracker::sweep_idle`].
    pub fn check(&self, now: MonoTime, seq: &Seq<'_>) -> SeqVerdict {
        let sender = self.fingerprinter.sender(seq.sender);
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.clock += 1;
        let clock = state.clock;
        if let Some(window) = state.senders.get_mut(&sender) {
            window.last_used = clock;
            window.last_seen_ms = now.unix_ms();
            let verdict = window.check(seq.n);
            if matches!(verdict, SeqVerdict::Restarted { .. }) {
                self.restarts_total.fetch_add(1, Ordering::Relaxed);
            }
            return verdict;
        }
        if state.senders.len() >= SEQ_SENDERS_MAX {
            let evicted = evict_least_recent(&mut state.senders);
            self.evicted_total.fetch_add(evicted, Ordering::Relaxed);
        }
        debug_assert!(state.senders.len() < SEQ_SENDERS_MAX);
        state
            .senders
            .insert(sender, Window::new(seq.n, clock, now.unix_ms()));
        SeqVerdict::Fresh { lost: 0 }
    }

    /// Counts, for every sender silent for at least `idle_ms` at `now`, the numbers of its
    /// window never seen (the gaps at the end of its run), once: returns how many. The
    /// sender stays tracked, so its duplicates are still caught. Holds the lock for one
    /// pass over the senders (at most [`SEQ_SENDERS_MAX`]); call it every second or so.
    pub fn sweep_idle(&self, now: MonoTime, idle_ms: u64) -> u64 {
        let now_ms = now.unix_ms();
        let mut state = self.state.lock();
        state
            .senders
            .values_mut()
            .filter(|w| now_ms.saturating_sub(w.last_seen_ms) >= idle_ms)
            .map(Window::close_tail)
            .fold(0u64, u64::saturating_add)
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
                    MonoTime(0),
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
        let at = |n| t.check(MonoTime(0), &Seq { sender: b"s", n });
        assert_eq!(at(5000), FRESH);
        assert_eq!(at(5002), FRESH); // 5001 missing, still in the window
        assert_eq!(at(5001 + SEQ_WINDOW_LEN - 1), FRESH);
        // 5001 slides out unseen now.
        assert_eq!(at(5001 + SEQ_WINDOW_LEN), SeqVerdict::Fresh { lost: 1 });
    }

    #[test]
    fn a_jump_of_a_window_or_more_is_a_restart_not_loss() {
        let t = tracker();
        let at = |n| t.check(MonoTime(0), &Seq { sender: b"s", n });
        for n in 0..2 * SEQ_WINDOW_LEN {
            assert_eq!(at(n), FRESH);
        }
        let top = 2 * SEQ_WINDOW_LEN - 1;
        // Just under a window ahead: the skipped numbers are still in the window.
        assert_eq!(at(top + SEQ_WINDOW_LEN - 1), FRESH);
        // A window or more ahead (a counter seeded from the clock): a restart; the jump is
        // no loss, only the old run's unseen tail (the W - 2 numbers skipped above) is.
        let restarted = top + SEQ_WINDOW_LEN - 1 + 5_000_000;
        assert_eq!(
            at(restarted),
            SeqVerdict::Restarted {
                lost: SEQ_WINDOW_LEN - 2
            }
        );
        assert_eq!(t.restarts_total(), 1);
        assert_eq!(at(restarted + 1), FRESH);
    }

    #[test]
    fn a_restart_counts_the_old_runs_unseen_tail_once() {
        let t = tracker();
        let at = |n| t.check(MonoTime(0), &Seq { sender: b"s", n });
        assert_eq!(at(100), FRESH);
        assert_eq!(at(105), FRESH); // 101..=104 unseen, still in the window
        assert_eq!(at(1_000_000), SeqVerdict::Restarted { lost: 4 });
        assert_eq!(at(1_000_001), FRESH);
    }

    #[test]
    fn numbers_before_the_first_one_seen_are_never_lost() {
        let t = tracker();
        let at = |n| t.check(MonoTime(0), &Seq { sender: b"s", n });
        assert_eq!(at(100_000), FRESH);
        // 99_000 ..= 99_999 shared the window with 100_000 but came before it: not lost.
        assert_eq!(at(101_000), FRESH);
        // 100_001 ..= 100_976 leave the window unseen.
        assert_eq!(at(102_000), SeqVerdict::Fresh { lost: 976 });
    }

    #[test]
    fn an_idle_senders_tail_is_counted_once() {
        let t = tracker();
        let at = |ms, n| t.check(MonoTime(ms), &Seq { sender: b"s", n });
        assert_eq!(at(1_000, 10), FRESH);
        assert_eq!(at(1_000, 13), FRESH); // 11 and 12 never come
        assert_eq!(
            t.sweep_idle(MonoTime(1_000 + SEQ_IDLE_MS - 1), SEQ_IDLE_MS),
            0
        );
        assert_eq!(t.sweep_idle(MonoTime(1_000 + SEQ_IDLE_MS), SEQ_IDLE_MS), 2);
        assert_eq!(t.sweep_idle(MonoTime(99_000), SEQ_IDLE_MS), 0, "once");
        // The sender comes back: its old numbers are still duplicates, a late one from the
        // counted tail is applied (it stays counted lost), and the tail is not counted again
        // when it slides out of the window.
        assert_eq!(at(100_000, 13), SeqVerdict::Duplicate);
        assert_eq!(at(100_000, 12), FRESH);
        assert_eq!(at(100_000, 13 + SEQ_WINDOW_LEN - 1), FRESH);
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
                match t.check(MonoTime(0), &Seq { sender: b"s", n }) {
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
        let at = |n| t.check(MonoTime(0), &Seq { sender: b"s", n });
        assert_eq!(at(10_000), FRESH);
        assert_eq!(at(1), SeqVerdict::Restarted { lost: 0 });
        assert_eq!(t.restarts_total(), 1);
        assert_eq!(at(2), FRESH);
        assert_eq!(at(1), SeqVerdict::Duplicate);
    }

    #[test]
    fn senders_are_tracked_apart() {
        let t = tracker();
        assert_eq!(t.check(MonoTime(0), &Seq { sender: b"a", n: 1 }), FRESH);
        assert_eq!(t.check(MonoTime(0), &Seq { sender: b"b", n: 1 }), FRESH);
        assert_eq!(
            t.check(MonoTime(0), &Seq { sender: b"a", n: 1 }),
            SeqVerdict::Duplicate
        );
    }

    #[test]
    fn the_least_recently_seen_senders_are_evicted_when_full() {
        let t = tracker();
        let sender = |i: usize| format!("sender-{i}").into_bytes();
        for i in 0..SEQ_SENDERS_MAX {
            t.check(
                MonoTime(0),
                &Seq {
                    sender: &sender(i),
                    n: 1,
                },
            );
        }
        // Sender 0 is seen again, so it is the most recent.
        assert_eq!(
            t.check(
                MonoTime(0),
                &Seq {
                    sender: &sender(0),
                    n: 1
                }
            ),
            SeqVerdict::Duplicate
        );
        t.check(
            MonoTime(0),
            &Seq {
                sender: b"newcomer",
                n: 1,
            },
        );
        assert!(t.sender_count() <= SEQ_SENDERS_MAX);
        assert_eq!(t.evicted_total(), (SEQ_SENDERS_MAX / 8 + 1) as u64);
        assert_eq!(
            t.check(
                MonoTime(0),
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
                MonoTime(0),
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
        const RESTART: SeqVerdict = SeqVerdict::Restarted { lost: 0 };
        assert_eq!(
            check(&[u64::MAX, 0, u64::MAX]),
            vec![FRESH, RESTART, RESTART]
        );
        // The case: `seq x 0` then `seq x 18446744073709551615` is one restart.
        assert_eq!(check(&[0, u64::MAX]), vec![FRESH, RESTART]);
        assert_eq!(
            check(&[u64::MAX - 1, u64::MAX, u64::MAX - 3]),
            vec![FRESH, FRESH, FRESH]
        );
    }

    // ---- against a model: the rules above over a `BTreeSet` of every number seen ----

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum SeqOp {
        /// The sender's next number: the previous one moved by `delta`.
        Step { sender: u8, delta: i64 },
        /// The sender's counter jumps to `n` (a restart, from zero or from a clock).
        Jump { sender: u8, n: u64 },
        /// Time passes beyond the idle threshold, and the sweep runs.
        Idle,
    }

    fn seq_op() -> impl Strategy<Value = SeqOp> {
        prop_oneof![
            12 => (0u8..2, -40i64..80).prop_map(|(sender, delta)| SeqOp::Step { sender, delta }),
            2 => (0u8..2, -1500i64..1500).prop_map(|(sender, delta)| SeqOp::Step { sender, delta }),
            1 => (0u8..2, prop_oneof![Just(0), Just(u64::MAX), any::<u64>(), 0u64..5000])
                .prop_map(|(sender, n)| SeqOp::Jump { sender, n }),
            1 => Just(SeqOp::Idle),
        ]
    }

    /// One sender's run, as plainly as possible.
    #[derive(Debug, Default)]
    struct RunModel {
        seen: BTreeSet<u64>,
        top: u64,
        floor: u64,
    }

    impl RunModel {
        fn start(n: u64) -> Self {
            RunModel {
                seen: BTreeSet::from([n]),
                top: n,
                floor: n,
            }
        }

        /// Unseen numbers `>= floor` in `lo ..= hi`.
        fn unseen(&self, lo: u64, hi: u64) -> u64 {
            let lo = lo.max(self.floor);
            if lo > hi {
                return 0;
            }
            (hi - lo + 1) - self.seen.range(lo..=hi).count() as u64
        }

        fn tail(&self) -> u64 {
            self.unseen(self.top.saturating_sub(SEQ_WINDOW_LEN - 1), self.top)
        }

        fn check(&mut self, n: u64) -> SeqVerdict {
            if n.abs_diff(self.top) >= SEQ_WINDOW_LEN {
                let lost = self.tail();
                *self = RunModel::start(n);
                return SeqVerdict::Restarted { lost };
            }
            if n > self.top {
                // Leaving the window: numbers that were in it (> top - W) up to n - W.
                let lost = match n.checked_sub(SEQ_WINDOW_LEN) {
                    Some(hi) => self.unseen(self.top.saturating_sub(SEQ_WINDOW_LEN - 1), hi),
                    None => 0,
                };
                self.top = n;
                self.seen.insert(n);
                return SeqVerdict::Fresh { lost };
            }
            if self.seen.insert(n) {
                SeqVerdict::Fresh { lost: 0 }
            } else {
                SeqVerdict::Duplicate
            }
        }

        fn close_tail(&mut self) -> u64 {
            let lost = self.tail();
            self.floor = self.top.saturating_add(1);
            lost
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5e9_0001),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn sequence_tracker_acts_like_a_btreeset_model(
            start in prop_oneof![Just(0u64), Just(u64::MAX - 3000), 0u64..1_000_000],
            ops in proptest::collection::vec(seq_op(), 1..400),
        ) {
            let t = tracker();
            let mut models: [Option<RunModel>; 2] = [None, None];
            let mut cursors = [start; 2];
            let (mut now_ms, mut restarts, mut lost) = (0u64, 0u64, 0u64);
            for op in &ops {
                let (sender, n) = match *op {
                    SeqOp::Step { sender, delta } => {
                        let c = &mut cursors[usize::from(sender)];
                        *c = c.saturating_add_signed(delta);
                        (sender, *c)
                    }
                    SeqOp::Jump { sender, n } => {
                        cursors[usize::from(sender)] = n;
                        (sender, n)
                    }
                    SeqOp::Idle => {
                        now_ms += SEQ_IDLE_MS;
                        let swept = t.sweep_idle(MonoTime(now_ms), SEQ_IDLE_MS);
                        let expected: u64 = models.iter_mut().flatten().map(RunModel::close_tail).sum();
                        prop_assert_eq!(swept, expected, "idle sweep");
                        lost += swept;
                        continue;
                    }
                };
                let id = [b's', b'0' + sender];
                let verdict = t.check(MonoTime(now_ms), &Seq { sender: &id, n });
                let expected = match &mut models[usize::from(sender)] {
                    Some(model) => model.check(n),
                    slot @ None => {
                        *slot = Some(RunModel::start(n));
                        SeqVerdict::Fresh { lost: 0 }
                    }
                };
                prop_assert_eq!(verdict, expected, "{:?} n={}", op, n);
                match verdict {
                    SeqVerdict::Fresh { lost: l } => lost += l,
                    SeqVerdict::Restarted { lost: l } => {
                        lost += l;
                        restarts += 1;
                    }
                    SeqVerdict::Duplicate => {}
                }
                prop_assert!(lost <= ops.len() as u64 * SEQ_WINDOW_LEN, "lost stays bounded");
            }
            prop_assert_eq!(t.restarts_total(), restarts);
        }
    }
}
