//! The wider API surface: Responses, moderations, rerank, score, images, audio (JSON, binary and
//! multipart), `GET /v1/models/{id}` and per-route endpoint lists, through one pipeline.

use serde_json::json;

use crate::support::*;

/// One pool on the mock; route `mock/` serves everything, `chat/` only chat and responses.
fn api_config(port: u16, admin: u16, upstream: &str, extra_key: &str) -> String {
    let head = server_and_client_key(port, admin);
    format!(
        r#"{head}{extra_key}
pools:
  mock:
    backends: ["{upstream}"]
    api_key: "{POOL_KEY}"
routes:
  - prefix: "mock/"
    pool: mock
    strip_prefix: true
  - prefix: "chat/"
    pool: mock
    strip_prefix: true
    endpoints: [chat, responses]
pricing:
  "mock/*": {{input: 1000.0, output: 1000.0}}
"#
    )
}

async fn start(mock: &MockOpenAi) -> TestGateway {
    TestGateway::start_with(|p, a| api_config(p, a, &mock.url(), "")).await
}

/// [`start`] with `max_body_bytes: 65536`.
async fn start_limited(mock: &MockOpenAi) -> TestGateway {
    TestGateway::start_with(|p, a| {
        api_config(p, a, &mock.url(), "").replacen(
            "  threads: 2\n",
            "  threads: 2\n  max_body_bytes: 65536\n",
            1,
        )
    })
    .await
}

async fn post_json(gw: &TestGateway, path: &str, body: serde_json::Value) -> reqwest::Response {
    post(gw, path, CLIENT_KEY, &body.to_string()).await
}

