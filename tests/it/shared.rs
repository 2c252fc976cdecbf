//! `state.backend: redis`: three gateways on one Redis of the test's own hold every limit and
//! budget once between them, give a dead gateway's capacity back, and ride out Redis going away.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::support::redis_server::{RedisServer, PASSWORD};
use crate::support::*;

const CHAT: &str = "/v1/chat/completions";
const ECHO: &str = r#"{"model":"mock/echo","max_tokens":5,"messages":[]}"#;
const GATED: &str = r#"{"model":"mock/gated","stream":true,"max_tokens":30,"messages":[]}"#;

/// A gateway config on `redis`: the standard key (tenant acme) with `key_limits`, the mock
/// pool at $0.001 per token, `tenants`, and `state_extra` under `state:`.
struct Fleet<'a> {
    upstream: String,
    redis: String,
    /// More of `state.redis` (the CA of a TLS server).
    redis_extra: String,
    timeout_ms: u64,
    key_limits: &'a str,
    tenants: &'a str,
    state_extra: &'a str,
}

impl<'a> Fleet<'a> {
    fn new(mock: &MockOpenAi, redis: &RedisServer, key_limits: &'a str, tenants: &'a str) -> Self {
        let redis_extra = redis.ca().map_or_else(String::new, |ca| {
            format!(", tls: {{ca_file: \"{}\"}}", ca.display())
        });
        Self {
            upstream: mock.url(),
            redis: redis.url(),
            redis_extra,
            timeout_ms: 1000,
            key_limits,
            tenants,
            state_extra: "",
        }
    }

    fn yaml(&self, port: u16, admin: u16) -> String {
        let head = server_and_client_key(port, admin);
        format!(
            r#"{head}{key_limits}
pools:
  mock:
    backends: ["{upstream}"]
routes:
  - {{prefix: "mock/", pool: mock, strip_prefix: true}}
pricing:
  "mock/*": {{input: 1000.0, output: 1000.0}}
{tenants}
state:
  backend: redis
  redis: {{url: "{redis}", timeout_ms: {timeout_ms}, lease_ms: 1500{redis_extra}}}
{state_extra}
"#,
            key_limits = self.key_limits,
            upstream = self.upstream,
            redis = self.redis,
            timeout_ms = self.timeout_ms,
            redis_extra = self.redis_extra,
            tenants = self.tenants,
            state_extra = self.state_extra,
        )
    }

    async fn start(&self, n: usize) -> Vec<TestGateway> {
        join_all((0..n).map(|_| TestGateway::start_with(|p, a| self.yaml(p, a)))).await
    }
}

async fn fleet<'a>(
    mock: &MockOpenAi,
    redis: &RedisServer,
    key_limits: &'a str,
    tenants: &'a str,
) -> (Fleet<'a>, Vec<TestGateway>) {
    let f = Fleet::new(mock, redis, key_limits, tenants);
    let gws = f.start(3).await;
    for gw in &gws {
        gw.wait_metric("llmedge_state_backend_up 1").await;
    }
    (f, gws)
}

async fn send(gw: &TestGateway, body: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = post(gw, CHAT, CLIENT_KEY, body).await;
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

/// Sends `n` requests at once, spread round-robin over the gateways; their statuses in order.
async fn spread(gws: &[TestGateway], n: usize, body: &'static str) -> Vec<(u16, bool)> {
    let client = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        let req = client
            .post(gws[i % gws.len()].url(CHAT))
            .bearer_auth(CLIENT_KEY)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }
    });
    join_all(calls).await
}

/// Opens `n` gated streams at once, round-robin over the gateways (held until `open_gate`).
async fn open_gated(gws: &[TestGateway], n: usize) -> Vec<reqwest::Result<reqwest::Response>> {
    let client = reqwest::Client::new();
    let calls = (0..n).map(|i| {
        client
            .post(gws[i % gws.len()].url(CHAT))
            .bearer_auth(CLIENT_KEY)
            .body(GATED)
            .send()
    });
    join_all(calls).await
}

