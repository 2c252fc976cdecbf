use super::*;

fn rewrite(body: &str, upstream: &str) -> (RequestHead, Option<String>) {
    let (obj, head) = inspect_request(body.as_bytes()).unwrap();
    let out = rewrite_request(&obj, &head, upstream).map(|b| String::from_utf8(b).unwrap());
    (head, out)
}

#[test]
fn model_is_rewritten_and_everything_else_kept_byte_for_byte() {
    let body = r#"{"model":"ollama/llama3","messages":[{"role":"user","content":"hi é"}],"temperature":1e0,"guided_json":{"type":"object"},"tools":[ ],"seed":7}"#;
    let (head, out) = rewrite(body, "llama3");
    assert_eq!(head.model.as_deref(), Some("ollama/llama3"));
    assert!(!head.stream);
    assert_eq!(
        out.unwrap(),
        r#"{"model":"llama3","messages":[{"role":"user","content":"hi é"}],"temperature":1e0,"guided_json":{"type":"object"},"tools":[ ],"seed":7}"#
    );
}

#[test]
fn unchanged_request_is_forwarded_as_is() {
    let (_, out) = rewrite(r#"{ "model" : "gpt-4o", "messages": [] }"#, "gpt-4o");
    assert_eq!(out, None, "no rewrite means the original bytes go upstream");
}

#[test]
fn stream_gets_include_usage_injected() {
    let (head, out) = rewrite(r#"{"model":"m","stream":true}"#, "m");
    assert!(head.stream && !head.client_include_usage);
    assert_eq!(
        out.unwrap(),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );

    let (_, out) = rewrite(
        r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
        "m",
    );
    let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(
        v["stream_options"]["continuous_usage_stats"], true,
        "other options survive"
    );

    let (head, out) = rewrite(
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        "m",
    );
    assert!(head.client_include_usage);
    assert_eq!(out, None);

    let (_, out) = rewrite(r#"{"model":"m","stream":true,"stream_options":null}"#, "m");
    assert_eq!(
        out.unwrap(),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
    );
}

#[test]
fn missing_model_is_appended_for_the_default() {
    let (head, out) = rewrite(r#"{"input":"x"}"#, "llama3");
    assert_eq!(head.model, None);
    assert_eq!(out.unwrap(), r#"{"input":"x","model":"llama3"}"#);
}

#[test]
fn bad_bodies_are_400s_that_name_the_problem() {
    let err = |b: &str| inspect_request(b.as_bytes()).err().unwrap();
    assert!(matches!(err("{"), GatewayError::InvalidJson(_)));
    assert!(matches!(err("[1]"), GatewayError::InvalidJson(_)));
    assert!(matches!(err(r#"{"a":1} x"#), GatewayError::InvalidJson(_)));
    assert_eq!(
        err(r#"{"model":3}"#),
        GatewayError::InvalidParam {
            param: "model",
            msg: "expected a string".into()
        }
    );
    assert_eq!(
        err(r#"{"model":"m","stream":"yes"}"#).param(),
        Some("stream")
    );
    assert_eq!(
        err(r#"{"model":"m","stream":true,"stream_options":3}"#).param(),
        Some("stream_options")
    );
    for e in [err("{"), err(r#"{"model":3}"#)] {
        assert_eq!(e.status(), 400);
    }
}

#[test]
fn escaped_keys_and_values_survive() {
    let (_, out) = rewrite(r#"{"mo\u0064el":"a/b","x":"\"q\"\n"}"#, "b");
    assert_eq!(out.unwrap(), r#"{"model":"b","x":"\"q\"\n"}"#);
}

#[test]
fn response_model_is_restored_and_usage_captured() {
    let body = br#"{"id":"c1","model":"llama3:latest","choices":[{"index":0}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":2}}}"#;
    let r = rewrite_response_object(body, "ollama/llama3", false);
    assert!(r.has_choices && !r.drop);
    let u = r.usage.unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (5, 7, 12)
    );
    assert_eq!(u.prompt_tokens_details.unwrap().cached_tokens, Some(2));
    let v: serde_json::Value = serde_json::from_slice(&r.bytes.unwrap()).unwrap();
    assert_eq!(v["model"], "ollama/llama3");
    assert_eq!(v["id"], "c1");
}

#[test]
fn injected_usage_chunk_is_dropped_and_null_usage_removed() {
    let usage_only = br#"{"id":"c","model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
    let r = rewrite_response_object(usage_only, "m", true);
    assert!(r.drop);
    assert_eq!(r.usage.unwrap().total_tokens, 3);

    let kept = rewrite_response_object(usage_only, "m", false);
    assert!(!kept.drop, "a client that asked for usage keeps the chunk");
    assert_eq!(
        kept.bytes, None,
        "and sees it unchanged when the model already matches"
    );

    let delta = br#"{"id":"c","model":"m","choices":[{"delta":{"content":"hi"}}],"usage":null}"#;
    let r = rewrite_response_object(delta, "m", true);
    assert_eq!(
        String::from_utf8(r.bytes.unwrap()).unwrap(),
        r#"{"id":"c","model":"m","choices":[{"delta":{"content":"hi"}}]}"#
    );
}

#[test]
fn non_objects_pass_through_untouched() {
    assert_eq!(
        rewrite_response_object(b"[DONE]", "m", true),
        ChunkRewrite::default()
    );
    assert_eq!(
        rewrite_response_object(b"not json", "m", true),
        ChunkRewrite::default()
    );
}

#[test]
fn null_model_is_replaced_not_duplicated() {
    let (_, out) = rewrite(r#"{"model":null,"input":"x"}"#, "llama3");
    assert_eq!(out.unwrap(), r#"{"model":"llama3","input":"x"}"#);
}

#[test]
fn keys_that_need_escaping_are_escaped() {
    let (_, out) = rewrite(r#"{"a\"b\\c\u0001":1,"model":"x"}"#, "y");
    let out = out.unwrap();
    assert_eq!(out, r#"{"a\"b\\c\u0001":1,"model":"y"}"#);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["a\"b\\c\u{1}"], 1);
}
