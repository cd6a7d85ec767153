//! One small query layer over the two stores, so every migration and every query of
//! [`crate::store`] is written once:
//!
//! - **SQLite** (the embedded default, `rusqlite`) and **PostgreSQL** (`[database] url`,
//!   the synchronous `postgres` client).
//! - Statements are written in SQLite's dialect with numbered parameters (`?1`, `?2`);
//!   [`postgres_query`] rewrites them to `$1`, `$2`. Migration DDL is rewritten by
//!   [`postgres_ddl`]: 64-bit `BIGINT` columns, identity keys, `BYTEA`.
//! - Values are [`Value`]s (integer, text, bytes, null) in both directions; rows are read
//!   whole (every listing is bounded by `LIST_LIMIT_MAX`).
//!
//! - Statements are prepared once per connection: SQLite's through `rusqlite`'s statement
//!   cache (`prepare_cached`), PostgreSQL's in a [`StatementCache`] keyed by the statement's
//!   text (a lease is a dozen statements; preparing each costs a round trip of its own).
//!
//! **Boundary.** Only this module names `rusqlite` or `postgres` types; the store's queries
//! see [`Db`](crate::store::Db) and [`Value`].

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(i64::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters: `params![a, b]` → `[Value; 2]`.
macro_rules! params {
    ($($value:expr),* $(,)?) => { [$($crate::sql::Value::from($value)),*] };
}
pub(crate) use params;

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgresql: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("column {index}: expected {expected}, found {found}")]
    Type {
        index: usize,
        expected: &'static str,
        found: String,
    },
    #[error("postgresql column type {0} is not one the store uses")]
    UnknownType(String),
}

impl SqlError {
    /// A unique or primary key constraint refused the row.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            }
            SqlError::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, index: usize) -> &Value {
        self.0.get(index).unwrap_or(&Value::Null)
    }

    fn mismatch(&self, index: usize, expected: &'static str) -> SqlError {
        SqlError::Type {
            index,
            expected,
            found: format!("{:?}", self.at(index)),
        }
    }

    pub fn int(&self, index: usize) -> Result<i64, SqlError> {
        self.opt_int(index)?
            .ok_or_else(|| self.mismatch(index, "an integer"))
    }

    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, SqlError> {
        match self.at(index) {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            _ => Err(self.mismatch(index, "an integer")),
        }
    }

    pub fn text(&self, index: usize) -> Result<String, SqlError> {
        self.opt_text(index)?
            .ok_or_else(|| self.mismatch(index, "text"))
    }

    pub fn opt_text(&self, index: usize) -> Result<Option<String>, SqlError> {
        match self.at(index) {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            _ => Err(self.mismatch(index, "text")),
        }
    }
}

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// `?N` → `$N` (the store's statements hold no `?` inside string literals).
pub fn postgres_query(sql: &str) -> String {
    sql.replace('?', "$")
}

/// SQLite DDL → PostgreSQL DDL: `INTEGER PRIMARY KEY` (SQLite's rowid alias) becomes a
/// 64-bit identity key, every other `INTEGER` a `BIGINT` (SQLite integers are 64-bit),
/// `BLOB` a `BYTEA`.
pub fn postgres_ddl(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql_checked(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql_checked(ty, out),
            Value::Int(v) => v.to_sql_checked(ty, out),
            Value::Text(v) => v.to_sql_checked(ty, out),
            Value::Blob(v) => v.to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
        })
    }
}

fn sqlite_row(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            // The store writes no REAL; read one as its integer part rather than fail.
            ValueRef::Real(v) => Value::Int(v as i64),
            ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
            ValueRef::Blob(v) => Value::Blob(v.to_vec()),
        });
    }
    Ok(Row(values))
}

