//! The cluster's time: whether this node's wall clock disagrees with its peers' (issue 16's
//! `CLOCK_SKEW`), and which time licenses should then be judged by. Sans-IO: the clocks are
//! arguments.
//!
//! **Where the peers' clocks come from.** Every record carries its owner's raw wall clock
//! as read when the record was stamped ([`crate::Record::wall_time`]); the owner restamps it
//! at least every [`WALL_STAMP_INTERVAL_MS`] (a record push, about 60 bytes per peer). A
//! replica notes the local monotonic instant each stamp arrived, and estimates a live
//! node's clock now as `stamp + time since it arrived` ([`crate::NodeView::wall_time`]).
//! The estimate is a lower bound: it lags the peer's clock by the time the stamp took to
//! arrive, a round trip for a direct push, up to the stamp interval plus an anti-entropy
//! round for a stamp learned late (on connect, through a relay). [`PEER_CLOCK_SLACK_MS`]
//! covers that lag.
//!
//! **The rule** ([`cluster_time`]). The clocks that vote are this node's and the estimate of
//! every peer that is live or suspect (expired and left nodes do not vote). The cluster's time is
//! their median; with an even number of clocks, the later of the two middle ones. This
//! node's clock is skewed when it is more than the tolerance plus [`PEER_CLOCK_SLACK_MS`]
//! from the cluster's time ([`PeersTime::skewed`]), and licenses are then judged by the
//! cluster's time. So:
//!
//! - one wrong clock among three or more is outvoted, whichever way it is wrong: the honest
//!   nodes keep their own time, the wrong one is `CLOCK_SKEW` and judged by theirs;
//! - a node never follows a minority of its peers, however far off they are;
//! - with two nodes there is no majority, and the later clock wins: a clock set back (what
//!   makes an expired license look valid) is the tampering this defends against, and a
//!   later time only ends a term sooner. A node whose clock is ahead of its only peer's is
//!   not moved back by it (the peer is reported `CLOCK_SKEW` on its side).
//!
//! The license server's time, when the agent has one, is checked separately and wins over
//! the peers' (the agent's business, not this crate's).

use tollgate_events::WallTime;

/// A node restamps its record with its wall clock at least this often (a push to every
/// peer, even when nothing else changed).
pub const WALL_STAMP_INTERVAL_MS: u64 = 10_000;

/// How much later a peer's clock may be than its estimate ([`crate::NodeView::wall_time`]):
/// a stamp may be up to one stamp interval old when it arrives on connect or through a
/// relay, plus the relay's anti-entropy round. Added to the tolerance when this node's clock
/// is compared with its peers'.
pub const PEER_CLOCK_SLACK_MS: u64 = 2 * WALL_STAMP_INTERVAL_MS;

/// This node's clock against its live peers' (see the module documentation for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeersTime {
    /// The cluster's time minus this node's, ms: positive when this node's clock is behind.
    pub offset_ms: i64,
    /// Clocks that voted, this node's included.
    pub clocks: usize,
}

impl PeersTime {
    /// Whether this node's clock is more than `tolerance_ms` (plus [`PEER_CLOCK_SLACK_MS`])
    /// from the cluster's time.
    pub fn skewed(&self, tolerance_ms: u64) -> bool {
        self.offset_ms.unsigned_abs() > tolerance_ms.saturating_add(PEER_CLOCK_SLACK_MS)
    }

    /// The cluster's time when this node's clock reads `local`.
    pub fn at(&self, local: WallTime) -> WallTime {
        if self.offset_ms >= 0 {
            local.plus_ms(self.offset_ms.unsigned_abs())
        } else {
            local.minus_ms(self.offset_ms.unsigned_abs())
        }
    }
}

