//! Non-streaming endpoints through the official-style client (async-openai) and raw HTTP.

use async_openai::types::chat::CreateChatCompletionRequest;
use async_openai::types::completions::CreateCompletionRequest;
use async_openai::types::embeddings::CreateEmbeddingRequest;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn chat_completion_restores_model_and_reports_usage() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let client = openai_client(&gw, CLIENT_KEY);
    let req: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": "mock/echo",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
        "seed": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }))
    .unwrap();
    let resp = client.chat().create(req).await.unwrap();
    assert_eq!(resp.model, "mock/echo", "client sees the name it asked for");
    assert_eq!(resp.choices[0].message.content.as_deref(), Some("Hello"));
    assert_eq!(resp.usage.unwrap().total_tokens, 12);

    let up = mock.last();
    assert_eq!(up.path, "/v1/chat/completions");
    let body = up.json();
    assert_eq!(body["model"], "echo", "prefix stripped upstream");
    assert_eq!(body["seed"], 7);
    assert_eq!(
        body["tools"][0]["function"]["name"], "f",
        "tools pass through"
    );
    assert!(
        body.get("stream_options").is_none(),
        "nothing injected without stream"
    );
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {POOL_KEY}").as_str())
    );
    assert_eq!(up.header("host"), Some(mock.addr.to_string().as_str()));

    let line = gw.wait_log("\"model\":\"mock/echo\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["user"], "alice");
    assert_eq!(v["pool"], "mock");
    assert_eq!(v["status"], 200);
    assert_eq!(v["prompt_tokens"], 11);
    assert_eq!(v["completion_tokens"], 1);
}

#[tokio::test]
async fn unknown_fields_and_vendor_extensions_reach_the_upstream_byte_for_byte() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let rest = r#""messages":[{"role":"user","content":"x"}],"guided_json":{"type":"object","properties":{"a":{"type":"number"}}},"logprobs":true,"n":2,"user":"u-1","response_format":{"type":"json_object"},"top_p":1e-1,"x_vendor":[1,2.50,null]"#;
    let body = format!(r#"{{"model":"mock/echo",{rest}}}"#);
    let resp = post(&gw, "/v1/chat/completions", CLIENT_KEY, &body).await;
    assert_eq!(resp.status(), 200);
    let up = mock.last();
    assert_eq!(
        String::from_utf8(up.body).unwrap(),
        format!(r#"{{"model":"echo",{rest}}}"#),
        "only `model` may change"
    );
}

#[tokio::test]
async fn legacy_completions_embeddings_and_models_work_with_the_sdk() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let client = openai_client(&gw, CLIENT_KEY);

    let req: CreateCompletionRequest =
        serde_json::from_value(json!({"model": "mock/echo", "prompt": "say hi"})).unwrap();
    let c = client.completions().create(req).await.unwrap();
    assert_eq!(c.model, "mock/echo");
    assert_eq!(c.choices[0].text, "Hello");
    assert_eq!(mock.last().path, "/v1/completions");

    let req: CreateEmbeddingRequest =
        serde_json::from_value(json!({"model": "mock/echo", "input": "embed me"})).unwrap();
    let e = client.embeddings().create(req).await.unwrap();
    assert_eq!(e.model, "mock/echo");
    assert_eq!(e.data[0].embedding, vec![0.5, 0.25]);
    assert_eq!(mock.last().json()["model"], "echo");

    let models = client.models().list().await.unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert!(
        ids.contains(&"mock/echo") && ids.contains(&"mock/llama3"),
        "{ids:?}"
    );
    assert!(
        !ids.iter().any(|i| i.starts_with("dead/")),
        "a dead pool is skipped: {ids:?}"
    );
    assert!(
        !ids.contains(&"echo"),
        "the non-stripping gpt- route lists only gpt-* ids"
    );
}

#[tokio::test]
async fn models_list_respects_the_key_allow_list() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let models = openai_client(&gw, LIMITED_KEY)
        .models()
        .list()
        .await
        .unwrap();
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["mock/echo"]);
}

#[tokio::test]
async fn missing_model_uses_default_and_backend_path_prefix_is_kept() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|port, admin| {
        config(&format!("{}/openai/", mock.url()), port, admin, "")
    })
    .await;
    let resp = post(
        &gw,
        "/v1/chat/completions?trace=1",
        CLIENT_KEY,
        r#"{"messages":[]}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "mock/echo");
    let up = mock.last();
    assert_eq!(up.path, "/openai/v1/chat/completions?trace=1");
    assert_eq!(up.json()["model"], "echo");
}

#[tokio::test]
async fn azure_style_api_key_header_authenticates_and_is_not_forwarded() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("api-key", CLIENT_KEY)
        .header("x-api-key", CLIENT_KEY)
        .header("x-request-id", "trace-abc")
        .body(r#"{"model":"mock/echo","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-abc");
    let up = mock.last();
    for (k, v) in &up.headers {
        assert!(!v.contains(CLIENT_KEY), "client key leaked upstream in {k}");
    }
    assert_eq!(up.header("x-request-id"), Some("trace-abc"));
    gw.wait_log("\"request_id\":\"trace-abc\"").await;
}

#[tokio::test]
async fn keep_alive_survives_proxied_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let mut sock = connect(&gw).await;
    let body = r#"{"model":"mock/echo","messages":[]}"#;
    let req = raw_chat_request(body);
    for round in 0..2 {
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"}\r\n0\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after round {round}");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"model\":\"mock/echo\""), "{text}");
    }
}

#[tokio::test]
async fn the_model_list_is_cached_briefly() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let fetches = || {
        mock.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/v1/models"))
            .count()
    };
    // callers that arrive together while the cache is empty wait for one fetch
    let lists = (0..8).map(|_| async { openai_client(&gw, CLIENT_KEY).models().list().await });
    for list in futures::future::join_all(lists).await {
        assert!(!list.unwrap().data.is_empty());
    }
    assert_eq!(fetches(), 1, "eight concurrent lists, one upstream fetch");
    for _ in 0..3 {
        openai_client(&gw, CLIENT_KEY)
            .models()
            .list()
            .await
            .unwrap();
    }
    assert_eq!(fetches(), 1, "one upstream fetch serves the next lists");
}

#[tokio::test]
async fn an_upstream_500_passes_through_with_its_status_headers_and_body() {
    let mock = MockOpenAi::start().await;
    mock.knobs(|k| k.force_status = Some(500));
    let gw = TestGateway::start(&mock).await;
    let body = r#"{"model":"mock/echo","messages":[]}"#;
    let resp = post(&gw, "/v1/chat/completions", CLIENT_KEY, body).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["retry-after"], "7", "upstream headers kept");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "forced", "the upstream's own body");
}
