use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::clock;
use crate::openai::PromptDetails;

struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

/// 2026-11-22 10:00:00 UTC.
const T0: u64 = 1_795_341_600_000;

fn setup(yaml: &str) -> (Governor, Config, Arc<ManualClock>) {
    let base = format!(
        "pools: {{p: {{backends: ['http://h']}}}}\nroutes: [{{prefix: '', pool: p}}]\n{yaml}"
    );
    let config = Config::from_yaml(&base, &|_| None).unwrap();
    let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
    let counters = Counters::default();
    (
        Governor::new(&config, &counters, clock.clone()),
        config,
        clock,
    )
}

fn ask<'a>(c: &'a Config, key: usize, model: &'a str, prompt: u64, completion: u64) -> Ask<'a> {
    Ask {
        key: &c.keys[key],
        model,
        prompt,
        completion,
    }
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: None,
    }
}

#[test]
fn rpm_admits_exactly_the_limit_under_concurrency() {
    let (g, c, _) = setup("keys: [{key: k, tenant: t, limits: {rpm: 100}}]");
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..50 {
                    if g.admit(&ask(&c, 0, "m", 1, 1)).is_ok() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 100);
    let d = g.admit(&ask(&c, 0, "m", 1, 1)).unwrap_err();
    assert_eq!(d.kind, LimitKind::Rpm);
    assert_eq!(d.scope, "key 0");
    assert_eq!(d.headers.requests.unwrap().remaining, 0);
    assert!(d.retry_after > Duration::ZERO);
}

#[test]
fn rpm_window_slides_without_edge_bursts() {
    let (g, c, clock) = setup("keys: [{key: k, tenant: t, limits: {rpm: 10}}]");
    clock.advance(59_000); // late in a minute
    for _ in 0..10 {
        g.admit(&ask(&c, 0, "m", 1, 1)).unwrap();
    }
    clock.advance(2_000); // just after the minute edge: a fixed window would allow 10 more
    assert!(
        g.admit(&ask(&c, 0, "m", 1, 1)).is_err(),
        "no 2x burst at the window edge"
    );
    clock.advance(30_000);
    let ok = (0..10)
        .filter(|_| g.admit(&ask(&c, 0, "m", 1, 1)).is_ok())
        .count();
    assert!(
        (4..=6).contains(&ok),
        "about half the previous minute has slid out: {ok}"
    );
}

#[test]
fn concurrency_is_released_by_settle() {
    let (g, c, _) = setup("tenants: {t: {limits: {concurrency: 2}}}\nkeys: [{key: k, tenant: t}]");
    let a = g.admit(&ask(&c, 0, "m", 1, 1)).unwrap();
    let _b = g.admit(&ask(&c, 0, "m", 1, 1)).unwrap();
    let d = g.admit(&ask(&c, 0, "m", 1, 1)).unwrap_err();
    assert_eq!(
        (d.kind, d.scope.as_str()),
        (LimitKind::Concurrency, "tenant t")
    );
    g.settle(&a, usage(1, 1));
    assert!(g.admit(&ask(&c, 0, "m", 1, 1)).is_ok());
}

#[test]
fn tpm_reserves_at_admission_and_settles_to_real_usage() {
    let (g, c, _) = setup("keys: [{key: k, tenant: t, limits: {tpm: 1000}}]");
    let first = g.admit(&ask(&c, 0, "m", 100, 400)).unwrap();
    assert_eq!(first.headers.tokens.unwrap().remaining, 500);
    let _second = g.admit(&ask(&c, 0, "m", 100, 400)).unwrap();
    assert_eq!(
        g.admit(&ask(&c, 0, "m", 100, 400)).unwrap_err().kind,
        LimitKind::Tpm
    );
    g.settle(&first, usage(30, 20)); // used 50 of its 500
    assert!(
        g.admit(&ask(&c, 0, "m", 100, 400)).is_err(),
        "550 used + 500 > 1000"
    );
    let third = g.admit(&ask(&c, 0, "m", 100, 300)).unwrap();
    assert_eq!(
        third.headers.tokens.unwrap().remaining,
        1000 - 50 - 500 - 400
    );
}

#[test]
fn per_model_limits_count_only_their_models_and_tenant_limits_apply_too() {
    let (g, c, _) = setup(
        "tenants: {t: {limits: {rpm: 5}}}\nkeys: [{key: k, tenant: t, limits: {models: {'gpt-4o*': {rpm: 2}}}}]",
    );
    assert!(g.admit(&ask(&c, 0, "gpt-4o-mini", 1, 1)).is_ok());
    assert!(g.admit(&ask(&c, 0, "gpt-4o", 1, 1)).is_ok());
    assert_eq!(
        g.admit(&ask(&c, 0, "gpt-4o", 1, 1)).unwrap_err().scope,
        "key 0"
    );
    assert!(
        g.admit(&ask(&c, 0, "llama", 1, 1)).is_ok(),
        "other models are not counted"
    );
    assert!(g.admit(&ask(&c, 0, "llama", 1, 1)).is_ok());
    assert!(
        g.admit(&ask(&c, 0, "llama", 1, 1)).is_ok(),
        "the 5th request of the tenant"
    );
    let d = g.admit(&ask(&c, 0, "llama", 1, 1)).unwrap_err();
    assert_eq!(
        (d.kind, d.scope.as_str()),
        (LimitKind::Rpm, "tenant t"),
        "5 per tenant"
    );
}

