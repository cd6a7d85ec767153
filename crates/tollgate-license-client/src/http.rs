//! The HTTPS client: one `reqwest` client (rustls, the ring provider) per license server.
//!
//! - Only `https://` server URLs: the bearer token never travels in the clear, and
//!   redirects are not followed (a token is for one server).
//! - Proxies: an explicit [`ClientConfig::proxy`] is used for every request and wins over
//!   the environment; without one, `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY` (and their lower
//!   case forms) apply, unless [`ClientConfig::system_proxy`] is false. HTTPS goes through
//!   a proxy as a CONNECT tunnel, so the proxy never sees the token. The server sees the
//!   proxy's address: bind the token to the proxy's egress address.
//! - A private CA ([`ClientConfig::ca_bundle`], PEM, one or more certificates) is trusted
//!   in addition to the built-in web PKI roots.
//! - Every failure is a [`FetchError`] whose [`FetchError::reason`] is one of a few stable
//!   words, for logs and metrics.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

use crate::wire::{
    ERROR_BODY_LEN_MAX, LEASE_RESPONSE_LEN_MAX, LeaseRequest, LeaseResponse, ResponseError,
    UsageReport, is_license_key, lease_path, parse_error_body, parse_lease_response, usage_path,
};

/// Largest CA bundle file read.
pub const CA_BUNDLE_LEN_MAX: u64 = 1024 * 1024;
/// The default request timeout (connect, TLS, request and response together).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The connection phase never waits longer than this, whatever the timeout.
pub const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// How to reach the license server.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host[:port][/prefix]`, e.g. `https://licenses.example.com:7443`.
    pub server_url: Url,
    /// The license key (`[general] license_key`).
    pub license_key: String,
    /// The API token the vendor issued for this license (secret: never logged).
    pub token: String,
    /// An explicit proxy (`http://proxy:3128`); wins over the environment.
    pub proxy: Option<Url>,
    /// Without an explicit proxy, honour `HTTPS_PROXY` / `ALL_PROXY` / `NO_PROXY` (default
    /// true).
    pub system_proxy: bool,
    /// A PEM file of extra trusted CA certificates (a private CA, or a `--dev` server's
    /// self-signed certificate).
    pub ca_bundle: Option<PathBuf>,
    /// Whole-request timeout (default 30 s).
    pub timeout: Duration,
    /// The local address to connect from (tests use 127.0.0.2; multi-homed hosts pick the
    /// address their token is bound to).
    pub bind_address: Option<IpAddr>,
    /// This node's id, sent with lease requests for the server's audit log.
    pub node_id: Option<String>,
    /// This node's public key (base64), sent with lease requests: the server binds it to
    /// the node at its first lease.
    pub node_public_key: Option<String>,
}

