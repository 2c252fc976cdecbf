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
use std::time::Duration;

use parking_lot::Mutex;

use crate::auth::KeyEntry;
use crate::clock::{self, Clock};
use crate::config::{Budget, Config, Limits, Price};
use crate::errors::GatewayError;
use crate::openai::Usage;
use crate::router::Glob;
pub use window::Window;

/// Which limit refused a request (also the `limit` label of `llmedge_ratelimited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rpm,
    Tpm,
    Concurrency,
    BudgetDay,
    BudgetMonth,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rpm => "rpm",
            Self::Tpm => "tpm",
            Self::Concurrency => "concurrency",
            Self::BudgetDay => "budget_day",
            Self::BudgetMonth => "budget_month",
        }
    }
}

/// A refusal: which limit, on which scope (`tenant acme`, `key 3`), and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    pub kind: LimitKind,
    pub scope: String,
    pub limit: f64,
    pub retry_after: Duration,
    pub headers: RateHeaders,
}

impl Denied {
    /// The OpenAI-shaped error for this refusal.
    pub fn to_error(&self) -> GatewayError {
        let (kind, what) = match self.kind {
            LimitKind::Rpm => ("requests", "requests per min (RPM)"),
            LimitKind::Tpm => ("tokens", "tokens per min (TPM)"),
            LimitKind::Concurrency => ("requests", "concurrent requests"),
            LimitKind::BudgetDay | LimitKind::BudgetMonth => {
                let window = if self.kind == LimitKind::BudgetDay {
                    "daily"
                } else {
                    "monthly"
                };
                return GatewayError::QuotaExceeded {
                    window,
                    scope: self.scope.clone(),
                    limit: format!("{:.2}", self.limit),
                };
            }
        };
        GatewayError::RateLimited {
            kind,
            what,
            scope: self.scope.clone(),
            limit: self.limit as u64,
            retry: fmt_reset(self.retry_after),
            retry_after_ms: self.retry_after.as_millis() as u64,
        }
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1s`, `6m0s`, `1h2m3s`.
pub fn fmt_reset(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// OpenAI's `x-ratelimit-*` values for the most constrained request and token limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    pub requests: Option<HeaderTrio>,
    pub tokens: Option<HeaderTrio>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeaderTrio {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

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
        if st.keys.get(adm.key).is_none() {
            return cost;
        }
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

/// UTC calendar facts for one instant, computed once per admission.
struct Calendar {
    day: u64,
    month: u64,
    until_day: u64,
    until_month: u64,
}

impl Calendar {
    fn at(now: u64) -> Self {
        Self {
            day: clock::day_id(now),
            month: clock::month_id(now),
            until_day: clock::until_next_day(now),
            until_month: clock::until_next_month(now),
        }
    }
}

/// The (scope, model slot) pairs a request counted in: at most two per scope.
#[derive(Debug, Default)]
struct Slots {
    items: [(ScopeId, Option<usize>); 4],
    len: usize,
}

impl Slots {
    fn push(&mut self, item: (ScopeId, Option<usize>)) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = item;
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (ScopeId, Option<usize>)> + '_ {
        self.items[..self.len].iter().copied()
    }
}

fn check_slot(
    s: &mut Slot,
    scope: &str,
    tokens: u64,
    now: u64,
    h: &mut RateHeaders,
) -> Result<(), Denied> {
    let deny = |kind, limit: u64, retry_after, headers| Denied {
        kind,
        scope: scope.to_string(),
        limit: limit as f64,
        retry_after,
        headers,
    };
    if let Some(rpm) = s.rpm {
        let used = s.requests.estimate(now);
        let trio = trio(rpm, used + 1.0, s.requests.wait_for(now, rpm as f64, 1.0));
        merge(&mut h.requests, trio);
        if used + 1.0 > rpm as f64 {
            return Err(deny(LimitKind::Rpm, rpm, trio.reset, *h));
        }
    }
    if let Some(tpm) = s.tpm {
        let used = s.tokens.estimate(now);
        let cost = tokens as f64;
        let trio = trio(tpm, used + cost, s.tokens.wait_for(now, tpm as f64, cost));
        merge(&mut h.tokens, trio);
        if used + cost > tpm as f64 {
            return Err(deny(LimitKind::Tpm, tpm, trio.reset, *h));
        }
    }
    if let Some(c) = s.concurrency {
        if s.inflight + 1 > c {
            return Err(deny(LimitKind::Concurrency, c, Duration::from_secs(1), *h));
        }
    }
    Ok(())
}

fn trio(limit: u64, used_after: f64, reset: Duration) -> HeaderTrio {
    HeaderTrio {
        limit,
        remaining: (limit as f64 - used_after).max(0.0).floor() as u64,
        reset,
    }
}

/// Keeps the most constrained trio (fewest remaining).
fn merge(slot: &mut Option<HeaderTrio>, t: HeaderTrio) {
    if slot.is_none_or(|old| t.remaining < old.remaining) {
        *slot = Some(t);
    }
}

fn roll_spend(sc: &mut Scope, cal: &Calendar) {
    let (d, m) = (cal.day, cal.month);
    if sc.day.window != d {
        sc.day = Spend {
            window: d,
            usd: 0.0,
        };
    }
    if sc.month.window != m {
        sc.month = Spend {
            window: m,
            usd: 0.0,
        };
    }
}

fn check_budget(sc: &mut Scope, usd: f64, cal: &Calendar, h: &RateHeaders) -> Result<(), Denied> {
    if sc.budget.is_empty() {
        return Ok(());
    }
    roll_spend(sc, cal);
    let checks = [
        (
            LimitKind::BudgetDay,
            sc.budget.usd_per_day,
            sc.day.usd,
            cal.until_day,
        ),
        (
            LimitKind::BudgetMonth,
            sc.budget.usd_per_month,
            sc.month.usd,
            cal.until_month,
        ),
    ];
    for (kind, budget, spent, reset_ms) in checks {
        let Some(budget) = budget else { continue };
        // the worst case of this request and of those still running must fit what is left
        if spent + sc.reserved_usd + usd > budget + 1e-9 {
            return Err(Denied {
                kind,
                scope: sc.name.clone(),
                limit: budget,
                retry_after: Duration::from_millis(reset_ms),
                headers: *h,
            });
        }
    }
    Ok(())
}

/// USD for the given token counts at `p` (prices per 1M tokens).
pub fn cost_of(p: &Price, prompt: u64, completion: u64, cached: u64) -> f64 {
    let cached = cached.min(prompt);
    let cached_price = p.cached_input.unwrap_or(p.input);
    ((prompt - cached) as f64 * p.input
        + cached as f64 * cached_price
        + completion as f64 * p.output)
        / 1_000_000.0
}

pub mod flush;
pub mod persist;

#[cfg(test)]
mod tests;
