//! Anthropic Messages in and out: `/v1/messages` and `count_tokens` for Anthropic-SDK clients
//! (translated for OpenAI-only pools, forwarded to native ones), and `protocol: anthropic`
//! pools behind OpenAI clients. Driven by the official Python SDKs (installed into a venv by
//! `.ci/deps`), against the mock's recorded streams.

use serde_json::{json, Value};

use crate::support::mock::{MockOpenAi, Recorded};
use crate::support::{run_sdk, server_and_client_key, TestGateway, CLIENT_KEY, POOL_KEY};

const ANTHROPIC_POOL_KEY: &str = "sk-ant-pool-secret-77";
const SLOW_KEY: &str = "sk-client-slow-555";
const TIGHT_KEY: &str = "sk-client-tight-556";

/// Three pools on the mock: `tr/` translates Messages to chat, `nat/` forwards Messages, and
/// `claude/` is an Anthropic upstream. Prices make the cached rate visible in spend.
fn yaml(upstream: &str, port: u16, admin: u16) -> String {
    let mut y = server_and_client_key(port, admin);
    y.push_str(&format!(
        r#"  - key: "{SLOW_KEY}"
    tenant: slow
  - key: "{TIGHT_KEY}"
    tenant: tight
tenants:
  slow: {{limits: {{rpm: 1}}}}
  tight: {{limits: {{tpm: 1000}}}}
pools:
  chat:
    backends: ["{upstream}"]
    api_key: "{POOL_KEY}"
  native:
    backends: ["{upstream}"]
    api_key: "{POOL_KEY}"
    messages: native
  claude:
    backends: ["{upstream}"]
    api_key: "{ANTHROPIC_POOL_KEY}"
    protocol: anthropic
    anthropic_version: "2023-06-01"
routes:
  - {{prefix: "tr/", pool: chat, strip_prefix: true}}
  - {{prefix: "nat/", pool: native, strip_prefix: true}}
  - {{prefix: "claude/", pool: claude, strip_prefix: true}}
pricing:
  "tr/*": {{input: 1.0, output: 2.0, cached_input: 0.1}}
  "nat/*": {{input: 1.0, output: 2.0, cached_input: 0.1}}
"#
    ));
    y
}

async fn start() -> (MockOpenAi, TestGateway) {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a)).await;
    (mock, gw)
}

/// Runs `tests/sdk/<script>` against the gateway and returns what it printed.
async fn sdk(script: &str, gw: &TestGateway, prefix: &str) -> Value {
    run_sdk(script, &[&gw.base(), CLIENT_KEY, prefix, SLOW_KEY]).await
}

fn no_client_secret(r: &Recorded) {
    for (k, v) in &r.headers {
        assert!(!v.contains(CLIENT_KEY), "client key leaked upstream in {k}");
    }
}

