//! The store: customers, licenses (spec, current document, every document ever signed),
//! API tokens (hashed, bound to addresses, revocable), usage reports and the audit log, in
//! an embedded SQLite file (the default) or a shared PostgreSQL database (`[database] url`).
//!
//! - **One schema, one set of queries**: [`MIGRATIONS`] and every query are written once,
//!   in SQLite's dialect; [`crate::sql`] runs them on either database (placeholders and
//!   column types rewritten for PostgreSQL).
//! - **Migrations** are applied in order at open, each in its own transaction together with
//!   the new `schema_version` (on PostgreSQL under an advisory lock, so servers starting
//!   together migrate once); a database newer than this build is refused rather than
//!   misread. A later step is one more [`Migration`] (the ledger's tables: [`crate::ledger`]).
//! - **Concurrency**: on SQLite, WAL and a busy timeout, and every write in one
//!   `BEGIN IMMEDIATE` transaction. On PostgreSQL, every write is one transaction and a
//!   lease first locks its license's row ([`Db::lock_license`]: `SELECT … FOR UPDATE`), so
//!   several servers on one database serialize per license; `UNIQUE (license_id, serial)`
//!   backs it: no serial is ever signed twice.
//! - **Durability**: SQLite with `synchronous = FULL`; PostgreSQL commits are durable with
//!   its default `synchronous_commit = on`. A document is stored before any client sees it.
//! - The SQLite file is created mode 0600 (it holds token hashes and licenses).
//!
//! Times are Unix milliseconds in 64-bit integer columns.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rusqlite::{Connection, TransactionBehavior};
use tollgate_license::Document;
use tollgate_license_client::{Contract, UsageReport};

use crate::sql::{Dialect, Handle, Row, SqlError, StatementCache, params, postgres_ddl};

/// Longest a writer waits for another process's transaction (SQLite).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection to PostgreSQL may take, unless the URL sets `connect_timeout`.
pub const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock id PostgreSQL migrations hold (any constant shared by every server).
pub const POSTGRES_MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;
/// Most addresses or networks one token can be bound to.
pub const TOKEN_ADDRESS_COUNT_MAX: usize = 64;
/// Most rows one listing returns.
pub const LIST_LIMIT_MAX: u32 = 10_000;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    /// SQLite's dialect; see [`crate::sql::postgres_ddl`] for PostgreSQL.
    pub sql: &'static str,
}

/// The schema, in order. Never edit a released step: add one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "customers, licenses, documents, tokens, usage reports, audit log",
        sql: "
        CREATE TABLE customers (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at_ms INTEGER NOT NULL
        );
        CREATE TABLE licenses (
            id INTEGER PRIMARY KEY,
            license_key TEXT NOT NULL UNIQUE,
            customer_id INTEGER NOT NULL REFERENCES customers(id),
            contract TEXT NOT NULL CHECK (contract IN ('active', 'lapsed')),
            spec TEXT NOT NULL,
            document TEXT NOT NULL,
            serial INTEGER NOT NULL,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL
        );
        CREATE TABLE documents (
            id INTEGER PRIMARY KEY,
            license_id INTEGER NOT NULL REFERENCES licenses(id),
            serial INTEGER NOT NULL,
            key_id TEXT NOT NULL,
            issued_at_ms INTEGER NOT NULL,
            signature_valid_until_ms INTEGER,
            valid_until_ms INTEGER,
            cause TEXT NOT NULL,
            document TEXT NOT NULL,
            UNIQUE (license_id, serial)
        );
        CREATE TABLE tokens (
            id INTEGER PRIMARY KEY,
            license_id INTEGER NOT NULL REFERENCES licenses(id),
            token_hash BLOB NOT NULL UNIQUE,
            allowed TEXT NOT NULL,
            note TEXT,
            created_at_ms INTEGER NOT NULL,
            revoked_at_ms INTEGER,
            last_used_at_ms INTEGER,
            last_used_from TEXT
        );
        CREATE TABLE usage_reports (
            id INTEGER PRIMARY KEY,
            license_id INTEGER NOT NULL REFERENCES licenses(id),
            token_id INTEGER NOT NULL REFERENCES tokens(id),
            received_at_ms INTEGER NOT NULL,
            client_address TEXT NOT NULL,
            node_id TEXT NOT NULL,
            report TEXT NOT NULL
        );
        CREATE INDEX usage_reports_by_license ON usage_reports (license_id, received_at_ms);
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY,
            at_ms INTEGER NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            license_key TEXT,
            client_address TEXT,
            detail TEXT NOT NULL
        );
        CREATE INDEX audit_log_by_license ON audit_log (license_key, at_ms);
        ",
    },
    Migration {
        version: 2,
        description: "vendor users (argon2 passwords, roles) and their admin API sessions",
        sql: "
        CREATE TABLE vendor_users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
            password_hash TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL,
            disabled_at_ms INTEGER
        );
        CREATE TABLE admin_sessions (
            id INTEGER PRIMARY KEY,
            token_hash BLOB NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES vendor_users(id),
            created_at_ms INTEGER NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            client_address TEXT
        );
        CREATE INDEX admin_sessions_by_expiry ON admin_sessions (expires_at_ms);
        ",
    },
    Migration {
        version: 3,
        description: "customer suspension",
        sql: "ALTER TABLE customers ADD COLUMN suspended_at_ms INTEGER;",
    },
    Migration {
        version: 4,
        description: "usage ledger: node keys, verified entries, flags (crate::ledger)",
        sql: crate::ledger::MIGRATION_SQL,
    },
    Migration {
        version: 5,
        description: "token expiry and rotation; usage reports indexed by node",
        // `replaced_by` names the token a rotation created (no foreign key: a backup
        // restores tokens in id order, and the replacement comes later). The index serves
        // the silent-node view (the latest report of each license and node).
        sql: "
        ALTER TABLE tokens ADD COLUMN expires_at_ms INTEGER;
        ALTER TABLE tokens ADD COLUMN replaced_by INTEGER;
        CREATE INDEX usage_reports_by_node ON usage_reports (license_id, node_id, id);
        ",
    },
    Migration {
        version: 6,
        description: "license suspension",
        sql: "ALTER TABLE licenses ADD COLUMN suspended_at_ms INTEGER;",
    },
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] SqlError),
    #[error("cannot create the database file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("database url: {0}")]
    Url(String),
    #[error(
        "database schema version {found} is newer than this build understands ({known}): \
         upgrade tollgate"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },
    #[error("no {what} {name:?}")]
    NotFound { what: &'static str, name: String },
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("serial {new} does not grow past the current serial {current}")]
    SerialNotGrowing { new: u64, current: u64 },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sql(SqlError::Sqlite(e))
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        StoreError::Sql(SqlError::Postgres(e))
    }
}

