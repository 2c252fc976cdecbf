//! `pools.<name>`: backends, balancing, health checks, load scraping, retries and timeouts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::secret::{self, EnvLookup, Secret};
use crate::errors::ConfigError;

const DEFAULT_CONNECT_MS: u64 = 3_000;
const DEFAULT_FIRST_BYTE_MS: u64 = 600_000; // a non-streaming answer arrives only when generation ends
const DEFAULT_IDLE_MS: u64 = 120_000;
const DEFAULT_TOTAL_MS: u64 = 1_800_000; // 30 min
const MAX_TIMEOUT_MS: u64 = 86_400_000; // 1 day
const DEFAULT_RETRIES: u32 = 2;
const MAX_RETRIES: u32 = 10;
const MAX_WEIGHT: u32 = 1_000;
const DEFAULT_PROMPT_PREFIX_BYTES: usize = 256;
/// The `anthropic-version` sent to an Anthropic upstream unless its pool says otherwise.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    backends: Vec<RawBackend>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    balance: Balance,
    #[serde(default)]
    hash_key: Option<String>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    metrics: Option<RawScrape>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    timeouts: RawTimeouts,
    /// Upstream model renames for this pool (after the route's prefix handling).
    #[serde(default)]
    model_map: BTreeMap<String, String>,
    #[serde(default)]
    tls: RawUpstreamTls,
    /// The API the backends speak: `openai` (default) or `anthropic` (the hosted Messages API).
    #[serde(default)]
    protocol: Protocol,
    /// How `/v1/messages` reaches the backends: `native` or `translate` (default).
    #[serde(default)]
    messages: Option<MessagesMode>,
    /// The `anthropic-version` header sent to a `protocol: anthropic` pool.
    #[serde(default)]
    anthropic_version: Option<String>,
    /// Settings of `balance: cache_aware`.
    #[serde(default)]
    cache_aware: Option<RawCacheAware>,
    /// Whose credentials go upstream: `pool` (default), `client`, `passthrough`.
    #[serde(default)]
    credentials: Credentials,
}

/// Whose credentials authenticate a request to the pool's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// The pool's `api_key`.
    #[default]
    Pool,
    /// The caller's own provider key, sent in `x-llmedge-upstream-key`.
    Client,
    /// The caller's `Authorization` header, untouched (the upstream authenticates the caller).
    Passthrough,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheAware {
    #[serde(default)]
    block_chars: Option<usize>,
    #[serde(default)]
    max_blocks: Option<usize>,
    #[serde(default)]
    load_weight: Option<f64>,
}

/// `balance: cache_aware`: how prompts are cut into blocks, how many blocks the pool's index
/// keeps, and how much load counts against a cache match.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheAwareConfig {
    pub block_chars: usize,
    pub max_blocks: usize,
    pub load_weight: f64,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        Self {
            block_chars: 128,
            max_blocks: 200_000,
            load_weight: 1.0,
        }
    }
}

impl RawCacheAware {
    fn validate(self, base: &str) -> Result<CacheAwareConfig, ConfigError> {
        let d = CacheAwareConfig::default();
        let p = |f: &str| format!("{base}.cache_aware.{f}");
        let block_chars = self.block_chars.unwrap_or(d.block_chars);
        if !(16..=65_536).contains(&block_chars) {
            return Err(ConfigError::new(
                p("block_chars"),
                format!("{block_chars} must be between 16 and 65536"),
            ));
        }
        let max_blocks = self.max_blocks.unwrap_or(d.max_blocks);
        if !(1..=100_000_000).contains(&max_blocks) {
            return Err(ConfigError::new(
                p("max_blocks"),
                format!("{max_blocks} must be between 1 and 100000000"),
            ));
        }
        let load_weight = self.load_weight.unwrap_or(d.load_weight);
        if !(0.0..=1000.0).contains(&load_weight) {
            return Err(ConfigError::new(
                p("load_weight"),
                format!("{load_weight} must be between 0 and 1000"),
            ));
        }
        Ok(CacheAwareConfig {
            block_chars,
            max_blocks,
            load_weight,
        })
    }
}

