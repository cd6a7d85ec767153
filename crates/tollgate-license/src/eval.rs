//! Evaluation: a license, what is in use, and the time → statuses, figures, an admission
//! plan and plain-English explanations.
//!
//! **Overall status** = the highest-precedence code that applies (see [`StatusCode`]):
//! 1. no license → `NO_LICENSE`; a license that failed verification → `INVALID`;
//! 2. a refusal from [`VerifiedLicense::check`] → its code (clock set back → `INVALID`,
//!    then `ROLLBACK`, `HOST_MISMATCH`, `NOT_YET_VALID`);
//! 3. `now >= valid_until` → `EXPIRED`; else `now >= signature_valid_until` →
//!    `LEASE_EXPIRED`;
//! 4. the worst limit: `OVER_LIMIT` (usage > limit), `WARNING` (usage > 0 and
//!    usage ≥ warn_at_pct % of the limit), else `OK`.
//!
//! Limits are evaluated for every authentic license, even a refused one, so they can be
//! displayed; a refused license's policy is not applied (the agent's `unlicensed_mode`
//! is). Emergency calls count against the calls limit (they occupy capacity); they are
//! only exempt from denial.

use tollgate_events::WallTime;

use crate::admission::{AdmissionPlan, calls_admit_max};
use crate::document::{Document, Kind, Mode, Policy};
use crate::signing::{Context, Refusal, VerifiedLicense, VerifyError};
use crate::status::StatusCode;
use crate::timestamp::{days_until, format_rfc3339, ms_until};

/// What is in use (cluster-wide where there is a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Active calls, emergency calls included.
    pub calls: u64,
    /// Of `calls`, how many are emergency calls.
    pub emergency_calls: u64,
    /// Provisioned subscribers.
    pub subscribers: u64,
    /// Subscribers with at least one live registration.
    pub registered_subscribers: u64,
}

/// One limit against its usage.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LimitStatus {
    /// `OK`, `WARNING` or `OVER_LIMIT`.
    pub status: StatusCode,
    pub usage: u64,
    /// `None`: unlimited.
    pub limit: Option<u64>,
    /// `limit - usage`, negative when over.
    pub headroom: Option<i64>,
    /// `usage × 100 / limit` (`None` when unlimited or the limit is 0).
    pub usage_pct: Option<f64>,
    /// The usage at which the limit starts warning.
    pub warn_at: Option<u64>,
}

impl LimitStatus {
    pub fn new(usage: u64, limit: Option<u64>, warn_at_pct: u8) -> LimitStatus {
        let Some(limit) = limit else {
            return LimitStatus {
                status: StatusCode::Ok,
                usage,
                limit: None,
                headroom: None,
                usage_pct: None,
                warn_at: None,
            };
        };
        let warns =
            usage > 0 && u128::from(usage) * 100 >= u128::from(limit) * u128::from(warn_at_pct);
        let status = if usage > limit {
            StatusCode::OverLimit
        } else if warns {
            StatusCode::Warning
        } else {
            StatusCode::Ok
        };
        let headroom = i128::from(limit) - i128::from(usage);
        let warn_at = (u128::from(limit) * u128::from(warn_at_pct))
            .div_ceil(100)
            .max(1);
        LimitStatus {
            status,
            usage,
            limit: Some(limit),
            headroom: Some(i64::try_from(headroom).unwrap_or(i64::MIN)),
            usage_pct: (limit > 0).then(|| usage as f64 * 100.0 / limit as f64),
            warn_at: Some(u64::try_from(warn_at).unwrap_or(u64::MAX)),
        }
    }
}

/// The three limits.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LimitStatuses {
    pub calls: LimitStatus,
    pub subscribers: LimitStatus,
    pub registered_subscribers: LimitStatus,
}

impl LimitStatuses {
    /// `(name, what it counts, status)` for each limit, calls first.
    pub fn iter(&self) -> [(&'static str, &'static str, &LimitStatus); 3] {
        [
            ("calls", "concurrent-calls", &self.calls),
            ("subscribers", "provisioned-subscribers", &self.subscribers),
            (
                "registered_subscribers",
                "registered-subscribers",
                &self.registered_subscribers,
            ),
        ]
    }

    fn worst(&self) -> StatusCode {
        self.iter()
            .into_iter()
            .map(|(_, _, limit)| limit.status)
            .max()
            .unwrap_or(StatusCode::Ok)
    }
}

