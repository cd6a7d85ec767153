//! Whom to dial and when: seeds and the replica's dial targets, one attempt in flight per
//! target, exponential backoff with jitter after failures. Clock-free (`now` in ms is an
//! argument) so it is tested without sockets.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use tollgate_replication::MonoTime;

/// The first retry after a failure waits about this long (ms)…
pub const BACKOFF_MIN_MS: u64 = 250;
/// …doubling at each failure up to this (ms).
pub const BACKOFF_MAX_MS: u64 = 8_000;
/// Most dials in flight at once.
pub const DIALS_IN_FLIGHT_MAX: usize = 64;

/// What is dialed: a configured seed (its node id unknown until the handshake) or a node
/// learned from its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DialKey {
    Seed(SocketAddr),
    Node(String),
}

impl std::fmt::Display for DialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialKey::Seed(addr) => write!(f, "seed {addr}"),
            DialKey::Node(node_id) => write!(f, "node {node_id}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next_at: MonoTime,
}

#[derive(Debug, Default)]
pub(crate) struct Dialer {
    backoff: HashMap<DialKey, Backoff>,
    in_flight: HashSet<DialKey>,
}

impl Dialer {
    /// Whether `key` may be dialed at `now`: not in flight, its backoff (if any) over, and
    /// room for one more dial.
    pub(crate) fn due(&self, key: &DialKey, now: MonoTime) -> bool {
        self.in_flight.len() < DIALS_IN_FLIGHT_MAX
            && !self.in_flight.contains(key)
            && self.backoff.get(key).is_none_or(|b| now >= b.next_at)
    }

    pub(crate) fn started(&mut self, key: DialKey) {
        debug_assert!(!self.in_flight.contains(&key));
        self.in_flight.insert(key);
    }

    /// The attempt failed (or its connection was refused): wait before the next one.
    /// `unit` is a random number in `[0, 1)` for the jitter. Returns the failures in a row.
    pub(crate) fn failed(&mut self, key: &DialKey, now: MonoTime, unit: f64) -> u32 {
        self.in_flight.remove(key);
        let backoff = self.backoff.entry(key.clone()).or_insert(Backoff {
            failures: 0,
            next_at: now,
        });
        backoff.failures = backoff.failures.saturating_add(1);
        backoff.next_at = now.plus_ms(delay_ms(backoff.failures, unit));
        backoff.failures
    }

    /// The attempt connected; whether it works is not known yet (the peer may close it at
    /// once, as a duplicate): the backoff stays until [`Dialer::succeeded`].
    pub(crate) fn connected(&mut self, key: &DialKey) {
        self.in_flight.remove(key);
    }

    /// The connection proved itself (the peer sent a frame): the next failure starts from
    /// the shortest delay again.
    pub(crate) fn succeeded(&mut self, key: &DialKey) {
        self.in_flight.remove(key);
        self.backoff.remove(key);
    }

    /// Forgets backoff state of targets no longer wanted (bounds the table).
    pub(crate) fn retain(&mut self, wanted: impl Fn(&DialKey) -> bool) {
        self.backoff.retain(|key, _| wanted(key));
    }

    /// The earliest instant a wanted target's backoff ends, if any is waiting.
    pub(crate) fn next_due(&self) -> Option<MonoTime> {
        self.backoff
            .iter()
            .filter(|(key, _)| !self.in_flight.contains(*key))
            .map(|(_, b)| b.next_at)
            .min()
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Delay after `failures` consecutive failures: `BACKOFF_MIN_MS · 2^(failures-1)`, capped at
/// `BACKOFF_MAX_MS`, then drawn uniformly from its upper half ("equal jitter"), so that
/// nodes restarted together do not dial in lockstep.
pub(crate) fn delay_ms(failures: u32, unit: f64) -> u64 {
    debug_assert!((0.0..1.0).contains(&unit));
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_MIN_MS
        .saturating_mul(1 << exponent)
        .min(BACKOFF_MAX_MS);
    let half = ceiling / 2;
    half + (half as f64 * unit) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(port: u16) -> DialKey {
        DialKey::Seed(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let cases = [
            (1, 125, 250),
            (2, 250, 500),
            (3, 500, 1000),
            (6, 4000, 8000),
        ];
        for (failures, low, high) in cases {
            assert_eq!(delay_ms(failures, 0.0), low, "{failures}");
            assert!(delay_ms(failures, 0.999) < high && delay_ms(failures, 0.999) >= low);
        }
        for failures in [7, 20, u32::MAX] {
            assert_eq!(delay_ms(failures, 0.0), BACKOFF_MAX_MS / 2);
        }
    }

    #[test]
    fn a_target_is_dialed_once_at_a_time_and_waits_after_a_failure() {
        let mut dialer = Dialer::default();
        let key = seed(1);
        assert!(dialer.due(&key, MonoTime(0)));
        dialer.started(key.clone());
        assert!(!dialer.due(&key, MonoTime(0)), "in flight");
        dialer.failed(&key, MonoTime(1_000), 0.0);
        assert!(!dialer.due(&key, MonoTime(1_100)));
        assert!(dialer.due(&key, MonoTime(1_125)));
        assert_eq!(dialer.next_due(), Some(MonoTime(1_125)));
        dialer.started(key.clone());
        dialer.failed(&key, MonoTime(1_125), 0.0);
        assert_eq!(dialer.next_due(), Some(MonoTime(1_125 + 250)));
        dialer.started(key.clone());
        dialer.connected(&key);
        assert!(
            !dialer.due(&key, MonoTime(1_125 + 249)),
            "connected is not yet a success"
        );
        dialer.failed(&key, MonoTime(2_000), 0.0);
        assert_eq!(
            dialer.next_due(),
            Some(MonoTime(2_000 + 500)),
            "the failures add up"
        );
        dialer.started(key.clone());
        dialer.connected(&key);
        dialer.succeeded(&key);
        assert!(dialer.due(&key, MonoTime(0)), "success forgets the backoff");
        assert_eq!(dialer.next_due(), None);
    }

    #[test]
    fn dials_in_flight_are_bounded_and_stale_targets_forgotten() {
        let mut dialer = Dialer::default();
        for port in 0..DIALS_IN_FLIGHT_MAX as u16 {
            dialer.started(seed(port));
        }
        assert!(!dialer.due(&seed(9_999), MonoTime(0)));
        assert_eq!(dialer.in_flight(), DIALS_IN_FLIGHT_MAX);
        dialer.failed(&seed(0), MonoTime(0), 0.5);
        dialer.failed(&DialKey::Node("gone".into()), MonoTime(0), 0.5);
        dialer.retain(|key| matches!(key, DialKey::Seed(_)));
        assert!(dialer.next_due().is_some());
        dialer.retain(|_| false);
        assert_eq!(dialer.next_due(), None);
    }
}
