//! When to fetch the license next: a sans-IO schedule (no clock, no timer, no random
//! generator state), so every decision is a pure function of its inputs and a seed.
//!
//! The agent drives it:
//!
//! 1. ask [`FetchSchedule::next_fetch`] with the current time (Unix ms and the local UTC
//!    offset) and the end of the current license's lease;
//! 2. sleep until the returned instant (an instant at or before now means "now"), or until a
//!    reload is requested;
//! 3. fetch, then report [`FetchSchedule::on_success`] or [`FetchSchedule::on_failure`];
//!    go to 1. A reload fetches at once and reports the same way.
//!
//! The rules, first match wins:
//!
//! - **Retry** after failures: `last failure + backoff`, where the backoff starts at
//!   [`ScheduleConfig::backoff_initial_ms`] (30 s), doubles with each consecutive failure up
//!   to [`ScheduleConfig::backoff_max_ms`] (1 h), and is drawn in `[b/2, b]` ("equal
//!   jitter") so nodes that failed together do not retry together. A success resets it.
//! - **Start**: never fetched (no success, no failure yet): now.
//! - **Renewal**: the lease ends within [`ScheduleConfig::renew_before_ms`] (3 days) of the
//!   next daily fetch: at `lease end − renew_before`, but never sooner than
//!   [`ScheduleConfig::renew_interval_min_ms`] (1 h) after the last success, so a server
//!   that hands out short leases cannot make the agent spin.
//! - **Daily**: the first daily instant after the last success: the local time
//!   [`ScheduleConfig::daily_at`] (01:00) plus a per-day jitter in
//!   `[0, daily_jitter_ms]` (15 min), drawn from the seed and the local date, so one agent's
//!   fetch time is stable within a day and a cluster's agents spread out.
//!
//! Local time is `unix ms + utc_offset`; the offset is an input on every call, so a
//! daylight-saving change takes effect at the next call (the schedule itself knows no time
//! zones).

use std::fmt;
use std::str::FromStr;

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// Largest accepted UTC offset, either way (the `time` crate's bound): 25 hours.
pub const UTC_OFFSET_S_MAX: i32 = 25 * 3600 - 1;
/// Largest daily jitter: 6 hours.
pub const DAILY_JITTER_MS_MAX: u64 = 6 * 3600 * 1000;

/// A local time of day, minute precision (`HH:MM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    hour: u8,
    minute: u8,
}

impl LocalTime {
    pub const fn new(hour: u8, minute: u8) -> Option<LocalTime> {
        if hour < 24 && minute < 60 {
            Some(LocalTime { hour, minute })
        } else {
            None
        }
    }

    /// Milliseconds after local midnight.
    pub fn ms_after_midnight(self) -> u64 {
        (u64::from(self.hour) * 60 + u64::from(self.minute)) * 60_000
    }
}

impl Default for LocalTime {
    /// 01:00, as NGCP and Alpaca do.
    fn default() -> Self {
        LocalTime { hour: 1, minute: 0 }
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl FromStr for LocalTime {
    type Err = &'static str;

    /// `H:MM` or `HH:MM`, 24-hour clock.
    fn from_str(text: &str) -> Result<LocalTime, &'static str> {
        const PROBLEM: &str = "expected a local time like 01:00 (24-hour HH:MM)";
        let (hour, minute) = text.split_once(':').ok_or(PROBLEM)?;
        let number = |t: &str, len_max: usize| {
            if t.is_empty() || t.len() > len_max || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PROBLEM);
            }
            t.parse::<u8>().map_err(|_| PROBLEM)
        };
        if minute.len() != 2 {
            return Err(PROBLEM);
        }
        LocalTime::new(number(hour, 2)?, number(minute, 2)?).ok_or(PROBLEM)
    }
}

/// The schedule's settings; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Local time of the daily fetch (default 01:00).
    pub daily_at: LocalTime,
    /// The daily fetch happens up to this much after `daily_at` (default 15 min, at most
    /// [`DAILY_JITTER_MS_MAX`]).
    pub daily_jitter_ms: u64,
    /// Renew early when the lease ends within this much of the next daily fetch (default 3
    /// days).
    pub renew_before_ms: u64,
    /// Never renew early sooner than this after a success (default 1 h).
    pub renew_interval_min_ms: u64,
    /// First retry delay after a failure (default 30 s).
    pub backoff_initial_ms: u64,
    /// Longest retry delay (default 1 h).
    pub backoff_max_ms: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            daily_at: LocalTime::default(),
            daily_jitter_ms: 15 * 60 * 1000,
            renew_before_ms: 3 * DAY_MS,
            renew_interval_min_ms: 3600 * 1000,
            backoff_initial_ms: 30 * 1000,
            backoff_max_ms: 3600 * 1000,
        }
    }
}

