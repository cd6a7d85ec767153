//! The vendor's administration actions: one function per change (add a customer, create
//! or update a license, issue or revoke a token, rotate a key, add a user, …), each checking
//! its input, writing the database in one transaction and the audit log with the actor of
//! its [`Ctx`]. The CLI (`tollgate license-server admin …`, whose parsing and printing live
//! in the binary's `src/license_server_admin_cmd.rs`, actor `admin:<name>`: the `sudo` user or the uid's account) and the admin
//! HTTP API ([`crate::api`], actor `user:<name>`) both call these: one code path per action.
//! Listing needs no action: it reads the store ([`Store::read`]).
//!
//! Tokens are returned once, at issue, and stored as hashes.
//!
//! **Boundary.** No argument parsing and no printing here: the library has no clap.

use std::io;
use std::path::{Path, PathBuf};

use std::time::Duration;

use tollgate_events::WallTime;
use tollgate_license::timestamp::{DAY, DAY_MS, format_rfc3339};
use tollgate_license::{Document, LicenseSpec};
/// A license's contract, as the actions take it.
pub use tollgate_license_client::Contract;

use crate::config::{self, ConfigError};
use crate::keyring::{self, KeyRing, KeyRingError};
use crate::service::{generate_token, token_hash};
use crate::store::{Allowed, Audit, Database, Store, StoreError, TOKEN_ADDRESS_COUNT_MAX};

/// Longest token note, in bytes.
pub const NOTE_LEN_MAX: usize = 256;
/// How long a rotated token keeps working beside its replacement, unless the rotation says
/// otherwise: a day, time to put the new token in every agent's configuration.
pub const TOKEN_ROTATION_GRACE_MS_DEFAULT: u64 = DAY_MS;
/// The longest grace period a rotation may give the old token: 30 days.
pub const TOKEN_ROTATION_GRACE_MS_MAX: u64 = 30 * DAY_MS;
/// The furthest a token's expiry may be set: 10 years.
pub const TOKEN_EXPIRY_MS_MAX: u64 = 3660 * DAY_MS;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyRingError),
    #[error("{0}")]
    Input(String),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("output: {0}")]
    Output(#[from] io::Error),
}

impl AdminError {
    /// Bad input or configuration (exit code 2) rather than a failure (1).
    pub fn is_user_error(&self) -> bool {
        match self {
            AdminError::Config(_) | AdminError::Input(_) | AdminError::Keys(_) => true,
            AdminError::Store(e) => e.is_user_error(),
            AdminError::Read { .. } | AdminError::Output(_) => false,
        }
    }
}

/// A bad-input error (exit code 2 through the CLI, 400 through the API).
pub fn input(message: impl Into<String>) -> AdminError {
    AdminError::Input(message.into())
}

/// Where the admin commands find their files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPaths {
    pub database: Database,
    pub key_dir: PathBuf,
    /// The lease a created license gets when its spec names none.
    pub lease: Duration,
}

impl AdminPaths {
    /// From `db` / `key_dir` (the CLI's `--db` / `--key-dir`), else the config file, else
    /// (with `dev`) the development defaults.
    pub fn resolve(
        db: Option<&Path>,
        key_dir_arg: Option<&Path>,
        config_path: Option<&Path>,
        dev: bool,
    ) -> Result<AdminPaths, AdminError> {
        let (database, key_dir, lease) = match (config_path, dev) {
            (Some(path), _) => {
                let config = config::Config::load(Some(path), true)?;
                (
                    Some(config.database),
                    Some(config.key_dir),
                    config.rules.lease,
                )
            }
            (None, true) => {
                let config = config::Config::dev_defaults(Path::new(config::DEV_DIR_DEFAULT))?;
                (
                    Some(config.database),
                    Some(config.key_dir),
                    config.rules.lease,
                )
            }
            (None, false) => (
                None,
                None,
                DAY.saturating_mul(u32::try_from(config::LEASE_DAYS_DEFAULT).unwrap_or(u32::MAX)),
            ),
        };
        let database = db
            .map(|path| Database::Sqlite(path.to_owned()))
            .or(database)
            .ok_or_else(|| {
                input("which database? give --config FILE (the server's), --db PATH, or --dev")
            })?;
        let key_dir = key_dir_arg
            .map(Path::to_owned)
            .or(key_dir)
            .unwrap_or_else(|| PathBuf::from(config::KEY_DIR_DEFAULT));
        Ok(AdminPaths {
            database,
            key_dir,
            lease,
        })
    }
}