#[tokio::test]
async fn json_endpoints_route_by_model_restore_it_and_never_forward_the_client_key() {
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let cases = [
        (
            "/v1/moderations",
            json!({"model":"mock/omni-moderation","input":"hi"}),
        ),
        (
            "/v1/rerank",
            json!({"model":"mock/bge-reranker","query":"q","documents":["a","b"]}),
        ),
        (
            "/v1/score",
            json!({"model":"mock/bge-reranker","text_1":"a","text_2":"b"}),
        ),
        ("/v1/responses", json!({"model":"mock/echo","input":"hi"})),
    ];
    for (path, body) in cases {
        let model = body["model"].as_str().unwrap().to_string();
        let resp = post_json(&gw, path, body).await;
        assert_eq!(resp.status(), 200, "{path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            v["model"],
            model.as_str(),
            "{path}: the client's name comes back"
        );
        let up = mock.last();
        assert_eq!(up.path, path);
        assert_eq!(
            up.json()["model"],
            model.trim_start_matches("mock/"),
            "{path}: the upstream sees its own name"
        );
        assert_eq!(
            up.header("authorization"),
            Some(format!("Bearer {POOL_KEY}").as_str())
        );
        assert!(
            up.json().get("stream_options").is_none(),
            "{path}: nothing injected"
        );
    }
    let images = post_json(
        &gw,
        "/v1/images/generations",
        json!({"model":"mock/gpt-image-1","prompt":"a cat"}),
    )
    .await;
    assert_eq!(images.status(), 200);
    assert_eq!(mock.last().json()["model"], "gpt-image-1");
    // usage spelled input/output_tokens feeds the same counters: images 10 + 20, responses 9 + 3
    gw.wait_metric(
        r#"llmedge_tokens_total{kind="completion",model="mock/gpt-image-1",tenant="acme"} 20"#,
    )
    .await;
    gw.wait_metric(r#"llmedge_tokens_total{kind="prompt",model="mock/echo",tenant="acme"} 9"#)
        .await;
}

#[tokio::test]
async fn the_sdk_creates_a_response_and_its_usage_is_charged() {
    use async_openai::types::responses::{CreateResponseArgs, InputParam};
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let client = openai_client(&gw, CLIENT_KEY);
    let req = CreateResponseArgs::default()
        .model("mock/echo")
        .input(InputParam::Text("hello".into()))
        .max_output_tokens(50u32)
        .build()
        .unwrap();
    let resp = client.responses().create(req).await.unwrap();
    assert_eq!(resp.model, "mock/echo");
    let usage = resp.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (9, 3));
    let line = gw.wait_log("\"model\":\"mock/echo\"").await;
    assert!(line.contains("\"prompt_tokens\":9"), "{line}");
    assert!(line.contains("\"completion_tokens\":3"), "{line}");
    assert!(line.contains("\"cached_tokens\":4"), "{line}");
    // 12 tokens at $1000 per 1M, the 4 cached ones at the input price (no cached_input set)
    let spend = gw
        .metric_value(r#"llmedge_spend_usd_total{model="mock/echo",tenant="acme"}"#)
        .await;
    assert!((spend - 0.012).abs() < 1e-9, "spend {spend}");
}

#[tokio::test]
async fn a_responses_stream_split_across_reads_keeps_its_events_and_reports_usage() {
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let resp = post_json(
        &gw,
        "/v1/responses",
        json!({"model":"mock/echo","input":"hi","stream":true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    assert!(
        events[0].starts_with("event: response.created\ndata: "),
        "{text}"
    );
    assert!(
        events[0].contains("\"model\":\"mock/echo\""),
        "created restores the model: {text}"
    );
    assert!(events[1].contains("\"delta\":\"Hel\""), "{text}");
    assert!(events[3].contains("\"model\":\"mock/echo\""), "{text}");
    assert!(!text.contains("\"model\":\"echo\""), "{text}");
    assert!(
        !text.contains("\"error\""),
        "a Responses stream has no [DONE]: {text}"
    );
    assert!(
        mock.last().json().get("stream_options").is_none(),
        "the Responses API takes no stream_options"
    );
    let line = gw.wait_log("\"stream\":true").await;
    assert!(line.contains("\"prompt_tokens\":9"), "{line}");
    assert!(line.contains("\"completion_tokens\":3"), "{line}");
    assert!(line.contains("\"ttft_ms\":"), "{line}");
    assert!(!line.contains("\"ttft_ms\":null"), "{line}");
}

#[tokio::test]
async fn speech_comes_back_as_binary_untouched() {
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let resp = post_json(
        &gw,
        "/v1/audio/speech",
        json!({"model":"mock/tts-1","input":"hello","voice":"alloy"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/mpeg");
    let audio = resp.bytes().await.unwrap();
    let want: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    assert_eq!(&audio[..], &want[..], "byte for byte");
    assert_eq!(mock.last().json()["model"], "tts-1");
}

async fn upload(gw: &TestGateway, path: &str, form: reqwest::multipart::Form) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url(path))
        .bearer_auth(CLIENT_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn wav(len: usize) -> Vec<u8> {
    // not valid audio: every byte value, with CRLFs and dashes that look like boundaries
    (0..len)
        .map(|i| match i % 1000 {
            0 => b'\r',
            1 => b'\n',
            2 | 3 => b'-',
            _ => (i * 31 % 251) as u8,
        })
        .collect()
}

#[tokio::test]
async fn a_20_mib_upload_streams_through_with_its_model_rewritten() {
    use sha2::Digest;
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let file = wav(20 * 1024 * 1024);
    // model before the file, as the OpenAI Python SDK sends it: the file is not held
    let form = reqwest::multipart::Form::new()
        .text("model", "mock/whisper-1")
        .text("language", "en")
        .part(
            "file",
            reqwest::multipart::Part::bytes(file.clone())
                .file_name("speech.wav")
                .mime_str("audio/wav")
                .unwrap(),
        );
    let resp = upload(&gw, "/v1/audio/transcriptions", form).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "mock/whisper-1", "the client's name comes back");
    let up = mock.last();
    assert!(
        contains(&up.body, b"name=\"model\"\r\n\r\nwhisper-1\r\n"),
        "the upstream saw its own model name"
    );
    assert!(
        up.body.ends_with(b"--\r\n"),
        "the announced length (the client's minus the 5 bytes of \"mock/\") ends at the closing delimiter"
    );
    assert_eq!(up.path, "/v1/audio/transcriptions");
    assert_eq!(
        up.header("authorization"),
        Some(format!("Bearer {POOL_KEY}").as_str())
    );
    let body = &up.body;
    let at = body
        .windows(file.len().min(64))
        .position(|w| w == &file[..64])
        .expect("the file reached the upstream");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&body[at..at + file.len()])),
        hex::encode(sha2::Sha256::digest(&file)),
        "file bytes unchanged"
    );
    let line = gw.wait_log("\"model\":\"mock/whisper-1\"").await;
    assert!(line.contains("\"status\":200"), "{line}");
}

#[tokio::test]
async fn the_sdk_transcribes_and_translates_with_the_model_after_the_file() {
    use async_openai::types::audio::{AudioInput, CreateTranscriptionRequestArgs};
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let client = openai_client(&gw, CLIENT_KEY);
    let req = CreateTranscriptionRequestArgs::default()
        .file(AudioInput::from_vec_u8("a.wav".into(), wav(256 * 1024)))
        .model("mock/whisper-1")
        .build()
        .unwrap();
    let out = client.audio().transcription().create(req).await.unwrap();
    assert_eq!(out.text, "hello from the mock");
    assert_eq!(mock.last().path, "/v1/audio/transcriptions");
    assert!(contains(&mock.last().body, b"\r\n\r\nwhisper-1\r\n"));

    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(wav(4096)).file_name("b.wav"),
        )
        .text("model", "mock/whisper-1");
    let resp = upload(&gw, "/v1/audio/translations", form).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.last().path, "/v1/audio/translations");
    assert!(contains(&mock.last().body, b"\r\n\r\nwhisper-1\r\n"));
}

#[tokio::test]
async fn uploads_without_a_boundary_or_over_the_limit_are_refused() {
    let mock = MockOpenAi::start().await;
    let gw = start_limited(&mock).await;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/images/edits"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "multipart/form-data")
        .body("x")
        .send()
        .await
        .unwrap();
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "content-type");
    let form = reqwest::multipart::Form::new()
        .text("model", "mock/gpt-image-1")
        .part(
            "image",
            reqwest::multipart::Part::bytes(wav(200_000)).file_name("i.png"),
        );
    let resp = upload(&gw, "/v1/images/edits", form).await;
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(mock.completions(), 0, "nothing reached the upstream");
}

