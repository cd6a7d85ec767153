//! `tollgate license-server admin …`: the vendor's administration CLI, working directly on
//! the server's database and key directory (a running server sees every change at its next
//! request). Its credential is file access: whoever can write the database and read the key
//! directory administers the server.
//!
//! This module parses the arguments and prints; every change is an action of
//! `tollgate_license_server::admin` (the admin HTTP API calls the same ones), listed
//! content is read from the store. Every command that changes something is written to the
//! audit log with the actor `admin:<name>` (see [`actor`]). Tokens are printed once, at
//! issue.
//!
//! Exit codes: 0 done, 1 the database or a file failed, 2 bad input (unknown license,
//! customer or token, a bad spec or address, missing `--db`).

use std::io::{self, BufRead as _, Read as _, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use tollgate_events::WallTime;
use tollgate_license::timestamp::{format_rfc3339, parse_rfc3339};
use tollgate_license::{Document, LicenseSpec};
use tollgate_license_server::admin::{self, AdminError, AdminPaths, Contract, Ctx};
use tollgate_license_server::admin_api::{PASSWORD_LEN_MAX, Role};
use tollgate_license_server::store::{Store, StoreError, TokenState};
use tollgate_license_server::{KeyRing, billing};

use crate::Failure;

#[derive(Debug, clap::Args)]
#[command(
    about = "Administer licenses, tokens and keys on the server's database",
    long_about = "Administer the license server's database and signing keys directly: customers, \
licenses (from a spec), contracts, API tokens, usage reports, key rotation and the audit log. \
The database and key directory come from --config (the server's config file), or --db and \
--key-dir, or --dev (./license-server-dev). See docs/license-server.md."
)]
pub(crate) struct AdminArgs {
    /// The database file (default: `database` of --config).
    #[arg(long, value_name = "PATH", global = true)]
    db: Option<PathBuf>,
    /// The signing key directory (default: `[signing] key_dir` of --config).
    #[arg(long, value_name = "DIR", global = true)]
    key_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AdminCommand {
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
    /// API tokens: issue (printed once), list, rotate, revoke.
    #[command(subcommand, visible_alias = "tokens")]
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
    /// The former name of `reports silent-nodes --all` (every node that reported; `--silent`
    /// only the silent ones), kept for scripts.
    #[command(hide = true)]
    Nodes {
        /// Only the silent ones.
        #[arg(long)]
        silent: bool,
        /// Silent after this many minutes without a report.
        #[arg(long, value_name = "MINUTES", default_value_t = 15)]
        silent_after_minutes: u64,
    },
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
pub(crate) enum ContractState {
    Active,
    Lapsed,
}

/// A vendor user's role (`admin_api::Role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RoleArg {
    Viewer,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Admin => Role::Admin,
        }
    }
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
pub(crate) enum CustomerCommand {
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
pub(crate) enum LicenseCommand {
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
    /// Suspend one license: its leases answer 403 `suspended` (agents keep their license
    /// until its lease ends); usage reports are still stored; other licenses are untouched.
    Suspend {
        license: String,
    },
    /// Resume a suspended license: leases are signed again (unless its customer is
    /// suspended).
    Resume {
        license: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
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
        /// When the token stops working (UTC, like 2031-01-01T00:00:00Z); then requests
        /// with it answer 403 token_expired. Default: never.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// Every token: id, license, state (active, expired, revoked), addresses, created,
    /// expiry, the token a rotation replaced it with, last use, note.
    List {
        /// Only this license's tokens.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
    },
    /// Rotate a token: a new token (printed once) for the same license, addresses and note;
    /// the old one keeps working for the grace period, then answers 403 token_expired.
    Rotate {
        id: i64,
        /// How long the old token keeps working, in minutes (0 revokes it at once; at most
        /// 43200, 30 days).
        #[arg(long, value_name = "MINUTES", default_value_t = 1440)]
        grace_minutes: u64,
        /// When the new token stops working (UTC); default the old token's expiry.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// Revoke a token (by the id `token list` shows): the next request is refused (403).
    Revoke { id: i64 },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReportsCommand {
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
    /// What verifying the nodes' usage ledgers raised (`chain_break`, `fork`, `gap`,
    /// `reset`, `key_change`, …), newest first.
    Flags {
        /// Only this license's nodes.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The nodes whose usage ledgers the server holds: bound key, chain, head, flag count
    /// (`reports nodes` is the former name).
    #[command(alias = "nodes")]
    Ledgers {
        /// Only this license's nodes.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The billing view: per month (UTC), customer and license, the peak of each licensed
    /// figure across the license's nodes, its limit and the minutes over it, from the
    /// reports (see docs/license-server.md "Billing").
    Monthly {
        /// One month, YYYY-MM (sets --from and --to).
        #[arg(long, value_name = "YYYY-MM", conflicts_with_all = ["from", "to"])]
        month: Option<String>,
        /// The first month (default: 11 months before --to).
        #[arg(long, value_name = "YYYY-MM")]
        from: Option<String>,
        /// The last month (default: this month).
        #[arg(long, value_name = "YYYY-MM")]
        to: Option<String>,
        /// Only this license.
        #[arg(long, value_name = "KEY")]
        license: Option<String>,
        /// RFC 4180 CSV with a header line, for a spreadsheet or an invoicing system.
        #[arg(long)]
        csv: bool,
    },
    /// Nodes that stopped reporting: each node's latest report, silent when older than
    /// --silent-after-minutes (with --all, every node that ever reported, with its state).
    SilentNodes {
        /// Every node that ever reported, not only the silent ones.
        #[arg(long)]
        all: bool,
        /// Silent after this many minutes without a report.
        #[arg(long, value_name = "MINUTES", default_value_t = 15)]
        silent_after_minutes: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user; the password is read from standard input (one line, 8 to 1024 bytes).
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    List,
    /// Disable a user (kept for the audit log) and end its sessions.
    Disable {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeyCommand {
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

/// The actor recorded in the audit log: `admin:<name>`, where the name is the person behind
/// `sudo` (`SUDO_USER`: the docs run admin commands as the service's user through `sudo -u`),
/// else the account the process runs as, from the password database by its uid (not
/// `$USER`, which systemd units, cron jobs and containers often leave unset), else
/// `uid:<n>` (a uid without an account, as in a container).
fn actor() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    actor_of(
        std::env::var("SUDO_USER").ok().as_deref(),
        account_name(uid).as_deref(),
        uid,
    )
}

fn actor_of(sudo_user: Option<&str>, account: Option<&str>, uid: u32) -> String {
    let clean = |name: &str| -> Option<String> {
        let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        (!name.trim().is_empty()).then_some(name)
    };
    let name = sudo_user
        .and_then(clean)
        .or_else(|| account.and_then(clean))
        .unwrap_or_else(|| format!("uid:{uid}"));
    format!("admin:{name}")
}

/// The account name of `uid` in the password database (NSS), if it has one.
fn account_name(uid: u32) -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value to overwrite.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer's length is passed with it.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buffer`, which
    // outlives this borrow.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Runs `tollgate license-server admin …` with the files of `--config` (or `--dev`) and the
/// system clock; maps errors to exit codes (2 bad input or configuration, 1 failure).
pub(crate) fn run(args: &AdminArgs, config_path: Option<&Path>, dev: bool) -> Result<(), Failure> {
    let paths = AdminPaths::resolve(
        args.db.as_deref(),
        args.key_dir.as_deref(),
        config_path,
        dev,
    )
    .map_err(admin_failure)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut out = io::stdout().lock();
    run_with_input(args, &paths, now_ms, &mut io::stdin().lock(), &mut out)
        .map_err(admin_failure)?;
    out.flush().map_err(|e| Failure::Runtime(e.into()))
}

fn admin_failure(e: AdminError) -> Failure {
    if e.is_user_error() {
        Failure::Config(e.into())
    } else {
        Failure::Runtime(e.into())
    }
}

/// One admin command at `now_ms`, printing to `out`; a password comes from `input_lines`.
fn run_with_input(
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
                let state = suspension_state(c.suspended_at_ms);
                writeln!(
                    out,
                    "{}\t{}\t{}\t{state}",
                    c.id,
                    c.name,
                    rfc3339_ms(c.created_at_ms)
                )?;
            }
            Ok(())
        }
        AdminCommand::Customer(CustomerCommand::Suspend { name }) => {
            admin::suspend_customer(&ctx, &mut store, name, true)?;
            writeln!(
                out,
                "customer {name} suspended: its leases answer 403 suspended from now on"
            )?;
            Ok(())
        }
        AdminCommand::Customer(CustomerCommand::Resume { name }) => {
            admin::suspend_customer(&ctx, &mut store, name, false)?;
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
        AdminCommand::Reports(ReportsCommand::Flags {
            license,
            limit,
            json,
        }) => ledger_flags(&store, license.as_deref(), *limit, *json, out),
        AdminCommand::Reports(ReportsCommand::Ledgers { license, json }) => {
            ledger_nodes(&store, license.as_deref(), *json, out)
        }
        AdminCommand::Reports(ReportsCommand::SilentNodes {
            all,
            silent_after_minutes,
        }) => nodes(&store, !*all, *silent_after_minutes, now_ms, out),
        AdminCommand::Reports(ReportsCommand::Monthly {
            month,
            from,
            to,
            license,
            csv,
        }) => {
            let (from, to) = match month {
                Some(m) => (Some(m.as_str()), Some(m.as_str())),
                None => (from.as_deref(), to.as_deref()),
            };
            monthly(&store, from, to, license.as_deref(), *csv, now_ms, out)
        }
        AdminCommand::Nodes {
            silent,
            silent_after_minutes,
        } => nodes(&store, *silent, *silent_after_minutes, now_ms, out),
        AdminCommand::Key(command) => key(&ctx, &mut store, command, out),
        AdminCommand::User(command) => user(&ctx, &mut store, command, input_lines, out),
        AdminCommand::Audit {
            license,
            limit,
            json,
        } => audit(&store, license.as_deref(), *limit, *json, out),
    }
}

fn customer_add(
    ctx: &Ctx<'_>,
    store: &mut Store,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let customer = admin::add_customer(ctx, store, name)?;
    writeln!(out, "customer {} added: {}", customer.id, customer.name)?;
    Ok(())
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
                admin::create_license(ctx, store, &read_spec(spec)?, contract)?;
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
            let (document, _) = admin::update_license(ctx, store, license, &read_spec(spec)?)?;
            writeln!(out, "license {license} updated: serial {}", document.serial)?;
            describe_document(&document, out)
        }
        LicenseCommand::List => {
            for l in store.read().licenses()? {
                let document = parse_stored(&l.document)?;
                writeln!(
                    out,
                    "{}\t{}\t{}\tserial {}\tcontract {}\tvalid until {}\tlease until {}\t{}",
                    l.license_key,
                    l.customer,
                    document.kind.as_str(),
                    l.serial,
                    l.contract.as_str(),
                    document
                        .valid_until
                        .map_or_else(|| "forever".into(), format_rfc3339),
                    document
                        .signature_valid_until
                        .map_or_else(|| "-".into(), format_rfc3339),
                    suspension_state(l.suspended_at_ms),
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
            writeln!(
                out,
                "state        {}",
                suspension_state(record.suspended_at_ms)
            )?;
            describe_document(&document, out)?;
            let tokens = db.tokens(Some(license))?;
            let count = |state: &str| {
                tokens
                    .iter()
                    .filter(|t| t.state(ctx.now_ms).as_str() == state)
                    .count()
            };
            let active = count("active") + count("expiring");
            let expired = match count("expired") {
                0 => String::new(),
                n => format!(", {n} expired"),
            };
            writeln!(
                out,
                "tokens       {active} active, {} revoked{expired}",
                count("revoked")
            )?;
            if *history {
                writeln!(out, "history:")?;
                for d in db.documents(license)? {
                    writeln!(
                        out,
                        "  serial {}\t{}\tissued {}\tlease until {}\tvalid until {}\tkey {}",
                        d.serial,
                        d.cause,
                        rfc3339_ms(d.issued_at_ms),
                        d.signature_valid_until_ms
                            .map_or_else(|| "-".into(), rfc3339_ms),
                        d.valid_until_ms
                            .map_or_else(|| "forever".into(), rfc3339_ms),
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
        LicenseCommand::Suspend { license } => {
            admin::suspend_license(ctx, store, license, true)?;
            writeln!(
                out,
                "license {license} suspended: its leases answer 403 suspended from now on"
            )?;
            Ok(())
        }
        LicenseCommand::Resume { license } => {
            let before = admin::suspend_license(ctx, store, license, false)?;
            let customer = store.read().customer(&before.customer)?;
            match customer.and_then(|c| c.suspended_at_ms) {
                Some(_) => writeln!(
                    out,
                    "license {license} resumed, but its customer {} is suspended: no lease \
                     is signed until the customer is resumed",
                    before.customer
                )?,
                None => writeln!(out, "license {license} resumed: leases are signed again")?,
            }
            Ok(())
        }
    }
}

/// `active`, or `suspended <since>`.
fn suspension_state(suspended_at_ms: Option<u64>) -> String {
    suspended_at_ms.map_or_else(
        || "active".to_owned(),
        |at| format!("suspended {}", rfc3339_ms(at)),
    )
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
                .take(PASSWORD_LEN_MAX as u64 + 2)
                .read_line(&mut password)
                .map_err(AdminError::Output)?;
            let password = password.trim_end_matches(['\r', '\n']);
            let user = admin::add_user(ctx, store, name, (*role).into(), password)?;
            writeln!(out, "user {} added: {}", user.name, user.role)?;
        }
        UserCommand::List => {
            for u in store.read().users()? {
                let state = match u.disabled_at_ms {
                    Some(at) => format!("disabled {}", rfc3339_ms(at)),
                    None => "active".into(),
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\tcreated {}",
                    u.name,
                    u.role,
                    state,
                    rfc3339_ms(u.created_at_ms)
                )?;
            }
        }
        UserCommand::Disable { name } => {
            admin::disable_user(ctx, store, name)?;
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
        format_rfc3339(document.valid_from),
        document
            .valid_until
            .map_or_else(|| "forever".into(), format_rfc3339)
    )?;
    writeln!(
        out,
        "lease until  {}",
        document
            .signature_valid_until
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
    let previous = admin::set_contract(ctx, store, license, contract)?;
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
            expires,
        } => {
            let expires_at_ms = parse_time_arg("--expires", expires.as_deref())?;
            let (id, token, allowed) =
                admin::issue_token(ctx, store, license, allow, note.as_deref(), expires_at_ms)?;
            let until = expires_at_ms
                .map_or_else(String::new, |at| format!(", expires {}", rfc3339_ms(at)));
            writeln!(
                out,
                "token {id} for license {license}, allowed from {allowed}{until}"
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
                let state = match t.state(ctx.now_ms) {
                    TokenState::Revoked(at) => format!("revoked {}", rfc3339_ms(at)),
                    TokenState::Expired(at) => format!("expired {}", rfc3339_ms(at)),
                    TokenState::Active | TokenState::Expiring(_) => "active".into(),
                };
                let expires = match t.expires_at_ms {
                    Some(at) => format!("expires {}", rfc3339_ms(at)),
                    None => "expires never".into(),
                };
                let replaced = t
                    .replaced_by
                    .map_or_else(String::new, |next| format!("\treplaced by {next}"));
                let used = match (t.last_used_at_ms, &t.last_used_from) {
                    (Some(at), Some(from)) => format!("{} from {from}", rfc3339_ms(at)),
                    _ => "never".into(),
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\tallowed {}\tcreated {}\t{expires}{replaced}\tlast used {}\t{}",
                    t.id,
                    t.license_key,
                    state,
                    t.allowed,
                    rfc3339_ms(t.created_at_ms),
                    used,
                    t.note.as_deref().unwrap_or("")
                )?;
            }
            Ok(())
        }
        TokenCommand::Rotate {
            id,
            grace_minutes,
            expires,
        } => {
            let expires_at_ms = parse_time_arg("--expires", expires.as_deref())?;
            let grace_ms = grace_minutes.saturating_mul(60_000);
            let rotated = admin::rotate_token(ctx, store, *id, grace_ms, expires_at_ms)?;
            let until = rotated
                .expires_at_ms
                .map_or_else(String::new, |at| format!(", expires {}", rfc3339_ms(at)));
            writeln!(
                out,
                "token {} for license {} replaces token {id}, allowed from {}{until}",
                rotated.id, rotated.old.license_key, rotated.old.allowed
            )?;
            writeln!(out, "{}", rotated.token)?;
            writeln!(
                out,
                "(shown once: put it in the agent's configuration; the server keeps only a hash)"
            )?;
            match (rotated.old.revoked_at_ms, rotated.old.expires_at_ms) {
                (Some(_), _) => {
                    writeln!(out, "token {id} is revoked: requests with it answer 403")?
                }
                (None, Some(at)) => writeln!(
                    out,
                    "token {id} keeps working until {}, then answers 403 token_expired",
                    rfc3339_ms(at)
                )?,
                (None, None) => {}
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let record = admin::revoke_token(ctx, store, *id)?;
            writeln!(
                out,
                "token {id} of license {} revoked at {}",
                record.license_key,
                record.revoked_at_ms.map_or_else(String::new, rfc3339_ms)
            )?;
            Ok(())
        }
    }
}

/// An optional RFC 3339 time argument.
fn parse_time_arg(flag: &str, text: Option<&str>) -> Result<Option<u64>, AdminError> {
    text.map(|text| {
        parse_rfc3339(text)
            .map(WallTime::unix_ms)
            .map_err(|e| admin::input(format!("{flag} {text}: {e}")))
    })
    .transpose()
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
            "id\treceived\tlicense\tnode\tcalls\tpeak\temergency\tsubscribers\tregistered\tpeak\tcluster calls\tversion\tfrom\tledger flags"
        )?;
    }
    for r in reports {
        if json {
            writeln!(
                out,
                "{}",
                tollgate_license_server::admin_api::report_json(&r)
            )?;
            continue;
        }
        let n = &r.report.node;
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.id,
            rfc3339_ms(r.received_at_ms),
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
            r.client_address,
            if r.ledger_flags.is_empty() {
                "-".to_owned()
            } else {
                r.ledger_flags
                    .iter()
                    .map(|f| f.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        )?;
    }
    Ok(())
}

/// `admin reports flags`: what verifying the nodes' ledgers raised
/// (`tollgate_license_server::ledger`).
fn ledger_flags(
    store: &Store,
    license: Option<&str>,
    limit: u32,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let flags = store.read().ledger_flags(license, limit)?;
    if !json {
        writeln!(out, "id\tat\tlicense\tnode\tflag\tseq\treport\tdetail")?;
    }
    for f in flags {
        if json {
            writeln!(out, "{}", serde_json::json!(f))?;
            continue;
        }
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            f.id,
            f.at,
            f.license_key,
            f.node_id,
            f.kind,
            opt(f.seq.map(|s| s.to_string())),
            opt(f.report_id.map(|s| s.to_string())),
            f.detail
        )?;
    }
    Ok(())
}

/// `admin reports ledgers`: every node whose key or ledger the server holds.
fn ledger_nodes(
    store: &Store,
    license: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let nodes = store.read().ledger_nodes(license)?;
    if !json {
        writeln!(
            out,
            "license\tnode\tkey\tchain\thead seq\tentries\tflags\tlast seen"
        )?;
    }
    for n in nodes {
        if json {
            writeln!(out, "{}", serde_json::json!(n))?;
            continue;
        }
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            n.license_key,
            n.node_id,
            n.public_key.as_deref().unwrap_or("-"),
            n.chain,
            n.head_seq.map_or_else(|| "-".into(), |s| s.to_string()),
            n.entries,
            n.flags,
            n.last_seen
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
            let activation = match activate_at {
                Some(text) => parse_rfc3339(text)
                    .map_err(|e| admin::input(format!("--activate-at {text}: {e}")))?,
                None => WallTime::from_unix_ms(ctx.now_ms),
            };
            let (key, key_path, pub_path) = admin::rotate_key(ctx, store, activation)?;
            writeln!(out, "key id       {}", key.key_id())?;
            writeln!(out, "private key  {}  (mode 0600)", key_path.display())?;
            writeln!(out, "public key   {}", pub_path.display())?;
            writeln!(
                out,
                "activates    {}",
                format_rfc3339(WallTime::from_unix_secs(activation.unix_secs()))
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
            let signing = ring
                .signing_key(WallTime::from_unix_ms(ctx.now_ms))
                .map(|e| e.key.key_id());
            for entry in ring.entries() {
                let id = entry.key.key_id();
                let state = if Some(id) == signing {
                    "signing"
                } else if entry.activation > WallTime::from_unix_ms(ctx.now_ms) {
                    "scheduled"
                } else {
                    "previous"
                };
                writeln!(
                    out,
                    "{id}\t{state}\tactivates {}\t{}",
                    format_rfc3339(entry.activation),
                    entry.file_name
                )?;
            }
            Ok(())
        }
    }
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
                "at": rfc3339_ms(a.at_ms),
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
                rfc3339_ms(a.at_ms),
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

fn monthly(
    store: &Store,
    from: Option<&str>,
    to: Option<&str>,
    license: Option<&str>,
    csv: bool,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let (first, last) = billing::parse_range(from, to, now_ms).map_err(admin::input)?;
    let rows = billing::monthly(&store.read(), first, last, license)?;
    if csv {
        out.write_all(billing::csv(&rows).as_bytes())?;
        return Ok(());
    }
    writeln!(
        out,
        "month\tcustomer\tlicense\tnodes\treports\tpeak calls\tlimit\tover (min)\tpeak registered\tlimit\tover (min)\tpeak subscribers\tlimit\tover (min)\tpeak emergency"
    )?;
    let limit = |l: Option<u64>| l.map_or_else(|| "-".to_owned(), |l| l.to_string());
    for r in rows {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.month,
            r.customer,
            r.license_key,
            r.nodes,
            r.reports,
            r.calls.peak,
            limit(r.calls.limit),
            r.calls.over_limit_minutes,
            r.registered_subscribers.peak,
            limit(r.registered_subscribers.limit),
            r.registered_subscribers.over_limit_minutes,
            r.subscribers.peak,
            limit(r.subscribers.limit),
            r.subscribers.over_limit_minutes,
            r.peak_emergency_calls,
        )?;
    }
    Ok(())
}

fn nodes(
    store: &Store,
    silent_only: bool,
    silent_after_minutes: u64,
    now_ms: u64,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let silent_after_ms = silent_after_minutes.saturating_mul(60_000);
    if silent_after_ms == 0 || silent_after_ms > tollgate_license_server::nodes::SILENT_AFTER_MS_MAX
    {
        return Err(admin::input("--silent-after-minutes: 1 to 527040 (a year)"));
    }
    let nodes = tollgate_license_server::nodes::nodes(&store.read(), now_ms, silent_after_ms)?;
    writeln!(
        out,
        "customer\tlicense\tnode\tstate\tlast report\tfrom\tversion\tserial\tcalls\tregistered"
    )?;
    for n in nodes.iter().filter(|n| n.silent || !silent_only) {
        let state = if n.silent {
            format!("silent {} min", n.silent_for_ms / 60_000)
        } else {
            "reporting".to_owned()
        };
        writeln!(
            out,
            "{}\t{}\t{}\t{state}\t{}\t{}\t{}\t{}\t{}\t{}",
            n.customer,
            n.license_key,
            n.node_id,
            n.last_report_at,
            n.client_address,
            n.agent_version,
            n.license_serial
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            n.calls,
            n.registered_subscribers,
        )?;
    }
    Ok(())
}

/// A store record's time (its SQL column holds Unix ms) as RFC 3339.
fn rfc3339_ms(ms: u64) -> String {
    format_rfc3339(WallTime::from_unix_ms(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_actor_is_the_sudo_user_else_the_uids_account_else_the_uid() {
        assert_eq!(
            actor_of(Some("alice"), Some("tollgate"), 998),
            "admin:alice"
        );
        assert_eq!(actor_of(None, Some("tollgate"), 998), "admin:tollgate");
        assert_eq!(actor_of(Some(""), Some("root"), 0), "admin:root");
        assert_eq!(actor_of(None, None, 1000), "admin:uid:1000");
        assert_eq!(actor_of(Some("a\nb"), None, 1), "admin:ab");
    }

    #[test]
    fn the_account_of_uid_0_is_found_without_the_environment() {
        assert_eq!(account_name(0).as_deref(), Some("root"));
    }
}