/// The result of an evaluation. Serializes for the admin API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// The overall status (module doc).
    pub status: StatusCode,
    /// The status of the license alone, without usage: `OK`, or the license problem.
    pub license_status: StatusCode,
    /// Why the license was refused (verification error or refusal message).
    pub reason: Option<String>,
    /// The mode in effect: the document's for an acceptable license, else the context's
    /// `unlicensed_mode`.
    pub mode: Mode,
    /// The document's policy (default policy when there is no authentic document).
    pub policy: Policy,
    pub kind: Option<Kind>,
    pub usage: Usage,
    pub limits: LimitStatuses,
    /// The time evaluated at (`now_ms` in JSON, Unix ms).
    #[serde(rename = "now_ms")]
    pub now: WallTime,
    /// `valid_until` (`None`: never expires, or no license); `expires_at_ms` in JSON.
    #[serde(rename = "expires_at_ms")]
    pub expires_at: Option<WallTime>,
    /// Milliseconds until `valid_until` (negative once past).
    pub ms_to_expiry: Option<i64>,
    /// Whole days until `valid_until`, rounded down.
    pub days_to_expiry: Option<i64>,
    /// `signature_valid_until` (`None`: no lease, or no license); `lease_ends_at_ms` in JSON.
    #[serde(rename = "lease_ends_at_ms")]
    pub lease_ends_at: Option<WallTime>,
    pub ms_to_lease_end: Option<i64>,
    pub days_to_lease_end: Option<i64>,
    /// What admission does in this state.
    pub admission: AdmissionPlan,
}

/// Evaluates the current license (`None`: there is none) against `usage` in `context`.
pub fn evaluate(
    license: Option<&VerifiedLicense>,
    context: &Context<'_>,
    usage: &Usage,
) -> Evaluation {
    let Some(license) = license else {
        return unlicensed(StatusCode::NoLicense, None, None, context, usage);
    };
    let document = license.document();
    if let Err(refusal) = license.check(context) {
        return unlicensed(
            refusal.code(),
            Some(&refusal),
            Some(document),
            context,
            usage,
        );
    }
    let now = context.now;
    let policy = document.policy;
    let limits = limit_statuses(Some(document), usage);
    let expired = document.valid_until.is_some_and(|until| now >= until);
    let lease_ended = document
        .signature_valid_until
        .is_some_and(|until| now >= until);
    let license_status = if expired {
        StatusCode::Expired
    } else if lease_ended {
        StatusCode::LeaseExpired
    } else {
        StatusCode::Ok
    };
    let admission = match (policy.mode, license_status) {
        // Past valid_until the product stops taking new calls, whatever the mode.
        (_, StatusCode::Expired) => AdmissionPlan {
            deny: Some(StatusCode::Expired),
            emergency_exempt: policy.emergency_exempt,
            calls_admit_max: None,
        },
        (Mode::Warn, _) => AdmissionPlan::ADMIT_ALL,
        (Mode::Enforce, StatusCode::LeaseExpired) => AdmissionPlan {
            deny: Some(StatusCode::LeaseExpired),
            emergency_exempt: policy.emergency_exempt,
            calls_admit_max: None,
        },
        (Mode::Enforce, _) => AdmissionPlan {
            deny: None,
            emergency_exempt: policy.emergency_exempt,
            calls_admit_max: document
                .limits
                .calls
                .map(|l| calls_admit_max(l, policy.grace_pct)),
        },
    };
    Evaluation {
        status: license_status.max(limits.worst()),
        license_status,
        reason: None,
        mode: policy.mode,
        policy,
        admission,
        ..times(document, context, usage, limits)
    }
}

/// Evaluates a license text that failed verification: `INVALID`, with the reason.
pub fn evaluate_rejected(error: &VerifyError, context: &Context<'_>, usage: &Usage) -> Evaluation {
    let mut evaluation = unlicensed(StatusCode::Invalid, None, None, context, usage);
    evaluation.reason = Some(error.to_string());
    evaluation
}

/// No license in force because a candidate was refused (at start, on a reload, from the
/// license server or the mesh): the refusal's own `code` is the status, so an operator sees
/// `INVALID`, `ROLLBACK`, `HOST_MISMATCH`, `NOT_YET_VALID` or `EXPIRED` instead of
/// `NO_LICENSE`, and `reason` says why. `document` is the refused document when it was
/// authentic (its limits and dates are shown; its policy is not applied).
///
/// Admission follows the context's `unlicensed_mode` (enforce: denied with `code`, emergency
/// calls exempt), except that an already-expired candidate (`EXPIRED`) stops new calls
/// whatever the mode, as an expired license in force does.
pub fn evaluate_refused(
    code: StatusCode,
    reason: &str,
    document: Option<&Document>,
    context: &Context<'_>,
    usage: &Usage,
) -> Evaluation {
    let mut evaluation = unlicensed(code, None, document, context, usage);
    evaluation.reason = Some(reason.to_owned());
    if code == StatusCode::Expired {
        evaluation.admission = AdmissionPlan {
            deny: Some(StatusCode::Expired),
            emergency_exempt: true,
            calls_admit_max: None,
        };
    }
    evaluation
}

