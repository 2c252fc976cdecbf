//! What this process still owes the shared store: counts made here while it was away (by
//! tenant: one merge call each, so every call's keys share a hash tag), and calls that failed
//! or timed out, kept whole to send again (each applies at most once: its last key marks it
//! done, since a call that timed out may have run after all).

use std::collections::HashMap;

use serde_json::json;

use super::wire::{self, Wired};

/// One tenant's counts: requests and tokens per window key, micro-dollars per spend key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TenantCounts {
    windows: HashMap<String, (u64, u64)>,
    spends: HashMap<String, u64>,
}

/// A call to send again: the function, its keys (the done marker last) and its argument.
pub type Call = (&'static str, Vec<String>, String);

#[derive(Debug, Default)]
pub struct Pending {
    tenants: HashMap<String, TenantCounts>,
    resend: Vec<Call>,
    batches: u64,
}

impl Pending {
    /// Adds `requests` (to slots with rpm) and `tokens` (to slots with tpm) to the windows of
    /// `w`, `micro` to every scope's spend.
    pub fn add(&mut self, tenant: &str, w: &Wired, requests: u64, tokens: u64, micro: u64) {
        let t = self.tenants.entry(tenant.to_string()).or_default();
        for (window, f) in w.windows() {
            let (r, tok) = (
                if f.rpm { requests } else { 0 },
                if f.tpm { tokens } else { 0 },
            );
            if r > 0 || tok > 0 {
                let e = t.windows.entry(w.keys[window - 1].clone()).or_default();
                e.0 += r;
                e.1 += tok;
            }
        }
        if micro > 0 {
            for (spend, _) in &w.spends {
                *t.spends.entry(w.keys[*spend - 1].clone()).or_default() += micro;
            }
        }
        if t.windows.is_empty() && t.spends.is_empty() {
            self.tenants.remove(tenant);
        }
    }

    /// Keeps a whole call to send again.
    pub fn resend(&mut self, function: &'static str, (keys, arg): (Vec<String>, String)) {
        self.resend.push((function, keys, arg));
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.resend.is_empty()
    }

    /// Everything owed, as calls: the kept ones first, then one merge per tenant (each with a
    /// new done marker under `prefix`). A call that fails goes back with [`Pending::resend`].
    pub fn take(&mut self, prefix: &str, instance: &str) -> Vec<Call> {
        let mut calls = std::mem::take(&mut self.resend);
        for (tenant, counts) in self.tenants.drain() {
            self.batches += 1;
            let done = wire::done_key(prefix, &tenant, &format!("m:{instance}-{}", self.batches));
            let (keys, arg) = counts.merge_call(done);
            calls.push((wire::MERGE, keys, arg));
        }
        calls
    }
}

impl TenantCounts {
    /// The merge call's keys (the done marker last) and argument.
    pub fn merge_call(&self, done: String) -> (Vec<String>, String) {
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
        keys.push(done);
        (keys, json!({"w": w, "s": s}).to_string())
    }
}
