//! What goes over the wire to the shared store, as plain data: the keys of a plan (one hash
//! tag per tenant), the JSON argument of each server-side function, and the admission reply.
//! Pure: unit-tested without a server.

use std::time::Duration;

use serde_json::json;

use crate::limits::{Denied, HeaderTrio, LimitKind, RateHeaders, SharedPlan};

/// The server-side library: its functions carry the version in their names, so gateways of
/// two versions share one Redis during a rolling upgrade.
pub const LIBRARY: &str = include_str!("llmedge.lua");
pub const ADMIT: &str = "llmedge_admit_1";
pub const SETTLE: &str = "llmedge_settle_1";
pub const RENEW: &str = "llmedge_renew_1";
pub const MERGE: &str = "llmedge_merge_1";
pub const SPEND: &str = "llmedge_spend_1";

/// USD in whole micro-dollars, as the store keeps spend.
pub fn micro(usd: f64) -> u64 {
    (usd * 1_000_000.0).round().max(0.0) as u64
}

/// A worst-case amount in micro-dollars: rounded up, so a reservation never falls short.
fn micro_up(usd: f64) -> u64 {
    (usd * 1_000_000.0).ceil().max(0.0) as u64
}

/// The key of one scope's counters: `<prefix>{<tenant>}:<scope id>`. Every key of a tenant
/// shares its hash tag, so one call's keys sit in one Redis Cluster slot.
pub fn scope_key(prefix: &str, tenant: &str, scope_id: &str) -> String {
    format!("{}:{scope_id}", tenant_base(prefix, tenant))
}

/// The spend hash of one scope (what budgets and the budget gauges read).
pub fn spend_key(prefix: &str, tenant: &str, scope_id: &str) -> String {
    format!("{}:s", scope_key(prefix, tenant, scope_id))
}

/// `<prefix>{<tenant>}`, with `{`, `}` and `%` in the tenant's name percent-encoded so the
/// hash tag is always the whole name (a `}` would otherwise end it early, or leave it empty).
fn tenant_base(prefix: &str, tenant: &str) -> String {
    let mut tag = String::with_capacity(tenant.len());
    for c in tenant.chars() {
        match c {
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            '%' => tag.push_str("%25"),
            c => tag.push(c),
        }
    }
    format!("{prefix}{{{tag}}}")
}

/// The key that marks one settlement or merge applied (`<prefix>{<tenant>}:done:<id>`), so a
/// call resent after a timeout is not counted twice.
pub fn done_key(prefix: &str, tenant: &str, id: &str) -> String {
    format!("{}:done:{id}", tenant_base(prefix, tenant))
}

/// The suffix of a slot's window and lease keys: none for a scope's own limits.
fn slot_suffix(pattern: Option<&str>) -> String {
    pattern.map_or_else(String::new, |p| format!(":m={p}"))
}

/// A plan as the store sees it: its keys and where each slot's and scope's keys sit (1-based,
/// as Lua counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFlags {
    pub rpm: bool,
    pub leased: bool,
    pub tpm: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Wired {
    pub keys: Vec<String>,
    /// `(window, leases)` of every limited slot, tenant first.
    pub slots: Vec<(usize, usize)>,
    /// `(spend, reservations)` of every scope.
    pub spends: Vec<(usize, usize)>,
    /// Per slot, what it counts: requests (an rpm limit), a lease (a concurrency or tpm
    /// limit) and tokens (a tpm limit; its lease then holds the reserved tokens).
    slot_flags: Vec<SlotFlags>,
    /// Whether each scope has a budget (its reservations are leases too).
    budgeted: Vec<bool>,
}

impl Wired {
    pub fn new(prefix: &str, plan: &SharedPlan) -> Self {
        let mut w = Wired {
            keys: Vec::new(),
            slots: Vec::new(),
            spends: Vec::new(),
            slot_flags: Vec::new(),
            budgeted: Vec::new(),
        };
        for s in &plan.scopes {
            let base = scope_key(prefix, &plan.tenant, &s.id);
            for slot in &s.slots {
                let suffix = slot_suffix(slot.pattern.as_deref());
                w.keys.push(format!("{base}:w{suffix}"));
                w.keys.push(format!("{base}:l{suffix}"));
                w.slots.push((w.keys.len() - 1, w.keys.len()));
                let r = slot.rule;
                w.slot_flags.push(SlotFlags {
                    rpm: r.rpm.is_some(),
                    leased: r.concurrency.is_some() || r.tpm.is_some(),
                    tpm: r.tpm.is_some(),
                });
            }
            w.keys.push(spend_key(prefix, &plan.tenant, &s.id));
            w.keys.push(format!("{base}:r"));
            w.spends.push((w.keys.len() - 1, w.keys.len()));
            w.budgeted.push(!s.budget.is_empty());
        }
        w
    }

