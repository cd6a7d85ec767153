//! What the client API does, without HTTP: authenticate a token for a license from an
//! address, answer a lease, store a usage report. Synchronous (it runs on a blocking
//! thread); time comes in as an argument.
//!
//! Checks, in this order (the first failure answers):
//!
//! | check | status | `error` |
//! | --- | --- | --- |
//! | `Authorization: Bearer <token>` present | 401 | `missing_token` |
//! | the token is known | 401 | `bad_token` |
//! | the token is not revoked | 403 | `token_revoked` |
//! | the token has not expired (as issued, or at the end of a rotation's grace period) | 403 | `token_expired` |
//! | the client address is one the token is bound to | 403 | `source_address_not_allowed` |
//! | the license key is the token's license | 404 | `unknown_license` |
//! | the body is well formed | 400 | `bad_request` |
//! | (lease) the customer is not suspended | 403 | `suspended` |
//! | (lease) the license is not suspended | 403 | `suspended` |
//! | (lease) the contract is active, or lapsed with validity left | 403 | `contract_lapsed` |
//!
//! A token for another license gets the same 404 as an unknown key, so a token does not
//! reveal which other license keys exist. Every lease answer and every refusal of a known
//! token (`lease.refused`, `usage.refused`) is written to the audit log in the same
//! transaction as the lease or report itself.

use std::net::IpAddr;

use parking_lot::Mutex;
use tollgate_events::WallTime;
use tollgate_license::timestamp::format_rfc3339;
use tollgate_license::{KeyId, PublicKey};
use tollgate_license_client::LeaseResponse;
use tollgate_license_client::wire::{parse_lease_request, parse_usage_report};

use crate::keyring::KeyCache;
use crate::lease::{LeaseDecision, LeaseRules, decide};
use crate::store::{Audit, Db, LicenseRecord, Store, StoreError, TokenRecord};

/// A refusal: the HTTP status, the stable error word and a sentence for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds) with a 429.
    pub retry_after_s: Option<u64>,
}

impl Refused {
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            status,
            error,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Refused {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn internal() -> Refused {
        Refused::new(500, "internal", "internal error; the server log says more")
    }
}

/// The hash a token is stored and looked up by.
pub fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A new API token: `tg_` and 43 characters of URL-safe base64 (32 random bytes).
pub fn generate_token() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "tg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// One public key as `GET /api/v1/keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub key_id: String,
    /// The public key line agents put in their trusted keys file.
    pub public_key: String,
    /// When the key became (or becomes) the signing key.
    pub activation: String,
    /// Whether the server signs new leases with it now.
    pub signing: bool,
}

/// The client API's state: the store, the signing keys and the lease rules.
#[derive(Debug)]
pub struct Service {
    pub(crate) store: Mutex<Store>,
    pub(crate) keys: Mutex<KeyCache>,
    rules: LeaseRules,
    /// Where admin API actions find the key directory and the lease length.
    pub(crate) admin_paths: crate::admin::AdminPaths,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) throttle: Mutex<crate::throttle::Throttle>,
    /// Failed admin logins per address (see `admin_api`).
    pub(crate) login_throttle: Mutex<crate::throttle::Throttle>,
}

/// An internal failure inside a transaction (500).
#[derive(Debug, thiserror::Error)]
enum Internal {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored document of {license_key} does not parse: {problem}")]
    Document {
        license_key: String,
        problem: String,
    },
    #[error("cannot sign a renewal of {license_key}: {problem}")]
    Sign {
        license_key: String,
        problem: String,
    },
    #[error("no signing key is active yet (all activate in the future)")]
    NoActiveKey,
}

/// Authentication's answer.
enum Auth {
    Granted(Box<(TokenRecord, LicenseRecord)>),
    /// Refused; `token_id` when the token was known (the refusal is then audited).
    Refused(Option<i64>, Refused),
}

impl Service {
    pub fn new(
        store: Store,
        keys: KeyCache,
        rules: LeaseRules,
        admin_paths: crate::admin::AdminPaths,
    ) -> Service {
        Service {
            store: Mutex::new(store),
            keys: Mutex::new(keys),
            rules,
            admin_paths,
            metrics: crate::metrics::Metrics::default(),
            throttle: Mutex::new(crate::throttle::Throttle::default()),
            login_throttle: Mutex::new(crate::throttle::Throttle::default()),
        }
    }

