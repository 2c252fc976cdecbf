//! What this process counted while the shared store was away, by tenant (one merge call each,
//! so every call's keys share a hash tag), to add to the shared counters when it is back.

use std::collections::HashMap;

use serde_json::json;

use super::wire::Wired;

/// One tenant's counts: requests and tokens per window key, micro-dollars per spend key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TenantCounts {
    windows: HashMap<String, (u64, u64)>,
    spends: HashMap<String, u64>,
}

#[derive(Debug, Default)]
pub struct Pending {
    tenants: HashMap<String, TenantCounts>,
}

impl Pending {
    /// Adds `requests` and `tokens` to every slot window of `w`, `micro` to every scope's spend.
    pub fn add(&mut self, tenant: &str, w: &Wired, requests: u64, tokens: u64, micro: u64) {
        if requests == 0 && tokens == 0 && micro == 0 {
            return;
        }
        let t = self.tenants.entry(tenant.to_string()).or_default();
        for (window, _) in &w.slots {
            let e = t.windows.entry(w.keys[*window - 1].clone()).or_default();
            e.0 += requests;
            e.1 += tokens;
        }
        if micro > 0 {
            for (spend, _) in &w.spends {
                *t.spends.entry(w.keys[*spend - 1].clone()).or_default() += micro;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Takes every tenant's counts out, to be merged (and put back with [`Pending::restore`]
    /// if the merge fails).
    pub fn take(&mut self) -> Vec<(String, TenantCounts)> {
        self.tenants.drain().collect()
    }

    pub fn restore(&mut self, tenant: String, c: TenantCounts) {
        let t = self.tenants.entry(tenant).or_default();
        for (k, (r, tok)) in c.windows {
            let e = t.windows.entry(k).or_default();
            e.0 += r;
            e.1 += tok;
        }
        for (k, m) in c.spends {
            *t.spends.entry(k).or_default() += m;
        }
    }
}

impl TenantCounts {
    /// The merge call's keys and argument.
    pub fn merge_call(&self) -> (Vec<String>, String) {
        let mut keys = Vec::new();
        let mut w = Vec::new();
        for (k, (r, t)) in &self.windows {
            keys.push(k.clone());
            w.push(json!([keys.len(), r, t]));
        }
        let mut s = Vec::new();
        for (k, m) in &self.spends {
            keys.push(k.clone());
            s.push(json!([keys.len(), m]));
        }
        (keys, json!({"w": w, "s": s}).to_string())
    }
}
