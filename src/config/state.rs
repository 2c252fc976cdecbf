//! `state:`: where limit counters and spend live. `backend: file` (the default) keeps them in
//! this process and saves them to a JSON file; `backend: redis` shares them with every gateway
//! on one Redis (or Valkey) server.

use std::time::Duration;

use serde::Deserialize;

use super::secret::{self, EnvLookup, Secret};
use crate::errors::ConfigError;

/// Where counters persist when `state.path` is not given: the working directory, which the
/// shipped systemd unit and Dockerfile point at the service's own state directory.
pub const DEFAULT_STATE_PATH: &str = "llmedge-state.json";
const DEFAULT_FLUSH_MS: u64 = 5_000;
const DEFAULT_KEY_PREFIX: &str = "llmedge:";
const DEFAULT_TIMEOUT_MS: u64 = 50;
/// How long a concurrency slot or reservation outlives a gateway that stopped renewing it.
const DEFAULT_LEASE_MS: u64 = 30_000;

/// `backend: file`: counters in this process, saved to `path` every `flush`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub path: std::path::PathBuf,
    pub flush: Duration,
}

/// What a request gets while Redis is unreachable or slower than `timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Admit, counting in this process until Redis is back.
    Allow,
    /// 503 `service_unavailable`.
    Deny,
}

/// `backend: redis`: counters shared by every gateway on one Redis server.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://` (TLS); never logged.
    pub url: Secret,
    /// `host:port` of `url`, for logs.
    pub endpoint: String,
    pub key_prefix: String,
    /// PEM roots from `tls.ca_file` for `rediss://` (the system's roots when absent).
    pub ca_pem: Option<Vec<u8>>,
    pub timeout: Duration,
    pub lease: Duration,
    pub on_error_limits: OnError,
    pub on_error_budgets: OnError,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    flush_ms: Option<u64>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    redis: Option<RawRedis>,
    #[serde(default)]
    on_error: Option<RawOnError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    lease_ms: Option<u64>,
    #[serde(default)]
    tls: Option<RawRedisTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisTls {
    ca_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnError {
    #[serde(default)]
    limits: Option<OnError>,
    #[serde(default)]
    budgets: Option<OnError>,
}

/// The validated `state:` block: at most one of the two is set.
pub(super) struct States {
    pub file: Option<StateConfig>,
    pub redis: Option<RedisConfig>,
}

impl RawState {
    /// An absent `state:` block persists to [`DEFAULT_STATE_PATH`], so spend survives a
    /// restart by default; `enabled: false` keeps counters in memory only.
    pub(super) fn validate(self, env: EnvLookup<'_>) -> Result<States, ConfigError> {
        match self.backend.as_deref().unwrap_or("file") {
            "file" => {
                if self.redis.is_some() || self.on_error.is_some() {
                    let f = if self.redis.is_some() {
                        "redis"
                    } else {
                        "on_error"
                    };
                    return Err(ConfigError::new(
                        format!("state.{f}"),
                        "only used with `backend: redis`",
                    ));
                }
                Ok(States {
                    file: self.file()?,
                    redis: None,
                })
            }
            "redis" => self.redis(env),
            other => Err(ConfigError::new(
                "state.backend",
                format!("unknown backend \"{other}\" (known: file, redis)"),
            )),
        }
    }

    fn file(self) -> Result<Option<StateConfig>, ConfigError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let path = self.path.unwrap_or_else(|| DEFAULT_STATE_PATH.to_string());
        if path.is_empty() {
            return Err(ConfigError::new("state.path", "must not be empty"));
        }
        let flush = self.flush_ms.unwrap_or(DEFAULT_FLUSH_MS);
        if !(10..=3_600_000).contains(&flush) {
            return Err(ConfigError::new(
                "state.flush_ms",
                format!("{flush} must be between 10 and 3600000"),
            ));
        }
        Ok(Some(StateConfig {
            path: path.into(),
            flush: Duration::from_millis(flush),
        }))
    }

    fn redis(self, env: EnvLookup<'_>) -> Result<States, ConfigError> {
        for (f, set) in [
            ("path", self.path.is_some()),
            ("flush_ms", self.flush_ms.is_some()),
            ("enabled", self.enabled.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    format!("state.{f}"),
                    "not used with `backend: redis` (no state file is written)",
                ));
            }
        }
        let Some(r) = self.redis else {
            return Err(ConfigError::new(
                "state.redis",
                "`backend: redis` needs `redis: {url: ...}`",
            ));
        };
        let on_error = self.on_error.unwrap_or(RawOnError {
            limits: None,
            budgets: None,
        });
        let url = secret::resolve("state.redis.url", &r.url, env)?;
        let endpoint = redis_endpoint(url.expose())?;
        let prefix = r.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into());
        if prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "state.redis.key_prefix",
                "must not contain `{` or `}` (the gateway adds a hash tag per tenant)",
            ));
        }
        let ca_pem = match r.tls {
            None => None,
            Some(t) if url.expose().starts_with("rediss://") => {
                Some(read_ca_at("state.redis.tls.ca_file", &t.ca_file)?)
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "state.redis.tls",
                    "needs a rediss:// url (TLS)",
                ))
            }
        };
        Ok(States {
            file: None,
            redis: Some(RedisConfig {
                url,
                endpoint,
                key_prefix: prefix,
                ca_pem,
                timeout: millis("timeout_ms", r.timeout_ms, DEFAULT_TIMEOUT_MS, 10_000)?,
                lease: lease_ms(r.lease_ms)?,
                on_error_limits: on_error.limits.unwrap_or(OnError::Allow),
                on_error_budgets: on_error.budgets.unwrap_or(OnError::Deny),
            }),
        })
    }
}

