//! The config a snapshot runs on: the file's keys and tenants, then the store's. File entries
//! win a clash; a store key whose secret is also in the file is refused, by its id.

use std::collections::HashSet;

use super::{KeyRecord, Records};
use crate::config::limits::{budget_from_json, limits_from_json};
use crate::config::{Budget, Config, KeyEntry, Limits, Principal, TenantConfig};
use crate::glob::Glob;

/// Why a store record was left out of the running config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `key_…` or `tenant:<name>`.
    pub id: String,
    pub reason: String,
    /// A store key with a file key's secret: refused at start and at reload.
    pub clash: bool,
}

/// `base` (the file) joined with the store's records; with what was left out and why.
pub fn effective(base: &Config, records: &Records) -> (Config, Vec<Skipped>) {
    let mut config = base.clone();
    let mut skipped = Vec::new();
    let file_digests: HashSet<[u8; 32]> = base
        .keys
        .iter()
        .flat_map(|k| std::iter::once(k.digest).chain(k.retiring.iter().map(|r| r.0)))
        .collect();
    let mut tenants: HashSet<String> = base.tenants.iter().map(|t| t.name.clone()).collect();
    for t in &records.tenants {
        if !tenants.insert(t.name.clone()) {
            skipped.push(Skipped {
                id: format!("tenant:{}", t.name),
                reason: "the config file defines this tenant; its entry there applies".into(),
                clash: false,
            });
            continue;
        }
        match rules(t.spec.limits.as_ref(), t.spec.budget.as_ref()) {
            Ok((limits, budget)) => config.tenants.push(TenantConfig {
                name: t.name.clone(),
                limits,
                budget,
            }),
            Err(reason) => skipped.push(Skipped {
                id: format!("tenant:{}", t.name),
                reason,
                clash: false,
            }),
        }
    }
    let pool_names: Vec<&str> = base.pools.iter().map(|p| p.name.as_str()).collect();
    for k in records.keys.iter().filter(|k| k.revoked_at.is_none()) {
        let index = config.keys.len();
        match entry(k, index, &pool_names, &file_digests) {
            Ok(e) => config.keys.push(e),
            Err(s) => skipped.push(s),
        }
    }
    (config, skipped)
}

/// The file's config joined with `records`, refused when a store key has a file key's secret
/// (at start and at reload); what else was left out is logged by the caller.
pub fn checked(
    base: &Config,
    records: &Records,
) -> Result<(Config, Vec<Skipped>), crate::errors::ConfigError> {
    let (config, skipped) = effective(base, records);
    match skipped.iter().find(|s| s.clash) {
        Some(c) => Err(crate::errors::ConfigError::new("keys", c.reason.clone())),
        None => Ok((config, skipped)),
    }
}

/// Limits and budget given as JSON (a store key's or tenant's), validated as in the file.
fn rules(
    limits: Option<&serde_json::Value>,
    budget: Option<&serde_json::Value>,
) -> Result<(Limits, Budget), String> {
    let limits = match limits {
        Some(v) => limits_from_json("limits", v).map_err(|e| e.to_string())?,
        None => Limits::default(),
    };
    let budget = match budget {
        Some(v) => budget_from_json("budget", v).map_err(|e| e.to_string())?,
        None => Budget::default(),
    };
    Ok((limits, budget))
}

fn digest_of(hex_digest: &str) -> Result<[u8; 32], String> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut d)
        .map_err(|_| "a stored digest is not 64 hex".to_string())?;
    Ok(d)
}

/// Retiring secrets' digests, each with the time it stops (ms).
type Retiring = Vec<([u8; 32], u64)>;

/// A store key's current secret and its retiring ones; a secret the file also has is a clash.
fn secrets(
    k: &KeyRecord,
    file_digests: &HashSet<[u8; 32]>,
) -> Result<([u8; 32], Retiring), Skipped> {
    let skip = |reason: String, clash: bool| Skipped {
        id: k.id.clone(),
        reason,
        clash,
    };
    let mut current = None;
    let mut retiring = Vec::new();
    for s in &k.secrets {
        let d = digest_of(&s.digest).map_err(|e| skip(e, false))?;
        if file_digests.contains(&d) {
            let msg = format!(
                "store key {} has the same secret as a key in the config file; remove one",
                k.id
            );
            return Err(skip(msg, true));
        }
        match s.until {
            None => current = Some(d),
            Some(t) => retiring.push((d, t)),
        }
    }
    // only retiring secrets left (a rotation in progress, seen mid-way): the newest serves
    let newest = retiring.iter().max_by_key(|r| r.1).map(|r| r.0);
    let digest = current
        .or(newest)
        .ok_or_else(|| skip("no secret".into(), false))?;
    Ok((digest, retiring))
}

/// The runtime entry of a store key at position `index`.
fn entry(
    k: &KeyRecord,
    index: usize,
    pool_names: &[&str],
    file_digests: &HashSet<[u8; 32]>,
) -> Result<KeyEntry, Skipped> {
    let (digest, retiring) = secrets(k, file_digests)?;
    let (limits, budget) =
        rules(k.spec.limits.as_ref(), k.spec.budget.as_ref()).map_err(|reason| Skipped {
            id: k.id.clone(),
            reason,
            clash: false,
        })?;
    // a pool the file no longer has is dropped from the allow-list: the key can pin less,
    // never more
    let pools = k.spec.pools.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|n| pool_names.iter().position(|p| p == n))
            .collect()
    });
    Ok(KeyEntry {
        digest,
        principal: Principal {
            tenant: k.tenant.as_str().into(),
            user: k.user.as_str().into(),
            key_index: index,
            key_id: k.id.as_str().into(),
        },
        models: k
            .spec
            .models
            .as_ref()
            .map(|m| m.iter().map(|g| Glob::new(g)).collect()),
        pools,
        limits,
        budget,
        expires_ms: k.expires_at,
        retiring,
    })
}

#[cfg(test)]
mod tests;