/// The current time as the schedule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds (UTC).
    pub unix_ms: u64,
    /// The local UTC offset in seconds (east positive, e.g. 3600 for UTC+1); clamped to
    /// ±[`UTC_OFFSET_S_MAX`].
    pub utc_offset_s: i32,
}

impl Now {
    pub fn utc(unix_ms: u64) -> Now {
        Now {
            unix_ms,
            utc_offset_s: 0,
        }
    }
}

/// Why the next fetch happens when it does (a log field; low cardinality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchReason {
    /// The first fetch since the agent started.
    Start,
    /// The daily fetch.
    Daily,
    /// The lease ends soon.
    Renewal,
    /// The previous attempt failed.
    Retry,
}

impl FetchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchReason::Start => "start",
            FetchReason::Daily => "daily",
            FetchReason::Renewal => "renewal",
            FetchReason::Retry => "retry",
        }
    }
}

/// When and why to fetch next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextFetch {
    /// Unix ms; at or before now means "now".
    pub at_ms: u64,
    pub reason: FetchReason,
}

/// The fetch schedule: its settings, a seed for the jitter, and the fetch history.
#[derive(Debug, Clone)]
pub struct FetchSchedule {
    config: ScheduleConfig,
    seed: u64,
    last_success_ms: Option<u64>,
    last_failure_ms: Option<u64>,
    failures: u32,
}

