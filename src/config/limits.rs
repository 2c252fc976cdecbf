//! `limits:`, `budget:`, `tenants:` and `pricing:`.

use serde::Deserialize;

use crate::errors::ConfigError;
use crate::glob::Glob;

const MAX_LIMIT: u64 = 1_000_000_000_000;

/// Request, token and concurrency limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u64>,
    /// Per-model overrides, first match (file order) wins; counted separately.
    pub models: Vec<(Glob, Limits)>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none()
            && self.tpm.is_none()
            && self.concurrency.is_none()
            && self.models.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        self.usd_per_day.is_none() && self.usd_per_month.is_none()
    }
}

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    rpm: Option<u64>,
    tpm: Option<u64>,
    concurrency: Option<u64>,
    /// `{glob: {rpm, tpm, concurrency}}`, kept as YAML to preserve file order.
    #[serde(default)]
    models: Option<serde_yaml::Mapping>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    #[serde(alias = "max_usd_per_day")]
    usd_per_day: Option<f64>,
    #[serde(alias = "max_usd_per_month")]
    usd_per_month: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) budget: RawBudget,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelLimits {
    rpm: Option<u64>,
    tpm: Option<u64>,
    concurrency: Option<u64>,
}

fn check(path: String, v: Option<u64>) -> Result<Option<u64>, ConfigError> {
    match v {
        Some(n) if n == 0 || n > MAX_LIMIT => Err(ConfigError::new(
            path,
            format!("{n} must be between 1 and {MAX_LIMIT}"),
        )),
        other => Ok(other),
    }
}

impl RawLimits {
    pub(super) fn validate(self, base: &str) -> Result<Limits, ConfigError> {
        let p = |f: &str| format!("{base}.{f}");
        let mut models = Vec::new();
        for (k, v) in self.models.unwrap_or_default() {
            let Some(glob) = k.as_str() else {
                return Err(ConfigError::new(
                    p("models"),
                    "keys must be model globs (strings)",
                ));
            };
            let mp = format!("{base}.models.{glob}");
            let raw: RawModelLimits = serde_yaml::from_value(v)
                .map_err(|e| ConfigError::new(mp.clone(), e.to_string()))?;
            models.push((
                Glob::new(glob),
                Limits {
                    rpm: check(format!("{mp}.rpm"), raw.rpm)?,
                    tpm: check(format!("{mp}.tpm"), raw.tpm)?,
                    concurrency: check(format!("{mp}.concurrency"), raw.concurrency)?,
                    models: Vec::new(),
                },
            ));
        }
        Ok(Limits {
            rpm: check(p("rpm"), self.rpm)?,
            tpm: check(p("tpm"), self.tpm)?,
            concurrency: check(p("concurrency"), self.concurrency)?,
            models,
        })
    }
}

impl RawBudget {
    pub(super) fn validate(self, base: &str) -> Result<Budget, ConfigError> {
        for (f, v) in [
            ("usd_per_day", self.usd_per_day),
            ("usd_per_month", self.usd_per_month),
        ] {
            if let Some(x) = v {
                if !x.is_finite() || x < 0.0 {
                    return Err(ConfigError::new(
                        format!("{base}.{f}"),
                        format!("{x} must be a non-negative amount"),
                    ));
                }
            }
        }
        Ok(Budget {
            usd_per_day: self.usd_per_day,
            usd_per_month: self.usd_per_month,
        })
    }
}

/// `pricing:` in file order (first matching glob wins).
pub(super) fn parse_pricing(
    raw: Option<serde_yaml::Mapping>,
) -> Result<Vec<(Glob, Price)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in raw.unwrap_or_default() {
        let Some(glob) = k.as_str() else {
            return Err(ConfigError::new(
                "pricing",
                "keys must be model globs (strings)",
            ));
        };
        let path = format!("pricing.{glob}");
        let price: Price =
            serde_yaml::from_value(v).map_err(|e| ConfigError::new(path.clone(), e.to_string()))?;
        for (f, x) in [
            ("input", Some(price.input)),
            ("output", Some(price.output)),
            ("cached_input", price.cached_input),
        ] {
            if let Some(x) = x {
                if !x.is_finite() || x < 0.0 {
                    return Err(ConfigError::new(
                        format!("{path}.{f}"),
                        format!("{x} must be a non-negative price"),
                    ));
                }
            }
        }
        out.push((Glob::new(glob), price));
    }
    Ok(out)
}

/// A `limits:` object given as JSON (the admin API), validated as in the file; `base` names it
/// in errors (`limits`, `tenants.acme.limits`).
pub fn limits_from_json(base: &str, v: &serde_json::Value) -> Result<Limits, ConfigError> {
    let raw: RawLimits = from_json(base, v)?;
    raw.validate(base)
}

/// A `budget:` object given as JSON, validated as in the file.
pub fn budget_from_json(base: &str, v: &serde_json::Value) -> Result<Budget, ConfigError> {
    let raw: RawBudget = from_json(base, v)?;
    raw.validate(base)
}

fn from_json<T: serde::de::DeserializeOwned>(
    base: &str,
    v: &serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let at = e.path().to_string();
        let path = if at == "." {
            base.to_string()
        } else {
            format!("{base}.{at}")
        };
        ConfigError::new(path, e.into_inner().to_string())
    })
}