/// The API a pool's backends speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Openai,
    Anthropic,
}

/// How a pool of OpenAI-speaking backends takes Anthropic Messages requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessagesMode {
    /// The backends serve `/v1/messages` themselves (vLLM, llama-server, Ollama).
    Native,
    /// The gateway translates to `/v1/chat/completions` and back.
    #[default]
    Translate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default = "yes")]
    verify: bool,
}

impl Default for RawUpstreamTls {
    fn default() -> Self {
        Self {
            ca_file: None,
            verify: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Url(String),
    Weighted(WeightedBackend),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedBackend {
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect_ms: Option<u64>,
    first_byte_ms: Option<u64>,
    idle_ms: Option<u64>,
    total_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "default_health_path")]
    path: String,
    #[serde(default = "default_health_interval")]
    interval_ms: u64,
    #[serde(default = "default_health_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_unhealthy_after")]
    unhealthy_after: u32,
    #[serde(default = "one")]
    healthy_after: u32,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval() -> u64 {
    2_000
}
fn default_health_timeout() -> u64 {
    1_000
}
fn default_unhealthy_after() -> u32 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScrape {
    #[serde(default = "default_metrics_path")]
    path: String,
    #[serde(default = "default_scrape_interval")]
    interval_ms: u64,
}

fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_scrape_interval() -> u64 {
    500
}

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    ConsistentHash,
    VllmLoad,
    /// Prefix-cache affinity weighed against load.
    CacheAware,
}

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (lower-cased name).
    Header(String),
    /// The principal's user (falls back to the tenant).
    User,
    /// The first N bytes of the request body's prompt.
    PromptPrefix(usize),
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone)]
pub struct ScrapeConfig {
    pub path: String,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Request sent → response headers.
    pub first_byte: Duration,
    /// Longest gap between two body chunks.
    pub idle: Duration,
    /// Request start → last byte.
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<BackendUrl>,
    pub api_key: Option<Secret>,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub health: Option<HealthConfig>,
    pub metrics: Option<ScrapeConfig>,
    pub retries: u32,
    pub timeouts: Timeouts,
    pub model_map: BTreeMap<String, String>,
    pub tls: UpstreamTls,
    pub protocol: Protocol,
    /// For `protocol: openai`; an Anthropic pool takes Messages natively.
    pub messages: MessagesMode,
    /// Sent as `anthropic-version` to a `protocol: anthropic` pool.
    pub anthropic_version: String,
    pub cache_aware: CacheAwareConfig,
    pub credentials: Credentials,
}

/// How `https://` backends of a pool are verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// DER certificates from `tls.ca_file`: the only roots trusted for this pool when set;
    /// otherwise the system's.
    pub ca: Option<Vec<Vec<u8>>>,
    /// Certificate and host name checks; off only for lab setups with self-signed backends.
    pub verify: bool,
}

/// A parsed backend URL: `http(s)://host[:port][/base/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Prepended to the request path; empty or starting with `/`, never ending with `/`.
    pub base_path: String,
    /// What the upstream sees in `Host`: the host, plus the port when it is not the default.
    pub authority: String,
    pub weight: u32,
}

fn validate_backends(base: &str, raw: Vec<RawBackend>) -> Result<Vec<BackendUrl>, ConfigError> {
    let mut backends = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        let path = format!("{base}.backends[{i}]");
        let (url, weight) = match b {
            RawBackend::Url(u) => (u, 1),
            RawBackend::Weighted(w) => (w.url, w.weight),
        };
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(ConfigError::new(
                format!("{path}.weight"),
                format!("{weight} must be between 1 and {MAX_WEIGHT}"),
            ));
        }
        let mut parsed = parse_backend(&path, &url)?;
        parsed.weight = weight;
        backends.push(parsed);
    }
    Ok(backends)
}