impl FetchSchedule {
    /// A schedule that has never fetched. `seed` picks the jitter (the agent uses a random
    /// one, or one derived from its node id so restarts keep the same daily time).
    pub fn new(config: ScheduleConfig, seed: u64) -> FetchSchedule {
        let config = ScheduleConfig {
            daily_jitter_ms: config.daily_jitter_ms.min(DAILY_JITTER_MS_MAX),
            backoff_initial_ms: config.backoff_initial_ms.max(1),
            backoff_max_ms: config.backoff_max_ms.max(config.backoff_initial_ms.max(1)),
            ..config
        };
        FetchSchedule {
            config,
            seed,
            last_success_ms: None,
            last_failure_ms: None,
            failures: 0,
        }
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// A fetch succeeded at `now_ms`: the backoff resets.
    pub fn on_success(&mut self, now_ms: u64) {
        self.last_success_ms = Some(now_ms);
        self.failures = 0;
    }

    /// A fetch failed at `now_ms`.
    pub fn on_failure(&mut self, now_ms: u64) {
        self.last_failure_ms = Some(now_ms);
        self.failures = self.failures.saturating_add(1);
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn last_success_ms(&self) -> Option<u64> {
        self.last_success_ms
    }

    /// When to fetch next (see the module doc for the rules). `lease_end_ms` is the
    /// `signature_valid_until` of the license in force (the earlier of it and a
    /// subscription's `valid_until` works too), `None` without a license or without a lease.
    pub fn next_fetch(&self, now: Now, lease_end_ms: Option<u64>) -> NextFetch {
        if let (true, Some(failed_ms)) = (self.failures > 0, self.last_failure_ms) {
            return NextFetch {
                at_ms: failed_ms.saturating_add(self.backoff_ms(failed_ms)),
                reason: FetchReason::Retry,
            };
        }
        let Some(success_ms) = self.last_success_ms else {
            return NextFetch {
                at_ms: now.unix_ms,
                reason: FetchReason::Start,
            };
        };
        let daily_ms = self.daily_after(success_ms, now.utc_offset_s);
        if let Some(lease_end_ms) = lease_end_ms {
            let renew_ms = lease_end_ms
                .saturating_sub(self.config.renew_before_ms)
                .max(success_ms.saturating_add(self.config.renew_interval_min_ms));
            if renew_ms < daily_ms {
                return NextFetch {
                    at_ms: renew_ms,
                    reason: FetchReason::Renewal,
                };
            }
        }
        NextFetch {
            at_ms: daily_ms,
            reason: FetchReason::Daily,
        }
    }

    /// The retry delay after the current run of failures, the last one at `failed_ms`.
    pub fn backoff_ms(&self, failed_ms: u64) -> u64 {
        let exponent = self.failures.saturating_sub(1).min(63);
        let ceiling = self
            .config
            .backoff_initial_ms
            .saturating_mul(1 << exponent)
            .min(self.config.backoff_max_ms);
        let half = ceiling / 2;
        let draw = mix(self.seed ^ mix(u64::from(self.failures)) ^ mix(failed_ms ^ 0xb0ff));
        half + draw % (ceiling - half + 1)
    }

    /// The first daily fetch instant strictly after `after_ms`, at this UTC offset.
    fn daily_after(&self, after_ms: u64, utc_offset_s: i32) -> u64 {
        let offset_ms = i64::from(utc_offset_s.clamp(-UTC_OFFSET_S_MAX, UTC_OFFSET_S_MAX)) * 1000;
        let day_ms = DAY_MS as i64;
        // Far beyond any real date, and far from overflowing below.
        let after = after_ms.min(1 << 60) as i64;
        let local_day = (after + offset_ms).div_euclid(day_ms);
        // The daily instant of local day d lies within [d, d + 1 day + 6 h) local, so the
        // first one after `after` is on the day before, the day of, or the next two days.
        (local_day - 1..=local_day + 2)
            .map(|day| {
                let jitter = match self.config.daily_jitter_ms {
                    0 => 0,
                    j => mix(self.seed ^ mix(day as u64)) % (j + 1),
                };
                day * day_ms + self.config.daily_at.ms_after_midnight() as i64 + jitter as i64
                    - offset_ms
            })
            .find(|&at| at > after)
            .map_or(u64::MAX, |at| u64::try_from(at).unwrap_or(0))
    }
}

/// SplitMix64's finalizer: a stable, well-mixed hash of a word (the jitter must not depend
/// on a library's choice of generator, so that a seed means the same thing forever).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_license::timestamp::{format_rfc3339, parse_rfc3339};

    const HOUR_MS: u64 = 3600 * 1000;

    fn at(text: &str) -> u64 {
        parse_rfc3339(text).unwrap().unix_ms()
    }

    fn no_jitter() -> ScheduleConfig {
        ScheduleConfig {
            daily_jitter_ms: 0,
            ..ScheduleConfig::default()
        }
    }

    /// After a success at `success` (UTC text) with the local offset `offset_h` and the
    /// lease ending at `lease_end`, the next fetch is at `expected` for `reason`.
    fn check(
        config: ScheduleConfig,
        success: &str,
        offset_s: i32,
        lease_end: Option<&str>,
        expected: &str,
        reason: FetchReason,
    ) {
        let mut schedule = FetchSchedule::new(config, 7);
        schedule.on_success(at(success));
        let now = Now {
            unix_ms: at(success) + 1000,
            utc_offset_s: offset_s,
        };
        let next = schedule.next_fetch(now, lease_end.map(at));
        assert_eq!(
            (
                format_rfc3339(tollgate_events::WallTime::from_unix_ms(next.at_ms)).as_str(),
                next.reason
            ),
            (expected, reason),
            "success {success}, offset {offset_s} s, lease end {lease_end:?}"
        );
    }

    #[test]
    fn first_fetch_is_at_start() {
        let schedule = FetchSchedule::new(ScheduleConfig::default(), 1);
        let now = Now::utc(at("2030-03-01T12:00:00Z"));
        assert_eq!(
            schedule.next_fetch(now, None),
            NextFetch {
                at_ms: now.unix_ms,
                reason: FetchReason::Start
            }
        );
    }

    #[test]
    fn daily_fetch_at_local_one_in_utc() {
        use FetchReason::Daily;
        let c = no_jitter();
        // After 01:00 → tomorrow 01:00; before 01:00 → today 01:00; exactly 01:00 → tomorrow.
        check(
            c,
            "2030-03-01T12:00:00Z",
            0,
            None,
            "2030-03-02T01:00:00Z",
            Daily,
        );
        check(
            c,
            "2030-03-01T00:30:00Z",
            0,
            None,
            "2030-03-01T01:00:00Z",
            Daily,
        );
        check(
            c,
            "2030-03-01T01:00:00Z",
            0,
            None,
            "2030-03-02T01:00:00Z",
            Daily,
        );
        // Across a month and a year end.
        check(
            c,
            "2030-02-28T23:59:59Z",
            0,
            None,
            "2030-03-01T01:00:00Z",
            Daily,
        );
        check(
            c,
            "2030-12-31T22:00:00Z",
            0,
            None,
            "2031-01-01T01:00:00Z",
            Daily,
        );
    }

    #[test]
    fn daily_fetch_follows_the_local_offset() {
        use FetchReason::Daily;
        let c = no_jitter();
        // UTC+2: 01:00 local is 23:00 UTC the day before.
        check(
            c,
            "2030-03-01T12:00:00Z",
            7200,
            None,
            "2030-03-01T23:00:00Z",
            Daily,
        );
        // 22:30 UTC is 00:30 local on the 2nd: the fetch is 30 minutes later, still the 1st
        // in UTC (crossing midnight the other way).
        check(
            c,
            "2030-03-01T22:30:00Z",
            7200,
            None,
            "2030-03-01T23:00:00Z",
            Daily,
        );
        check(
            c,
            "2030-03-01T23:30:00Z",
            7200,
            None,
            "2030-03-02T23:00:00Z",
            Daily,
        );
        // UTC−5: 01:00 local is 06:00 UTC; 03:00 UTC is still the previous local day.
        check(
            c,
            "2030-03-01T03:00:00Z",
            -5 * 3600,
            None,
            "2030-03-01T06:00:00Z",
            Daily,
        );
        check(
            c,
            "2030-03-01T07:00:00Z",
            -5 * 3600,
            None,
            "2030-03-02T06:00:00Z",
            Daily,
        );
        // Half-hour and extreme offsets.
        check(
            c,
            "2030-03-01T12:00:00Z",
            19800,
            None,
            "2030-03-01T19:30:00Z",
            Daily,
        );
        check(
            c,
            "2030-03-01T12:00:00Z",
            14 * 3600,
            None,
            "2030-03-02T11:00:00Z",
            Daily,
        );
        check(
            c,
            "2030-03-01T12:00:00Z",
            -12 * 3600,
            None,
            "2030-03-01T13:00:00Z",
            Daily,
        );
    }

    #[test]
    fn daily_time_is_configurable() {
        let c = ScheduleConfig {
            daily_at: "23:45".parse().unwrap(),
            ..no_jitter()
        };
        check(
            c,
            "2030-03-01T23:50:00Z",
            0,
            None,
            "2030-03-02T23:45:00Z",
            FetchReason::Daily,
        );
        // 23:45 at UTC+1 is 22:45 UTC.
        check(
            c,
            "2030-03-01T23:50:00Z",
            3600,
            None,
            "2030-03-02T22:45:00Z",
            FetchReason::Daily,
        );
    }

    #[test]
    fn daily_jitter_is_bounded_stable_within_a_day_and_seeded() {
        let config = ScheduleConfig::default();
        let success = at("2030-03-01T12:00:00Z");
        let base = at("2030-03-02T01:00:00Z");
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut schedule = FetchSchedule::new(config, seed);
            schedule.on_success(success);
            let next = schedule.next_fetch(Now::utc(success), None).at_ms;
            assert!(
                (base..=base + config.daily_jitter_ms).contains(&next),
                "seed {seed}"
            );
            // Asked again later the same day: same answer.
            schedule.on_success(success + HOUR_MS);
            assert_eq!(schedule.next_fetch(Now::utc(success), None).at_ms, next);
            seen.insert(next);
        }
        assert!(
            seen.len() > 150,
            "jitter spreads agents out: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn daily_with_jitter_never_fetches_twice_for_one_day() {
        // A success just after today's jittered instant moves to tomorrow, never back.
        let config = ScheduleConfig::default();
        for seed in 0..50 {
            let mut schedule = FetchSchedule::new(config, seed);
            schedule.on_success(at("2030-03-01T12:00:00Z"));
            let first = schedule.next_fetch(Now::utc(0), None).at_ms;
            schedule.on_success(first);
            let second = schedule.next_fetch(Now::utc(0), None).at_ms;
            assert!(
                second > first + DAY_MS - config.daily_jitter_ms - 1,
                "seed {seed}"
            );
            assert!(
                second <= first + DAY_MS + config.daily_jitter_ms,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn renews_early_when_the_lease_ends_soon() {
        use FetchReason::{Daily, Renewal};
        let c = no_jitter();
        // Lease ends in 14 days: daily.
        let s = "2030-03-01T12:00:00Z";
        check(
            c,
            s,
            0,
            Some("2030-03-15T12:00:00Z"),
            "2030-03-02T01:00:00Z",
            Daily,
        );
        // Lease ends 3 days after tomorrow's 01:00 + 1 h: still daily.
        check(
            c,
            s,
            0,
            Some("2030-03-05T02:00:00Z"),
            "2030-03-02T01:00:00Z",
            Daily,
        );
        // Lease ends 3 days + 5 h after the success: renew at lease end − 3 days.
        check(
            c,
            s,
            0,
            Some("2030-03-04T17:00:00Z"),
            "2030-03-01T17:00:00Z",
            Renewal,
        );
        // Already within 3 days (the server handed out a 2-day lease): an hour after the
        // success, not in a loop.
        check(
            c,
            s,
            0,
            Some("2030-03-03T12:00:00Z"),
            "2030-03-01T13:00:00Z",
            Renewal,
        );
        // Lease already over: same guard.
        check(
            c,
            s,
            0,
            Some("2030-02-01T00:00:00Z"),
            "2030-03-01T13:00:00Z",
            Renewal,
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let config = ScheduleConfig::default();
        let mut schedule = FetchSchedule::new(config, 99);
        schedule.on_success(at("2030-03-01T12:00:00Z"));
        let mut now = at("2030-03-01T13:00:00Z");
        let mut delays = Vec::new();
        for failure in 1..=20u32 {
            schedule.on_failure(now);
            let next = schedule.next_fetch(Now::utc(now), Some(now + 10 * DAY_MS));
            assert_eq!(next.reason, FetchReason::Retry);
            let delay = next.at_ms - now;
            let ceiling = (30_000u64 << (failure - 1).min(20)).min(3600 * 1000);
            assert!(
                (ceiling / 2..=ceiling).contains(&delay),
                "failure {failure}: delay {delay} ms, ceiling {ceiling} ms"
            );
            delays.push(delay);
            now = next.at_ms;
        }
        assert!(delays[0] <= 30_000 && delays[0] >= 15_000);
        assert!(delays[19] <= 3600 * 1000, "capped at 1 h");
        assert!(delays[19] >= 1800 * 1000);
        assert_eq!(schedule.consecutive_failures(), 20);
    }

    #[test]
    fn success_resets_the_backoff() {
        let mut schedule = FetchSchedule::new(no_jitter(), 5);
        let t = at("2030-03-01T12:00:00Z");
        for i in 0..10 {
            schedule.on_failure(t + i);
        }
        schedule.on_success(t + 100);
        assert_eq!(schedule.consecutive_failures(), 0);
        let next = schedule.next_fetch(Now::utc(t + 100), None);
        assert_eq!(next.reason, FetchReason::Daily);
        schedule.on_failure(t + 200);
        let retry = schedule.next_fetch(Now::utc(t + 200), None);
        assert!(retry.at_ms - (t + 200) <= 30_000, "back to the first delay");
    }

    #[test]
    fn failure_before_any_success_retries() {
        let mut schedule = FetchSchedule::new(ScheduleConfig::default(), 5);
        let t = at("2030-03-01T12:00:00Z");
        schedule.on_failure(t);
        let next = schedule.next_fetch(Now::utc(t), None);
        assert_eq!(next.reason, FetchReason::Retry);
        assert!((t + 15_000..=t + 30_000).contains(&next.at_ms));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let run = |seed| {
            let mut s = FetchSchedule::new(ScheduleConfig::default(), seed);
            let t = at("2030-03-01T12:00:00Z");
            s.on_success(t);
            let daily = s.next_fetch(Now::utc(t), None).at_ms;
            s.on_failure(daily);
            (daily, s.next_fetch(Now::utc(daily), None).at_ms)
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn local_time_parses_and_prints() {
        for (text, printed) in [("01:00", "01:00"), ("1:00", "01:00"), ("23:59", "23:59")] {
            assert_eq!(text.parse::<LocalTime>().unwrap().to_string(), printed);
        }
        for bad in [
            "24:00", "12:60", "1", "01:0", "01:000", "-1:00", "aa:bb", "", "001:00",
        ] {
            assert!(bad.parse::<LocalTime>().is_err(), "{bad}");
        }
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let config = ScheduleConfig {
            backoff_initial_ms: u64::MAX,
            backoff_max_ms: 0,
            daily_jitter_ms: u64::MAX,
            ..ScheduleConfig::default()
        };
        let mut s = FetchSchedule::new(config, u64::MAX);
        for t in [0, 1, u64::MAX / 2, u64::MAX] {
            s.on_success(t);
            let _ = s.next_fetch(
                Now {
                    unix_ms: t,
                    utc_offset_s: i32::MIN,
                },
                Some(u64::MAX),
            );
            let _ = s.next_fetch(
                Now {
                    unix_ms: t,
                    utc_offset_s: i32::MAX,
                },
                Some(0),
            );
            s.on_failure(t);
            let _ = s.next_fetch(Now::utc(t), None);
        }
    }
}
