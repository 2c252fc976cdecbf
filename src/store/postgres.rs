//! [`Sql`] over Postgres (the sync `postgres` client, on the store's own thread): the store
//! several gateways share.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type};
use postgres::Client;

use super::sql::{Dialect, Sql, SqlError, Val};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A server that stops answering mid-statement (a partition, not a restart) is noticed within
/// this long, and the connection dropped.
const USER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Postgres {
    client: Client,
}

/// TLS as the URL's `sslmode` asks (`prefer` by default), always verifying the server's
/// certificate and name against `ca_pem` or the system's roots.
fn tls(ca_pem: Option<&[u8]>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, SqlError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| SqlError::Other(format!("store.tls.ca_file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| SqlError::Other(format!("store.tls.ca_file: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _unusable = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SqlError::Other(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Postgres {
    pub fn connect(url: &str, ca_pem: Option<&[u8]>) -> Result<Self, SqlError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| SqlError::Other(format!("store.url: {e}")))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(USER_TIMEOUT)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("llmedge");
        let client = config.connect(tls(ca_pem)?).map_err(sorted)?;
        Ok(Self { client })
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let text = matches!(*ty, Type::TEXT | Type::VARCHAR | Type::NAME);
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Val::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Val::Text(s) if text => s.to_sql(ty, out),
            other => Err(format!("{other:?} does not fit a {ty} parameter").into()),
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

/// What the server said (its SQLSTATE and message, never the DETAIL, which can quote a
/// stored digest), or the chain of causes of a client-side failure.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

fn sorted(e: postgres::Error) -> SqlError {
    let msg = describe(&e);
    let refused = [
        SqlState::INVALID_PASSWORD,
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        SqlState::INVALID_CATALOG_NAME,
        SqlState::INSUFFICIENT_PRIVILEGE,
    ];
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => SqlError::Conflict(msg),
        Some(c) if refused.contains(c) => SqlError::Refused(msg),
        Some(_) => SqlError::Other(msg),
        // a certificate that does not verify is a configuration problem (or an attack), not an
        // outage to wait out
        None if msg.contains("certificate") => SqlError::Refused(msg),
        // no server answer: the connection is gone, never came up, or timed out
        None if e.is_closed() || is_io(&e) || msg.starts_with("error connecting") => {
            SqlError::Unavailable(msg)
        }
        None => SqlError::Other(msg),
    }
}

fn is_io(e: &postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
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
