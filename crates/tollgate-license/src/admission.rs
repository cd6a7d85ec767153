//! Admission of new calls: a plan computed from an evaluation (control plane), and a gate
//! that answers from one atomic load (data plane).
//!
//! **Rules** (the plan is derived by [`crate::evaluate`]):
//! - Only new calls are decided; running calls are never touched.
//! - "Calls now" is the number of active calls already counted, not including the call
//!   being asked about. With a calls limit `L` and grace `g`%, new calls are admitted while
//!   `calls_now + 1 <= floor(L × (100 + g) / 100)` (the *admit max*): limit 100, grace 10
//!   → the 110th call (109 running) is admitted, the 111th (110 running) is denied.
//! - Emergency calls are admitted whatever the state when the policy's `emergency_exempt`
//!   is set (and always when there is no acceptable license).
//! - Enforce mode: denied with the status code when the license is missing, invalid,
//!   rolled back, for another host, not yet valid, expired or lease-expired; denied with
//!   `OVER_LIMIT` beyond the admit max.
//! - Warn mode: admitted, except past `valid_until` of a term or subscription license
//!   (`EXPIRED`): the product stops taking new non-emergency calls.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::StatusCode;

/// The answer for one new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Admit,
    /// Denied, with the stable code (`deny <CODE>` on the wire).
    Deny(StatusCode),
}

impl Decision {
    pub fn is_admit(self) -> bool {
        self == Decision::Admit
    }

    /// `ok` or `deny <CODE>`, as the `admit` query is answered.
    pub fn as_reply(self) -> &'static str {
        match self {
            Decision::Admit => "ok",
            Decision::Deny(code) => match code {
                StatusCode::Ok => "deny OK",
                StatusCode::Warning => "deny WARNING",
                StatusCode::OverLimit => "deny OVER_LIMIT",
                StatusCode::LeaseExpired => "deny LEASE_EXPIRED",
                StatusCode::Expired => "deny EXPIRED",
                StatusCode::NotYetValid => "deny NOT_YET_VALID",
                StatusCode::HostMismatch => "deny HOST_MISMATCH",
                StatusCode::Rollback => "deny ROLLBACK",
                StatusCode::Invalid => "deny INVALID",
                StatusCode::NoLicense => "deny NO_LICENSE",
            },
        }
    }
}

/// Everything a decision needs, precomputed from an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct AdmissionPlan {
    /// Deny every new call (but exempt emergency calls) with this code.
    pub deny: Option<StatusCode>,
    /// Admit emergency calls before any other check.
    pub emergency_exempt: bool,
    /// Deny new calls with `OVER_LIMIT` when `calls_now >= calls_admit_max` (`None`: no
    /// check). At most [`AdmissionPlan::CALLS_ADMIT_MAX_LIMIT`].
    pub calls_admit_max: Option<u64>,
}

impl AdmissionPlan {
    /// Admits everything (warn mode, or no license in warn mode).
    pub const ADMIT_ALL: AdmissionPlan = AdmissionPlan {
        deny: None,
        emergency_exempt: true,
        calls_admit_max: None,
    };

    /// The largest `calls_admit_max` the gate can hold (2^48 − 1); larger values are clamped
    /// (a license limit is at most 2^40, × 2 with the largest grace).
    pub const CALLS_ADMIT_MAX_LIMIT: u64 = (1 << 48) - 1;

    /// Decides one new call, `calls_now` calls already running.
    #[inline]
    pub fn decide(&self, calls_now: u64, emergency: bool) -> Decision {
        if emergency && self.emergency_exempt {
            return Decision::Admit;
        }
        if let Some(code) = self.deny {
            return Decision::Deny(code);
        }
        match self.calls_admit_max {
            Some(max) if calls_now >= max => Decision::Deny(StatusCode::OverLimit),
            _ => Decision::Admit,
        }
    }

    /// One word: bits 0..48 admit max, bit 48 calls check on, bit 49 emergency exempt,
    /// bits 56..64 deny code + 1 (0 = none).
    fn pack(&self) -> u64 {
        let mut word = 0;
        if let Some(max) = self.calls_admit_max {
            word |= max.min(Self::CALLS_ADMIT_MAX_LIMIT) | CHECK_CALLS;
        }
        if self.emergency_exempt {
            word |= EMERGENCY_EXEMPT;
        }
        if let Some(code) = self.deny {
            word |= (u64::from(code as u8) + 1) << DENY_SHIFT;
        }
        word
    }

