//! The operator's web page on the admin port: plain HTML, CSS and JavaScript embedded in the
//! binary (no CDN, no build step: it works on an air-gapped platform). Routes:
//!
//! | method | path | answer |
//! | --- | --- | --- |
//! | GET | `/` | the page (`assets/index.html`) |
//! | GET | `/assets/app.js` | the script: polls the admin API, draws gauges and charts |
//! | GET | `/assets/style.css` | the style sheet (light and dark, phone to desktop) |
//! | GET | `/assets/icon.svg` | the page icon |
//!
//! The page reads only the admin API of the agent that serves it (`http.rs`): usage every
//! 2 s, the license and its evaluation, the per-minute history, and `/api/v1/cluster` once
//! the mesh provides it. Reload and Upload send the signed-in user's credentials as HTTP
//! basic auth; the API decides (200/401/403/422) and the page shows its answer.
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles, images and
//! requests from this origin only, no inline script or style, no framing, no form posts.

use axum::Router;
use axum::http::{HeaderName, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The policy on every page response: nothing inline, nothing from elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file and the path it is served at.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Everything the page is made of.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../assets/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
    Asset {
        path: "/assets/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/style.css"),
    },
    Asset {
        path: "/assets/icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../assets/icon.svg"),
    },
];

/// Routes of the web page and its assets (they need no agent state).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { serve(asset) }))
    })
}

fn serve(asset: &'static Asset) -> impl IntoResponse {
    let headers: [(HeaderName, &'static str); 6] = [
        (header::CONTENT_TYPE, asset.content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Small files: revalidate every time, so an upgraded agent serves its own page.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// GETs `path` from a server running `routes()`: (status line, lowercased headers, body).
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap();
        (
            status.to_owned(),
            headers.to_ascii_lowercase(),
            body.to_owned(),
        )
    }

    #[tokio::test]
    async fn page_and_assets_are_served_with_their_content_types_and_the_csp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes::<()>()).await });
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/style.css", "text/css; charset=utf-8"),
            ("/assets/icon.svg", "image/svg+xml"),
        ] {
            let (status, headers, body) = get(addr, path).await;
            assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
            assert!(
                headers.contains(&format!("content-type: {content_type}\r\n")),
                "{path}: {headers}"
            );
            assert!(
                headers.contains(&format!(
                    "content-security-policy: {CONTENT_SECURITY_POLICY}"
                )),
                "{path}: {headers}"
            );
            assert!(
                headers.contains("x-content-type-options: nosniff"),
                "{path}"
            );
            assert!(!body.is_empty(), "{path}");
        }
        let (status, _, _) = get(addr, "/assets/missing.js").await;
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    }

    #[test]
    fn the_page_loads_only_its_own_assets_and_has_no_inline_script_or_style() {
        let html = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            assert!(html.contains(asset.path), "index.html uses {}", asset.path);
        }
        // The CSP forbids inline code: every <script> has a src, no style="" or on*="".
        assert_eq!(
            html.matches("<script").count(),
            html.matches("<script src=\"/assets/").count()
        );
        assert!(!html.contains("<style"), "no inline style element");
        assert!(!html.contains(" style=\""), "no inline style attribute");
        assert!(!html.contains(" onclick="), "no inline handlers");
        for asset in &ASSETS {
            // The SVG namespace is a name, not a request; anything else absolute would be.
            let body = asset.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} loads nothing from elsewhere",
                asset.path
            );
        }
    }
}