/// Who acts, when, on which files: the CLI (`admin:<name>`) or the admin API
/// (`user:<name>`) call the same action functions with it.
pub struct Ctx<'a> {
    pub paths: &'a AdminPaths,
    pub now_ms: u64,
    pub actor: &'a str,
}

impl Ctx<'_> {
    fn audit<'a>(
        &'a self,
        action: &'a str,
        license_key: Option<&'a str>,
        detail: serde_json::Value,
    ) -> Audit<'a> {
        Audit {
            at_ms: self.now_ms,
            actor: self.actor,
            action,
            license_key,
            client_address: None,
            detail,
        }
    }
}

/// Suspends or resumes a customer (audited `customer.suspend` / `customer.resume`); the
/// customer as it was before.
pub fn suspend_customer(
    ctx: &Ctx<'_>,
    store: &mut Store,
    name: &str,
    suspend: bool,
) -> Result<crate::store::Customer, AdminError> {
    store.write(|db| {
        let before = db.set_customer_suspended(name, suspend.then_some(ctx.now_ms))?;
        db.audit(&ctx.audit(
            if suspend {
                "customer.suspend"
            } else {
                "customer.resume"
            },
            None,
            serde_json::json!({
                "name": name,
                "was_suspended": before.suspended_at_ms.is_some(),
            }),
        ))?;
        Ok::<_, AdminError>(before)
    })
}

/// Suspends or resumes one license (audited `license.suspend` / `license.resume`), as
/// [`suspend_customer`] does every license of a customer; the license as it was before.
pub fn suspend_license(
    ctx: &Ctx<'_>,
    store: &mut Store,
    license_key: &str,
    suspend: bool,
) -> Result<crate::store::LicenseRecord, AdminError> {
    store.write(|db| {
        let before = db.set_license_suspended(license_key, suspend.then_some(ctx.now_ms))?;
        db.audit(&ctx.audit(
            if suspend {
                "license.suspend"
            } else {
                "license.resume"
            },
            Some(license_key),
            serde_json::json!({
                "customer": before.customer,
                "was_suspended": before.suspended_at_ms.is_some(),
            }),
        ))?;
        Ok::<_, AdminError>(before)
    })
}

/// Adds a customer (audited `customer.add`).
pub fn add_customer(
    ctx: &Ctx<'_>,
    store: &mut Store,
    name: &str,
) -> Result<crate::store::Customer, AdminError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > tollgate_license::CUSTOMER_LEN_MAX
        || name.chars().any(char::is_control)
    {
        return Err(input(
            "a customer name is 1 to 256 bytes without control characters",
        ));
    }
    let customer = store.write(|db| {
        let customer = db.add_customer(name, ctx.now_ms)?;
        db.audit(&ctx.audit("customer.add", None, serde_json::json!({ "name": name })))?;
        Ok::<_, AdminError>(customer)
    })?;
    Ok(customer)
}

/// The signing key at `ctx.now_ms` from the key directory.
fn signing_key(ctx: &Ctx<'_>) -> Result<tollgate_license::SigningKey, AdminError> {
    let ring = KeyRing::load(&ctx.paths.key_dir)?;
    ring.signing_key(WallTime::from_unix_ms(ctx.now_ms))
        .map(|e| e.key.clone())
        .ok_or_else(|| input("no signing key is active yet (all activate in the future)"))
}

