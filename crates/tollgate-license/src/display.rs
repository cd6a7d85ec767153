//! Text for people: the NGCP-style log lines and the `tollgate license show` summary.
//!
//! Wording (stable, operators grep for it):
//! - a missing limit prints as `unlimited` (`unlimited calls`);
//! - a perpetual license is `valid until forever`;
//! - a document without a lease says `(signature valid until forever)`;
//! - dates are UTC in `%a %b %e %H:%M:%S %Y` form: `Tue Jan  1 00:00:00 2030`.

use std::fmt::Write as _;

use tollgate_events::WallTime;

use crate::document::Document;
use crate::eval::{Evaluation, Usage};
use crate::timestamp::{format_ngcp, format_rfc3339};

/// `Valid license: [KEY]: 10000 calls, 1000000 subscribers, 2000000 registered subscribers,
/// valid until Tue Jan  1 00:00:00 2030 (signature valid until Tue Dec 26 16:20:43 2017)`
pub fn log_line(document: &Document) -> String {
    let count =
        |limit: Option<u64>| limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let date = |at: Option<WallTime>| at.map_or_else(|| "forever".to_owned(), format_ngcp);
    format!(
        "Valid license: [{}]: {} calls, {} subscribers, {} registered subscribers, \
         valid until {} (signature valid until {})",
        document.license_key,
        count(document.limits.calls),
        count(document.limits.subscribers),
        count(document.limits.registered_subscribers),
        date(document.valid_until),
        date(document.signature_valid_until),
    )
}

/// `Usage report: 0 calls, 18 subscribers, 0 registered subscribers`
pub fn usage_report_line(usage: &Usage) -> String {
    format!(
        "Usage report: {} calls, {} subscribers, {} registered subscribers",
        usage.calls, usage.subscribers, usage.registered_subscribers
    )
}

/// The human summary `tollgate license show` prints: the document, and with an evaluation
/// its status, each limit against usage, and the explanation.
pub fn summary(document: &Document, evaluation: Option<&Evaluation>) -> String {
    let mut out = String::new();
    let mut row = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<14}{value}");
    };
    let limit = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    let date =
        |at: Option<WallTime>, none: &str| at.map_or_else(|| none.to_owned(), format_rfc3339);
    row("License", &document.license_key);
    row("Customer", &document.customer);
    row("Kind", document.kind.as_str());
    row("Serial", &document.serial.to_string());
    row("Issued", &format_rfc3339(document.issued_at));
    row("Valid from", &format_rfc3339(document.valid_from));
    row(
        "Valid until",
        &date(document.valid_until, "forever (perpetual)"),
    );
    row(
        "Lease until",
        &date(document.signature_valid_until, "forever (no lease)"),
    );
    row("Calls", &limit(document.limits.calls));
    row("Subscribers", &limit(document.limits.subscribers));
    row("Registered", &limit(document.limits.registered_subscribers));
    let features = if document.features.is_empty() {
        "none".to_owned()
    } else {
        document.features.join(", ")
    };
    row("Features", &features);
    let hosts = if document.host_ids.is_empty() {
        "any host".to_owned()
    } else {
        document.host_ids.join(", ")
    };
    row("Hosts", &hosts);
    let policy = document.policy;
    row(
        "Policy",
        &format!(
            "{}, warn at {}%, grace {}%, emergency calls {}",
            policy.mode.as_str(),
            policy.warn_at_pct,
            policy.grace_pct,
            if policy.emergency_exempt {
                "exempt"
            } else {
                "not exempt"
            }
        ),
    );
    row("Signing key", &document.key_id.to_string());
    if let Some(evaluation) = evaluation {
        row("Status", evaluation.status.as_str());
        let limits = &evaluation.limits;
        let rows = [
            ("calls", &limits.calls),
            ("subscribers", &limits.subscribers),
            ("registered", &limits.registered_subscribers),
        ];
        for (name, status) in rows {
            let usage = match (status.limit, status.usage_pct) {
                (None, _) => format!("{} (unlimited)", status.usage),
                (Some(max), Some(pct)) => format!(
                    "{} of {max} ({pct:.1}%), headroom {}",
                    status.usage,
                    status.headroom.unwrap_or_default()
                ),
                (Some(max), None) => format!("{} of {max}", status.usage),
            };
            row(&format!("  {name}"), &format!("{usage}  {}", status.status));
        }
        for line in evaluation.explain().lines() {
            row("", line);
        }
    }
    out
}