fn tool_blocks(msg: &Value) -> Vec<&Value> {
    msg["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect()
}

#[tokio::test]
async fn anthropic_sdk_through_a_translating_pool() {
    let (mock, gw) = start().await;
    let out = sdk("anthropic_sdk.py", &gw, "tr/").await;
    let created = &out["create_tools"];
    assert_eq!(
        created["model"], "tr/fixture-tools",
        "the client's model name"
    );
    assert_eq!(created["stop_reason"], "tool_use");
    assert_eq!(created["content"][0]["type"], "thinking");
    assert_eq!(tool_blocks(created)[0]["input"], json!({"city": "Paris"}));
    assert_eq!(created["usage"]["input_tokens"], 56);
    assert_eq!(created["usage"]["cache_read_input_tokens"], 64);
    // the stream, accumulated by the SDK's own MessageStream
    let s = &out["stream_tools"]["final"];
    let tools = tool_blocks(s);
    assert_eq!(tools.len(), 2, "one block per tool call: {s}");
    assert_eq!(
        (&tools[0]["id"], &tools[0]["input"]),
        (&json!("call_a1"), &json!({"city": "Paris"}))
    );
    assert_eq!(
        (&tools[1]["name"], &tools[1]["input"]),
        (&json!("get_time"), &json!({"tz": "CET"}))
    );
    assert_eq!(s["content"][0]["text"], "Let me check.");
    assert_eq!(s["usage"]["output_tokens"], 31);
    let kinds = out["stream_tools"]["events"].as_array().unwrap();
    assert_eq!(kinds.first().unwrap(), "message_start");
    assert!(
        kinds.iter().any(|k| k == "input_json"),
        "arguments arrived as deltas: {kinds:?}"
    );
    translated_streams_and_counts(&out);
    translated_errors(&out);
    backend_saw_chat(&mock);
}

fn translated_streams_and_counts(out: &Value) {
    let thinking = &out["stream_thinking"]["final"];
    assert_eq!(
        thinking["content"][0]["thinking"],
        "The user greets; answer briefly."
    );
    assert_eq!(thinking["content"][1]["text"], "Hi!");
    assert_eq!(out["text_stream"], "Hello, wörld 😀");
    assert_eq!(out["stop_sequence"]["stop_reason"], "stop_sequence");
    assert_eq!(out["stop_sequence"]["stop_sequence"], "###");
    // no native count: the gateway's own estimate, from messages, system and tools
    let estimate = out["count_tokens"].as_u64().unwrap();
    assert!((20..200).contains(&estimate), "estimate {estimate}");
}

fn translated_errors(out: &Value) {
    let mid = &out["mid_stream_error"];
    assert!(
        mid["body"].to_string().contains("CUDA out of memory"),
        "{mid}"
    );
    let bad = &out["upstream_400"];
    assert_eq!(
        (&bad["class"], &bad["status"]),
        (&json!("BadRequestError"), &json!(400))
    );
    assert_eq!(
        bad["body"]["error"]["message"],
        "max_tokens is too large: 99999"
    );
    assert_eq!(out["unknown_model"]["class"], "NotFoundError");
    assert_eq!(out["bad_key"]["class"], "AuthenticationError");
    assert_eq!(
        out["bad_key"]["body"]["error"]["type"],
        "authentication_error"
    );
}

fn backend_saw_chat(mock: &MockOpenAi) {
    // what the backend saw: chat completions with the pool's key, never the client's
    let reqs = mock.requests();
    assert!(
        reqs.iter().all(|r| r.path == "/v1/chat/completions"),
        "{:?}",
        reqs.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    for r in &reqs {
        no_client_secret(r);
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {POOL_KEY}").as_str())
        );
        assert!(r.header("anthropic-version").is_none());
    }
    let streamed = reqs
        .iter()
        .find(|r| r.json()["stream"] == true)
        .unwrap()
        .json();
    assert_eq!(streamed["stream_options"]["include_usage"], true);
    assert_eq!(streamed["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(streamed["messages"][0]["role"], "user");
}

#[tokio::test]
async fn anthropic_sdk_through_a_native_pool_and_usage_feeds_the_books() {
    let (mock, gw) = start().await;
    let out = sdk("anthropic_sdk.py", &gw, "nat/").await;
    assert_eq!(out["create_tools"]["model"], "nat/fixture-tools");
    assert_eq!(
        tool_blocks(&out["create_tools"])[0]["input"],
        json!({"city": "Paris"})
    );
    let s = &out["stream_tools"]["final"];
    assert_eq!(
        s["model"], "nat/fixture-tools",
        "model restored in message_start"
    );
    assert_eq!(tool_blocks(s).len(), 2);
    assert_eq!(s["usage"]["cache_read_input_tokens"], 2048);
    assert_eq!(
        out["count_tokens"], 4321,
        "forwarded to the backend's own count"
    );
    let limited = &out["rate_limited"];
    assert_eq!(
        (&limited["class"], &limited["status"]),
        (&json!("RateLimitError"), &json!(429))
    );
    assert_eq!(limited["body"]["error"]["type"], "rate_limit_error");
    let busy = &out["overloaded"];
    assert_eq!(
        (&busy["class"], &busy["status"]),
        (&json!("OverloadedError"), &json!(529))
    );
    assert_eq!(busy["body"]["error"]["message"], "Overloaded");
    assert_eq!(
        out["upstream_400"]["body"]["error"]["message"],
        "messages: roles must alternate"
    );
    let reqs = mock.requests();
    assert!(reqs.iter().all(|r| r.path.starts_with("/v1/messages")));
    let first = &reqs[0];
    assert_eq!(
        first.json()["model"],
        "fixture-tools",
        "the route's upstream name"
    );
    no_client_secret(first);
    // a native answer's usage: input + cache writes + cache reads, cache reads at their price
    let tokens = gw
        .metric_value(
            r#"llmedge_tokens_total{kind="prompt",model="nat/fixture-tools",tenant="acme"}"#,
        )
        .await;
    assert_eq!(tokens, 2.0 * 2083.0, "the JSON and the streamed answer");
    let spend = gw
        .metric_value(r#"llmedge_spend_usd_total{model="nat/fixture-tools",tenant="acme"}"#)
        .await;
    // settled per request in whole micro-dollars
    let one = (35.0 * 1.0 + 2048.0 * 0.1 + 42.0 * 2.0_f64).round() / 1e6;
    assert!(
        (spend - 2.0 * one).abs() < 1e-9,
        "spend {spend}, want {}",
        2.0 * one
    );
}

#[tokio::test]
async fn openai_sdk_through_an_anthropic_pool() {
    let (mock, gw) = start().await;
    let out = sdk("openai_sdk.py", &gw, "claude/").await;
    let r = &out["create_tools"];
    assert_eq!(r["model"], "claude/x");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(r["usage"]["prompt_tokens"], 2083);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 2048);
    let s = &out["stream_tools"];
    assert_eq!(s["roles"], json!(["assistant"]));
    assert_eq!(s["text"], "Let me check.");
    assert_eq!(
        s["calls"][0],
        json!({"id": "toolu_01A", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"})
    );
    assert_eq!(s["calls"][1]["arguments"], "{\"tz\": \"CET\"}");
    assert_eq!(s["finish"], "tool_calls");
    assert_eq!(s["usage"]["completion_tokens"], 42);
    let quiet = &out["stream_text_no_usage"];
    assert!(quiet["usage"].is_null(), "no usage chunk unasked");
    assert_eq!(quiet["text"], "Hello, wörld 😀");
    let o = &out["overloaded"];
    assert_eq!(
        (&o["class"], &o["status"]),
        (&json!("InternalServerError"), &json!(529))
    );
    assert_eq!(o["body"]["message"], "Overloaded", "OpenAI's shape: {o}");
    // usage is captured for accounting even when the client did not ask for it
    gw.wait_metric(
        r#"llmedge_tokens_total{kind="completion",model="claude/fixture-text",tenant="acme"} 42"#,
    )
    .await;
    let reqs = mock.requests();
    for r in &reqs {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_POOL_KEY));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert!(
            r.header("authorization").is_none(),
            "no bearer to Anthropic"
        );
        no_client_secret(r);
    }
    let body = reqs[0].json();
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(
        body["max_tokens"], 4096,
        "Anthropic requires it: the default"
    );
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
}

async fn raw(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut rq = reqwest::Client::new()
        .post(gw.url(path))
        .body(body.to_string());
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let r = rq.send().await.unwrap();
    let (status, h) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        h,
    )
}

#[tokio::test]
async fn messages_errors_have_anthropics_shape_and_status() {
    let (_mock, gw) = start().await;
    let ok = r#"{"model":"tr/x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let shape = |v: &Value, kind: &str| {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    };
    let (s, v, _) = raw(&gw, "/v1/messages", &[], ok).await;
    assert_eq!(s, 401);
    shape(&v, "authentication_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-api-key"));
    let key = [("x-api-key", CLIENT_KEY)];
    let (s, v, _) = raw(
        &gw,
        "/v1/messages",
        &key,
        r#"{"model":"tr/x","messages":[]}"#,
    )
    .await;
    assert_eq!(s, 400);
    shape(&v, "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    let (s, v, _) = raw(&gw, "/v1/messages", &key, "{not json").await;
    assert_eq!(s, 400);
    shape(&v, "invalid_request_error");
    let doc = r#"{"model":"tr/x","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","data":"x"}}]}]}"#;
    let (s, v, _) = raw(&gw, "/v1/messages", &key, doc).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages[0].content[0]"),
        "{v}"
    );
    let (s, v, _) = raw(&gw, "/v1/messages/batches", &key, ok).await;
    assert_eq!(s, 404);
    shape(&v, "not_found_error");
}

#[tokio::test]
async fn messages_limits_reserve_max_tokens_and_bearer_works_too() {
    let (_mock, gw) = start().await;
    let ok = r#"{"model":"tr/x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let shape = |v: &Value, kind: &str| {
        assert_eq!(
            (&v["type"], &v["error"]["type"]),
            (&json!("error"), &json!(kind)),
            "{v}"
        );
    };
    // tpm is reserved from max_tokens before anything is sent
    let big = r#"{"model":"tr/x","max_tokens":5000,"messages":[{"role":"user","content":"hi"}]}"#;
    let (s, v, _) = raw(&gw, "/v1/messages", &[("x-api-key", TIGHT_KEY)], big).await;
    assert_eq!(s, 429);
    shape(&v, "rate_limit_error");
    // rate limited: 429 rate_limit_error with retry-after
    let slow = [("x-api-key", SLOW_KEY)];
    let (s, _, _) = raw(&gw, "/v1/messages", &slow, ok).await;
    assert_eq!(s, 200);
    let (s, v, h) = raw(&gw, "/v1/messages", &slow, ok).await;
    assert_eq!(s, 429);
    shape(&v, "rate_limit_error");
    assert!(h.contains_key("retry-after"));
    // Bearer works too, and an OpenAI path keeps OpenAI's shape
    let bearer = format!("Bearer {CLIENT_KEY}");
    let (s, _, _) = raw(
        &gw,
        "/v1/messages",
        &[("authorization", bearer.as_str())],
        ok,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v, _) = raw(&gw, "/v1/chat/completions", &[], ok).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_anthropic_error_event() {
    let (_mock, gw) = start().await;
    let body = r#"{"model":"tr/cut","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (s, v, _) = raw(&gw, "/v1/messages", &[("x-api-key", CLIENT_KEY)], body).await;
    assert_eq!(s, 200);
    let text = v.as_str().unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: {"), "{text}");
    assert!(last.contains("\"api_error\""), "{last}");
}

/// Pools that take Messages differently, one after another in a fallback chain.
fn mixed_yaml(upstream: &str, port: u16, admin: u16) -> String {
    let dead = crate::support::reserve_port();
    let mut y = server_and_client_key(port, admin);
    y.push_str(&format!(
        r#"pools:
  dead-native:
    backends: ["http://127.0.0.1:{dead}"]
    messages: native
    retries: 0
  dead-chat:
    backends: ["http://127.0.0.1:{dead}"]
    retries: 0
  chat:
    backends: ["{upstream}"]
  claude:
    backends: ["{upstream}"]
    api_key: "{ANTHROPIC_POOL_KEY}"
    protocol: anthropic
routes:
  - {{prefix: "a/", pool: dead-native, fallbacks: [chat], strip_prefix: true}}
  - {{prefix: "b/", pool: dead-chat, fallbacks: [claude], strip_prefix: true}}
  - {{prefix: "c/", pool: claude, strip_prefix: true}}
"#
    ));
    y
}

#[tokio::test]
async fn a_fallback_pool_gets_the_request_in_its_own_api() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| mixed_yaml(&mock.url(), p, a)).await;
    let key = [("x-api-key", CLIENT_KEY)];
    // native pool down: the fallback translates to chat
    let body = r#"{"model":"a/fixture-tools","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let (s, v, _) = raw(&gw, "/v1/messages", &key, body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["type"], &v["model"]),
        (&json!("message"), &json!("a/fixture-tools"))
    );
    let r = mock.last();
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.json()["messages"][0]["content"], "hi");
    // translating pool down: the Anthropic fallback gets Messages, without the thinking the
    // gateway signed itself in an earlier translated answer
    let history = r#"{"model":"b/x","max_tokens":50,"messages":[{"role":"user","content":"hi"},
        {"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"llmedge-unsigned"},{"type":"text","text":"Hello"}]},
        {"role":"user","content":"again"}]}"#;
    let (s, v, _) = raw(&gw, "/v1/messages?beta=true", &key, history).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "b/x");
    let r = mock.last();
    assert_eq!(
        r.path, "/v1/messages?beta=true",
        "native: the client's query kept"
    );
    assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_POOL_KEY));
    let sent = r.json();
    assert_eq!(sent["model"], "x");
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "text", "text": "Hello"}])
    );
    // an endpoint no pool of the route can take
    let emb = r#"{"model":"c/x","input":"hi"}"#;
    let bearer = format!("Bearer {CLIENT_KEY}");
    let (s, v, _) = raw(&gw, "/v1/embeddings", &[("authorization", &bearer)], emb).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "unsupported_endpoint");
}
