//! The vendor's administration CLI, `tollgate license-server admin …`, working directly on
//! the server's database and key directory (a running server sees every change at its next
//! request). Its credential is file access: whoever can write the database and read the
//! key directory administers the server.
//!
//! Every command that changes something is written to the audit log with the actor
//! `admin:<$USER>`. Tokens are printed once, at issue, and stored as hashes.
//!
//! Exit codes (through the binary): 0 done, 1 the database or a file failed, 2 bad input
//! (unknown license, customer or token, a bad spec or address, missing `--db`).

use std::io::{self, BufRead as _, Read as _, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use tollgate_license::timestamp::{DAY_MS, format_rfc3339, parse_rfc3339};
use tollgate_license::{Document, LicenseSpec};
use tollgate_license_client::Contract;

use crate::config::{self, ConfigError};
use crate::keyring::{self, KeyRing, KeyRingError};
use crate::service::{generate_token, token_hash};
use crate::store::{Allowed, Audit, Database, Store, StoreError, TOKEN_ADDRESS_COUNT_MAX};

/// Longest token note, in bytes.
pub const NOTE_LEN_MAX: usize = 256;

#[derive(Debug, clap::Args)]
#[command(
    about = "Administer licenses, tokens and keys on the server's database",
    long_about = "Administer the license server's database and signing keys directly: customers, \
licenses (from a spec), contracts, API tokens, usage reports, key rotation and the audit log. \
The database and key directory come from --config (the server's config file), or --db and \
--key-dir, or --dev (./license-server-dev). See docs/license-server.md."
)]
pub struct AdminArgs {
    /// The database file (default: `database` of --config).
    #[arg(long, value_name = "PATH", global = true)]
    pub db: Option<PathBuf>,
    /// The signing key directory (default: `[signing] key_dir` of --config).
    #[arg(long, value_name = "DIR", global = true)]
    pub key_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Customers: add, list.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Licenses: create from a spec, update, list, show, export the signed document.
    #[command(subcommand)]
    License(LicenseCommand),
    /// Mark a license's contract active (subscriptions roll forward) or lapsed.
    Contract {
        /// The license key.
        license: String,
        #[arg(value_enum)]
        state: ContractState,
    },
    /// API tokens: issue (printed once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Usage reports sent by agents.
    #[command(subcommand)]
    Reports(ReportsCommand),
    /// Signing keys: rotate (create the next key), list.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Vendor users of the admin API and console: add (password on standard input), list,
    /// disable.
    #[command(subcommand)]
    User(UserCommand),
    /// The audit log, newest first: every admin action and every lease.
    Audit {
        /// Only entries about this license.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContractState {
    Active,
    Lapsed,
}

impl From<ContractState> for Contract {
    fn from(state: ContractState) -> Contract {
        match state {
            ContractState::Active => Contract::Active,
            ContractState::Lapsed => Contract::Lapsed,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum CustomerCommand {
    /// Add a customer (the name licenses' `customer` field refers to).
    Add {
        name: String,
    },
    List,
    /// Suspend a customer: its licenses' leases answer 403 `suspended` (agents keep their
    /// license until its lease ends); usage reports are still stored.
    Suspend {
        name: String,
    },
    /// Resume a suspended customer: leases are signed again.
    Resume {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum LicenseCommand {
    /// Create a license from a spec (the TOML of `tollgate license sign`); its `customer`
    /// must have been added. Signs the first document with the current key; without
    /// `lease_days` or `signature_valid_until` in the spec the server's lease applies.
    Create {
        #[arg(long, value_name = "SPEC.toml")]
        spec: PathBuf,
        /// The contract to start with.
        #[arg(long, value_enum, default_value = "active")]
        contract: ContractState,
    },
    /// Replace a license's content from a new spec (same key and customer): signs a new
    /// document with serial max(spec serial, current + 1).
    Update {
        license: String,
        #[arg(long, value_name = "SPEC.toml")]
        spec: PathBuf,
    },
    List,
    /// A license's state; with --history every document ever signed for it.
    Show {
        license: String,
        #[arg(long)]
        history: bool,
    },
    /// Print the current signed document (armored), e.g. for an offline installation.
    Export {
        license: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue an API token for a license, bound to client addresses; prints it once.
    Issue {
        /// The license key the token is for.
        #[arg(long, value_name = "KEY")]
        license: String,
        /// An address (192.0.2.7) or network (10.0.0.0/8) the token may be used from;
        /// repeat for several. Behind a proxy, the proxy's egress address.
        #[arg(long = "allow", value_name = "ADDR[/BITS]", required = true)]
        allow: Vec<String>,
        /// A note for the vendor (e.g. which node).
        #[arg(long)]
        note: Option<String>,
    },
    List {
        /// Only this license's tokens.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
    },
    /// Revoke a token (by the id `token list` shows): the next request is refused (403).
    Revoke { id: i64 },
}

#[derive(Debug, clap::Subcommand)]
pub enum ReportsCommand {
    /// The latest usage reports, newest first.
    List {
        /// Only this license's reports.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// One JSON object per line (the report as sent, with the server's fields).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (one line, 8 to 1024 bytes).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: crate::admin_api::Role,
    },
    List,
    /// Disable a user (kept for the audit log) and end its sessions.
    Disable {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create the next signing key. The server signs new leases with it from its activation
    /// time on (default now): publish its .pub to agents first, or schedule it.
    Rotate {
        /// When the key starts signing (UTC, like 2030-01-15T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        activate_at: Option<String>,
    },
    /// Every key, its activation time, and which one signs now.
    List,
}

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

fn input(message: impl Into<String>) -> AdminError {
    AdminError::Input(message.into())
}

/// Where the admin commands find their files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPaths {
    pub database: Database,
    pub key_dir: PathBuf,
    pub lease_ms: u64,
}

impl AdminPaths {
    /// From `--db` / `--key-dir`, else the config file, else (with `dev`) the development
    /// defaults.
    pub fn resolve(
        args: &AdminArgs,
        config_path: Option<&Path>,
        dev: bool,
    ) -> Result<AdminPaths, AdminError> {
        let (database, key_dir, lease_ms) = match (config_path, dev) {
            (Some(path), _) => {
                let config = config::Config::load(Some(path), true)?;
                (
                    Some(config.database),
                    Some(config.key_dir),
                    config.rules.lease_ms,
                )
            }
            (None, true) => {
                let config = config::Config::dev_defaults(Path::new(config::DEV_DIR_DEFAULT))?;
                (
                    Some(config.database),
                    Some(config.key_dir),
                    config.rules.lease_ms,
                )
            }
            (None, false) => (None, None, config::LEASE_DAYS_DEFAULT * DAY_MS),
        };
        let database = args
            .db
            .clone()
            .map(Database::Sqlite)
            .or(database)
            .ok_or_else(|| {
                input("which database? give --config FILE (the server's), --db PATH, or --dev")
            })?;
        let key_dir = args
            .key_dir
            .clone()
            .or(key_dir)
            .unwrap_or_else(|| PathBuf::from(config::KEY_DIR_DEFAULT));
        Ok(AdminPaths {
            database,
            key_dir,
            lease_ms,
        })
    }
}

/// The actor recorded in the audit log.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let user: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
    format!("admin:{user}")
}

/// Runs one admin command at `now_ms`, printing to `out` (a password comes from standard
/// input).
pub fn run(
    args: &AdminArgs,
    paths: &AdminPaths,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    run_with_input(args, paths, now_ms, &mut io::stdin().lock(), out)
}

/// [`run`] reading a password from `input`.
pub fn run_with_input(
    args: &AdminArgs,
    paths: &AdminPaths,
    now_ms: u64,
    input_lines: &mut dyn io::BufRead,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let actor = actor();
    let ctx = Ctx {
        paths,
        now_ms,
        actor: &actor,
    };
    // Key rotation needs no database to create the key, but records the rotation.
    let mut store = Store::open_database(&paths.database)?;
    match &args.command {
        AdminCommand::Customer(CustomerCommand::Add { name }) => {
            customer_add(&ctx, &mut store, name, out)
        }
        AdminCommand::Customer(CustomerCommand::List) => {
            for c in store.read().customers()? {
                let state = c.suspended_at_ms.map_or_else(
                    || "active".to_owned(),
                    |at| format!("suspended {}", format_rfc3339(at)),
                );
                writeln!(
                    out,
                    "{}\t{}\t{}\t{state}",
                    c.id,
                    c.name,
                    format_rfc3339(c.created_at_ms)
                )?;
            }
            Ok(())
        }
        AdminCommand::Customer(CustomerCommand::Suspend { name }) => {
            suspend_customer(&ctx, &mut store, name, true)?;
            writeln!(
                out,
                "customer {name} suspended: its leases answer 403 suspended from now on"
            )?;
            Ok(())
        }
        AdminCommand::Customer(CustomerCommand::Resume { name }) => {
            suspend_customer(&ctx, &mut store, name, false)?;
            writeln!(out, "customer {name} resumed: leases are signed again")?;
            Ok(())
        }
        AdminCommand::License(command) => license(&ctx, &mut store, command, out),
        AdminCommand::Contract { license, state } => {
            contract(&ctx, &mut store, license, (*state).into(), out)
        }
        AdminCommand::Token(command) => token(&ctx, &mut store, command, out),
        AdminCommand::Reports(ReportsCommand::List {
            license,
            limit,
            json,
        }) => reports(&store, license.as_deref(), *limit, *json, out),
        AdminCommand::Key(command) => key(&ctx, &mut store, command, out),
        AdminCommand::User(command) => user(&ctx, &mut store, command, input_lines, out),
        AdminCommand::Audit {
            license,
            limit,
            json,
        } => audit(&store, license.as_deref(), *limit, *json, out),
    }
}

/// Who acts, when, on which files: the CLI (`admin:<$USER>`) or the admin API
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

fn customer_add(
    ctx: &Ctx<'_>,
    store: &mut Store,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let customer = add_customer(ctx, store, name)?;
    writeln!(out, "customer {} added: {}", customer.id, customer.name)?;
    Ok(())
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

fn read_spec(path: &Path) -> Result<String, AdminError> {
    use std::io::Read as _;
    let read_error = |source| AdminError::Read {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(LicenseSpec::TEXT_LEN_MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    Ok(text)
}

/// The signing key at `now_ms` from the key directory.
fn signing_key(ctx: &Ctx<'_>) -> Result<tollgate_license::SigningKey, AdminError> {
    let ring = KeyRing::load(&ctx.paths.key_dir)?;
    ring.signing_key(ctx.now_ms)
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
        .to_document(key.key_id(), ctx.now_ms)
        .map_err(|e| input(format!("spec: {e}")))?;
    document
        .signature_valid_until_ms
        .get_or_insert(document.issued_at_ms.saturating_add(ctx.paths.lease_ms));
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

fn license(
    ctx: &Ctx<'_>,
    store: &mut Store,
    command: &LicenseCommand,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    match command {
        LicenseCommand::Create { spec, contract } => {
            let contract: Contract = (*contract).into();
            let (record, document, key_id) =
                create_license(ctx, store, &read_spec(spec)?, contract)?;
            writeln!(
                out,
                "license {} created for {}: {} serial {}, contract {}, signed by key {}",
                record.license_key,
                record.customer,
                document.kind.as_str(),
                record.serial,
                contract.as_str(),
                key_id
            )?;
            describe_document(&document, out)
        }
        LicenseCommand::Update { license, spec } => {
            let (document, _) = update_license(ctx, store, license, &read_spec(spec)?)?;
            writeln!(out, "license {license} updated: serial {}", document.serial)?;
            describe_document(&document, out)
        }
        LicenseCommand::List => {
            for l in store.read().licenses()? {
                let document = parse_stored(&l.document)?;
                writeln!(
                    out,
                    "{}\t{}\t{}\tserial {}\tcontract {}\tvalid until {}\tlease until {}",
                    l.license_key,
                    l.customer,
                    document.kind.as_str(),
                    l.serial,
                    l.contract.as_str(),
                    document
                        .valid_until_ms
                        .map_or_else(|| "forever".into(), format_rfc3339),
                    document
                        .signature_valid_until_ms
                        .map_or_else(|| "-".into(), format_rfc3339),
                )?;
            }
            Ok(())
        }
        LicenseCommand::Show { license, history } => {
            let db = store.read();
            let record = db.license_required(license)?;
            let document = parse_stored(&record.document)?;
            writeln!(out, "license      {}", record.license_key)?;
            writeln!(out, "customer     {}", record.customer)?;
            writeln!(out, "contract     {}", record.contract.as_str())?;
            writeln!(out, "serial       {}", record.serial)?;
            describe_document(&document, out)?;
            let tokens = db.tokens(Some(license))?;
            let active = tokens.iter().filter(|t| t.revoked_at_ms.is_none()).count();
            writeln!(
                out,
                "tokens       {active} active, {} revoked",
                tokens.len() - active
            )?;
            if *history {
                writeln!(out, "history:")?;
                for d in db.documents(license)? {
                    writeln!(
                        out,
                        "  serial {}\t{}\tissued {}\tlease until {}\tvalid until {}\tkey {}",
                        d.serial,
                        d.cause,
                        format_rfc3339(d.issued_at_ms),
                        d.signature_valid_until_ms
                            .map_or_else(|| "-".into(), format_rfc3339),
                        d.valid_until_ms
                            .map_or_else(|| "forever".into(), format_rfc3339),
                        d.key_id
                    )?;
                }
            }
            Ok(())
        }
        LicenseCommand::Export { license } => {
            let record = store.read().license_required(license)?;
            out.write_all(record.document.as_bytes())?;
            Ok(())
        }
    }
}

fn user(
    ctx: &Ctx<'_>,
    store: &mut Store,
    command: &UserCommand,
    input_lines: &mut dyn io::BufRead,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    match command {
        UserCommand::Add { name, role } => {
            let mut password = String::new();
            input_lines
                .take(crate::admin_api::PASSWORD_LEN_MAX as u64 + 2)
                .read_line(&mut password)
                .map_err(AdminError::Output)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let user = add_user(ctx, store, name, *role, password)?;
            writeln!(out, "user {} added: {}", user.name, user.role)?;
        }
        UserCommand::List => {
            for u in store.read().users()? {
                let state = match u.disabled_at_ms {
                    Some(at) => format!("disabled {}", format_rfc3339(at)),
                    None => "active".into(),
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\tcreated {}",
                    u.name,
                    u.role,
                    state,
                    format_rfc3339(u.created_at_ms)
                )?;
            }
        }
        UserCommand::Disable { name } => {
            store.write(|db| {
                db.disable_user(name, ctx.now_ms)?;
                db.audit(&ctx.audit("user.disable", None, serde_json::json!({ "name": name })))?;
                Ok::<_, AdminError>(())
            })?;
            writeln!(out, "user {name} disabled; its sessions ended")?;
        }
    }
    Ok(())
}

fn parse_stored(text: &str) -> Result<Document, AdminError> {
    tollgate_license::parse(text.as_bytes())
        .map(|p| p.document)
        .map_err(|e| AdminError::Store(StoreError::Corrupt(format!("stored document: {e}"))))
}

fn describe_document(document: &Document, out: &mut dyn Write) -> Result<(), AdminError> {
    writeln!(out, "kind         {}", document.kind.as_str())?;
    writeln!(
        out,
        "valid        {} until {}",
        format_rfc3339(document.valid_from_ms),
        document
            .valid_until_ms
            .map_or_else(|| "forever".into(), format_rfc3339)
    )?;
    writeln!(
        out,
        "lease until  {}",
        document
            .signature_valid_until_ms
            .map_or_else(|| "-".into(), format_rfc3339)
    )?;
    writeln!(out, "key id       {}", document.key_id)?;
    Ok(())
}

fn contract(
    ctx: &Ctx<'_>,
    store: &mut Store,
    license: &str,
    contract: Contract,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let previous = set_contract(ctx, store, license, contract)?;
    writeln!(
        out,
        "contract of {license}: {} (was {})",
        contract.as_str(),
        previous.as_str()
    )?;
    if contract == Contract::Lapsed {
        writeln!(
            out,
            "leases are still renewed, but a subscription is no longer rolled forward: it ends \
             at its valid_until"
        )?;
    }
    Ok(())
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

fn token(
    ctx: &Ctx<'_>,
    store: &mut Store,
    command: &TokenCommand,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    match command {
        TokenCommand::Issue {
            license,
            allow,
            note,
        } => {
            let (id, token, allowed) = issue_token(ctx, store, license, allow, note.as_deref())?;
            writeln!(
                out,
                "token {id} for license {license}, allowed from {allowed}"
            )?;
            writeln!(out, "{token}")?;
            writeln!(
                out,
                "(shown once: put it in the agent's configuration; the server keeps only a hash)"
            )?;
            Ok(())
        }
        TokenCommand::List { license } => {
            for t in store.read().tokens(license.as_deref())? {
                let state = match t.revoked_at_ms {
                    Some(at) => format!("revoked {}", format_rfc3339(at)),
                    None => "active".into(),
                };
                let used = match (t.last_used_at_ms, &t.last_used_from) {
                    (Some(at), Some(from)) => format!("{} from {from}", format_rfc3339(at)),
                    _ => "never".into(),
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\tallowed {}\tcreated {}\tlast used {}\t{}",
                    t.id,
                    t.license_key,
                    state,
                    t.allowed,
                    format_rfc3339(t.created_at_ms),
                    used,
                    t.note.as_deref().unwrap_or("")
                )?;
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let record = revoke_token(ctx, store, *id)?;
            writeln!(
                out,
                "token {id} of license {} revoked at {}",
                record.license_key,
                record
                    .revoked_at_ms
                    .map_or_else(String::new, format_rfc3339)
            )?;
            Ok(())
        }
    }
}

/// Issues an API token for a license bound to `allow` (audited `token.issue`): its id, the
/// token (shown once; only its hash is stored) and the addresses.
pub fn issue_token(
    ctx: &Ctx<'_>,
    store: &mut Store,
    license: &str,
    allow: &[String],
    note: Option<&str>,
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
    let token = generate_token();
    let id = store.write(|db| {
        let record = db.license_required(license)?;
        let id = db.insert_token(&record, &token_hash(&token), &allowed, note, ctx.now_ms)?;
        db.audit(&ctx.audit(
            "token.issue",
            Some(license),
            serde_json::json!({
                "token_id": id,
                "allowed": allowed.to_string(),
                "note": note,
            }),
        ))?;
        Ok::<_, AdminError>(id)
    })?;
    Ok((id, token, allowed))
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

fn reports(
    store: &Store,
    license: Option<&str>,
    limit: u32,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let reports = store.read().reports(license, limit)?;
    if !json {
        writeln!(
            out,
            "id\treceived\tlicense\tnode\tcalls\tpeak\temergency\tsubscribers\tregistered\tpeak\tcluster calls\tversion\tfrom"
        )?;
    }
    for r in reports {
        if json {
            let value = serde_json::json!({
                "id": r.id,
                "received_at": format_rfc3339(r.received_at_ms),
                "license_key": r.license_key,
                "token_id": r.token_id,
                "client_address": r.client_address,
                "report": r.report,
            });
            writeln!(out, "{value}")?;
            continue;
        }
        let n = &r.report.node;
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.id,
            format_rfc3339(r.received_at_ms),
            r.license_key,
            r.report.node_id,
            n.calls,
            n.peak_calls,
            n.emergency_calls,
            n.subscribers,
            n.registered_subscribers,
            n.peak_registered_subscribers,
            r.report
                .cluster
                .map_or_else(|| "-".into(), |c| c.calls.to_string()),
            r.report.agent_version,
            r.client_address
        )?;
    }
    Ok(())
}

fn key(
    ctx: &Ctx<'_>,
    store: &mut Store,
    command: &KeyCommand,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    match command {
        KeyCommand::Rotate { activate_at } => {
            let activation_ms = match activate_at {
                Some(text) => {
                    parse_rfc3339(text).map_err(|e| input(format!("--activate-at {text}: {e}")))?
                }
                None => ctx.now_ms,
            };
            let (key, key_path, pub_path) = rotate_key(ctx, store, activation_ms)?;
            writeln!(out, "key id       {}", key.key_id())?;
            writeln!(out, "private key  {}  (mode 0600)", key_path.display())?;
            writeln!(out, "public key   {}", pub_path.display())?;
            writeln!(
                out,
                "activates    {}",
                format_rfc3339(activation_ms - activation_ms % 1000)
            )?;
            writeln!(out, "{}", key.public_key().to_file_string().trim_end())?;
            writeln!(
                out,
                "Agents must trust this public key (beside the old one) before the server signs \
                 with it; until then they keep their current license and refuse the renewal."
            )?;
            Ok(())
        }
        KeyCommand::List => {
            let ring = KeyRing::load(&ctx.paths.key_dir)?;
            let signing = ring.signing_key(ctx.now_ms).map(|e| e.key.key_id());
            for entry in ring.entries() {
                let id = entry.key.key_id();
                let state = if Some(id) == signing {
                    "signing"
                } else if entry.activation_ms > ctx.now_ms {
                    "scheduled"
                } else {
                    "previous"
                };
                writeln!(
                    out,
                    "{id}\t{state}\tactivates {}\t{}",
                    format_rfc3339(entry.activation_ms),
                    entry.file_name
                )?;
            }
            Ok(())
        }
    }
}

/// Creates the next signing key, activated at `activation_ms` (audited `key.rotate`): the
/// key and its `.key` and `.pub` files.
pub fn rotate_key(
    ctx: &Ctx<'_>,
    store: &mut Store,
    activation_ms: u64,
) -> Result<(tollgate_license::SigningKey, PathBuf, PathBuf), AdminError> {
    if let Ok(ring) = KeyRing::load(&ctx.paths.key_dir)
        && ring
            .entries()
            .iter()
            .any(|e| e.activation_ms / 1000 == activation_ms / 1000)
    {
        return Err(input(
            "a key with this activation second exists already; pick another time",
        ));
    }
    let (key, key_path, pub_path) = keyring::create_key(&ctx.paths.key_dir, activation_ms)?;
    store.write(|db| {
        db.audit(&ctx.audit(
            "key.rotate",
            None,
            serde_json::json!({
                "key_id": key.key_id().to_string(),
                "activation": format_rfc3339(activation_ms - activation_ms % 1000),
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

fn audit(
    store: &Store,
    license: Option<&str>,
    limit: u32,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    for a in store.read().audit_log(license, limit)? {
        if json {
            let detail: serde_json::Value =
                serde_json::Value::deserialize(&mut serde_json::Deserializer::from_str(&a.detail))
                    .unwrap_or(serde_json::Value::String(a.detail.clone()));
            let value = serde_json::json!({
                "id": a.id,
                "at": format_rfc3339(a.at_ms),
                "actor": a.actor,
                "action": a.action,
                "license_key": a.license_key,
                "client_address": a.client_address,
                "detail": detail,
            });
            writeln!(out, "{value}")?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                a.id,
                format_rfc3339(a.at_ms),
                a.actor,
                a.action,
                a.license_key.as_deref().unwrap_or("-"),
                a.client_address.as_deref().unwrap_or("-"),
                a.detail
            )?;
        }
    }
    Ok(())
}