const PRICED: &str = "pricing: {'m*': {input: 1.0, output: 2.0, cached_input: 0.5}}\n";

#[test]
fn budget_stops_at_the_right_cent_and_counts_cached_tokens() {
    let (g, c, _) = setup(&format!(
        "{PRICED}keys: [{{key: k, tenant: t, budget: {{usd_per_day: 0.01}}}}]"
    ));
    // worst case of each: 1000 prompt at $1/M + 1000 completion at $2/M = $0.003
    let held: Vec<_> = (0..3)
        .map(|_| g.admit(&ask(&c, 0, "m1", 1000, 1000)).unwrap())
        .collect();
    let d = g.admit(&ask(&c, 0, "m1", 1000, 1000)).unwrap_err();
    assert_eq!(d.kind, LimitKind::BudgetDay);
    assert_eq!(d.limit, 0.01);
    let mut u = usage(1000, 1000);
    u.prompt_tokens_details = Some(PromptDetails {
        cached_tokens: Some(1000),
    });
    let cost = g.settle(&held[0], u);
    assert!(
        (cost - 0.0025).abs() < 1e-12,
        "cached input at its own price: {cost}"
    );
    for h in &held[1..] {
        g.settle(h, usage(1000, 1000));
    }
    // spent 0.0085: one more worst case (0.003) would pass the cent
    assert!(g.admit(&ask(&c, 0, "m1", 1000, 1000)).is_err());
    assert!(
        g.admit(&ask(&c, 0, "m1", 500, 250)).is_ok(),
        "0.001 still fits"
    );
    assert!(
        g.admit(&ask(&c, 0, "other", 10_000, 10_000)).is_ok(),
        "unpriced models cost nothing"
    );
}

#[test]
fn budgets_reset_at_utc_day_and_month_boundaries() {
    let (g, c, clock) = setup(&format!(
        "{PRICED}tenants: {{t: {{budget: {{usd_per_day: 0.004, usd_per_month: 0.01}}}}}}\nkeys: [{{key: k, tenant: t}}]"
    ));
    let spend = |g: &Governor| {
        let a = g.admit(&ask(&c, 0, "m", 1000, 1000)).unwrap();
        g.settle(&a, usage(1000, 1000));
    };
    spend(&g);
    assert_eq!(
        g.admit(&ask(&c, 0, "m", 1000, 1000)).unwrap_err().kind,
        LimitKind::BudgetDay
    );
    clock.advance(clock::until_next_day(clock.now_ms()));
    spend(&g);
    clock.advance(clock::until_next_day(clock.now_ms()));
    spend(&g);
    clock.advance(clock::until_next_day(clock.now_ms()));
    let d = g.admit(&ask(&c, 0, "m", 1000, 1000)).unwrap_err();
    assert_eq!(d.kind, LimitKind::BudgetMonth, "0.009 spent this month");
    assert!(d.retry_after <= Duration::from_millis(clock::until_next_month(clock.now_ms())));
    clock.advance(clock::until_next_month(clock.now_ms()));
    assert!(g.admit(&ask(&c, 0, "m", 1000, 1000)).is_ok(), "a new month");
    let rem = g.budget_remaining();
    assert!(rem.iter().any(|(t, w, _)| t == "t" && *w == "month"));
}

#[test]
fn export_and_import_keep_spend_and_windows() {
    let yaml = format!(
        "pools: {{p: {{backends: ['http://h']}}}}\nroutes: [{{prefix: '', pool: p}}]\n{PRICED}keys: [{{key: k, tenant: t, limits: {{rpm: 3, models: {{'m*': {{tpm: 100000}}}}}}, budget: {{usd_per_day: 1}}}}]"
    );
    let config = Config::from_yaml(&yaml, &|_| None).unwrap();
    let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
    let counters = Counters::default();
    let g = Governor::new(&config, &counters, clock.clone());
    for _ in 0..3 {
        let a = g.admit(&ask(&config, 0, "m", 1000, 1000)).unwrap();
        g.settle(&a, usage(1000, 1000));
    }
    let saved = counters.export();
    let id = format!("key:{}", config.keys[0].id());
    let day = saved.scopes[&id].day.usd;
    assert!((day - 0.009).abs() < 1e-12, "{day}");
    assert_eq!(saved.scopes[&id].model_globs, ["m*"]);
    let fresh = Counters::default();
    let g2 = Governor::new(&config, &fresh, clock.clone());
    fresh.import(&saved);
    assert_eq!(
        g2.admit(&ask(&config, 0, "m", 1, 1)).unwrap_err().kind,
        LimitKind::Rpm,
        "window survived"
    );
    let back = fresh.export();
    assert_eq!(
        back.scopes[&id].models, saved.scopes[&id].models,
        "per-model windows too"
    );
}