    /// The admission argument: every check in order (each scope's slots, then its budget).
    pub fn admit_arg(&self, plan: &SharedPlan, lease: &str, ttl: Duration) -> String {
        let mut checks = Vec::new();
        let mut keys = self.slots.iter();
        for (i, scope) in plan.scopes.iter().enumerate() {
            for (slot, (w, l)) in scope.slots.iter().zip(keys.by_ref()) {
                let r = slot.rule;
                let mut c = json!({"k": "s", "w": w, "l": l, "scope": i});
                put(&mut c, "rpm", r.rpm);
                put(&mut c, "tpm", r.tpm);
                put(&mut c, "conc", r.concurrency);
                checks.push(c);
            }
            if self.budgeted[i] {
                let (s, r) = self.spends[i];
                let mut c = json!({"k": "b", "s": s, "r": r, "scope": i});
                put(&mut c, "day", scope.budget.usd_per_day.map(micro));
                put(&mut c, "month", scope.budget.usd_per_month.map(micro));
                checks.push(c);
            }
        }
        let body = json!({"lease": lease, "ttl": ttl.as_millis() as u64, "tokens": plan.tokens,
            "micro": self.reserve_micro(plan), "c": checks});
        body.to_string()
    }

    /// What admission reserves against budgets, in micro-dollars.
    pub fn reserve_micro(&self, plan: &SharedPlan) -> u64 {
        if self.budgeted.iter().any(|b| *b) {
            micro_up(plan.usd)
        } else {
            0
        }
    }

    /// Whether admission reserves anything that needs a lease (and so a renewal).
    pub fn leases(&self, plan: &SharedPlan) -> bool {
        self.slot_flags.iter().any(|f| f.leased) || self.reserve_micro(plan) > 0
    }

    /// Whether `lease` holds anything in the store (a slot lease or a budget reservation).
    pub fn leases_of(&self, lease: &Lease) -> bool {
        self.slot_flags.iter().any(|f| f.leased)
            || (lease.micro > 0 && self.budgeted.iter().any(|b| *b))
    }

    /// Each slot's window key (1-based index) and what it counts.
    pub fn windows(&self) -> impl Iterator<Item = (usize, SlotFlags)> + '_ {
        self.slots
            .iter()
            .zip(&self.slot_flags)
            .map(|((w, _), f)| (*w, *f))
    }

    /// The leases of one admission, as `(zset key index, member, hash key index)`: the hash
    /// holds the amount the lease reserved.
    fn lease_members(&self, lease: &Lease) -> Vec<(usize, String, usize)> {
        let mut z: Vec<(usize, String, usize)> = self
            .slots
            .iter()
            .zip(&self.slot_flags)
            .filter(|(_, f)| f.leased)
            .map(|((w, l), f)| (*l, lease.slot_member(f.tpm), *w))
            .collect();
        if lease.micro > 0 {
            let budgeted = self.spends.iter().zip(&self.budgeted).filter(|(_, b)| **b);
            z.extend(budgeted.map(|((s, r), _)| (*r, lease.budget_member(), *s)));
        }
        z
    }
}

/// Sets `key` only when there is a value: Lua's cjson turns JSON null into a truthy value.
fn put(obj: &mut serde_json::Value, key: &str, v: Option<u64>) {
    if let (Some(v), Some(m)) = (v, obj.as_object_mut()) {
        m.insert(key.to_string(), v.into());
    }
}

/// A granted admission: when the store counted it (its clock) and the rate headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    pub at_ms: u64,
    pub headers: RateHeaders,
}

