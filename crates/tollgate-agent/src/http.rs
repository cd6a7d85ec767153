//! The admin HTTP server (default `127.0.0.1:7173`). Endpoints:
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/` | the operator's web page (see `web.rs`) |
//! | GET | `/healthz` | `ok` (200) while the agent runs; then `journal suspended: …` while the journal is suspended (full or failing), and one `state reset: …` line per state reset not yet acknowledged |
//! | GET | `/metrics` | Prometheus text exposition |
//! | GET | `/api/v1/usage` | this node's usage as JSON ([`UsageReport`]), with `admissions_denied` by code |
//! | GET | `/api/v1/usage/history` | per-minute peaks of the last 24 h as JSON; `?resolution=hour`: hourly peaks of the last 90 days, with the cluster's (`cluster_peak_*`) in a mesh, persisted in `history.json` |
//! | GET | `/api/v1/cluster/history` | the cluster aggregate's per-minute peaks of the last 24 h; 404 without a mesh |
//! | GET | `/api/v1/whoami` | `{"user", "role"}` of the credentials (viewer); `{"user": null, "role": null, "users_configured": false}` when no users are configured |
//! | GET | `/api/v1/cluster` | every node (id, address, state, age, incarnation, RTT, usage) and the cluster aggregate; 404 without a mesh |
//! | POST | `/api/v1/cluster/aor-key/rotate` | a new cluster AoR key (next generation) for every node; 200 `{"aor_key_id", "aor_key_generation"}`, 404 without a mesh (admin) |
//! | GET | `/api/v1/ledger` | the node's public key and the usage ledger's head (seq, hash, interval end) (viewer) |
//! | GET | `/api/v1/license` | the license in force and its evaluation (viewer) |
//! | PUT | `/api/v1/license` | upload an armored license; verified before it replaces the current one (admin) |
//! | POST | `/api/v1/license/reload` | fetch from the license server (or re-read `[license] file`) now: 200 valid license in force, 401 bad credentials, 403 not admin, 422 the candidate was refused (`error` is its code), 502 the license server did not give a license: unreachable or failing (`connect`, `dns`, `tls`, `timeout`, `proxy`, `http_5xx`, `bad_response`) or refusing this agent (`http_401`/`http_403` for an unknown or revoked token, `http_404` for an unknown license key) (admin) |
//! | GET | `/api/v1/admit?call_id=…[&emergency=1]` | the admission answer: 200 admit, 403 deny (viewer) |
//! | GET | `/api/v1/features/{name}` | 200 licensed, 403 not licensed (viewer) |
//! | GET | `/api/v1/reconcile` | each reconciliation source's last run: time, duration, result, corrections by kind (viewer) |
//! | POST | `/api/v1/reconcile` | run every `[[reconcile]]` source now; answers the runs with their corrections (admin) |
//! | GET | `/api/v1/state/resets` | state resets pending acknowledgement and this run's counts by reason (viewer) |
//! | POST | `/api/v1/state/resets/acknowledge` | clears the pending resets: `{"acknowledged": n}` (admin) |
//!
//! Over HTTPS with `[admin] tls_cert` / `tls_key` (the listener is `admin_tls.rs`; nothing
//! here knows). Reading usage takes no lock on the tables: every figure is a sum of sharded
//! atomics.
//! Credentials are HTTP basic auth against `[[admin.users]]`; with no users configured,
//! reads are open (the API listens on loopback by default) and admin actions answer 401.
//! Passwords are hashed on the blocking pool, at most [`crate::HASHES_AT_ONCE_MAX`] at a
//! time. A client address with `[admin] login_failures_max` failed logins within
//! `login_failures_window_s` gets `429` with `Retry-After` for any request carrying
//! credentials until the window has passed (`admin_limits.rs`; connection caps and
//! timeouts are there too).

use std::sync::Arc;

use std::net::IpAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::AgentState;
use crate::auth::{Denied, Role};
use crate::license::Installed;

/// Largest license upload accepted.
pub const LICENSE_UPLOAD_BYTES_MAX: usize = 64 * 1024;

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
    /// New calls denied admission since the agent started, by deny code:
    /// `{"OVER_LIMIT": 4}`; codes never denied are left out (`{}` when none).
    #[serde(default)]
    pub admissions_denied: std::collections::BTreeMap<String, u64>,
}

/// Ingest totals since start, for a quick look (details are in `/metrics`): the event
/// sockets and, when enabled, the HEP socket (its SIP packets count as datagrams, the events
/// the tracker derived from them as events).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
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
    let mut summaries = vec![state.ingest_stats.snapshot()];
    if let Some(hep) = &state.hep {
        summaries.push(hep.snapshot().ingest);
    }
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
        ingest: summaries.iter().map(IngestSummary::of).sum(),
        admissions_denied: state.admissions_denied(),
    }
}

impl IngestSummary {
    fn of(ingest: &tollgate_ingest::stats::StatsSnapshot) -> IngestSummary {
        let t = &ingest.totals;
        IngestSummary {
            datagrams: t.datagrams,
            events: t.events.iter().sum(),
            malformed: t.malformed.iter().sum(),
            duplicate_datagrams: t.dropped
                [tollgate_ingest::stats::DatagramDrop::Duplicate as usize],
            lost_datagrams: t.lost_datagrams,
            kernel_drops: ingest.kernel_drops,
        }
    }
}

/// The event sockets and the HEP socket together.
impl std::iter::Sum for IngestSummary {
    fn sum<I: Iterator<Item = IngestSummary>>(iter: I) -> IngestSummary {
        iter.fold(IngestSummary::default(), |a, b| IngestSummary {
            datagrams: a.datagrams + b.datagrams,
            events: a.events + b.events,
            malformed: a.malformed + b.malformed,
            duplicate_datagrams: a.duplicate_datagrams + b.duplicate_datagrams,
            lost_datagrams: a.lost_datagrams + b.lost_datagrams,
            kernel_drops: a.kernel_drops + b.kernel_drops,
        })
    }
}

/// The admin router.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/usage/history", get(history))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/cluster/history", get(cluster_history))
        .route(
            "/api/v1/cluster/aor-key/rotate",
            post(cluster_aor_key_rotate),
        )
        .route("/api/v1/ledger", get(ledger_get))
        .route("/api/v1/license", get(license_get).put(license_put))
        .route("/api/v1/license/reload", post(license_reload))
        .route("/api/v1/admit", get(admit))
        .route("/api/v1/features/{name}", get(feature))
        .route("/api/v1/reconcile", get(reconcile_get).post(reconcile_post))
        .route("/api/v1/state/resets", get(resets_get))
        .route("/api/v1/state/resets/acknowledge", post(resets_acknowledge))
        .merge(crate::web::routes())
        .layer(axum::extract::DefaultBodyLimit::max(
            LICENSE_UPLOAD_BYTES_MAX,
        ))
        .with_state(state)
}

/// `ok`, then the pending state resets (the agent is alive either way: 200).
async fn healthz(State(state): State<Arc<AgentState>>) -> String {
    let mut out = String::from("ok\n");
    if let Some((why, segment)) = state.journal.as_ref().and_then(|j| j.suspended()) {
        out.push_str(&format!(
            "journal suspended: {} since segment {segment}: events are applied but a crash loses them until a snapshot is written (tollgate_journal_suspended)\n",
            why.as_str()
        ));
    }
    for reset in state.resets.pending() {
        out.push_str(&format!(
            "state reset: {} at {} ms: {} (acknowledge: POST /api/v1/state/resets/acknowledge)\n",
            reset.reason.as_str(),
            reset.at_ms,
            reset.detail
        ));
    }
    out
}

async fn resets_get(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Viewer).await {
        return r;
    }
    axum::Json(state.resets.report()).into_response()
}

async fn resets_acknowledge(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Admin).await {
        return r;
    }
    // Who acknowledged, for the log line.
    let user = match check_credentials(&state, &headers, client, |s, authorization| {
        s.users.identify(authorization)
    })
    .await
    {
        Ok(Ok(Some((user, _)))) => user,
        _ => String::new(),
    };
    let cleared = state.resets.acknowledge(&user);
    axum::Json(serde_json::json!({ "acknowledged": cleared })).into_response()
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

#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    /// `minute` (default, 24 h) or `hour` (90 days).
    #[serde(default)]
    resolution: Option<String>,
}

async fn history(State(state): State<Arc<AgentState>>, Query(q): Query<HistoryQuery>) -> Response {
    match q.resolution.as_deref() {
        None | Some("minute") => minute_history(&state).into_response(),
        Some("hour") => axum::Json(state.history.lock().hours()).into_response(),
        Some(_) => error(
            StatusCode::BAD_REQUEST,
            "BAD_RESOLUTION",
            "resolution is minute (24 h) or hour (90 days)",
        ),
    }
}

async fn cluster_history(State(state): State<Arc<AgentState>>) -> Response {
    if state.cluster.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "NO_MESH",
            "this agent is not part of a cluster ([mesh] is not configured)",
        );
    }
    let now = tollgate_ingest::wall_clock().unix_ms();
    axum::Json(state.history.lock().cluster_minutes(now)).into_response()
}

fn minute_history(state: &AgentState) -> axum::Json<Vec<MinuteReport>> {
    // Peaks are kept on the tables' clock.
    let now = tollgate_ingest::tables_clock();
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

/// A JSON error body: `{"error": CODE, "message": "…"}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": code, "message": message.into() });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"tollgate\""),
        );
    }
    response
}

