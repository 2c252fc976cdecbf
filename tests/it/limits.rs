//! Rate limits, token limits, concurrency and budgets, through the real gateway.

use std::time::{Duration, Instant};

use async_openai::types::chat::CreateChatCompletionRequest;
use serde_json::json;

use crate::support::*;

const CHAT: &str = "/v1/chat/completions";

fn limited(port: u16, admin: u16, upstream: &str, extra: &str, key_extra: &str) -> String {
    let head = server_and_client_key(port, admin);
    format!(
        r#"{head}{key_extra}
pools:
  mock:
    backends: ["{upstream}"]
routes:
  - prefix: "mock/"
    pool: mock
    strip_prefix: true
pricing:
  "mock/*": {{input: 1000.0, output: 1000.0}}
{extra}
"#
    )
}

/// Milliseconds in OpenAI's `x-ratelimit-reset-*` format (`20ms`, `7s`, `1m0s`, `1h2m3s`).
fn reset_ms(v: &str) -> u64 {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().unwrap_or_else(|_| panic!("bad reset {v}"));
    }
    let mut total = 0;
    let mut num = String::new();
    for c in v.chars() {
        match c {
            '0'..='9' => num.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad reset {v}"));
                total += n * match c {
                    'h' => 3_600_000,
                    'm' => 60_000,
                    _ => 1000,
                };
                num.clear();
            }
            _ => panic!("bad reset {v}"),
        }
    }
    assert!(num.is_empty() && v.ends_with('s'), "bad reset {v}");
    total
}

async fn send(gw: &TestGateway, body: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = post(gw, CHAT, CLIENT_KEY, body).await;
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

#[tokio::test]
async fn rpm_admits_exactly_the_limit_under_concurrent_load() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| limited(p, a, &mock.url(), "", "    limits: {rpm: 5}"))
        .await;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let url = gw.url(CHAT);
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(CLIENT_KEY)
                    .body(r#"{"model":"mock/echo","messages":[]}"#)
                    .send()
                    .await
                    .unwrap();
                let (s, h) = (r.status().as_u16(), r.headers().clone());
                (s, h, r.text().await.unwrap())
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!(headers["x-ratelimit-limit-requests"], "5");
        if status == 200 {
            ok += 1;
            continue;
        }
        assert_eq!(status, 429);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "requests");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        let reset = reset_ms(headers["x-ratelimit-reset-requests"].to_str().unwrap());
        assert!(
            (1..=120_000).contains(&reset),
            "the sliding estimate is back to zero within two windows: {reset} ms"
        );
        let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=120).contains(&wait), "Retry-After in seconds: {wait}");
        assert!(headers.contains_key("retry-after-ms"));
    }
    assert_eq!(ok, 5, "exactly the configured number");
    assert_eq!(
        mock.completions(),
        5,
        "refused requests never reach the upstream"
    );
    gw.wait_metric(r#"llmedge_ratelimited_total{limit="rpm",tenant="acme"} 7"#)
        .await;
}

#[tokio::test]
async fn token_limits_reserve_at_admission_and_settle_to_reported_usage() {
    let mock = MockOpenAi::start().await;
    let gw =
        TestGateway::start_with(|p, a| limited(p, a, &mock.url(), "", "    limits: {tpm: 100}"))
            .await;
    // prompt estimate: `[]` is 2 characters -> 1 token; max_tokens 20: reserves 21
    let body = r#"{"model":"mock/echo","stream":true,"max_tokens":20,"messages":[]}"#;
    let (status, h, text) = send(&gw, body).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(h["x-ratelimit-limit-tokens"], "100");
    assert_eq!(h["x-ratelimit-remaining-tokens"], "79", "100 - 21 reserved");
    gw.wait_log("\"stream\":true").await;
    // the stream reported 14 tokens (11 + 3): the next request sees 100 - 14 - 21
    let (_, h, _) = send(&gw, body).await;
    assert_eq!(h["x-ratelimit-remaining-tokens"], "65");
    let big = r#"{"model":"mock/echo","max_tokens":1000,"messages":[]}"#;
    let (status, h, text) = send(&gw, big).await;
    assert_eq!(status, 429, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "tokens");
    // OpenAI's duration format: the 35 reserved tokens are given back within the minute
    let reset = reset_ms(h["x-ratelimit-reset-tokens"].to_str().unwrap());
    // the sliding-window estimate lets a minute's use fade over the next minute
    assert!(
        (1..=120_000).contains(&reset),
        "within two minutes: {reset} ms"
    );
}