/// Reads `{ok, kind, scope, retry_ms, now, req limit/remaining/reset, tok limit/remaining/reset,
/// limit}` (the refusing limit; micro-dollars for a budget).
pub fn admit_reply(plan: &SharedPlan, r: &[i64]) -> Result<Result<Granted, Denied>, String> {
    if r.len() != 12 {
        return Err(format!("admission reply of {} values, not 12", r.len()));
    }
    let trio = |i: usize| {
        (r[i] >= 0).then(|| HeaderTrio {
            limit: r[i] as u64,
            remaining: r[i + 1].max(0) as u64,
            reset: Duration::from_millis(r[i + 2].max(0) as u64),
        })
    };
    let headers = RateHeaders {
        requests: trio(5),
        tokens: trio(8),
    };
    if r[0] == 1 {
        return Ok(Ok(Granted {
            at_ms: r[4].max(0) as u64,
            headers,
        }));
    }
    let kind = match r[1] {
        1 => LimitKind::Rpm,
        2 => LimitKind::Tpm,
        3 => LimitKind::Concurrency,
        4 => LimitKind::BudgetDay,
        5 => LimitKind::BudgetMonth,
        k => return Err(format!("unknown limit kind {k}")),
    };
    let scope = usize::try_from(r[2])
        .ok()
        .and_then(|i| plan.scopes.get(i))
        .ok_or_else(|| format!("unknown scope {}", r[2]))?;
    let limit = match kind {
        LimitKind::BudgetDay | LimitKind::BudgetMonth => r[11] as f64 / 1_000_000.0,
        _ => r[11] as f64,
    };
    Ok(Err(Denied {
        kind,
        scope: scope.name.to_string(),
        limit,
        retry_after: Duration::from_millis(r[3].max(0) as u64),
        headers,
    }))
}

/// One admitted request's lease as settlement and renewal name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub id: String,
    pub tokens: u64,
    pub micro: u64,
}

impl Lease {
    /// A slot's lease: it holds the reserved tokens when the slot has a tpm limit.
    pub fn slot_member(&self, tpm: bool) -> String {
        format!("{}:{}", self.id, if tpm { self.tokens } else { 0 })
    }

    pub fn budget_member(&self) -> String {
        format!("{}:{}", self.id, self.micro)
    }
}

/// The settlement call, keys and argument: leases go (`[window, leases, leased, tokens held,
/// tpm]` per slot, `[spend, reservations, budgeted]` per scope), `actual` tokens land in the
/// admission's bucket, `cost` micro-dollars are charged to every scope. Its last key marks it
/// done, so sending it again after a timeout does nothing.
pub fn settle_call(
    w: &Wired,
    done: String,
    lease: &Lease,
    at_ms: u64,
    (actual, cost): (u64, u64),
) -> (Vec<String>, String) {
    let slots: Vec<(usize, usize, u8, u64, u8)> = w
        .slots
        .iter()
        .zip(&w.slot_flags)
        .map(|((win, l), f)| {
            let held = if f.tpm { lease.tokens } else { 0 };
            (*win, *l, u8::from(f.leased), held, u8::from(f.tpm))
        })
        .collect();
    let spends: Vec<(usize, usize, u8)> = w
        .spends
        .iter()
        .zip(&w.budgeted)
        .map(|((s, r), b)| (*s, *r, u8::from(*b)))
        .collect();
    let arg = json!({"lease": lease.id, "micro": lease.micro, "at": at_ms, "actual": actual,
        "cost": cost, "w": slots, "s": spends});
    let mut keys = w.keys.clone();
    keys.push(done);
    (keys, arg.to_string())
}

