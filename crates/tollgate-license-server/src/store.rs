//! The embedded SQLite store: customers, licenses (spec, current document, every document
//! ever signed), API tokens (hashed, bound to addresses, revocable), usage reports and the
//! audit log.
//!
//! - **Migrations**: [`MIGRATIONS`] are applied in order at open, each in its own
//!   transaction together with the new `schema_version`; a database newer than this build
//!   is refused rather than misread.
//! - **Concurrency**: WAL journal and a busy timeout, so the admin CLI can write while the
//!   server runs. Every lease runs in one `BEGIN IMMEDIATE` transaction (read the current
//!   document, sign, store, audit), so two processes can never sign the same serial.
//! - **Durability**: `synchronous = FULL`: a document is on disk before any client sees
//!   it, so a crash can never make the server sign a serial twice.
//! - The database file is created mode 0600 (it holds token hashes and licenses).
//!
//! Times are Unix milliseconds in `INTEGER` columns.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use tollgate_license::Document;
use tollgate_license_client::{Contract, UsageReport};

/// Longest a writer waits for another process's transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most addresses or networks one token can be bound to.
pub const TOKEN_ADDRESS_COUNT_MAX: usize = 64;
/// Most rows one listing returns.
pub const LIST_LIMIT_MAX: u32 = 10_000;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// The schema, in order. Never edit a released step: add one.
pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the database file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: i64,
    pub name: String,
    pub created_at_ms: u64,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecord {
    pub id: i64,
    pub license_key: String,
    pub token_id: i64,
    pub received_at_ms: u64,
    pub client_address: String,
    pub report: UsageReport,
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

/// The database connection.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating it mode 0600 if missing) and migrates the database at `path`.
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

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::setup(Connection::open_in_memory()?, MIGRATIONS)
    }

    fn setup(conn: Connection, migrations: &[Migration]) -> Result<Store, StoreError> {
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mut store = Store { conn };
        store.migrate(migrations)?;
        Ok(store)
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
        let found: Option<u32> = tx
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .optional()?
            .flatten();
        let found = found.unwrap_or(0);
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        tx.commit()?;
        for migration in migrations.iter().filter(|m| m.version > found) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have migrated meanwhile.
            let now: u32 = tx.query_row(
                "SELECT coalesce(max(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )?;
            if now >= migration.version {
                continue;
            }
            tx.execute_batch(migration.sql)?;
            tx.execute("DELETE FROM schema_version", [])?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [migration.version],
            )?;
            tx.commit()?;
            tracing::info!(
                version = migration.version,
                description = migration.description,
                "database migrated"
            );
        }
        Ok(())
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.conn.query_row(
            "SELECT coalesce(max(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )?)
    }

    /// Reads (each statement in its own implicit transaction).
    pub fn read(&self) -> Db<'_> {
        Db { conn: &self.conn }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed if `f` returns `Ok`,
    /// rolled back otherwise.
    pub fn write<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&Db<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = f(&Db { conn: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }
}

/// Queries, on a connection or inside a transaction.
pub struct Db<'a> {
    conn: &'a Connection,
}