/// The client's IP address, when the server runs with connect info (the agent's does).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(
            parts
                .extensions
                .get::<ConnectInfo<crate::admin_limits::ClientAddr>>()
                .map(|c| c.0.0.ip()),
        ))
    }
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up).
fn too_many_login_failures(retry_after: std::time::Duration) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_LOGIN_FAILURES",
        format!("too many failed logins from this address; retry in {seconds} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

/// Runs a credential check (which may hash a password) with the login throttle around it:
/// a throttled address is answered 429 before any hashing, a failed login is recorded, and
/// the hash runs on the blocking pool (at most [`crate::HASHES_AT_ONCE_MAX`] at once).
async fn check_credentials<T: Send + 'static>(
    state: &Arc<AgentState>,
    headers: &HeaderMap,
    client: Client,
    check: impl FnOnce(&AgentState, Option<&str>) -> Result<T, Denied> + Send + 'static,
) -> Result<Result<T, Denied>, Response> {
    use std::sync::atomic::Ordering::Relaxed;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let login = authorization.is_some() && !state.users.is_empty();
    if login
        && let Some(ip) = client.0
        && let Err(retry_after) = state.login_throttle.check(ip, Instant::now())
    {
        state.admin_counters.logins_throttled.fetch_add(1, Relaxed);
        return Err(too_many_login_failures(retry_after));
    }
    let result = if !login || state.users.is_cached(authorization.as_deref()) {
        check(state, authorization.as_deref())
    } else {
        let _permit = state.hash_permits.acquire().await.map_err(|_| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SHUTTING_DOWN",
                "the agent is stopping",
            )
        })?;
        let s = Arc::clone(state);
        tokio::task::spawn_blocking(move || check(&s, authorization.as_deref()))
            .await
            .map_err(|_| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "credential check failed",
                )
            })?
    };
    if login {
        match (&result, client.0) {
            (Err(Denied::Unauthenticated), ip) => {
                state.admin_counters.logins_failed.fetch_add(1, Relaxed);
                if let Some(ip) = ip {
                    state.login_throttle.failed(ip, Instant::now());
                }
            }
            (Ok(_) | Err(Denied::Forbidden), Some(ip)) => state.login_throttle.succeeded(ip),
            _ => {}
        }
    }
    Ok(result)
}

