//! The admin API's request bodies, parsed strictly (unknown fields refused) and validated
//! against the running config, each failure naming its field.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{KeyRecord, KeySpec, TenantSpec};
use crate::config::limits::{budget_from_json, limits_from_json};

const MAX_NAME: usize = 128;
const MAX_GLOB: usize = 256;
const MAX_LIST: usize = 1_000;
/// The longest grace a rotation may give the old secret: 30 days.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;

/// A refused input: the field (`limits.rpm`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub param: String,
    pub msg: String,
}

impl InputError {
    fn new(param: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            msg: msg.into(),
        }
    }
}

/// What inputs are checked against: the file's pools and tenants, and the time.
pub struct Catalog<'a> {
    pub pools: Vec<&'a str>,
    pub now_ms: u64,
}

/// `POST /admin/v1/keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNewKey {
    name: String,
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    pools: Option<Vec<String>>,
    #[serde(default)]
    limits: Option<Value>,
    #[serde(default)]
    budget: Option<Value>,
    #[serde(default)]
    expires_at: Option<String>,
    /// An existing secret to keep (a key moved from the file into the store).
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub name: String,
    pub tenant: String,
    pub user: String,
    pub spec: KeySpec,
    pub expires_at: Option<u64>,
    pub secret: Option<String>,
}

/// `PATCH /admin/v1/keys/{id}`: absent fields stay, `null` clears.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyPatch {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pools: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    limits: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub models: Option<Option<Vec<String>>>,
    pub pools: Option<Option<Vec<String>>>,
    pub limits: Option<Option<Value>>,
    pub budget: Option<Option<Value>>,
    pub expires_at: Option<Option<u64>>,
}

/// RFC 7386 merge patch: objects merge field by field, `null` removes a field, anything else
/// replaces. An object left empty is no rule at all.
pub fn merge_patch(target: Option<&Value>, patch: &Value) -> Option<Value> {
    match patch {
        Value::Null => None,
        Value::Object(p) => {
            let mut out = match target {
                Some(Value::Object(t)) => t.clone(),
                _ => serde_json::Map::new(),
            };
            for (k, v) in p {
                match merge_patch(out.get(k), v) {
                    Some(v) => {
                        out.insert(k.clone(), v);
                    }
                    None => {
                        out.remove(k);
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        other => Some(other.clone()),
    }
}

/// `patch` (a limits or budget object, `None` = `null`) merged into `old`.
fn merged(old: &Option<Value>, patch: &Option<Value>) -> Option<Value> {
    merge_patch(old.as_ref(), patch.as_ref().unwrap_or(&Value::Null))
}

/// The patch without its `null`s: what it adds must be valid on its own (what it removes
/// leaves a valid rule).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl KeyPatch {
    /// `rec` with the patch applied (limits and budget merged, RFC 7386).
    pub fn apply(&self, rec: &KeyRecord) -> KeyRecord {
        let mut r = rec.clone();
        if let Some(n) = &self.name {
            r.name = n.clone();
        }
        if let Some(m) = &self.models {
            r.spec.models = m.clone();
        }
        if let Some(p) = &self.pools {
            r.spec.pools = p.clone();
        }
        if let Some(l) = &self.limits {
            r.spec.limits = merged(&r.spec.limits, l);
        }
        if let Some(b) = &self.budget {
            r.spec.budget = merged(&r.spec.budget, b);
        }
        if let Some(e) = self.expires_at {
            r.expires_at = e;
        }
        r
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotate {
    #[serde(default)]
    grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default, deserialize_with = "present")]
    limits: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<Value>>,
}

/// `PUT` (replace) or `PATCH` (merge) of a tenant: the fields given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPatch {
    pub limits: Option<Option<Value>>,
    pub budget: Option<Option<Value>>,
}

impl TenantPatch {
    /// The spec after this patch: `replace` (PUT) starts from nothing, a PATCH merges
    /// (RFC 7386).
    pub fn apply(&self, old: Option<&TenantSpec>, replace: bool) -> TenantSpec {
        let mut s = match (old, replace) {
            (Some(o), false) => o.clone(),
            _ => TenantSpec::default(),
        };
        if let Some(l) = &self.limits {
            s.limits = merged(&s.limits, l);
        }
        if let Some(b) = &self.budget {
            s.budget = merged(&s.budget, b);
        }
        s
    }
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Strict JSON: unknown fields and type errors name the field.
fn parse<T: DeserializeOwned + Default>(body: &[u8], empty_ok: bool) -> Result<T, InputError> {
    if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let param = match msg.split('`').nth(1) {
            Some(f) if msg.starts_with("unknown field") => f.to_string(),
            _ if msg.starts_with("missing field") => {
                msg.split('`').nth(1).unwrap_or_default().to_string()
            }
            _ if path == "." => "body".to_string(),
            _ => path,
        };
        let msg = msg
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string();
        InputError::new(param, msg)
    })
}

fn text(param: &str, v: &str, max: usize) -> Result<(), InputError> {
    if v.trim().is_empty() {
        return Err(InputError::new(param, "must not be empty"));
    }
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(InputError::new(
            param,
            format!("must be at most {max} characters, without control characters"),
        ));
    }
    Ok(())
}

