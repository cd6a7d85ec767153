//! `tollgate license-server backup --out FILE` and `restore --from FILE`: one file holding a
//! consistent copy of every table and the signing key directory, taken while servers run,
//! restorable into either store (a backup of PostgreSQL restores into SQLite and back).
//!
//! - **Consistent**: every table is read inside one read transaction (SQLite: a deferred
//!   transaction, a WAL snapshot that writers do not block; PostgreSQL: `REPEATABLE READ
//!   READ ONLY`), so a lease signed during the backup is in it whole or not at all.
//! - **Portable**: rows are written by column name as JSON (integers, text, bytes as hex),
//!   in [`BACKUP_TABLES`] order (parents first), with the schema version they came from.
//!   A restore opens (and migrates) the configured store, refuses one that holds any data,
//!   inserts every row with its id, and moves PostgreSQL's id sequences past them.
//! - **Keys**: every `*.key` (mode 0600) and `*.pub` file of the key directory is in the
//!   file, so the file itself is written mode 0600 and must be kept like the keys. A restore
//!   writes them into the configured key directory, refusing to replace a different file of
//!   the same name.
//! - Login sessions are not backed up (users log in again after a restore).
//!
//! A table added by a later migration is one more entry in [`BACKUP_TABLES`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_events::WallTime;
use tollgate_license::timestamp::format_rfc3339;

use crate::keyring::KEY_COUNT_MAX;
use crate::sql::{Dialect, Value};
use crate::store::{Database, MIGRATIONS, Store, StoreError};

/// The file's `format` field.
pub const BACKUP_FORMAT: &str = "tollgate-license-server-backup";
/// The file's `version` field (of this layout, not of the schema).
pub const BACKUP_VERSION: u32 = 1;
/// The tables copied, parents before children.
pub const BACKUP_TABLES: &[&str] = &[
    "customers",
    "licenses",
    "documents",
    "tokens",
    "usage_reports",
    "audit_log",
    "vendor_users",
    "ledger_nodes",
    "ledger_entries",
    "ledger_flags",
];
/// Largest backup file `restore` reads.
pub const BACKUP_LEN_MAX: u64 = 4 << 30;
/// Largest key directory file copied.
pub const KEY_FILE_LEN_MAX: u64 = 64 * 1024;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a license server backup: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    #[error(
        "the backup has schema version {found}, newer than this build understands ({known}): \
         upgrade tollgate"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("the target database already holds data ({table} has rows): restore into an empty one")]
    NotEmpty { table: String },
    #[error("{}: a different file of that name exists; move it away first", path.display())]
    KeyConflict { path: PathBuf },
}

impl BackupError {
    /// Bad input (exit code 2) rather than a failure.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            BackupError::Format { .. }
                | BackupError::SchemaTooNew { .. }
                | BackupError::NotEmpty { .. }
                | BackupError::KeyConflict { .. }
        )
    }
}

/// One table: its column names and rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDump {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// A value as stored in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes { hex: String },
}

impl From<Value> for Cell {
    fn from(v: Value) -> Cell {
        match v {
            Value::Null => Cell::Null,
            Value::Int(i) => Cell::Int(i),
            Value::Text(t) => Cell::Text(t),
            Value::Blob(b) => Cell::Bytes {
                hex: b.iter().map(|x| format!("{x:02x}")).collect(),
            },
        }
    }
}

impl Cell {
    fn into_value(self) -> Result<Value, String> {
        Ok(match self {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::Int(i),
            Cell::Text(t) => Value::Text(t),
            Cell::Bytes { hex } => {
                if hex.len() % 2 != 0 {
                    return Err(format!("odd hex length {}", hex.len()));
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|e| format!("bad hex: {e}"))?;
                Value::Blob(bytes)
            }
        })
    }
}

/// One file of the key directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFile {
    pub name: String,
    pub content: String,
}

/// The backup file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupFile {
    pub format: String,
    pub version: u32,
    pub created_at: String,
    /// `sqlite` or `postgres`.
    pub source: String,
    pub schema_version: u32,
    pub tables: BTreeMap<String, TableDump>,
    pub keys: Vec<KeyFile>,
}

/// What a backup or restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rows: BTreeMap<String, usize>,
    pub key_files: usize,
    pub schema_version: u32,
}

/// Takes a backup of `database` and `key_dir` into `out` (written mode 0600, atomically).
/// Call it outside async code (PostgreSQL's client runs its own runtime).
pub fn backup(
    database: &Database,
    key_dir: &Path,
    out: &Path,
    now_ms: u64,
) -> Result<Summary, BackupError> {
    let mut store = Store::open_database(database)?;
    let (schema_version, tables) = store.snapshot(|db| {
        let version = db.schema_version()?;
        let mut tables = BTreeMap::new();
        for &table in BACKUP_TABLES {
            let (columns, rows) = db
                .raw()
                .query_named(&format!("SELECT * FROM {table} ORDER BY id"), &[])
                .map_err(StoreError::from)?;
            let rows = rows
                .into_iter()
                .map(|r| r.0.into_iter().map(Cell::from).collect())
                .collect();
            tables.insert(table.to_owned(), TableDump { columns, rows });
        }
        Ok::<_, StoreError>((version, tables))
    })?;
    let keys = read_keys(key_dir)?;
    let file = BackupFile {
        format: BACKUP_FORMAT.into(),
        version: BACKUP_VERSION,
        created_at: format_rfc3339(WallTime::from_unix_ms(now_ms)),
        source: match store.dialect() {
            Dialect::Sqlite => "sqlite".into(),
            Dialect::Postgres => "postgres".into(),
        },
        schema_version,
        tables,
        keys,
    };
    let json = serde_json::to_vec(&file).map_err(|e| BackupError::Io {
        path: out.to_owned(),
        source: std::io::Error::other(e),
    })?;
    tollgate_durable::write(out, &json, 0o600).map_err(|e| BackupError::Io {
        path: out.to_owned(),
        source: std::io::Error::other(e),
    })?;
    Ok(summary(&file))
}

