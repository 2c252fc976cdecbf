//! The control plane's schema: migrations kept in the repo, applied in order at start under a
//! lock, and a refusal to run against a schema newer than this binary knows.

use super::sql::{migration_tx, Sql, SqlError, Val};

/// Every migration this binary knows, in order; a migration is never edited once released.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "control", include_str!("migrations/0001_control.sql")),
    (2, "ledger", include_str!("migrations/0002_ledger.sql")),
];

/// Why the schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaError {
    Sql(SqlError),
    /// The database was migrated by a newer llmedge.
    TooNew {
        found: i64,
        known: i64,
    },
}

impl From<SqlError> for SchemaError {
    fn from(e: SqlError) -> Self {
        SchemaError::Sql(e)
    }
}

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaError::Sql(e) => e.fmt(f),
            SchemaError::TooNew { found, known } => write!(
                f,
                "store schema is version {found}, newer than this llmedge knows ({known}): run a newer llmedge"
            ),
        }
    }
}

pub fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Applies the migrations the database lacks; returns the version it is at.
pub fn migrate(sql: &mut dyn Sql) -> Result<i64, SchemaError> {
    migration_tx(sql, |sql| {
        sql.batch(
            "CREATE TABLE IF NOT EXISTS llmedge_schema (
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )?;
        let rows = sql.query("SELECT COALESCE(MAX(version), 0) FROM llmedge_schema", &[])?;
        let found = rows
            .first()
            .and_then(|r| r.first())
            .and_then(Val::int)
            .unwrap_or(0);
        let known = known_version();
        if found > known {
            return Err(SchemaError::TooNew { found, known });
        }
        for (version, name, text) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            sql.batch(text)?;
            sql.exec(
                "INSERT INTO llmedge_schema (version, name, applied_at) VALUES ($1, $2, $3)",
                &[
                    Val::Int(*version),
                    (*name).into(),
                    crate::clock::Clock::now_ms(&crate::clock::SystemClock).into(),
                ],
            )?;
        }
        Ok(known)
    })
}