fn globs(param: &str, list: &[String]) -> Result<(), InputError> {
    if list.len() > MAX_LIST {
        return Err(InputError::new(param, format!("at most {MAX_LIST} globs")));
    }
    for (i, g) in list.iter().enumerate() {
        let bad = g.is_empty()
            || g.len() > MAX_GLOB
            || g.chars().any(|c| c.is_whitespace() || c.is_control())
            || g.contains("**");
        if bad {
            return Err(InputError::new(
                format!("{param}[{i}]"),
                format!("\"{g}\" is not a model glob (non-empty, no spaces, `*` for any run)"),
            ));
        }
    }
    Ok(())
}

fn pools(param: &str, list: &[String], cat: &Catalog<'_>) -> Result<(), InputError> {
    for (i, p) in list.iter().enumerate() {
        if !cat.pools.contains(&p.as_str()) {
            return Err(InputError::new(
                format!("{param}[{i}]"),
                format!("unknown pool \"{p}\" (known: {})", cat.pools.join(", ")),
            ));
        }
    }
    Ok(())
}

fn rules(limits: Option<&Value>, budget: Option<&Value>) -> Result<(), InputError> {
    let named = |e: crate::errors::ConfigError| InputError::new(e.path, e.msg);
    if let Some(v) = limits.filter(|v| !v.is_null()) {
        limits_from_json("limits", &without_nulls(v)).map_err(named)?;
    }
    if let Some(v) = budget.filter(|v| !v.is_null()) {
        budget_from_json("budget", &without_nulls(v)).map_err(named)?;
    }
    Ok(())
}

fn expiry(v: &str, cat: &Catalog<'_>) -> Result<u64, InputError> {
    let t = crate::clock::parse_rfc3339(v)
        .ok_or_else(|| InputError::new("expires_at", format!("\"{v}\" is not an RFC 3339 time")))?;
    if t <= cat.now_ms {
        return Err(InputError::new("expires_at", format!("{v} is in the past")));
    }
    Ok(t)
}

/// A `null` limits or budget is the same as none.
fn some_object(v: Option<Value>) -> Option<Value> {
    v.filter(|v| !v.is_null())
}

pub fn new_key(body: &[u8], cat: &Catalog<'_>) -> Result<NewKey, InputError> {
    let raw: RawNewKey = parse(body, false)?;
    text("name", &raw.name, MAX_NAME)?;
    text("tenant", &raw.tenant, MAX_NAME)?;
    if let Some(u) = &raw.user {
        text("user", u, MAX_NAME)?;
    }
    if let Some(m) = &raw.models {
        globs("models", m)?;
    }
    if let Some(p) = &raw.pools {
        pools("pools", p, cat)?;
    }
    rules(raw.limits.as_ref(), raw.budget.as_ref())?;
    let expires_at = raw
        .expires_at
        .as_deref()
        .map(|e| expiry(e, cat))
        .transpose()?;
    if let Some(k) = &raw.key {
        if k.len() < 16 || k.len() > 256 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InputError::new(
                "key",
                "a chosen secret must be 16 to 256 characters, without spaces",
            ));
        }
    }
    Ok(NewKey {
        name: raw.name,
        tenant: raw.tenant,
        user: raw.user.unwrap_or_default(),
        spec: KeySpec {
            models: raw.models,
            pools: raw.pools,
            limits: some_object(raw.limits),
            budget: some_object(raw.budget),
        },
        expires_at,
        secret: raw.key,
    })
}

pub fn key_patch(body: &[u8], cat: &Catalog<'_>) -> Result<KeyPatch, InputError> {
    let raw: RawKeyPatch = parse(body, false)?;
    if let Some(n) = &raw.name {
        text("name", n, MAX_NAME)?;
    }
    if let Some(Some(m)) = &raw.models {
        globs("models", m)?;
    }
    if let Some(Some(p)) = &raw.pools {
        pools("pools", p, cat)?;
    }
    rules(
        raw.limits.as_ref().and_then(Option::as_ref),
        raw.budget.as_ref().and_then(Option::as_ref),
    )?;
    let expires_at = match raw.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(e)) => Some(Some(expiry(&e, cat)?)),
    };
    Ok(KeyPatch {
        name: raw.name,
        models: raw.models,
        pools: raw.pools,
        limits: raw.limits.map(some_object),
        budget: raw.budget.map(some_object),
        expires_at,
    })
}

/// `POST /admin/v1/keys/{id}/rotate`: the grace the old secret gets, in ms.
pub fn rotate(body: &[u8]) -> Result<u64, InputError> {
    let raw: RawRotate = parse(body, true)?;
    let grace = raw.grace_secs.unwrap_or(0);
    if grace > MAX_GRACE_SECS {
        return Err(InputError::new(
            "grace_secs",
            format!("{grace} is more than {MAX_GRACE_SECS} (30 days)"),
        ));
    }
    Ok(grace * 1000)
}

/// A tenant's name from the path.
pub fn tenant_name(name: &str) -> Result<(), InputError> {
    text("name", name, MAX_NAME)
}

pub fn tenant(body: &[u8]) -> Result<TenantPatch, InputError> {
    let raw: RawTenant = parse(body, true)?;
    rules(
        raw.limits.as_ref().and_then(Option::as_ref),
        raw.budget.as_ref().and_then(Option::as_ref),
    )?;
    Ok(TenantPatch {
        limits: raw.limits.map(some_object),
        budget: raw.budget.map(some_object),
    })
}

#[cfg(test)]
mod tests;
