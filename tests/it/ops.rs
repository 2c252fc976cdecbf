//! Operations: reload, graceful drain, upgrade, TLS and HTTP/2, CORS, request ids.

use std::time::Duration;

use futures::StreamExt;

use crate::support::*;

const CHAT: &str = "/v1/chat/completions";
const NEW_KEY: &str = "sk-client-rotated-555";

/// The standard key (or `key`), one pool on `upstream`, and routes `mock/` (or `prefix`).
fn ops_config(
    port: u16,
    admin: u16,
    upstream: &str,
    key: &str,
    prefix: &str,
    extra: &str,
) -> String {
    format!(
        r#"server:
  listen: "127.0.0.1:{port}"
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
{extra}
keys:
  - key: "{key}"
    tenant: acme
    user: alice
pools:
  mock:
    backends: ["{upstream}"]
routes:
  - prefix: "{prefix}"
    pool: mock
    strip_prefix: true
"#
    )
}

/// A gateway with the standard key and route `mock/` on `mock`, plus `extra` server lines.
async fn start_ops(mock: &MockOpenAi, extra: &str) -> TestGateway {
    let up = mock.url();
    TestGateway::start_with(|p, a| ops_config(p, a, &up, CLIENT_KEY, "mock/", extra)).await
}

/// The port and admin port a running gateway's config must keep across a reload.
fn rewrite(gw: &TestGateway, upstream: &str, key: &str, prefix: &str, extra: &str) {
    let yaml = ops_config(gw.port, gw.admin, upstream, key, prefix, extra);
    std::fs::write(gw.config_path(), yaml).unwrap();
}