/// A license spec file read and turned into a document for the active signing key, with
/// the server's lease when the spec sets none: the spec's text, the document (not signed
/// yet), the key.
fn document_from_spec(
    ctx: &Ctx<'_>,
    spec_text: &str,
) -> Result<(tollgate_license::Document, tollgate_license::SigningKey), AdminError> {
    if spec_text.len() > LicenseSpec::TEXT_LEN_MAX {
        return Err(input(format!(
            "spec: longer than {} bytes",
            LicenseSpec::TEXT_LEN_MAX
        )));
    }
    let spec = LicenseSpec::parse(spec_text).map_err(|e| input(format!("spec: {e}")))?;
    let key = signing_key(ctx)?;
    let mut document = spec
        .to_document(key.key_id(), WallTime::from_unix_ms(ctx.now_ms))
        .map_err(|e| input(format!("spec: {e}")))?;
    document
        .signature_valid_until
        .get_or_insert(document.issued_at + ctx.paths.lease);
    Ok((document, key))
}

/// Creates a license from a spec's text, signed with the active key (audited
/// `license.create`): the record, its first document, the key id.
pub fn create_license(
    ctx: &Ctx<'_>,
    store: &mut Store,
    spec_text: &str,
    contract: Contract,
) -> Result<
    (
        crate::store::LicenseRecord,
        Document,
        tollgate_license::KeyId,
    ),
    AdminError,
> {
    let (document, key) = document_from_spec(ctx, spec_text)?;
    let text = tollgate_license::sign(&document, &key).map_err(|e| input(format!("spec: {e}")))?;
    let record = store.write(|db| {
        let customer = db.customer(&document.customer)?.ok_or_else(|| {
            input(format!(
                "no customer {:?}: add it first with `admin customer add`",
                document.customer
            ))
        })?;
        let record =
            db.create_license(&customer, contract, spec_text, &text, &document, ctx.now_ms)?;
        db.audit(&ctx.audit(
            "license.create",
            Some(&document.license_key),
            serde_json::json!({
                "customer": document.customer,
                "kind": document.kind.as_str(),
                "serial": document.serial,
                "contract": contract.as_str(),
                "key_id": key.key_id().to_string(),
            }),
        ))?;
        Ok::<_, AdminError>(record)
    })?;
    Ok((record, document, key.key_id()))
}

/// Replaces a license's content from a spec's text (same key and customer): a new document
/// with serial max(spec serial, current + 1) (audited `license.update`). The document and
/// the previous serial.
pub fn update_license(
    ctx: &Ctx<'_>,
    store: &mut Store,
    license: &str,
    spec_text: &str,
) -> Result<(Document, u64), AdminError> {
    let (mut document, key) = document_from_spec(ctx, spec_text)?;
    store.write(|db| {
        db.lock_license(license)?;
        let record = db.license_required(license)?;
        if document.license_key != record.license_key {
            return Err(input(format!(
                "the spec is for license {}, not {}",
                document.license_key, record.license_key
            )));
        }
        if document.customer != record.customer {
            return Err(input(format!(
                "the spec is for customer {:?}, the license belongs to {:?}",
                document.customer, record.customer
            )));
        }
        document.serial = document.serial.max(record.serial.saturating_add(1));
        let text =
            tollgate_license::sign(&document, &key).map_err(|e| input(format!("spec: {e}")))?;
        db.record_document(
            &record,
            &text,
            &document,
            "updated",
            Some(spec_text),
            ctx.now_ms,
        )?;
        db.audit(&ctx.audit(
            "license.update",
            Some(license),
            serde_json::json!({
                "serial": document.serial,
                "previous_serial": record.serial,
                "key_id": key.key_id().to_string(),
            }),
        ))?;
        Ok((document, record.serial))
    })
}

/// Sets a license's contract (audited `contract.set`); the previous one.
pub fn set_contract(
    ctx: &Ctx<'_>,
    store: &mut Store,
    license: &str,
    contract: Contract,
) -> Result<Contract, AdminError> {
    store.write(|db| {
        let previous = db.set_contract(license, contract, ctx.now_ms)?;
        db.audit(&ctx.audit(
            "contract.set",
            Some(license),
            serde_json::json!({ "from": previous.as_str(), "to": contract.as_str() }),
        ))?;
        Ok::<_, AdminError>(previous)
    })
}