impl ClientConfig {
    /// A configuration with the defaults: system proxy honoured, no extra CA, 30 s timeout.
    pub fn new(server_url: Url, license_key: &str, token: &str) -> ClientConfig {
        ClientConfig {
            server_url,
            license_key: license_key.to_owned(),
            token: token.to_owned(),
            proxy: None,
            system_proxy: true,
            ca_bundle: None,
            timeout: TIMEOUT_DEFAULT,
            bind_address: None,
            node_id: None,
            node_public_key: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server_url", &self.server_url.as_str())
            .field("license_key", &self.license_key)
            .field("token", &"<redacted>")
            .field("proxy", &self.proxy.as_ref().map(redacted_url))
            .field("system_proxy", &self.system_proxy)
            .field("ca_bundle", &self.ca_bundle)
            .field("timeout", &self.timeout)
            .field("bind_address", &self.bind_address)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// A URL without its user name and password (proxy URLs may carry credentials).
fn redacted_url(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// Why a [`LicenseClient`] cannot be built (configuration problems).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("license server url {0}: must be https://host[:port][/path] (the token is secret)")]
    ServerUrl(String),
    #[error("license key {0:?}: expected 1 to 128 characters of A-Z a-z 0-9 _ . -")]
    LicenseKey(String),
    #[error("the API token is empty or not a single printable ASCII word")]
    Token,
    #[error("proxy {url}: {problem}")]
    Proxy { url: String, problem: String },
    #[error("ca bundle {}: {source}", path.display())]
    CaBundleRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ca bundle {}: {problem}", path.display())]
    CaBundle { path: PathBuf, problem: String },
    #[error("cannot build the HTTPS client: {0}")]
    Build(String),
}

/// Why a request to the license server failed. [`FetchError::reason`] names the cause in
/// one low-cardinality word.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve the license server's name: {0}")]
    Dns(String),
    #[error("cannot connect to the license server: {0}")]
    Connect(String),
    #[error("TLS with the license server failed: {0}")]
    Tls(String),
    #[error("no answer from the license server within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the proxy failed: {0}")]
    Proxy(String),
    #[error("the license server answered {status}: {}", message.as_deref().unwrap_or("(no message)"))]
    Http {
        status: u16,
        /// The server's stable error word (`token_revoked`, …), when it sent one.
        error: Option<String>,
        message: Option<String>,
    },
    #[error("bad response from the license server: {0}")]
    BadResponse(#[from] ResponseError),
    #[error("request to the license server failed: {0}")]
    Other(String),
}

impl FetchError {
    /// One of `dns`, `connect`, `tls`, `timeout`, `proxy`, `http_401`, `http_403`,
    /// `http_404`, `http_5xx`, `http_other`, `bad_response`, `other`.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Dns(_) => "dns",
            FetchError::Connect(_) => "connect",
            FetchError::Tls(_) => "tls",
            FetchError::Timeout(_) => "timeout",
            FetchError::Proxy(_) => "proxy",
            FetchError::Http { status: 401, .. } => "http_401",
            FetchError::Http { status: 403, .. } => "http_403",
            FetchError::Http { status: 404, .. } => "http_404",
            FetchError::Http { status, .. } if *status >= 500 => "http_5xx",
            FetchError::Http { .. } => "http_other",
            FetchError::BadResponse(_) => "bad_response",
            FetchError::Other(_) => "other",
        }
    }

    /// The HTTP status, for an answer that was not a success.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one license on one license server.
#[derive(Debug, Clone)]
pub struct LicenseClient {
    http: reqwest::Client,
    license_key: String,
    node_id: Option<String>,
    node_public_key: Option<String>,
    lease_url: Url,
    usage_url: Url,
    authorization: HeaderValue,
    timeout: Duration,
    /// Whether requests go through a proxy (to blame it for connection failures).
    proxied: bool,
}

impl LicenseClient {
    pub fn new(config: ClientConfig) -> Result<LicenseClient, ClientError> {
        let url = &config.server_url;
        if url.scheme() != "https" || url.cannot_be_a_base() || url.host().is_none() {
            return Err(ClientError::ServerUrl(redacted_url(url)));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(ClientError::ServerUrl(redacted_url(url)));
        }
        if !is_license_key(&config.license_key) {
            return Err(ClientError::LicenseKey(config.license_key.clone()));
        }
        if config.token.is_empty()
            || config.token.len() > 1024
            || !config.token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ClientError::Token);
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token))
            .map_err(|_| ClientError::Token)?;
        authorization.set_sensitive(true);

