//! `balance: cache_aware` (a conversation's turns stay where its prefix is cached; a prefix
//! every request shares spreads under load) and Responses `previous_response_id` affinity.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::mock::MockOpenAi;
use crate::support::{post, server_and_client_key, TestGateway, CLIENT_KEY};

async fn mocks(n: usize) -> Vec<MockOpenAi> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(MockOpenAi::start().await);
    }
    v
}

fn yaml(mocks: &[MockOpenAi], port: u16, admin: u16) -> String {
    let urls: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.url())).collect();
    let urls = urls.join(", ");
    let mut y = server_and_client_key(port, admin);
    y.push_str(&format!(
        r#"pools:
  kv:
    backends: [{urls}]
    balance: cache_aware
    cache_aware: {{block_chars: 64, max_blocks: 100000, load_weight: 1.0}}
  rr:
    backends: [{urls}]
routes:
  - {{prefix: "kv/", pool: kv, strip_prefix: true}}
  - {{prefix: "rr/", pool: rr, strip_prefix: true}}
"#
    ));
    y
}

/// Which mock (by position) received each request whose body contains `needle`.
fn served(mocks: &[MockOpenAi], needle: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, m) in mocks.iter().enumerate() {
        for r in m.requests() {
            if String::from_utf8_lossy(&r.body).contains(needle) {
                out.push(i);
            }
        }
    }
    out
}

const SYSTEM: &str = "You are a careful assistant for the llmedge test suite. ";

fn conversation(conv: usize, turns: usize) -> Value {
    let mut messages = vec![json!({"role": "system", "content": SYSTEM.repeat(20)})];
    for t in 0..turns {
        let ask = format!(
            "conversation {conv} turn {t}: {}",
            "tell me more about it ".repeat(8)
        );
        messages.push(json!({"role": "user", "content": ask}));
        if t + 1 < turns {
            messages
                .push(json!({"role": "assistant", "content": format!("answer {t} ").repeat(30)}));
        }
    }
    json!({"model": "kv/echo", "messages": messages})
}

/// Plays 5 conversations of 6 turns, one request at a time, and checks every turn of each
/// went to the backend its first turn went to.
async fn conversations_stay_put(gw: &TestGateway, mocks: &[MockOpenAi]) {
    for turn in 1..=6 {
        for conv in 0..5 {
            let body = conversation(conv, turn).to_string();
            let r = post(gw, "/v1/chat/completions", CLIENT_KEY, &body).await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap();
        }
    }
    for conv in 0..5 {
        let where_ = served(mocks, &format!("conversation {conv} turn 0"));
        assert_eq!(where_.len(), 6);
        assert!(
            where_.iter().all(|&b| b == where_[0]),
            "conversation {conv} moved: {where_:?}"
        );
    }
}