    /// `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let tracked = self.throttle.lock().tracked();
        self.metrics.render(tracked)
    }

    /// `Some(retry_after_s)` when `client` is throttled for bad tokens (counted).
    pub fn throttled(&self, client: IpAddr, now_ms: u64) -> Option<u64> {
        let retry = self.throttle.lock().check(client, now_ms);
        if retry.is_some() {
            self.metrics.refusal("throttled");
        }
        retry
    }

    /// Counts a refusal; a missing or unknown token counts against the address.
    fn refused(&self, client: IpAddr, refused: &Refused, now_ms: u64) {
        self.metrics.refusal(refused.error);
        if (refused.error == "bad_token" || refused.error == "missing_token")
            && self.throttle.lock().bad_token(client, now_ms)
        {
            tracing::warn!(
                client = %client,
                limit = crate::throttle::BAD_TOKEN_LIMIT,
                window_s = crate::throttle::BAD_TOKEN_WINDOW_MS / 1000,
                pause_s = crate::throttle::THROTTLE_MS / 1000,
                "address throttled: too many missing or unknown API tokens"
            );
        }
    }

    pub fn rules(&self) -> &LeaseRules {
        &self.rules
    }

    /// The signing keys (see `GET /api/v1/keys`).
    pub fn public_keys(&self, now: WallTime) -> Vec<KeyInfo> {
        let ring = self.keys.lock().ring();
        let signing = ring.signing_key(now).map(|e| e.key.key_id());
        ring.public_keys()
            .map(|(public, entry): (PublicKey, _)| KeyInfo {
                key_id: public.key_id().to_string(),
                public_key: public.to_file_string().trim_end().to_owned(),
                activation: format_rfc3339(entry.activation),
                signing: Some(public.key_id()) == signing,
            })
            .collect()
    }

    /// `POST /api/v1/licenses/{license_key}/lease`.
    pub fn lease(
        &self,
        license_key: &str,
        token: Option<&str>,
        client: IpAddr,
        body: &[u8],
        now_ms: u64,
    ) -> Result<LeaseResponse, Refused> {
        let now = WallTime::from_unix_ms(now_ms);
        let client = client.to_canonical();
        let ring = self.keys.lock().ring();
        let rules = self.rules;
        let mut store = self.store.lock();
        let started = std::time::Instant::now();
        let result = store.write(|db| -> Result<Result<LeaseResponse, (Option<i64>, Refused)>, Internal> {
            let token = match authenticate(db, license_key, token, client, now_ms)? {
                Auth::Granted(granted) => granted.0,
                Auth::Refused(token_id, refused) => {
                    audit_refusal(db, LEASE_REFUSED, token_id, license_key, client, &refused, now_ms)?;
                    return Ok(Err((token_id, refused)));
                }
            };
            let request = match parse_lease_request(body) {
                Ok(request) => request,
                Err(e) => {
                    let refused = Refused::new(400, "bad_request", e.to_string());
                    audit_refusal(db, LEASE_REFUSED, Some(token.id), license_key, client, &refused, now_ms)?;
                    return Ok(Err((Some(token.id), refused)));
                }
            };
            // Concurrent servers on one PostgreSQL database take turns per license from
            // here: the current document read below is the one the new serial follows.
            db.lock_license(license_key)?;
            let license = db.license_required(license_key)?;
            if let Some(since) = db
                .customer(&license.customer)?
                .and_then(|c| c.suspended_at_ms)
            {
                let refused = Refused::new(
                    403,
                    "suspended",
                    format!(
                        "the customer of {license_key} is suspended since {}: no lease is signed \
                         until the vendor resumes it",
                        format_rfc3339(WallTime::from_unix_ms(since))
                    ),
                );
                audit_refusal(db, LEASE_REFUSED, Some(token.id), license_key, client, &refused, now_ms)?;
                return Ok(Err((Some(token.id), refused)));
            }
            if let Some(since) = license.suspended_at_ms {
                let refused = Refused::new(
                    403,
                    "suspended",
                    format!(
                        "the license {license_key} is suspended since {}: no lease is signed \
                         until the vendor resumes it",
                        format_rfc3339(WallTime::from_unix_ms(since))
                    ),
                );
                audit_refusal(db, LEASE_REFUSED, Some(token.id), license_key, client, &refused, now_ms)?;
                return Ok(Err((Some(token.id), refused)));
            }
            let current = tollgate_license::parse(license.document.as_bytes())
                .map_err(|e| Internal::Document {
                    license_key: license.license_key.clone(),
                    problem: e.to_string(),
                })?
                .document;
            let key = ring.signing_key(now).ok_or(Internal::NoActiveKey)?;
            let sign_error = |problem: String| Internal::Sign {
                license_key: license.license_key.clone(),
                problem,
            };
            let decision = decide(&current, license.contract, &rules, key.key.key_id(), now)
                .map_err(|e| sign_error(e.to_string()))?;
            let (text, document, renewed) = match decision {
                LeaseDecision::Lapsed => {
                    let refused = Refused::new(
                        403,
                        "contract_lapsed",
                        format!(
                            "the contract for {license_key} has lapsed and the license ended {}",
                            current.valid_until.map_or_else(String::new, format_rfc3339)
                        ),
                    );
                    audit_refusal(db, LEASE_REFUSED, Some(token.id), license_key, client, &refused, now_ms)?;
                    return Ok(Err((Some(token.id), refused)));
                }
                LeaseDecision::Reuse => (license.document.clone(), current, false),
                LeaseDecision::Sign(next) => {
                    let mut next = *next;
                    next.key_id = key.key.key_id();
                    let text = tollgate_license::sign(&next, &key.key)
                        .map_err(|e| sign_error(e.to_string()))?;
                    db.record_document(&license, &text, &next, "lease", None, now_ms)?;
                    (text, next, true)
                }
            };
            let mut response =
                LeaseResponse::for_document(text, &document, license.contract, renewed)
                    .ok_or_else(|| sign_error("the document has no lease".into()))?;
            // Issue 16: the agent's watermarks (trusted time, highest serial issued).
            response.server_time = Some(now);
            response.serial_issued_max = Some(response.serial.max(license.serial));
            db.touch_token(token.id, now_ms, client)?;
            // Issue 16: the node's identity key is bound at its first lease; another key
            // later is flagged `key_change` (crate::ledger).
            if let (Some(node_id), Some(key)) = (&request.node_id, &request.node_public_key) {
                match tollgate_ledger::parse_public_key(key) {
                    Some(key) => {
                        db.ledger_bind_at_lease(&token, license_key, client, node_id, &key, now_ms)?;
                    }
                    None => tracing::warn!(
                        license_key,
                        node_id = node_id.as_str(),
                        client = %client,
                        "lease request with a malformed node_public_key: not bound"
                    ),
                }
            }
            db.audit(&Audit {
                at_ms: now_ms,
                actor: &format!("token:{}", token.id),
                action: if renewed { "lease.signed" } else { "lease.reused" },
                license_key: Some(license_key),
                client_address: Some(&client.to_string()),
                detail: serde_json::json!({
                    "serial": response.serial,
                    "key_id": response.key_id.to_string(),
                    "signature_valid_until": format_rfc3339(response.signature_valid_until),
                    "valid_until": response.valid_until.map(format_rfc3339),
                    "contract": license.contract.as_str(),
                    "node_id": request.node_id,
                    "agent_version": request.agent_version,
                }),
            })?;
            tracing::info!(
                license_key,
                serial = response.serial,
                renewed,
                contract = license.contract.as_str(),
                key_id = %response.key_id,
                signature_valid_until = %format_rfc3339(response.signature_valid_until),
                token_id = token.id,
                client = %client,
                node_id = request.node_id.as_deref().unwrap_or("-"),
                "{}", if renewed { "lease signed" } else { "lease reused" }
            );
            Ok(Ok(response))
        });
        drop(store);
        self.metrics.db("lease", started.elapsed());
        match result {
            Ok(Ok(response)) => {
                self.metrics
                    .lease(if response.renewed { "signed" } else { "reused" });
                Ok(response)
            }
            Ok(Err((token_id, refused))) => {
                self.metrics.lease("refused");
                self.refused(client, &refused, now_ms);
                log_refusal("lease refused", license_key, token_id, client, &refused);
                Err(refused)
            }
            Err(e) => {
                tracing::error!(license_key, client = %client, error = %e, "lease failed");
                Err(Refused::internal())
            }
        }
    }

    /// `POST /api/v1/licenses/{license_key}/usage`: stores the report; returns its id.
    pub fn usage(
        &self,
        license_key: &str,
        token: Option<&str>,
        client: IpAddr,
        body: &[u8],
        now_ms: u64,
    ) -> Result<i64, Refused> {
        let client = client.to_canonical();
        let mut store = self.store.lock();
        let started = std::time::Instant::now();
        let result = store.write(
            |db| -> Result<Result<i64, (Option<i64>, Refused)>, Internal> {
                let token = match authenticate(db, license_key, token, client, now_ms)? {
                    Auth::Granted(granted) => granted.0,
                    Auth::Refused(token_id, refused) => {
                        audit_refusal(
                            db,
                            USAGE_REFUSED,
                            token_id,
                            license_key,
                            client,
                            &refused,
                            now_ms,
                        )?;
                        return Ok(Err((token_id, refused)));
                    }
                };
                let report = match parse_usage_report(body) {
                    Ok(report) => report,
                    Err(e) => {
                        let refused = Refused::new(400, "bad_request", e.to_string());
                        audit_refusal(
                            db,
                            USAGE_REFUSED,
                            Some(token.id),
                            license_key,
                            client,
                            &refused,
                            now_ms,
                        )?;
                        return Ok(Err((Some(token.id), refused)));
                    }
                };
                let id = db.insert_report(&token, now_ms, client, &report)?;
                db.ledger_verify_report(&token, license_key, client, id, &report, now_ms)?;
                db.touch_token(token.id, now_ms, client)?;
                tracing::debug!(
                    license_key,
                    report_id = id,
                    node_id = %report.node_id,
                    calls = report.node.calls,
                    token_id = token.id,
                    client = %client,
                    "usage report stored"
                );
                Ok(Ok(id))
            },
        );
        drop(store);
        self.metrics.db("report", started.elapsed());
        match result {
            Ok(Ok(id)) => {
                self.metrics.report("stored");
                Ok(id)
            }
            Ok(Err((token_id, refused))) => {
                self.metrics.report("refused");
                self.refused(client, &refused, now_ms);
                log_refusal(
                    "usage report refused",
                    license_key,
                    token_id,
                    client,
                    &refused,
                );
                Err(refused)
            }
            Err(e) => {
                tracing::error!(license_key, client = %client, error = %e, "usage report failed");
                Err(Refused::internal())
            }
        }
    }

    /// The key id new leases are signed with at `now`.
    pub fn signing_key_id(&self, now: WallTime) -> Option<KeyId> {
        let ring = self.keys.lock().ring();
        ring.signing_key(now).map(|e| e.key.key_id())
    }
}