#[test]
fn refusals_become_openai_errors_and_resets_read_like_openai() {
    assert_eq!(fmt_reset(Duration::from_millis(20)), "20ms");
    assert_eq!(fmt_reset(Duration::from_millis(1000)), "1s");
    assert_eq!(fmt_reset(Duration::from_millis(1001)), "2s");
    assert_eq!(fmt_reset(Duration::from_secs(360)), "6m0s");
    assert_eq!(fmt_reset(Duration::from_secs(3723)), "1h2m3s");
    let (g, c, _) = setup("keys: [{key: k, tenant: t, limits: {tpm: 10}}]");
    let e = g.admit(&ask(&c, 0, "m", 8, 8)).unwrap_err().to_error();
    let v = e.to_json();
    assert_eq!(e.status(), 429);
    assert_eq!(v["error"]["type"], "tokens");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    let (g, c, _) = setup(&format!(
        "{PRICED}keys: [{{key: k, tenant: t, budget: {{usd_per_month: 0}}}}]"
    ));
    let e = g.admit(&ask(&c, 0, "m", 1, 1)).unwrap_err().to_error();
    assert_eq!(e.to_json()["error"]["code"], "insufficient_quota");
    assert_eq!(
        e.to_string(),
        "you exceeded your current quota: the monthly budget of key 0 ($0.00) is spent"
    );
}

#[test]
fn a_reload_shares_windows_reservations_and_spend_and_settles_where_they_were_made() {
    let old_yaml = "keys: [{key: a, tenant: t, limits: {concurrency: 1, rpm: 10}, budget: {usd_per_day: 1}}]\npricing: {m: {input: 1000000, output: 0}}";
    let base = |y: &str| {
        format!("pools: {{p: {{backends: ['http://h']}}}}\nroutes: [{{prefix: '', pool: p}}]\n{y}")
    };
    let oc = Config::from_yaml(&base(old_yaml), &|_| None).unwrap();
    let clock = Arc::new(ManualClock(AtomicU64::new(T0)));
    let counters = Counters::default();
    let old = Governor::new(&oc, &counters, clock.clone());
    let adm = old.admit(&ask(&oc, 0, "m", 0, 0)).unwrap();
    old.settle(&adm, usage(0, 0));
    let running = old.admit(&ask(&oc, 0, "m", 0, 0)).unwrap();
    // the new config adds a key before "a" (it moves from index 0 to 1) and moves it to tenant u
    let new_yaml = "keys: [{key: z, tenant: u}, {key: a, tenant: u, limits: {concurrency: 1, rpm: 10}, budget: {usd_per_day: 1}}]\npricing: {m: {input: 1000000, output: 0}}";
    let nc = Config::from_yaml(&base(new_yaml), &|_| None).unwrap();
    let new = Governor::new(&nc, &counters, clock.clone());
    let d = new.admit(&ask(&nc, 1, "m", 0, 0)).unwrap_err();
    assert_eq!(
        (d.kind, d.scope.as_str()),
        (LimitKind::Concurrency, "key 1"),
        "the running request still holds its slot"
    );
    // one prompt token at $1 per token: settled in the cells it was admitted in
    assert!((new.settle(&running, usage(1, 0)) - 1.0).abs() < 1e-9);
    let d = new.admit(&ask(&nc, 1, "m", 1, 0)).unwrap_err();
    assert_eq!(
        d.kind,
        LimitKind::BudgetDay,
        "the slot is free, the day's dollar spent"
    );
    let e = counters.export();
    let key_a = &e.scopes[&format!("key:{}", nc.keys[1].id())];
    assert!((key_a.day.usd - 1.0).abs() < 1e-9);
    assert_eq!(
        key_a.requests.curr, 2.0,
        "both requests of the minute counted once"
    );
    assert!(
        (e.scopes["tenant:t"].day.usd - 1.0).abs() < 1e-9,
        "the tenant it was admitted under pays"
    );
    drop((old, running, adm));
    let _newer = Governor::new(&nc, &counters, clock.clone());
    assert!(
        counters.export().scopes.contains_key("tenant:t"),
        "a tenant no config names keeps today's spend, in case a reload names it again"
    );
    clock.advance(clock::until_next_month(clock.now_ms()));
    let _later = Governor::new(&nc, &counters, clock);
    assert!(
        !counters.export().scopes.contains_key("tenant:t"),
        "a tenant no config names is forgotten once it holds nothing"
    );
}
