//! Traffic the gateway does not own: a caller's own provider key (`credentials: client`), the
//! caller's own token forwarded on an anonymous route (`credentials: passthrough`), and the
//! `passthrough:` paths (files, batches) streamed untouched.

use serde_json::{json, Value};

use crate::support::mock::MockOpenAi;
use crate::support::{server_and_client_key, TestGateway, CLIENT_KEY, POOL_KEY};

const NO_FILES_KEY: &str = "sk-client-nofiles-31";
const CALLER_PROVIDER_KEY: &str = "sk-caller-own-provider-key-123";

fn yaml(a: &MockOpenAi, b: &MockOpenAi, port: u16, admin: u16) -> String {
    let mut y = server_and_client_key(port, admin);
    y.push_str(&format!(
        r#"  - key: "{NO_FILES_KEY}"
    tenant: acme
    pools: [chat]
pools:
  chat:
    backends: ["{a}"]
    api_key: "{POOL_KEY}"
  byok:
    backends: ["{a}"]
    credentials: client
  internal:
    backends: ["{b}"]
    credentials: passthrough
  files:
    backends: ["{a}"]
    api_key: "{POOL_KEY}"
routes:
  - {{prefix: "chat/", pool: chat, strip_prefix: true}}
  - {{prefix: "byok/", pool: byok, strip_prefix: true}}
  - {{prefix: "internal/", pool: internal, strip_prefix: true, anonymous: true, limits: {{rpm: 2}}}}
passthrough:
  - {{path: "/v1/files", pool: files}}
  - {{path: "/v1/batches", pool: files}}
"#,
        a = a.url(),
        b = b.url()
    ));
    y
}

async fn start() -> (MockOpenAi, MockOpenAi, TestGateway) {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    let gw = TestGateway::start_with(|p, ad| yaml(&a, &b, p, ad)).await;
    (a, b, gw)
}

async fn chat(gw: &TestGateway, auth: &str, model: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let mut rq = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {auth}"))
        .body(body.to_string());
    for (k, v) in extra {
        rq = rq.header(*k, *v);
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn sha12(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

#[tokio::test]
async fn a_callers_own_provider_key_reaches_its_pool_and_nowhere_else() {
    let (a, _b, gw) = start().await;
    let own = [("x-llmedge-upstream-key", CALLER_PROVIDER_KEY)];
    let (s, _) = chat(&gw, CLIENT_KEY, "byok/m", &own).await;
    assert_eq!(s, 200);
    let r = a.last();
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {CALLER_PROVIDER_KEY}").as_str())
    );
    assert!(r.header("x-llmedge-upstream-key").is_none());
    // the same header on a pool with its own key: the pool's key goes, not the caller's
    let (s, _) = chat(&gw, CLIENT_KEY, "chat/m", &own).await;
    assert_eq!(s, 200);
    let r = a.last();
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {POOL_KEY}").as_str())
    );
    for (k, v) in &r.headers {
        assert!(
            !v.contains(CALLER_PROVIDER_KEY),
            "caller key on the pool request in {k}"
        );
    }
    let (s, v) = chat(&gw, CLIENT_KEY, "byok/m", &[]).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["param"], "x-llmedge-upstream-key");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-llmedge-upstream-key"));
    let logs = gw.stop().await;
    assert!(
        !logs.contains(CALLER_PROVIDER_KEY),
        "the caller's key was logged"
    );
}

#[tokio::test]
async fn a_passthrough_route_forwards_the_callers_token_and_limits_each_caller() {
    let (a, b, gw) = start().await;
    let alice = "tok-alice-internal-secret";
    for _ in 0..2 {
        let (s, _) = chat(&gw, alice, "internal/m", &[]).await;
        assert_eq!(s, 200);
        assert_eq!(
            b.last().header("authorization"),
            Some(format!("Bearer {alice}").as_str())
        );
    }
    let (s, v) = chat(&gw, alice, "internal/m", &[]).await;
    assert_eq!(s, 429, "rpm 2 per caller: {v}");
    let (s, _) = chat(&gw, "tok-bob-internal", "internal/m", &[]).await;
    assert_eq!(s, 200, "another caller has its own count");
    // a virtual key works there as usual and is not forwarded
    let (s, _) = chat(&gw, CLIENT_KEY, "internal/m", &[]).await;
    assert_eq!(s, 200);
    assert!(
        b.last().header("authorization").is_none(),
        "the virtual key went upstream"
    );
    // an unknown token anywhere else is still a wrong key
    let (s, v) = chat(&gw, alice, "chat/m", &[]).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(a.requests().is_empty(), "nothing reached the chat pool");
    let line = gw
        .wait_log(&format!("\"user\":\"key:{}\"", sha12(alice)))
        .await;
    assert!(line.contains("\"tenant\":\"passthrough\""), "{line}");
    let logs = gw.stop().await;
    assert!(!logs.contains(alice), "the caller's token was logged");
}