#[tokio::test]
async fn a_stream_cut_by_the_client_is_charged_what_was_streamed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| limited(p, a, &mock.url(), "", "")).await;
    let mut sock = connect(&gw).await;
    let body = r#"{"model":"mock/endless","stream":true,"messages":[]}"#;
    let req = raw_chat_request(body);
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("\"content\":\"tok\"").count() < 3 {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(sock);
    let line = gw.wait_log("\"model\":\"mock/endless\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 499);
    let charged = v["completion_tokens"].as_u64().unwrap();
    assert!(
        mock.wait_abort(Duration::from_secs(5)).await,
        "the upstream saw the hang-up"
    );
    let written = mock.endless_events() as u64;
    // what was streamed, not the 4096-token reservation: at least what the client read, at most
    // what the upstream managed to write (the write that failed is not counted by the mock,
    // one event may be in flight in the gateway)
    assert!(
        (3..=written + 1).contains(&charged),
        "charged {charged} tokens, upstream wrote {written}: {line}"
    );
    let prompt = v["prompt_tokens"].as_u64().unwrap();
    let spend = gw
        .metric_value("llmedge_spend_usd_total{model=\"mock/endless\",tenant=\"acme\"}")
        .await;
    let want = (prompt + charged) as f64 * 1000.0 / 1e6;
    assert!(
        (spend - want).abs() < 1e-9,
        "spend {spend} is (prompt {prompt} + completion {charged}) x $0.001"
    );
}

#[tokio::test]
async fn budget_stops_the_tenant_at_the_right_cent_and_survives_a_restart() {
    let mock = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    // each request: worst case (1 + 5 tokens) x $0.001 = $0.006; real use 11 + 1 = $0.012
    let extra = format!(
        "tenants:\n  acme:\n    budget: {{usd_per_day: 0.05}}\nstate:\n  path: \"{}\"\n  flush_ms: 50\n",
        state.display()
    );
    let body = r#"{"model":"mock/echo","max_tokens":5,"messages":[]}"#;
    let gw = TestGateway::start_with(|p, a| limited(p, a, &mock.url(), &extra, "")).await;
    for i in 0..2 {
        assert_eq!(send(&gw, body).await.0, 200, "request {i}");
    }
    gw.wait_log("\"completion_tokens\":1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saved = std::fs::read_to_string(&state).unwrap_or_default();
        if saved.contains("0.024") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spend never reached the state file: {saved}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(gw.stop().await);

    let gw = TestGateway::start_with(|p, a| limited(p, a, &mock.url(), &extra, "")).await;
    for i in 0..2 {
        assert_eq!(
            send(&gw, body).await.0,
            200,
            "request {i} after the restart"
        );
    }
    let (status, h, text) = send(&gw, body).await;
    assert_eq!(
        status, 429,
        "$0.048 spent, $0.006 more would pass $0.05: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "insufficient_quota");
    assert_eq!(v["error"]["type"], "insufficient_quota");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("daily budget of tenant acme"));
    assert_eq!(h["x-should-retry"], "false");
    let left = gw
        .metric_value(r#"llmedge_budget_remaining_usd{tenant="acme",window="day"}"#)
        .await;
    assert!((left - 0.002).abs() < 1e-9, "$0.05 - $0.048 left: {left}");
    gw.wait_metric(r#"llmedge_ratelimited_total{limit="budget_day",tenant="acme"} 1"#)
        .await;
    assert_eq!(mock.completions(), 4);
}

#[tokio::test]
async fn concurrency_limit_and_the_sdk_honouring_retry_after() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| {
        limited(
            p,
            a,
            &mock.url(),
            "tenants:\n  acme:\n    limits: {concurrency: 1}\n",
            "",
        )
    })
    .await;
    let held = gw.post_in_background(r#"{"model":"mock/hold","messages":[]}"#);
    mock.wait_requests(1).await;
    let client = openai_client(&gw, CLIENT_KEY); // async-openai retries 429s by Retry-After
    let req: CreateChatCompletionRequest =
        serde_json::from_value(json!({"model": "mock/echo", "messages": []})).unwrap();
    let start = Instant::now();
    let call = tokio::spawn(async move { client.chat().create(req).await });
    gw.wait_metric(r#"llmedge_ratelimited_total{limit="concurrency",tenant="acme"} 1"#)
        .await; // the SDK's first try was refused
    held.abort(); // the held request ends; its concurrency slot is released
    gw.wait_log("\"model\":\"mock/hold\"").await;
    let resp = call.await.unwrap().expect("the SDK's retry succeeds");
    assert_eq!(resp.model, "mock/echo");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "it waited for Retry-After: 1"
    );
    gw.wait_metric(r#"llmedge_ratelimited_total{limit="concurrency",tenant="acme"} 1"#)
        .await; // one refusal, no hammering
}

#[tokio::test]
async fn spend_is_saved_at_shutdown_even_between_periodic_flushes() {
    let mock = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let extra = format!(
        "tenants:\n  acme:\n    budget: {{usd_per_day: 5}}\nstate:\n  path: \"{}\"\n  flush_ms: 3600000\n",
        state.display()
    );
    let gw = TestGateway::start_with(|p, a| limited(p, a, &mock.url(), &extra, "")).await;
    let body = r#"{"model":"mock/echo","max_tokens":5,"messages":[]}"#;
    assert_eq!(send(&gw, body).await.0, 200);
    gw.wait_log("\"completion_tokens\":1").await;
    assert!(!state.exists(), "the hourly flush has not run yet");
    gw.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saved = std::fs::read_to_string(&state).unwrap_or_default();
        if saved.contains("0.012") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shutdown did not save the spend: {saved}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
