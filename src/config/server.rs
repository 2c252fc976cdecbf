//! `server:`: listeners, TLS and HTTP/2, CORS, body and token defaults, shutdown and upgrade.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::errors::ConfigError;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_THREADS: usize = 2;
const DEFAULT_MAX_BODY_BYTES: usize = 33_554_432; // 32 MiB
const MAX_MAX_BODY_BYTES: usize = 1_073_741_824; // 1 GiB
/// Completion tokens reserved for a request that sets no `max_tokens`.
const DEFAULT_MAX_TOKENS: u64 = 4_096;
/// How long SIGTERM lets requests and streams finish; long generations need minutes.
const DEFAULT_GRACE_PERIOD_SECS: u64 = 60;
const MAX_GRACE_PERIOD_SECS: u64 = 86_400;
const DEFAULT_UPGRADE_SOCK: &str = "/tmp/llmedge_upgrade.sock";
/// How long browsers may cache a CORS preflight answer.
const DEFAULT_CORS_MAX_AGE_SECS: u64 = 600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_admin_listen")]
    admin_listen: Option<String>,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_max_tokens")]
    default_max_tokens: u64,
    #[serde(default = "default_grace_period")]
    grace_period_secs: u64,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    h2c: bool,
    #[serde(default)]
    cors: Option<RawCors>,
    #[serde(default = "default_upgrade_sock")]
    upgrade_sock: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            threads: default_threads(),
            max_body_bytes: default_max_body_bytes(),
            default_max_tokens: default_max_tokens(),
            grace_period_secs: default_grace_period(),
            tls: None,
            h2c: false,
            cors: None,
            upgrade_sock: default_upgrade_sock(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: Vec<String>,
    #[serde(default = "default_cors_max_age")]
    max_age_secs: u64,
}

fn default_max_tokens() -> u64 {
    DEFAULT_MAX_TOKENS
}
fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}
fn default_admin_listen() -> Option<String> {
    Some(DEFAULT_ADMIN_LISTEN.to_string())
}
fn default_threads() -> usize {
    DEFAULT_THREADS
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_grace_period() -> u64 {
    DEFAULT_GRACE_PERIOD_SECS
}
fn default_upgrade_sock() -> String {
    DEFAULT_UPGRADE_SOCK.to_string()
}
fn default_cors_max_age() -> u64 {
    DEFAULT_CORS_MAX_AGE_SECS
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub default_max_tokens: u64,
    /// SIGTERM: how long in-flight requests and streams may finish.
    pub grace_period: Duration,
    /// TLS on the API listener (h2 offered by ALPN).
    pub tls: Option<TlsConfig>,
    /// Plaintext HTTP/2 with prior knowledge on the API listener.
    pub h2c: bool,
    pub cors: Option<CorsConfig>,
    /// The Unix socket listeners are handed over on for `--upgrade`.
    pub upgrade_sock: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Browser access: which origins may call the API, and how long a preflight answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `*` for any.
    pub allowed_origins: Vec<String>,
    pub max_age_secs: u64,
}

impl CorsConfig {
    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    pub fn allow<'a>(&'a self, origin: &'a [u8]) -> Option<&'a [u8]> {
        if self.allowed_origins.iter().any(|o| o == "*") {
            return Some(b"*");
        }
        self.allowed_origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
            .then_some(origin)
    }
}

impl RawServer {
    pub(super) fn validate(self) -> Result<ServerConfig, ConfigError> {
        let listen = parse_addr("server.listen", &self.listen)?;
        let admin_listen = match &self.admin_listen {
            Some(a) => Some(parse_addr("server.admin_listen", a)?),
            None => None,
        };
        if admin_listen == Some(listen) {
            return Err(ConfigError::new(
                "server.admin_listen",
                "must differ from server.listen",
            ));
        }
        if !(1..=1024).contains(&self.threads) {
            return Err(ConfigError::new(
                "server.threads",
                format!("{} must be between 1 and 1024", self.threads),
            ));
        }
        if !(1..=MAX_MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                format!(
                    "{} must be between 1 and {MAX_MAX_BODY_BYTES}",
                    self.max_body_bytes
                ),
            ));
        }
        if self.grace_period_secs > MAX_GRACE_PERIOD_SECS {
            return Err(ConfigError::new(
                "server.grace_period_secs",
                format!(
                    "{} must be between 0 and {MAX_GRACE_PERIOD_SECS}",
                    self.grace_period_secs
                ),
            ));
        }
        let tls = self.tls.map(RawTls::validate).transpose()?;
        if tls.is_some() && self.h2c {
            return Err(ConfigError::new(
                "server.h2c",
                "cannot be combined with server.tls (TLS listeners offer h2 through ALPN)",
            ));
        }
        let cors = self.cors.map(RawCors::validate).transpose()?;
        if self.upgrade_sock.is_empty() {
            return Err(ConfigError::new("server.upgrade_sock", "must not be empty"));
        }
        Ok(ServerConfig {
            listen,
            admin_listen,
            threads: self.threads,
            max_body_bytes: self.max_body_bytes,
            default_max_tokens: self.default_max_tokens,
            grace_period: Duration::from_secs(self.grace_period_secs),
            tls,
            h2c: self.h2c,
            cors,
            upgrade_sock: self.upgrade_sock,
        })
    }
}

impl RawTls {
    fn validate(self) -> Result<TlsConfig, ConfigError> {
        for (field, path) in [("cert", &self.cert), ("key", &self.key)] {
            let p = format!("server.tls.{field}");
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Err(ConfigError::new(p, format!("\"{path}\" is not a file"))),
                Err(e) => {
                    return Err(ConfigError::new(p, format!("cannot read \"{path}\": {e}")));
                }
            }
        }
        Ok(TlsConfig {
            cert: self.cert.into(),
            key: self.key.into(),
        })
    }
}

impl RawCors {
    fn validate(self) -> Result<CorsConfig, ConfigError> {
        for (i, o) in self.allowed_origins.iter().enumerate() {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && o.bytes().all(|b| b.is_ascii_graphic()));
            if !ok {
                return Err(ConfigError::new(
                    format!("server.cors.allowed_origins[{i}]"),
                    format!("\"{o}\" is not an origin (scheme://host[:port], or *)"),
                ));
            }
        }
        if self.max_age_secs > 86_400 {
            return Err(ConfigError::new(
                "server.cors.max_age_secs",
                format!("{} must be between 0 and 86400", self.max_age_secs),
            ));
        }
        Ok(CorsConfig {
            allowed_origins: self.allowed_origins,
            max_age_secs: self.max_age_secs,
        })
    }
}

pub(super) fn parse_addr(path: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse()
        .map_err(|_| ConfigError::new(path, format!("\"{v}\" is not an IP:port address")))
}