/// Opens a stream and reads it until its first event arrived; returns the rest as a stream.
async fn open_stream(
    gw: &TestGateway,
    key: &str,
    model: &str,
) -> (
    String,
    impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>,
) {
    let resp = reqwest::Client::new()
        .post(gw.url(CHAT))
        .bearer_auth(key)
        .body(format!(
            r#"{{"model":"{model}","stream":true,"messages":[]}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = String::new();
    while !got.contains("\n\n") {
        let chunk = body.next().await.expect("first event").unwrap();
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    (got, body)
}

async fn read_rest(
    mut got: String,
    mut body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> String {
    let read = async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => got.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => break,
            }
        }
        got
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ended")
}

/// Lets a `gated` stream finish and checks that it ended with `[DONE]`; returns its text.
async fn finish_gated(
    mock: &MockOpenAi,
    first: String,
    rest: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>,
    what: &str,
) -> String {
    mock.open_gate();
    let text = read_rest(first, Box::pin(rest)).await;
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "{what} finished: {text}"
    );
    text
}

async fn chat_status(gw: &TestGateway, key: &str, model: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
    post(gw, CHAT, key, &body).await.status().as_u16()
}

#[tokio::test]
async fn sighup_reload_keeps_a_live_stream_and_the_next_request_sees_the_new_key_and_route() {
    let mock = MockOpenAi::start().await;
    let up = mock.url();
    let gw = start_ops(&mock, "").await;
    let (first, rest) = open_stream(&gw, CLIENT_KEY, "mock/gated").await;

    rewrite(&gw, &up, NEW_KEY, "llama/", "");
    gw.signal("HUP");
    gw.wait_metric(r#"llmedge_config_reload_total{result="success"} 1"#)
        .await;
    assert_eq!(
        chat_status(&gw, NEW_KEY, "llama/echo").await,
        200,
        "new key, new route"
    );
    assert_eq!(
        chat_status(&gw, CLIENT_KEY, "llama/echo").await,
        401,
        "the old key is gone"
    );
    assert_eq!(
        chat_status(&gw, NEW_KEY, "mock/echo").await,
        404,
        "the old route is gone"
    );

    let text = finish_gated(
        &mock,
        first,
        rest,
        "the stream that started before the reload",
    )
    .await;
    assert!(text.contains("\"model\":\"mock/gated\""), "{text}");
    let line = gw.wait_log("\"model\":\"mock/gated\"").await;
    assert!(line.contains("\"status\":200"), "{line}");
}

#[tokio::test]
async fn a_bad_reload_is_refused_with_the_field_and_the_old_config_keeps_serving() {
    let mock = MockOpenAi::start().await;
    let up = mock.url();
    let gw = start_ops(&mock, "").await;
    let bad = ops_config(gw.port, gw.admin, &up, CLIENT_KEY, "mock/", "")
        .replace("pool: mock", "pool: mokc");
    std::fs::write(gw.config_path(), bad).unwrap();
    gw.signal("HUP");
    gw.wait_metric(r#"llmedge_config_reload_total{result="failure"} 1"#)
        .await;
    let line = gw.wait_log("config reload refused").await;
    assert!(
        line.contains("routes[0].pool: unknown pool \\\"mokc\\\"")
            || line.contains("routes[0].pool: unknown pool \"mokc\""),
        "the message names the field: {line}"
    );
    assert_eq!(chat_status(&gw, CLIENT_KEY, "mock/echo").await, 200);
}

#[tokio::test]
async fn watch_reloads_when_the_file_changes_and_limit_counters_carry_over() {
    let mock = MockOpenAi::start().await;
    let up = mock.url();
    let limited = "tenants:\n  acme:\n    limits: {rpm: 3}\n";
    let gw = TestGateway::start_args(
        |p, a| ops_config(p, a, &up, CLIENT_KEY, "mock/", limited),
        &["--watch"],
    )
    .await;
    for i in 0..2 {
        assert_eq!(
            chat_status(&gw, CLIENT_KEY, "mock/echo").await,
            200,
            "request {i}"
        );
    }
    // the same limit under a new route: the two requests already made still count
    rewrite(&gw, &up, CLIENT_KEY, "llama/", limited);
    gw.wait_metric(r#"llmedge_config_reload_total{result="success"} 1"#)
        .await;
    assert_eq!(chat_status(&gw, CLIENT_KEY, "llama/echo").await, 200);
    assert_eq!(
        chat_status(&gw, CLIENT_KEY, "llama/echo").await,
        429,
        "3 rpm: the window carried over the reload"
    );
}

#[tokio::test]
async fn sigterm_lets_an_open_stream_finish_refuses_new_connections_and_exits_0() {
    let mock = MockOpenAi::start().await;
    let mut gw = start_ops(&mock, "  grace_period_secs: 30").await;
    let (first, rest) = open_stream(&gw, CLIENT_KEY, "mock/gated").await;
    gw.terminate();
    gw.wait_log("shutting down: listeners closed").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener still accepts after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    finish_gated(&mock, first, rest, "the stream open at SIGTERM").await;
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    gw.wait_log(" drained").await;
}

#[tokio::test]
async fn streams_still_open_when_the_grace_period_ends_get_a_final_error_event() {
    let mock = MockOpenAi::start().await;
    let mut gw = start_ops(&mock, "  grace_period_secs: 1").await;
    let (first, rest) = open_stream(&gw, CLIENT_KEY, "mock/endless").await;
    gw.terminate();
    let text = read_rest(first, Box::pin(rest)).await;
    assert!(
        text.trim_end().ends_with(
            r#"{"error":{"code":"server_shutting_down","message":"the gateway is shutting down; retry the request","param":null,"type":"server_error"}}"#
        ),
        "{text}"
    );
    assert!(
        mock.wait_abort(Duration::from_secs(5)).await,
        "the upstream generation was stopped"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    let line = gw.wait_log("\"model\":\"mock/endless\"").await;
    assert!(line.contains("\"error\":\"shutdown\""), "{line}");
}

#[tokio::test]
async fn upgrade_hands_the_listener_to_a_new_process_without_dropping_a_stream_or_spend() {
    let mock = MockOpenAi::start().await;
    let up = mock.url();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let state = dir.path().join("state.json");
    // a dollar a token: the saved spend must equal every token either process charged
    let extra = format!(
        "  upgrade_sock: \"{}\"\nstate:\n  path: \"{}\"\n  flush_ms: 50\npricing:\n  \"mock/*\": {{input: 1000000, output: 1000000}}",
        sock.display(),
        state.display()
    );
    let mut old = TestGateway::start_in(
        dir,
        |p, a| ops_config(p, a, &up, CLIENT_KEY, "mock/", &extra),
        &[],
    )
    .await;
    let (first, rest) = open_stream(&old, CLIENT_KEY, "mock/gated").await;

    let path = old.config_path();
    let (mut new, new_logs) = spawn_bin_in(
        old.dir(),
        &["--config", path.to_str().unwrap(), "--upgrade"],
    );
    // the new process waits on the socket for the listeners; the old one sends them on SIGQUIT
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no upgrade socket:\n{}",
            new_logs.lock()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    old.signal("QUIT");
    wait_http_ok(
        &format!("http://127.0.0.1:{}/healthz", old.admin),
        &new_logs,
    )
    .await;
    // the new process has read the state file: what the old one charges from here on (its
    // stream below) must not be overwritten by the new one's saves
    let loaded = "limit and spend counters loaded";
    wait_output(
        &new_logs,
        loaded,
        "the new process never loaded the state file",
    )
    .await;
    // requests keep working throughout; the old process stops accepting once it handed over
    for i in 0..5 {
        assert_eq!(
            chat_status(&old, CLIENT_KEY, "mock/echo").await,
            200,
            "request {i}"
        );
    }
    finish_gated(&mock, first, rest, "the old process's stream").await;
    let status = old.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(
        chat_status(&old, CLIENT_KEY, "mock/echo").await,
        200,
        "the new process serves"
    );
    let served = "\"model\":\"mock/echo\"";
    wait_output(&new_logs, served, "the new process answered no request").await;
    let pid = new.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), new.wait())
        .await
        .expect("the new process drains and exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let charged = charged_tokens(&old.logs()) + charged_tokens(&new_logs.lock());
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let usd = saved["scopes"]["tenant:acme"]["day"]["usd"]
        .as_f64()
        .unwrap();
    assert!(
        charged > 0 && (usd - charged as f64).abs() < 1e-6,
        "saved ${usd}, charged {charged} tokens: spend was lost or counted twice"
    );
}

/// Prompt plus completion tokens over every access line in `logs`.
fn charged_tokens(logs: &str) -> u64 {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("request_id").is_some())
        .map(|v| {
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            n("prompt_tokens") + n("completion_tokens")
        })
        .sum()
}

#[tokio::test]
async fn cors_preflight_and_responses_carry_the_allowed_origin_only() {
    let mock = MockOpenAi::start().await;
    let cors = "  cors:\n    allowed_origins: [\"https://app.example.com\"]\n    max_age_secs: 300";
    let gw = start_ops(&mock, cors).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, gw.url(CHAT))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204, "no key needed for a preflight");
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(h["access-control-max-age"], "300");

    let other = preflight("https://evil.example.net").await.unwrap();
    assert_eq!(other.status(), 204);
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let resp = client
        .post(gw.url(CHAT))
        .bearer_auth(CLIENT_KEY)
        .header("origin", "https://app.example.com")
        .body(r#"{"model":"mock/echo","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
    let denied = client
        .post(gw.url(CHAT))
        .header("origin", "https://app.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "errors are readable by the page too"
    );
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_a_pool_trusts_only_its_ca_file() {
    let mock = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::TestCerts::write(dir.path());
    let tls_block = format!(
        "  tls:\n    cert: \"{}\"\n    key: \"{}\"",
        certs.cert.display(),
        certs.key.display()
    );
    let front = start_ops(&mock, &tls_block).await;
    let client = certs.client();
    let resp = client
        .post(format!("https://127.0.0.1:{}{CHAT}", front.port))
        .bearer_auth(CLIENT_KEY)
        .body(r#"{"model":"mock/echo","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN chose h2");
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // a second gateway in front of the TLS one: verified against the pool's CA file
    let tls_up = format!("https://127.0.0.1:{}", front.port);
    let pool_tls = |extra: &str| {
        let yaml = ops_config(0, 0, &tls_up, CLIENT_KEY, "mock/", "");
        yaml.replace(
            &format!("    backends: [\"{tls_up}\"]\n"),
            &format!(
                "    backends: [\"{tls_up}\"]\n    tls: {extra}\n    api_key: \"{CLIENT_KEY}\"\n"
            ),
        )
    };
    let ca = format!("{{ca_file: \"{}\"}}", certs.ca.display());
    for (tls, want) in [(ca.as_str(), 200), ("{}", 502), ("{verify: false}", 200)] {
        let yaml = pool_tls(tls);
        let back = TestGateway::start_with(|p, a| {
            yaml.replace(
                "127.0.0.1:0\"\n  admin_listen: \"127.0.0.1:0",
                &format!("127.0.0.1:{p}\"\n  admin_listen: \"127.0.0.1:{a}"),
            )
        })
        .await;
        // the front gateway strips "mock/" too, so the back one asks for "mock/mock/echo"
        let status = chat_status(&back, CLIENT_KEY, "mock/mock/echo").await;
        assert_eq!(status, want, "pool tls {tls}:\n{}", back.logs());
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_works_when_enabled() {
    let mock = MockOpenAi::start().await;
    let gw = start_ops(&mock, "  h2c: true").await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .post(gw.url(CHAT))
        .bearer_auth(CLIENT_KEY)
        .body(r#"{"model":"mock/echo","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_even_for_refusals() {
    // the client's own id round-trips in chat::azure_style_api_key_header_authenticates…
    let mock = MockOpenAi::start().await;
    let gw = start_ops(&mock, "").await;
    let resp = post(&gw, CHAT, "sk-wrong", "{}").await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(generated.starts_with("req_"), "{generated}");
    gw.wait_log(&format!("\"request_id\":\"{generated}\""))
        .await;
}
