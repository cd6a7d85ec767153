//! tollgate's time vocabulary: two instants that must not be mixed up, both in milliseconds,
//! both always passed in (no core reads a clock).
//!
//! - [`WallTime`]: the wall clock (Unix milliseconds). It may step (NTP, an operator), so
//!   it is for what a person or another machine reads: license validity and leases, usage
//!   reports, ledger entries, snapshots' `wall_at`, history, log lines.
//! - [`MonoTime`]: a monotonic clock. It never steps, so every duration runs on it: call
//!   deadlines, contact expiry, sweeps, the HEP tracker, sequence windows, replication
//!   liveness. Its zero is the clock's business: the agent's tables clock starts at the
//!   wall clock's reading when the process starts (so its times read like Unix
//!   milliseconds and convert to wall time by one offset); the mesh's starts at 0.
//!
//! Durations are [`std::time::Duration`]: `saturating_add`, `saturating_sub` and
//! `saturating_duration_since` (named as on `std::time::Instant`) take and give one, and the
//! `*_ms` forms remain for code whose durations are configured or stored in milliseconds.
//! Wire, file and database formats keep their bare numbers: a type converts at that edge
//! ([`WallTime::unix_ms`], [`duration_ms`]), never in between.
//!
//! The two convert only explicitly ([`MonoTime::from_unix_ms`] and friends exist for the
//! tables clock, whose readings are anchored at Unix time; a [`WallTime`] never turns into a
//! [`MonoTime`] by accident).

use std::time::Duration;

/// `duration` in whole milliseconds, saturating at `u64::MAX` (for wire and file formats
/// that carry a duration as a number of milliseconds).
pub const fn duration_ms(duration: Duration) -> u64 {
    let ms = duration.as_millis();
    if ms > u64::MAX as u128 {
        u64::MAX
    } else {
        ms as u64
    }
}

/// Wall-clock time: milliseconds since the Unix epoch, as the system clock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WallTime(u64);

impl WallTime {
    /// The epoch itself.
    pub const ZERO: WallTime = WallTime(0);

