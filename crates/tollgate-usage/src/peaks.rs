//! Peak usage: the highest concurrent calls and registered subscribers since start, and per
//! minute over the last 24 hours.
//!
//! **Who feeds it.** [`crate::Tables`] owns a `Peaks` but does not update it on every event:
//! a start would then have to sum all shards (the cost of [`crate::Tables::usage`]) on the
//! hot path. The ingest loop calls [`crate::Tables::observe_peaks`] (or [`Peaks::observe`])
//! once per receive batch instead. **Bound:** a peak that rises and falls again inside one
//! batch is under-reported by at most the number of starts in that batch.
//!
//! **Representation.** Lock-free: a ring of [`MINUTE_SLOT_COUNT`] slots indexed by unix
//! minute modulo 1440. Each value is an `AtomicU64` packing the slot's unix minute + 1 (high
//! 32 bits, 0 = never written) with the value (low 32 bits, saturating at `u32::MAX`), so a
//! compare-and-swap both claims a slot for a new minute and raises its maximum: a slot left
//! from a previous day is recognised by its minute and never reported.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::MonoTime;

/// Minutes kept: 24 hours.
pub const MINUTE_SLOT_COUNT: usize = 1440;

/// A pair of peak values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PeakCounts {
    pub calls: u64,
    pub registered_subscribers: u64,
}

/// The peaks of one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MinutePeak {
    /// Start of the minute (a multiple of 60 s).
    pub minute_start: MonoTime,
    pub calls: u64,
    pub registered_subscribers: u64,
}

/// The peaks of one usage report's own interval (see [`Peaks::take_interval`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IntervalPeaks {
    pub calls: u64,
    pub emergency_calls: u64,
    pub registered_subscribers: u64,
}

#[derive(Debug, Default)]
struct MinuteSlot {
    calls: AtomicU64,
    registered_subscribers: AtomicU64,
}

/// See the module doc.
#[derive(Debug)]
pub struct Peaks {
    calls_max: AtomicU64,
    registered_subscribers_max: AtomicU64,
    /// Maxima since the last [`Peaks::take_interval`]: exact for a report's own interval,
    /// where the per-minute slots would include the whole first and last minutes.
    interval: [AtomicU64; 3],
    slots: Box<[MinuteSlot]>,
}