/// The PEM file of `state.redis.tls.ca_file`, checked to hold at least one certificate.
/// The PEM certificates of `file` (at least one), for the field `path`.
pub(super) fn read_ca_at(path: &str, file: &str) -> Result<Vec<u8>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(file)
        .map_err(|e| ConfigError::new(path, format!("cannot read \"{file}\": {e}")))?;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(path, format!("\"{file}\": {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            path,
            format!("\"{file}\" holds no PEM certificate"),
        ));
    }
    Ok(pem)
}

/// A lease is renewed every third of its life by a 200 ms loop: shorter than a second would
/// let a live gateway's leases lapse.
fn lease_ms(v: Option<u64>) -> Result<Duration, ConfigError> {
    let ms = v.unwrap_or(DEFAULT_LEASE_MS);
    if !(1_000..=3_600_000).contains(&ms) {
        return Err(ConfigError::new(
            "state.redis.lease_ms",
            format!("{ms} must be between 1000 and 3600000"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn millis(field: &str, v: Option<u64>, default: u64, max: u64) -> Result<Duration, ConfigError> {
    let ms = v.unwrap_or(default);
    if ms == 0 || ms > max {
        return Err(ConfigError::new(
            format!("state.redis.{field}"),
            format!("{ms} must be between 1 and {max}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// `host:port` of a `redis://` or `rediss://` URL, checked without ever echoing the URL (it
/// may hold a password).
fn redis_endpoint(url: &str) -> Result<String, ConfigError> {
    let bad = |msg: &str| ConfigError::new("state.redis.url", msg);
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or_else(|| bad("must start with redis:// or rediss://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let with_port = if host.ends_with(']') || !host.contains(':') {
        format!("{host}:6379")
    } else {
        host.to_string()
    };
    let db = rest
        .split_once('/')
        .map(|(_, d)| d.split('?').next().unwrap_or(""));
    if let Some(d) = db.filter(|d| !d.is_empty()) {
        if d.parse::<u16>().is_err() {
            return Err(bad("the database after the host must be a number"));
        }
    }
    Ok(with_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "pools: {p: {backends: ['http://h']}}\nroutes: [{prefix: '', pool: p}]\n";

    fn load(state: &str) -> Result<Config, ConfigError> {
        let env = |k: &str| (k == "R").then(|| "redis://u:hunter2@10.0.0.5:6380/2".to_string());
        Config::from_yaml(&format!("{BASE}state: {state}"), &env)
    }

    fn err(state: &str) -> String {
        match load(state) {
            Err(e) => format!("{}: {}", e.path, e.msg),
            Ok(_) => panic!("accepted: {state}"),
        }
    }

    #[test]
    fn redis_backend_loads_with_defaults_and_writes_no_file() {
        let c = load("{backend: redis, redis: {url: 'env:R'}}").unwrap();
        assert!(c.state.is_none(), "no state file with redis");
        let r = c.shared.unwrap();
        assert_eq!(r.endpoint, "10.0.0.5:6380");
        assert_eq!(r.key_prefix, "llmedge:");
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert_eq!(r.lease, Duration::from_secs(30));
        assert_eq!(
            (r.on_error_limits, r.on_error_budgets),
            (OnError::Allow, OnError::Deny)
        );
        assert!(
            !format!("{r:?}").contains("hunter2"),
            "the password stays hidden"
        );
    }

    #[test]
    fn bad_redis_settings_name_the_field_and_never_the_password() {
        let bad_scheme = err("{backend: redis, redis: {url: 'http://u:hunter2@h'}}");
        assert_eq!(
            bad_scheme,
            "state.redis.url: must start with redis:// or rediss://"
        );
        assert_eq!(
            err("{backend: redis, redis: {url: 'redis://h', timeout_ms: 0}}"),
            "state.redis.timeout_ms: 0 must be between 1 and 10000"
        );
        assert!(
            err("{backend: redis, redis: {url: 'redis://h', sentinel: 1}}")
                .starts_with("state.redis.sentinel: unknown field `sentinel`")
        );
        assert!(
            err("{backend: redis, redis: {url: 'redis://h'}, on_error: {limits: maybe}}")
                .starts_with("state.on_error.limits: unknown variant `maybe`")
        );
        assert_eq!(
            err("{backend: redis, redis: {url: 'redis://h'}, path: x.json}"),
            "state.path: not used with `backend: redis` (no state file is written)"
        );
        assert_eq!(
            err("{backend: memcache}"),
            "state.backend: unknown backend \"memcache\" (known: file, redis)"
        );
        assert_eq!(
            err("{redis: {url: 'redis://h'}}"),
            "state.redis: only used with `backend: redis`"
        );
        assert_eq!(
            err("{backend: redis, redis: {url: 'redis://h/x'}}"),
            "state.redis.url: the database after the host must be a number"
        );
        assert_eq!(
            err("{backend: redis, redis: {url: 'redis://h', key_prefix: 'a{b}'}}"),
            "state.redis.key_prefix: must not contain `{` or `}` (the gateway adds a hash tag per tenant)"
        );
        assert_eq!(
            err("{backend: redis, redis: {url: 'redis://h', tls: {ca_file: x.pem}}}"),
            "state.redis.tls: needs a rediss:// url (TLS)"
        );
        assert!(err(
            "{backend: redis, redis: {url: 'rediss://h', tls: {ca_file: /nonexistent.pem}}}"
        )
        .starts_with("state.redis.tls.ca_file: cannot read \"/nonexistent.pem\""));
        let v6 = load("{backend: redis, redis: {url: 'rediss://[::1]/0'}}").unwrap();
        assert_eq!(v6.shared.unwrap().endpoint, "[::1]:6379");
    }
}