#[tokio::test]
async fn a_conversations_turns_stay_on_the_backend_that_holds_its_prefix() {
    let mocks = mocks(3).await;
    let gw = TestGateway::start_with(|p, a| yaml(&mocks, p, a)).await;
    conversations_stay_put(&gw, &mocks).await;
    let hits = gw
        .metric_value(r#"llmedge_prefix_blocks_total{pool="kv",result="hit"}"#)
        .await;
    let misses = gw
        .metric_value(r#"llmedge_prefix_blocks_total{pool="kv",result="miss"}"#)
        .await;
    assert!(
        hits / (hits + misses) > 0.7,
        "hit share {hits} / {}",
        hits + misses
    );
    let index = gw
        .metric_value(r#"llmedge_prefix_index_blocks{pool="kv"}"#)
        .await;
    assert!(index > 0.0);
    let line = gw.wait_log("\"prefix_match\":").await;
    assert!(line.contains("\"prefix_match\":"), "{line}");
}

#[tokio::test]
async fn with_scraped_load_a_conversation_stays_while_its_backend_has_free_slots() {
    // every backend reports 1 of 4 slots busy; what the gateway sends between scrapes fills
    // slots (and frees them when it ends) rather than counting as a queue, so turns stay put
    let mocks = mocks(3).await;
    for m in &mocks {
        m.knobs(|k| k.load = Some((0.0, 1.0, 0.25)));
    }
    let gw = TestGateway::start_with(|p, a| {
        yaml(&mocks, p, a).replace(
            "    balance: cache_aware\n",
            "    balance: cache_aware\n    metrics: {path: /metrics, interval_ms: 100}\n",
        )
    })
    .await;
    for m in &mocks {
        let scraped = format!(
            "llmedge_backend_kv_cache_usage{{backend=\"{}\",pool=\"kv\"}} 0.25",
            m.addr
        );
        gw.wait_metric(&scraped).await;
    }
    conversations_stay_put(&gw, &mocks).await;
}

#[tokio::test]
async fn a_prefix_every_request_shares_spreads_under_load() {
    let mocks = mocks(3).await;
    let gw = TestGateway::start_with(|p, a| yaml(&mocks, p, a)).await;
    let mut held = Vec::new();
    for i in 0..12 {
        let body = json!({"model": "kv/gated", "stream": true, "messages": [
            {"role": "system", "content": SYSTEM.repeat(40)},
            {"role": "user", "content": format!("question {i}")}]});
        let client = reqwest::Client::new();
        let url = gw.url("/v1/chat/completions");
        held.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        }));
        // one at a time, so each choice sees the ones before it in flight
        gw.wait_metric(&format!(
            r#"llmedge_inflight_requests{{pool="kv"}} {}"#,
            i + 1
        ))
        .await;
    }
    let per = arrived(&mocks, 12).await;
    assert!(
        per.iter().all(|&n| n <= 6),
        "hotspot: {per:?} (at most 1.5x the fair 4)"
    );
    assert!(
        per.iter().filter(|&&n| n > 0).count() == 3,
        "every backend used: {per:?}"
    );
    for m in &mocks {
        m.open_gate();
    }
    for h in held {
        assert!(h.await.unwrap().contains("[DONE]"));
    }
}

/// Requests each mock has received, once `n` have arrived in all.
async fn arrived(mocks: &[MockOpenAi], n: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let per: Vec<usize> = mocks.iter().map(|m| m.requests().len()).collect();
        if per.iter().sum::<usize>() >= n {
            return per;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {per:?} arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `previous_response_id` of the answer to `body`'s request, and the port of the mock that
/// made it (the test mock names its responses `resp_<port>`).
async fn respond(gw: &TestGateway, body: &Value) -> String {
    let r = post(gw, "/v1/responses", CLIENT_KEY, &body.to_string()).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    if body["stream"] == true {
        let created = text
            .lines()
            .find(|l| l.starts_with("data:") && l.contains("response.created"))
            .unwrap();
        let v: Value = serde_json::from_str(created.trim_start_matches("data: ")).unwrap();
        return v["response"]["id"].as_str().unwrap().to_string();
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn previous_response_id_goes_back_to_its_backend_and_falls_back_when_it_is_gone() {
    let mocks = mocks(3).await;
    let gw = TestGateway::start_with(|p, a| yaml(&mocks, p, a)).await;
    let port_of: HashMap<String, usize> = mocks
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("resp_{}", m.addr.port()), i))
        .collect();
    for stream in [false, true] {
        let first = respond(
            &gw,
            &json!({"model": "rr/m", "input": "hi", "stream": stream}),
        )
        .await;
        let home = port_of[&first];
        // round robin would spread these three; affinity keeps them where the response lives
        for _ in 0..3 {
            let next = json!({"model": "rr/m", "input": "more", "previous_response_id": first});
            assert_eq!(port_of[&respond(&gw, &next).await], home);
        }
    }
    gw.wait_metric(r#"llmedge_response_affinity_total{pool="rr",result="hit"} 6"#)
        .await;
    // its backend gone: served elsewhere, and the access line says so
    let first = respond(&gw, &json!({"model": "rr/m", "input": "hi"})).await;
    mocks[port_of[&first]].kill();
    let next = json!({"model": "rr/m", "input": "more", "previous_response_id": first});
    let other = respond(&gw, &next).await;
    assert_ne!(other, first);
    let line = gw.wait_log("\"affinity\":\"fallback\"").await;
    assert!(line.contains("\"status\":200"), "{line}");
    let unknown = json!({"model": "rr/m", "input": "x", "previous_response_id": "resp_elsewhere"});
    respond(&gw, &unknown).await;
    gw.wait_metric(r#"llmedge_response_affinity_total{pool="rr",result="unknown"} 1"#)
        .await;
}
