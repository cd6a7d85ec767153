//! The admin HTTP API, `/api/v1/admin/…`: the vendor's staff administer the server over
//! JSON with a bearer session, each action through the same function the CLI calls
//! ([`crate::admin`]), each change in the audit log with the real actor (`user:<name>`).
//!
//! | method | path | role | does |
//! | --- | --- | --- | --- |
//! | POST | `/api/v1/admin/login` | — | `{"name", "password"}` → `{"token", "name", "role", "expires_at"}` |
//! | POST | `/api/v1/admin/logout` | any | ends the session |
//! | GET | `/api/v1/admin/whoami` | any | the session's user and role |
//! | GET | `/api/v1/admin/customers` | viewer | every customer |
//! | POST | `/api/v1/admin/customers` | admin | `{"name"}` adds one |
//! | POST | `/api/v1/admin/customers/{name}/suspend`, `…/resume` | admin | leases answer 403 `suspended` while suspended |
//! | POST | `/api/v1/admin/licenses/{key}/suspend`, `…/resume` | admin | the same for one license |
//! | GET | `/api/v1/admin/licenses` | viewer | every license with its document's figures |
//! | GET | `/api/v1/admin/licenses/{key}` | viewer | one license, its tokens and its history |
//! | POST | `/api/v1/admin/licenses` | admin | `{"spec": "<TOML>", "contract"?}` creates one |
//! | PUT | `/api/v1/admin/licenses/{key}` | admin | `{"spec": "<TOML>"}` signs a new document |
//! | POST | `/api/v1/admin/licenses/{key}/contract` | admin | `{"contract": "active"\|"lapsed"}` |
//! | GET | `/api/v1/admin/tokens` | viewer | every token (`?license=KEY`) |
//! | POST | `/api/v1/admin/tokens` | admin | `{"license", "allow": [..], "note"?, "expires_at"?}` → the token, shown once |
//! | POST | `/api/v1/admin/tokens/{id}/rotate` | admin | `{"grace_s"?, "expires_at"?}` → a new token (shown once) for the same license and addresses; the old one works for `grace_s` more (default a day; 0 revokes it) |
//! | POST | `/api/v1/admin/tokens/{id}/revoke` | admin | revokes |
//! | GET | `/api/v1/admin/keys` | viewer | signing keys, which signs now, which are scheduled |
//! | POST | `/api/v1/admin/keys/rotate` | admin | `{"activate_at"?: RFC 3339}` creates the next key |
//! | GET | `/api/v1/admin/reports` | viewer | latest usage reports (`?license=KEY&limit=N`), each with its `ledger_flags` |
//! | GET | `/api/v1/admin/ledger` | viewer | the nodes' ledgers: `nodes` (bound key, chain, head, flag count) and the latest `flags` (`?license=KEY&limit=N`) |
//! | GET | `/api/v1/admin/audit` | viewer | latest audit entries (`?license=KEY&limit=N`) |
//!
//! Refusals are `{"error", "message"}`: 401 `missing_token` / `bad_session` /
//! `bad_credentials`, 403 `forbidden` (a viewer asking for a change), 400 `bad_request`,
//! 404 `not_found`, 409 `exists`, 429 `throttled` with `Retry-After` (seconds): more than
//! [`crate::throttle::BAD_TOKEN_LIMIT`] failed logins from one address within a minute
//! pause that address's logins for a minute, before any password is checked (counted as
//! `tollgate_license_server_refusals_total{reason="login_throttled"}`).
//!
//! Users are `vendor_users` rows (argon2id hashes, role `admin` or `viewer`), created with
//! `tollgate license-server admin user add <name> --role admin|viewer` (password on standard
//! input). Sessions are `admin_sessions` rows (the token's BLAKE3 hash), so every server on a
//! shared PostgreSQL database accepts them; they last [`SESSION_TTL_MS`].

use std::net::IpAddr;

use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _};
use serde::Deserialize;
use tollgate_events::WallTime;
use tollgate_license::timestamp::{format_rfc3339, parse_rfc3339};
use tollgate_license_client::Contract;

use crate::admin::{AdminError, AdminPaths, Ctx};
use crate::service::{Refused, Service, token_hash};
use crate::store::{Audit, StoreError, VendorUser};

/// How long a login session lasts.
pub const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// Longest password accepted (argon2 hashes anything; this bounds the work).
pub const PASSWORD_LEN_MAX: usize = 1024;
/// Longest user name.
pub const USER_NAME_LEN_MAX: usize = 64;

/// A vendor user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read everything, change nothing.
    Viewer,
    /// Every action.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Hashes a password (argon2id, random salt, PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = argon2::password_hash::SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Checks a new user's name and password.
pub fn check_user(name: &str, password: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > USER_NAME_LEN_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(format!(
            "user name {name:?}: 1 to {USER_NAME_LEN_MAX} characters of A-Z a-z 0-9 . _ - @"
        ));
    }
    if password.chars().count() < 8 || password.len() > PASSWORD_LEN_MAX {
        return Err(format!(
            "a password has 8 to {PASSWORD_LEN_MAX} bytes (read from standard input)"
        ));
    }
    Ok(())
}

