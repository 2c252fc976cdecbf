//! Fleets: balancing, load-aware choice, health, ejection, retries, fallbacks and timeouts.

use std::time::Duration;

use crate::support::*;

const CHAT: &str = "/v1/chat/completions";

/// A config with the standard keys and the given `pools:` and `routes:` blocks.
fn fleet(port: u16, admin: u16, pools: &str, routes: &str) -> String {
    let head = server_and_client_key(port, admin);
    let pin = if pools.contains("  backup:") {
        "[backup]"
    } else {
        "[]"
    };
    format!(
        r#"{head}  - key: "{LIMITED_KEY}"
    tenant: beta
    pools: {pin}
pools:
{pools}
routes:
{routes}
"#
    )
}

/// A gateway with the standard keys, the given pools, and one route `f/` -> pool `f`.
async fn start_fleet(pools: &str) -> TestGateway {
    TestGateway::start_with(|p, ad| {
        fleet(
            p,
            ad,
            pools,
            "  - {prefix: 'f/', pool: f, strip_prefix: true}",
        )
    })
    .await
}

fn backends(mocks: &[&MockOpenAi]) -> String {
    let urls: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.url())).collect();
    format!("[{}]", urls.join(", "))
}

/// A listener that never accepts, with its accept queue full: further SYNs go unanswered, so
/// connecting to it times out. Keep the returned guard alive for as long as it is needed.
async fn blackhole() -> (
    std::net::SocketAddr,
    (tokio::net::TcpListener, Vec<tokio::net::TcpStream>),
) {
    use tokio::net::{TcpSocket, TcpStream};
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let listener = sock.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    (addr, (listener, fillers))
}

/// A fully read response, so the gateway has finished with the request when it returns.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn status(&self) -> u16 {
        self.status
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn chat(gw: &TestGateway, model: &str) -> Reply {
    let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
    let r = post(gw, CHAT, CLIENT_KEY, &body).await;
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    Reply {
        status,
        headers,
        body: r.bytes().await.unwrap(),
    }
}

#[tokio::test]
async fn weighted_round_robin_spreads_by_weight() {
    let (a, b, c) = (
        MockOpenAi::start().await,
        MockOpenAi::start().await,
        MockOpenAi::start().await,
    );
    let pools = format!(
        "  f:\n    backends:\n      - url: \"{}\"\n        weight: 2\n      - \"{}\"\n      - {{url: \"{}\"}}\n",
        a.url(),
        b.url(),
        c.url()
    );
    let gw = start_fleet(&pools).await;
    for _ in 0..40 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    }
    assert_eq!(
        (a.completions(), b.completions(), c.completions()),
        (20, 10, 10)
    );
    gw.wait_log("\"request_id\"").await;
    let lines = gw.logs();
    assert!(
        !lines.contains("\"status\":499"),
        "a keep-alive client that sends its next request at once is not a hang-up:\n{lines}"
    );
}

#[tokio::test]
async fn least_outstanding_sends_new_requests_away_from_a_busy_backend() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let pools = format!(
        "  f:\n    backends: {}\n    balance: least_outstanding\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    let held = gw.post_in_background(r#"{"model":"f/hold","messages":[]}"#);
    a.wait_requests(1).await; // ties go to the first backend: A now holds one request
    for _ in 0..6 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    }
    let seen: Vec<String> = a
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(
        (a.completions(), b.completions()),
        (1, 6),
        "B is idle, A is not: {seen:?}"
    );
    let busy_a = format!(
        "llmedge_backend_inflight{{backend=\"{}\",pool=\"f\"}} 1",
        a.addr
    );
    gw.wait_metric(&busy_a).await; // the held request still counts against A
    gw.wait_metric(r#"llmedge_inflight_requests{pool="f"} 1"#)
        .await;
    held.abort();
}