    fn unpack(word: u64) -> AdmissionPlan {
        AdmissionPlan {
            deny: deny_code(word),
            emergency_exempt: word & EMERGENCY_EXEMPT != 0,
            calls_admit_max: (word & CHECK_CALLS != 0).then_some(word & MAX_MASK),
        }
    }
}

impl Default for AdmissionPlan {
    fn default() -> Self {
        AdmissionPlan::ADMIT_ALL
    }
}

const MAX_MASK: u64 = AdmissionPlan::CALLS_ADMIT_MAX_LIMIT;
const CHECK_CALLS: u64 = 1 << 48;
const EMERGENCY_EXEMPT: u64 = 1 << 49;
const DENY_SHIFT: u32 = 56;

#[inline]
fn deny_code(word: u64) -> Option<StatusCode> {
    let code = (word >> DENY_SHIFT) as u8;
    code.checked_sub(1).and_then(StatusCode::from_u8)
}

/// The admission decision as one atomic word, shared between the thread that evaluates
/// (writes with [`AdmissionGate::set`] after each evaluation) and the ingest threads that
/// answer `admit` ([`AdmissionGate::decide`]): one relaxed load and a few compares, no lock,
/// no allocation. A reader sees either the old plan or the new one, never a mix.
#[derive(Debug)]
pub struct AdmissionGate {
    word: AtomicU64,
}

impl AdmissionGate {
    pub fn new(plan: AdmissionPlan) -> AdmissionGate {
        AdmissionGate {
            word: AtomicU64::new(plan.pack()),
        }
    }

    /// Publishes a new plan.
    pub fn set(&self, plan: AdmissionPlan) {
        self.word.store(plan.pack(), Ordering::Relaxed);
    }

    /// The current plan.
    pub fn plan(&self) -> AdmissionPlan {
        AdmissionPlan::unpack(self.word.load(Ordering::Relaxed))
    }

    /// Decides one new call, `calls_now` calls already running (see the module doc).
    #[inline]
    pub fn decide(&self, calls_now: u64, emergency: bool) -> Decision {
        self.decide_with(emergency, || calls_now)
    }

    /// Like [`AdmissionGate::decide`], reading the running calls only when the plan needs
    /// them (e.g. a sum over shards).
    #[inline]
    pub fn decide_with(&self, emergency: bool, calls_now: impl FnOnce() -> u64) -> Decision {
        let word = self.word.load(Ordering::Relaxed);
        if emergency && word & EMERGENCY_EXEMPT != 0 {
            return Decision::Admit;
        }
        if word >> DENY_SHIFT != 0 {
            // The code is in range: only `pack` writes the word.
            return Decision::Deny(deny_code(word).unwrap_or(StatusCode::Invalid));
        }
        if word & CHECK_CALLS != 0 && calls_now() >= word & MAX_MASK {
            return Decision::Deny(StatusCode::OverLimit);
        }
        Decision::Admit
    }
}

impl Default for AdmissionGate {
    fn default() -> Self {
        AdmissionGate::new(AdmissionPlan::ADMIT_ALL)
    }
}

/// Denied admissions by code, counted on the data plane without a shared hot spot: each
/// thread adds to its own stripe (one uncontended relaxed `fetch_add` on a cache line of
/// its own), a reader sums the stripes. Counts only grow; they start at zero with the
/// process.
#[derive(Debug)]
pub struct DenialCounters {
    stripes: Box<[Stripe]>,
}

/// One stripe: a counter per code, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; StatusCode::ALL.len()]);

impl DenialCounters {
    /// Stripes: threads beyond this many share them (still correct, a little slower).
    pub const STRIPE_COUNT: usize = 16;

    pub fn new() -> DenialCounters {
        DenialCounters {
            stripes: (0..Self::STRIPE_COUNT).map(|_| Stripe::default()).collect(),
        }
    }

