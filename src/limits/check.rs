//! The checks behind an admission: sliding-window slots, budgets on UTC calendar windows.

use std::time::Duration;

use super::counters::{ScopeCounters, SlotCounters};
use super::{Denied, HeaderTrio, LimitKind, RateHeaders, SlotRule, Spend};
use crate::clock;
use crate::config::{Budget, Price};

/// UTC calendar facts for one instant, computed once per admission.
pub(super) struct Calendar {
    pub(super) day: u64,
    pub(super) month: u64,
    pub(super) until_day: u64,
    pub(super) until_month: u64,
}

impl Calendar {
    pub(super) fn at(now: u64) -> Self {
        Self {
            day: clock::day_id(now),
            month: clock::month_id(now),
            until_day: clock::until_next_day(now),
            until_month: clock::until_next_month(now),
        }
    }
}

pub(super) fn check_slot(
    rule: &SlotRule,
    s: &mut SlotCounters,
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
    if let Some(rpm) = rule.rpm {
        let used = s.requests.estimate(now);
        let trio = trio(rpm, used + 1.0, s.requests.wait_for(now, rpm as f64, 1.0));
        merge(&mut h.requests, trio);
        if used + 1.0 > rpm as f64 {
            return Err(deny(LimitKind::Rpm, rpm, trio.reset, *h));
        }
    }
    if let Some(tpm) = rule.tpm {
        let used = s.tokens.estimate(now);
        let cost = tokens as f64;
        let trio = trio(tpm, used + cost, s.tokens.wait_for(now, tpm as f64, cost));
        merge(&mut h.tokens, trio);
        if used + cost > tpm as f64 {
            return Err(deny(LimitKind::Tpm, tpm, trio.reset, *h));
        }
    }
    if let Some(c) = rule.concurrency {
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

pub(super) fn roll_spend(sc: &mut ScopeCounters, cal: &Calendar) {
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

pub(super) fn check_budget(
    budget: &Budget,
    scope: &str,
    sc: &mut ScopeCounters,
    usd: f64,
    cal: &Calendar,
    h: &RateHeaders,
) -> Result<(), Denied> {
    if budget.is_empty() {
        return Ok(());
    }
    roll_spend(sc, cal);
    let checks = [
        (
            LimitKind::BudgetDay,
            budget.usd_per_day,
            sc.day.usd,
            cal.until_day,
        ),
        (
            LimitKind::BudgetMonth,
            budget.usd_per_month,
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
                scope: scope.to_string(),
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