impl StoreError {
    /// Whether the caller asked for something wrong (unknown name, duplicate), as opposed
    /// to the database failing.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::Exists { .. } | StoreError::NotFound { .. }
        )
    }
}

fn to_sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_sql_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Where the data lives: `database = "file.db"` / `[database] path`, or `[database] url`.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (created mode 0600 if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, `postgres://user:password@host:port/dbname`
    /// (libpq's URL and `key=value` forms).
    Postgres(String),
}

impl Database {
    /// Checks a `[database] url`: `postgres://` or `postgresql://`, parsable.
    pub fn postgres_url(url: &str) -> Result<Database, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "{:?}: expected postgres://user@host:port/dbname (for SQLite, set path instead)",
                redact_url(url)
            ));
        }
        url.parse::<postgres::Config>()
            .map_err(|e| format!("{}: {e}", redact_url(url)))?;
        Ok(Database::Postgres(url.to_owned()))
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(path) => Some(path),
            Database::Postgres(_) => None,
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub created_at_ms: u64,
    /// Suspended since (leases answer 403 `suspended`), or active.
    pub suspended_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseRecord {
    pub id: i64,
    pub license_key: String,
    pub customer: String,
    pub contract: Contract,
    /// The vendor's spec (TOML) the license was created or last updated from.
    pub spec: String,
    /// The current signed document (armored).
    pub document: String,
    pub serial: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Suspended since (leases answer 403 `suspended`), or active; the customer's own
    /// suspension is on [`Customer`].
    pub suspended_at_ms: Option<u64>,
}

/// One signed document of a license's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRecord {
    pub serial: u64,
    pub key_id: String,
    pub issued_at_ms: u64,
    pub signature_valid_until_ms: Option<u64>,
    pub valid_until_ms: Option<u64>,
    /// `created`, `updated`, `lease`.
    pub cause: String,
    pub document: String,
}

/// The addresses a token may be used from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed(pub Vec<IpNet>);

impl Allowed {
    /// Whether `address` (an IPv4-mapped IPv6 address counts as IPv4) is allowed.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// Parses `10.0.0.0/8`, `192.0.2.7` (a /32), `2001:db8::/32`. A network with host bits
    /// set (`10.0.0.1/8`) is refused: it is usually a typo.
    pub fn parse_one(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(IpNet::from(address.to_canonical()));
        }
        let net: IpNet = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network like 10.0.0.0/8"))?;
        if net.trunc() != net {
            return Err(format!(
                "{text} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        Ok(net)
    }

    fn to_column(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn from_column(text: &str) -> Result<Allowed, StoreError> {
        text.split_ascii_whitespace()
            .map(|t| t.parse::<IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map(Allowed)
            .map_err(|_| StoreError::Corrupt(format!("token addresses {text:?}")))
    }
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_column())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub license_id: i64,
    pub license_key: String,
    pub allowed: Allowed,
    pub note: Option<String>,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    pub last_used_at_ms: Option<u64>,
    pub last_used_from: Option<String>,
    /// Refused (403 `token_expired`) from this time on; `None`: never expires.
    pub expires_at_ms: Option<u64>,
    /// The token a rotation replaced this one with.
    pub replaced_by: Option<i64>,
}

/// What a token is at a time, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    /// Active, but it expires (after a rotation's grace period, or as created).
    Expiring(u64),
    Expired(u64),
    Revoked(u64),
}

impl TokenState {
    /// `active`, `expiring`, `expired`, `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expiring(_) => "expiring",
            TokenState::Expired(_) => "expired",
            TokenState::Revoked(_) => "revoked",
        }
    }
}

impl TokenRecord {
    /// Whether the token has expired at `now_ms` (expiry is inclusive: a token that expires
    /// at T is refused at T).
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Revoked wins over expired, expired over expiring.
    pub fn state(&self, now_ms: u64) -> TokenState {
        match (self.revoked_at_ms, self.expires_at_ms) {
            (Some(at), _) => TokenState::Revoked(at),
            (None, Some(at)) if at <= now_ms => TokenState::Expired(at),
            (None, Some(at)) => TokenState::Expiring(at),
            (None, None) => TokenState::Active,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub id: i64,
    pub license_key: String,
    pub token_id: i64,
    pub received_at_ms: u64,
    pub client_address: String,
    pub report: UsageReport,
    /// What verifying the report's ledger entries raised (`crate::ledger`).
    pub ledger_flags: Vec<crate::ledger::Flag>,
}

/// A report with its license's customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerReport {
    pub customer: String,
    pub record: ReportRecord,
}

/// A report from the columns id, license key, token id, received, client address, report
/// (its ledger flags not read).
fn report_record(r: &crate::sql::Row) -> Result<ReportRecord, StoreError> {
    let id = r.int(0)?;
    let report = serde_json::from_str(&r.text(5)?)
        .map_err(|e| StoreError::Corrupt(format!("usage report {id}: {e}")))?;
    Ok(ReportRecord {
        id,
        license_key: r.text(1)?,
        token_id: r.int(2)?,
        received_at_ms: from_sql_ms(r.int(3)?),
        client_address: r.text(4)?,
        report,
        ledger_flags: Vec::new(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: u64,
    /// `admin:<user>` for the CLI, `token:<id>` for a client.
    pub actor: String,
    /// `customer.add`, `license.create`, `license.update`, `contract.set`, `token.issue`,
    /// `token.revoke`, `key.rotate`, `lease.signed`, `lease.reused`, `lease.refused`.
    pub action: String,
    pub license_key: Option<String>,
    pub client_address: Option<String>,
    /// A JSON object with the action's particulars.
    pub detail: String,
}

/// One audit entry to append.
#[derive(Debug, Clone)]
pub struct Audit<'a> {
    pub at_ms: u64,
    pub actor: &'a str,
    pub action: &'a str,
    pub license_key: Option<&'a str>,
    pub client_address: Option<&'a str>,
    pub detail: serde_json::Value,
}

/// A PostgreSQL client and its prepared statements, dropped on a plain thread: the
/// synchronous client owns a small runtime, which must not be dropped inside the server's
/// async tasks.
struct PostgresConn(Option<RefCell<postgres::Client>>, StatementCache);

impl Drop for PostgresConn {
    fn drop(&mut self) {
        // The statements first: each closes itself through the client.
        self.1.clear();
        if let Some(client) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

enum Conn {
    Sqlite(Connection),
    Postgres(Box<PostgresConn>),
}

/// A vendor staff member of the admin API and console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorUser {
    pub id: i64,
    pub name: String,
    /// `admin` (every action) or `viewer` (read only).
    pub role: String,
    /// argon2id, PHC string.
    pub password_hash: String,
    pub created_at_ms: u64,
    pub disabled_at_ms: Option<u64>,
}

/// The database connection.
pub struct Store {
    conn: Conn,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dialect", &self.dialect())
            .finish()
    }
}

impl Store {
    /// Opens (and migrates) the configured database. For PostgreSQL, call it outside async
    /// code (a blocking thread): the synchronous client runs its own small runtime.
    pub fn open_database(database: &Database) -> Result<Store, StoreError> {
        match database {
            Database::Sqlite(path) => Store::open(path),
            Database::Postgres(url) => Store::open_postgres(url),
        }
    }

    /// Opens (creating it mode 0600 if missing) and migrates the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt as _;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Create {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Create {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Store::setup(conn, MIGRATIONS)
    }

    /// Connects to PostgreSQL (without TLS: use a local socket or a trusted network) and
    /// migrates the database.
    pub fn open_postgres(url: &str) -> Result<Store, StoreError> {
        Store::open_postgres_with(url, MIGRATIONS)
    }

    fn open_postgres_with(url: &str, migrations: &[Migration]) -> Result<Store, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Url(format!("{}: {e}", redact_url(url))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POSTGRES_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tollgate-license-server");
        }
        let client = config.connect(postgres::NoTls)?;
        let mut store = Store {
            conn: Conn::Postgres(Box::new(PostgresConn(
                Some(RefCell::new(client)),
                StatementCache::default(),
            ))),
        };
        store.migrate(migrations)?;
        Ok(store)
    }

    /// A private in-memory SQLite database (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::setup(Connection::open_in_memory()?, MIGRATIONS)
    }

