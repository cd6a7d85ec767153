//! The admin HTTP server (default `127.0.0.1:7173`). Endpoints:
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/healthz` | `ok` (200) while the agent runs |
//! | GET | `/metrics` | Prometheus text exposition |
//! | GET | `/api/v1/usage` | this node's usage as JSON ([`UsageReport`]) |
//! | GET | `/api/v1/usage/history` | per-minute peaks of the last 24 h as JSON |
//!
//! Reading usage takes no lock on the tables: every figure is a sum of sharded atomics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::AgentState;

/// The body of `GET /api/v1/usage`. Field names are a contract (MISSION.md, issue 2).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct UsageReport {
    pub node_id: String,
    /// When these figures were read (Unix milliseconds).
    pub timestamp_ms: u64,
    /// Active calls, emergency calls included.
    pub calls: u64,
    /// The emergency subset of `calls`.
    pub emergency_calls: u64,
    /// AoRs with at least one live contact.
    pub registered_subscribers: u64,
    pub registered_contacts: u64,
    /// Provisioned subscribers, as last reported by a `subscribers` event.
    pub subscribers: u64,
    pub subscribers_reported_at_ms: Option<u64>,
    /// Highest concurrent calls since the agent started.
    pub peak_calls: u64,
    /// Highest registered subscribers since the agent started.
    pub peak_registered_subscribers: u64,
    pub uptime_s: u64,
    pub ingest: IngestSummary,
}

/// Ingest totals since start, for a quick look (details are in `/metrics`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct IngestSummary {
    pub datagrams: u64,
    pub events: u64,
    pub malformed: u64,
    pub duplicate_datagrams: u64,
    pub lost_datagrams: u64,
    pub kernel_drops: u64,
}

/// One minute of the usage history.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct MinuteReport {
    pub minute_start_ms: u64,
    pub peak_calls: u64,
    pub peak_registered_subscribers: u64,
}

pub fn usage_report(state: &AgentState) -> UsageReport {
    let now = tollgate_ingest::wall_clock();
    let usage = state.tables.usage();
    let peaks = state.tables.peaks().since_start();
    let ingest = state.ingest_stats.snapshot();
    let t = &ingest.totals;
    UsageReport {
        node_id: state.node_id.clone(),
        timestamp_ms: now.unix_ms(),
        calls: usage.calls,
        emergency_calls: usage.emergency_calls,
        registered_subscribers: usage.registered_subscribers,
        registered_contacts: usage.registered_contacts,
        subscribers: usage.subscribers,
        subscribers_reported_at_ms: usage.subscribers_reported_at.map(|t| t.unix_ms()),
        peak_calls: peaks.calls.max(usage.calls),
        peak_registered_subscribers: peaks
            .registered_subscribers
            .max(usage.registered_subscribers),
        uptime_s: state.started.elapsed().as_secs(),
        ingest: IngestSummary {
            datagrams: t.datagrams,
            events: t.events.iter().sum(),
            malformed: t.malformed.iter().sum(),
            duplicate_datagrams: t.dropped
                [tollgate_ingest::stats::DatagramDrop::Duplicate as usize],
            lost_datagrams: t.lost_datagrams,
            kernel_drops: ingest.kernel_drops,
        },
    }
}

/// The admin router.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/usage/history", get(history))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<Arc<AgentState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
}

async fn usage(State(state): State<Arc<AgentState>>) -> axum::Json<UsageReport> {
    axum::Json(usage_report(&state))
}

async fn history(State(state): State<Arc<AgentState>>) -> axum::Json<Vec<MinuteReport>> {
    let now = tollgate_ingest::wall_clock();
    axum::Json(
        state
            .tables
            .peaks()
            .minutes(now)
            .into_iter()
            .map(|m| MinuteReport {
                minute_start_ms: m.minute_start.unix_ms(),
                peak_calls: m.calls,
                peak_registered_subscribers: m.registered_subscribers,
            })
            .collect(),
    )
}