/// Checks the request's credentials for `needed`.
async fn authorize(
    state: &Arc<AgentState>,
    headers: &HeaderMap,
    client: Client,
    needed: Role,
) -> Result<(), Response> {
    let result = check_credentials(state, headers, client, move |s, authorization| {
        s.users.authorize(authorization, needed)
    })
    .await?;
    match result {
        Ok(_) => Ok(()),
        Err(Denied::Unauthenticated) => Err(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid credentials",
        )),
        Err(Denied::Forbidden) => Err(error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "this action needs the admin role",
        )),
        Err(Denied::NoUsersConfigured) => Err(error(
            StatusCode::UNAUTHORIZED,
            "NO_ADMIN_USERS",
            "no admin users are configured: add [[admin.users]] to the agent's config",
        )),
    }
}

/// The body of `GET /api/v1/license`.
#[derive(Debug, Serialize)]
pub struct LicenseReport {
    pub node_id: String,
    /// The document in force (absent: none).
    pub license: Option<tollgate_license::Document>,
    /// The armored text in force, as signed.
    pub armored: Option<String>,
    pub evaluation: Option<std::sync::Arc<tollgate_license::Evaluation>>,
    /// The evaluation in plain words, one sentence per line.
    pub explanation: Option<String>,
    /// The latest candidate refused from the state dir, `[license] file`, the license server
    /// or the mesh since the last install; while no license is in force its code is the
    /// status.
    pub refused: Option<crate::license::RefusedLicense>,
    /// The URL of the license server that answered last (null: none has, or none is
    /// configured).
    pub source: Option<String>,
    /// This node's clock against the trusted clock licenses are judged by (`status` `OK` or
    /// `CLOCK_SKEW`, `source` `license server` or `peers`; null before the first lease
    /// answer or peer's clock). While `CLOCK_SKEW`, licenses are judged by that time.
    pub clock: Option<crate::license::ClockCheck>,
    /// Each source's latest comparison (license server, peers).
    pub clocks: Vec<crate::license::ClockCheck>,
    /// The rollback watermarks: `serial_seen_max` (highest serial installed here),
    /// `serial_learned_max` (highest learned from peers and the license server),
    /// `time_recorded_max_ms` (latest wall time recorded).
    pub watermarks: serde_json::Value,
}