/// No acceptable license: `code`, the context's unlicensed mode, emergency calls exempt.
fn unlicensed(
    code: StatusCode,
    refusal: Option<&Refusal>,
    document: Option<&Document>,
    context: &Context<'_>,
    usage: &Usage,
) -> Evaluation {
    let limits = limit_statuses(document, usage);
    let admission = match context.unlicensed_mode {
        Mode::Warn => AdmissionPlan::ADMIT_ALL,
        Mode::Enforce => AdmissionPlan {
            deny: Some(code),
            emergency_exempt: true,
            calls_admit_max: None,
        },
    };
    let base = match document {
        Some(document) => times(document, context, usage, limits),
        None => Evaluation {
            status: code,
            license_status: code,
            reason: None,
            mode: context.unlicensed_mode,
            policy: Policy::default(),
            kind: None,
            usage: *usage,
            limits,
            now: context.now,
            expires_at: None,
            ms_to_expiry: None,
            days_to_expiry: None,
            lease_ends_at: None,
            ms_to_lease_end: None,
            days_to_lease_end: None,
            admission,
        },
    };
    Evaluation {
        status: code,
        license_status: code,
        reason: refusal.map(ToString::to_string),
        mode: context.unlicensed_mode,
        admission,
        ..base
    }
}

/// The fields that come from the document and the clock; the status fields are filled in
/// by the caller.
fn times(
    document: &Document,
    context: &Context<'_>,
    usage: &Usage,
    limits: LimitStatuses,
) -> Evaluation {
    let now = context.now;
    let valid_until = document.valid_until;
    let lease_end = document.signature_valid_until;
    Evaluation {
        status: StatusCode::Ok,
        license_status: StatusCode::Ok,
        reason: None,
        mode: document.policy.mode,
        policy: document.policy,
        kind: Some(document.kind),
        usage: *usage,
        limits,
        now,
        expires_at: valid_until,
        ms_to_expiry: valid_until.map(|at| ms_until(now, at)),
        days_to_expiry: valid_until.map(|at| days_until(now, at)),
        lease_ends_at: lease_end,
        ms_to_lease_end: lease_end.map(|at| ms_until(now, at)),
        days_to_lease_end: lease_end.map(|at| days_until(now, at)),
        admission: AdmissionPlan::ADMIT_ALL,
    }
}

fn limit_statuses(document: Option<&Document>, usage: &Usage) -> LimitStatuses {
    let (limits, warn_at_pct) = match document {
        Some(document) => (document.limits, document.policy.warn_at_pct),
        None => (Default::default(), Policy::default().warn_at_pct),
    };
    LimitStatuses {
        calls: LimitStatus::new(usage.calls, limits.calls, warn_at_pct),
        subscribers: LimitStatus::new(usage.subscribers, limits.subscribers, warn_at_pct),
        registered_subscribers: LimitStatus::new(
            usage.registered_subscribers,
            limits.registered_subscribers,
            warn_at_pct,
        ),
    }
}

impl Evaluation {
    /// Plain-English explanation for operators: one line for the license, then one per limit
    /// that warns or is over. E.g. `over the concurrent-calls limit by 4% (10400 of 10000):
    /// new calls are still admitted because this license only warns`.
    pub fn explain(&self) -> String {
        let mut lines = vec![self.explain_license()];
        for (_, what, limit) in self.limits.iter() {
            if let Some(line) = self.explain_limit(what, limit) {
                lines.push(line);
            }
        }
        lines.join("\n")
    }