impl RawPool {
    pub(super) fn validate(
        mut self,
        name: &str,
        env: EnvLookup<'_>,
    ) -> Result<PoolConfig, ConfigError> {
        let base = format!("pools.{name}");
        let valid_name = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if name.is_empty() || !valid_name {
            return Err(ConfigError::new(
                base,
                "pool names may contain only letters, digits, '-' and '_'",
            ));
        }
        if self.backends.is_empty() {
            return Err(ConfigError::new(
                format!("{base}.backends"),
                "must list at least one URL",
            ));
        }
        let (messages, anthropic_version) = self.api_settings(&base)?;
        let cache_aware = cache_aware_settings(self.cache_aware.take(), self.balance, &base)?;
        let backends = validate_backends(&base, self.backends)?;
        let api_key = match &self.api_key {
            Some(raw) => Some(secret::resolve(&format!("{base}.api_key"), raw, env)?),
            None => None,
        };
        let hash_key = parse_hash_key(&format!("{base}.hash_key"), self.hash_key.as_deref())?;
        let health = self.health.map(|h| h.validate(&base)).transpose()?;
        let metrics = match (self.metrics, self.balance) {
            (Some(m), _) => Some(m.validate(&base)?),
            (None, Balance::VllmLoad) => Some(ScrapeConfig {
                path: default_metrics_path(),
                interval: Duration::from_millis(default_scrape_interval()),
            }),
            (None, _) => None,
        };
        let retries = self.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            return Err(ConfigError::new(
                format!("{base}.retries"),
                format!("{retries} must be between 0 and {MAX_RETRIES}"),
            ));
        }
        Ok(PoolConfig {
            name: name.to_string(),
            backends,
            api_key,
            balance: self.balance,
            hash_key,
            health,
            metrics,
            retries,
            timeouts: self.timeouts.validate(&base)?,
            model_map: self.model_map,
            tls: self.tls.validate(&base)?,
            protocol: self.protocol,
            messages,
            anthropic_version,
            cache_aware,
            credentials: self.credentials,
        })
    }
}

impl RawPool {
    /// How the pool takes Messages, and the `anthropic-version` it is sent.
    fn api_settings(&self, base: &str) -> Result<(MessagesMode, String), ConfigError> {
        let messages = match (self.protocol, self.messages) {
            (Protocol::Anthropic, Some(MessagesMode::Translate)) => {
                return Err(ConfigError::new(
                    format!("{base}.messages"),
                    "an anthropic pool takes Messages natively; remove `messages: translate`",
                ))
            }
            (Protocol::Anthropic, _) => MessagesMode::Native,
            (Protocol::Openai, m) => m.unwrap_or_default(),
        };
        let anthropic_version = self
            .anthropic_version
            .clone()
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
        if anthropic_version.is_empty() || http::HeaderValue::from_str(&anthropic_version).is_err()
        {
            return Err(ConfigError::new(
                format!("{base}.anthropic_version"),
                "must be a header value such as 2023-06-01",
            ));
        }
        Ok((messages, anthropic_version))
    }
}

/// `cache_aware:` settings, which only a `balance: cache_aware` pool may have.
fn cache_aware_settings(
    raw: Option<RawCacheAware>,
    balance: Balance,
    base: &str,
) -> Result<CacheAwareConfig, ConfigError> {
    match (raw, balance) {
        (None, _) => Ok(CacheAwareConfig::default()),
        (Some(c), Balance::CacheAware) => c.validate(base),
        (Some(_), _) => Err(ConfigError::new(
            format!("{base}.cache_aware"),
            "applies only with `balance: cache_aware`",
        )),
    }
}

impl RawUpstreamTls {
    fn validate(self, base: &str) -> Result<UpstreamTls, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let ca = match self.ca_file {
            None => None,
            Some(f) => {
                let path = format!("{base}.tls.ca_file");
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(&f)
                    .map_err(|e| ConfigError::new(&path, format!("cannot read \"{f}\": {e}")))?
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError::new(&path, format!("\"{f}\": {e}")))?;
                if certs.is_empty() {
                    return Err(ConfigError::new(
                        path,
                        format!("\"{f}\" holds no PEM certificate"),
                    ));
                }
                Some(certs)
            }
        };
        Ok(UpstreamTls {
            ca,
            verify: self.verify,
        })
    }
}

