//! The node view: every node that ever sent a usage report, by customer and license, with
//! its latest report, and whether it fell **silent** (no report for longer than the
//! threshold: a node switched off, cut off from the server, or running without its
//! license client). Served as `GET /api/v1/admin/nodes`, `tollgate license-server admin
//! nodes [--silent]` and the console.
//!
//! The threshold defaults to [`SILENT_AFTER_MS_DEFAULT`] (agents report every 120 s by
//! default, so a silent node has missed at least 7 reports); callers may set another.

use tollgate_events::WallTime;
use tollgate_license::timestamp::format_rfc3339;

use crate::store::{Db, StoreError};

/// A node is silent after this long without a report, by default.
pub const SILENT_AFTER_MS_DEFAULT: u64 = 15 * 60_000;
/// The longest threshold accepted (a year).
pub const SILENT_AFTER_MS_MAX: u64 = 366 * 86_400_000;

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    pub customer: String,
    pub license_key: String,
    pub node_id: String,
    /// When its latest report arrived (RFC 3339).
    pub last_report_at: String,
    /// Milliseconds since then.
    pub silent_for_ms: u64,
    pub silent: bool,
    /// From which address, with which agent version, under which license serial.
    pub client_address: String,
    pub agent_version: String,
    pub license_serial: Option<u64>,
    /// The node's figures in that report.
    pub calls: u64,
    pub registered_subscribers: u64,
}

/// Every node that reported, sorted by customer, license, node; `silent` against
/// `silent_after_ms` at `now_ms`.
pub fn nodes(db: &Db<'_>, now_ms: u64, silent_after_ms: u64) -> Result<Vec<NodeRow>, StoreError> {
    Ok(db
        .latest_report_per_node()?
        .into_iter()
        .map(|row| {
            let r = row.record;
            let silent_for_ms = now_ms.saturating_sub(r.received_at_ms);
            NodeRow {
                customer: row.customer,
                license_key: r.license_key,
                node_id: r.report.node_id,
                last_report_at: format_rfc3339(WallTime::from_unix_ms(r.received_at_ms)),
                silent_for_ms,
                silent: silent_for_ms > silent_after_ms,
                client_address: r.client_address,
                agent_version: r.report.agent_version,
                license_serial: r.report.license_serial,
                calls: r.report.node.calls,
                registered_subscribers: r.report.node.registered_subscribers,
            }
        })
        .collect())
}
