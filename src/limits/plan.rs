//! What one request asks of a shared counter store: every slot and budget that applies to it,
//! as plain data (no cells), so a store on another server can check and reserve them all in
//! one round trip.

use std::sync::Arc;

use super::{cost_of, Ask, Cell, Governor, ScopeRule, SlotRule};
use crate::config::{Budget, Price};

/// One limited slot of a scope: its own limits (`pattern: None`) or one per-model entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSlot {
    pub pattern: Option<Arc<str>>,
    pub rule: SlotRule,
}

/// A tenant's or key's share of a plan, tenant first.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanScope {
    /// The counters' stable id: `tenant:<name>` or `key:<digest prefix>`.
    pub id: Arc<str>,
    /// For refusals: `tenant acme`, `key 3`.
    pub name: Arc<str>,
    /// Only slots with at least one limit.
    pub slots: Vec<PlanSlot>,
    pub budget: Budget,
}

/// Everything a shared store checks and reserves for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPlan {
    /// The tenant every scope belongs to (the hash tag of its keys).
    pub tenant: Arc<str>,
    pub scopes: Vec<PlanScope>,
    /// Prompt estimate plus completion reserve.
    pub tokens: u64,
    /// Worst-case cost in USD.
    pub usd: f64,
    pub price: Option<Price>,
}

impl SharedPlan {
    /// Nothing to check at admission: no slot and no budget (spend may still be charged).
    pub fn checks_nothing(&self) -> bool {
        self.scopes
            .iter()
            .all(|s| s.slots.is_empty() && s.budget.is_empty())
    }

    pub fn has_limits(&self) -> bool {
        self.scopes.iter().any(|s| !s.slots.is_empty())
    }

    pub fn has_budget(&self) -> bool {
        self.scopes.iter().any(|s| !s.budget.is_empty())
    }

    /// Nothing to count anywhere: no limit, no budget and no price.
    pub fn is_free(&self) -> bool {
        self.checks_nothing() && self.price.is_none()
    }
}

fn scope(r: &ScopeRule, model: &str) -> PlanScope {
    let mut slots = Vec::new();
    if !r.base.is_empty() {
        slots.push(PlanSlot {
            pattern: None,
            rule: r.base,
        });
    }
    if let Some((p, rule)) = r.model_slot(model).filter(|(_, s)| !s.is_empty()) {
        slots.push(PlanSlot {
            pattern: Some(p.clone()),
            rule: *rule,
        });
    }
    PlanScope {
        id: r.id.clone(),
        name: r.name.clone(),
        slots,
        budget: r.budget,
    }
}

impl Governor {
    /// The plan of `ask` under this config; `None` for a key the config does not know (which
    /// counts nowhere, as in [`Governor::admit`]).
    pub fn plan(&self, ask: &Ask<'_>) -> Option<SharedPlan> {
        let (t, key_rule) = self.keys.get(ask.key.principal.key_index)?.as_ref()?;
        let (tenant, tenant_rule) = self.tenants.get(*t)?;
        Some(self.plan_with(ask, (tenant, tenant_rule), key_rule))
    }

    /// The plan of an anonymous caller's request: its limits as a scope of its own.
    pub fn plan_transient(&self, ask: &Ask<'_>) -> Option<SharedPlan> {
        let (tenant, tenant_rule) = self
            .tenants
            .iter()
            .find(|(n, _)| **n == *ask.key.principal.tenant)?;
        let key_rule = self.transient_rule(ask.key, Cell::default());
        Some(self.plan_with(ask, (tenant, tenant_rule), &key_rule))
    }

    fn plan_with(
        &self,
        ask: &Ask<'_>,
        (tenant, tenant_rule): (&Arc<str>, &ScopeRule),
        key_rule: &ScopeRule,
    ) -> SharedPlan {
        let price = self.price(ask.model);
        SharedPlan {
            tenant: tenant.clone(),
            scopes: vec![scope(tenant_rule, ask.model), scope(key_rule, ask.model)],
            tokens: ask.prompt.saturating_add(ask.completion),
            usd: price.map_or(0.0, |p| cost_of(&p, ask.prompt, ask.completion, 0)),
            price,
        }
    }
}
