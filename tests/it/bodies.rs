//! Bodies of any size up to the cap reach the upstream byte-exact after the rewrite.

use crate::support::*;

async fn big_body_round_trip(size: usize) {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let filler: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let tail = format!(r#""messages":[{{"role":"user","content":"{filler}"}}],"stream":false"#);
    let client_body = format!(r#"{{"model":"mock/echo",{tail}}}"#);
    let resp = post(&gw, "/v1/chat/completions", CLIENT_KEY, &client_body).await;
    assert_eq!(resp.status(), 200);
    let up = mock.last();
    let expected = format!(r#"{{"model":"echo",{tail}}}"#);
    assert_eq!(up.body.len(), expected.len(), "length after rewrite");
    assert!(up.body == expected.as_bytes(), "body must be byte-exact");
    assert_eq!(
        up.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
}

#[tokio::test]
async fn chat_body_over_64k_is_forwarded_byte_for_byte() {
    big_body_round_trip(100 * 1024).await;
}

#[tokio::test]
async fn one_mib_chat_body_is_forwarded_byte_for_byte() {
    big_body_round_trip(1 << 20).await;
}

#[tokio::test]
async fn sixteen_mib_chat_body_is_forwarded_byte_for_byte() {
    big_body_round_trip(16 << 20).await;
}

#[tokio::test]
async fn big_streaming_body_is_forwarded_with_usage_injected() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start(&mock).await;
    let filler = "z".repeat(1 << 20);
    let body = format!(
        r#"{{"model":"mock/echo","stream":true,"messages":[{{"role":"user","content":"{filler}"}}]}}"#
    );
    let text = post(&gw, "/v1/chat/completions", CLIENT_KEY, &body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let up = mock.last();
    let expected = format!(
        r#"{{"model":"echo","stream":true,"messages":[{{"role":"user","content":"{filler}"}}],"stream_options":{{"include_usage":true}}}}"#
    );
    assert!(up.body == expected.as_bytes());
}