/// A 20 MiB upload to `/v1/files` and its download: the same bytes both ways. Returns the id.
async fn upload_and_download(gw: &TestGateway) -> String {
    let http = reqwest::Client::new();
    let mut body = b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n".to_vec();
    body.extend((0..20 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    body.extend_from_slice(b"\r\n--xyz--\r\n");
    let r = http
        .post(gw.url("/v1/files"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["bytes"], body.len());
    assert_eq!(
        file["authorization"],
        format!("Bearer {POOL_KEY}"),
        "the pool's key, not the caller's"
    );
    let id = file["id"].as_str().unwrap().to_string();
    let down = http
        .get(gw.url(&format!("/v1/files/{id}/content")))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    assert!(
        down.bytes().await.unwrap() == body,
        "the download is the upload, byte for byte"
    );
    id
}

#[tokio::test]
async fn files_and_batches_stream_through_untouched() {
    let (a, _b, gw) = start().await;
    let http = reqwest::Client::new();
    let id = upload_and_download(&gw).await;
    // a batch over it: create, then get
    let create = json!({"input_file_id": id, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let r = http
        .post(gw.url("/v1/batches"))
        .bearer_auth(CLIENT_KEY)
        .body(create.to_string())
        .send()
        .await
        .unwrap();
    let batch: Value = r.json().await.unwrap();
    let got: Value = http
        .get(gw.url(&format!("/v1/batches/{}", batch["id"].as_str().unwrap())))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&got["status"], &got["input_file_id"]),
        (&json!("completed"), &json!(id))
    );
    for r in a.requests() {
        for (k, v) in &r.headers {
            assert!(
                !v.contains(CLIENT_KEY),
                "the virtual key went upstream in {k}"
            );
        }
    }
    // a key whose pools do not include the files pool
    let r = http
        .get(gw.url("/v1/batches/batch-1"))
        .bearer_auth(NO_FILES_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let line = gw.wait_log("\"endpoint\":\"passthrough\"").await;
    assert!(line.contains("\"route\":\"passthrough\""), "{line}");
    gw.wait_metric(r#"llmedge_requests_total{pool="files",route="passthrough",status="200"} 4"#)
        .await;
    let by_endpoint =
        r#"llmedge_endpoint_requests_total{endpoint="passthrough",pool="files",status="200"} 4"#;
    gw.wait_metric(by_endpoint).await;
}

/// Two backends, the first answering every request 503; requests pinned by `x-pin` so a test
/// can find one whose first attempt goes to it.
fn retry_yaml(a: &MockOpenAi, b: &MockOpenAi, port: u16, admin: u16) -> String {
    let mut y = server_and_client_key(port, admin);
    y.push_str(&format!(
        "pools:\n  files:\n    backends: [\"{}\", \"{}\"]\n    balance: consistent_hash\n    hash_key: \"header:x-pin\"\nroutes:\n  - {{prefix: \"m/\", pool: files}}\npassthrough:\n  - {{path: \"/v1/files\", pool: files}}\n  - {{path: \"/v1/batches\", pool: files}}\n",
        a.url(),
        b.url()
    ));
    y
}

/// Sends requests with successive `x-pin` values until one's first attempt reached `a` (the
/// 503 backend); returns that request's answer and whether `b` saw it too.
async fn first_to(
    a: &MockOpenAi,
    b: &MockOpenAi,
    gw: &TestGateway,
    post: bool,
) -> (u16, String, bool) {
    let http = reqwest::Client::new();
    for pin in 0..32 {
        let (before, b_before) = (a.requests().len(), b.requests().len());
        let rq = if post {
            let body = vec![b'x'; 1 << 20];
            http.post(gw.url("/v1/files")).body(body)
        } else {
            http.get(gw.url("/v1/batches/batch-9"))
        };
        let r = rq
            .bearer_auth(CLIENT_KEY)
            .header("x-pin", pin.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        if a.requests().len() > before {
            return (status, text, b.requests().len() > b_before);
        }
    }
    panic!("no pin reached the first backend");
}

#[tokio::test]
async fn a_streamed_upload_is_never_retried_elsewhere_and_a_get_is() {
    for post in [true, false] {
        let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
        a.knobs(|k| k.force_status = Some(503));
        let gw = TestGateway::start_with(|p, ad| retry_yaml(&a, &b, p, ad)).await;
        let (status, text, b_too) = first_to(&a, &b, &gw, post).await;
        if post {
            assert_eq!(
                status, 503,
                "the upload's body went to the first backend: its answer stands"
            );
            assert!(!b_too, "the upload was sent again");
        } else {
            assert!(b_too, "the GET went on to the other backend");
            assert_eq!(
                status, 404,
                "the GET was retried on the other backend: {text}"
            );
            assert!(text.contains("no such batch"), "{text}");
        }
    }
}
