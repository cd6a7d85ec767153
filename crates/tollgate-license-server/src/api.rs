//! The HTTPS API (axum). Endpoints:
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/healthz` | `ok` (200) while the server runs |
//! | GET | `/metrics` | Prometheus text (see [`crate::metrics`]) |
//! | GET | `/api/v1/keys` | the signing public keys as JSON (no token needed: they are public) |
//! | POST | `/api/v1/licenses/{license_key}/lease` | a signed lease (bearer token; see [`crate::service`]) |
//! | POST | `/api/v1/licenses/{license_key}/usage` | store a usage report (bearer token) |
//! | … | `/api/v1/admin/…` | the admin API for vendor staff (see [`crate::admin_api`]) |
//! | GET | `/console/` | the vendor console, a page over the admin API (see [`crate::console`]) |
//!
//! Every error answer is JSON `{"error": "<word>", "message": "<sentence>"}`. Bodies are
//! limited to [`BODY_LEN_MAX`] (413 beyond). Database work runs on the blocking pool, never
//! on the runtime's threads. The client address is the TCP peer's: the server must not sit
//! behind a reverse proxy that hides it (a CONNECT proxy on the client side is fine: the
//! token is then bound to the proxy's address).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tollgate_events::WallTime;
use tollgate_license_client::ErrorBody;
use tollgate_license_client::wire::USAGE_REPORT_LEN_MAX;

use tollgate_license::timestamp::format_rfc3339;

use crate::admin;
use crate::admin_api::{
    ContractBody, CustomerBody, LicenseBody, LoginBody, Role, RotateBody, RotateTokenBody,
    TokenBody, admin_refusal, audit_json, license_json, parse_activation, parse_contract,
    parse_expiry, report_json, token_json,
};
use crate::service::{Refused, Service};
use crate::store::VendorUser;

/// Largest request body accepted.
pub const BODY_LEN_MAX: usize = USAGE_REPORT_LEN_MAX;
/// Longest `Authorization` header value considered.
pub const AUTHORIZATION_LEN_MAX: usize = 1024;

/// The clock the API reads (Unix ms); tests inject their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

#[derive(Clone)]
struct AppState {
    service: Arc<Service>,
    clock: Clock,
}

/// The router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(service: Arc<Service>, clock: Clock) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/keys", get(keys))
        .route("/api/v1/licenses/{license_key}/lease", post(lease))
        .route("/api/v1/licenses/{license_key}/usage", post(usage))
        .route("/api/v1/admin/login", post(admin_login))
        .route("/api/v1/admin/logout", post(admin_logout))
        .route("/api/v1/admin/whoami", get(admin_whoami))
        .route(
            "/api/v1/admin/customers",
            get(admin_customers).post(admin_customer_add),
        )
        .route(
            "/api/v1/admin/customers/{name}/suspend",
            post(admin_customer_suspend),
        )
        .route(
            "/api/v1/admin/customers/{name}/resume",
            post(admin_customer_resume),
        )
        .route(
            "/api/v1/admin/licenses",
            get(admin_licenses).post(admin_license_create),
        )
        .route(
            "/api/v1/admin/licenses/{license_key}",
            get(admin_license).put(admin_license_update),
        )
        .route(
            "/api/v1/admin/licenses/{license_key}/suspend",
            post(admin_license_suspend),
        )
        .route(
            "/api/v1/admin/licenses/{license_key}/resume",
            post(admin_license_resume),
        )
        .route(
            "/api/v1/admin/licenses/{license_key}/contract",
            post(admin_contract),
        )
        .route(
            "/api/v1/admin/tokens",
            get(admin_tokens).post(admin_token_issue),
        )
        .route("/api/v1/admin/tokens/{id}/revoke", post(admin_token_revoke))
        .route("/api/v1/admin/tokens/{id}/rotate", post(admin_token_rotate))
        .route("/api/v1/admin/keys", get(admin_keys))
        .route("/api/v1/admin/keys/rotate", post(admin_key_rotate))
        .route("/api/v1/admin/reports", get(admin_reports))
        .route("/api/v1/admin/ledger", get(admin_ledger))
        .route("/api/v1/admin/audit", get(admin_audit))
        .route("/api/v1/admin/billing/monthly", get(admin_billing_monthly))
        .route("/api/v1/admin/nodes", get(admin_nodes))
        .route("/console", get(crate::console::redirect))
        .route("/console/", get(|| crate::console::page(None)))
        .route(
            "/console/{file}",
            get(|file: Path<String>| crate::console::page(Some(file))),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LEN_MAX))
        .with_state(AppState { service, clock })
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.service.render_metrics(),
    )
        .into_response()
}

/// 429 with `Retry-After` for a throttled address.
fn throttled(state: &AppState, peer: SocketAddr) -> Option<Response> {
    let retry_after = state.service.throttled(peer.ip(), (state.clock)())?;
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        &format!(
            "too many requests with a missing or unknown API token from {}; retry in {retry_after} s",
            peer.ip().to_canonical()
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Some(response)
}

async fn keys(State(state): State<AppState>) -> Response {
    let now = (state.clock)();
    blocking(&state, move |service| {
        Ok(serde_json::json!({ "keys": service.public_keys(WallTime::from_unix_ms(now)) }))
    })
    .await
}

/// What the lease and usage endpoints hand the service: the license key, the bearer token
/// (checked by the service), the client address, the body and the time.
struct LicenseRequest {
    license_key: String,
    token: Option<String>,
    peer: SocketAddr,
    body: Bytes,
    now: u64,
}

async fn lease(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(license_key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = throttled(&state, peer) {
        return response;
    }
    let r = license_request(&state, peer, license_key, &headers, body);
    blocking(&state, move |service| {
        service.lease(
            &r.license_key,
            r.token.as_deref(),
            r.peer.ip(),
            &r.body,
            r.now,
        )
    })
    .await
}

async fn usage(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(license_key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = throttled(&state, peer) {
        return response;
    }
    let r = license_request(&state, peer, license_key, &headers, body);
    blocking(&state, move |service| {
        service
            .usage(
                &r.license_key,
                r.token.as_deref(),
                r.peer.ip(),
                &r.body,
                r.now,
            )
            .map(|id| serde_json::json!({ "report_id": id }))
    })
    .await
}

fn license_request(
    state: &AppState,
    peer: SocketAddr,
    license_key: String,
    headers: &HeaderMap,
    body: Bytes,
) -> LicenseRequest {
    LicenseRequest {
        license_key,
        token: bearer(headers),
        peer,
        body,
        now: (state.clock)(),
    }
}

/// Runs `call` on the blocking pool (the store is SQLite) and answers with its JSON, its
/// refusal, or a 500 if the task panicked.
async fn blocking<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    call: impl FnOnce(&Service) -> Result<T, Refused> + Send + 'static,
) -> Response {
    let service = Arc::clone(&state.service);
    match tokio::task::spawn_blocking(move || call(&service)).await {
        Ok(Ok(answer)) => axum::Json(answer).into_response(),
        Ok(Err(refused)) => refusal(&refused),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        ),
    }
}

/// `?license=KEY&limit=N` of the admin listings.
#[derive(Debug, Default, serde::Deserialize)]
struct ListQuery {
    license: Option<String>,
    limit: Option<u32>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| Refused::new(400, "bad_request", format!("request body: {e}")))
}

/// Runs an admin call on the blocking pool after checking the session and its role.
async fn admin_call<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    headers: &HeaderMap,
    role: Role,
    call: impl FnOnce(&Service, &VendorUser, u64) -> Result<T, Refused> + Send + 'static,
) -> Response {
    let token = bearer(headers);
    let now = (state.clock)();
    blocking(state, move |service| {
        let user = service.admin_user(token.as_deref(), role, now)?;
        call(service, &user, now)
    })
    .await
}

async fn admin_login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let now = (state.clock)();
    blocking(&state, move |service| {
        let login: LoginBody = json_body(&body)?;
        service.admin_login(&login.name, &login.password, peer.ip(), now)
    })
    .await
}

async fn admin_logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = bearer(&headers);
    admin_call(&state, &headers, Role::Viewer, move |service, _, _| {
        if let Some(token) = token {
            service.admin_logout(&token)?;
        }
        Ok(serde_json::json!({ "logged_out": true }))
    })
    .await
}

async fn admin_whoami(State(state): State<AppState>, headers: HeaderMap) -> Response {
    admin_call(&state, &headers, Role::Viewer, |_, user, _| {
        Ok(serde_json::json!({ "name": user.name, "role": user.role }))
    })
    .await
}

async fn admin_customers(State(state): State<AppState>, headers: HeaderMap) -> Response {
    admin_call(&state, &headers, Role::Viewer, |service, _, _| {
        let customers = service
            .store
            .lock()
            .read()
            .customers()
            .map_err(store_refusal)?;
        let list: Vec<_> = customers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "name": c.name,
                    "created_at": format_rfc3339(WallTime::from_unix_ms(c.created_at_ms)),
                    "suspended_at": c.suspended_at_ms.map(|ms| format_rfc3339(WallTime::from_unix_ms(ms))),
                })
            })
            .collect();
        Ok(serde_json::json!({ "customers": list }))
    })
    .await
}

async fn admin_customer_add(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: CustomerBody = json_body(&body)?;
        let customer = service.admin_action(user, now, |ctx, store| {
            admin::add_customer(ctx, store, &body.name)
        })?;
        Ok(serde_json::json!({ "id": customer.id, "name": customer.name }))
    })
    .await
}

async fn admin_customer_suspend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    admin_customer_suspension(state, headers, name, true).await
}

async fn admin_customer_resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    admin_customer_suspension(state, headers, name, false).await
}

async fn admin_customer_suspension(
    state: AppState,
    headers: HeaderMap,
    name: String,
    suspend: bool,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let before = service.admin_action(user, now, |ctx, store| {
            admin::suspend_customer(ctx, store, &name, suspend)
        })?;
        Ok(serde_json::json!({
            "name": name,
            "suspended": suspend,
            "was_suspended": before.suspended_at_ms.is_some(),
        }))
    })
    .await
}

async fn admin_license_suspend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(license_key): Path<String>,
) -> Response {
    admin_license_suspension(state, headers, license_key, true).await
}

async fn admin_license_resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(license_key): Path<String>,
) -> Response {
    admin_license_suspension(state, headers, license_key, false).await
}

async fn admin_license_suspension(
    state: AppState,
    headers: HeaderMap,
    license_key: String,
    suspend: bool,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let before = service.admin_action(user, now, |ctx, store| {
            admin::suspend_license(ctx, store, &license_key, suspend)
        })?;
        Ok(serde_json::json!({
            "license_key": license_key,
            "customer": before.customer,
            "suspended": suspend,
            "was_suspended": before.suspended_at_ms.is_some(),
        }))
    })
    .await
}

async fn admin_licenses(State(state): State<AppState>, headers: HeaderMap) -> Response {
    admin_call(&state, &headers, Role::Viewer, |service, _, _| {
        let licenses = service
            .store
            .lock()
            .read()
            .licenses()
            .map_err(store_refusal)?;
        let list: Vec<_> = licenses.iter().map(license_json).collect();
        Ok(serde_json::json!({ "licenses": list }))
    })
    .await
}

async fn admin_license(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(license_key): Path<String>,
) -> Response {
    admin_call(&state, &headers, Role::Viewer, move |service, _, now| {
        let store = service.store.lock();
        let db = store.read();
        let record = db.license_required(&license_key).map_err(store_refusal)?;
        let tokens = db.tokens(Some(&license_key)).map_err(store_refusal)?;
        let history = db.documents(&license_key).map_err(store_refusal)?;
        let mut json = license_json(&record);
        json["document"] = serde_json::Value::String(record.document.clone());
        json["tokens"] = tokens.iter().map(|t| token_json(t, now)).collect();
        json["history"] = history
            .iter()
            .map(|d| {
                serde_json::json!({
                    "serial": d.serial,
                    "cause": d.cause,
                    "key_id": d.key_id,
                    "issued_at": format_rfc3339(WallTime::from_unix_ms(d.issued_at_ms)),
                    "signature_valid_until": d.signature_valid_until_ms.map(|ms| format_rfc3339(WallTime::from_unix_ms(ms))),
                    "valid_until": d.valid_until_ms.map(|ms| format_rfc3339(WallTime::from_unix_ms(ms))),
                })
            })
            .collect();
        Ok(json)
    })
    .await
}

async fn admin_license_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: LicenseBody = json_body(&body)?;
        let record = service.admin_action(user, now, |ctx, store| {
            let contract = parse_contract(body.contract.as_deref())?;
            admin::create_license(ctx, store, &body.spec, contract).map(|(record, _, _)| record)
        })?;
        Ok(license_json(&record))
    })
    .await
}

async fn admin_license_update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(license_key): Path<String>,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: LicenseBody = json_body(&body)?;
        let (document, previous) = service.admin_action(user, now, |ctx, store| {
            if body.contract.is_some() {
                return Err(admin::AdminError::Input(
                    "contract: set it with POST …/contract".into(),
                ));
            }
            admin::update_license(ctx, store, &license_key, &body.spec)
        })?;
        Ok(serde_json::json!({
            "license_key": document.license_key,
            "serial": document.serial,
            "previous_serial": previous,
        }))
    })
    .await
}

async fn admin_contract(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(license_key): Path<String>,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: ContractBody = json_body(&body)?;
        let previous = service.admin_action(user, now, |ctx, store| {
            let contract = parse_contract(Some(&body.contract))?;
            admin::set_contract(ctx, store, &license_key, contract)
        })?;
        Ok(serde_json::json!({
            "license_key": license_key,
            "contract": body.contract,
            "previous": previous.as_str(),
        }))
    })
    .await
}

async fn admin_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    admin_call(&state, &headers, Role::Viewer, move |service, _, now| {
        let tokens = service
            .store
            .lock()
            .read()
            .tokens(query.license.as_deref())
            .map_err(store_refusal)?;
        let list: Vec<_> = tokens.iter().map(|t| token_json(t, now)).collect();
        Ok(serde_json::json!({ "tokens": list }))
    })
    .await
}

async fn admin_token_issue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: TokenBody = json_body(&body)?;
        let (id, token, allowed) = service.admin_action(user, now, |ctx, store| {
            let expires = parse_expiry("expires_at", body.expires_at.as_deref())?;
            admin::issue_token(
                ctx,
                store,
                &body.license,
                &body.allow,
                body.note.as_deref(),
                expires,
            )
        })?;
        Ok(serde_json::json!({
            "id": id,
            "license_key": body.license,
            "token": token,
            "allowed": allowed.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "expires_at": body.expires_at,
        }))
    })
    .await
}

async fn admin_token_rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: RotateTokenBody = if body.is_empty() {
            RotateTokenBody::default()
        } else {
            json_body(&body)?
        };
        let rotated = service.admin_action(user, now, |ctx, store| {
            let expires = parse_expiry("expires_at", body.expires_at.as_deref())?;
            let grace_ms = body
                .grace_s
                .map_or(admin::TOKEN_ROTATION_GRACE_MS_DEFAULT, |s| {
                    s.saturating_mul(1000)
                });
            admin::rotate_token(ctx, store, id, grace_ms, expires)
        })?;
        Ok(serde_json::json!({
            "id": rotated.id,
            "license_key": rotated.old.license_key,
            "token": rotated.token,
            "expires_at": rotated.expires_at_ms.map(crate::rfc3339_ms),
            "replaces": token_json(&rotated.old, now),
        }))
    })
    .await
}

async fn admin_token_revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let record =
            service.admin_action(user, now, |ctx, store| admin::revoke_token(ctx, store, id))?;
        Ok(token_json(&record, now))
    })
    .await
}

async fn admin_keys(State(state): State<AppState>, headers: HeaderMap) -> Response {
    admin_call(&state, &headers, Role::Viewer, |service, _, now| {
        Ok(serde_json::json!({ "keys": service.public_keys(WallTime::from_unix_ms(now)) }))
    })
    .await
}

async fn admin_key_rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    admin_call(&state, &headers, Role::Admin, move |service, user, now| {
        let body: RotateBody = if body.is_empty() {
            RotateBody::default()
        } else {
            json_body(&body)?
        };
        let (key, _, _) = service.admin_action(user, now, |ctx, store| {
            let activation =
                parse_activation(body.activate_at.as_deref(), WallTime::from_unix_ms(now))?;
            admin::rotate_key(ctx, store, activation)
        })?;
        Ok(serde_json::json!({
            "key_id": key.key_id().to_string(),
            "public_key": key.public_key().to_file_string().trim_end(),
        }))
    })
    .await
}

async fn admin_reports(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    admin_call(&state, &headers, Role::Viewer, move |service, _, _| {
        let reports = service
            .store
            .lock()
            .read()
            .reports(query.license.as_deref(), query.limit.unwrap_or(100))
            .map_err(store_refusal)?;
        let list: Vec<_> = reports.iter().map(report_json).collect();
        Ok(serde_json::json!({ "reports": list }))
    })
    .await
}

async fn admin_ledger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    admin_call(&state, &headers, Role::Viewer, move |service, _, _| {
        let store = service.store.lock();
        let db = store.read();
        let license = query.license.as_deref();
        let nodes = db.ledger_nodes(license).map_err(store_refusal)?;
        let flags = db
            .ledger_flags(license, query.limit.unwrap_or(100))
            .map_err(store_refusal)?;
        Ok(serde_json::json!({ "nodes": nodes, "flags": flags }))
    })
    .await
}

async fn admin_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    admin_call(&state, &headers, Role::Viewer, move |service, _, _| {
        let entries = service
            .store
            .lock()
            .read()
            .audit_log(query.license.as_deref(), query.limit.unwrap_or(100))
            .map_err(store_refusal)?;
        let list: Vec<_> = entries.iter().map(audit_json).collect();
        Ok(serde_json::json!({ "audit": list }))
    })
    .await
}

/// `?from=YYYY-MM&to=YYYY-MM&license=KEY&format=json|csv` of the billing view.
#[derive(Debug, Default, serde::Deserialize)]
struct BillingQuery {
    from: Option<String>,
    to: Option<String>,
    license: Option<String>,
    format: Option<String>,
}

async fn admin_billing_monthly(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<BillingQuery>,
) -> Response {
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("format {other:?}: json or csv"),
            );
        }
    };
    let token = bearer(&headers);
    let now = (state.clock)();
    let service = Arc::clone(&state.service);
    let result = tokio::task::spawn_blocking(move || {
        service.admin_user(token.as_deref(), Role::Viewer, now)?;
        let (first, last) =
            crate::billing::parse_range(query.from.as_deref(), query.to.as_deref(), now)
                .map_err(|e| Refused::new(400, "bad_request", e))?;
        let store = service.store.lock();
        let rows = crate::billing::monthly(&store.read(), first, last, query.license.as_deref())
            .map_err(store_refusal)?;
        Ok::<_, Refused>((first, last, rows))
    })
    .await;
    match result {
        Ok(Ok((_, _, rows))) if csv => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/csv; charset=utf-8"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"tollgate-billing.csv\""),
                ),
            ],
            crate::billing::csv(&rows),
        )
            .into_response(),
        Ok(Ok((first, last, rows))) => axum::Json(serde_json::json!({
            "from": first.to_string(),
            "to": last.to_string(),
            "months": rows,
        }))
        .into_response(),
        Ok(Err(refused)) => refusal(&refused),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        ),
    }
}

/// `?silent_after_s=N&silent=true` of the node view.
#[derive(Debug, Default, serde::Deserialize)]
struct NodesQuery {
    silent_after_s: Option<u64>,
    silent: Option<bool>,
}

async fn admin_nodes(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NodesQuery>,
) -> Response {
    admin_call(&state, &headers, Role::Viewer, move |service, _, now| {
        let silent_after_ms = match query.silent_after_s {
            None => crate::nodes::SILENT_AFTER_MS_DEFAULT,
            Some(s) if s > 0 && s.saturating_mul(1000) <= crate::nodes::SILENT_AFTER_MS_MAX => {
                s * 1000
            }
            Some(_) => {
                return Err(Refused::new(
                    400,
                    "bad_request",
                    "silent_after_s: 1 to 31622400 (a year)",
                ));
            }
        };
        let store = service.store.lock();
        let mut nodes =
            crate::nodes::nodes(&store.read(), now, silent_after_ms).map_err(store_refusal)?;
        if query.silent == Some(true) {
            nodes.retain(|n| n.silent);
        }
        Ok(serde_json::json!({
            "silent_after_s": silent_after_ms / 1000,
            "nodes": nodes,
        }))
    })
    .await
}

fn store_refusal(e: crate::store::StoreError) -> Refused {
    admin_refusal(admin::AdminError::Store(e))
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if value.len() > AUTHORIZATION_LEN_MAX {
        return None;
    }
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn refusal(refused: &Refused) -> Response {
    let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = error(status, refused.error, &refused.message);
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(seconds) = refused.retry_after_s
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = ErrorBody {
        error: error.to_owned(),
        message: message.to_owned(),
    };
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_leniently_but_only_as_bearer() {
        let check = |value: &str, expected: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(bearer(&headers).as_deref(), expected, "{value:?}");
        };
        check("Bearer tg_abc", Some("tg_abc"));
        check("bearer  tg_abc ", Some("tg_abc"));
        check("Basic dXNlcjpwdw==", None);
        check("Bearer", None);
        check("Bearer ", None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