fn log_refusal(
    what: &str,
    license_key: &str,
    token_id: Option<i64>,
    client: IpAddr,
    refused: &Refused,
) {
    if token_id.is_none() {
        // Missing or unknown tokens: counted, throttled, and summarised once a minute.
        tracing::debug!(
            license_key,
            status = refused.status,
            reason = refused.error,
            client = %client,
            "{what}"
        );
        return;
    }
    tracing::warn!(
        license_key,
        status = refused.status,
        reason = refused.error,
        token_id = token_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
        client = %client,
        "{what}"
    );
}

/// The audit action of a refused lease request.
const LEASE_REFUSED: &str = "lease.refused";
/// The audit action of a refused usage report.
const USAGE_REFUSED: &str = "usage.refused";

fn audit_refusal(
    db: &Db<'_>,
    action: &str,
    token_id: Option<i64>,
    license_key: &str,
    client: IpAddr,
    refused: &Refused,
    now_ms: u64,
) -> Result<(), StoreError> {
    let Some(token_id) = token_id else {
        // Unauthenticated requests are logged, not audited: anyone could fill the table.
        return Ok(());
    };
    db.audit(&Audit {
        at_ms: now_ms,
        actor: &format!("token:{token_id}"),
        action,
        license_key: Some(license_key),
        client_address: Some(&client.to_string()),
        detail: serde_json::json!({ "status": refused.status, "error": refused.error }),
    })
}

