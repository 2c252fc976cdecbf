//! The YAML file schema and its validation into a typed [`Config`]; no Pingora types here.

mod keys;
pub mod limits;
pub mod pool;
mod route;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use crate::endpoint::EndpointSet;
use crate::errors::ConfigError;
use crate::glob::Glob;
pub use keys::{KeyEntry, Principal};
pub use limits::{Budget, Limits, Price};
use limits::{RawBudget, RawLimits, RawTenant};
use pool::RawPool;
pub use pool::{
    parse_backend, BackendUrl, Balance, CacheAwareConfig, Credentials, HashKey, HealthConfig,
    MessagesMode, PoolConfig, Protocol, ScrapeConfig, Timeouts,
};
pub use route::Route;
pub use secret::{EnvLookup, Secret};
use server::RawServer;
pub use server::{CorsConfig, ServerConfig, TlsConfig};
use state::RawState;
pub use state::{OnError, RedisConfig, StateConfig};
pub use store::{AdminConfig, StoreConfig, StoreUrl};
use store::{RawAdmin, RawStore};

const MAX_CONFIG_BYTES: usize = 16_777_216; // 16 MiB

// === file schema ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    default_model: Option<String>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    pricing: Option<serde_yaml::Mapping>,
    #[serde(default)]
    state: Option<RawState>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    admin: RawAdmin,
    /// Path prefixes forwarded to a pool as they are (files, batches, fine-tuning...).
    #[serde(default)]
    passthrough: Vec<RawPassthrough>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key: String,
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    pools: Option<Vec<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    budget: RawBudget,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    pool: String,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    fallbacks: Vec<String>,
    /// The endpoints this route serves; absent = all.
    #[serde(default)]
    endpoints: Option<Vec<String>>,
    /// Accept bearer tokens that are not virtual keys (forwarded to `credentials: passthrough`
    /// pools), each caller counted as its own identity.
    #[serde(default)]
    anonymous: bool,
    /// Limits of each anonymous caller on this route.
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassthrough {
    path: String,
    pool: String,
}

// === typed config ===

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub keys: Vec<KeyEntry>,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<Route>,
    pub default_model: Option<String>,
    pub tenants: Vec<TenantConfig>,
    pub pricing: Vec<(Glob, Price)>,
    /// `backend: file`: where counters are saved (`None` with `enabled: false` or redis).
    pub state: Option<StateConfig>,
    /// `backend: redis`: the server every gateway shares counters on.
    pub shared: Option<RedisConfig>,
    /// The control plane's database (keys and tenants managed at runtime).
    pub store: StoreConfig,
    pub admin: AdminConfig,
    /// Path prefixes forwarded untouched to a pool, longest first.
    pub passthrough: Vec<Passthrough>,
}

/// `passthrough[]`: requests under `path` (any method) go to `pool` as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passthrough {
    pub path: String,
    pub pool: usize,
}

