//! `store:` (where keys and tenants managed at runtime live) and `admin:` (who may manage them).

use std::time::Duration;

use serde::Deserialize;

use super::secret::{self, EnvLookup, Secret};
use crate::errors::ConfigError;

/// The store when `store:` is absent: a SQLite file in the working directory.
pub const DEFAULT_STORE_URL: &str = "sqlite://llmedge.db";
/// Where a Postgres store's last-seen keys are kept, for a start while it is unreachable.
pub const DEFAULT_CACHE_FILE: &str = "llmedge-store-cache.json";
const DEFAULT_POLL_MS: u64 = 250;
const DEFAULT_RETENTION_DAYS: u64 = 90;

/// Which database holds the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite file (`sqlite://path`), or an in-memory database (`sqlite::memory:`).
    Sqlite(String),
    /// `postgres://user:password@host:port/db`; never logged.
    Postgres(Secret),
}

/// The validated `store:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub url: StoreUrl,
    /// `host:port/db` (Postgres) or the file (SQLite), for logs and `/readyz`.
    pub endpoint: String,
    /// Postgres only: the last keys and tenants seen, read when the store is unreachable at start.
    pub cache_file: std::path::PathBuf,
    /// How often the store is asked whether another gateway changed it.
    pub poll: Duration,
    /// Postgres over TLS: PEM roots from `tls.ca_file` (the system's roots when absent).
    pub ca_pem: Option<Vec<u8>>,
    /// Whether requests are written to the usage ledger (`store.ledger`, default true).
    pub ledger: bool,
    /// `store.ledger_retention_days`: raw ledger rows older than this are pruned (rollups stay).
    pub retention_days: u64,
}

impl StoreConfig {
    pub fn backend(&self) -> &'static str {
        match self.url {
            StoreUrl::Sqlite(_) => "sqlite",
            StoreUrl::Postgres(_) => "postgres",
        }
    }
}

/// The validated `admin:` block: digests of the tokens that may use the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    pub keys: Vec<[u8; 32]>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    cache_file: Option<String>,
    #[serde(default)]
    poll_ms: Option<u64>,
    #[serde(default)]
    tls: Option<RawStoreTls>,
    #[serde(default)]
    ledger: Option<bool>,
    #[serde(default)]
    ledger_retention_days: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreTls {
    ca_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default)]
    keys: Vec<String>,
}

impl RawStore {
    pub(super) fn validate(self, env: EnvLookup<'_>) -> Result<StoreConfig, ConfigError> {
        let raw = self.url.unwrap_or_else(|| DEFAULT_STORE_URL.into());
        let url = secret::resolve("store.url", &raw, env)?;
        let (url, endpoint) = parse_url(url)?;
        let poll = self.poll_ms.unwrap_or(DEFAULT_POLL_MS);
        if !(20..=60_000).contains(&poll) {
            return Err(ConfigError::new(
                "store.poll_ms",
                format!("{poll} must be between 20 and 60000"),
            ));
        }
        let cache_file = self.cache_file.unwrap_or_else(|| DEFAULT_CACHE_FILE.into());
        if cache_file.is_empty() {
            return Err(ConfigError::new("store.cache_file", "must not be empty"));
        }
        let ca_pem = match (self.tls, &url) {
            (None, _) => None,
            (Some(t), StoreUrl::Postgres(_)) => {
                Some(super::state::read_ca_at("store.tls.ca_file", &t.ca_file)?)
            }
            (Some(_), StoreUrl::Sqlite(_)) => {
                return Err(ConfigError::new(
                    "store.tls",
                    "only used with a postgres:// url",
                ))
            }
        };
        let retention_days = self.ledger_retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
        if !(1..=36_500).contains(&retention_days) {
            return Err(ConfigError::new(
                "store.ledger_retention_days",
                format!("{retention_days} must be between 1 and 36500"),
            ));
        }
        Ok(StoreConfig {
            url,
            endpoint,
            cache_file: cache_file.into(),
            poll: Duration::from_millis(poll),
            ca_pem,
            ledger: self.ledger.unwrap_or(true),
            retention_days,
        })
    }
}