/// Checks a token expiry against `now_ms`: in the future, at most
/// [`TOKEN_EXPIRY_MS_MAX`] ahead.
fn check_expiry(now_ms: u64, expires_at_ms: Option<u64>) -> Result<(), AdminError> {
    match expires_at_ms {
        Some(at) if at <= now_ms => Err(input(format!(
            "expiry {} is not in the future",
            format_rfc3339(WallTime::from_unix_ms(at))
        ))),
        Some(at) if at - now_ms > TOKEN_EXPIRY_MS_MAX => Err(input(
            "a token expires at most 10 years (3660 days) from now",
        )),
        _ => Ok(()),
    }
}

/// Issues an API token for a license bound to `allow`, expiring at `expires_at_ms` (or
/// never) (audited `token.issue`): its id, the token (shown once; only its hash is stored)
/// and the addresses.
pub fn issue_token(
    ctx: &Ctx<'_>,
    store: &mut Store,
    license: &str,
    allow: &[String],
    note: Option<&str>,
    expires_at_ms: Option<u64>,
) -> Result<(i64, String, Allowed), AdminError> {
    if allow.is_empty() {
        return Err(input(
            "a token needs at least one allowed address or network",
        ));
    }
    if allow.len() > TOKEN_ADDRESS_COUNT_MAX {
        return Err(input(format!(
            "at most {TOKEN_ADDRESS_COUNT_MAX} --allow per token"
        )));
    }
    let mut nets = Vec::new();
    for text in allow {
        let net = Allowed::parse_one(text).map_err(|e| input(format!("--allow: {e}")))?;
        if !nets.contains(&net) {
            nets.push(net);
        }
    }
    let allowed = Allowed(nets);
    if let Some(note) = note
        && (note.len() > NOTE_LEN_MAX || note.chars().any(char::is_control))
    {
        return Err(input("--note: at most 256 bytes, no control characters"));
    }
    check_expiry(ctx.now_ms, expires_at_ms)?;
    let token = generate_token();
    let id = store.write(|db| {
        let record = db.license_required(license)?;
        let id = db.insert_token(
            &record,
            &token_hash(&token),
            &allowed,
            note,
            ctx.now_ms,
            expires_at_ms,
        )?;
        db.audit(&ctx.audit(
            "token.issue",
            Some(license),
            serde_json::json!({
                "token_id": id,
                "allowed": allowed.to_string(),
                "note": note,
                "expires_at": expires_at_ms.map(crate::rfc3339_ms),
            }),
        ))?;
        Ok::<_, AdminError>(id)
    })?;
    Ok((id, token, allowed))
}

/// What [`rotate_token`] did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new token's id.
    pub id: i64,
    /// The new token, shown once.
    pub token: String,
    /// The old token after the rotation: `expires_at_ms` at the end of its grace period, or
    /// revoked (a grace of 0).
    pub old: crate::store::TokenRecord,
    /// The new token's expiry.
    pub expires_at_ms: Option<u64>,
}

/// Rotates token `id` (audited `token.rotate`): a new secret for the same license,
/// addresses and note, and the old token keeps working for `grace_ms` (then answers 403
/// `token_expired`), or is revoked at once with a grace of 0. The new token expires at
/// `expires_at_ms`, or when the old one was set to expire (before the rotation).
pub fn rotate_token(
    ctx: &Ctx<'_>,
    store: &mut Store,
    id: i64,
    grace_ms: u64,
    expires_at_ms: Option<u64>,
) -> Result<Rotated, AdminError> {
    if grace_ms > TOKEN_ROTATION_GRACE_MS_MAX {
        return Err(input("a rotation's grace period is at most 30 days"));
    }
    check_expiry(ctx.now_ms, expires_at_ms)?;
    let token = generate_token();
    store.write(|db| {
        let old = db.token(id)?;
        if let Some(at) = old.revoked_at_ms {
            return Err(input(format!(
                "token {id} was revoked at {}: issue a new one instead",
                format_rfc3339(WallTime::from_unix_ms(at))
            )));
        }
        if let Some(next) = old.replaced_by {
            return Err(input(format!(
                "token {id} was rotated already (its replacement is token {next}): rotate that one"
            )));
        }
        if old.expired_at(ctx.now_ms) {
            return Err(input(format!(
                "token {id} has expired: issue a new one instead"
            )));
        }
        let expires_at_ms = expires_at_ms.or(old.expires_at_ms);
        let license = db.license_required(&old.license_key)?;
        let new_id = db.insert_token(
            &license,
            &token_hash(&token),
            &old.allowed,
            old.note.as_deref(),
            ctx.now_ms,
            expires_at_ms,
        )?;
        let old_until = (grace_ms > 0).then(|| ctx.now_ms.saturating_add(grace_ms));
        let old = db.retire_token(id, new_id, ctx.now_ms, old_until)?;
        db.audit(&ctx.audit(
            "token.rotate",
            Some(&old.license_key),
            serde_json::json!({
                "token_id": id,
                "new_token_id": new_id,
                "grace_s": grace_ms / 1000,
                "old_expires_at": old.expires_at_ms.map(crate::rfc3339_ms),
                "old_revoked_at": old.revoked_at_ms.map(crate::rfc3339_ms),
                "expires_at": expires_at_ms.map(crate::rfc3339_ms),
            }),
        ))?;
        Ok(Rotated {
            id: new_id,
            token: token.clone(),
            old,
            expires_at_ms,
        })
    })
}