impl Config {
    /// The pass-through entry whose path prefix `path` is under (`/v1/files` covers
    /// `/v1/files/abc/content`, not `/v1/filesystem`).
    pub fn passthrough_for(&self, path: &str) -> Option<&Passthrough> {
        self.passthrough.iter().find(|p| {
            path.strip_prefix(p.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Whether some route takes callers' own tokens (`anonymous: true`).
    pub fn has_anonymous_routes(&self) -> bool {
        self.routes.iter().any(|r| r.anonymous)
    }
}

/// A tenant's shared limits and budget (`tenants.<name>`).
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: String,
    pub limits: Limits,
    pub budget: Budget,
}

impl Config {
    /// Parses and validates YAML, resolving secrets through `env`.
    pub fn from_yaml(text: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new("config", "file is larger than 16 MiB"));
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "config".to_string()
            } else {
                path
            };
            let inner = first_line(&e.into_inner().to_string());
            // serde_yaml prefixes its own (shorter) path; keep one, the more precise
            let msg = match inner.split_once(": ") {
                Some((p, rest)) if path.starts_with(p) => rest.to_string(),
                _ => inner,
            };
            ConfigError::new(path, msg)
        })?;
        raw.validate(env)
    }

    /// Reads the file and validates it with the process environment.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, format!("cannot read config: {e}")))?;
        Self::from_yaml(&text, &|k| std::env::var(k).ok())
    }

    pub fn pool(&self, index: usize) -> Option<&PoolConfig> {
        self.pools.get(index)
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

impl RawConfig {
    fn validate(self, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let mut pools = Vec::with_capacity(self.pools.len());
        for (name, pool) in self.pools {
            pools.push(pool.validate(&name, env)?);
        }
        let pool_names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let keys = validate_keys(self.keys, &pool_names, env)?;
        let states = self.state.unwrap_or_default().validate(env)?;
        let routes = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(i, &pool_names))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(m) = &self.default_model {
            if !routes.iter().any(|r| m.starts_with(&r.prefix)) {
                return Err(ConfigError::new(
                    "default_model",
                    format!("\"{m}\" matches no route prefix"),
                ));
            }
        }
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (name, t) in self.tenants {
            let base = format!("tenants.{name}");
            tenants.push(TenantConfig {
                limits: t.limits.validate(&format!("{base}.limits"))?,
                budget: t.budget.validate(&format!("{base}.budget"))?,
                name,
            });
        }
        check_anonymous(&routes, &pools)?;
        let passthrough = validate_passthrough(self.passthrough, &pool_names)?;
        Ok(Config {
            passthrough,
            server,
            keys,
            pools,
            routes,
            default_model: self.default_model,
            tenants,
            pricing: limits::parse_pricing(self.pricing)?,
            state: states.file,
            shared: states.redis,
            store: self.store.validate(env)?,
            admin: self.admin.validate(env)?,
        })
    }
}

impl RawRoute {
    /// `routes[i]`, with its pool and fallbacks resolved to indexes of `pools`.
    fn validate(self, i: usize, pools: &[&str]) -> Result<Route, ConfigError> {
        let unknown = |path: String, name: &str| {
            ConfigError::new(
                path,
                format!("unknown pool \"{name}\" (known: {})", pools.join(", ")),
            )
        };
        let pool = pools
            .iter()
            .position(|p| *p == self.pool)
            .ok_or_else(|| unknown(format!("routes[{i}].pool"), &self.pool))?;
        let mut fallbacks = Vec::with_capacity(self.fallbacks.len());
        for (j, f) in self.fallbacks.iter().enumerate() {
            let path = format!("routes[{i}].fallbacks[{j}]");
            let fp = pools
                .iter()
                .position(|p| p == f)
                .ok_or_else(|| unknown(path.clone(), f))?;
            if fp == pool || fallbacks.contains(&fp) {
                return Err(ConfigError::new(
                    path,
                    format!("pool \"{f}\" is already in this route's chain"),
                ));
            }
            fallbacks.push(fp);
        }
        let endpoints = match &self.endpoints {
            None => EndpointSet::all(),
            Some(names) => {
                EndpointSet::parse(names.iter().map(String::as_str)).map_err(|(bad, known)| {
                    ConfigError::new(
                        format!("routes[{i}].endpoints"),
                        format!("unknown endpoint \"{bad}\" (known: {known})"),
                    )
                })?
            }
        };
        Ok(Route {
            prefix: self.prefix,
            pool,
            pool_name: self.pool,
            strip_prefix: self.strip_prefix,
            fallbacks,
            endpoints,
            anonymous: self.anonymous,
            limits: self.limits.validate(&format!("routes[{i}].limits"))?,
        })
    }
}