impl Default for Peaks {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_minute(t: MonoTime) -> u64 {
    t.unix_secs() / 60
}

/// The tag a slot holds for `minute`; `None` past the year 10 000 (never observed).
fn tag(minute: u64) -> Option<u64> {
    let tag = minute.checked_add(1)?;
    (tag <= u64::from(u32::MAX)).then_some(tag)
}

fn pack(tag: u64, value: u64) -> u64 {
    (tag << 32) | value.min(u64::from(u32::MAX))
}

fn unpack(cell: u64) -> (u64, u64) {
    (cell >> 32, cell & u64::from(u32::MAX))
}

/// Raises `cell` to `value` for minute `tag`; a cell holding an older minute is taken over,
/// one holding a newer minute is left alone (`observe` called with an old time).
fn raise(cell: &AtomicU64, tag: u64, value: u64) {
    let mut current = cell.load(Ordering::Relaxed);
    loop {
        let (current_tag, current_value) = unpack(current);
        let new = match current_tag.cmp(&tag) {
            std::cmp::Ordering::Greater => return,
            std::cmp::Ordering::Equal if current_value >= value.min(u64::from(u32::MAX)) => {
                return;
            }
            _ => pack(tag, value),
        };
        match cell.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// The value `cell` holds for minute `tag`, if it holds that minute.
fn read(cell: &AtomicU64, tag: u64) -> Option<u64> {
    let (cell_tag, value) = unpack(cell.load(Ordering::Relaxed));
    (cell_tag == tag).then_some(value)
}

impl Peaks {
    pub fn new() -> Self {
        Peaks {
            calls_max: AtomicU64::new(0),
            registered_subscribers_max: AtomicU64::new(0),
            interval: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            slots: (0..MINUTE_SLOT_COUNT)
                .map(|_| MinuteSlot::default())
                .collect(),
        }
    }

    /// Records the current totals. Cheap (a few atomic operations); call it once per batch.
    pub fn observe(&self, now: MonoTime, calls: u64, registered_subscribers: u64) {
        self.calls_max.fetch_max(calls, Ordering::Relaxed);
        self.registered_subscribers_max
            .fetch_max(registered_subscribers, Ordering::Relaxed);
        self.observe_minute(unix_minute(now), calls, registered_subscribers);
    }

    /// Raises the current interval's maxima (calls, emergency calls, registered
    /// subscribers). [`crate::Tables::observe_peaks`] calls it with [`Peaks::observe`].
    pub fn observe_interval(&self, calls: u64, emergency_calls: u64, registered_subscribers: u64) {
        self.interval[0].fetch_max(calls, Ordering::Relaxed);
        self.interval[1].fetch_max(emergency_calls, Ordering::Relaxed);
        self.interval[2].fetch_max(registered_subscribers, Ordering::Relaxed);
    }

    /// The maxima since the previous call, and starts a new interval. A report that could
    /// not be delivered gives them back with [`Peaks::restore_interval`].
    pub fn take_interval(&self) -> IntervalPeaks {
        IntervalPeaks {
            calls: self.interval[0].swap(0, Ordering::Relaxed),
            emergency_calls: self.interval[1].swap(0, Ordering::Relaxed),
            registered_subscribers: self.interval[2].swap(0, Ordering::Relaxed),
        }
    }

    /// Merges maxima taken by [`Peaks::take_interval`] back into the current interval.
    pub fn restore_interval(&self, peaks: IntervalPeaks) {
        self.observe_interval(
            peaks.calls,
            peaks.emergency_calls,
            peaks.registered_subscribers,
        );
    }

    fn observe_minute(&self, minute: u64, calls: u64, registered_subscribers: u64) {
        let Some(tag) = tag(minute) else { return };
        let slot = &self.slots[(minute % MINUTE_SLOT_COUNT as u64) as usize];
        raise(&slot.calls, tag, calls);
        raise(&slot.registered_subscribers, tag, registered_subscribers);
    }

    /// The highest values observed since this `Peaks` was created.
    pub fn since_start(&self) -> PeakCounts {
        PeakCounts {
            calls: self.calls_max.load(Ordering::Relaxed),
            registered_subscribers: self.registered_subscribers_max.load(Ordering::Relaxed),
        }
    }

    /// The minutes of the last 24 hours (up to and including `now`'s) that have
    /// observations, oldest first.
    pub fn minutes(&self, now: MonoTime) -> Vec<MinutePeak> {
        let now_minute = unix_minute(now);
        let first = now_minute.saturating_sub(MINUTE_SLOT_COUNT as u64 - 1);
        (first..=now_minute)
            .filter_map(|minute| self.minute(minute))
            .collect()
    }

    /// The highest values of the minutes from `from`'s through `now`'s (at most the last
    /// 24 hours): "peaks since the last report".
    pub fn max_since(&self, now: MonoTime, from: MonoTime) -> PeakCounts {
        let now_minute = unix_minute(now);
        let first = unix_minute(from).max(now_minute.saturating_sub(MINUTE_SLOT_COUNT as u64 - 1));
        (first..=now_minute)
            .filter_map(|minute| self.minute(minute))
            .fold(PeakCounts::default(), |max, peak| PeakCounts {
                calls: max.calls.max(peak.calls),
                registered_subscribers: max.registered_subscribers.max(peak.registered_subscribers),
            })
    }

    fn minute(&self, minute: u64) -> Option<MinutePeak> {
        let tag = tag(minute)?;
        let slot = &self.slots[(minute % MINUTE_SLOT_COUNT as u64) as usize];
        let calls = read(&slot.calls, tag);
        let registered_subscribers = read(&slot.registered_subscribers, tag);
        if calls.is_none() && registered_subscribers.is_none() {
            return None;
        }
        Some(MinutePeak {
            minute_start: MonoTime::from_unix_secs(minute * 60),
            calls: calls.unwrap_or(0),
            registered_subscribers: registered_subscribers.unwrap_or(0),
        })
    }

    /// Merges restored minute peaks (those within 24 hours of `now`) into the ring; does not
    /// touch [`Peaks::since_start`]. Returns how many minutes were merged.
    pub fn merge_minutes(&self, now: MonoTime, minutes: &[MinutePeak]) -> usize {
        let now_minute = unix_minute(now);
        let first = now_minute.saturating_sub(MINUTE_SLOT_COUNT as u64 - 1);
        let mut merged = 0;
        for peak in minutes {
            let minute = unix_minute(peak.minute_start);
            if (first..=now_minute).contains(&minute) {
                self.observe_minute(minute, peak.calls, peak.registered_subscribers);
                merged += 1;
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0_S: u64 = 1_749_999_980; // 20 s into a minute

    fn at(s: u64) -> MonoTime {
        MonoTime::from_unix_secs(s)
    }

    #[test]
    fn since_start_keeps_the_highest() {
        let peaks = Peaks::new();
        peaks.observe(at(T0_S), 5, 2);
        peaks.observe(at(T0_S + 1), 3, 7);
        assert_eq!(
            peaks.since_start(),
            PeakCounts {
                calls: 5,
                registered_subscribers: 7
            }
        );
    }

    #[test]
    fn minutes_are_listed_oldest_first_with_their_own_peak() {
        let peaks = Peaks::new();
        peaks.observe(at(T0_S), 5, 1);
        peaks.observe(at(T0_S + 10), 9, 1);
        peaks.observe(at(T0_S + 60), 2, 4);
        let minutes = peaks.minutes(at(T0_S + 60));
        assert_eq!(minutes.len(), 2);
        assert_eq!(minutes[0].minute_start, at(T0_S - 20));
        assert_eq!(
            (minutes[0].calls, minutes[0].registered_subscribers),
            (9, 1)
        );
        assert_eq!(minutes[1].minute_start, at(T0_S + 40));
        assert_eq!(
            (minutes[1].calls, minutes[1].registered_subscribers),
            (2, 4)
        );
    }

    #[test]
    fn slots_from_a_previous_day_are_not_reported() {
        let peaks = Peaks::new();
        peaks.observe(at(T0_S), 50, 50);
        let next_day = T0_S + 24 * 3600;
        // The last 24 h end just before the old minute comes back round.
        assert_eq!(peaks.minutes(at(next_day - 60)).len(), 1);
        assert!(peaks.minutes(at(next_day)).is_empty());
        // The same slot is reused for the new day's minute, not raised from the old value.
        peaks.observe(at(next_day), 3, 1);
        let minutes = peaks.minutes(at(next_day));
        assert_eq!(minutes.len(), 1);
        assert_eq!(minutes[0].calls, 3);
    }

    #[test]
    fn observing_an_older_minute_does_not_overwrite_a_newer_one() {
        let peaks = Peaks::new();
        let next_day = T0_S + 24 * 3600;
        peaks.observe(at(next_day), 3, 1);
        peaks.observe(at(T0_S), 50, 50);
        assert_eq!(peaks.minutes(at(next_day))[0].calls, 3);
    }

    #[test]
    fn max_since_covers_the_minutes_from_the_last_report() {
        let peaks = Peaks::new();
        peaks.observe(at(T0_S), 10, 1);
        peaks.observe(at(T0_S + 120), 4, 6);
        peaks.observe(at(T0_S + 180), 5, 2);
        let since = peaks.max_since(at(T0_S + 180), at(T0_S + 100));
        assert_eq!(
            since,
            PeakCounts {
                calls: 5,
                registered_subscribers: 6
            }
        );
        let all = peaks.max_since(at(T0_S + 180), MonoTime::from_unix_secs(0));
        assert_eq!(
            all,
            PeakCounts {
                calls: 10,
                registered_subscribers: 6
            }
        );
    }

    #[test]
    fn values_beyond_u32_saturate_in_minutes() {
        let peaks = Peaks::new();
        peaks.observe(at(T0_S), u64::MAX, 0);
        assert_eq!(peaks.minutes(at(T0_S))[0].calls, u64::from(u32::MAX));
        assert_eq!(peaks.since_start().calls, u64::MAX);
    }

    #[test]
    fn merged_minutes_outside_the_last_day_are_ignored() {
        let peaks = Peaks::new();
        let old = MinutePeak {
            minute_start: at(0),
            calls: 1,
            registered_subscribers: 1,
        };
        let recent = MinutePeak {
            minute_start: at(T0_S - 20),
            calls: 7,
            registered_subscribers: 2,
        };
        assert_eq!(peaks.merge_minutes(at(T0_S), &[old, recent]), 1);
        assert_eq!(peaks.minutes(at(T0_S)), vec![recent]);
        assert_eq!(peaks.since_start(), PeakCounts::default());
    }

    #[test]
    fn concurrent_observers_keep_the_maximum() {
        let peaks = Peaks::new();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let peaks = &peaks;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        peaks.observe(at(T0_S), i * 2 + t, i);
                    }
                });
            }
        });
        assert_eq!(peaks.minutes(at(T0_S))[0].calls, 19_999);
        assert_eq!(peaks.since_start().calls, 19_999);
    }

    #[test]
    fn interval_peaks_cover_exactly_one_report_and_can_be_given_back() {
        let p = Peaks::new();
        p.observe_interval(5, 1, 7);
        p.observe_interval(9, 0, 3);
        p.observe_interval(2, 2, 1);
        let first = p.take_interval();
        assert_eq!(
            first,
            IntervalPeaks {
                calls: 9,
                emergency_calls: 2,
                registered_subscribers: 7
            }
        );
        // A new interval: an earlier, higher minute does not leak into it.
        p.observe_interval(3, 0, 2);
        assert_eq!(p.take_interval().calls, 3);
        // An undelivered report's maxima come back.
        p.observe_interval(1, 0, 1);
        p.restore_interval(first);
        assert_eq!(p.take_interval(), first);
    }
}
