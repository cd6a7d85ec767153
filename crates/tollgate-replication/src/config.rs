//! The replica's settings: timings, the expired rule, the anti-entropy mode.

use crate::record::{RecordError, validate_address};

/// What an expired node's usage counts for in the aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredRule {
    /// Dropped from every sum the moment the node expires (default). A partition lets each
    /// side admit up to the whole license once the other side has expired.
    Drop,
    /// Kept in the sums, at its last known figures, for `hold_ms` after expiry, then dropped.
    /// Pick `hold_ms` at least as long as a partition you want to be unable to exploit: while
    /// held, the far side's calls still count against the license on this side.
    HoldFor { hold_ms: u64 },
}

impl ExpiredRule {
    /// How long an expired node's usage still counts, ms.
    pub const fn hold_ms(self) -> u64 {
        match self {
            ExpiredRule::Drop => 0,
            ExpiredRule::HoldFor { hold_ms } => hold_ms,
        }
    }
}

/// What a periodic anti-entropy round sends to each chosen peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AntiEntropy {
    /// The versions this node holds ([`crate::Frame::Digest`]); the peer answers with the
    /// records it holds newer. Pull only: cheaper in a full mesh, where tables rarely differ.
    Digest,
    /// The whole table ([`crate::Frame::Table`]), pushed.
    Table,
}

/// Settings of one [`crate::Replica`]. Every duration is in milliseconds of the `now` the IO
/// layer passes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's mesh address as peers should dial it (carried in its record).
    pub address: String,
    /// Own-record pushes are coalesced: at most one every `push_interval_ms`.
    pub push_interval_ms: u64,
    /// Each peer gets a heartbeat about this often: the pair's leader sends one every
    /// interval, the other node answers it at once (see `Replica`'s heartbeat scheduling).
    pub heartbeat_interval_ms: u64,
    /// A node whose record has not advanced for this long is suspect (still counted).
    pub suspect_after_ms: u64,
    /// A node whose record has not advanced for this long is expired (see `expired_rule`).
    pub expire_after_ms: u64,
    pub expired_rule: ExpiredRule,
    /// How long an expired node's record stays in the table, shown as expired and not
    /// counted (unless `expired_rule` still holds it), before it is removed: so that
    /// `nodes_expired`, the API and the alerts built on them see a node that died. The
    /// longer of this and the hold applies.
    pub expired_visible_ms: u64,
    /// How long a tombstone keeps an expired record from coming back on stale relays.
    pub tombstone_ttl_ms: u64,
    pub anti_entropy: AntiEntropy,
    pub anti_entropy_interval_ms: u64,
    /// Peers chosen at random for each anti-entropy round.
    pub anti_entropy_fanout: usize,
    /// Seed of the replica's random choices (anti-entropy peers, jitter). Give every node a
    /// different one; the simulation derives them from its own seed.
    pub rng_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: String::new(),
            push_interval_ms: 100,
            heartbeat_interval_ms: 1_500,
            suspect_after_ms: 3_000,
            expire_after_ms: 10_000,
            expired_rule: ExpiredRule::Drop,
            expired_visible_ms: 3_600_000,
            tombstone_ttl_ms: 60_000,
            anti_entropy: AntiEntropy::Digest,
            anti_entropy_interval_ms: 5_000,
            anti_entropy_fanout: 2,
            rng_seed: 0,
        }
    }
}

/// Most peers chosen for one anti-entropy round.
pub const ANTI_ENTROPY_FANOUT_MAX: usize = 16;

/// Why a [`Config`] or node id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid node id: {0}")]
    NodeId(RecordError),
    #[error("invalid address: {0}")]
    Address(RecordError),
    #[error("{name} must be more than 0")]
    Zero { name: &'static str },
    #[error("heartbeat_interval_ms must be less than suspect_after_ms")]
    HeartbeatNotBelowSuspect,
    #[error("suspect_after_ms must be less than expire_after_ms")]
    SuspectNotBelowExpire,
    #[error("tombstone_ttl_ms must be at least expire_after_ms")]
    TombstoneShorterThanExpiry,
    #[error("anti_entropy_fanout must be 1..={ANTI_ENTROPY_FANOUT_MAX}")]
    Fanout,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_address(&self.address).map_err(ConfigError::Address)?;
        for (name, value) in [
            ("push_interval_ms", self.push_interval_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("anti_entropy_interval_ms", self.anti_entropy_interval_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        if self.heartbeat_interval_ms >= self.suspect_after_ms {
            return Err(ConfigError::HeartbeatNotBelowSuspect);
        }
        if self.suspect_after_ms >= self.expire_after_ms {
            return Err(ConfigError::SuspectNotBelowExpire);
        }
        if self.tombstone_ttl_ms < self.expire_after_ms {
            return Err(ConfigError::TombstoneShorterThanExpiry);
        }
        if !(1..=ANTI_ENTROPY_FANOUT_MAX).contains(&self.anti_entropy_fanout) {
            return Err(ConfigError::Fanout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ordered() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.push_interval_ms < config.heartbeat_interval_ms);
    }

    #[test]
    fn inverted_timings_are_refused() {
        let config = Config {
            suspect_after_ms: 10_000,
            expire_after_ms: 3_000,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::SuspectNotBelowExpire));
        let config = Config {
            heartbeat_interval_ms: 3_000,
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::HeartbeatNotBelowSuspect)
        );
        let config = Config {
            anti_entropy_fanout: 0,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::Fanout));
    }
}
