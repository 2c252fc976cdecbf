//! The control plane's data: keys and tenants managed at runtime, as the store holds them, and
//! how they join the file's keys and tenants into the config a snapshot is built from. Pure:
//! the store (`store.rs`) reads and writes these records, the admin API (`admin/`) serves them.

pub mod input;
pub mod merge;
pub mod secret;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a store key may use: the admin API's fields, kept as given (validated). Read leniently
/// from the store: a field a newer llmedge added is ignored, not a reason to stop loading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Value>,
}

/// A tenant's limits and budget, as in the file's `tenants:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Value>,
}

/// One accepted secret of a key: its SHA-256 digest (hex), and until when (ms) if retiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub digest: String,
    pub until: Option<u64>,
}

/// A key as the store holds it. Times are ms since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub user: String,
    pub hint: String,
    pub spec: KeySpec,
    pub expires_at: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
    pub revoked_at: Option<u64>,
    pub secrets: Vec<SecretRecord>,
}

impl KeyRecord {
    /// `active`, `revoked` or `expired` at `now`.
    pub fn status(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        }
    }

    /// The record as the admin API shows it: never a secret or a digest.
    pub fn to_json(&self, now: u64) -> Value {
        use crate::clock::rfc3339;
        let retiring: Vec<Value> = self
            .secrets
            .iter()
            .filter_map(|s| s.until.filter(|t| *t > now))
            .map(|t| serde_json::json!({ "until": rfc3339(t) }))
            .collect();
        serde_json::json!({
            "object": "key",
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "user": (!self.user.is_empty()).then_some(&self.user),
            "hint": self.hint,
            "status": self.status(now),
            "models": self.spec.models,
            "pools": self.spec.pools,
            "limits": self.spec.limits.clone().unwrap_or_else(|| serde_json::json!({})),
            "budget": self.spec.budget.clone().unwrap_or_else(|| serde_json::json!({})),
            "expires_at": self.expires_at.map(rfc3339),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "revoked_at": self.revoked_at.map(rfc3339),
            "retiring_secrets": retiring,
        })
    }
}

/// A tenant as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub spec: TenantSpec,
    pub created_at: u64,
    pub updated_at: u64,
}

impl TenantRecord {
    pub fn to_json(&self) -> Value {
        use crate::clock::rfc3339;
        serde_json::json!({
            "object": "tenant",
            "name": self.name,
            "source": "store",
            "limits": self.spec.limits.clone().unwrap_or_else(|| serde_json::json!({})),
            "budget": self.spec.budget.clone().unwrap_or_else(|| serde_json::json!({})),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        })
    }
}

/// Everything the store holds at one revision (ordered by id and name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Records {
    pub revision: i64,
    pub keys: Vec<KeyRecord>,
    pub tenants: Vec<TenantRecord>,
}

impl Records {
    pub fn key(&self, id: &str) -> Option<&KeyRecord> {
        self.keys
            .binary_search_by(|k| k.id.as_str().cmp(id))
            .ok()
            .and_then(|i| self.keys.get(i))
    }
}