impl Db<'_> {
    pub fn add_customer(&self, name: &str, at_ms: u64) -> Result<Customer, StoreError> {
        if self.customer(name)?.is_some() {
            return Err(StoreError::Exists {
                what: "customer",
                name: name.into(),
            });
        }
        self.conn.execute(
            "INSERT INTO customers (name, created_at_ms) VALUES (?1, ?2)",
            params![name, to_sql_ms(at_ms)],
        )?;
        Ok(Customer {
            id: self.conn.last_insert_rowid(),
            name: name.into(),
            created_at_ms: at_ms,
        })
    }

    pub fn customer(&self, name: &str) -> Result<Option<Customer>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, created_at_ms FROM customers WHERE name = ?1",
                [name],
                |r| {
                    Ok(Customer {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at_ms: from_sql_ms(r.get(2)?),
                    })
                },
            )
            .optional()?)
    }

    pub fn customers(&self) -> Result<Vec<Customer>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, name, created_at_ms FROM customers ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            Ok(Customer {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at_ms: from_sql_ms(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        self.conn.execute(
            "INSERT INTO licenses (license_key, customer_id, contract, spec, document, serial,
                                   created_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                document.license_key,
                customer.id,
                contract.as_str(),
                spec,
                text,
                to_sql_ms(document.serial),
                to_sql_ms(at_ms),
            ],
        )?;
        let id = self.conn.last_insert_rowid();
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
        self.conn.execute(
            "INSERT INTO documents (license_id, serial, key_id, issued_at_ms,
                                    signature_valid_until_ms, valid_until_ms, cause, document)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                license_id,
                to_sql_ms(document.serial),
                document.key_id.to_string(),
                to_sql_ms(document.issued_at_ms),
                document.signature_valid_until_ms.map(to_sql_ms),
                document.valid_until_ms.map(to_sql_ms),
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
        let current: i64 = self.conn.query_row(
            "SELECT serial FROM licenses WHERE id = ?1",
            [license.id],
            |r| r.get(0),
        )?;
        let current = from_sql_ms(current);
        if document.serial <= current {
            return Err(StoreError::SerialNotGrowing {
                new: document.serial,
                current,
            });
        }
        self.conn.execute(
            "UPDATE licenses SET document = ?2, serial = ?3, updated_at_ms = ?4,
                                 spec = coalesce(?5, spec)
             WHERE id = ?1",
            params![
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
         l.document, l.serial, l.created_at_ms, l.updated_at_ms";

    fn license_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LicenseRecord> {
        let contract: String = r.get(3)?;
        Ok(LicenseRecord {
            id: r.get(0)?,
            license_key: r.get(1)?,
            customer: r.get(2)?,
            contract: if contract == "lapsed" {
                Contract::Lapsed
            } else {
                Contract::Active
            },
            spec: r.get(4)?,
            document: r.get(5)?,
            serial: from_sql_ms(r.get(6)?),
            created_at_ms: from_sql_ms(r.get(7)?),
            updated_at_ms: from_sql_ms(r.get(8)?),
        })
    }

    pub fn license(&self, license_key: &str) -> Result<Option<LicenseRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM licenses l JOIN customers c ON c.id = l.customer_id
             WHERE l.license_key = ?1",
            Self::LICENSE_COLUMNS
        );
        Ok(self
            .conn
            .query_row(&sql, [license_key], Self::license_row)
            .optional()?)
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
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], Self::license_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets the contract; returns the previous one.
    pub fn set_contract(
        &self,
        license_key: &str,
        contract: Contract,
        at_ms: u64,
    ) -> Result<Contract, StoreError> {
        let license = self.license_required(license_key)?;
        self.conn.execute(
            "UPDATE licenses SET contract = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![license.id, contract.as_str(), to_sql_ms(at_ms)],
        )?;
        Ok(license.contract)
    }

    /// Every document signed for the license, oldest first.
    pub fn documents(&self, license_key: &str) -> Result<Vec<DocumentRecord>, StoreError> {
        let license = self.license_required(license_key)?;
        let mut stmt = self.conn.prepare(
            "SELECT serial, key_id, issued_at_ms, signature_valid_until_ms, valid_until_ms,
                    cause, document
             FROM documents WHERE license_id = ?1 ORDER BY serial",
        )?;
        let rows = stmt.query_map([license.id], |r| {
            Ok(DocumentRecord {
                serial: from_sql_ms(r.get(0)?),
                key_id: r.get(1)?,
                issued_at_ms: from_sql_ms(r.get(2)?),
                signature_valid_until_ms: r.get::<_, Option<i64>>(3)?.map(from_sql_ms),
                valid_until_ms: r.get::<_, Option<i64>>(4)?.map(from_sql_ms),
                cause: r.get(5)?,
                document: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_token(
        &self,
        license: &LicenseRecord,
        token_hash: &[u8; 32],
        allowed: &Allowed,
        note: Option<&str>,
        at_ms: u64,
    ) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (license_id, token_hash, allowed, note, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                license.id,
                &token_hash[..],
                allowed.to_column(),
                note,
                to_sql_ms(at_ms)
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    const TOKEN_COLUMNS: &'static str = "t.id, t.license_id, l.license_key, t.allowed, t.note, \
         t.created_at_ms, t.revoked_at_ms, t.last_used_at_ms, t.last_used_from";

    fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, String)> {
        Ok((
            TokenRecord {
                id: r.get(0)?,
                license_id: r.get(1)?,
                license_key: r.get(2)?,
                allowed: Allowed(Vec::new()),
                note: r.get(4)?,
                created_at_ms: from_sql_ms(r.get(5)?),
                revoked_at_ms: r.get::<_, Option<i64>>(6)?.map(from_sql_ms),
                last_used_at_ms: r.get::<_, Option<i64>>(7)?.map(from_sql_ms),
                last_used_from: r.get(8)?,
            },
            r.get(3)?,
        ))
    }

    fn finish_token(
        (mut token, allowed): (TokenRecord, String),
    ) -> Result<TokenRecord, StoreError> {
        token.allowed = Allowed::from_column(&allowed)?;
        Ok(token)
    }

    pub fn token_by_hash(&self, token_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM tokens t JOIN licenses l ON l.id = t.license_id
             WHERE t.token_hash = ?1",
            Self::TOKEN_COLUMNS
        );
        self.conn
            .query_row(&sql, [&token_hash[..]], Self::token_row)
            .optional()?
            .map(Self::finish_token)
            .transpose()
    }

    pub fn token(&self, id: i64) -> Result<TokenRecord, StoreError> {
        let sql = format!(
            "SELECT {} FROM tokens t JOIN licenses l ON l.id = t.license_id WHERE t.id = ?1",
            Self::TOKEN_COLUMNS
        );
        let row = self
            .conn
            .query_row(&sql, [id], Self::token_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                name: id.to_string(),
            })?;
        Self::finish_token(row)
    }

    pub fn tokens(&self, license_key: Option<&str>) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM tokens t JOIN licenses l ON l.id = t.license_id
             WHERE ?1 IS NULL OR l.license_key = ?1 ORDER BY t.id",
            Self::TOKEN_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([license_key], Self::token_row)?;
        rows.map(|r| Self::finish_token(r?)).collect()
    }

    /// Revokes a token; revoking a revoked token keeps its first revocation time.
    pub fn revoke_token(&self, id: i64, at_ms: u64) -> Result<TokenRecord, StoreError> {
        self.token(id)?;
        self.conn.execute(
            "UPDATE tokens SET revoked_at_ms = coalesce(revoked_at_ms, ?2) WHERE id = ?1",
            params![id, to_sql_ms(at_ms)],
        )?;
        self.token(id)
    }

    /// Records the latest use of a token.
    pub fn touch_token(&self, id: i64, at_ms: u64, from: IpAddr) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE tokens SET last_used_at_ms = ?2, last_used_from = ?3 WHERE id = ?1",
            params![id, to_sql_ms(at_ms), from.to_canonical().to_string()],
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
        self.conn.execute(
            "INSERT INTO usage_reports (license_id, token_id, received_at_ms, client_address,
                                        node_id, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                token.license_id,
                token.id,
                to_sql_ms(at_ms),
                client.to_canonical().to_string(),
                report.node_id,
                json
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The latest `limit` reports (of one license, or all), newest first.
    pub fn reports(
        &self,
        license_key: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ReportRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, l.license_key, r.token_id, r.received_at_ms, r.client_address, r.report
             FROM usage_reports r JOIN licenses l ON l.id = r.license_id
             WHERE ?1 IS NULL OR l.license_key = ?1
             ORDER BY r.id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![license_key, limit.min(LIST_LIMIT_MAX)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (id, license_key, token_id, received, client_address, json) = row?;
            let report = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("usage report {id}: {e}")))?;
            Ok(ReportRecord {
                id,
                license_key,
                token_id,
                received_at_ms: from_sql_ms(received),
                client_address,
                report,
            })
        })
        .collect()
    }

    pub fn audit(&self, entry: &Audit<'_>) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO audit_log (at_ms, actor, action, license_key, client_address, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
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
        let mut stmt = self.conn.prepare(
            "SELECT id, at_ms, actor, action, license_key, client_address, detail
             FROM audit_log WHERE ?1 IS NULL OR license_key = ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![license_key, limit.min(LIST_LIMIT_MAX)], |r| {
            Ok(AuditRecord {
                id: r.get(0)?,
                at_ms: from_sql_ms(r.get(1)?),
                actor: r.get(2)?,
                action: r.get(3)?,
                license_key: r.get(4)?,
                client_address: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let document = spec.to_document(key.key_id(), T + serial).unwrap();
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
            assert_eq!(store.schema_version().unwrap(), 1);
            store.read().add_customer("Acme", T).unwrap();
        }
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 1);
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
            .conn
            .execute("INSERT INTO a (x, y) VALUES (1, 2)", [])
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
            .insert_token(&license, &[7; 32], &allowed, Some("sp1"), T)
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
            .insert_token(&license, &[1; 32], &Allowed(vec![]), None, T)
            .unwrap();
        let token = db.token(id).unwrap();
        for calls in [1, 2, 3] {
            let report = UsageReport {
                node_id: format!("n{calls}"),
                agent_version: "0.1.0".into(),
                timestamp_ms: T + calls,
                since_ms: None,
                license_serial: Some(1),
                node: UsageFigures {
                    calls,
                    ..UsageFigures::default()
                },
                cluster: None,
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