pub fn license_report(state: &AgentState) -> LicenseReport {
    let current = state.license.current();
    // Evaluated now (tens of nanoseconds), so the answer reflects this instant's usage.
    let evaluation = Some(state.evaluate_license());
    let clock = state.license.clock();
    LicenseReport {
        node_id: state.node_id.clone(),
        license: current.as_ref().map(|c| c.document().clone()),
        armored: current.as_ref().map(|c| c.armored().to_owned()),
        explanation: evaluation.as_ref().map(|e| {
            let mut text = e.explain();
            if let Some(c) = clock.as_ref().filter(|c| c.skewed()) {
                text.push_str(&format!(
                    "\nCLOCK_SKEW: this node's clock is {} s {} {}; licenses are judged by {} time.",
                    c.skew_ms.unsigned_abs() / 1000,
                    if c.skew_ms > 0 { "behind" } else { "ahead of" },
                    c.source_possessive(),
                    c.source_possessive()
                ));
            }
            text
        }),
        evaluation,
        refused: state.license.refused(),
        source: state.fetcher.as_ref().and_then(|f| f.source()),
        clock,
        clocks: state.license.clocks(),
        watermarks: state.license.watermarks(),
    }
}

async fn cluster(State(state): State<Arc<AgentState>>) -> Response {
    match &state.cluster {
        Some(c) => axum::Json(crate::cluster::report(&state, c)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NO_MESH",
            "this agent is not part of a cluster ([mesh] is not configured)",
        ),
    }
}

