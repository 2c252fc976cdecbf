//! The shipped `llmedge mock` and `llmedge demo` commands, end to end through the gateway.

use futures::StreamExt;

use crate::support::*;

fn content_events(sse: &str) -> Vec<serde_json::Value> {
    sse.split_terminator("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// A chat stream through the gateway, asking the mock for 7 tokens.
async fn stream_text(gw: &TestGateway) -> String {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-tokens", "7")
        .body(
            r#"{"model":"mock/llama3","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    text
}

/// Non-streamed answers: `max_tokens` caps the completion, embeddings have the asked shape.
async fn json_answers_follow_the_request(gw: &TestGateway) {
    let v: serde_json::Value = post(
        gw,
        "/v1/chat/completions",
        CLIENT_KEY,
        r#"{"model":"mock/llama3","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        v["usage"]["completion_tokens"], 3,
        "max_tokens caps the mock"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let v: serde_json::Value = post(
        gw,
        "/v1/embeddings",
        CLIENT_KEY,
        r#"{"model":"mock/mock-embed","input":["a","b"],"dimensions":4}"#,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(v["model"], "mock/mock-embed");
}

#[tokio::test]
async fn builtin_mock_streams_the_requested_tokens_through_the_gateway() {
    let mock_port = reserve_port();
    let listen = format!("127.0.0.1:{mock_port}");
    let (_mock, logs) = spawn_bin(&[
        "mock",
        "--listen",
        &listen,
        "--tokens",
        "5",
        "--delay-ms",
        "1",
    ]);
    wait_http_ok(&format!("http://{listen}/health"), &logs).await;
    let gw = TestGateway::start_with(|p, a| config(&format!("http://{listen}"), p, a, "")).await;

    let text = stream_text(&gw).await;
    let events = content_events(&text);
    assert_eq!(
        events.len(),
        1 + 7 + 1,
        "role chunk, 7 tokens, finish chunk: {text}"
    );
    assert!(events.iter().all(|e| e["model"] == "mock/llama3"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(
        !text.contains("usage"),
        "usage injected by the gateway is stripped"
    );
    let line = gw.wait_log("\"stream\":true").await;
    assert!(line.contains("\"completion_tokens\":7"), "{line}");

    json_answers_follow_the_request(&gw).await;
}

/// The demo key lives in the store: a newcomer can list it with the admin key the banner prints.
fn demo_key_is_listed_with_the_printed_admin_key(banner: &str, admin_listen: &str) {
    let admin_line = format!("llmedge keys list --admin-url http://{admin_listen}");
    assert!(banner.contains(&admin_line), "{banner}");
    let out = std::process::Command::new(crate::support::bin())
        .args([
            "keys",
            "list",
            "--admin-url",
            &format!("http://{admin_listen}"),
        ])
        .env("LLMEDGE_ADMIN_KEY", "sk-llmedge-demo-admin")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("demo") && table.contains("newcomer"),
        "{table}"
    );
    assert!(
        !table.contains("sk-llmedge-demo "),
        "the secret is not listed"
    );
    // the demo's chat requests reach the books of its in-memory store (batches: poll a while)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = std::process::Command::new(crate::support::bin())
            .args(["usage", "--by", "tenant", "--json", "--admin-url"])
            .arg(format!("http://{admin_listen}"))
            .env("LLMEDGE_ADMIN_KEY", "sk-llmedge-demo-admin")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["data"][0]["tenant"] == "demo" {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::time::Instant::now() < deadline,
            "no demo usage: {v} {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn demo_answers_the_curl_lines_it_prints() {
    let (port, admin) = (reserve_port(), reserve_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let (_demo, logs) = spawn_bin(&["demo", "--listen", &listen, "--admin-listen", &admin_listen]);
    wait_http_ok(&format!("http://{listen}/healthz"), &logs).await;
    wait_http_ok(&format!("http://{admin_listen}/healthz"), &logs).await;
    assert!(
        logs.lock().contains("sk-llmedge-demo"),
        "the banner prints the demo key"
    );
    let banner = logs.lock().clone();
    for line in [
        format!("curl -s http://{listen}/v1/chat/completions -H 'Authorization: Bearer sk-llmedge-demo'"),
        format!("curl -sN http://{listen}/v1/chat/completions"),
        format!("curl -s http://{admin_listen}/metrics | grep llmedge_"),
    ] {
        assert!(banner.contains(&line), "the banner prints {line}:\n{banner}");
    }
    let client = reqwest::Client::new();
    let chat = client
        .post(format!("http://{listen}/v1/chat/completions"))
        .bearer_auth("sk-llmedge-demo")
        .header("content-type", "application/json")
        .body(r#"{"model":"mock/llama3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let v: serde_json::Value = chat.json().await.unwrap();
    assert_eq!(v["model"], "mock/llama3");
    let models = client
        .get(format!("http://{listen}/v1/models"))
        .bearer_auth("sk-llmedge-demo")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(models.contains("\"mock/llama3\""), "{models}");
    let metrics = reqwest::get(format!("http://{admin_listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("llmedge_requests_total"), "{metrics}");
    demo_key_is_listed_with_the_printed_admin_key(&banner, &admin_listen);
}

#[tokio::test]
async fn demo_serves_messages_both_ways_on_the_builtin_mock() {
    let (port, admin) = (reserve_port(), reserve_port());
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin}");
    let (_demo, logs) = spawn_bin(&["demo", "--listen", &listen, "--admin-listen", &admin_listen]);
    wait_http_ok(&format!("http://{listen}/healthz"), &logs).await;
    assert!(logs
        .lock()
        .contains("/v1/messages -H 'x-api-key: sk-llmedge-demo'"));
    let base = format!("http://{listen}");
    let out = crate::support::run_sdk("demo_sdks.py", &[&base, "sk-llmedge-demo"]).await;
    // translated to the mock's chat (mock/) and native on the mock as Anthropic (claude/)
    for model in ["mock/llama3", "claude/sonnet"] {
        let s = &out[model]["stream"];
        assert_eq!(s["model"], model);
        assert_eq!(s["stop_reason"], "tool_use", "{model}: {s}");
        let blocks = s["content"].as_array().unwrap();
        assert_eq!(blocks[0]["text"], "Hello from the llmedge mock");
        assert_eq!(blocks[1]["name"], "lookup");
        assert_eq!(blocks[1]["input"], serde_json::json!({"q": "mock"}));
        assert_eq!(s["usage"]["output_tokens"], 5);
        let plain = &out[model]["plain"];
        assert_eq!(plain["content"][0]["text"], "Hello from the llmedge");
        assert_eq!(plain["stop_reason"], "max_tokens", "{model}: {plain}");
    }
    let o = &out["openai_on_claude"];
    assert_eq!(o["calls"][0]["name"], "lookup");
    assert_eq!(o["calls"][0]["arguments"], "{\"q\":\"mock\"}");
    assert_eq!(o["finish"], "tool_calls");
    assert_eq!(o["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn builtin_mock_with_slots_queues_and_reports_like_vllm() {
    let listen = format!("127.0.0.1:{}", reserve_port());
    let (_mock, logs) = spawn_bin(&[
        "mock",
        "--listen",
        &listen,
        "--tokens",
        "10",
        "--delay-ms",
        "40",
        "--slots",
        "1",
    ]);
    wait_http_ok(&format!("http://{listen}/health"), &logs).await;
    let client = reqwest::Client::new();
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let req = client
                .post(format!("http://{listen}/v1/chat/completions"))
                .body(r#"{"model":"m","stream":true,"messages":[]}"#)
                .send();
            tokio::spawn(async move { req.await.unwrap().text().await.unwrap() })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("vllm:num_requests_waiting{model_name=\"mock\"} 2")
            && m.contains("vllm:num_requests_running{model_name=\"mock\"} 1")
            && m.contains("vllm:kv_cache_usage_perc{model_name=\"mock\"} 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "one slot, two queued: {m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for s in streams {
        assert!(s.await.unwrap().ends_with("data: [DONE]\n\n"));
    }
}
