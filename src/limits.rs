//! Rate limits, token limits, concurrency and budgets per key and tenant. Pure: time comes
//! from a [`Clock`], and nothing here touches a socket.
//!
//! A [`Governor`] is one config's rules; the counters it checks live in [`Counters`] cells
//! (one per tenant, one per key) that every snapshot shares, so a reload swaps rules without
//! moving a count. An admission locks its tenant's cell, then its key's, checks every limit and
//! commits all of them at once: no overshoot under concurrency. Rates use a sliding-window
//! estimate (previous minute weighted by what is left of it, plus the current minute), so there
//! are no 2x bursts at window edges.

mod window;

use std::collections::HashSet;
use std::sync::Arc;

use crate::auth::KeyEntry;
use crate::clock::Clock;
use crate::config::{Budget, Config, Limits, Price};
use crate::glob::Glob;
use crate::openai::Usage;
pub use counters::{Cell, Counters, ScopeCounters};
pub use plan::{PlanScope, PlanSlot, SharedPlan};
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

/// An admitted request's reservations, released by [`Governor::settle`]. It holds the cells it
/// counted in, so it settles there whatever reloads happened meanwhile.
#[derive(Debug)]
pub struct Admitted {
    /// The tenant's and the key's counters, and the per-model slot counted in each (`None`
    /// for a key the config does not know, which counts nowhere).
    scopes: Option<[(Cell, Option<Arc<str>>); 2]>,
    tokens: u64,
    /// When the reservation was made (ms), so settlement adjusts that minute's bucket.
    at: u64,
    usd: f64,
    price: Option<Price>,
    pub headers: RateHeaders,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SlotRule {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u64>,
}

impl SlotRule {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spend {
    pub window: u64,
    pub usd: f64,
}

impl Spend {
    /// `self += file - base` for one UTC window, where `base` is the spend as another writer
    /// last left it: only what it added in the file's window counts.
    pub fn merge_delta(&mut self, base: Spend, file: Spend) {
        let base_usd = if base.window == file.window {
            base.usd
        } else {
            0.0
        };
        let delta = file.usd - base_usd;
        if delta <= 0.0 {
            return;
        }
        if self.window == file.window {
            self.usd += delta;
        } else if file.window > self.window {
            *self = Spend {
                window: file.window,
                usd: delta,
            };
        }
    }
}

/// One scope's limits in this config, over its live counters.
#[derive(Debug)]
struct ScopeRule {
    /// The stable id of its counters: `tenant:<name>` or `key:<digest prefix>`.
    id: Arc<str>,
    /// For refusals: `tenant acme`, `key 3`.
    name: Arc<str>,
    base: SlotRule,
    models: Vec<(Glob, Arc<str>, SlotRule)>,
    budget: Budget,
    cell: Cell,
}

impl ScopeRule {
    fn model_slot(&self, model: &str) -> Option<(&Arc<str>, &SlotRule)> {
        self.models
            .iter()
            .find(|(g, _, _)| g.matches(model))
            .map(|(_, p, r)| (p, r))
    }
}

/// The limits of one config snapshot. Counters live in [`Counters`], shared by every snapshot.
pub struct Governor {
    tenants: Vec<(Arc<str>, ScopeRule)>,
    /// For each `key_index`: its tenant's position and its own scope.
    keys: Vec<Option<(usize, ScopeRule)>>,
    pricing: Vec<(Glob, Price)>,
    clock: Arc<dyn Clock>,
}

fn slot(l: &Limits) -> SlotRule {
    SlotRule {
        rpm: l.rpm,
        tpm: l.tpm,
        concurrency: l.concurrency,
    }
}

fn rule(id: &str, name: String, limits: &Limits, budget: Budget, cell: Cell) -> ScopeRule {
    let models: Vec<(Glob, Arc<str>, SlotRule)> = limits
        .models
        .iter()
        .map(|(g, l)| (g.clone(), Arc::from(g.pattern()), slot(l)))
        .collect();
    {
        // per-model slots exist in config order, so a state file that lists them by position
        // lands in the right ones
        let mut c = cell.lock();
        for (_, p, _) in &models {
            c.slot_mut(Some(p));
        }
    }
    ScopeRule {
        id: id.into(),
        name: name.into(),
        base: slot(limits),
        models,
        budget,
        cell,
    }
}

impl Governor {
    /// The rules of `config` over the cells of `counters`; cells no config names any more are
    /// dropped once no request holds them.
    pub fn new(config: &Config, counters: &Counters, clock: Arc<dyn Clock>) -> Self {
        let mut live = HashSet::new();
        let mut tenants: Vec<(Arc<str>, ScopeRule)> = Vec::new();
        let mut position = |name: &str, limits: &Limits, budget: Budget| {
            if let Some(i) = tenants.iter().position(|(n, _)| &**n == name) {
                return i;
            }
            let id = format!("tenant:{name}");
            let r = rule(
                &id,
                format!("tenant {name}"),
                limits,
                budget,
                counters.cell(&id),
            );
            live.insert(id);
            tenants.push((name.into(), r));
            tenants.len() - 1
        };
        for t in &config.tenants {
            position(&t.name, &t.limits, t.budget);
        }
        if config.has_anonymous_routes() {
            position(ANONYMOUS_TENANT, &Limits::default(), Budget::default());
        }
        let mut key_ids = Vec::new();
        let mut keys: Vec<Option<(usize, ScopeRule)>> = Vec::new();
        keys.resize_with(config.keys.len(), || None);
        for k in &config.keys {
            let t = position(&k.principal.tenant, &Limits::default(), Budget::default());
            let id = format!("key:{}", k.id());
            // a store key is named by its id, a file key by its place in `keys:`
            let name = if k.id().starts_with("key_") {
                format!("key {}", k.id())
            } else {
                format!("key {}", k.principal.key_index)
            };
            let r = rule(&id, name, &k.limits, k.budget, counters.cell(&id));
            key_ids.push(id);
            if let Some(slot) = keys.get_mut(k.principal.key_index) {
                *slot = Some((t, r));
            }
        }
        live.extend(key_ids);
        counters.retain(&live, clock.now_ms());
        Self {
            tenants,
            keys,
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

    /// Checks every limit and budget that applies, then reserves them all, or refuses. Cells
    /// are locked tenant first, then key, on every path.
    pub fn admit(&self, ask: &Ask<'_>) -> Result<Admitted, Denied> {
        let rules = self
            .keys
            .get(ask.key.principal.key_index)
            .and_then(Option::as_ref)
            .and_then(|(t, key_rule)| Some((&self.tenants.get(*t)?.1, key_rule)));
        self.admit_in(ask, rules)
    }

    /// Admission for a caller no config names (an anonymous caller of a passthrough route):
    /// its key's limits on `cell`, under its tenant's rule.
    pub fn admit_transient(&self, ask: &Ask<'_>, cell: Cell) -> Result<Admitted, Denied> {
        let key_rule = self.transient_rule(ask.key, cell);
        let tenant = self.tenant_rule(&ask.key.principal.tenant);
        self.admit_in(ask, tenant.map(|t| (t, &key_rule)))
    }

    fn tenant_rule(&self, name: &str) -> Option<&ScopeRule> {
        self.tenants
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, r)| r)
    }