/// Revokes a token (audited `token.revoke`).
pub fn revoke_token(
    ctx: &Ctx<'_>,
    store: &mut Store,
    id: i64,
) -> Result<crate::store::TokenRecord, AdminError> {
    store.write(|db| {
        let record = db.revoke_token(id, ctx.now_ms)?;
        db.audit(&ctx.audit(
            "token.revoke",
            Some(&record.license_key),
            serde_json::json!({ "token_id": id }),
        ))?;
        Ok::<_, AdminError>(record)
    })
}

/// Creates the next signing key, activated at `activation_ms` (audited `key.rotate`): the
/// key and its `.key` and `.pub` files.
pub fn rotate_key(
    ctx: &Ctx<'_>,
    store: &mut Store,
    activation: WallTime,
) -> Result<(tollgate_license::SigningKey, PathBuf, PathBuf), AdminError> {
    if let Ok(ring) = KeyRing::load(&ctx.paths.key_dir)
        && ring
            .entries()
            .iter()
            .any(|e| e.activation.unix_secs() == activation.unix_secs())
    {
        return Err(input(
            "a key with this activation second exists already; pick another time",
        ));
    }
    let (key, key_path, pub_path) = keyring::create_key(&ctx.paths.key_dir, activation)?;
    store.write(|db| {
        db.audit(&ctx.audit(
            "key.rotate",
            None,
            serde_json::json!({
                "key_id": key.key_id().to_string(),
                "activation": format_rfc3339(WallTime::from_unix_secs(activation.unix_secs())),
                "file": key_path.display().to_string(),
            }),
        ))?;
        Ok::<_, AdminError>(())
    })?;
    Ok((key, key_path, pub_path))
}

/// Adds a vendor user for the admin API and console (audited `user.add`).
pub fn add_user(
    ctx: &Ctx<'_>,
    store: &mut Store,
    name: &str,
    role: crate::admin_api::Role,
    password: &str,
) -> Result<crate::store::VendorUser, AdminError> {
    crate::admin_api::check_user(name, password).map_err(input)?;
    let hash = crate::admin_api::hash_password(password)
        .map_err(|e| AdminError::Output(io::Error::other(e)))?;
    store.write(|db| {
        let user = db.add_user(name, role.as_str(), &hash, ctx.now_ms)?;
        db.audit(&ctx.audit(
            "user.add",
            None,
            serde_json::json!({ "name": name, "role": role.as_str() }),
        ))?;
        Ok::<_, AdminError>(user)
    })
}

/// Disables a vendor user (kept for the audit log) and ends its sessions (audited
/// `user.disable`).
pub fn disable_user(
    ctx: &Ctx<'_>,
    store: &mut Store,
    name: &str,
) -> Result<crate::store::VendorUser, AdminError> {
    store.write(|db| {
        let user = db.disable_user(name, ctx.now_ms)?;
        db.audit(&ctx.audit("user.disable", None, serde_json::json!({ "name": name })))?;
        Ok::<_, AdminError>(user)
    })
}