fn authenticate(
    db: &Db<'_>,
    license_key: &str,
    token: Option<&str>,
    client: IpAddr,
    now_ms: u64,
) -> Result<Auth, StoreError> {
    let Some(token) = token else {
        return Ok(Auth::Refused(
            None,
            Refused::new(
                401,
                "missing_token",
                "send Authorization: Bearer <API token>",
            ),
        ));
    };
    let Some(record) = db.token_by_hash(&token_hash(token))? else {
        return Ok(Auth::Refused(
            None,
            Refused::new(401, "bad_token", "unknown API token"),
        ));
    };
    let id = Some(record.id);
    if let Some(revoked) = record.revoked_at_ms {
        return Ok(Auth::Refused(
            id,
            Refused::new(
                403,
                "token_revoked",
                format!(
                    "this API token was revoked at {}",
                    format_rfc3339(WallTime::from_unix_ms(revoked))
                ),
            ),
        ));
    }
    if let Some(expired) = record.expires_at_ms.filter(|&at| at <= now_ms) {
        let replaced = record.replaced_by.map_or_else(String::new, |next| {
            format!(" (it was rotated: token {next} replaces it)")
        });
        return Ok(Auth::Refused(
            id,
            Refused::new(
                403,
                "token_expired",
                format!(
                    "this API token expired at {}{replaced}; ask the vendor for a new one",
                    format_rfc3339(WallTime::from_unix_ms(expired))
                ),
            ),
        ));
    }
    if !record.allowed.contains(client) {
        return Ok(Auth::Refused(
            id,
            Refused::new(
                403,
                "source_address_not_allowed",
                format!("this API token is not valid from {client} (the address this server sees)"),
            ),
        ));
    }
    if record.license_key != license_key {
        return Ok(Auth::Refused(
            id,
            Refused::new(
                404,
                "unknown_license",
                format!("no license {license_key} for this token"),
            ),
        ));
    }
    let license = db.license_required(&record.license_key)?;
    Ok(Auth::Granted(Box::new((record, license))))
}