/// One chat request in conversation `session` (header `x-session-id`, tagged in `user`).
async fn send_session(gw: &TestGateway, session: usize) {
    let r = reqwest::Client::new()
        .post(gw.url(CHAT))
        .bearer_auth(CLIENT_KEY)
        .header("x-session-id", format!("conversation-{session}"))
        .body(format!(
            r#"{{"model":"f/echo","messages":[],"user":"s{session}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The backends that received requests of conversation `session`.
fn session_owners(mocks: &[MockOpenAi], session: usize) -> Vec<usize> {
    let tag = format!("\"user\":\"s{session}\"");
    (0..mocks.len())
        .filter(|&i| {
            mocks[i]
                .requests()
                .iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains(&tag))
        })
        .collect()
}

#[tokio::test]
async fn consistent_hash_keeps_sessions_and_moves_only_the_lost_backends_keys() {
    let mocks = [
        MockOpenAi::start().await,
        MockOpenAi::start().await,
        MockOpenAi::start().await,
    ];
    let pools = format!(
        "  f:\n    backends: {}\n    balance: consistent_hash\n    hash_key: \"header:x-session-id\"\n    retries: 2\n",
        backends(&[&mocks[0], &mocks[1], &mocks[2]])
    );
    let gw = start_fleet(&pools).await;
    let send = |session: usize| send_session(&gw, session);
    let owner = |session: usize| session_owners(&mocks, session);
    for s in 0..30 {
        send(s).await;
        send(s).await;
    }
    let before: Vec<usize> = (0..30)
        .map(|s| {
            let o = owner(s);
            assert_eq!(o.len(), 1, "session {s} stayed on one backend: {o:?}");
            o[0]
        })
        .collect();
    for i in 0..3 {
        assert!(
            before.contains(&i),
            "every backend owns some sessions: {before:?}"
        );
    }
    mocks[2].kill();
    for s in 0..30 {
        send(s).await;
    }
    for (s, &was) in before.iter().enumerate() {
        let now = owner(s);
        if was != 2 {
            assert_eq!(
                now,
                vec![was],
                "session {s} on a surviving backend did not move"
            );
        } else {
            assert_eq!(
                now.len(),
                2,
                "session {s} moved to exactly one survivor: {now:?}"
            );
        }
    }
}

#[tokio::test]
async fn vllm_load_prefers_the_short_queue_and_falls_back_when_metrics_go_stale() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.knobs(|k| k.load = Some((50.0, 4.0, 1.0)));
    b.knobs(|k| k.load = Some((0.0, 1.0, 0.2)));
    let pools = format!(
        "  f:\n    backends: {}\n    balance: vllm_load\n    metrics: {{path: /metrics, interval_ms: 100}}\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    let queue = |m: &MockOpenAi, v: &str| {
        format!(
            "llmedge_backend_queue_depth{{backend=\"{}\",pool=\"f\"}} {v}",
            m.addr
        )
    };
    gw.wait_metric(&queue(&a, "50")).await;
    gw.wait_metric(&queue(&b, "0")).await;
    for _ in 0..5 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    }
    assert_eq!(
        (a.completions(), b.completions()),
        (0, 5),
        "all to the backend with no queue"
    );

    a.knobs(|k| k.load = None);
    b.knobs(|k| k.load = None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw.metrics().await.contains("llmedge_backend_queue_depth{") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failed scrapes must clear the signal"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for _ in 0..3 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    }
    assert_eq!(
        a.completions(),
        3,
        "unknown load: least-outstanding, ties to the first backend"
    );
}

#[tokio::test]
async fn a_killed_backend_is_ejected_without_client_errors_and_taken_back_after_restart() {
    let a = MockOpenAi::start().await;
    let mut b = MockOpenAi::start().await;
    let pools = format!(
        "  f:\n    backends: {}\n    retries: 1\n    health: {{path: /health, interval_ms: 100, timeout_ms: 100, unhealthy_after: 1, healthy_after: 1}}\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    b.kill();
    for i in 0..10 {
        assert_eq!(
            chat(&gw, "f/echo").await.status(),
            200,
            "request {i} after the kill"
        );
    }
    let served_by_b = b.completions();
    assert!(served_by_b <= 1, "B served {served_by_b} before the kill");
    let up_b = format!("llmedge_backend_up{{backend=\"{}\",pool=\"f\"}}", b.addr);
    gw.wait_metric(&format!("{up_b} 0")).await;
    b.restart().await;
    gw.wait_metric(&format!("{up_b} 1")).await;
    for _ in 0..4 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    }
    assert!(b.completions() > served_by_b, "B is back in rotation");
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_backend_and_counted() {
    let good = MockOpenAi::start().await;
    let dead = format!("127.0.0.1:{}", reserve_port());
    let pools = format!(
        "  f:\n    backends: [\"http://{dead}\", \"{}\"]\n    retries: 1\n",
        good.url()
    );
    let gw = start_fleet(&pools).await;
    for i in 0..3 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200, "request {i}");
    }
    assert_eq!(good.completions(), 3);
    // any count: the dead backend returns from its cooldown if the machine is slow
    gw.wait_metric(r#"llmedge_retries_total{pool="f",reason="connect"}"#)
        .await;
    gw.wait_metric(&format!(
        "llmedge_upstream_attempts_total{{backend=\"{dead}\",outcome=\"connect_error\",pool=\"f\"}}"
    ))
    .await;
}

#[tokio::test]
async fn fallback_pool_serves_with_its_own_model_name_and_key_when_the_primary_is_down() {
    let backup = MockOpenAi::start().await;
    let dead = format!("http://127.0.0.1:{}", reserve_port());
    let pools = format!(
        "  primary:\n    backends: [\"{dead}\"]\n    retries: 0\n  backup:\n    backends: [\"{}\"]\n    api_key: \"sk-backup-key\"\n    model_map: {{llama3: gpt-4o-mini}}\n",
        backup.url()
    );
    let routes = "  - {prefix: 'llama/', pool: primary, strip_prefix: true, fallbacks: [backup]}";
    let gw = TestGateway::start_with(|p, ad| fleet(p, ad, &pools, routes)).await;
    let resp = chat(&gw, "llama/llama3").await;
    assert_eq!(resp.status(), 200);
    let v = resp.json();
    assert_eq!(
        v["model"], "llama/llama3",
        "the client still sees its own name"
    );
    let up = backup.last();
    assert_eq!(up.json()["model"], "gpt-4o-mini");
    assert_eq!(up.header("authorization"), Some("Bearer sk-backup-key"));
    gw.wait_metric(r#"llmedge_fallbacks_total{pool="backup",route="llama/"} 1"#)
        .await;

    // while the fallback serves, the request is in flight on it, not on the primary
    let url = gw.url(CHAT);
    let held = tokio::spawn(async move {
        let body = r#"{"model":"llama/gated","stream":true,"messages":[]}"#;
        let r = reqwest::Client::new()
            .post(url)
            .bearer_auth(CLIENT_KEY)
            .body(body);
        r.send().await.unwrap().bytes().await.unwrap()
    });
    gw.wait_metric(r#"llmedge_inflight_requests{pool="backup"} 1"#)
        .await;
    gw.wait_metric(r#"llmedge_inflight_requests{pool="primary"} 0"#)
        .await;
    backup.open_gate();
    held.await.unwrap();
    gw.wait_metric(r#"llmedge_inflight_requests{pool="backup"} 0"#)
        .await;
}

#[tokio::test]
async fn a_backends_429_moves_the_request_and_holds_that_backend() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.knobs(|k| k.force_status = Some(429));
    let pools = format!(
        "  f:\n    backends: {}\n    retries: 1\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    for _ in 0..4 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200);
    }
    assert_eq!(
        a.completions(),
        1,
        "after its 429, A is left alone for its Retry-After"
    );
    assert_eq!(b.completions(), 4);

    b.knobs(|k| k.force_status = Some(429));
    let resp = chat(&gw, "f/echo").await;
    assert_eq!(
        resp.status(),
        429,
        "nowhere left: the upstream's answer passes through"
    );
    assert_eq!(resp.headers["retry-after"], "7");

    // both are paused now: the next request gets a 429 with what is left of the pause, not a
    // 503 for everyone
    let resp = chat(&gw, "f/echo").await;
    assert_eq!(
        resp.status(),
        429,
        "paused by the backends' own Retry-After"
    );
    let v = resp.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "requests");
    let wait: u64 = resp.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=7).contains(&wait), "the remaining pause: {wait}");
    let ms: u64 = resp.headers["retry-after-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms <= 7000 && ms > 0, "{ms}");
    assert_eq!(a.completions() + b.completions(), 6, "no backend was asked");
}

#[tokio::test]
async fn pinned_pool_needs_the_key_to_allow_it() {
    let (main, backup) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let other = MockOpenAi::start().await;
    let pools = format!(
        "  main:\n    backends: [\"{}\"]\n  backup:\n    backends: [\"{}\"]\n  other:\n    backends: [\"{}\"]\n",
        main.url(),
        backup.url(),
        other.url()
    );
    let routes = "  - {prefix: 'm/', pool: main, strip_prefix: true, fallbacks: [backup]}\n  - {prefix: 'o/', pool: other}";
    let gw = TestGateway::start_with(|p, ad| fleet(p, ad, &pools, routes)).await;
    let pinned = |key: &'static str, pool: &'static str| {
        reqwest::Client::new()
            .post(gw.url(CHAT))
            .bearer_auth(key)
            .header("x-llmedge-pool", pool)
            .body(r#"{"model":"m/echo","messages":[]}"#)
            .send()
    };
    assert_eq!(pinned(LIMITED_KEY, "backup").await.unwrap().status(), 200);
    assert_eq!(backup.completions(), 1);
    assert!(
        backup.last().header("x-llmedge-pool").is_none(),
        "the pin header stays here"
    );
    let (status, v) = error_json(pinned(LIMITED_KEY, "main").await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(v["error"]["code"], "pool_not_allowed");
    assert_eq!(
        pinned(CLIENT_KEY, "main").await.unwrap().status(),
        200,
        "no list: any pool"
    );
    assert_eq!(
        error_json(pinned(CLIENT_KEY, "nope").await.unwrap())
            .await
            .0,
        403
    );
    let (status, _) = error_json(pinned(CLIENT_KEY, "other").await.unwrap()).await;
    assert_eq!(status, 403, "a pin cannot send a model around its route");
    assert_eq!(other.completions(), 0);
}

/// The admin `/readyz` body: `{"status":..., "routes": {prefix: {"available": bool}}}`.
async fn admin_readyz(gw: &TestGateway) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", gw.admin))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn readyz_stays_ready_with_a_dead_pool_and_reports_routes_in_a_gauge_and_the_admin_body() {
    let a = MockOpenAi::start().await;
    let pools = format!(
        "  f:\n    backends: [\"{}\"]\n    health: {{path: /health, interval_ms: 100, timeout_ms: 100, unhealthy_after: 1, healthy_after: 1}}\n",
        a.url()
    );
    let gw = start_fleet(&pools).await;
    gw.wait_metric(r#"llmedge_route_available{route="f/"} 1"#)
        .await;
    a.knobs(|k| k.healthy = false);
    gw.wait_metric(r#"llmedge_route_available{route="f/"} 0"#)
        .await;
    let r = reqwest::get(gw.url("/readyz")).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "one dead pool must not take every replica out"
    );
    let body = r.text().await.unwrap();
    assert_eq!(
        body, r#"{"status":"ready"}"#,
        "the API listener names no route or pool"
    );
    let (status, v) = admin_readyz(&gw).await;
    assert_eq!(status, 200);
    assert_eq!(v["routes"]["f/"]["available"], false, "{v}");
    let resp = post(&gw, CHAT, CLIENT_KEY, r#"{"model":"f/echo","messages":[]}"#).await;
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 503, "a backend failed by its checks is never used");
    assert_eq!(v["error"]["code"], "no_backend");
    assert_eq!(a.completions(), 0);
}

#[tokio::test]
async fn readyz_stays_ready_after_the_only_backend_is_ejected() {
    let a = MockOpenAi::start().await;
    a.knobs(|k| k.force_status = Some(500));
    let pools = format!("  f:\n    backends: [\"{}\"]\n    retries: 0\n", a.url());
    let gw = start_fleet(&pools).await;
    assert_eq!(chat(&gw, "f/echo").await.status(), 500);
    gw.wait_metric(&format!(
        "llmedge_backend_up{{backend=\"{}\",pool=\"f\"}} 0",
        a.addr
    ))
    .await;
    assert_eq!(reqwest::get(gw.url("/readyz")).await.unwrap().status(), 200);
    let (status, v) = admin_readyz(&gw).await;
    assert_eq!(
        (status, &v["status"]),
        (200, &serde_json::json!("ready")),
        "{v}"
    );
}

async fn stream_error_label(model: &str, timeouts: &str) -> (String, String) {
    let a = MockOpenAi::start().await;
    let pools = format!(
        "  f:\n    backends: [\"{}\"]\n    timeouts: {timeouts}\n",
        a.url()
    );
    let gw = start_fleet(&pools).await;
    let resp = post(
        &gw,
        CHAT,
        CLIENT_KEY,
        &format!(r#"{{"model":"f/{model}","stream":true}}"#),
    )
    .await;
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .unwrap()
        .unwrap();
    let line = gw.wait_log(&format!("\"model\":\"f/{model}\"")).await;
    (text, line)
}

#[tokio::test]
async fn idle_and_total_timeouts_end_streams_with_their_own_labels() {
    let (text, line) = stream_error_label("stall", "{idle_ms: 300}").await;
    assert!(
        text.contains("\"content\":\"Hel\""),
        "the stream had started: {text}"
    );
    assert!(text.ends_with("\"code\":\"upstream_timeout\",\"message\":\"upstream stream stalled longer than the idle timeout\",\"param\":null,\"type\":\"server_error\"}}\n\n"), "{text}");
    assert!(line.contains("\"error\":\"idle_timeout\""), "{line}");

    let (text, line) = stream_error_label("endless", "{total_ms: 400}").await;
    assert!(text.contains("total timeout"), "{text}");
    assert!(line.contains("\"error\":\"total_timeout\""), "{line}");
}

#[tokio::test]
async fn connect_timeout_has_its_own_label_and_moves_on() {
    let (addr, _blackhole) = blackhole().await;
    let good = MockOpenAi::start().await;
    let pools = format!(
        "  f:\n    backends: [\"http://{addr}\", \"{}\"]\n    retries: 1\n    timeouts: {{connect_ms: 200}}\n",
        good.url()
    );
    let gw = start_fleet(&pools).await;
    assert_eq!(
        chat(&gw, "f/echo").await.status(),
        200,
        "the first attempt times out, the retry lands"
    );
    gw.wait_metric(&format!("llmedge_upstream_attempts_total{{backend=\"{addr}\",outcome=\"connect_timeout\",pool=\"f\"}} 1")).await;
    assert_eq!(good.completions(), 1);
}

#[tokio::test]
async fn a_retried_attempt_resends_a_large_body_byte_for_byte() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.knobs(|k| k.force_status = Some(503));
    let pools = format!(
        "  f:\n    backends: {}\n    retries: 1\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    let filler = "r".repeat(1 << 20);
    let tail = format!(r#""messages":[{{"role":"user","content":"{filler}"}}]"#);
    let resp = post(
        &gw,
        CHAT,
        CLIENT_KEY,
        &format!(r#"{{"model":"f/echo",{tail}}}"#),
    )
    .await;
    assert_eq!(resp.status(), 200, "A's 503 moved the request to B");
    let expected = format!(r#"{{"model":"echo",{tail}}}"#);
    assert!(
        a.last().body == expected.as_bytes(),
        "first attempt got the whole body"
    );
    assert!(
        b.last().body == expected.as_bytes(),
        "the retry got it again, byte for byte"
    );
}

/// Which of `mocks` received a request whose body contains `tag`.
fn owners(mocks: &[MockOpenAi], tag: &str) -> Vec<usize> {
    (0..mocks.len())
        .filter(|&i| {
            mocks[i]
                .requests()
                .iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains(tag))
        })
        .collect()
}

#[tokio::test]
async fn consistent_hash_by_prompt_prefix_and_by_user() {
    let mocks = [
        MockOpenAi::start().await,
        MockOpenAi::start().await,
        MockOpenAi::start().await,
    ];
    let list = backends(&[&mocks[0], &mocks[1], &mocks[2]]);
    let pools = format!(
        "  f:\n    backends: {list}\n    balance: consistent_hash\n    hash_key: \"prompt_prefix:48\"\n  u:\n    backends: {list}\n    balance: consistent_hash\n    hash_key: user\n"
    );
    let routes = "  - {prefix: 'f/', pool: f, strip_prefix: true}\n  - {prefix: 'u/', pool: u, strip_prefix: true}";
    let gw = TestGateway::start_with(|p, ad| fleet(p, ad, &pools, routes)).await;
    // the first 48 bytes of `messages` hold the conversation number; the questions differ
    for conv in 0..12 {
        for turn in 0..3 {
            let body = format!(
                r#"{{"model":"f/echo","messages":[{{"role":"system","content":"conversation {conv:02} system prompt"}},{{"role":"user","content":"turn {turn} conv{conv}x"}}]}}"#
            );
            assert_eq!(post(&gw, CHAT, CLIENT_KEY, &body).await.status(), 200);
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for conv in 0..12 {
        let o = owners(&mocks, &format!("conv{conv}x"));
        assert_eq!(
            o.len(),
            1,
            "conversation {conv} stayed with its prefix cache: {o:?}"
        );
        used.insert(o[0]);
    }
    assert!(
        used.len() > 1,
        "different prefixes spread over backends: {used:?}"
    );
    for i in 0..6 {
        let body = format!(r#"{{"model":"u/echo","messages":[],"user":"alice-{i}"}}"#);
        assert_eq!(post(&gw, CHAT, CLIENT_KEY, &body).await.status(), 200);
    }
    let alice: std::collections::BTreeSet<usize> = (0..6)
        .flat_map(|i| owners(&mocks, &format!("\"alice-{i}\"")))
        .collect();
    assert_eq!(alice.len(), 1, "one principal, one backend: {alice:?}");
}

#[tokio::test]
async fn nothing_is_retried_once_the_stream_has_started() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let pools = format!(
        "  f:\n    backends: {}\n    retries: 2\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    let text = post(&gw, CHAT, CLIENT_KEY, r#"{"model":"f/cut","stream":true}"#)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\"code\":\"upstream_closed\""), "{text}");
    assert_eq!(
        a.completions() + b.completions(),
        1,
        "a retry would repeat tokens the client already has"
    );
}

#[tokio::test]
async fn a_reset_before_the_response_headers_is_retried_on_another_backend() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.knobs(|k| k.hang_up = true);
    let pools = format!(
        "  f:\n    backends: {}\n    retries: 1\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    for i in 0..4 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200, "request {i}");
    }
    assert!(a.completions() >= 1, "A was tried and hung up");
    assert_eq!(b.completions(), 4, "every request was served by B");
}

#[tokio::test]
async fn a_primary_answering_503_hands_the_request_to_the_fallback_pool() {
    let (primary, backup) = (MockOpenAi::start().await, MockOpenAi::start().await);
    primary.knobs(|k| k.force_status = Some(503));
    let pools = format!(
        "  primary:\n    backends: [\"{}\"]\n    retries: 0\n  backup:\n    backends: [\"{}\"]\n",
        primary.url(),
        backup.url()
    );
    let routes = "  - {prefix: 'llama/', pool: primary, strip_prefix: true, fallbacks: [backup]}";
    let gw = TestGateway::start_with(|p, ad| fleet(p, ad, &pools, routes)).await;
    let resp = chat(&gw, "llama/echo").await;
    assert_eq!(resp.status(), 200, "the fallback answered");
    assert_eq!((primary.completions(), backup.completions()), (1, 1));
    gw.wait_metric(r#"llmedge_fallbacks_total{pool="backup",route="llama/"} 1"#)
        .await;
}

#[tokio::test]
async fn timeouts_before_the_first_byte_are_openai_504s_with_their_own_labels() {
    let (addr, _blackhole) = blackhole().await;
    let slow = MockOpenAi::start().await;
    let pools = format!(
        "  f:\n    backends: [\"http://{addr}\"]\n    retries: 0\n    timeouts: {{connect_ms: 200}}\n  s:\n    backends: [\"{}\"]\n    retries: 0\n    timeouts: {{total_ms: 300}}\n",
        slow.url()
    );
    let routes = "  - {prefix: 'f/', pool: f, strip_prefix: true}\n  - {prefix: 's/', pool: s, strip_prefix: true}";
    let gw = TestGateway::start_with(|p, ad| fleet(p, ad, &pools, routes)).await;
    for (model, label) in [("f/echo", "connect_timeout"), ("s/slow", "total_timeout")] {
        let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
        let (status, v) = error_json(post(&gw, CHAT, CLIENT_KEY, &body).await).await;
        assert_eq!(status, 504, "{model}: {v}");
        assert_eq!(v["error"]["type"], "server_error", "{v}");
        let line = gw.wait_log(&format!("\"model\":\"{model}\"")).await;
        assert!(line.contains(&format!("\"error\":\"{label}\"")), "{line}");
    }
}

#[tokio::test]
async fn a_backend_that_timed_out_is_ejected_from_rotation() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.knobs(|k| k.stall = Some(Duration::from_secs(3)));
    let pools = format!(
        "  f:\n    backends: {}\n    retries: 1\n    timeouts: {{first_byte_ms: 300}}\n",
        backends(&[&a, &b])
    );
    let gw = start_fleet(&pools).await;
    // a timed-out generation is not re-run elsewhere (it may be merely long, and would be paid
    // twice): the first request, which round robin gives to A, gets its 504
    assert_eq!(chat(&gw, "f/echo").await.status(), 504);
    // well inside A's first 1 s cooldown
    for i in 0..4 {
        assert_eq!(chat(&gw, "f/echo").await.status(), 200, "request {i}");
    }
    assert_eq!(
        a.completions(),
        1,
        "after its timeout A is out of rotation (round robin would give it 2 of 4)"
    );
    assert_eq!(b.completions(), 4);
    gw.wait_metric(&format!(
        "llmedge_upstream_attempts_total{{backend=\"{}\",outcome=\"first_byte_timeout\",pool=\"f\"}} 1",
        a.addr
    ))
    .await;
}

#[tokio::test]
async fn a_fallback_without_a_rename_gets_the_route_model_not_the_primarys_rename() {
    let backup = MockOpenAi::start().await;
    let dead = format!("http://127.0.0.1:{}", reserve_port());
    let pools = format!(
        "  primary:\n    backends: [\"{dead}\"]\n    retries: 0\n    model_map: {{llama3: llama-3-70b-awq}}\n  backup:\n    backends: [\"{}\"]\n",
        backup.url()
    );
    // no prefix stripping: the client's name is the route's, and only the primary renames it
    let routes = "  - {prefix: 'llama', pool: primary, fallbacks: [backup]}";
    let gw = TestGateway::start_with(|p, ad| fleet(p, ad, &pools, routes)).await;
    for stream in [false, true] {
        let body = format!(
            r#"{{"model":"llama3","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let resp = post(&gw, CHAT, CLIENT_KEY, &body).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.contains("\"model\":\"llama3\""), "{text}");
        let up = backup.last().json();
        assert_eq!(
            up["model"], "llama3",
            "stream {stream}: the route's name, not the primary's rename"
        );
        assert_eq!(up["messages"][0]["content"], "hi");
        assert_eq!(
            up["stream_options"]["include_usage"].as_bool(),
            stream.then_some(true)
        );
    }
}