    fn setup(conn: Connection, migrations: &[Migration]) -> Result<Store, StoreError> {
        conn.set_prepared_statement_cache_capacity(crate::sql::STATEMENT_CACHE_MAX);
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = Store {
            conn: Conn::Sqlite(conn),
        };
        store.migrate(migrations)?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Applies the migrations this database lacks, in order.
    fn migrate(&mut self, migrations: &[Migration]) -> Result<(), StoreError> {
        debug_assert!(
            migrations
                .iter()
                .enumerate()
                .all(|(i, m)| m.version as usize == i + 1),
            "migrations are numbered 1, 2, 3, …"
        );
        let known = migrations.last().map_or(0, |m| m.version);
        let found = self.write(|db| {
            db.lock_schema()?;
            db.h.batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
            db.schema_version()
        })?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for migration in migrations.iter().filter(|m| m.version > found) {
            let applied = self.write(|db| {
                db.lock_schema()?;
                // Another process may have migrated meanwhile.
                if db.schema_version()? >= migration.version {
                    return Ok::<_, StoreError>(false);
                }
                match db.h.dialect() {
                    Dialect::Sqlite => db.h.batch(migration.sql)?,
                    Dialect::Postgres => db.h.batch(&postgres_ddl(migration.sql))?,
                }
                db.h.execute("DELETE FROM schema_version", &[])?;
                db.h.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    &params![migration.version],
                )?;
                Ok(true)
            })?;
            if applied {
                tracing::info!(
                    version = migration.version,
                    description = migration.description,
                    "database migrated"
                );
            }
        }
        Ok(())
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read().schema_version()
    }

    /// Reads (each statement in its own implicit transaction).
    pub fn read(&self) -> Db<'_> {
        Db {
            h: match &self.conn {
                Conn::Sqlite(conn) => Handle::Sqlite(conn),
                Conn::Postgres(pg) => match &pg.0 {
                    Some(client) => Handle::PostgresClient(client, &pg.1),
                    None => unreachable!("the client is taken only on drop"),
                },
            },
        }
    }

    /// Runs `f` in one transaction (SQLite: `BEGIN IMMEDIATE`): committed if `f` returns
    /// `Ok`, rolled back otherwise.
    pub fn write<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.in_transaction(TxKind::Write, f)
    }
}

impl Store {
    /// Runs `f` in one read-only snapshot (SQLite: a deferred transaction, a WAL snapshot
    /// that does not block writers; PostgreSQL: `REPEATABLE READ READ ONLY`).
    pub fn snapshot<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.in_transaction(TxKind::ReadSnapshot, f)
    }

    /// Runs `f` in one transaction of `kind`: committed when `f` returns `Ok`, rolled back
    /// (dropped) otherwise.
    fn in_transaction<T, E: From<StoreError>>(
        &mut self,
        kind: TxKind,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match &mut self.conn {
            Conn::Sqlite(conn) => {
                let behavior = match kind {
                    TxKind::Write => TransactionBehavior::Immediate,
                    TxKind::ReadSnapshot => TransactionBehavior::Deferred,
                };
                let tx = conn
                    .transaction_with_behavior(behavior)
                    .map_err(StoreError::from)?;
                let value = f(&Db {
                    h: Handle::Sqlite(&tx),
                })?;
                tx.commit().map_err(StoreError::from)?;
                Ok(value)
            }
            Conn::Postgres(pg) => {
                let PostgresConn(client, cache) = &mut **pg;
                let client = client
                    .as_mut()
                    .expect("the client is taken only on drop")
                    .get_mut();
                let tx = match kind {
                    TxKind::Write => client.transaction(),
                    TxKind::ReadSnapshot => client
                        .build_transaction()
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start(),
                }
                .map_err(StoreError::from)?;
                let db = Db {
                    h: Handle::PostgresTransaction(RefCell::new(tx), cache),
                };
                let value = f(&db)?;
                let Handle::PostgresTransaction(tx, _) = db.h else {
                    unreachable!("built above")
                };
                tx.into_inner().commit().map_err(StoreError::from)?;
                Ok(value)
            }
        }
    }
}

/// How [`Store::in_transaction`] opens its transaction.
#[derive(Clone, Copy)]
enum TxKind {
    /// Takes the write lock at once (SQLite `IMMEDIATE`; PostgreSQL's default).
    Write,
    /// One read-only snapshot (SQLite deferred, a WAL snapshot; PostgreSQL
    /// `REPEATABLE READ READ ONLY`).
    ReadSnapshot,
}

/// Queries, on a connection or inside a transaction.
pub struct Db<'a> {
    pub(crate) h: Handle<'a>,
}

fn contract_of(text: &str) -> Contract {
    if text == "lapsed" {
        Contract::Lapsed
    } else {
        Contract::Active
    }
}

impl<'a> Db<'a> {
    /// The statement layer itself (backup and restore work table by table).
    pub(crate) fn raw(&self) -> &Handle<'a> {
        &self.h
    }
}

