//! The little SQL the control plane needs, over either database: text statements with `$1…`
//! parameters, integer and text values, and errors sorted into what a caller acts on.

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }

    /// An optional millisecond time (`NULL` or a non-negative integer).
    pub fn ms(&self) -> Option<u64> {
        self.int().map(|i| i.max(0) as u64)
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::Text(s.to_string())
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::Text(s)
    }
}

impl From<u64> for Val {
    fn from(n: u64) -> Self {
        Val::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<Option<u64>> for Val {
    fn from(n: Option<u64>) -> Self {
        n.map_or(Val::Null, Val::from)
    }
}

/// What went wrong, as far as a caller decides anything on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlError {
    /// The database cannot be reached or the connection broke: retry later.
    Unavailable(String),
    /// A unique constraint refused the write.
    Conflict(String),
    /// The server refused this gateway: a wrong password, no such database, no permission.
    Refused(String),
    Other(String),
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            SqlError::Conflict(m) => write!(f, "conflict: {m}"),
            SqlError::Refused(m) => write!(f, "store refused the connection: {m}"),
            SqlError::Other(m) => f.write_str(m),
        }
    }
}

/// Which database a connection talks to, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One connection. Statements are written once, with `$1…` parameters in order of first use.
pub trait Sql: Send {
    fn dialect(&self) -> Dialect;
    /// Several statements without parameters (migrations, `BEGIN`, `COMMIT`).
    fn batch(&mut self, sql: &str) -> Result<(), SqlError>;
    /// One statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError>;
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>, SqlError>;

    /// A transaction that takes the write lock at once: writes from every gateway run one at
    /// a time, so a read-modify-write never loses another's change and two writers never
    /// deadlock. SQLite locks the file; Postgres locks the revision row every write bumps.
    fn begin_write(&mut self) -> Result<(), SqlError> {
        match self.dialect() {
            Dialect::Sqlite => self.batch("BEGIN IMMEDIATE"),
            Dialect::Postgres => self
                .batch("BEGIN; SELECT value FROM llmedge_meta WHERE name = 'revision' FOR UPDATE"),
        }
    }

    /// A read-only transaction that sees one consistent state.
    fn begin_read(&mut self) -> Result<(), SqlError> {
        match self.dialect() {
            Dialect::Sqlite => self.batch("BEGIN"),
            Dialect::Postgres => self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        }
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        self.batch("COMMIT")
    }

    /// Best effort: a broken connection has no transaction left to roll back.
    fn rollback(&mut self) {
        let _gone = self.batch("ROLLBACK");
    }
}

/// Runs `f` in a write transaction: committed when it returns `Ok`, rolled back otherwise.
pub fn write_tx<T, E: From<SqlError>>(
    sql: &mut dyn Sql,
    f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
) -> Result<T, E> {
    sql.begin_write()?;
    tx_body(sql, f)
}

/// Runs `f` in the migration transaction: before the schema exists there is no revision row
/// to lock, so Postgres gateways take turns on an advisory lock instead.
pub fn migration_tx<T, E: From<SqlError>>(
    sql: &mut dyn Sql,
    f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
) -> Result<T, E> {
    match sql.dialect() {
        Dialect::Sqlite => sql.batch("BEGIN IMMEDIATE")?,
        Dialect::Postgres => sql.batch("BEGIN; SELECT pg_advisory_xact_lock(7150221)")?,
    }
    tx_body(sql, f)
}

/// Runs `f` in a read transaction.
pub fn read_tx<T, E: From<SqlError>>(
    sql: &mut dyn Sql,
    f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
) -> Result<T, E> {
    sql.begin_read()?;
    tx_body(sql, f)
}

fn tx_body<T, E: From<SqlError>>(
    sql: &mut dyn Sql,
    f: impl FnOnce(&mut dyn Sql) -> Result<T, E>,
) -> Result<T, E> {
    match f(sql) {
        Ok(v) => {
            sql.commit()?;
            Ok(v)
        }
        Err(e) => {
            sql.rollback();
            Err(e)
        }
    }
}
