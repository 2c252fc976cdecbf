//! [`Sql`] over Postgres (the sync `postgres` client, on the store's own thread): the store
//! several gateways share.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use postgres::{Client, NoTls};

use super::sql::{Dialect, Sql, SqlError, Val};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A server that stops answering mid-statement (a partition, not a restart) is noticed within
/// this long, and the connection dropped.
const USER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Postgres {
    client: Client,
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Self, SqlError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| SqlError::Other(format!("store.url: {e}")))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(USER_TIMEOUT)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("llmedge");
        let client = config.connect(NoTls).map_err(sorted)?;
        Ok(Self { client })
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Val::Int(i) => i.to_sql(ty, out),
            Val::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8 | Type::INT4 | Type::TEXT | Type::VARCHAR | Type::NAME
        )
    }

    postgres::types::to_sql_checked!();
}

fn sorted(e: postgres::Error) -> SqlError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return SqlError::Conflict(e.to_string());
    }
    // no server answer at all: the connection is gone (or never came up)
    if e.is_closed() || e.as_db_error().is_none() {
        return SqlError::Unavailable(e.to_string());
    }
    SqlError::Other(e.to_string())
}

fn column(row: &postgres::Row, i: usize) -> Result<Val, SqlError> {
    let ty = row.columns().get(i).map(|c| c.type_().clone());
    let v = match ty {
        Some(Type::INT8) => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Val::Int)),
        Some(Type::INT4) => row
            .try_get::<_, Option<i32>>(i)
            .map(|v| v.map(|n| Val::Int(n.into()))),
        _ => row
            .try_get::<_, Option<String>>(i)
            .map(|v| v.map(Val::Text)),
    };
    v.map(|v| v.unwrap_or(Val::Null))
        .map_err(|e| SqlError::Other(e.to_string()))
}

fn refs(params: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Sql for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        self.client.batch_execute(sql).map_err(sorted)
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        self.client.execute(sql, &refs(params)).map_err(sorted)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>, SqlError> {
        let rows = self.client.query(sql, &refs(params)).map_err(sorted)?;
        rows.iter()
            .map(|row| (0..row.len()).map(|i| column(row, i)).collect())
            .collect()
    }
}
