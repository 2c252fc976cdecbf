//! Streaming: live SSE rewrite, usage injection and stripping, framing, cuts and hang-ups.

use std::time::Duration;

use async_openai::types::chat::CreateChatCompletionRequest;
use futures::StreamExt;
use serde_json::json;

use crate::support::mock::sse_body;
use crate::support::*;

fn stream_body(model: &str, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
    )
}

async fn stream_text(gw: &TestGateway, body: &str) -> (u16, String) {
    let resp = post(gw, "/v1/chat/completions", CLIENT_KEY, body).await;
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").cloned();
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("stream must end, not hang")
        .unwrap();
    if status == 200 {
        assert_eq!(ctype.unwrap(), "text/event-stream");
    }
    (status, text)
}

#[tokio::test]
async fn sdk_stream_sees_its_model_and_no_injected_usage() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let client = openai_client(&gw, CLIENT_KEY);
    let req: CreateChatCompletionRequest = serde_json::from_value(json!({
        "model": "mock/echo", "stream": true, "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        assert_eq!(chunk.model, "mock/echo");
        assert!(chunk.usage.is_none(), "usage was not asked for");
        for c in chunk.choices {
            text.push_str(c.delta.content.as_deref().unwrap_or(""));
        }
    }
    assert_eq!(text, "Hello wörld😀");
    assert_eq!(chunks, 3, "the injected usage-only chunk is removed");
    let up = mock.last().json();
    assert_eq!(
        up["stream_options"]["include_usage"], true,
        "usage was injected upstream"
    );

    let line = gw.wait_log("\"stream\":true").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["completion_tokens"], 3,
        "usage captured from the stripped chunk"
    );
    assert_eq!(v["prompt_tokens"], 11);
    assert!(
        v["ttft_ms"].as_f64().is_some(),
        "time to first token measured: {line}"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"llmedge_tokens_total{kind="completion",model="mock/echo",tenant="acme"} 3"#),
        "{m}"
    );
    assert!(m.contains(r#"llmedge_time_to_first_token_seconds_count{pool="mock",route="mock/"} 1"#));
}

#[tokio::test]
async fn client_that_asks_for_usage_gets_the_stream_unstripped() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let (status, text) = stream_text(
        &gw,
        &stream_body("mock/echo", r#","stream_options":{"include_usage":true}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        text,
        sse_body("mock/echo", true, false),
        "only `model` differs from upstream"
    );
}

#[tokio::test]
async fn fragmented_upstream_sse_gives_the_same_client_bytes() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    for n in [1, 2, 7, 64, 100_000] {
        let model = format!("mock/frag-{n}");
        let (status, text) = stream_text(&gw, &stream_body(&model, "")).await;
        assert_eq!(status, 200);
        assert_eq!(
            text,
            sse_body(&model, false, false),
            "{n}-byte upstream writes"
        );
    }
}

#[tokio::test]
async fn crlf_events_pings_and_utf8_pass_through() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let (_, text) = stream_text(&gw, &stream_body("mock/crlf", "")).await;
    assert_eq!(text, sse_body("mock/crlf", false, true));
}

#[tokio::test]
async fn stream_cut_by_upstream_ends_with_an_error_event() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let (status, text) = stream_text(&gw, &stream_body("mock/cut", "")).await;
    assert_eq!(status, 200, "headers were already sent");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 3, "two tokens then the error: {text}");
    let last: serde_json::Value =
        serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");
    assert_eq!(last["error"]["code"], "upstream_closed");
    let line = gw.wait_log("\"model\":\"mock/cut\"").await;
    assert!(line.contains("\"error\":\"upstream_closed\""), "{line}");
}

#[tokio::test]
async fn client_hang_up_aborts_the_upstream_generation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let mut sock = connect(&gw).await;
    let body = stream_body("mock/endless", "");
    let req = raw_chat_request(&body);
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"content\":\"tok\"") {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(sock);
    assert!(
        mock.wait_abort(Duration::from_secs(5)).await,
        "the upstream must see the abort so it stops generating"
    );
    let line = gw.wait_log("\"model\":\"mock/endless\"").await;
    assert!(line.contains("\"status\":499"), "{line}");
}

#[tokio::test]
async fn client_hang_up_before_the_first_byte_aborts_the_upstream() {
    use tokio::io::AsyncWriteExt;
    let mock = MockOpenAi::start().await;
    // a long first-byte timeout, so only the hang-up can end the upstream request
    let gw = TestGateway::start_with(|p, a| {
        config(&mock.url(), p, a, "").replace("first_byte_ms: 1500", "first_byte_ms: 60000")
    })
    .await;
    let mut sock = connect(&gw).await;
    let body = format!(
        r#"{{"model":"mock/hold","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "p".repeat(200_000)
    );
    let req = raw_chat_request(&body);
    sock.write_all(req.as_bytes()).await.unwrap();
    mock.wait_requests(1).await;
    drop(sock);
    assert!(
        mock.wait_abort(Duration::from_secs(5)).await,
        "a client leaving during prefill must close the upstream connection"
    );
    let line = gw.wait_log("\"model\":\"mock/hold\"").await;
    assert!(line.contains("\"status\":499"), "{line}");
}