    fn emergency_note(&self) -> &'static str {
        if self.admission.emergency_exempt {
            " (emergency calls are still admitted)"
        } else {
            " (emergency calls included)"
        }
    }

    /// What admission does without an acceptable license.
    fn unlicensed_tail(&self) -> String {
        match self.mode {
            Mode::Warn => {
                "new calls are still admitted because the agent only warns without a valid \
                 license"
                    .to_owned()
            }
            Mode::Enforce => format!("new calls are denied{}", self.emergency_note()),
        }
    }

    fn explain_license(&self) -> String {
        let reason = self.reason.as_deref().unwrap_or("no reason given");
        let date =
            |at: Option<WallTime>| at.map_or_else(|| "an unknown date".to_owned(), format_rfc3339);
        match self.license_status {
            StatusCode::NoLicense => format!("no license is installed: {}", self.unlicensed_tail()),
            StatusCode::Invalid => {
                format!(
                    "the license was refused ({reason}): {}",
                    self.unlicensed_tail()
                )
            }
            StatusCode::Rollback => format!(
                "the license is older than one already seen ({reason}): {}",
                self.unlicensed_tail()
            ),
            StatusCode::HostMismatch => {
                format!(
                    "the license is for other hosts ({reason}): {}",
                    self.unlicensed_tail()
                )
            }
            StatusCode::NotYetValid => {
                format!("the license is {reason}: {}", self.unlicensed_tail())
            }
            StatusCode::Expired if self.reason.is_some() => format!(
                "the license was refused ({reason}): new calls are denied whatever the mode{}",
                self.emergency_note()
            ),
            StatusCode::Expired => format!(
                "the {} license expired on {}: new calls are denied whatever the mode{}",
                self.kind.map_or("", Kind::as_str),
                date(self.expires_at),
                self.emergency_note()
            ),
            StatusCode::LeaseExpired => {
                let tail = match self.mode {
                    Mode::Warn => {
                        "new calls are still admitted because this license only warns".to_owned()
                    }
                    Mode::Enforce => format!("new calls are denied{}", self.emergency_note()),
                };
                format!(
                    "the signature lease ended on {} and the license was not renewed from the \
                     license server: {tail}",
                    date(self.lease_ends_at)
                )
            }
            _ => {
                let until = match (self.expires_at, self.days_to_expiry) {
                    (Some(at), Some(days)) => {
                        format!("valid until {} ({days} days left)", format_rfc3339(at))
                    }
                    _ => "valid with no end date".to_owned(),
                };
                let lease = match (self.lease_ends_at, self.days_to_lease_end) {
                    (Some(at), Some(days)) => format!(
                        ", signature valid until {} ({days} days left)",
                        format_rfc3339(at)
                    ),
                    _ => String::new(),
                };
                let usage = match self.status {
                    StatusCode::Ok => "; usage is below every warning threshold",
                    _ => "",
                };
                format!(
                    "the {} license is {until}{lease}{usage}",
                    self.kind.map_or("", Kind::as_str)
                )
            }
        }
    }

    fn explain_limit(&self, what: &str, limit: &LimitStatus) -> Option<String> {
        let max = limit.limit?;
        let figures = format!("{} of {max}", limit.usage);
        match limit.status {
            StatusCode::Warning => Some(format!(
                "{what} at {} of the limit ({figures}), at or above the {}% warning threshold",
                pct(limit.usage_pct.unwrap_or(0.0)),
                self.policy.warn_at_pct
            )),
            StatusCode::OverLimit => {
                let over = limit.usage_pct.map_or(f64::INFINITY, |pct| pct - 100.0);
                let head = format!("over the {what} limit by {} ({figures})", pct(over));
                let tail = if what != "concurrent-calls" {
                    "reported only: this limit does not stop calls".to_owned()
                } else if self.license_status != StatusCode::Ok {
                    "see the license status".to_owned()
                } else if self.mode == Mode::Warn {
                    "new calls are still admitted because this license only warns".to_owned()
                } else {
                    let admit_max = self.admission.calls_admit_max.unwrap_or(max);
                    let grace = self.policy.grace_pct;
                    if limit.usage < admit_max {
                        format!(
                            "new calls are admitted up to the {grace}% grace ({admit_max} calls), \
                             then denied"
                        )
                    } else {
                        format!(
                            "new calls are denied beyond the {grace}% grace ({admit_max} calls){}",
                            self.emergency_note()
                        )
                    }
                };
                Some(format!("{head}: {tail}"))
            }
            _ => None,
        }
    }
}

/// `4%`, `0.5%`, `less than 0.1%`, `more than 1000000%`.
fn pct(value: f64) -> String {
    if !value.is_finite() || value > 1e6 {
        "more than 1000000%".to_owned()
    } else if value >= 10.0 || value == value.trunc() {
        format!("{value:.0}%")
    } else if value >= 0.1 {
        format!("{value:.1}%")
    } else {
        "less than 0.1%".to_owned()
    }
}
