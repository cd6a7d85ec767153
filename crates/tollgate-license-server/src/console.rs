//! The vendor console, `/console/`: one page (HTML, a script, a style sheet, embedded in the
//! binary: no CDN, nothing fetched elsewhere) that vendor staff use over the admin API
//! ([`crate::admin_api`]): customers (add, suspend, resume), licenses (issue and renew from a
//! spec), tokens (issued and shown once, revoked), usage per license and month with peaks,
//! limits, over-limit minutes, a chart and the CSV, silent nodes, and the audit log. A
//! viewer sees everything and changes nothing (the API refuses; the page hides the forms).
//!
//! Every answer carries a strict Content-Security-Policy ([`CSP`]): scripts and styles from
//! this origin only (no inline code), API calls to this origin only, no frames.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The console's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
base-uri 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../assets/console/index.html"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/console/console.css"),
    },
];

/// `GET /console`: to `/console/`.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/` and `GET /console/{file}`.
pub async fn page(file: Option<axum::extract::Path<String>>) -> Response {
    let name = file.as_ref().map_or("", |p| p.0.as_str());
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return with_headers(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found",
        );
    };
    with_headers(StatusCode::OK, asset.content_type, asset.body)
}

fn with_headers(status: StatusCode, content_type: &'static str, body: &'static str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_code_and_names_only_embedded_files() {
        let html = ASSETS[0].body;
        assert!(!html.contains("<script>") && !html.contains(" style="));
        // No event handler attribute (` onclick=`, …).
        let handler = html.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "an inline event handler");
        for src in ["src=\"console.js\"", "href=\"console.css\""] {
            assert!(html.contains(src), "{src}");
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no CDN"
        );
        let js = ASSETS[1].body;
        assert!(!js.contains("innerHTML") && !js.contains("eval("));
    }
}