impl Db<'_> {
    pub fn dialect(&self) -> Dialect {
        self.h.dialect()
    }

    /// Serializes schema changes between servers (PostgreSQL; SQLite's `BEGIN IMMEDIATE`
    /// does it already).
    fn lock_schema(&self) -> Result<(), StoreError> {
        if self.dialect() == Dialect::Postgres {
            self.h.execute(
                "SELECT pg_advisory_xact_lock(?1)",
                &params![POSTGRES_MIGRATION_LOCK],
            )?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let row = self
            .h
            .query_opt("SELECT coalesce(max(version), 0) FROM schema_version", &[])?;
        let version = row.map_or(Ok(0), |r| r.int(0))?;
        u32::try_from(version).map_err(|_| StoreError::Corrupt(format!("schema version {version}")))
    }

    /// Locks the license's row until the transaction ends (PostgreSQL `FOR UPDATE`; on
    /// SQLite the write transaction holds the database lock already). Every write that
    /// decides a serial takes it first, so concurrent servers serialize per license.
    pub fn lock_license(&self, license_key: &str) -> Result<(), StoreError> {
        if self.dialect() == Dialect::Postgres {
            self.h.query(
                "SELECT id FROM licenses WHERE license_key = ?1 FOR UPDATE",
                &params![license_key],
            )?;
        }
        Ok(())
    }

    pub fn add_customer(&self, name: &str, at_ms: u64) -> Result<Customer, StoreError> {
        if self.customer(name)?.is_some() {
            return Err(StoreError::Exists {
                what: "customer",
                name: name.into(),
            });
        }
        let row = self.h.query_opt(
            "INSERT INTO customers (name, created_at_ms) VALUES (?1, ?2) RETURNING id",
            &params![name, to_sql_ms(at_ms)],
        )?;
        Ok(Customer {
            id: returned_id(row)?,
            name: name.into(),
            created_at_ms: at_ms,
            suspended_at_ms: None,
        })
    }

    fn customer_row(r: &Row) -> Result<Customer, StoreError> {
        Ok(Customer {
            id: r.int(0)?,
            name: r.text(1)?,
            created_at_ms: from_sql_ms(r.int(2)?),
            suspended_at_ms: r.opt_int(3)?.map(from_sql_ms),
        })
    }

    pub fn customer(&self, name: &str) -> Result<Option<Customer>, StoreError> {
        self.h
            .query_opt(
                "SELECT id, name, created_at_ms, suspended_at_ms FROM customers WHERE name = ?1",
                &params![name],
            )?
            .map(|r| Self::customer_row(&r))
            .transpose()
    }

    pub fn customers(&self) -> Result<Vec<Customer>, StoreError> {
        self.h
            .query(
                "SELECT id, name, created_at_ms, suspended_at_ms FROM customers ORDER BY name",
                &[],
            )?
            .iter()
            .map(Self::customer_row)
            .collect()
    }

    /// Suspends (`Some(at)`; a suspension keeps its first time) or resumes (`None`) a
    /// customer; returns it as it was before.
    pub fn set_customer_suspended(
        &self,
        name: &str,
        at_ms: Option<u64>,
    ) -> Result<Customer, StoreError> {
        let before = self.customer(name)?.ok_or_else(|| StoreError::NotFound {
            what: "customer",
            name: name.into(),
        })?;
        let at = match (at_ms, before.suspended_at_ms) {
            (Some(_), Some(first)) => Some(first),
            (at, _) => at,
        };
        self.h.execute(
            "UPDATE customers SET suspended_at_ms = ?2 WHERE id = ?1",
            &params![before.id, at.map(to_sql_ms)],
        )?;
        Ok(before)
    }

    /// Creates a license with its first signed document.
    pub fn create_license(
        &self,
        customer: &Customer,
        contract: Contract,
        spec: &str,
        text: &str,
        document: &Document,
        at_ms: u64,
    ) -> Result<LicenseRecord, StoreError> {
        if self.license(&document.license_key)?.is_some() {
            return Err(StoreError::Exists {
                what: "license",
                name: document.license_key.clone(),
            });
        }
        let row = self.h.query_opt(
            "INSERT INTO licenses (license_key, customer_id, contract, spec, document, serial,
                                   created_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) RETURNING id",
            &params![
                document.license_key.as_str(),
                customer.id,
                contract.as_str(),
                spec,
                text,
                to_sql_ms(document.serial),
                to_sql_ms(at_ms),
            ],
        )?;
        let id = returned_id(row)?;
        self.insert_document(id, text, document, "created")?;
        self.license(&document.license_key)?
            .ok_or_else(|| StoreError::Corrupt("license vanished after insert".into()))
    }

    fn insert_document(
        &self,
        license_id: i64,
        text: &str,
        document: &Document,
        cause: &str,
    ) -> Result<(), StoreError> {
        self.h.execute(
            "INSERT INTO documents (license_id, serial, key_id, issued_at_ms,
                                    signature_valid_until_ms, valid_until_ms, cause, document)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            &params![
                license_id,
                to_sql_ms(document.serial),
                document.key_id.to_string(),
                to_sql_ms(document.issued_at.unix_ms()),
                document
                    .signature_valid_until
                    .map(|at| to_sql_ms(at.unix_ms())),
                document.valid_until.map(|at| to_sql_ms(at.unix_ms())),
                cause,
                text,
            ],
        )?;
        Ok(())
    }

    /// Makes `text` (signed `document`) the license's current document and appends it to
    /// the history. The serial must grow. `spec` replaces the stored spec when given.
    pub fn record_document(
        &self,
        license: &LicenseRecord,
        text: &str,
        document: &Document,
        cause: &str,
        spec: Option<&str>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let lock = match self.dialect() {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        };
        let row = self.h.query_opt(
            &format!("SELECT serial FROM licenses WHERE id = ?1{lock}"),
            &params![license.id],
        )?;
        let current = from_sql_ms(
            row.ok_or_else(|| StoreError::NotFound {
                what: "license",
                name: license.license_key.clone(),
            })?
            .int(0)?,
        );
        if document.serial <= current {
            return Err(StoreError::SerialNotGrowing {
                new: document.serial,
                current,
            });
        }
        self.h.execute(
            "UPDATE licenses SET document = ?2, serial = ?3, updated_at_ms = ?4,
                                 spec = coalesce(?5, spec)
             WHERE id = ?1",
            &params![
                license.id,
                text,
                to_sql_ms(document.serial),
                to_sql_ms(at_ms),
                spec
            ],
        )?;
        self.insert_document(license.id, text, document, cause)
    }

    const LICENSE_COLUMNS: &'static str = "l.id, l.license_key, c.name, l.contract, l.spec, \
         l.document, l.serial, l.created_at_ms, l.updated_at_ms, l.suspended_at_ms";

    fn license_row(r: &Row) -> Result<LicenseRecord, StoreError> {
        Ok(LicenseRecord {
            id: r.int(0)?,
            license_key: r.text(1)?,
            customer: r.text(2)?,
            contract: contract_of(&r.text(3)?),
            spec: r.text(4)?,
            document: r.text(5)?,
            serial: from_sql_ms(r.int(6)?),
            created_at_ms: from_sql_ms(r.int(7)?),
            updated_at_ms: from_sql_ms(r.int(8)?),
            suspended_at_ms: r.opt_int(9)?.map(from_sql_ms),
        })
    }

    pub fn license(&self, license_key: &str) -> Result<Option<LicenseRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM licenses l JOIN customers c ON c.id = l.customer_id
             WHERE l.license_key = ?1",
            Self::LICENSE_COLUMNS
        );
        self.h
            .query_opt(&sql, &params![license_key])?
            .map(|r| Self::license_row(&r))
            .transpose()
    }

    /// The license, or [`StoreError::NotFound`].
    pub fn license_required(&self, license_key: &str) -> Result<LicenseRecord, StoreError> {
        self.license(license_key)?
            .ok_or_else(|| StoreError::NotFound {
                what: "license",
                name: license_key.into(),
            })
    }

    pub fn licenses(&self) -> Result<Vec<LicenseRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM licenses l JOIN customers c ON c.id = l.customer_id
             ORDER BY l.license_key",
            Self::LICENSE_COLUMNS
        );
        self.h
            .query(&sql, &[])?
            .iter()
            .map(Self::license_row)
            .collect()
    }

    /// Suspends (`Some(at)`; a suspension keeps its first time) or resumes (`None`) one
    /// license, as [`Db::set_customer_suspended`] does a customer; returns it as it was
    /// before.
    pub fn set_license_suspended(
        &self,
        license_key: &str,
        at_ms: Option<u64>,
    ) -> Result<LicenseRecord, StoreError> {
        let before = self.license_required(license_key)?;
        let at = match (at_ms, before.suspended_at_ms) {
            (Some(_), Some(first)) => Some(first),
            (at, _) => at,
        };
        self.h.execute(
            "UPDATE licenses SET suspended_at_ms = ?2 WHERE id = ?1",
            &params![before.id, at.map(to_sql_ms)],
        )?;
        Ok(before)
    }

    /// Sets the contract; returns the previous one.
    pub fn set_contract(
        &self,
        license_key: &str,
        contract: Contract,
        at_ms: u64,
    ) -> Result<Contract, StoreError> {
        self.lock_license(license_key)?;
        let license = self.license_required(license_key)?;
        self.h.execute(
            "UPDATE licenses SET contract = ?2, updated_at_ms = ?3 WHERE id = ?1",
            &params![license.id, contract.as_str(), to_sql_ms(at_ms)],
        )?;
        Ok(license.contract)
    }

    /// Every document signed for the license, oldest first.
    pub fn documents(&self, license_key: &str) -> Result<Vec<DocumentRecord>, StoreError> {
        let license = self.license_required(license_key)?;
        self.h
            .query(
                "SELECT serial, key_id, issued_at_ms, signature_valid_until_ms, valid_until_ms,
                        cause, document
                 FROM documents WHERE license_id = ?1 ORDER BY serial",
                &params![license.id],
            )?
            .iter()
            .map(|r| {
                Ok(DocumentRecord {
                    serial: from_sql_ms(r.int(0)?),
                    key_id: r.text(1)?,
                    issued_at_ms: from_sql_ms(r.int(2)?),
                    signature_valid_until_ms: r.opt_int(3)?.map(from_sql_ms),
                    valid_until_ms: r.opt_int(4)?.map(from_sql_ms),
                    cause: r.text(5)?,
                    document: r.text(6)?,
                })
            })
            .collect()
    }

    pub fn insert_token(
        &self,
        license: &LicenseRecord,
        token_hash: &[u8; 32],
        allowed: &Allowed,
        note: Option<&str>,
        at_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<i64, StoreError> {
        let row = self.h.query_opt(
            "INSERT INTO tokens (license_id, token_hash, allowed, note, created_at_ms,
                                 expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            &params![
                license.id,
                &token_hash[..],
                allowed.to_column(),
                note,
                to_sql_ms(at_ms),
                expires_at_ms.map(to_sql_ms)
            ],
        )?;
        returned_id(row)
    }

    /// Marks `id` replaced by `replaced_by` (a rotation): it expires at `expires_at_ms`
    /// (kept if it expires sooner already), or is revoked at `at_ms` with `None`.
    pub fn retire_token(
        &self,
        id: i64,
        replaced_by: i64,
        at_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<TokenRecord, StoreError> {
        match expires_at_ms {
            Some(expires) => self.h.execute(
                "UPDATE tokens SET replaced_by = ?2,
                        expires_at_ms = CASE WHEN expires_at_ms IS NULL OR expires_at_ms > ?3
                                             THEN ?3 ELSE expires_at_ms END
                 WHERE id = ?1",
                &params![id, replaced_by, to_sql_ms(expires)],
            )?,
            None => self.h.execute(
                "UPDATE tokens SET replaced_by = ?2,
                        revoked_at_ms = coalesce(revoked_at_ms, ?3)
                 WHERE id = ?1",
                &params![id, replaced_by, to_sql_ms(at_ms)],
            )?,
        };
        self.token(id)
    }

    const TOKEN_COLUMNS: &'static str = "t.id, t.license_id, l.license_key, t.allowed, t.note, \
         t.created_at_ms, t.revoked_at_ms, t.last_used_at_ms, t.last_used_from, \
         t.expires_at_ms, t.replaced_by";

    fn token_row(r: &Row) -> Result<TokenRecord, StoreError> {
        Ok(TokenRecord {
            id: r.int(0)?,
            license_id: r.int(1)?,
            license_key: r.text(2)?,
            allowed: Allowed::from_column(&r.text(3)?)?,
            note: r.opt_text(4)?,
            created_at_ms: from_sql_ms(r.int(5)?),
            revoked_at_ms: r.opt_int(6)?.map(from_sql_ms),
            last_used_at_ms: r.opt_int(7)?.map(from_sql_ms),
            last_used_from: r.opt_text(8)?,
            expires_at_ms: r.opt_int(9)?.map(from_sql_ms),
            replaced_by: r.opt_int(10)?,
        })
    }

    pub fn token_by_hash(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM tokens t JOIN licenses l ON l.id = t.license_id
             WHERE t.token_hash = ?1",
            Self::TOKEN_COLUMNS
        );
        self.h
            .query_opt(&sql, &params![&token_hash[..]])?
            .map(|r| Self::token_row(&r))
            .transpose()
    }

    pub fn token(&self, id: i64) -> Result<TokenRecord, StoreError> {
        let sql = format!(
            "SELECT {} FROM tokens t JOIN licenses l ON l.id = t.license_id WHERE t.id = ?1",
            Self::TOKEN_COLUMNS
        );
        let row = self
            .h
            .query_opt(&sql, &params![id])?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                name: id.to_string(),
            })?;
        Self::token_row(&row)
    }

    pub fn tokens(&self, license_key: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM tokens t JOIN licenses l ON l.id = t.license_id
             WHERE CAST(?1 AS TEXT) IS NULL OR l.license_key = ?1 ORDER BY t.id",
            Self::TOKEN_COLUMNS
        );
        self.h
            .query(&sql, &params![license_key])?
            .iter()
            .map(Self::token_row)
            .collect()
    }

    /// Revokes a token; revoking a revoked token keeps its first revocation time.
    pub fn revoke_token(&self, id: i64, at_ms: u64) -> Result<TokenRecord, StoreError> {
        self.token(id)?;
        self.h.execute(
            "UPDATE tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?2) WHERE id = ?1",
            &params![id, to_sql_ms(at_ms)],
        )?;
        self.token(id)
    }

    /// Records the latest use of a token.
    pub fn touch_token(&self, id: i64, at_ms: u64, from: IpAddr) -> Result<(), StoreError> {
        self.h.execute(
            "UPDATE tokens SET last_used_at_ms = ?2, last_used_from = ?3 WHERE id = ?1",
            &params![id, to_sql_ms(at_ms), from.to_canonical().to_string()],
        )?;
        Ok(())
    }

    pub fn insert_report(
        &self,
        token: &TokenRecord,
        at_ms: u64,
        client: IpAddr,
        report: &UsageReport,
    ) -> Result<i64, StoreError> {
        let json = serde_json::to_string(report)
            .map_err(|e| StoreError::Corrupt(format!("report does not serialize: {e}")))?;
        let row = self.h.query_opt(
            "INSERT INTO usage_reports (license_id, token_id, received_at_ms, client_address,
                                        node_id, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            &params![
                token.license_id,
                token.id,
                to_sql_ms(at_ms),
                client.to_canonical().to_string(),
                report.node_id.as_str(),
                json
            ],
        )?;
        returned_id(row)
    }

    /// The latest `limit` reports (of one license, or all), newest first.
    pub fn reports(
        &self,
        license_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReportRecord>, StoreError> {
        self.h
            .query(
                "SELECT r.id, l.license_key, r.token_id, r.received_at_ms, r.client_address,
                        r.report
                 FROM usage_reports r JOIN licenses l ON l.id = r.license_id
                 WHERE CAST(?1 AS TEXT) IS NULL OR l.license_key = ?1
                 ORDER BY r.id DESC LIMIT ?2",
                &params![license_key, limit.min(LIST_LIMIT_MAX)],
            )?
            .iter()
            .map(report_record)
            .collect::<Result<Vec<ReportRecord>, StoreError>>()
            .and_then(|mut reports| {
                let ids: Vec<i64> = reports.iter().map(|r| r.id).collect();
                let mut flags = self.ledger_flags_of_reports(&ids)?;
                for r in &mut reports {
                    r.ledger_flags = flags.remove(&r.id).unwrap_or_default();
                }
                Ok(reports)
            })
    }

    /// Reports received in `from_ms..to_ms` (of one license, or all) with their customer,
    /// by id after `after_id`, at most `limit`: the pages the billing view reads.
    pub fn reports_received_between(
        &self,
        license_key: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<CustomerReport>, StoreError> {
        self.h
            .query(
                "SELECT r.id, l.license_key, r.token_id, r.received_at_ms, r.client_address,
                        r.report, c.name
                 FROM usage_reports r JOIN licenses l ON l.id = r.license_id
                      JOIN customers c ON c.id = l.customer_id
                 WHERE (CAST(?1 AS TEXT) IS NULL OR l.license_key = ?1)
                   AND r.received_at_ms >= ?2 AND r.received_at_ms < ?3 AND r.id > ?4
                 ORDER BY r.id LIMIT ?5",
                &params![
                    license_key,
                    to_sql_ms(from_ms),
                    to_sql_ms(to_ms),
                    after_id,
                    limit.min(LIST_LIMIT_MAX)
                ],
            )?
            .iter()
            .map(|r| {
                Ok(CustomerReport {
                    record: report_record(r)?,
                    customer: r.text(6)?,
                })
            })
            .collect()
    }

    /// The query of [`Db::latest_report_per_node`]: the inner `GROUP BY` reads the
    /// `usage_reports_by_node` index (license, node, id) alone, never the report rows.
    pub const LATEST_REPORT_PER_NODE_SQL: &'static str =
        "SELECT r.id, l.license_key, r.token_id, r.received_at_ms, r.client_address,
                r.report, c.name
         FROM usage_reports r JOIN licenses l ON l.id = r.license_id
              JOIN customers c ON c.id = l.customer_id
         WHERE r.id IN (SELECT MAX(id) FROM usage_reports
                        GROUP BY license_id, node_id)
         ORDER BY c.name, l.license_key, r.node_id LIMIT ?1";

    /// Every node that ever reported, by license: its latest report and customer.
    pub fn latest_report_per_node(&self) -> Result<Vec<CustomerReport>, StoreError> {
        self.h
            .query(Self::LATEST_REPORT_PER_NODE_SQL, &params![LIST_LIMIT_MAX])?
            .iter()
            .map(|r| {
                Ok(CustomerReport {
                    record: report_record(r)?,
                    customer: r.text(6)?,
                })
            })
            .collect()
    }

    pub fn audit(&self, entry: &Audit<'_>) -> Result<(), StoreError> {
        self.h.execute(
            "INSERT INTO audit_log (at_ms, actor, action, license_key, client_address, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            &params![
                to_sql_ms(entry.at_ms),
                entry.actor,
                entry.action,
                entry.license_key,
                entry.client_address,
                entry.detail.to_string()
            ],
        )?;
        Ok(())
    }

    /// The latest `limit` audit entries (of one license, or all), newest first.
    pub fn audit_log(
        &self,
        license_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.h
            .query(
                "SELECT id, at_ms, actor, action, license_key, client_address, detail
                 FROM audit_log WHERE CAST(?1 AS TEXT) IS NULL OR license_key = ?1
                 ORDER BY id DESC LIMIT ?2",
                &params![license_key, limit.min(LIST_LIMIT_MAX)],
            )?
            .iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.int(0)?,
                    at_ms: from_sql_ms(r.int(1)?),
                    actor: r.text(2)?,
                    action: r.text(3)?,
                    license_key: r.opt_text(4)?,
                    client_address: r.opt_text(5)?,
                    detail: r.text(6)?,
                })
            })
            .collect()
    }
}