fn parse_url(url: Secret) -> Result<(StoreUrl, String), ConfigError> {
    let s = url.expose();
    if s == "sqlite::memory:" {
        return Ok((StoreUrl::Sqlite(":memory:".into()), ":memory:".into()));
    }
    if let Some(path) = s.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(ConfigError::new("store.url", "sqlite:// needs a file path"));
        }
        return Ok((StoreUrl::Sqlite(path.into()), path.into()));
    }
    let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    else {
        return Err(ConfigError::new(
            "store.url",
            "must start with sqlite://, postgres:// or be sqlite::memory:",
        ));
    };
    // every TLS connection verifies the server's certificate and name, so libpq's verify modes
    // are what `require` already does here
    let s = s
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    s.parse::<postgres::Config>()
        .map_err(|e| ConfigError::new("store.url", format!("not a Postgres URL: {e}")))?;
    let url = Secret::new(s.clone());
    // host:port/db only: the user and password never reach a log
    let endpoint = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let endpoint = endpoint.split('?').next().unwrap_or_default().to_string();
    Ok((StoreUrl::Postgres(url), endpoint))
}

impl RawAdmin {
    pub(super) fn validate(self, env: EnvLookup<'_>) -> Result<AdminConfig, ConfigError> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            let d = secret::resolve_key_digest(&format!("admin.keys[{i}]"), k, env)?;
            if keys.contains(&d) {
                return Err(ConfigError::new(
                    format!("admin.keys[{i}]"),
                    "the same admin key is listed twice",
                ));
            }
            keys.push(d);
        }
        Ok(AdminConfig { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn url(s: &str) -> Result<StoreConfig, ConfigError> {
        RawStore {
            url: Some(s.into()),
            ..Default::default()
        }
        .validate(&no_env)
    }

    #[test]
    fn default_is_a_sqlite_file_in_the_working_directory() {
        let c = RawStore::default().validate(&no_env).unwrap();
        assert_eq!(c.url, StoreUrl::Sqlite("llmedge.db".into()));
        assert_eq!(c.backend(), "sqlite");
        assert_eq!(c.poll, Duration::from_millis(250));
    }

    #[test]
    fn postgres_endpoint_hides_the_password() {
        let c = url("postgres://u:hunter2@db.internal:5433/llmedge?connect_timeout=3").unwrap();
        assert_eq!(c.endpoint, "db.internal:5433/llmedge");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.backend(), "postgres");
    }

    #[test]
    fn bad_urls_name_the_field() {
        for bad in ["mysql://x", "sqlite://", "postgres://u@h:port/db"] {
            let e = url(bad).unwrap_err();
            assert!(e.to_string().starts_with("store.url"), "{e}");
        }
        assert_eq!(
            url("sqlite::memory:").unwrap().url,
            StoreUrl::Sqlite(":memory:".into())
        );
        let verified = url("postgres://u:p@h/db?sslmode=verify-full").unwrap();
        let StoreUrl::Postgres(s) = verified.url else {
            panic!("postgres")
        };
        assert!(
            s.expose().ends_with("sslmode=require"),
            "verified either way"
        );
        let tls_on_sqlite = RawStore {
            tls: Some(RawStoreTls {
                ca_file: "x".into(),
            }),
            ..Default::default()
        };
        let e = tls_on_sqlite.validate(&no_env).unwrap_err();
        assert_eq!(e.path, "store.tls");
    }

    #[test]
    fn admin_keys_are_digests_and_unique() {
        let raw = RawAdmin {
            keys: vec!["adm-1".into(), format!("sha256:{}", "ab".repeat(32))],
        };
        let a = raw.validate(&no_env).unwrap();
        assert_eq!(a.keys[0], secret::digest(b"adm-1"));
        let dup = RawAdmin {
            keys: vec!["x".into(), "x".into()],
        };
        assert!(dup
            .validate(&no_env)
            .unwrap_err()
            .to_string()
            .starts_with("admin.keys[1]"));
    }
}
