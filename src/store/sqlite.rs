//! [`Sql`] over a SQLite file (rusqlite, SQLite bundled: nothing to install), in WAL mode so
//! readers never wait for the writer.

use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode};

use super::sql::{Dialect, Sql, SqlError, Val};

pub struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Opens (creating) the file, or an in-memory database for `:memory:`. The file holds key
    /// digests: it (and the journal files SQLite makes with its mode) is readable by this user
    /// only.
    pub fn open(path: &str) -> Result<Self, SqlError> {
        let conn = if path == ":memory:" {
            Connection::open_in_memory()
        } else {
            owner_only(path)?;
            Connection::open(path)
        }
        .map_err(|e| SqlError::Unavailable(format!("cannot open {path}: {e}")))?;
        // another gateway (or the CLI's server) on the same file waits for the lock instead of
        // failing at once
        conn.busy_timeout(Duration::from_secs(5)).map_err(sorted)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
            .map_err(sorted)?;
        Ok(Self { conn })
    }
}

/// Creates `path` with mode 0600, or narrows an existing file (and its journals) to it.
fn owner_only(path: &str) -> Result<(), SqlError> {
    let cannot = |e: std::io::Error| SqlError::Unavailable(format!("cannot open {path}: {e}"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        opts.open(path).map_err(cannot)?;
        for f in [
            path.to_string(),
            format!("{path}-wal"),
            format!("{path}-shm"),
        ] {
            if let Ok(meta) = std::fs::metadata(&f) {
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))
                        .map_err(cannot)?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    opts.open(path).map_err(cannot)?;
    Ok(())
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// `$1` → `?1`: SQLite reads `$1` as a named parameter, numbered by first use; `?1` binds by
/// position exactly as Postgres does.
fn positional(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sorted(e: rusqlite::Error) -> SqlError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => SqlError::Conflict(e.to_string()),
            ErrorCode::CannotOpen
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly => SqlError::Unavailable(e.to_string()),
            _ => SqlError::Other(e.to_string()),
        },
        _ => SqlError::Other(e.to_string()),
    }
}

fn column(v: ValueRef<'_>) -> Val {
    match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(i) => Val::Int(i),
        ValueRef::Real(f) => Val::Int(f as i64),
        ValueRef::Text(t) | ValueRef::Blob(t) => Val::Text(String::from_utf8_lossy(t).into()),
    }
}

impl Sql for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        self.conn.execute_batch(sql).map_err(sorted)
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        let mut st = self.conn.prepare_cached(&positional(sql)).map_err(sorted)?;
        let n = st
            .execute(rusqlite::params_from_iter(params))
            .map_err(sorted)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>, SqlError> {
        let mut st = self.conn.prepare_cached(&positional(sql)).map_err(sorted)?;
        let width = st.column_count();
        let mut rows = st
            .query(rusqlite::params_from_iter(params))
            .map_err(sorted)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sorted)? {
            let mut r = Vec::with_capacity(width);
            for i in 0..width {
                r.push(column(row.get_ref(i).map_err(sorted)?));
            }
            out.push(r);
        }
        Ok(out)
    }
}