    /// Counts one admission denied with `code`.
    #[inline]
    pub fn record(&self, code: StatusCode) {
        let stripe = &self.stripes[stripe_index() % self.stripes.len()];
        stripe.0[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `decision` when it is a denial; returns it unchanged.
    #[inline]
    pub fn count(&self, decision: Decision) -> Decision {
        if let Decision::Deny(code) = decision {
            self.record(code);
        }
        decision
    }

    /// The total for every code, indexed by the code's value.
    pub fn totals(&self) -> [u64; StatusCode::ALL.len()] {
        let mut totals = [0; StatusCode::ALL.len()];
        for stripe in &self.stripes {
            for (total, counter) in totals.iter_mut().zip(&stripe.0) {
                *total += counter.load(Ordering::Relaxed);
            }
        }
        totals
    }

    /// `(code, count)` for every code denied at least once, in code order.
    pub fn nonzero(&self) -> Vec<(StatusCode, u64)> {
        StatusCode::ALL
            .into_iter()
            .zip(self.totals())
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

impl Default for DenialCounters {
    fn default() -> Self {
        DenialCounters::new()
    }
}

/// This thread's stripe, assigned round-robin at its first denial.
#[inline]
fn stripe_index() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed);
            index.set(i);
        }
        i
    })
}

/// `floor(limit × (100 + grace_pct) / 100)`: the most calls running after an admission.
pub fn calls_admit_max(limit: u64, grace_pct: u8) -> u64 {
    let max = u128::from(limit) * (100 + u128::from(grace_pct)) / 100;
    u64::try_from(max).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_floored() {
        assert_eq!(calls_admit_max(100, 10), 110);
        assert_eq!(calls_admit_max(5, 10), 5);
        assert_eq!(calls_admit_max(10, 0), 10);
        assert_eq!(calls_admit_max(0, 100), 0);
        assert_eq!(calls_admit_max(1 << 40, 100), 1 << 41);
    }

    #[test]
    fn gate_and_plan_agree_everywhere() {
        let mut plans = Vec::new();
        for deny in [None, Some(StatusCode::Expired), Some(StatusCode::NoLicense)] {
            for emergency_exempt in [false, true] {
                for calls_admit_max in [None, Some(0), Some(110), Some(1 << 41)] {
                    plans.push(AdmissionPlan {
                        deny,
                        emergency_exempt,
                        calls_admit_max,
                    });
                }
            }
        }
        let gate = AdmissionGate::default();
        assert_eq!(gate.plan(), AdmissionPlan::ADMIT_ALL);
        for plan in plans {
            gate.set(plan);
            assert_eq!(gate.plan(), plan);
            for calls_now in [0, 109, 110, 111, 1 << 41, u64::MAX] {
                for emergency in [false, true] {
                    let expected = plan.decide(calls_now, emergency);
                    assert_eq!(gate.decide(calls_now, emergency), expected, "{plan:?}");
                    let read = std::cell::Cell::new(false);
                    let lazily = gate.decide_with(emergency, || {
                        read.set(true);
                        calls_now
                    });
                    assert_eq!(lazily, expected);
                    if plan.calls_admit_max.is_none() {
                        assert!(!read.get(), "calls read without a calls check");
                    }
                }
            }
        }
    }

    #[test]
    fn denials_are_counted_by_code_across_threads() {
        let counters = std::sync::Arc::new(DenialCounters::new());
        let threads: Vec<_> = (0..DenialCounters::STRIPE_COUNT + 3)
            .map(|i| {
                let counters = std::sync::Arc::clone(&counters);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counters.record(StatusCode::OverLimit);
                    }
                    let code = if i % 2 == 0 {
                        StatusCode::Expired
                    } else {
                        StatusCode::NoLicense
                    };
                    assert_eq!(counters.count(Decision::Deny(code)), Decision::Deny(code));
                    assert_eq!(counters.count(Decision::Admit), Decision::Admit);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let n = DenialCounters::STRIPE_COUNT as u64 + 3;
        assert_eq!(
            counters.nonzero(),
            vec![
                (StatusCode::OverLimit, 1000 * n),
                (StatusCode::Expired, n.div_ceil(2)),
                (StatusCode::NoLicense, n / 2),
            ]
        );
        assert_eq!(counters.totals().iter().sum::<u64>(), 1001 * n);
    }

    #[test]
    fn replies_are_the_wire_form() {
        assert_eq!(Decision::Admit.as_reply(), "ok");
        for code in StatusCode::ALL {
            assert_eq!(Decision::Deny(code).as_reply(), format!("deny {code}"));
        }
    }
}