fn parse_hash_key(path: &str, raw: Option<&str>) -> Result<HashKey, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HashKey::User);
    };
    if let Some(h) = raw.strip_prefix("header:") {
        if h.is_empty() || http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return Err(ConfigError::new(
                path,
                format!("\"{h}\" is not a header name"),
            ));
        }
        return Ok(HashKey::Header(h.to_ascii_lowercase()));
    }
    match raw.split_once(':') {
        None if raw == "user" => Ok(HashKey::User),
        None if raw == "prompt_prefix" => Ok(HashKey::PromptPrefix(DEFAULT_PROMPT_PREFIX_BYTES)),
        Some(("prompt_prefix", n)) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(HashKey::PromptPrefix(n)),
            _ => Err(ConfigError::new(
                path,
                format!("\"{n}\" is not a positive byte count"),
            )),
        },
        _ => Err(ConfigError::new(
            path,
            format!("\"{raw}\" must be header:NAME, user, or prompt_prefix[:BYTES]"),
        )),
    }
}

fn ms(path: String, v: u64) -> Result<Duration, ConfigError> {
    if !(1..=MAX_TIMEOUT_MS).contains(&v) {
        return Err(ConfigError::new(
            path,
            format!("{v} must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(Duration::from_millis(v))
}

impl RawTimeouts {
    fn validate(self, base: &str) -> Result<Timeouts, ConfigError> {
        let p = |f: &str| format!("{base}.timeouts.{f}");
        Ok(Timeouts {
            connect: ms(
                p("connect_ms"),
                self.connect_ms.unwrap_or(DEFAULT_CONNECT_MS),
            )?,
            first_byte: ms(
                p("first_byte_ms"),
                self.first_byte_ms.unwrap_or(DEFAULT_FIRST_BYTE_MS),
            )?,
            idle: ms(p("idle_ms"), self.idle_ms.unwrap_or(DEFAULT_IDLE_MS))?,
            total: ms(p("total_ms"), self.total_ms.unwrap_or(DEFAULT_TOTAL_MS))?,
        })
    }
}

impl RawHealth {
    fn validate(self, base: &str) -> Result<HealthConfig, ConfigError> {
        let p = |f: &str| format!("{base}.health.{f}");
        if !self.path.starts_with('/') {
            return Err(ConfigError::new(p("path"), "must start with /"));
        }
        for (f, v) in [
            ("unhealthy_after", self.unhealthy_after),
            ("healthy_after", self.healthy_after),
        ] {
            if !(1..=100).contains(&v) {
                return Err(ConfigError::new(
                    p(f),
                    format!("{v} must be between 1 and 100"),
                ));
            }
        }
        Ok(HealthConfig {
            path: self.path,
            interval: ms(p("interval_ms"), self.interval_ms)?,
            timeout: ms(p("timeout_ms"), self.timeout_ms)?,
            unhealthy_after: self.unhealthy_after,
            healthy_after: self.healthy_after,
        })
    }
}

impl RawScrape {
    fn validate(self, base: &str) -> Result<ScrapeConfig, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(ConfigError::new(
                format!("{base}.metrics.path"),
                "must start with /",
            ));
        }
        Ok(ScrapeConfig {
            path: self.path,
            interval: ms(format!("{base}.metrics.interval_ms"), self.interval_ms)?,
        })
    }
}

/// Parses `http(s)://host[:port][/path]`; user-info, query and fragment are refused.
pub fn parse_backend(path: &str, raw: &str) -> Result<BackendUrl, ConfigError> {
    let bad = |why: &str| ConfigError::new(path, format!("\"{raw}\" {why}"));
    let uri: http::Uri = raw.parse().map_err(|_| bad("is not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let auth = uri.authority().ok_or_else(|| bad("has no host"))?;
    if auth.as_str().contains('@') {
        return Err(bad("must not carry credentials; use api_key"));
    }
    if uri.query().is_some() || raw.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = auth.port_u16().unwrap_or(default_port);
    let authority = if port == default_port {
        auth.host().to_string()
    } else {
        format!("{}:{port}", auth.host())
    };
    Ok(BackendUrl {
        tls,
        host,
        port,
        base_path: uri.path().trim_end_matches('/').to_string(),
        authority,
        weight: 1,
    })
}