/// A chunked multipart upload (no `Content-Length`): `model` first, so the gateway routes on
/// the head and streams the rest, which is `tail` after a `file_len`-byte file.
async fn streamed_upload(gw: &TestGateway, file_len: usize, tail: &str) -> reqwest::Response {
    let head = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmock/gpt-image-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"i.png\"\r\nContent-Type: application/octet-stream\r\n\r\n";
    let mut chunks = vec![bytes::Bytes::from(head)];
    for _ in 0..file_len / 8192 {
        chunks.push(bytes::Bytes::from(vec![b'x'; 8192]));
    }
    chunks.push(bytes::Bytes::from(format!("\r\n{tail}--XyZ--\r\n")));
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    reqwest::Client::new()
        .post(gw.url("/v1/images/edits"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_streamed_upload_refused_after_routing_gets_its_413_or_400_not_a_hang_up() {
    let mock = MockOpenAi::start().await;
    let gw = start_limited(&mock).await;
    let ok = streamed_upload(&gw, 16_384, "").await;
    assert_eq!(
        ok.status(),
        200,
        "a streamed upload under the limit goes through"
    );

    let (status, v) = error_json(streamed_upload(&gw, 81_920, "").await).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "request_too_large");
    let line = gw.wait_log("\"status\":413").await;
    assert!(line.contains("\"error\":\"body_too_large\""), "{line}");

    let second = "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmock/other\r\n";
    let (status, v) = error_json(streamed_upload(&gw, 16_384, second).await).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "model");
    let line = gw.wait_log("\"status\":400").await;
    assert!(line.contains("invalid_param"), "{line}");
    assert!(!gw.logs().contains("\"status\":499"), "{}", gw.logs());
}

#[tokio::test]
async fn a_route_refuses_endpoints_it_does_not_serve_with_an_openai_404() {
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let ok = post_json(
        &gw,
        "/v1/chat/completions",
        json!({"model":"chat/echo","messages":[]}),
    )
    .await;
    assert_eq!(ok.status(), 200);
    let resp = post_json(
        &gw,
        "/v1/embeddings",
        json!({"model":"chat/echo","input":"x"}),
    )
    .await;
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "unsupported_endpoint");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(
        v["error"]["message"],
        "the model `chat/echo` is not served on /v1/embeddings"
    );
    assert_eq!(
        mock.completions(),
        1,
        "the refused request never reached the upstream"
    );
}