        let endpoint = |path: &str| {
            let base = url.as_str().trim_end_matches('/');
            Url::parse(&format!("{base}{path}")).map_err(|_| ClientError::ServerUrl(base.into()))
        };
        let lease_url = endpoint(&lease_path(&config.license_key))?;
        let usage_url = endpoint(&usage_path(&config.license_key))?;

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(CONNECT_TIMEOUT_MAX))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
        if let Some(address) = config.bind_address {
            builder = builder.local_address(address);
        }
        let proxied = match (&config.proxy, config.system_proxy) {
            (Some(proxy), _) => {
                let problem = |problem: String| ClientError::Proxy {
                    url: redacted_url(proxy),
                    problem,
                };
                if !matches!(proxy.scheme(), "http" | "https" | "socks5" | "socks5h") {
                    return Err(problem("the scheme must be http or https".into()));
                }
                let proxy =
                    reqwest::Proxy::all(proxy.clone()).map_err(|e| problem(e.to_string()))?;
                builder = builder.proxy(proxy);
                true
            }
            (None, true) => system_proxy_applies(url),
            (None, false) => {
                builder = builder.no_proxy();
                false
            }
        };
        if let Some(path) = &config.ca_bundle {
            for certificate in read_ca_bundle(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(error_chain(&e)))?;
        Ok(LicenseClient {
            http,
            license_key: config.license_key,
            node_id: config.node_id,
            node_public_key: config.node_public_key,
            lease_url,
            usage_url,
            authorization,
            timeout: config.timeout,
            proxied,
        })
    }

    pub fn license_key(&self) -> &str {
        &self.license_key
    }

    /// `POST /api/v1/licenses/{key}/lease`: the license freshly signed (or the one signed
    /// moments ago, see the server's reuse window). The response is checked to be
    /// well formed and for this license key; its signature is for the caller to verify
    /// against its trusted keys.
    pub async fn fetch_lease(&self) -> Result<LeaseResponse, FetchError> {
        let request = LeaseRequest {
            node_id: self.node_id.clone(),
            node_public_key: self.node_public_key.clone(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        };
        let body = request.to_json();
        let bytes = self
            .post(&self.lease_url, body, LEASE_RESPONSE_LEN_MAX)
            .await?;
        let lease = parse_lease_response(&bytes)?;
        if lease.license_key != self.license_key {
            return Err(ResponseError::Mismatch("license_key").into());
        }
        Ok(lease)
    }

    /// `POST /api/v1/licenses/{key}/usage`: stores a usage report on the server.
    pub async fn send_usage(&self, report: &UsageReport) -> Result<(), FetchError> {
        let body = report.to_json();
        self.post(&self.usage_url, body, ERROR_BODY_LEN_MAX).await?;
        Ok(())
    }

    /// Posts `body` and returns the success answer's body (at most `len_max` bytes).
    async fn post(&self, url: &Url, body: Vec<u8>, len_max: usize) -> Result<Vec<u8>, FetchError> {
        let response = self
            .http
            .post(url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
            .map_err(|e| self.classify(&e))?;
        let status = response.status();
        if !status.is_success() {
            let body = self.read(response, ERROR_BODY_LEN_MAX).await.ok();
            let error_body = body.as_deref().and_then(parse_error_body);
            return Err(FetchError::Http {
                status: status.as_u16(),
                error: error_body.as_ref().map(|b| b.error.clone()),
                message: error_body.map(|b| b.message),
            });
        }
        self.read(response, len_max).await
    }

    /// Reads a body, refusing more than `len_max` bytes.
    async fn read(
        &self,
        mut response: reqwest::Response,
        len_max: usize,
    ) -> Result<Vec<u8>, FetchError> {
        if response
            .content_length()
            .is_some_and(|len| len > len_max as u64)
        {
            return Err(ResponseError::TooLong(len_max).into());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if bytes.len() + chunk.len() > len_max {
                return Err(ResponseError::TooLong(len_max).into());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    fn classify(&self, error: &reqwest::Error) -> FetchError {
        classify(error, self.proxied, self.timeout)
    }
}

/// Sorts a transport error into a [`FetchError`] by walking its causes: a rustls error is
/// TLS, a resolver error is DNS, a failed CONNECT tunnel is the proxy, a refused
/// connection is the proxy when one is in use and the server otherwise.
fn classify(error: &reqwest::Error, proxied: bool, timeout: Duration) -> FetchError {
    let text = error_chain(error);
    if error.is_timeout() || chain_has_io_kind(error, std::io::ErrorKind::TimedOut) {
        return FetchError::Timeout(timeout);
    }
    if chain_has_rustls_error(error) {
        return FetchError::Tls(text);
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("tunnel") || lower.contains("proxy") {
        return FetchError::Proxy(text);
    }
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        return if proxied {
            FetchError::Proxy(text)
        } else {
            FetchError::Dns(text)
        };
    }
    if error.is_connect() {
        return if proxied {
            FetchError::Proxy(text)
        } else {
            FetchError::Connect(text)
        };
    }
    if error.is_body() || error.is_decode() {
        return FetchError::BadResponse(ResponseError::Json(text));
    }
    FetchError::Other(text)
}

/// The error and its causes, `: `-separated, without repeats.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Every error in the chain, including the errors wrapped inside `io::Error`s (whose
/// `source` skips them).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

fn chain_has_rustls_error(error: &reqwest::Error) -> bool {
    causes(error).any(|e| e.downcast_ref::<rustls::Error>().is_some())
}

fn chain_has_io_kind(error: &reqwest::Error, kind: std::io::ErrorKind) -> bool {
    causes(error).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// Whether the environment's proxy settings would send requests to `url` through a proxy
/// (reqwest applies them; this only decides whom to blame for a failed connection).
fn system_proxy_applies(url: &Url) -> bool {
    let var = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    if var(["HTTPS_PROXY", "https_proxy"])
        .or_else(|| var(["ALL_PROXY", "all_proxy"]))
        .is_none()
    {
        return false;
    }
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let excluded = var(["NO_PROXY", "no_proxy"]).is_some_and(|list| {
        list.split(',').map(str::trim).any(|entry| {
            let entry = entry.trim_start_matches('.').trim_start_matches("*.");
            entry == "*"
                || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
                || cidr_contains(entry, host)
        })
    });
    !excluded
}

/// Whether `host` is an address inside a `NO_PROXY` CIDR entry like `10.0.0.0/8`.
fn cidr_contains(entry: &str, host: &str) -> bool {
    match (
        entry.parse::<ipnet::IpNet>(),
        host.parse::<std::net::IpAddr>(),
    ) {
        (Ok(net), Ok(ip)) => net.contains(&ip),
        _ => false,
    }
}

fn read_ca_bundle(path: &PathBuf) -> Result<Vec<reqwest::Certificate>, ClientError> {
    use std::io::Read as _;
    let read_error = |source| ClientError::CaBundleRead {
        path: path.clone(),
        source,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(CA_BUNDLE_LEN_MAX + 1)
        .read_to_end(&mut pem)
        .map_err(read_error)?;
    let problem = |problem: String| ClientError::CaBundle {
        path: path.clone(),
        problem,
    };
    if pem.len() as u64 > CA_BUNDLE_LEN_MAX {
        return Err(problem(format!("larger than {CA_BUNDLE_LEN_MAX} bytes")));
    }
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| problem(error_chain(&e)))?;
    if certificates.is_empty() {
        return Err(problem("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ClientConfig {
        ClientConfig::new(url.parse().unwrap(), "K-1", "tg_secret")
    }

    #[test]
    fn only_https_server_urls() {
        for bad in [
            "http://example.com",
            "https://u:p@example.com",
            "https://e.com/?q=1",
        ] {
            let error = LicenseClient::new(config(bad)).unwrap_err();
            assert!(matches!(error, ClientError::ServerUrl(_)), "{bad}: {error}");
            assert!(!error.to_string().contains(":p@"), "no password in {error}");
        }
        assert!(LicenseClient::new(config("https://example.com:7443")).is_ok());
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let client = LicenseClient::new(config("https://example.com/licensing/")).unwrap();
        assert_eq!(
            client.lease_url.as_str(),
            "https://example.com/licensing/api/v1/licenses/K-1/lease"
        );
        assert_eq!(
            client.usage_url.as_str(),
            "https://example.com/licensing/api/v1/licenses/K-1/usage"
        );
    }

    #[test]
    fn bad_keys_tokens_and_bundles_are_configuration_errors() {
        let mut c = config("https://example.com");
        c.license_key = "../x".into();
        assert!(matches!(
            LicenseClient::new(c),
            Err(ClientError::LicenseKey(_))
        ));
        for token in ["", "two words", "line\nbreak"] {
            let mut c = config("https://example.com");
            c.token = token.into();
            assert!(
                matches!(LicenseClient::new(c), Err(ClientError::Token)),
                "{token:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = config("https://example.com");
        c.ca_bundle = Some(dir.path().join("missing.pem"));
        assert!(matches!(
            LicenseClient::new(c),
            Err(ClientError::CaBundleRead { .. })
        ));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let mut c = config("https://example.com");
        c.ca_bundle = Some(empty);
        assert!(matches!(
            LicenseClient::new(c),
            Err(ClientError::CaBundle { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token_or_proxy_password() {
        let mut c = config("https://example.com");
        c.proxy = Some("http://user:hunter2@proxy:3128".parse().unwrap());
        let text = format!("{c:?}");
        assert!(
            !text.contains("tg_secret") && !text.contains("hunter2"),
            "{text}"
        );
        let client = LicenseClient::new(c).unwrap();
        assert!(!format!("{client:?}").contains("tg_secret"));
    }

    #[test]
    fn reasons_are_stable_words() {
        let http = |status| FetchError::Http {
            status,
            error: None,
            message: None,
        };
        let cases = [
            (http(401), "http_401"),
            (http(403), "http_403"),
            (http(404), "http_404"),
            (http(500), "http_5xx"),
            (http(503), "http_5xx"),
            (http(400), "http_other"),
            (FetchError::Timeout(Duration::from_secs(1)), "timeout"),
            (
                FetchError::BadResponse(ResponseError::TooLong(1)),
                "bad_response",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason, "{error}");
        }
    }

    #[tokio::test]
    async fn dns_and_connect_failures_are_classified() {
        let mut c = config("https://no-such-host.invalid");
        c.system_proxy = false;
        c.timeout = Duration::from_secs(10);
        let error = LicenseClient::new(c)
            .unwrap()
            .fetch_lease()
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "dns", "{error}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut c = config(&format!("https://127.0.0.1:{port}"));
        c.system_proxy = false;
        let client = LicenseClient::new(c).unwrap();
        let report = crate::UsageReport {
            node_id: "n".into(),
            agent_version: String::new(),
            timestamp: tollgate_events::WallTime::ZERO,
            since: None,
            license_serial: None,
            node: crate::UsageFigures::default(),
            cluster: None,
            admissions_denied: Default::default(),
            ledger: Vec::new(),
        };
        let error = client.send_usage(&report).await.unwrap_err();
        assert_eq!(error.reason(), "connect", "{error}");
    }

    #[test]
    fn no_proxy_cidrs_match() {
        assert!(cidr_contains("10.0.0.0/8", "10.1.2.3"));
        assert!(!cidr_contains("10.0.0.0/8", "11.1.2.3"));
        assert!(!cidr_contains("10.0.0.0/8", "example.com"));
        assert!(cidr_contains("::1/128", "::1"));
        assert!(!cidr_contains("::1/128", "127.0.0.1"));
        assert!(cidr_contains("0.0.0.0/0", "192.0.2.1"));
        assert!(!cidr_contains("example.com", "192.0.2.1"));
    }
}