/// The cluster's time from this node's clock (`local`) and its live peers' estimated clocks
/// (`peers`): the median of all of them, the later middle one for an even count. `None`
/// without a peer (a lone node has nothing to compare with).
pub fn cluster_time(local: WallTime, peers: &[WallTime]) -> Option<PeersTime> {
    if peers.is_empty() {
        return None;
    }
    let mut offsets: Vec<i64> = Vec::with_capacity(peers.len() + 1);
    offsets.push(0);
    offsets.extend(peers.iter().map(|peer| {
        let offset = i128::from(peer.unix_ms()) - i128::from(local.unix_ms());
        i64::try_from(offset).unwrap_or(if offset > 0 { i64::MAX } else { i64::MIN })
    }));
    offsets.sort_unstable();
    // Index len / 2: the middle of an odd count, the later middle of an even one.
    let offset_ms = offsets[offsets.len() / 2];
    Some(PeersTime {
        offset_ms,
        clocks: offsets.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    const NOW: WallTime = WallTime::from_unix_ms(1_900_000_000_000);
    const TOLERANCE_MS: u64 = 300_000;

    /// `(this node's clock, peers' clocks) → (offset, skewed)`, clocks as days from NOW.
    fn check(local_days: i64, peers_days: &[i64], offset_days: i64, skewed: bool) {
        let at = |days: i64| {
            if days >= 0 {
                NOW.plus_ms(days as u64 * DAY_MS)
            } else {
                NOW.minus_ms(days.unsigned_abs() * DAY_MS)
            }
        };
        let peers: Vec<WallTime> = peers_days.iter().map(|&d| at(d)).collect();
        let time = cluster_time(at(local_days), &peers).unwrap();
        assert_eq!(
            time.offset_ms,
            offset_days * DAY_MS as i64,
            "{local_days} vs {peers_days:?}"
        );
        assert_eq!(
            time.skewed(TOLERANCE_MS),
            skewed,
            "{local_days} vs {peers_days:?}"
        );
        assert_eq!(time.at(at(local_days)), at(local_days + offset_days));
    }

    #[test]
    fn one_clock_set_back_among_honest_peers_is_skewed_and_the_honest_ones_are_not() {
        // Two nodes: the one set back follows its peer; the honest one keeps its time.
        check(-270, &[0], 270, true);
        check(0, &[-270], 0, false);
        // Three: outvoted either way.
        check(-270, &[0, 0], 270, true);
        check(0, &[0, -270], 0, false);
        check(0, &[0, 365], 0, false);
        check(365, &[0, 0], -365, true);
    }

    #[test]
    fn a_minority_of_peers_far_off_is_not_followed() {
        // Five nodes, two far off either way: outvoted.
        check(0, &[0, 0, -270, -270], 0, false);
        check(0, &[0, 0, 400, 400], 0, false);
        check(-270, &[0, 0, 0, -270], 270, true);
        // Four, two set back: a tie, and the later clocks win.
        check(0, &[0, -270, -270], 0, false);
        check(-270, &[0, 0, -270], 270, true);
        // A majority that agrees is followed, however far.
        check(0, &[-270, -270, -270], -270, true);
        // With two nodes the later clock wins: an honest node is not moved back.
        check(0, &[-30], 0, false);
        check(0, &[30], 30, true);
    }

    #[test]
    fn within_the_tolerance_and_the_stamps_lag_nothing_is_skewed() {
        let peers = [NOW.minus_ms(TOLERANCE_MS + PEER_CLOCK_SLACK_MS)];
        let time = cluster_time(NOW, &peers).unwrap();
        assert!(!time.skewed(TOLERANCE_MS));
        let peers = [NOW.plus_ms(TOLERANCE_MS + PEER_CLOCK_SLACK_MS + 1)];
        assert!(cluster_time(NOW, &peers).unwrap().skewed(TOLERANCE_MS));
        assert_eq!(cluster_time(NOW, &[]), None);
    }

    #[test]
    fn clocks_at_the_ends_of_time_do_not_overflow() {
        let time = cluster_time(WallTime::ZERO, &[WallTime::from_unix_ms(u64::MAX)]).unwrap();
        assert_eq!(time.offset_ms, i64::MAX);
        assert_eq!(time.at(WallTime::ZERO).unix_ms(), i64::MAX as u64);
        let time = cluster_time(WallTime::from_unix_ms(u64::MAX), &[WallTime::ZERO]).unwrap();
        assert_eq!(time.offset_ms, 0, "the later clock of two is this one");
    }
}