/// Rotates the cluster's AoR key: the next generation wins on every node; each AoR moves to
/// it at its next refresh (docs/cluster.md, "Rotating the AoR key").
async fn cluster_aor_key_rotate(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Admin).await {
        return r;
    }
    let Some(cluster) = &state.cluster else {
        return error(
            StatusCode::NOT_FOUND,
            "NO_MESH",
            "this agent is not part of a cluster ([mesh] is not configured)",
        );
    };
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    let created_at_ms = tollgate_ingest::wall_clock().unix_ms();
    let generation = cluster.aor_key.lock().generation + 1;
    let sent = cluster
        .mesh
        .aor(tollgate_mesh::AorInput::Rotate { key, created_at_ms })
        .await;
    if sent.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "MESH_STOPPED",
            "the mesh has stopped",
        );
    }
    let id = tollgate_replication::AorKey {
        generation,
        created_at_ms,
        key,
    }
    .id();
    tracing::info!(
        generation,
        key_id = format_args!("{id:016x}"),
        "cluster AoR key rotated"
    );
    axum::Json(serde_json::json!({
        "aor_key_id": format!("{id:016x}"),
        "aor_key_generation": generation,
    }))
    .into_response()
}

async fn whoami(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    let result = match check_credentials(&state, &headers, client, |s, authorization| {
        s.users.identify(authorization)
    })
    .await
    {
        Ok(result) => result,
        Err(response) => return response,
    };
    match result {
        Ok(Some((user, role))) => {
            axum::Json(serde_json::json!({"user": user, "role": role, "users_configured": true}))
                .into_response()
        }
        Ok(None) => {
            axum::Json(serde_json::json!({"user": null, "role": null, "users_configured": false}))
                .into_response()
        }
        Err(_) => error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid credentials",
        ),
    }
}

/// The body of `GET /api/v1/ledger`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LedgerReport {
    pub node_id: String,
    /// The node's Ed25519 public key, standard base64 (what `--public-key` takes).
    pub node_public_key: String,
    /// Where the ledger's segments are.
    pub ledger_dir: String,
    /// The last entry of the chain (absent: no entry yet).
    pub head: Option<LedgerHead>,
    pub entries_written: u64,
    pub write_failures: u64,
    /// State resets this agent detected at start (ledger lost, node key lost).
    pub state_resets_seen: u64,
}

/// The head of the ledger in `GET /api/v1/ledger`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LedgerHead {
    pub seq: u64,
    /// BLAKE3 of the head entry (body and signature), hex.
    pub hash: String,
    pub interval_end_ms: u64,
}

pub fn ledger_report(state: &AgentState) -> LedgerReport {
    let stats = state.ledger.stats();
    LedgerReport {
        node_id: state.node_id.clone(),
        node_public_key: tollgate_ledger::public_key_text(&state.ledger.public_key()),
        ledger_dir: state.ledger.dir().display().to_string(),
        head: state.ledger.head().map(|h| LedgerHead {
            seq: h.seq,
            hash: h.hash.iter().map(|b| format!("{b:02x}")).collect(),
            interval_end_ms: h.interval_end_ms,
        }),
        entries_written: stats.entries_written,
        write_failures: stats.write_failures,
        state_resets_seen: stats.resets_seen,
    }
}

async fn ledger_get(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Viewer).await {
        return r;
    }
    axum::Json(ledger_report(&state)).into_response()
}

async fn license_get(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Viewer).await {
        return r;
    }
    axum::Json(license_report(&state)).into_response()
}