impl Db<'_> {
    const USER_COLUMNS: &'static str =
        "u.id, u.name, u.role, u.password_hash, u.created_at_ms, u.disabled_at_ms";

    fn user_row(r: &Row) -> Result<VendorUser, StoreError> {
        Ok(VendorUser {
            id: r.int(0)?,
            name: r.text(1)?,
            role: r.text(2)?,
            password_hash: r.text(3)?,
            created_at_ms: from_sql_ms(r.int(4)?),
            disabled_at_ms: r.opt_int(5)?.map(from_sql_ms),
        })
    }

    pub fn add_user(
        &self,
        name: &str,
        role: &str,
        password_hash: &str,
        at_ms: u64,
    ) -> Result<VendorUser, StoreError> {
        if self.user(name)?.is_some() {
            return Err(StoreError::Exists {
                what: "user",
                name: name.into(),
            });
        }
        self.h.execute(
            "INSERT INTO vendor_users (name, role, password_hash, created_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            &params![name, role, password_hash, to_sql_ms(at_ms)],
        )?;
        self.user(name)?
            .ok_or_else(|| StoreError::Corrupt("user vanished after insert".into()))
    }

    pub fn user(&self, name: &str) -> Result<Option<VendorUser>, StoreError> {
        let sql = format!(
            "SELECT {} FROM vendor_users u WHERE u.name = ?1",
            Self::USER_COLUMNS
        );
        self.h
            .query_opt(&sql, &params![name])?
            .map(|r| Self::user_row(&r))
            .transpose()
    }

    pub fn users(&self) -> Result<Vec<VendorUser>, StoreError> {
        let sql = format!(
            "SELECT {} FROM vendor_users u ORDER BY u.name",
            Self::USER_COLUMNS
        );
        self.h
            .query(&sql, &[])?
            .iter()
            .map(Self::user_row)
            .collect()
    }

    /// Sets a user's password (and role); ends every session of the user.
    pub fn update_user(
        &self,
        name: &str,
        role: &str,
        password_hash: &str,
    ) -> Result<VendorUser, StoreError> {
        let user = self.user(name)?.ok_or_else(|| StoreError::NotFound {
            what: "user",
            name: name.into(),
        })?;
        self.h.execute(
            "UPDATE vendor_users SET role = ?2, password_hash = ?3 WHERE id = ?1",
            &params![user.id, role, password_hash],
        )?;
        self.h.execute(
            "DELETE FROM admin_sessions WHERE user_id = ?1",
            &params![user.id],
        )?;
        self.user(name)?
            .ok_or_else(|| StoreError::Corrupt("user vanished after update".into()))
    }

    /// Disables a user (kept for the audit log's sake) and ends its sessions.
    pub fn disable_user(&self, name: &str, at_ms: u64) -> Result<VendorUser, StoreError> {
        let user = self.user(name)?.ok_or_else(|| StoreError::NotFound {
            what: "user",
            name: name.into(),
        })?;
        self.h.execute(
            "UPDATE vendor_users SET disabled_at_ms = coalesce(disabled_at_ms, ?2) WHERE id = ?1",
            &params![user.id, to_sql_ms(at_ms)],
        )?;
        self.h.execute(
            "DELETE FROM admin_sessions WHERE user_id = ?1",
            &params![user.id],
        )?;
        self.user(name)?
            .ok_or_else(|| StoreError::Corrupt("user vanished after update".into()))
    }

    /// Stores a new session (the bearer token's hash) and drops expired ones.
    pub fn insert_session(
        &self,
        token_hash: &[u8; 32],
        user: &VendorUser,
        at_ms: u64,
        expires_at_ms: u64,
        client: IpAddr,
    ) -> Result<(), StoreError> {
        self.h.execute(
            "DELETE FROM admin_sessions WHERE expires_at_ms <= ?1",
            &params![to_sql_ms(at_ms)],
        )?;
        self.h.execute(
            "INSERT INTO admin_sessions (token_hash, user_id, created_at_ms, expires_at_ms,
                                         client_address)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &params![
                &token_hash[..],
                user.id,
                to_sql_ms(at_ms),
                to_sql_ms(expires_at_ms),
                client.to_canonical().to_string()
            ],
        )?;
        Ok(())
    }

    /// The enabled user of an unexpired session.
    pub fn session_user(
        &self,
        token_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<VendorUser>, StoreError> {
        let sql = format!(
            "SELECT {} FROM admin_sessions s JOIN vendor_users u ON u.id = s.user_id
             WHERE s.token_hash = ?1 AND s.expires_at_ms > ?2 AND u.disabled_at_ms IS NULL",
            Self::USER_COLUMNS
        );
        self.h
            .query_opt(&sql, &params![&token_hash[..], to_sql_ms(now_ms)])?
            .map(|r| Self::user_row(&r))
            .transpose()
    }

    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.h.execute(
            "DELETE FROM admin_sessions WHERE token_hash = ?1",
            &params![&token_hash[..]],
        )?;
        Ok(())
    }
}