fn postgres_row(row: &postgres::Row) -> Result<Row, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(i64::from(v)))
        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(i64::from(v)))
        } else {
            return Err(SqlError::UnknownType(ty.to_string()));
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

/// Most statements a connection keeps prepared (the store has fewer than a hundred distinct
/// ones; backup and restore add one per table). Past it the cache starts over.
pub const STATEMENT_CACHE_MAX: usize = 256;

/// The statements prepared on one PostgreSQL connection, by their SQLite-dialect text.
/// Emptied after any batch (DDL may change what a statement returns); an entry whose use
/// failed is dropped, so a statement the server invalidated is prepared again next time.
#[derive(Default)]
pub(crate) struct StatementCache(RefCell<HashMap<String, postgres::Statement>>);

impl StatementCache {
    /// The prepared statement for `sql`, preparing it with `prepare` when new.
    fn get(
        &self,
        sql: &str,
        prepare: impl FnOnce(&str) -> Result<postgres::Statement, postgres::Error>,
    ) -> Result<postgres::Statement, SqlError> {
        if let Some(statement) = self.0.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = prepare(&postgres_query(sql))?;
        let mut map = self.0.borrow_mut();
        if map.len() >= STATEMENT_CACHE_MAX {
            map.clear();
        }
        map.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn forget(&self, sql: &str) {
        self.0.borrow_mut().remove(sql);
    }

    pub(crate) fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// A connection, or a transaction on one: what the store's queries run on.
pub(crate) enum Handle<'a> {
    Sqlite(&'a rusqlite::Connection),
    PostgresClient(&'a RefCell<postgres::Client>, &'a StatementCache),
    PostgresTransaction(RefCell<postgres::Transaction<'a>>, &'a StatementCache),
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Handle<'_> {
    pub fn dialect(&self) -> Dialect {
        match self {
            Handle::Sqlite(_) => Dialect::Sqlite,
            _ => Dialect::Postgres,
        }
    }

    /// Runs a statement; the number of rows changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, SqlError> {
        match self {
            Handle::Sqlite(conn) => Ok(conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?
                as u64),
            Handle::PostgresClient(client, cache) => {
                let mut client = client.borrow_mut();
                let statement = cache.get(sql, |q| client.prepare(q))?;
                client
                    .execute(&statement, &pg_params(params))
                    .map_err(|e| forget(cache, sql, e))
            }
            Handle::PostgresTransaction(tx, cache) => {
                let mut tx = tx.borrow_mut();
                let statement = cache.get(sql, |q| tx.prepare(q))?;
                tx.execute(&statement, &pg_params(params))
                    .map_err(|e| forget(cache, sql, e))
            }
        }
    }

    /// Runs a query; every row, with the column names.
    pub fn query_named(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<(Vec<String>, Vec<Row>), SqlError> {
        match self {
            Handle::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
                let count = names.len();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(params), |r| sqlite_row(r, count))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((names, rows))
            }
            Handle::PostgresClient(client, cache) => {
                let mut client = client.borrow_mut();
                let stmt = cache.get(sql, |q| client.prepare(q))?;
                let rows = client
                    .query(&stmt, &pg_params(params))
                    .map_err(|e| forget(cache, sql, e))?;
                postgres_rows(&stmt, &rows)
            }
            Handle::PostgresTransaction(tx, cache) => {
                let mut tx = tx.borrow_mut();
                let stmt = cache.get(sql, |q| tx.prepare(q))?;
                let rows = tx
                    .query(&stmt, &pg_params(params))
                    .map_err(|e| forget(cache, sql, e))?;
                postgres_rows(&stmt, &rows)
            }
        }
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, SqlError> {
        Ok(self.query_named(sql, params)?.1)
    }

    /// The first row, if any.
    pub fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Several statements without parameters (migrations); forgets every prepared
    /// statement.
    pub fn batch(&self, sql: &str) -> Result<(), SqlError> {
        match self {
            Handle::Sqlite(conn) => {
                conn.flush_prepared_statement_cache();
                Ok(conn.execute_batch(sql)?)
            }
            Handle::PostgresClient(client, cache) => {
                cache.clear();
                Ok(client.borrow_mut().batch_execute(sql)?)
            }
            Handle::PostgresTransaction(tx, cache) => {
                cache.clear();
                Ok(tx.borrow_mut().batch_execute(sql)?)
            }
        }
    }
}

/// A failed use of a cached statement: the statement is prepared anew next time (the server
/// may have invalidated it, e.g. after another server's migration).
fn forget(cache: &StatementCache, sql: &str, e: postgres::Error) -> SqlError {
    cache.forget(sql);
    SqlError::Postgres(e)
}

fn postgres_rows(
    stmt: &postgres::Statement,
    rows: &[postgres::Row],
) -> Result<(Vec<String>, Vec<Row>), SqlError> {
    let names = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
    let rows = rows.iter().map(postgres_row).collect::<Result<_, _>>()?;
    Ok((names, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_ddl_are_rewritten_for_postgresql() {
        assert_eq!(
            postgres_query("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(
            postgres_ddl("id INTEGER PRIMARY KEY, n INTEGER NOT NULL, h BLOB"),
            "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL, h BYTEA"
        );
    }

    #[test]
    fn rows_read_typed_values_and_refuse_others() {
        let row = Row(vec![Value::Int(7), Value::Null, Value::Text("x".into())]);
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.opt_int(1).unwrap(), None);
        assert_eq!(row.text(2).unwrap(), "x");
        assert!(row.int(2).is_err());
        assert!(row.text(1).is_err());
        assert!(
            row.int(9).is_err(),
            "a missing column is an error, not a panic"
        );
    }
}