#[tokio::test]
async fn rpm_30_admits_exactly_30_of_90_across_three_gateways_with_shared_headers() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start().await);
    let (_f, gws) = fleet(&mock, &redis, "    limits: {rpm: 30}", "").await;
    // one after another on different gateways: one count, seen by all
    let mut remaining = Vec::new();
    for gw in &gws {
        let (s, h, _) = send(gw, ECHO).await;
        assert_eq!(s, 200);
        remaining.push(
            h["x-ratelimit-remaining-requests"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(remaining, ["29", "28", "27"]);
    let got = spread(&gws, 87, ECHO).await;
    let ok = got.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 27, "30 in all: {got:?}");
    assert!(got
        .iter()
        .filter(|(s, _)| *s != 200)
        .all(|(s, retry)| *s == 429 && *retry));
    let (s, h, _) = send(&gws[1], ECHO).await;
    assert_eq!(s, 429);
    // the window slides: the first admissions leave it about 60 s after they were counted
    // (not at the next minute or bucket edge, as a fixed window would have it)
    let after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=67).contains(&after), "retry-after {after}");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    // a reload raises one gateway's limit: the shared count stays, the new rule applies there
    let path = gws[0].config_path();
    let yaml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, yaml.replace("rpm: 30", "rpm: 31")).unwrap();
    gws[0].signal("HUP");
    gws[0].wait_log("config reloaded").await;
    assert_eq!(send(&gws[0], ECHO).await.0, 200, "31st under rpm 31");
    assert_eq!(send(&gws[0], ECHO).await.0, 429);
    assert_eq!(
        send(&gws[2], ECHO).await.0,
        429,
        "still rpm 30 on a gateway not reloaded"
    );
}

#[tokio::test]
async fn concurrency_2_admits_two_of_six_streams_and_frees_the_slots_on_every_gateway() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start().await);
    let (_f, gws) = fleet(
        &mock,
        &redis,
        "",
        "tenants:\n  acme:\n    limits: {concurrency: 2}",
    )
    .await;
    let opened = open_gated(&gws, 6).await;
    let (running, refused): (Vec<_>, Vec<_>) = opened
        .into_iter()
        .map(Result::unwrap)
        .partition(|r| r.status() == 200);
    assert_eq!(running.len(), 2, "two slots for the whole fleet");
    assert!(refused.iter().all(|r| r.status() == 429));
    mock.open_gate();
    for r in running {
        assert!(r.text().await.unwrap().contains("[DONE]"));
    }
    // settlement runs after the response: wait until both slots are back, on every gateway
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = spread(&gws[1..], 2, ECHO).await;
        if got.iter().all(|(s, _)| *s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(spread(&gws, 3, ECHO).await.len(), 3);
}

#[tokio::test]
async fn tpm_reservations_across_gateways_never_pass_the_limit() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start().await);
    // each gated request reserves 1 prompt token (estimate) + 30 = 31: three fit in 100
    let (_f, gws) = fleet(&mock, &redis, "    limits: {tpm: 100}", "").await;
    let opened = open_gated(&gws, 9).await;
    let statuses: Vec<u16> = opened
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 6);
    mock.open_gate();
    for r in opened {
        drop(r.unwrap().text().await);
    }
}

