//! The lease rule: given the license's current document, its contract, the signing key and
//! the time, what does a lease request get? Pure: no database, no clock, no key material.
//!
//! 1. **Lapsed and over**: a lapsed contract whose document is past its `valid_until` (term
//!    or subscription) gets nothing: 403 `contract_lapsed`.
//! 2. **Renewal**: otherwise the answer is the current document renewed
//!    ([`Document::renewed`]): serial + 1, issued now, `signature_valid_until = now +
//!    lease`, and, for a subscription whose contract is active, `valid_until` rolled forward
//!    to at least `now + subscription period`. A lapsed contract gets its lease renewed but
//!    never more validity: a lapsed subscription ends at its `valid_until`, and a perpetual
//!    license stays perpetual (cut one off by revoking its tokens).
//! 3. **Reuse** (idempotence): if the current document was signed with the current key
//!    less than `reuse_window` ago and renewing it now would move its lease end and its
//!    `valid_until` by less than `reuse_window`, the current document is answered as is:
//!    same serial, same bytes. Repeated or concurrent requests from a cluster's nodes thus
//!    do not inflate the serial, while a change of contract, key or lease length is
//!    answered with a new serial at once.

use std::time::Duration;

use tollgate_events::WallTime;
use tollgate_license::{Document, DocumentError, KeyId, Kind};
use tollgate_license_client::Contract;

/// The server's lease settings (from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRules {
    /// `signature_valid_until = now + lease` (default 14 days).
    pub lease: Duration,
    /// An active subscription's `valid_until` is at least `now + subscription_period`
    /// (default 30 days).
    pub subscription_period: Duration,
    /// The reuse window (default 10 minutes; zero signs every request anew).
    pub reuse_window: Duration,
}

/// What a lease request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Answer the current document unchanged.
    Reuse,
    /// Sign this document (serial + 1), store it, answer it.
    Sign(Box<Document>),
    /// 403 `contract_lapsed`: the contract lapsed and the license's validity is over.
    Lapsed,
}

