//! Rate limits, token limits, concurrency and budgets per key and tenant. Pure: time comes
//! from a [`Clock`], and nothing here touches a socket.
//!
//! Every limit a request is subject to lives in its tenant's state behind one mutex, so an
//! admission checks all of them and commits all of them at once: no overshoot under concurrency.
//! Counters are exact per key (the key set is known at load), and rates use a sliding-window
//! estimate (previous minute weighted by what is left of it, plus the current minute), so there
//! are no 2x bursts at window edges.

mod window;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::auth::KeyEntry;
use crate::clock::Clock;
use crate::config::{Budget, Config, Limits, Price};
use crate::openai::Usage;
use crate::router::Glob;
pub use window::Window;

/// What a request asks for at admission.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub key: &'a KeyEntry,
    /// The client-facing model name.
    pub model: &'a str,
    /// Estimated prompt tokens.
    pub prompt: u64,
    /// The most completion tokens the request may produce.
    pub completion: u64,
}

/// An admitted request's reservations, released by [`Governor::settle`].
#[derive(Debug)]
pub struct Admitted {
    /// Position of the tenant, and of the key among the tenant's keys.
    tenant: usize,
    key: usize,
    slots: Slots,
    tokens: u64,
    /// When the reservation was made (ms), so settlement adjusts that minute's bucket.
    at: u64,
    usd: f64,
    price: Option<Price>,
    pub headers: RateHeaders,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ScopeId {
    #[default]
    Tenant,
    Key,
}

#[derive(Debug, Default)]
struct Slot {
    rpm: Option<u64>,
    tpm: Option<u64>,
    concurrency: Option<u64>,
    requests: Window,
    tokens: Window,
    inflight: u64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Spend {
    pub window: u64,
    pub usd: f64,
}

#[derive(Debug, Default)]
struct Scope {
    name: String,
    base: Slot,
    models: Vec<(Glob, Slot)>,
    budget: Budget,
    day: Spend,
    month: Spend,
    /// Worst-case cost of admitted requests not yet settled.
    reserved_usd: f64,
}

#[derive(Debug, Default)]
struct TenantState {
    tenant: Scope,
    /// This tenant's keys, and their `key_index` in the config.
    keys: Vec<Scope>,
    key_index: Vec<usize>,
}

pub struct Governor {
    tenants: Vec<(Arc<str>, Mutex<TenantState>)>,
    /// For each `key_index`: its tenant's position and its position among the tenant's keys.
    key_pos: Vec<(usize, usize)>,
    pricing: Vec<(Glob, Price)>,
    clock: Arc<dyn Clock>,
}

fn slot(l: &Limits) -> Slot {
    Slot {
        rpm: l.rpm,
        tpm: l.tpm,
        concurrency: l.concurrency,
        ..Slot::default()
    }
}

fn scope(name: String, limits: &Limits, budget: Budget) -> Scope {
    Scope {
        name,
        base: slot(limits),
        models: limits
            .models
            .iter()
            .map(|(g, l)| (g.clone(), slot(l)))
            .collect(),
        budget,
        ..Scope::default()
    }
}

impl Governor {
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        let mut tenants: Vec<(Arc<str>, TenantState)> = Vec::new();
        let position = |tenants: &mut Vec<(Arc<str>, TenantState)>, name: &str| {
            tenants
                .iter()
                .position(|(n, _)| &**n == name)
                .unwrap_or_else(|| {
                    let mut st = TenantState::default();
                    st.tenant.name = format!("tenant {name}");
                    tenants.push((name.into(), st));
                    tenants.len() - 1
                })
        };
        for t in &config.tenants {
            let i = position(&mut tenants, &t.name);
            tenants[i].1.tenant = scope(format!("tenant {}", t.name), &t.limits, t.budget);
        }
        let mut key_pos = vec![(0, 0); config.keys.len()];
        for k in &config.keys {
            let i = position(&mut tenants, &k.principal.tenant);
            let st = &mut tenants[i].1;
            let name = format!("key {}", k.principal.key_index);
            st.keys.push(scope(name, &k.limits, k.budget));
            st.key_index.push(k.principal.key_index);
            if let Some(p) = key_pos.get_mut(k.principal.key_index) {
                *p = (i, st.keys.len() - 1);
            }
        }
        Self {
            tenants: tenants
                .into_iter()
                .map(|(n, st)| (n, Mutex::new(st)))
                .collect(),
            key_pos,
            pricing: config.pricing.clone(),
            clock,
        }
    }

    /// The price of a client-facing model (first matching `pricing:` entry).
    pub fn price(&self, model: &str) -> Option<Price> {
        self.pricing
            .iter()
            .find(|(g, _)| g.matches(model))
            .map(|(_, p)| *p)
    }