/// What a successful login answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoginAnswer {
    pub token: String,
    pub name: String,
    pub role: String,
    pub expires_at: String,
}

/// A new session token: `tgs_` and 43 characters of URL-safe base64.
fn generate_session_token() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "tgs_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A hash verified when the user does not exist, so an unknown name costs as much time as
/// a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("tollgate-no-such-user").unwrap_or_default())
}

fn store_refusal(e: StoreError) -> Refused {
    admin_refusal(AdminError::Store(e))
}

/// An admin action's failure as an HTTP refusal.
pub fn admin_refusal(e: AdminError) -> Refused {
    match &e {
        AdminError::Store(StoreError::NotFound { .. }) => {
            Refused::new(404, "not_found", e.to_string())
        }
        AdminError::Store(StoreError::Exists { .. }) => Refused::new(409, "exists", e.to_string()),
        AdminError::Input(_) | AdminError::Keys(_) => {
            Refused::new(400, "bad_request", e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "admin action failed");
            Refused::internal()
        }
    }
}

impl Service {
    /// `POST /api/v1/admin/login`.
    pub fn admin_login(
        &self,
        name: &str,
        password: &str,
        client: IpAddr,
        now_ms: u64,
    ) -> Result<LoginAnswer, Refused> {
        let client = client.to_canonical();
        if let Some(retry_after_s) = self.login_throttle.lock().check(client, now_ms) {
            self.metrics.refusal("login_throttled");
            return Err(Refused::new(
                429,
                "throttled",
                format!("too many failed logins from {client}; retry in {retry_after_s} s"),
            )
            .retry_after(retry_after_s));
        }
        let bad = || {
            self.metrics.refusal("bad_credentials");
            if self.login_throttle.lock().bad_token(client, now_ms) {
                tracing::warn!(
                    client = %client,
                    limit = crate::throttle::BAD_TOKEN_LIMIT,
                    window_s = crate::throttle::BAD_TOKEN_WINDOW_MS / 1000,
                    pause_s = crate::throttle::THROTTLE_MS / 1000,
                    "admin logins throttled: too many failed logins from this address"
                );
            }
            Refused::new(401, "bad_credentials", "unknown user or wrong password")
        };
        if name.len() > USER_NAME_LEN_MAX || password.len() > PASSWORD_LEN_MAX {
            return Err(bad());
        }
        let user = self.store.lock().read().user(name).map_err(store_refusal)?;
        let hash = user
            .as_ref()
            .map_or(dummy_hash(), |u| u.password_hash.as_str());
        let verified = verify_password(hash, password);
        let user = match user {
            Some(user) if verified && user.disabled_at_ms.is_none() => user,
            _ => {
                tracing::warn!(user = name, client = %client, "admin login refused");
                return Err(bad());
            }
        };
        self.login_throttle.lock().forgive(client, now_ms);
        let token = generate_session_token();
        let expires_at_ms = now_ms.saturating_add(SESSION_TTL_MS);
        self.store
            .lock()
            .write(|db| {
                db.insert_session(&token_hash(&token), &user, now_ms, expires_at_ms, client)?;
                db.audit(&Audit {
                    at_ms: now_ms,
                    actor: &format!("user:{}", user.name),
                    action: "admin.login",
                    license_key: None,
                    client_address: Some(&client.to_string()),
                    detail: serde_json::json!({ "role": user.role }),
                })
            })
            .map_err(store_refusal)?;
        tracing::info!(user = %user.name, role = %user.role, client = %client, "admin login");
        Ok(LoginAnswer {
            token,
            name: user.name,
            role: user.role,
            expires_at: format_rfc3339(WallTime::from_unix_ms(expires_at_ms)),
        })
    }

    /// The user of a bearer session with at least `role`.
    pub fn admin_user(
        &self,
        bearer: Option<&str>,
        role: Role,
        now_ms: u64,
    ) -> Result<VendorUser, Refused> {
        let Some(bearer) = bearer else {
            return Err(Refused::new(
                401,
                "missing_token",
                "log in with POST /api/v1/admin/login and send Authorization: Bearer <token>",
            ));
        };
        let user = self
            .store
            .lock()
            .read()
            .session_user(&token_hash(bearer), now_ms)
            .map_err(store_refusal)?
            .ok_or_else(|| {
                Refused::new(
                    401,
                    "bad_session",
                    "unknown or expired session: log in again",
                )
            })?;
        let has = Role::parse(&user.role).unwrap_or(Role::Viewer);
        if has < role {
            return Err(Refused::new(
                403,
                "forbidden",
                format!(
                    "{} needs the {} role; {} is a {}",
                    "this action",
                    role.as_str(),
                    user.name,
                    has.as_str()
                ),
            ));
        }
        Ok(user)
    }

    pub fn admin_logout(&self, bearer: &str) -> Result<(), Refused> {
        self.store
            .lock()
            .write(|db| db.delete_session(&token_hash(bearer)))
            .map_err(store_refusal)
    }