    pub const fn from_unix_ms(ms: u64) -> Self {
        WallTime(ms)
    }
    pub const fn from_unix_secs(s: u64) -> Self {
        WallTime(s.saturating_mul(1000))
    }
    pub const fn unix_ms(self) -> u64 {
        self.0
    }
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }
    /// `self + ms`, saturating.
    pub const fn plus_ms(self, ms: u64) -> Self {
        WallTime(self.0.saturating_add(ms))
    }
    /// `self - ms`, saturating at the epoch.
    pub const fn minus_ms(self, ms: u64) -> Self {
        WallTime(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `earlier` to `self`, 0 when `earlier` is later.
    pub const fn ms_since(self, earlier: WallTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// `self + duration` (whole milliseconds), saturating.
    pub const fn saturating_add(self, duration: Duration) -> Self {
        self.plus_ms(duration_ms(duration))
    }
    /// `self - duration` (whole milliseconds), saturating at the epoch.
    pub const fn saturating_sub(self, duration: Duration) -> Self {
        self.minus_ms(duration_ms(duration))
    }
    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: WallTime) -> Duration {
        Duration::from_millis(self.ms_since(earlier))
    }
    /// Milliseconds from `self` until `later`, negative once `later` has passed
    /// (saturating at `i64`'s range).
    pub const fn signed_ms_until(self, later: WallTime) -> i64 {
        let difference = later.0 as i128 - self.0 as i128;
        if difference > i64::MAX as i128 {
            i64::MAX
        } else if difference < i64::MIN as i128 {
            i64::MIN
        } else {
            difference as i64
        }
    }
}

/// A reading of a monotonic clock, in milliseconds. Durations between two readings of the
/// same clock are exact whatever the wall clock does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MonoTime(pub u64);

impl MonoTime {
    /// The clock's zero.
    pub const ZERO: MonoTime = MonoTime(0);

    /// A reading of `ms` milliseconds. For clocks anchored at Unix time (the agent's
    /// tables clock) this is the Unix-milliseconds reading.
    pub const fn from_ms(ms: u64) -> Self {
        MonoTime(ms)
    }
    /// Same as [`MonoTime::from_ms`], named for clocks anchored at Unix time.
    pub const fn from_unix_ms(ms: u64) -> Self {
        MonoTime(ms)
    }
    pub const fn from_unix_secs(s: u64) -> Self {
        MonoTime(s.saturating_mul(1000))
    }
    pub const fn ms(self) -> u64 {
        self.0
    }
    /// Same as [`MonoTime::ms`], named for clocks anchored at Unix time.
    pub const fn unix_ms(self) -> u64 {
        self.0
    }
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }
    /// Seconds as the usage tables store them: u32, saturating (until 2106 on a clock
    /// anchored at Unix time).
    pub const fn unix_secs_u32(self) -> u32 {
        let s = self.unix_secs();
        if s > u32::MAX as u64 {
            u32::MAX
        } else {
            s as u32
        }
    }
    /// `self + ms`, saturating.
    pub const fn plus_ms(self, ms: u64) -> Self {
        MonoTime(self.0.saturating_add(ms))
    }
    /// `self - ms`, saturating at the clock's zero.
    pub const fn minus_ms(self, ms: u64) -> Self {
        MonoTime(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `earlier` to `self`, 0 when `earlier` is later.
    pub const fn ms_since(self, earlier: MonoTime) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
    /// `self + duration` (whole milliseconds), saturating.
    pub const fn saturating_add(self, duration: Duration) -> Self {
        self.plus_ms(duration_ms(duration))
    }
    /// `self - duration` (whole milliseconds), saturating at the clock's zero.
    pub const fn saturating_sub(self, duration: Duration) -> Self {
        self.minus_ms(duration_ms(duration))
    }
    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: MonoTime) -> Duration {
        Duration::from_millis(self.ms_since(earlier))
    }
}

/// `time + duration`, `time - duration`, `+=`, `-=`: saturating like
/// [`WallTime::saturating_add`] (never a panic, unlike `std::time::Instant`'s), in whole
/// milliseconds.
macro_rules! duration_arithmetic {
    ($t:ty) => {
        impl std::ops::Add<Duration> for $t {
            type Output = $t;
            fn add(self, duration: Duration) -> $t {
                self.saturating_add(duration)
            }
        }
        impl std::ops::Sub<Duration> for $t {
            type Output = $t;
            fn sub(self, duration: Duration) -> $t {
                self.saturating_sub(duration)
            }
        }
        impl std::ops::AddAssign<Duration> for $t {
            fn add_assign(&mut self, duration: Duration) {
                *self = self.saturating_add(duration);
            }
        }
        impl std::ops::SubAssign<Duration> for $t {
            fn sub_assign(&mut self, duration: Duration) {
                *self = self.saturating_sub(duration);
            }
        }
    };
}
duration_arithmetic!(WallTime);
duration_arithmetic!(MonoTime);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_and_saturate() {
        let wall = WallTime::from_unix_secs(1_700_000_000);
        assert_eq!(wall.unix_ms(), 1_700_000_000_000);
        assert_eq!(wall.plus_ms(250).ms_since(wall), 250);
        assert_eq!(wall.ms_since(wall.plus_ms(1)), 0);
        assert_eq!(WallTime::ZERO.minus_ms(5), WallTime::ZERO);
        assert_eq!(
            WallTime::from_unix_ms(u64::MAX).plus_ms(1).unix_ms(),
            u64::MAX
        );

        let mono = MonoTime::from_ms(5_000);
        assert_eq!(mono.plus_ms(1_000).ms_since(mono), 1_000);
        assert_eq!(MonoTime::from_unix_secs(u64::MAX).unix_secs_u32(), u32::MAX);
        assert_eq!(MonoTime::from_unix_secs(7).unix_secs_u32(), 7);
    }

    #[test]
    fn durations_are_whole_milliseconds_and_saturate() {
        let wall = WallTime::from_unix_ms(10_000);
        let d = Duration::from_millis(1_500);
        assert_eq!(wall.saturating_add(d), WallTime::from_unix_ms(11_500));
        assert_eq!(wall.saturating_sub(d), WallTime::from_unix_ms(8_500));
        assert_eq!(WallTime::ZERO.saturating_sub(d), WallTime::ZERO);
        assert_eq!(wall.saturating_add(Duration::MAX).unix_ms(), u64::MAX);
        assert_eq!(wall.saturating_add(d).saturating_duration_since(wall), d);
        assert_eq!(
            wall.saturating_duration_since(wall.plus_ms(1)),
            Duration::ZERO
        );
        // Sub-millisecond parts are dropped, never rounded up.
        assert_eq!(
            wall.saturating_add(Duration::from_micros(1_999)).unix_ms(),
            10_001
        );
        assert_eq!(wall.signed_ms_until(wall.plus_ms(5)), 5);
        assert_eq!(wall.plus_ms(5).signed_ms_until(wall), -5);
        assert_eq!(
            WallTime::ZERO.signed_ms_until(WallTime::from_unix_ms(u64::MAX)),
            i64::MAX
        );
        assert_eq!(
            WallTime::from_unix_ms(u64::MAX).signed_ms_until(WallTime::ZERO),
            i64::MIN
        );
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
        let mut moved = wall + d;
        assert_eq!(moved, wall.saturating_add(d));
        moved -= d;
        assert_eq!(moved, wall);
        moved += Duration::MAX;
        assert_eq!(moved.unix_ms(), u64::MAX);
        assert_eq!(WallTime::ZERO - d, WallTime::ZERO);

        let mono = MonoTime::from_ms(2_000);
        assert_eq!(mono.saturating_add(d).saturating_duration_since(mono), d);
        assert_eq!(mono.saturating_sub(Duration::from_secs(3)), MonoTime::ZERO);
    }
}
