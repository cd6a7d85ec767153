//! Bad-token throttling per source address, sans-IO (time passed in).
//!
//! An address that sends more than [`BAD_TOKEN_LIMIT`] requests with a missing or unknown
//! token within [`BAD_TOKEN_WINDOW_MS`] is throttled for [`THROTTLE_MS`]: every client API
//! request from it is answered `429` with `Retry-After` (seconds), before any database
//! work. Valid tokens from other addresses are never affected. At most
//! [`ADDRESS_COUNT_MAX`] addresses are tracked; when full, expired entries are dropped, then
//! the oldest.
//!
//! The admin API's login uses a second instance the same way: more than
//! [`BAD_TOKEN_LIMIT`] failed logins from one address within the window, and its logins
//! answer `429` with `Retry-After` for [`THROTTLE_MS`], before any password is checked; a
//! successful login forgets the address's failures ([`Throttle::forgive`]).
//!
//! Refusals are not logged one by one: [`Throttle::take_summary`] hands the server one line
//! per interval (how many bad tokens, from how many addresses, how many throttled).

use std::collections::HashMap;
use std::net::IpAddr;

/// Bad tokens allowed per address per window.
pub const BAD_TOKEN_LIMIT: u32 = 10;
/// The counting window.
pub const BAD_TOKEN_WINDOW_MS: u64 = 60_000;
/// How long an address stays throttled.
pub const THROTTLE_MS: u64 = 60_000;
/// Most addresses tracked at once.
pub const ADDRESS_COUNT_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start_ms: u64,
    failures: u32,
    blocked_until_ms: u64,
}

/// What happened since the last summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub bad_tokens: u64,
    pub addresses: usize,
    pub throttled_addresses: u64,
    pub throttled_requests: u64,
}

#[derive(Debug, Default)]
pub struct Throttle {
    entries: HashMap<IpAddr, Entry>,
    summary: Summary,
    summary_addresses: std::collections::HashSet<IpAddr>,
}

impl Throttle {
    /// `Some(retry_after_s)` when `address` is throttled at `now_ms`.
    pub fn check(&mut self, address: IpAddr, now_ms: u64) -> Option<u64> {
        let address = address.to_canonical();
        let entry = self.entries.get(&address)?;
        if entry.blocked_until_ms > now_ms {
            self.summary.throttled_requests += 1;
            Some((entry.blocked_until_ms - now_ms).div_ceil(1000).max(1))
        } else {
            None
        }
    }

    /// Records a request with a missing or unknown token; `true` when this one throttles
    /// the address.
    pub fn bad_token(&mut self, address: IpAddr, now_ms: u64) -> bool {
        let address = address.to_canonical();
        self.summary.bad_tokens += 1;
        if self.summary_addresses.len() < ADDRESS_COUNT_MAX {
            self.summary_addresses.insert(address);
        }
        if !self.entries.contains_key(&address) && self.entries.len() >= ADDRESS_COUNT_MAX {
            self.evict(now_ms);
        }
        let entry = self.entries.entry(address).or_insert(Entry {
            window_start_ms: now_ms,
            failures: 0,
            blocked_until_ms: 0,
        });
        if now_ms.saturating_sub(entry.window_start_ms) >= BAD_TOKEN_WINDOW_MS {
            entry.window_start_ms = now_ms;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures > BAD_TOKEN_LIMIT && entry.blocked_until_ms <= now_ms {
            entry.blocked_until_ms = now_ms + THROTTLE_MS;
            entry.window_start_ms = now_ms;
            entry.failures = 0;
            self.summary.throttled_addresses += 1;
            return true;
        }
        false
    }

    /// Forgets `address`'s failures (a successful login), unless it is throttled now.
    pub fn forgive(&mut self, address: IpAddr, now_ms: u64) {
        let address = address.to_canonical();
        if self
            .entries
            .get(&address)
            .is_some_and(|e| e.blocked_until_ms <= now_ms)
        {
            self.entries.remove(&address);
        }
    }

    fn evict(&mut self, now_ms: u64) {
        self.entries.retain(|_, e| {
            e.blocked_until_ms > now_ms
                || now_ms.saturating_sub(e.window_start_ms) < BAD_TOKEN_WINDOW_MS
        });
        if self.entries.len() >= ADDRESS_COUNT_MAX
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.window_start_ms.max(e.blocked_until_ms))
                .map(|(a, _)| *a)
        {
            self.entries.remove(&oldest);
        }
    }

    /// The counts since the previous call (none when nothing happened).
    pub fn take_summary(&mut self) -> Option<Summary> {
        self.summary.addresses = self.summary_addresses.len();
        self.summary_addresses.clear();
        let summary = std::mem::take(&mut self.summary);
        (summary != Summary::default()).then_some(summary)
    }

    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_900_000_000_000;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn an_address_is_throttled_after_the_limit_and_released_after_the_pause() {
        let mut t = Throttle::default();
        for i in 0..BAD_TOKEN_LIMIT {
            assert!(!t.bad_token(addr(1), T + u64::from(i)));
            assert_eq!(t.check(addr(1), T + u64::from(i)), None);
        }
        assert!(t.bad_token(addr(1), T + 100), "one more throttles");
        assert_eq!(t.check(addr(1), T + 100), Some(60));
        assert_eq!(t.check(addr(1), T + 59_500), Some(1));
        assert_eq!(
            t.check(addr(2), T + 100),
            None,
            "other addresses are not affected"
        );
        assert_eq!(t.check(addr(1), T + 100 + THROTTLE_MS), None, "released");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            t.check(mapped, T + 200),
            Some(60),
            "IPv4-mapped is the same address"
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_never_throttle() {
        let mut t = Throttle::default();
        for i in 0..100 {
            assert!(!t.bad_token(addr(1), T + i * (BAD_TOKEN_WINDOW_MS / 5)));
        }
    }

    #[test]
    fn the_summary_counts_and_resets() {
        let mut t = Throttle::default();
        assert_eq!(t.take_summary(), None);
        for i in 0..=BAD_TOKEN_LIMIT {
            t.bad_token(addr(1), T + u64::from(i));
        }
        t.bad_token(addr(2), T);
        t.check(addr(1), T + 20);
        let s = t.take_summary().unwrap();
        assert_eq!(
            (
                s.bad_tokens,
                s.addresses,
                s.throttled_addresses,
                s.throttled_requests
            ),
            (12, 2, 1, 1)
        );
        assert_eq!(t.take_summary(), None);
    }

    #[test]
    fn forgiving_clears_failures_but_not_a_throttle() {
        let mut t = Throttle::default();
        for i in 0..BAD_TOKEN_LIMIT {
            t.bad_token(addr(1), T + u64::from(i));
        }
        t.forgive(addr(1), T + 20);
        assert!(!t.bad_token(addr(1), T + 21), "counting starts again");
        for i in 0..BAD_TOKEN_LIMIT {
            t.bad_token(addr(1), T + 30 + u64::from(i));
        }
        assert_eq!(t.check(addr(1), T + 100), Some(60));
        t.forgive(addr(1), T + 100);
        assert_eq!(t.check(addr(1), T + 100), Some(60), "still throttled");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Throttle::default();
        for i in 0..(ADDRESS_COUNT_MAX as u32 + 50) {
            t.bad_token(IpAddr::from(i.to_be_bytes()), T);
        }
        assert!(t.tracked() <= ADDRESS_COUNT_MAX);
    }
}
