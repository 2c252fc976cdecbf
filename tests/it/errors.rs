//! Every failure a client can meet comes back as OpenAI-shaped JSON with OpenAI's status.

use async_openai::error::OpenAIError;
use async_openai::types::chat::CreateChatCompletionRequest;
use serde_json::json;

use crate::support::*;

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn missing_or_wrong_key_is_401_invalid_api_key() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let resp = reqwest::Client::new()
        .post(gw.url(CHAT))
        .body(r#"{"model":"mock/echo"}"#)
        .send()
        .await
        .unwrap();
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let client = openai_client(&gw, "sk-wrong");
    let req: CreateChatCompletionRequest =
        serde_json::from_value(json!({"model": "mock/echo", "messages": []})).unwrap();
    match client.chat().create(req).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code, 401);
            assert_eq!(e.api_error.code.as_deref(), Some("invalid_api_key"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(mock.requests().is_empty(), "nothing reaches the upstream");
}

#[tokio::test]
async fn model_outside_the_allow_list_and_unknown_models_are_404() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let resp = post(
        &gw,
        CHAT,
        LIMITED_KEY,
        r#"{"model":"mock/llama3","messages":[]}"#,
    )
    .await;
    let (status, forbidden) = error_json(resp).await;
    assert_eq!(status, 404);
    assert_eq!(forbidden["error"]["code"], "model_not_found");
    assert_eq!(forbidden["error"]["param"], "model");

    let resp = post(
        &gw,
        CHAT,
        LIMITED_KEY,
        r#"{"model":"mock/echo","messages":[]}"#,
    )
    .await;
    assert_eq!(
        resp.status(),
        200,
        "an allowed model works for the same key"
    );

    let resp = post(
        &gw,
        CHAT,
        CLIENT_KEY,
        r#"{"model":"claude-3","messages":[]}"#,
    )
    .await;
    let (status, unknown) = error_json(resp).await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"]["code"], "model_not_found");
    let text = unknown.to_string();
    assert!(
        !text.contains("mock") && !text.contains("dead"),
        "no route names leak: {text}"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn malformed_json_is_400_naming_the_problem() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let (status, v) =
        error_json(post(&gw, CHAT, CLIENT_KEY, r#"{"model": "mock/echo","#).await).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON body"),
        "{v}"
    );
    let (status, v) = error_json(post(&gw, CHAT, CLIENT_KEY, r#"{"model": 5}"#).await).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "model");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413_and_never_forwarded() {
    let mock = MockOpenAi::start().await;
    let gw =
        TestGateway::start_with(|p, a| config(&mock.url(), p, a, "  max_body_bytes: 2048")).await;
    let big = format!(
        r#"{{"model":"mock/echo","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(4096)
    );
    let (status, v) = error_json(post(&gw, CHAT, CLIENT_KEY, &big).await).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "request_too_large");

    // chunked upload without Content-Length is cut off while reading
    let stream = futures::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let resp = reqwest::Client::new()
        .post(gw.url(CHAT))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn upstream_429_passes_through_with_headers_and_body() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let resp = post(
        &gw,
        CHAT,
        CLIENT_KEY,
        r#"{"model":"mock/status-429","messages":[]}"#,
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(resp.headers()["x-upstream-thing"], "kept");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["message"], "Rate limit reached");
}

#[tokio::test]
async fn upstream_down_is_502_and_timeout_is_504() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let (status, v) = error_json(post(&gw, CHAT, CLIENT_KEY, r#"{"model":"dead/x"}"#).await).await;
    assert_eq!(status, 502);
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(v["error"]["code"], "upstream_unreachable");

    let (status, v) =
        error_json(post(&gw, CHAT, CLIENT_KEY, r#"{"model":"mock/slow"}"#).await).await;
    assert_eq!(status, 504, "first_byte_ms is 1500 and the mock needs 3 s");
    assert_eq!(v["error"]["code"], "upstream_timeout");

    gw.wait_metric(r#"llmedge_upstream_errors_total{pool="dead",reason="connect_error"} 1"#)
        .await;
    gw.wait_metric(r#"llmedge_upstream_errors_total{pool="mock",reason="first_byte_timeout"} 1"#)
        .await;
    gw.wait_metric(r#"llmedge_requests_total{pool="mock",route="mock/",status="504"} 1"#)
        .await;
    gw.wait_metric(r#"llmedge_requests_total{pool="dead",route="dead/",status="502"} 1"#)
        .await;
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_get_openai_errors() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let resp = reqwest::get(gw.url("/v1/nope")).await.unwrap();
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "unknown_url");
    let resp = reqwest::get(gw.url(CHAT)).await.unwrap();
    assert_eq!(
        resp.headers()["allow"],
        "POST",
        "RFC 9110: a 405 says what is allowed"
    );
    assert_eq!(error_json(resp).await.0, 405);
    let resp = reqwest::Client::new()
        .delete(gw.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET");
    assert_eq!(error_json(resp).await.0, 405);
    assert_eq!(reqwest::get(gw.url("/readyz")).await.unwrap().status(), 200);
    let admin_404 = reqwest::get(format!("http://127.0.0.1:{}/x", gw.admin))
        .await
        .unwrap();
    assert_eq!(error_json(admin_404).await.0, 404);
}

#[tokio::test]
async fn secrets_never_reach_logs_metrics_or_the_wrong_headers() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    post(
        &gw,
        CHAT,
        CLIENT_KEY,
        r#"{"model":"mock/echo","messages":[]}"#,
    )
    .await;
    post(&gw, CHAT, "sk-guess-123", r#"{"model":"mock/echo"}"#).await;
    post(&gw, CHAT, CLIENT_KEY, r#"{"model":"dead/x"}"#).await;
    let _ = stream_all(&gw).await;
    gw.wait_log("\"model\":\"dead/x\"").await;
    let metrics = gw.metrics().await;
    for up in mock.requests() {
        let auth = up.header("authorization").unwrap_or_default();
        assert_eq!(
            auth,
            format!("Bearer {POOL_KEY}"),
            "only the pool key goes upstream"
        );
    }
    let logs = gw.stop().await;
    for secret in [CLIENT_KEY, POOL_KEY, "sk-guess-123"] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
        assert!(!metrics.contains(secret), "{secret} leaked into metrics");
    }
}

async fn stream_all(gw: &TestGateway) -> String {
    post(
        gw,
        CHAT,
        CLIENT_KEY,
        r#"{"model":"mock/echo","stream":true}"#,
    )
    .await
    .text()
    .await
    .unwrap()
}

#[tokio::test]
async fn post_on_a_pooled_connection_the_backend_closed_is_retried() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let first = post(
        &gw,
        CHAT,
        CLIENT_KEY,
        r#"{"model":"mock/echo","messages":[]}"#,
    )
    .await;
    assert_eq!(first.status(), 200, "primes the upstream connection pool");
    // the client can have its answer before Pingora returns the connection to the pool; the
    // access line is written after that, so the second request finds the connection pooled
    gw.wait_log("\"model\":\"mock/echo\"").await;
    let second = post(
        &gw,
        CHAT,
        CLIENT_KEY,
        r#"{"model":"mock/close-reused","messages":[]}"#,
    )
    .await;
    assert_eq!(
        second.status(),
        200,
        "the retry on a fresh connection succeeds"
    );
    let seen: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.json()["model"].to_string())
        .collect();
    assert_eq!(
        seen,
        ["\"echo\"", "\"close-reused\"", "\"close-reused\""],
        "sent twice, body replayed"
    );
}

#[tokio::test]
async fn upstream_rejecting_the_pool_key_is_a_502_that_quotes_nothing() {
    let mock = MockOpenAi::start().await;
    mock.knobs(|k| k.force_status = Some(401));
    let gw = TestGateway::start(&mock).await;
    let (status, v) =
        error_json(post(&gw, CHAT, CLIENT_KEY, r#"{"model":"mock/echo"}"#).await).await;
    assert_eq!(status, 502, "the client's own key is fine: not a 401");
    assert_eq!(v["error"]["code"], "upstream_auth_failed");
    assert!(
        !v.to_string().contains("forced"),
        "the upstream's message is not passed on"
    );
}

#[tokio::test]
async fn provider_account_headers_do_not_cross_the_gateway() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let resp = reqwest::Client::new()
        .post(gw.url(CHAT))
        .bearer_auth(CLIENT_KEY)
        .header("openai-organization", "org-client-picks")
        .header("openai-project", "proj-x")
        .header("cookie", "client=1")
        .header("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA==")
        .body(r#"{"model":"mock/account-headers","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for h in [
        "set-cookie",
        "openai-organization",
        "x-ratelimit-limit-requests",
        "access-control-allow-origin",
    ] {
        assert!(!resp.headers().contains_key(h), "{h} reached the client");
    }
    let up = mock.last();
    for h in [
        "openai-organization",
        "openai-project",
        "cookie",
        "proxy-authorization",
    ] {
        assert!(up.header(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(up.header("accept-encoding"), Some("identity"));
}