/// Decides a lease request (see the module doc).
pub fn decide(
    current: &Document,
    contract: Contract,
    rules: &LeaseRules,
    signing_key: KeyId,
    now: WallTime,
) -> Result<LeaseDecision, DocumentError> {
    let over = match current.kind {
        Kind::Perpetual => false,
        Kind::Term | Kind::Subscription => current.valid_until.is_none_or(|u| now >= u),
    };
    if contract == Contract::Lapsed && over {
        return Ok(LeaseDecision::Lapsed);
    }
    let period = (contract == Contract::Active).then_some(rules.subscription_period);
    let next = current.renewed(now, rules.lease, period)?;
    let within = |a: Option<WallTime>, b: Option<WallTime>| match (a, b) {
        (Some(a), Some(b)) => a.max(b).saturating_duration_since(a.min(b)) < rules.reuse_window,
        (None, None) => true,
        _ => false,
    };
    let reuse = current.key_id == signing_key
        && current.issued_at <= now
        && now.saturating_duration_since(current.issued_at) < rules.reuse_window
        && within(current.signature_valid_until, next.signature_valid_until)
        && within(current.valid_until, next.valid_until);
    Ok(if reuse {
        LeaseDecision::Reuse
    } else {
        LeaseDecision::Sign(Box::new(next))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_license::timestamp::DAY;
    use tollgate_license::{LicenseSpec, SigningKey};

    const NOW: WallTime = WallTime::from_unix_ms(1_900_000_000_000);
    const MS: Duration = Duration::from_millis(1);
    const MINUTE: Duration = Duration::from_secs(60);
    const RULES: LeaseRules = LeaseRules {
        lease: DAY.saturating_mul(14),
        subscription_period: DAY.saturating_mul(30),
        reuse_window: MINUTE.saturating_mul(10),
    };

    fn key() -> KeyId {
        SigningKey::from_seed(&[1; 32]).key_id()
    }

    /// A document of `kind` issued at `issued`, valid until `valid_until` (ms), with a
    /// lease of `RULES.lease`.
    fn document(kind: Kind, issued: WallTime, valid_until: Option<WallTime>) -> Document {
        let spec = LicenseSpec::parse(
            "license_key = \"K\"\ncustomer = \"C\"\nkind = \"perpetual\"\nserial = 5\n\
             valid_from = \"2020-01-01T00:00:00Z\"\n",
        )
        .unwrap();
        let mut d = spec.to_document(key(), issued).unwrap();
        d.kind = kind;
        d.valid_until = valid_until;
        d.signature_valid_until = Some(issued + RULES.lease);
        d.validate().unwrap();
        d
    }

    fn signed(decision: LeaseDecision) -> Document {
        match decision {
            LeaseDecision::Sign(d) => *d,
            other => panic!("expected a new document, got {other:?}"),
        }
    }

    #[test]
    fn active_subscription_rolls_forward() {
        let current = document(Kind::Subscription, NOW - DAY, Some(NOW + 5 * DAY));
        let next = signed(decide(&current, Contract::Active, &RULES, key(), NOW).unwrap());
        assert_eq!(next.serial, 6);
        assert_eq!(next.issued_at, NOW);
        assert_eq!(next.signature_valid_until, Some(NOW + 14 * DAY));
        assert_eq!(next.valid_until, Some(NOW + 30 * DAY));
    }

    #[test]
    fn active_subscription_never_shrinks() {
        let far = NOW + 300 * DAY;
        let current = document(Kind::Subscription, NOW - DAY, Some(far));
        let next = signed(decide(&current, Contract::Active, &RULES, key(), NOW).unwrap());
        assert_eq!(next.valid_until, Some(far));
    }

    #[test]
    fn lapsed_subscription_keeps_its_valid_until_then_ends() {
        let until = NOW + 5 * DAY;
        let current = document(Kind::Subscription, NOW - DAY, Some(until));
        let next = signed(decide(&current, Contract::Lapsed, &RULES, key(), NOW).unwrap());
        assert_eq!(next.valid_until, Some(until), "not rolled forward");
        assert_eq!(next.signature_valid_until, Some(NOW + 14 * DAY));
        assert_eq!(next.serial, 6);
        // At valid_until and after: nothing left to sign.
        for at in [until, until + MS, until + 100 * DAY] {
            assert_eq!(
                decide(&current, Contract::Lapsed, &RULES, key(), at).unwrap(),
                LeaseDecision::Lapsed
            );
        }
        // Brought back to current: renewed and rolled forward again.
        let next = signed(decide(&current, Contract::Active, &RULES, key(), until + DAY).unwrap());
        assert_eq!(next.valid_until, Some(until + DAY + 30 * DAY));
    }

    #[test]
    fn term_keeps_its_validity_whatever_the_contract() {
        let until = NOW + 20 * DAY;
        let current = document(Kind::Term, NOW - DAY, Some(until));
        for contract in [Contract::Active, Contract::Lapsed] {
            let next = signed(decide(&current, contract, &RULES, key(), NOW).unwrap());
            assert_eq!(next.valid_until, Some(until));
        }
        assert_eq!(
            decide(&current, Contract::Lapsed, &RULES, key(), until).unwrap(),
            LeaseDecision::Lapsed
        );
        // An active contract still gets its (expired) term license re-signed: the agent
        // shows EXPIRED with the vendor's latest document.
        assert!(matches!(
            decide(&current, Contract::Active, &RULES, key(), until + DAY).unwrap(),
            LeaseDecision::Sign(_)
        ));
    }

    #[test]
    fn perpetual_is_renewed_even_when_lapsed() {
        let current = document(Kind::Perpetual, NOW - DAY, None);
        for contract in [Contract::Active, Contract::Lapsed] {
            let next = signed(decide(&current, contract, &RULES, key(), NOW).unwrap());
            assert_eq!(next.valid_until, None);
            assert_eq!(next.signature_valid_until, Some(NOW + 14 * DAY));
        }
    }

    /// Within the window with nothing to change: the same document. Each change that
    /// matters: a new serial.
    #[test]
    fn reuse_only_when_nothing_would_change() {
        let current = document(Kind::Subscription, NOW, Some(NOW + 30 * DAY));
        let at = |minutes: u32| NOW + minutes * MINUTE;
        assert_eq!(
            decide(&current, Contract::Active, &RULES, key(), at(0)).unwrap(),
            LeaseDecision::Reuse
        );
        assert_eq!(
            decide(&current, Contract::Active, &RULES, key(), at(9)).unwrap(),
            LeaseDecision::Reuse
        );
        // The window has passed.
        assert!(matches!(
            decide(&current, Contract::Active, &RULES, key(), at(10)).unwrap(),
            LeaseDecision::Sign(_)
        ));
        // A new signing key.
        let other = SigningKey::from_seed(&[2; 32]).key_id();
        assert!(matches!(
            decide(&current, Contract::Active, &RULES, other, at(1)).unwrap(),
            LeaseDecision::Sign(_)
        ));
        // A longer lease configured since.
        let longer = LeaseRules {
            lease: 20 * DAY,
            ..RULES
        };
        assert!(matches!(
            decide(&current, Contract::Active, &longer, key(), at(1)).unwrap(),
            LeaseDecision::Sign(_)
        ));
        // No reuse window at all.
        let never = LeaseRules {
            reuse_window: Duration::ZERO,
            ..RULES
        };
        assert!(matches!(
            decide(&current, Contract::Active, &never, key(), at(0)).unwrap(),
            LeaseDecision::Sign(_)
        ));
        // A clock that went back before the document's issue time.
        assert!(matches!(
            decide(&current, Contract::Active, &RULES, key(), NOW - MINUTE).unwrap(),
            LeaseDecision::Sign(_)
        ));
    }

    #[test]
    fn reactivated_contract_is_not_answered_from_the_reuse_window() {
        // Signed a minute ago while lapsed (not rolled forward); the vendor marks the
        // contract active: the next lease rolls forward at once.
        let lapsed = document(Kind::Subscription, NOW, Some(NOW + 3 * DAY));
        let next = signed(decide(&lapsed, Contract::Active, &RULES, key(), NOW + MINUTE).unwrap());
        assert_eq!(next.valid_until, Some(NOW + MINUTE + 30 * DAY));
        // While still lapsed, it is reused.
        assert_eq!(
            decide(&lapsed, Contract::Lapsed, &RULES, key(), NOW + MINUTE).unwrap(),
            LeaseDecision::Reuse
        );
    }

    #[test]
    fn serial_exhaustion_is_an_error_not_a_panic() {
        let mut current = document(Kind::Perpetual, NOW - DAY, None);
        current.serial = tollgate_license::SERIAL_MAX;
        assert!(decide(&current, Contract::Active, &RULES, key(), NOW).is_err());
    }
}
