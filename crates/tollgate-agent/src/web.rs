//! The operator's web page at `/` on the admin port: assets embedded in the binary (no CDN;
//! it works on an air-gapped platform). (Being written.)

use std::sync::Arc;

use axum::Router;
use axum::response::Html;
use axum::routing::get;

use crate::AgentState;

/// Routes of the web page and its assets.
pub fn routes() -> Router<Arc<AgentState>> {
    Router::new().route(
        "/",
        get(|| async { Html("<!doctype html><title>tollgate</title><p>tollgate agent</p>") }),
    )
}