    /// Checks every limit and budget that applies, then reserves them all, or refuses.
    pub fn admit(&self, ask: &Ask<'_>) -> Result<Admitted, Denied> {
        let price = self.price(ask.model);
        let usd = price.map_or(0.0, |p| cost_of(&p, ask.prompt, ask.completion, 0));
        let tokens = ask.prompt.saturating_add(ask.completion);
        let (tenant, key) = self
            .key_pos
            .get(ask.key.principal.key_index)
            .copied()
            .unwrap_or((usize::MAX, 0));
        let now = self.clock.now_ms();
        let mut adm = Admitted {
            tenant,
            key,
            slots: Slots::default(),
            tokens,
            at: now,
            usd,
            price,
            headers: RateHeaders::default(),
        };
        let Some((_, state)) = self.tenants.get(tenant) else {
            return Ok(adm);
        };
        let cal = Calendar::at(now);
        let mut st = state.lock();
        let st = &mut *st;
        let Some(key_scope) = st.keys.get_mut(key) else {
            return Ok(adm);
        };
        for (id, sc) in [(ScopeId::Tenant, &mut st.tenant), (ScopeId::Key, key_scope)] {
            let model_slot = sc.models.iter().position(|(g, _)| g.matches(ask.model));
            // the scope's own slot (`None`), then its matching per-model slot
            for which in std::iter::once(None).chain(model_slot.map(Some)) {
                let s = match which {
                    None => &mut sc.base,
                    Some(i) => &mut sc.models[i].1,
                };
                check_slot(s, &sc.name, tokens, now, &mut adm.headers)?;
                adm.slots.push((id, which));
            }
            check_budget(sc, usd, &cal, &adm.headers)?;
        }
        // every check passed: commit the whole reservation
        for (id, which) in adm.slots.iter() {
            let sc = scope_mut(st, id, key);
            let s = match which {
                None => &mut sc.base,
                Some(i) => &mut sc.models[i].1,
            };
            s.requests.add(now, 1.0);
            s.tokens.add(now, tokens as f64);
            s.inflight += 1;
        }
        for id in [ScopeId::Tenant, ScopeId::Key] {
            scope_mut(st, id, key).reserved_usd += usd;
        }
        Ok(adm)
    }

    /// Replaces the reservation by what the request really used; returns its cost in USD.
    pub fn settle(&self, adm: &Admitted, used: Usage) -> f64 {
        let cost = adm.price.map_or(0.0, |p| {
            let cached = used
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0);
            cost_of(&p, used.prompt_tokens, used.completion_tokens, cached)
        });
        let Some((_, state)) = self.tenants.get(adm.tenant) else {
            return cost;
        };
        let now = self.clock.now_ms();
        let cal = Calendar::at(now);
        let actual = used.prompt_tokens.saturating_add(used.completion_tokens) as f64;
        let mut st = state.lock();
        // a key removed by a reload while its request ran: only the tenant is settled
        let has_key = st.keys.get(adm.key).is_some();
        for (id, which) in adm.slots.iter() {
            let sc = scope_mut(&mut st, id, adm.key);
            let s = match which {
                None => &mut sc.base,
                Some(i) => &mut sc.models[i].1,
            };
            s.tokens.adjust_at(now, adm.at, actual - adm.tokens as f64);
            s.inflight = s.inflight.saturating_sub(1);
        }
        for id in [ScopeId::Tenant, ScopeId::Key] {
            if id == ScopeId::Key && !has_key {
                continue;
            }
            let sc = scope_mut(&mut st, id, adm.key);
            sc.reserved_usd = (sc.reserved_usd - adm.usd).max(0.0);
            roll_spend(sc, &cal);
            sc.day.usd += cost;
            sc.month.usd += cost;
        }
        cost
    }

    /// `(tenant, window, remaining USD)` for every tenant budget, for the metrics gauge.
    pub fn budget_remaining(&self) -> Vec<(String, &'static str, f64)> {
        let cal = Calendar::at(self.clock.now_ms());
        let mut out = Vec::new();
        for (name, state) in &self.tenants {
            let mut st = state.lock();
            let sc = &mut st.tenant;
            roll_spend(sc, &cal);
            if let Some(b) = sc.budget.usd_per_day {
                out.push((name.to_string(), "day", (b - sc.day.usd).max(0.0)));
            }
            if let Some(b) = sc.budget.usd_per_month {
                out.push((name.to_string(), "month", (b - sc.month.usd).max(0.0)));
            }
        }
        out
    }

    /// Spend and windows, for persistence.
    pub fn export(&self, key_ids: &HashMap<usize, String>) -> persist::StateFile {
        let mut scopes = HashMap::new();
        for (name, state) in &self.tenants {
            let st = state.lock();
            scopes.insert(
                format!("tenant:{name}"),
                persist::ScopeFile::from_scope(&st.tenant),
            );
            for (k, sc) in st.key_index.iter().zip(&st.keys) {
                if let Some(id) = key_ids.get(k) {
                    scopes.insert(format!("key:{id}"), persist::ScopeFile::from_scope(sc));
                }
            }
        }
        persist::StateFile { version: 1, scopes }
    }

    /// Restores spend and windows saved by [`Governor::export`].
    pub fn import(&self, file: &persist::StateFile, key_ids: &HashMap<usize, String>) {
        for (name, state) in &self.tenants {
            let mut st = state.lock();
            if let Some(f) = file.scopes.get(&format!("tenant:{name}")) {
                f.apply(&mut st.tenant);
            }
            let TenantState {
                keys, key_index, ..
            } = &mut *st;
            for (k, sc) in key_index.iter().zip(keys.iter_mut()) {
                if let Some(f) = key_ids
                    .get(k)
                    .and_then(|id| file.scopes.get(&format!("key:{id}")))
                {
                    f.apply(sc);
                }
            }
        }
    }
}

fn scope_mut(st: &mut TenantState, id: ScopeId, key: usize) -> &mut Scope {
    match id {
        ScopeId::Tenant => &mut st.tenant,
        ScopeId::Key => st.keys.get_mut(key).unwrap_or(&mut st.tenant),
    }
}

mod check;
pub mod flush;
mod handover;
mod refusal;

pub use check::cost_of;
use check::{check_budget, check_slot, roll_spend, Calendar, Slots};
pub use refusal::{fmt_reset, Denied, HeaderTrio, LimitKind, RateHeaders};
pub mod persist;

#[cfg(test)]
mod tests;