fn returned_id(row: Option<Row>) -> Result<i64, StoreError> {
    row.ok_or_else(|| StoreError::Corrupt("an insert returned no id".into()))?
        .int(0)
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_events::WallTime;
    use tollgate_license::{LicenseSpec, SigningKey};
    use tollgate_license_client::UsageFigures;

    const T: u64 = 1_900_000_000_000;

    fn signed(serial: u64) -> (String, Document) {
        let key = SigningKey::from_seed(&[4; 32]);
        let spec = LicenseSpec::parse(&format!(
            "license_key = \"K-1\"\ncustomer = \"Acme\"\nkind = \"perpetual\"\nserial = {serial}\n\
             lease_days = 14\n"
        ))
        .unwrap();
        let document = spec
            .to_document(key.key_id(), WallTime::from_unix_ms(T + serial))
            .unwrap();
        (tollgate_license::sign(&document, &key).unwrap(), document)
    }

    fn with_license() -> (Store, LicenseRecord) {
        let mut store = Store::open_in_memory().unwrap();
        let license = store
            .write(|db| {
                let customer = db.add_customer("Acme", T)?;
                let (text, document) = signed(1);
                db.create_license(&customer, Contract::Active, "spec", &text, &document, T)
            })
            .unwrap();
        (store, license)
    }

    #[test]
    fn migrates_an_empty_file_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ls.db");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
            store.read().add_customer("Acme", T).unwrap();
        }
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(store.read().customers().unwrap().len(), 1, "data kept");
    }

    #[test]
    fn applies_only_missing_migrations_in_order() {
        const STEPS: &[Migration] = &[
            Migration {
                version: 1,
                description: "one",
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                version: 2,
                description: "two",
                sql: "ALTER TABLE a ADD COLUMN y INTEGER;",
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let open = |steps: &[Migration]| Store::setup(Connection::open(&path).unwrap(), steps);
        let store = open(&STEPS[..1]).unwrap();
        assert_eq!(store.schema_version().unwrap(), 1);
        drop(store);
        // Version 2 runs on top of 1 (and would fail if 1 ran again: the table exists).
        let store = open(STEPS).unwrap();
        assert_eq!(store.schema_version().unwrap(), 2);
        store
            .read()
            .h
            .execute("INSERT INTO a (x, y) VALUES (1, 2)", &[])
            .unwrap();
        drop(store);
        // An older build refuses the newer database.
        let error = open(&STEPS[..1]).unwrap_err();
        assert!(
            matches!(error, StoreError::SchemaTooNew { found: 2, known: 1 }),
            "{error}"
        );
    }

    #[test]
    fn licenses_keep_every_document_and_serials_only_grow() {
        let (mut store, license) = with_license();
        let (text2, doc2) = signed(2);
        store
            .write(|db| db.record_document(&license, &text2, &doc2, "lease", None, T + 1))
            .unwrap();
        let (text1, doc1) = signed(1);
        let error = store
            .write(|db| db.record_document(&license, &text1, &doc1, "lease", None, T + 2))
            .unwrap_err();
        assert!(matches!(
            error,
            StoreError::SerialNotGrowing { new: 1, current: 2 }
        ));
        let current = store.read().license_required("K-1").unwrap();
        assert_eq!(
            (current.serial, current.document.as_str()),
            (2, text2.as_str())
        );
        let history = store.read().documents("K-1").unwrap();
        let causes: Vec<_> = history
            .iter()
            .map(|d| (d.serial, d.cause.as_str()))
            .collect();
        assert_eq!(causes, [(1, "created"), (2, "lease")]);
    }

    #[test]
    fn a_failed_write_rolls_back() {
        let (mut store, _) = with_license();
        let result: Result<(), StoreError> = store.write(|db| {
            db.add_customer("Other", T)?;
            db.add_customer("Acme", T)?; // exists: the whole write fails
            Ok(())
        });
        assert!(matches!(result, Err(StoreError::Exists { .. })));
        assert!(store.read().customer("Other").unwrap().is_none());
    }

    #[test]
    fn tokens_are_found_by_hash_revoked_and_touched() {
        let (store, license) = with_license();
        let db = store.read();
        let allowed = Allowed(vec![
            Allowed::parse_one("10.0.0.0/8").unwrap(),
            Allowed::parse_one("127.0.0.1").unwrap(),
        ]);
        let id = db
            .insert_token(&license, &[7; 32], &allowed, Some("sp1"), T, None)
            .unwrap();
        let token = db.token_by_hash(&[7; 32]).unwrap().unwrap();
        assert_eq!((token.id, token.license_key.as_str()), (id, "K-1"));
        assert_eq!(token.allowed.to_string(), "10.0.0.0/8 127.0.0.1/32");
        assert!(db.token_by_hash(&[8; 32]).unwrap().is_none());
        db.touch_token(id, T + 5, "::ffff:10.1.2.3".parse().unwrap())
            .unwrap();
        let revoked = db.revoke_token(id, T + 10).unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(T + 10));
        assert_eq!(revoked.last_used_from.as_deref(), Some("10.1.2.3"));
        assert_eq!(
            db.revoke_token(id, T + 20).unwrap().revoked_at_ms,
            Some(T + 10)
        );
        assert!(db.revoke_token(99, T).unwrap_err().is_user_error());
        assert_eq!(db.tokens(Some("K-1")).unwrap().len(), 1);
        assert_eq!(db.tokens(Some("K-2")).unwrap().len(), 0);
    }

    #[test]
    fn the_latest_report_per_node_reads_the_node_index_not_the_table() {
        let (store, _) = with_license();
        let plan = store
            .read()
            .h
            .query(
                &format!("EXPLAIN QUERY PLAN {}", Db::LATEST_REPORT_PER_NODE_SQL),
                &params![LIST_LIMIT_MAX],
            )
            .unwrap();
        let details: Vec<String> = plan.iter().map(|r| r.text(3).unwrap()).collect();
        assert!(
            details.iter().any(
                |d| d.contains("SCAN usage_reports USING COVERING INDEX usage_reports_by_node")
            ),
            "{details:#?}"
        );
        assert!(
            !details.iter().any(|d| d == "SCAN usage_reports"),
            "no full scan of the reports: {details:#?}"
        );
    }

    #[test]
    fn addresses_match_networks_and_mapped_ipv4() {
        let allowed = Allowed(vec![
            Allowed::parse_one("10.0.0.0/8").unwrap(),
            Allowed::parse_one("2001:db8::/32").unwrap(),
            Allowed::parse_one("::ffff:192.0.2.7").unwrap(),
        ]);
        for (address, expected) in [
            ("10.200.0.1", true),
            ("11.0.0.1", false),
            ("::ffff:10.0.0.1", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
        ] {
            assert_eq!(
                allowed.contains(address.parse().unwrap()),
                expected,
                "{address}"
            );
        }
        assert!(
            Allowed::parse_one("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(Allowed::parse_one("example.com").is_err());
    }

    #[test]
    fn reports_and_audit_are_listed_newest_first() {
        let (store, license) = with_license();
        let db = store.read();
        let id = db
            .insert_token(&license, &[1; 32], &Allowed(vec![]), None, T, None)
            .unwrap();
        let token = db.token(id).unwrap();
        for calls in [1, 2, 3] {
            let report = UsageReport {
                node_id: format!("n{calls}"),
                agent_version: "0.1.0".into(),
                timestamp: WallTime::from_unix_ms(T + calls),
                since: None,
                license_serial: Some(1),
                node: UsageFigures {
                    calls,
                    ..UsageFigures::default()
                },
                cluster: None,
                admissions_denied: Default::default(),
                ledger: Vec::new(),
            };
            db.insert_report(&token, T + calls, "127.0.0.1".parse().unwrap(), &report)
                .unwrap();
            db.audit(&Audit {
                at_ms: T + calls,
                actor: "token:1",
                action: "lease.signed",
                license_key: Some("K-1"),
                client_address: Some("127.0.0.1"),
                detail: serde_json::json!({ "serial": calls }),
            })
            .unwrap();
        }
        let reports = db.reports(Some("K-1"), 2).unwrap();
        let calls: Vec<u64> = reports.iter().map(|r| r.report.node.calls).collect();
        assert_eq!(calls, [3, 2]);
        assert!(db.reports(Some("nope"), 10).unwrap().is_empty());
        let audit = db.audit_log(None, 10).unwrap();
        assert_eq!(audit.len(), 3);
        assert_eq!(audit[0].detail, r#"{"serial":3}"#);
    }
}