fn installed_response(
    state: &AgentState,
    result: Result<Installed, crate::license::InstallError>,
) -> Response {
    match result {
        Ok(installed) => {
            // Re-evaluate at once so the answer and the next admit see the new license.
            state.evaluate_license();
            axum::Json(installed).into_response()
        }
        Err(e) => {
            let status = match e {
                crate::license::InstallError::Read { .. }
                | crate::license::InstallError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
                crate::license::InstallError::NoSource => StatusCode::NOT_FOUND,
                crate::license::InstallError::NotNewer { .. } => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            tracing::warn!(code = e.code(), error = %e, "license refused");
            error(status, e.code(), e.to_string())
        }
    }
}

async fn reconcile_get(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Viewer).await {
        return r;
    }
    axum::Json(state.reconciler.status()).into_response()
}

/// The body of `POST /api/v1/reconcile`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ReconcileAnswer {
    /// One run per `[[reconcile]]` source, in configuration order.
    pub runs: Vec<crate::reconcile::RunReport>,
    /// The corrections of all runs, by kind.
    pub corrections: crate::reconcile::CorrectionCounts,
}

async fn reconcile_post(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Admin).await {
        return r;
    }
    let mut runs = state.reconciler.run_all().await;
    // Lists pushed as sync-* lines that are complete are applied now too.
    runs.extend(state.reconciler.apply_sync_lists().await);
    let mut total = crate::reconcile::CorrectionCounts::default();
    for run in &runs {
        let c = &run.corrections;
        total.phantom_call += c.phantom_call;
        total.missing_call += c.missing_call;
        total.phantom_contact += c.phantom_contact;
        total.missing_contact += c.missing_contact;
        total.emergency_updates += c.emergency_updates;
        total.expiry_updates += c.expiry_updates;
        total.shards_skipped += c.shards_skipped;
    }
    axum::Json(ReconcileAnswer {
        runs,
        corrections: total,
    })
    .into_response()
}

async fn license_put(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Admin).await {
        return r;
    }
    let now = tollgate_ingest::wall_clock().unix_ms();
    let result = state.license.install(&body, now, "upload");
    installed_response(&state, result)
}

async fn license_reload(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Admin).await {
        return r;
    }
    // With a license server: fetch from it now (this is also how a subscription renews on
    // demand). Without one: re-read the license file.
    if let Some(fetcher) = state.fetcher.clone() {
        return match fetcher.fetch_now(&state, "reload").await {
            Ok(installed) => {
                state.evaluate_license();
                axum::Json(installed).into_response()
            }
            Err(crate::license_fetch::FetchFailure::Refused(e)) => {
                installed_response(&state, Err(e))
            }
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                e.reason(),
                format!("{e}; the license in force keeps working until its signature lease ends"),
            ),
        };
    }
    let now = tollgate_ingest::wall_clock().unix_ms();
    let result = state.license.reload(now);
    installed_response(&state, result)
}

#[derive(Debug, serde::Deserialize)]
struct AdmitQuery {
    call_id: String,
    #[serde(default)]
    emergency: Option<String>,
}

async fn admit(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
    Query(q): Query<AdmitQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Viewer).await {
        return r;
    }
    let emergency = matches!(q.emergency.as_deref(), Some("1" | "true" | "yes" | ""));
    match state.admission.decide(q.call_id.as_bytes(), emergency) {
        tollgate_ingest::Decision::Admit => {
            axum::Json(serde_json::json!({"decision": "ok"})).into_response()
        }
        tollgate_ingest::Decision::Deny(code) => (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"decision": "deny", "code": code})),
        )
            .into_response(),
    }
}

async fn feature(
    State(state): State<Arc<AgentState>>,
    client: Client,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, client, Role::Viewer).await {
        return r;
    }
    let licensed = state
        .license
        .current()
        .is_some_and(|c| c.document().has_feature(&name))
        && state
            .license
            .last_evaluation()
            .is_some_and(|e| e.license_status == tollgate_license::StatusCode::Ok);
    let body = axum::Json(serde_json::json!({"feature": name, "licensed": licensed}));
    if licensed {
        body.into_response()
    } else {
        (StatusCode::FORBIDDEN, body).into_response()
    }
}
