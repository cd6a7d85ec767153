//! The HTTPS API (axum). Endpoints:
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/healthz` | `ok` (200) while the server runs |
//! | GET | `/api/v1/keys` | the signing public keys as JSON (no token needed: they are public) |
//! | POST | `/api/v1/licenses/{license_key}/lease` | a signed lease (bearer token; see [`crate::service`]) |
//! | POST | `/api/v1/licenses/{license_key}/usage` | store a usage report (bearer token) |
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
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tollgate_license_client::ErrorBody;
use tollgate_license_client::wire::USAGE_REPORT_LEN_MAX;

use crate::service::{Refused, Service};

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
        .route("/api/v1/keys", get(keys))
        .route("/api/v1/licenses/{license_key}/lease", post(lease))
        .route("/api/v1/licenses/{license_key}/usage", post(usage))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LEN_MAX))
        .with_state(AppState { service, clock })
}

async fn keys(State(state): State<AppState>) -> Response {
    let now = (state.clock)();
    blocking(&state, move |service| {
        Ok(serde_json::json!({ "keys": service.public_keys(now) }))
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