    /// Runs an admin action as `user` (the audit actor `user:<name>`).
    pub fn admin_action<T>(
        &self,
        user: &VendorUser,
        now_ms: u64,
        action: impl FnOnce(&Ctx<'_>, &mut crate::store::Store) -> Result<T, AdminError>,
    ) -> Result<T, Refused> {
        let actor = format!("user:{}", user.name);
        let ctx = Ctx {
            paths: &self.admin_paths,
            now_ms,
            actor: &actor,
        };
        let mut store = self.store.lock();
        action(&ctx, &mut store).map_err(admin_refusal)
    }

    pub fn admin_paths(&self) -> &AdminPaths {
        &self.admin_paths
    }
}

/// `POST /api/v1/admin/login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseBody {
    pub spec: String,
    #[serde(default)]
    pub contract: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractBody {
    pub contract: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub license: String,
    pub allow: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// RFC 3339; absent or null: the token never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST /api/v1/admin/tokens/{id}/rotate` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenBody {
    /// How long the old token keeps working; default a day, 0 revokes it at once.
    #[serde(default)]
    pub grace_s: Option<u64>,
    /// The new token's expiry (RFC 3339); default the old token's.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// An optional RFC 3339 expiry of a request (`what` names the field in the error).
pub fn parse_expiry(what: &str, text: Option<&str>) -> Result<Option<u64>, AdminError> {
    text.map(|text| {
        parse_rfc3339(text)
            .map(WallTime::unix_ms)
            .map_err(|e| AdminError::Input(format!("{what} {text:?}: {e}")))
    })
    .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    #[serde(default)]
    pub activate_at: Option<String>,
}

pub fn parse_contract(text: Option<&str>) -> Result<Contract, AdminError> {
    match text.unwrap_or("active") {
        "active" => Ok(Contract::Active),
        "lapsed" => Ok(Contract::Lapsed),
        other => Err(AdminError::Input(format!(
            "contract {other:?}: expected \"active\" or \"lapsed\""
        ))),
    }
}

pub fn parse_activation(text: Option<&str>, now: WallTime) -> Result<WallTime, AdminError> {
    match text {
        Some(text) => {
            parse_rfc3339(text).map_err(|e| AdminError::Input(format!("activate_at {text}: {e}")))
        }
        None => Ok(now),
    }
}

/// The JSON of one license for listings.
pub fn license_json(record: &crate::store::LicenseRecord) -> serde_json::Value {
    let document = tollgate_license::parse(record.document.as_bytes()).map(|p| p.document);
    let (kind, valid_until, lease_until, limits, features) = match &document {
        Ok(d) => (
            Some(d.kind.as_str()),
            d.valid_until.map(format_rfc3339),
            d.signature_valid_until.map(format_rfc3339),
            serde_json::to_value(d.limits).unwrap_or_default(),
            serde_json::to_value(&d.features).unwrap_or_default(),
        ),
        Err(_) => (
            None,
            None,
            None,
            serde_json::Value::Null,
            serde_json::Value::Null,
        ),
    };
    serde_json::json!({
        "license_key": record.license_key,
        "customer": record.customer,
        "contract": record.contract.as_str(),
        "serial": record.serial,
        "kind": kind,
        "valid_until": valid_until,
        "signature_valid_until": lease_until,
        "limits": limits,
        "features": features,
        "created_at": format_rfc3339(WallTime::from_unix_ms(record.created_at_ms)),
        "updated_at": format_rfc3339(WallTime::from_unix_ms(record.updated_at_ms)),
        "suspended_at": record
            .suspended_at_ms
            .map(|t| format_rfc3339(WallTime::from_unix_ms(t))),
    })
}

/// The JSON of one token (never its secret) with its state at `now_ms`: `active`,
/// `expiring` (it has an expiry ahead), `expired`, `revoked`.
pub fn token_json(t: &crate::store::TokenRecord, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "license_key": t.license_key,
        "state": t.state(now_ms).as_str(),
        "allowed": t.allowed.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "note": t.note,
        "created_at": crate::rfc3339_ms(t.created_at_ms),
        "expires_at": t.expires_at_ms.map(crate::rfc3339_ms),
        "replaced_by": t.replaced_by,
        "revoked_at": t.revoked_at_ms.map(crate::rfc3339_ms),
        "last_used_at": t.last_used_at_ms.map(crate::rfc3339_ms),
        "last_used_from": t.last_used_from,
    })
}

pub fn audit_json(a: &crate::store::AuditRecord) -> serde_json::Value {
    let detail: serde_json::Value =
        serde_json::from_str(&a.detail).unwrap_or(serde_json::Value::String(a.detail.clone()));
    serde_json::json!({
        "id": a.id,
        "at": format_rfc3339(WallTime::from_unix_ms(a.at_ms)),
        "actor": a.actor,
        "action": a.action,
        "license_key": a.license_key,
        "client_address": a.client_address,
        "detail": detail,
    })
}

pub fn report_json(r: &crate::store::ReportRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "received_at": format_rfc3339(WallTime::from_unix_ms(r.received_at_ms)),
        "license_key": r.license_key,
        "token_id": r.token_id,
        "client_address": r.client_address,
        "report": r.report,
        "ledger_flags": r.ledger_flags,
    })
}