/// An anonymous route forwards callers' own tokens: every pool it can reach must let the
/// upstream authenticate them, or a stranger would spend the pool's key.
fn check_anonymous(routes: &[Route], pools: &[PoolConfig]) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate().filter(|(_, r)| r.anonymous) {
        for p in std::iter::once(r.pool).chain(r.fallbacks.iter().copied()) {
            if pools[p].credentials != Credentials::Passthrough {
                return Err(ConfigError::new(
                    format!("routes[{i}].anonymous"),
                    format!(
                        "pool \"{}\" must have `credentials: passthrough` to take callers' own tokens",
                        pools[p].name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `passthrough[i]`: a path prefix and a known pool; longest prefix first, so the most
/// specific entry wins.
fn validate_passthrough(
    raw: Vec<RawPassthrough>,
    pool_names: &[&str],
) -> Result<Vec<Passthrough>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let path = p.path.trim_end_matches('/').to_string();
        if !path.starts_with('/') || path.len() < 2 {
            return Err(ConfigError::new(
                format!("passthrough[{i}].path"),
                format!("\"{}\" must be a path prefix such as /v1/files", p.path),
            ));
        }
        let Some(pool) = pool_names.iter().position(|n| *n == p.pool) else {
            return Err(ConfigError::new(
                format!("passthrough[{i}].pool"),
                format!(
                    "unknown pool \"{}\" (known: {})",
                    p.pool,
                    pool_names.join(", ")
                ),
            ));
        };
        out.push(Passthrough { path, pool });
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.path.len()));
    Ok(out)
}

/// `keys[i].models`: non-empty globs.
fn validate_models(i: usize, list: Option<Vec<String>>) -> Result<Option<Vec<Glob>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    let mut globs = Vec::with_capacity(list.len());
    for (j, g) in list.into_iter().enumerate() {
        if g.is_empty() {
            return Err(ConfigError::new(
                format!("keys[{i}].models[{j}]"),
                "must not be empty",
            ));
        }
        globs.push(Glob::new(&g));
    }
    Ok(Some(globs))
}

/// `keys[i].pools`: names of configured pools, as indexes.
fn validate_pin_pools(
    i: usize,
    list: Option<Vec<String>>,
    pool_names: &[&str],
) -> Result<Option<Vec<usize>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    let mut idx = Vec::with_capacity(list.len());
    for (j, name) in list.iter().enumerate() {
        let Some(p) = pool_names.iter().position(|n| n == name) else {
            return Err(ConfigError::new(
                format!("keys[{i}].pools[{j}]"),
                format!("unknown pool \"{name}\" (known: {})", pool_names.join(", ")),
            ));
        };
        idx.push(p);
    }
    Ok(Some(idx))
}

fn validate_keys(
    raw: Vec<RawKey>,
    pool_names: &[&str],
    env: EnvLookup<'_>,
) -> Result<Vec<KeyEntry>, ConfigError> {
    let mut seen = HashSet::new();
    let mut keys = Vec::with_capacity(raw.len());
    for (i, k) in raw.into_iter().enumerate() {
        let digest = secret::resolve_key_digest(&format!("keys[{i}].key"), &k.key, env)?;
        if !seen.insert(digest) {
            return Err(ConfigError::new(
                format!("keys[{i}].key"),
                "the same key is listed twice",
            ));
        }
        if k.tenant.trim().is_empty() {
            return Err(ConfigError::new(
                format!("keys[{i}].tenant"),
                "must not be empty",
            ));
        }
        let models = validate_models(i, k.models)?;
        let pools = validate_pin_pools(i, k.pools, pool_names)?;
        let limits = k.limits.validate(&format!("keys[{i}].limits"))?;
        let budget = k.budget.validate(&format!("keys[{i}].budget"))?;
        keys.push(KeyEntry {
            limits,
            budget,
            pools,
            digest,
            principal: Principal {
                tenant: k.tenant.into(),
                user: k.user.unwrap_or_default().into(),
                key_index: i,
                key_id: KeyEntry::file_id(&digest),
            },
            models,
            expires_ms: None,
            retiring: Vec::new(),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests;