#[tokio::test]
async fn a_daily_budget_stops_at_the_right_cent_across_gateways_and_survives_their_restart() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start().await);
    // worst case (1 + 5 tokens) x $0.001 = $0.006; real use 11 + 1 tokens = $0.012
    let tenants = "tenants:\n  acme:\n    budget: {usd_per_day: 0.05}";
    let (f, gws) = fleet(&mock, &redis, "", tenants).await;
    let spend_key = "llmedge:{acme}:tenant:acme:s";
    for i in 0..4 {
        assert_eq!(send(&gws[i % 3], ECHO).await.0, 200, "request {i}");
        // the next admission must see this one settled, whichever gateway it goes to
        let want = 12_000 * (i as i64 + 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.day_spend(spend_key).await != want {
            assert!(Instant::now() < deadline, "spend never reached {want}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for gw in gws {
        drop(gw.stop().await);
    }
    let gws = f.start(3).await;
    for gw in &gws {
        gw.wait_metric("llmedge_state_backend_up 1").await;
    }
    let (status, _, text) = send(&gws[2], ECHO).await;
    assert_eq!(
        status, 429,
        "$0.048 spent, $0.006 more passes $0.05: {text}"
    );
    assert!(text.contains("daily budget of tenant acme"), "{text}");
    assert_eq!(mock.completions(), 4);
    let left = gws[0]
        .metric_value(r#"llmedge_budget_remaining_usd{tenant="acme",window="day"}"#)
        .await;
    assert!(
        (left - 0.002).abs() < 1e-9,
        "the gauge reads the shared spend: {left}"
    );
}

#[tokio::test]
async fn a_gateway_killed_while_holding_capacity_gives_it_back_within_the_lease() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start().await);
    // one stream holds the only slot, 31 of 40 tokens and its worst case of a $0.04 budget
    let tenants =
        "tenants:\n  acme:\n    limits: {concurrency: 1, tpm: 40}\n    budget: {usd_per_day: 0.04}";
    let (_f, mut gws) = fleet(&mock, &redis, "", tenants).await;
    let held = post(&gws[0], CHAT, CLIENT_KEY, GATED).await;
    assert_eq!(held.status(), 200);
    // a live gateway renews its lease: the slot stays held for three lease lifetimes
    let until = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < until {
        assert_eq!(send(&gws[1], ECHO).await.0, 429, "renewed lease held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gws[0].signal("KILL");
    gws[0].wait_exit(Duration::from_secs(5)).await;
    let killed = Instant::now();
    loop {
        let (s, _, text) = send(&gws[1], ECHO).await;
        if s == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(1500 + 1500),
            "capacity not back within lease_ms (1.5 s) and a margin: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    mock.open_gate();
}

#[tokio::test]
async fn redis_killed_mid_run_allow_keeps_answering_deny_answers_503_and_limits_return() {
    let (mock, mut redis) = (MockOpenAi::start().await, RedisServer::start().await);
    let mut f = Fleet::new(&mock, &redis, "    limits: {rpm: 4}", "");
    let allow = f.start(1).await.pop().unwrap();
    f.state_extra = "  on_error: {limits: deny}";
    let deny = f.start(1).await.pop().unwrap();
    for gw in [&allow, &deny] {
        gw.wait_metric("llmedge_state_backend_up 1").await;
    }
    assert_eq!(send(&allow, ECHO).await.0, 200);
    redis.kill();
    for i in 0..3 {
        let (s, _, text) = send(&allow, ECHO).await;
        assert_eq!(s, 200, "allow admits while Redis is away ({i}): {text}");
    }
    let (s, h, text) = send(&deny, ECHO).await;
    assert_eq!(s, 503, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "service_unavailable");
    assert_eq!(h["retry-after"], "1");
    allow.wait_metric("llmedge_state_backend_up 0").await;
    redis.restart().await;
    allow.wait_metric("llmedge_state_backend_up 1").await;
    deny.wait_metric("llmedge_state_backend_up 1").await;
    // the restarted Redis is empty (nothing saved): what the allow gateway counted on its own
    // was merged into it, so one of rpm 4 is left for the whole fleet
    assert_eq!(send(&deny, ECHO).await.0, 200);
    let (s, _, text) = send(&deny, ECHO).await;
    assert_eq!(s, 429, "limits hold again, local counts included: {text}");
    let logs = allow.logs();
    assert_eq!(
        logs.matches("shared state store unreachable").count(),
        1,
        "{logs}"
    );
    assert_eq!(logs.matches("shared state store reachable").count(), 2);
    for text in [logs, deny.logs(), allow.metrics().await] {
        assert!(!text.contains(PASSWORD), "the Redis password leaked");
    }
}

#[tokio::test]
async fn a_gateway_whose_redis_is_away_at_start_serves_by_on_error_and_connects_later() {
    let mock = MockOpenAi::start().await;
    let mut redis = RedisServer::start().await;
    redis.kill();
    let f = Fleet::new(
        &mock,
        &redis,
        "    limits: {rpm: 100}",
        "tenants:\n  acme:\n    budget: {usd_per_day: 5}",
    );
    let gw = f.start(1).await.pop().unwrap();
    let (s, _, text) = send(&gw, ECHO).await;
    assert_eq!(s, 503, "budgets: deny by default: {text}");
    redis.restart().await;
    gw.wait_metric("llmedge_state_backend_up 1").await;
    assert_eq!(send(&gw, ECHO).await.0, 200);
    assert!(
        !std::fs::exists(gw.dir().join("llmedge-state.json")).unwrap(),
        "no state file"
    );
}

#[tokio::test]
async fn every_call_keeps_to_one_cluster_slot() {
    let (mock, redis) = (
        MockOpenAi::start().await,
        RedisServer::start_cluster().await,
    );
    // a tenant rule, a key rule and a per-model rule, a budget: six keys per call
    let key = "    limits: {rpm: 2, models: {'mock/*': {tpm: 1000}}}";
    let tenants = "tenants:\n  acme:\n    limits: {concurrency: 5}\n    budget: {usd_per_day: 1}";
    let f = Fleet::new(&mock, &redis, key, tenants);
    let gw = f.start(1).await.pop().unwrap();
    gw.wait_metric("llmedge_state_backend_up 1").await;
    assert_eq!(send(&gw, ECHO).await.0, 200);
    assert_eq!(send(&gw, ECHO).await.0, 200);
    assert_eq!(
        send(&gw, ECHO).await.0,
        429,
        "rpm 2, counted on the cluster"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.day_spend("llmedge:{acme}:tenant:acme:s").await != 24_000 {
        assert!(
            Instant::now() < deadline,
            "spend never settled on the cluster"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = gw.metrics().await;
    assert!(
        !m.contains("llmedge_state_backend_errors_total{"),
        "no CROSSSLOT or other error:\n{m}"
    );
}

#[tokio::test]
async fn rediss_with_a_private_ca_shares_limits_over_tls() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start_tls().await);
    let f = Fleet::new(&mock, &redis, "    limits: {rpm: 2}", "");
    let gws = f.start(2).await;
    for gw in &gws {
        gw.wait_metric("llmedge_state_backend_up 1").await;
    }
    assert_eq!(send(&gws[0], ECHO).await.0, 200);
    assert_eq!(send(&gws[1], ECHO).await.0, 200);
    assert_eq!(send(&gws[0], ECHO).await.0, 429, "rpm 2 shared over TLS");
}

#[tokio::test]
async fn a_redis_slower_than_timeout_ms_costs_a_request_at_most_the_timeout() {
    let (mock, redis) = (MockOpenAi::start().await, RedisServer::start().await);
    let mut f = Fleet::new(&mock, &redis, "    limits: {rpm: 100}", "");
    f.timeout_ms = 100;
    let gw = f.start(1).await.pop().unwrap();
    gw.wait_metric("llmedge_state_backend_up 1").await;
    assert_eq!(send(&gw, ECHO).await.0, 200);
    // Redis stops answering anyone for 5 s: alive, connected, silent
    redis
        .query(&["CLIENT", "PAUSE", "5000", "ALL"])
        .await
        .unwrap();
    let started = Instant::now();
    let (s, _, text) = send(&gw, ECHO).await;
    assert_eq!(
        s, 200,
        "allow: admitted locally once the 100 ms are up: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the request waited for the paused Redis instead of timing out"
    );
    gw.wait_metric("llmedge_state_backend_up 0").await;
    gw.wait_metric(r#"llmedge_state_backend_errors_total{op="admit"} 1"#)
        .await;
    assert_eq!(
        send(&gw, ECHO).await.0,
        200,
        "no wait at all while marked down"
    );
    // the pause ends by itself: the gateway finds Redis again
    gw.wait_metric("llmedge_state_backend_up 1").await;
}

/// The library's functions called directly, as a gateway would, against a real server.
mod functions {
    use super::*;

    const LIB: &str = include_str!("../../src/shared/llmedge.lua");

    async fn fcall(redis: &RedisServer, f: &str, keys: &[&str], arg: &str) -> redis::Value {
        let n = keys.len().to_string();
        let mut args = vec!["FCALL", f, &n];
        args.extend_from_slice(keys);
        args.push(arg);
        redis.query(&args).await.unwrap()
    }

    /// One scope's window, leases, spend and reservations.
    const KEYS: [&str; 4] = ["t:{a}:w", "t:{a}:l", "t:{a}:s", "t:{a}:r"];

    /// A server of this test's own with the library loaded.
    async fn loaded() -> RedisServer {
        let redis = RedisServer::start().await;
        redis
            .query(&["FUNCTION", "LOAD", "REPLACE", LIB])
            .await
            .unwrap();
        redis
    }

    fn first(v: &redis::Value) -> i64 {
        match v {
            redis::Value::Array(a) => match a[0] {
                redis::Value::Int(n) => n,
                _ => panic!("{v:?}"),
            },
            _ => panic!("{v:?}"),
        }
    }

    #[tokio::test]
    async fn a_lease_nobody_settled_gives_its_reservations_back_even_once_its_zset_is_gone() {
        let redis = loaded().await;
        let keys = KEYS;
        // tpm 500 and a budget of 100 micro-USD: one request of 500 tokens and 70 micro fits
        let plan = |lease: &str| {
            format!(
                r#"{{"lease":"{lease}","ttl":10,"tokens":500,"micro":70,"c":[{{"k":"s","w":1,"l":2,"tpm":500,"scope":0}},{{"k":"b","s":3,"r":4,"day":100,"scope":0}}]}}"#
            )
        };
        assert_eq!(
            first(&fcall(&redis, "llmedge_admit_1", &keys, &plan("g-1")).await),
            1
        );
        assert_eq!(
            first(&fcall(&redis, "llmedge_admit_1", &keys, &plan("g-2")).await),
            0,
            "the first one's reservation is held"
        );
        // its gateway died: no settlement, no renewal; the lease zsets expire on their own
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.query(&["EXISTS", keys[1], keys[3]]).await.unwrap() != redis::Value::Int(0) {
            assert!(Instant::now() < deadline, "the lease zsets never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            first(&fcall(&redis, "llmedge_admit_1", &keys, &plan("g-3")).await),
            1,
            "tokens and budget came back with the lease"
        );
    }

    #[tokio::test]
    async fn a_concurrency_only_slot_keeps_no_rate_buckets_and_a_resent_settlement_counts_once() {
        let redis = loaded().await;
        let keys = KEYS;
        let admit = r#"{"lease":"g-1","ttl":30000,"tokens":5,"micro":0,"c":[{"k":"s","w":1,"l":2,"conc":3,"scope":0}]}"#;
        assert_eq!(
            first(&fcall(&redis, "llmedge_admit_1", &keys, admit).await),
            1
        );
        assert_eq!(
            redis.query(&["EXISTS", keys[0]]).await.unwrap(),
            redis::Value::Int(0),
            "no window for a slot without rpm or tpm"
        );
        let mut with_done = keys.to_vec();
        with_done.push("t:{a}:done:s:g-1");
        let settle = r#"{"lease":"g-1","micro":0,"at":0,"actual":5,"cost":40,"w":[[1,2,1,0,0]],"s":[[3,4,0]]}"#;
        for _ in 0..2 {
            fcall(&redis, "llmedge_settle_1", &with_done, settle).await;
        }
        assert_eq!(redis.day_spend(keys[2]).await, 40, "charged once");
        assert_eq!(
            redis.query(&["ZCARD", keys[1]]).await.unwrap(),
            redis::Value::Int(0)
        );
    }
}