    fn transient_rule(&self, key: &KeyEntry, cell: Cell) -> ScopeRule {
        let id = transient_cell_id(key);
        let name = format!("caller {}", key.principal.user);
        rule(&id, name, &key.limits, key.budget, cell)
    }

    fn admit_in(
        &self,
        ask: &Ask<'_>,
        rules: Option<(&ScopeRule, &ScopeRule)>,
    ) -> Result<Admitted, Denied> {
        let price = self.price(ask.model);
        let usd = price.map_or(0.0, |p| cost_of(&p, ask.prompt, ask.completion, 0));
        let tokens = ask.prompt.saturating_add(ask.completion);
        let now = self.clock.now_ms();
        let mut adm = Admitted {
            scopes: None,
            tokens,
            at: now,
            usd,
            price,
            headers: RateHeaders::default(),
        };
        let Some((tenant_rule, key_rule)) = rules else {
            return Ok(adm);
        };
        let want = Want {
            tokens,
            usd,
            now,
            cal: Calendar::at(now),
        };
        let (tm, km) = (
            tenant_rule.model_slot(ask.model),
            key_rule.model_slot(ask.model),
        );
        let mut tc = tenant_rule.cell.lock();
        let mut kc = key_rule.cell.lock();
        check_scope(tenant_rule, tm, &mut tc, &want, &mut adm.headers)?;
        check_scope(key_rule, km, &mut kc, &want, &mut adm.headers)?;
        // every check passed: commit the whole reservation
        let model_of = |m: Option<(&Arc<str>, &SlotRule)>| m.map(|(p, _)| p.clone());
        let (tm, km) = (model_of(tm), model_of(km));
        for (c, model) in [(&mut *tc, &tm), (&mut *kc, &km)] {
            for which in std::iter::once(None).chain(model.as_deref().map(Some)) {
                let s = c.slot_mut(which);
                s.requests.add(now, 1.0);
                s.tokens.add(now, tokens as f64);
                s.inflight += 1;
            }
            c.reserved_usd += usd;
        }
        adm.scopes = Some([(tenant_rule.cell.clone(), tm), (key_rule.cell.clone(), km)]);
        Ok(adm)
    }

