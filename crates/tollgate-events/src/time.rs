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
//! The two convert only explicitly ([`MonoTime::from_unix_ms`] and friends exist for the
//! tables clock, whose readings are anchored at Unix time; a [`WallTime`] never turns into a
//! [`MonoTime`] by accident).

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
}

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
}