/// The renewal argument for one request's leases.
pub fn renew_arg(w: &Wired, lease: &Lease, ttl: Duration) -> String {
    json!({"ttl": ttl.as_millis() as u64, "z": w.lease_members(lease)}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Budget;
    use crate::limits::{PlanScope, PlanSlot, SlotRule};
    use std::sync::Arc;

    fn plan() -> SharedPlan {
        let rule = |rpm, conc| SlotRule {
            rpm,
            tpm: Some(1000),
            concurrency: conc,
        };
        SharedPlan {
            tenant: "acme".into(),
            scopes: vec![
                PlanScope {
                    id: "tenant:acme".into(),
                    name: "tenant acme".into(),
                    slots: vec![PlanSlot {
                        pattern: None,
                        rule: rule(Some(60), None),
                    }],
                    budget: Budget {
                        usd_per_day: Some(0.01),
                        usd_per_month: None,
                    },
                },
                PlanScope {
                    id: "key:ab12".into(),
                    name: "key 0".into(),
                    slots: vec![
                        PlanSlot {
                            pattern: None,
                            rule: rule(None, Some(2)),
                        },
                        PlanSlot {
                            pattern: Some(Arc::from("gpt-*")),
                            rule: rule(Some(5), None),
                        },
                    ],
                    budget: Budget::default(),
                },
            ],
            tokens: 150,
            usd: 0.000_012_3,
            price: None,
        }
    }

    #[test]
    fn every_key_of_a_plan_carries_its_tenants_hash_tag() {
        let w = Wired::new("llmedge:", &plan());
        assert_eq!(w.keys[0], "llmedge:{acme}:tenant:acme:w");
        assert_eq!(w.keys[5], "llmedge:{acme}:key:ab12:l");
        assert_eq!(w.keys[6], "llmedge:{acme}:key:ab12:w:m=gpt-*");
        assert!(w.keys.iter().all(|k| k.contains("{acme}")));
        assert_eq!(
            scope_key("p:", "a}b{%", "tenant:x"),
            "p:{a%7Db%7B%25}:tenant:x",
            "a brace in a tenant's name cannot cut its hash tag short"
        );
        assert_eq!(w.slots, vec![(1, 2), (5, 6), (7, 8)]);
        assert_eq!(w.spends, vec![(3, 4), (9, 10)]);
    }

    #[test]
    fn the_admission_argument_lists_each_check_with_its_own_limits_and_no_nulls() {
        let p = plan();
        let w = Wired::new("p:", &p);
        let arg: serde_json::Value =
            serde_json::from_str(&w.admit_arg(&p, "g-1", Duration::from_secs(30))).unwrap();
        assert_eq!(arg["micro"], 13, "a reservation rounds up");
        let c = arg["c"].as_array().unwrap();
        assert_eq!(c.len(), 4, "tenant slot, tenant budget, two key slots");
        assert_eq!(c[0]["rpm"], 60);
        assert_eq!(c[1]["k"], "b");
        assert_eq!(c[1]["day"], 10_000);
        assert!(c[1].get("month").is_none(), "no null reaches Lua");
        assert_eq!((c[2]["conc"].as_u64(), c[2].get("rpm")), (Some(2), None));
        assert_eq!(
            (c[3]["rpm"].as_u64(), c[3]["w"].as_u64()),
            (Some(5), Some(7))
        );
    }

    #[test]
    fn replies_become_grants_or_refusals_naming_the_scope() {
        let p = plan();
        let ok = admit_reply(&p, &[1, 0, -1, 0, 5000, 60, 59, 0, -1, -1, -1, 0])
            .unwrap()
            .unwrap();
        assert_eq!(ok.at_ms, 5000);
        assert_eq!(ok.headers.requests.unwrap().remaining, 59);
        assert!(ok.headers.tokens.is_none());
        let no = admit_reply(&p, &[0, 3, 1, 1000, 5000, -1, -1, -1, -1, -1, -1, 2])
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (no.kind, no.scope.as_str()),
            (LimitKind::Concurrency, "key 0")
        );
        assert_eq!(no.limit, 2.0);
        let broke = admit_reply(&p, &[0, 4, 0, 7, 1, -1, -1, -1, -1, -1, -1, 10_000])
            .unwrap()
            .unwrap_err();
        assert_eq!((broke.limit, broke.retry_after.as_millis()), (0.01, 7));
        assert!(admit_reply(&p, &[1, 2]).is_err());
        assert!(admit_reply(&p, &[0, 9, 0, 0, 0, -1, -1, -1, -1, -1, -1, 0]).is_err());
    }

    #[test]
    fn settlement_and_renewal_name_the_same_lease_members() {
        let p = plan();
        let w = Wired::new("p:", &p);
        let lease = Lease {
            id: "g-1".into(),
            tokens: 150,
            micro: 13,
        };
        let (keys, arg) = settle_call(&w, "p:{acme}:done:g-1".into(), &lease, 9, (40, 3));
        assert_eq!(keys.len(), w.keys.len() + 1, "the marker comes last");
        let s: serde_json::Value = serde_json::from_str(&arg).unwrap();
        assert_eq!(
            s["w"],
            json!([[1, 2, 1, 150, 1], [5, 6, 1, 150, 1], [7, 8, 1, 150, 1]]),
            "every slot has tpm: each lease holds the tokens"
        );
        assert_eq!(
            s["s"],
            json!([[3, 4, 1], [9, 10, 0]]),
            "only the tenant has a budget"
        );
        let r: serde_json::Value =
            serde_json::from_str(&renew_arg(&w, &lease, Duration::from_secs(3))).unwrap();
        assert_eq!(r["z"][0], json!([2, "g-1:150", 1]));
        assert_eq!(
            r["z"][3],
            json!([4, "g-1:13", 3]),
            "the budget reservation, tenant only"
        );
        assert_eq!(r["z"].as_array().unwrap().len(), 4);
        assert_eq!(micro(0.000_000_4), 0);
        assert_eq!(micro(1.5), 1_500_000);
    }
}