fn summary(file: &BackupFile) -> Summary {
    Summary {
        rows: file
            .tables
            .iter()
            .map(|(name, t)| (name.clone(), t.rows.len()))
            .collect(),
        key_files: file.keys.len(),
        schema_version: file.schema_version,
    }
}

fn read_keys(dir: &Path) -> Result<Vec<KeyFile>, BackupError> {
    use std::io::Read as _;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    let mut keys = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".key") || name.ends_with(".pub")) {
            continue;
        }
        if keys.len() >= 2 * KEY_COUNT_MAX {
            break;
        }
        let path = entry.path();
        let mut content = String::new();
        std::fs::File::open(&path)
            .map_err(io(&path))?
            .take(KEY_FILE_LEN_MAX)
            .read_to_string(&mut content)
            .map_err(io(&path))?;
        keys.push(KeyFile { name, content });
    }
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(keys)
}

/// Restores `from` into `database` (opened and migrated; it must hold no data) and its key
/// files into `key_dir`. Call it outside async code.
pub fn restore(database: &Database, key_dir: &Path, from: &Path) -> Result<Summary, BackupError> {
    let format_error = |problem: String| BackupError::Format {
        path: from.to_owned(),
        problem,
    };
    let meta = std::fs::metadata(from).map_err(|source| BackupError::Io {
        path: from.to_owned(),
        source,
    })?;
    if meta.len() > BACKUP_LEN_MAX {
        return Err(format_error(format!("larger than {BACKUP_LEN_MAX} bytes")));
    }
    let bytes = std::fs::read(from).map_err(|source| BackupError::Io {
        path: from.to_owned(),
        source,
    })?;
    let file: BackupFile =
        serde_json::from_slice(&bytes).map_err(|e| format_error(e.to_string()))?;
    if file.format != BACKUP_FORMAT || file.version != BACKUP_VERSION {
        return Err(format_error(format!(
            "format {:?} version {}",
            file.format, file.version
        )));
    }
    let known = MIGRATIONS.len() as u32;
    if file.schema_version > known {
        return Err(BackupError::SchemaTooNew {
            found: file.schema_version,
            known,
        });
    }
    for key in &file.keys {
        let ok = !key.name.contains('/')
            && !key.name.starts_with('.')
            && (key.name.ends_with(".key") || key.name.ends_with(".pub"));
        if !ok {
            return Err(format_error(format!("key file name {:?}", key.name)));
        }
    }
    let mut store = Store::open_database(database)?;
    let dialect = store.dialect();
    store.write(|db| {
        for &table in BACKUP_TABLES {
            let any = db
                .raw()
                .query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
                .map_err(StoreError::from)?;
            if any.is_some() {
                return Err(BackupError::NotEmpty {
                    table: table.to_owned(),
                });
            }
        }
        for &table in BACKUP_TABLES {
            let Some(dump) = file.tables.get(table) else {
                continue; // from an older schema without this table
            };
            if dump.columns.iter().any(|c| {
                c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            }) {
                return Err(format_error(format!("{table}: bad column names")));
            }
            let placeholders: Vec<String> =
                (1..=dump.columns.len()).map(|i| format!("?{i}")).collect();
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                dump.columns.join(", "),
                placeholders.join(", ")
            );
            for row in &dump.rows {
                if row.len() != dump.columns.len() {
                    return Err(format_error(format!(
                        "{table}: a row of {} values",
                        row.len()
                    )));
                }
                let values = row
                    .iter()
                    .cloned()
                    .map(Cell::into_value)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format_error(format!("{table}: {e}")))?;
                db.raw().execute(&sql, &values).map_err(StoreError::from)?;
            }
            if dialect == Dialect::Postgres {
                db.raw()
                    .query(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                             coalesce(max(id), 0) + 1, false) FROM {table}"
                        ),
                        &[],
                    )
                    .map_err(StoreError::from)?;
            }
        }
        Ok(())
    })?;
    write_keys(key_dir, &file.keys)?;
    Ok(summary(&file))
}

fn write_keys(dir: &Path, keys: &[KeyFile]) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if keys.is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BackupError::Io {
            path: dir.to_owned(),
            source,
        })?;
    for key in keys {
        let path = dir.join(&key.name);
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == key.content => continue,
            Ok(_) => return Err(BackupError::KeyConflict { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BackupError::Io { path, source }),
        }
        let mode = if key.name.ends_with(".key") {
            0o600
        } else {
            0o644
        };
        tollgate_durable::write_new(&path, key.content.as_bytes(), mode).map_err(|e| {
            BackupError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip_through_json() {
        let values = vec![
            Value::Null,
            Value::Int(-7),
            Value::Text("a \"b\"".into()),
            Value::Blob(vec![0, 1, 254, 255]),
        ];
        let cells: Vec<Cell> = values.iter().cloned().map(Cell::from).collect();
        let json = serde_json::to_string(&cells).unwrap();
        assert_eq!(json, r#"[null,-7,"a \"b\"",{"hex":"0001feff"}]"#);
        let back: Vec<Cell> = serde_json::from_str(&json).unwrap();
        let back: Vec<Value> = back.into_iter().map(|c| c.into_value().unwrap()).collect();
        assert_eq!(back, values);
        assert!(Cell::Bytes { hex: "abc".into() }.into_value().is_err());
        assert!(Cell::Bytes { hex: "zz".into() }.into_value().is_err());
    }
}