#[tokio::test]
async fn models_by_id_answer_for_usable_models_only() {
    let mock = MockOpenAi::start().await;
    let limited =
        format!("  - key: \"{LIMITED_KEY}\"\n    tenant: beta\n    models: [\"mock/echo\"]\n");
    let gw = TestGateway::start_with(|p, a| api_config(p, a, &mock.url(), &limited)).await;
    let get = |key: &'static str, id: &'static str| {
        let url = gw.url(&format!("/v1/models/{id}"));
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
        }
    };
    let resp = get(CLIENT_KEY, "mock/llama3").await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["id"], "mock/llama3");
    assert_eq!(v["object"], "model");
    let encoded = get(CLIENT_KEY, "mock%2Fecho").await;
    assert_eq!(encoded.status(), 200, "a percent-encoded slash works too");
    let (status, v) = error_json(get(LIMITED_KEY, "mock/llama3").await).await;
    assert_eq!(status, 404, "outside the key's allow-list");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(get(LIMITED_KEY, "mock/echo").await.status(), 200);
    let (status, _) = error_json(get(CLIENT_KEY, "nothing/here").await).await;
    assert_eq!(status, 404);
    let sdk = openai_client(&gw, CLIENT_KEY);
    let m = sdk.models().retrieve("mock/echo").await.unwrap();
    assert_eq!(m.id, "mock/echo");
}

#[tokio::test]
async fn a_second_model_field_is_refused() {
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let form = reqwest::multipart::Form::new()
        .text("model", "mock/whisper-1")
        .part(
            "file",
            reqwest::multipart::Part::bytes(wav(1000)).file_name("a.wav"),
        )
        .text("model", "mock/expensive");
    let resp = upload(&gw, "/v1/audio/transcriptions", form).await;
    let (status, v) = error_json(resp).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(mock.completions(), 0);
}

#[tokio::test]
async fn an_upload_that_already_streamed_is_not_replayed_on_another_backend() {
    let (a, b) = (MockOpenAi::start().await, MockOpenAi::start().await);
    a.knobs(|k| k.force_status = Some(503));
    let gw = TestGateway::start_with(|p, ad| {
        let head = server_and_client_key(p, ad);
        format!(
            "{head}pools:\n  f:\n    backends: [\"{}\", \"{}\"]\n    retries: 1\nroutes:\n  - {{prefix: 'f/', pool: f, strip_prefix: true}}\n",
            a.url(),
            b.url()
        )
    })
    .await;
    let form = reqwest::multipart::Form::new()
        .text("model", "f/whisper-1")
        .part(
            "file",
            reqwest::multipart::Part::bytes(wav(2 * 1024 * 1024)).file_name("a.wav"),
        );
    let resp = upload(&gw, "/v1/audio/transcriptions", form).await;
    assert_eq!(resp.status(), 503, "the backend's own answer");
    assert_eq!(a.completions(), 1);
    assert_eq!(b.completions(), 0, "no half body sent to the other backend");
}

#[tokio::test]
async fn an_image_edit_upload_is_routed_by_its_model_field() {
    let mock = MockOpenAi::start().await;
    let gw = start(&mock).await;
    let form = reqwest::multipart::Form::new()
        .text("model", "mock/gpt-image-1")
        .text("prompt", "add a hat")
        .part(
            "image",
            reqwest::multipart::Part::bytes(wav(300_000)).file_name("cat.png"),
        );
    let resp = upload(&gw, "/v1/images/edits", form).await;
    assert_eq!(resp.status(), 200);
    let up = mock.last();
    assert_eq!(up.path, "/v1/images/edits");
    assert!(contains(&up.body, b"\r\n\r\ngpt-image-1\r\n"));
    assert!(
        contains(&up.body, b"add a hat"),
        "other fields pass untouched"
    );
}