    /// Replaces the reservation by what the request really used; returns its cost in USD.
    pub fn settle(&self, adm: &Admitted, used: Usage) -> f64 {
        adm.settle(used, &*self.clock)
    }

    /// Every tenant with a budget: its name, the id of its counters and the budget.
    pub fn tenant_budgets(&self) -> Vec<(Arc<str>, &str, Budget)> {
        self.tenants
            .iter()
            .filter(|(_, r)| !r.budget.is_empty())
            .map(|(n, r)| (n.clone(), &*r.id, r.budget))
            .collect()
    }

    /// `(tenant, window, remaining USD)` for every tenant budget, for the metrics gauge.
    pub fn budget_remaining(&self) -> Vec<(String, &'static str, f64)> {
        let cal = Calendar::at(self.clock.now_ms());
        let mut out = Vec::new();
        for (name, r) in &self.tenants {
            let mut c = r.cell.lock();
            roll_spend(&mut c, &cal);
            if let Some(b) = r.budget.usd_per_day {
                out.push((name.to_string(), "day", (b - c.day.usd).max(0.0)));
            }
            if let Some(b) = r.budget.usd_per_month {
                out.push((name.to_string(), "month", (b - c.month.usd).max(0.0)));
            }
        }
        out
    }
}

impl Admitted {
    /// Replaces the reservation by what the request really used, in the cells it was made in
    /// (whatever config is current now); returns its cost in USD.
    pub fn settle(&self, used: Usage, clock: &dyn Clock) -> f64 {
        let cost = usage_cost(self.price, &used);
        let now = clock.now_ms();
        let cal = Calendar::at(now);
        let actual = used.prompt_tokens.saturating_add(used.completion_tokens) as f64;
        for (cell, model) in self.scopes.iter().flatten() {
            let mut c = cell.lock();
            for which in std::iter::once(None).chain(model.as_deref().map(Some)) {
                let s = c.slot_mut(which);
                s.tokens
                    .adjust_at(now, self.at, actual - self.tokens as f64);
                s.inflight = s.inflight.saturating_sub(1);
            }
            c.reserved_usd = (c.reserved_usd - self.usd).max(0.0);
            roll_spend(&mut c, &cal);
            c.day.usd += cost;
            c.month.usd += cost;
        }
        cost
    }
}

/// The tenant every anonymous caller (a token that is not a virtual key, on an
/// `anonymous: true` route) belongs to.
pub const ANONYMOUS_TENANT: &str = "passthrough";

/// The counter cell of a caller no config names: its identity on its route.
pub fn transient_cell_id(key: &KeyEntry) -> String {
    format!("key:{}", key.principal.key_id)
}

/// What `used` costs at `price` (cached prompt tokens at the cached price), rounded to the
/// micro-dollar: the budget counters and the usage ledger charge the same whole micro-USD;
/// 0 unpriced.
pub fn usage_cost(price: Option<Price>, used: &Usage) -> f64 {
    price.map_or(0.0, |p| {
        let cached = used
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        let usd = cost_of(&p, used.prompt_tokens, used.completion_tokens, cached);
        (usd * 1e6).round() / 1e6
    })
}

/// What one admission checks each scope against.
struct Want {
    tokens: u64,
    usd: f64,
    now: u64,
    cal: Calendar,
}

/// Every check of one scope: its own slot, its matching per-model slot (`model`), its budget.
fn check_scope(
    r: &ScopeRule,
    model: Option<(&Arc<str>, &SlotRule)>,
    c: &mut ScopeCounters,
    w: &Want,
    h: &mut RateHeaders,
) -> Result<(), Denied> {
    check_slot(&r.base, c.slot_mut(None), &r.name, w.tokens, w.now, h)?;
    if let Some((p, s)) = model {
        check_slot(s, c.slot_mut(Some(p)), &r.name, w.tokens, w.now, h)?;
    }
    check_budget(&r.budget, &r.name, c, w.usd, &w.cal, h)
}

mod check;
pub mod counters;
mod plan;
mod refusal;

pub use check::cost_of;
use check::{check_budget, check_slot, roll_spend, Calendar};
pub use refusal::{fmt_reset, Denied, HeaderTrio, LimitKind, RateHeaders};
pub mod persist;

#[cfg(test)]
mod tests;
