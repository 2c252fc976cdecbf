//! Golden streams in both directions (fixtures in `tests/fixtures/anthropic`), each checked
//! against the rules Anthropic's and OpenAI's SDKs parse by and fed split at every byte
//! boundary; request and answer translations; error shapes.

use serde_json::{json, Value};

use super::chat_stream::ChatStream;
use super::messages_stream::MessagesStream;
use super::to_chat::{to_chat, Asked};
use super::to_messages::to_messages;
use super::*;
use crate::endpoint::StreamKind;
use crate::sse::StreamRewriter;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/anthropic");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// Compares with the golden file, or writes it when `LLMEDGE_BLESS` is set.
fn golden(name: &str, got: &[u8]) {
    let path = format!("{FIXTURES}/{name}");
    if std::env::var_os("LLMEDGE_BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(&want),
        "{name} differs (LLMEDGE_BLESS=1 rewrites it after review)"
    );
}

fn asked() -> Asked {
    Asked {
        stop_sequences: vec!["###".into()],
    }
}

fn to_anthropic() -> StreamRewriter {
    StreamRewriter::translating(Box::new(ChatStream::new("coder", "msg_test", asked())))
}

fn to_openai(include_usage: bool) -> StreamRewriter {
    let t = MessagesStream::new("claude", "chatcmpl-test", 7, include_usage);
    StreamRewriter::translating(Box::new(t))
}

/// Feeds `input` in pieces cut at `cuts`, then ends the stream.
fn run(mut rw: StreamRewriter, input: &[u8], cuts: &[usize]) -> (Vec<u8>, StreamRewriter) {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        rw.feed(&input[at..c], &mut out);
        at = c;
    }
    rw.finish(&mut out);
    (out, rw)
}

/// `(event name, data)` of each event of an SSE text.
fn events(sse: &[u8]) -> Vec<(Option<String>, Value)> {
    let text = String::from_utf8(sse.to_vec()).unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let v = serde_json::from_str(&data).unwrap_or(Value::String(data));
            (name, v)
        })
        .collect()
}

/// One `content_block_delta` applied to its block, as the SDK's accumulator does.
fn apply_delta(b: &mut Value, d: &Value, partial: &mut String) {
    let append = |b: &mut Value, field: &str, more: &Value| {
        let t = format!("{}{}", b[field].as_str().unwrap(), more.as_str().unwrap());
        b[field] = json!(t);
    };
    match d["type"].as_str().unwrap() {
        "text_delta" => {
            assert_eq!(b["type"], "text");
            append(b, "text", &d["text"]);
        }
        "thinking_delta" => {
            assert_eq!(b["type"], "thinking");
            append(b, "thinking", &d["thinking"]);
        }
        "signature_delta" => {
            assert_eq!(
                b["type"], "thinking",
                "Content block is not a thinking block"
            );
            b["signature"] = d["signature"].clone();
        }
        "input_json_delta" => {
            assert_eq!(b["type"], "tool_use");
            partial.push_str(d["partial_json"].as_str().unwrap());
            b["input"] = serde_json::from_str(partial).unwrap_or(json!({"partial": partial}));
        }
        other => panic!("unknown delta {other}"),
    }
}

/// What Anthropic's Python SDK requires of a stream (`_streaming.py`, `_messages.py`): every
/// event named, `message_start` first, blocks started in index order 0..n before their
/// deltas, a tool's `input` empty at its start and its `partial_json` concatenating to JSON,
/// cumulative usage in `message_delta`, `message_stop` last. Returns the accumulated message.
fn anthropic_sdk_accumulate(sse: &[u8]) -> Value {
    let evs = events(sse);
    let mut content: Vec<Value> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut message = Value::Null;
    for (i, (name, data)) in evs.iter().enumerate() {
        let kind = data["type"].as_str().unwrap();
        assert_eq!(
            name.as_deref(),
            Some(kind),
            "event line names the data type"
        );
        if i == 0 {
            assert_eq!(kind, "message_start", "first event");
        }
        match kind {
            "message_start" => message = data["message"].clone(),
            "content_block_start" => {
                assert_eq!(data["index"].as_u64().unwrap() as usize, content.len());
                let b = data["content_block"].clone();
                if b["type"] == "tool_use" {
                    assert_eq!(b["input"], json!({}));
                    assert!(b["id"].as_str().is_some_and(|s| !s.is_empty()));
                }
                content.push(b);
                partial.push(String::new());
            }
            "content_block_delta" => {
                let at = data["index"].as_u64().unwrap() as usize;
                let b = content.get_mut(at).expect("delta for a started block");
                apply_delta(b, &data["delta"], &mut partial[at]);
            }
            "content_block_stop" => assert!(data["index"].as_u64().unwrap() < content.len() as u64),
            "message_delta" => {
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                for (k, v) in data["usage"].as_object().unwrap() {
                    message["usage"][k] = v.clone();
                }
            }
            "message_stop" => assert_eq!(i, evs.len() - 1, "message_stop is last"),
            "error" => {
                assert_eq!(i, evs.len() - 1, "an error ends the stream");
                message["error"] = data["error"].clone();
            }
            "ping" => {}
            other => panic!("unknown event {other}"),
        }
    }
    for (b, p) in content.iter().zip(&partial) {
        if b["type"] == "tool_use" && !p.is_empty() {
            serde_json::from_str::<Value>(p).expect("tool arguments are JSON once complete");
        }
    }
    message["content"] = Value::Array(content);
    message
}

/// What OpenAI's SDKs expect of a chat stream: the role chunk first, tool calls indexed from 0
/// among tool calls with `id`, `type` and `name` on their first delta, `[DONE]` last.
/// Returns (text, reasoning, tool calls, finish_reason, usage).
fn openai_sdk_accumulate(sse: &[u8]) -> Value {
    let evs = events(sse);
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    let mut error = Value::Null;
    for (i, (name, data)) in evs.iter().enumerate() {
        assert!(name.is_none(), "chat chunks have no event line");
        if data == "[DONE]" {
            assert_eq!(i, evs.len() - 1);
            continue;
        }
        if !data["error"].is_null() {
            error = data["error"].clone();
            continue;
        }
        assert_eq!(data["object"], "chat.completion.chunk");
        assert_eq!(data["model"], "claude", "the client's model");
        if i == 0 {
            assert_eq!(data["choices"][0]["delta"]["role"], "assistant");
        }
        if !data["usage"].is_null() {
            usage = data["usage"].clone();
        }
        let Some(c) = data["choices"].get(0) else {
            continue;
        };
        let d = &c["delta"];
        text.push_str(d["content"].as_str().unwrap_or(""));
        reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let at = tc["index"].as_u64().unwrap() as usize;
            if at == calls.len() {
                assert!(
                    tc["id"].is_string()
                        && tc["type"] == "function"
                        && tc["function"]["name"].is_string()
                );
                calls
                    .push(json!({"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}));
            }
            let call = calls.get_mut(at).expect("tool indices count from 0");
            let args = format!(
                "{}{}",
                call["arguments"].as_str().unwrap(),
                tc["function"]["arguments"].as_str().unwrap_or("")
            );
            call["arguments"] = json!(args);
        }
        if !c["finish_reason"].is_null() {
            finish = c["finish_reason"].clone();
        }
    }
    json!({"text": text, "reasoning": reasoning, "calls": calls, "finish": finish, "usage": usage, "error": error})
}

fn every_split_gives_the_same_bytes(make: impl Fn() -> StreamRewriter, input: &[u8], whole: &[u8]) {
    for cut in 1..input.len() {
        let (out, _) = run(make(), input, &[cut]);
        assert_eq!(out, whole, "split at byte {cut}");
    }
}

#[test]
fn chat_streams_become_messages_events_golden() {
    for name in ["text", "tools", "thinking", "stop_sequence", "error"] {
        let input = fixture(&format!("chat_{name}.sse"));
        let (out, rw) = run(to_anthropic(), &input, &[]);
        golden(&format!("chat_{name}.messages.sse"), &out);
        every_split_gives_the_same_bytes(to_anthropic, &input, &out);
        let msg = anthropic_sdk_accumulate(&out);
        assert_eq!(msg["model"], "coder");
        assert!(rw.is_done(), "{name}: the stream's end was seen");
        if name != "error" {
            assert_eq!(rw.usage().unwrap().prompt_tokens, 120);
            assert_eq!(
                msg["usage"]["input_tokens"], 56,
                "{name}: prompt minus cache reads"
            );
            assert_eq!(msg["usage"]["cache_read_input_tokens"], 64);
            assert_eq!(msg["usage"]["output_tokens"], 31);
        }
    }
}

#[test]
fn translated_messages_hold_what_the_chat_stream_said() {
    let msg = |n: &str| anthropic_sdk_accumulate(&run(to_anthropic(), &fixture(n), &[]).0);
    let tools = msg("chat_tools.sse");
    let c = tools["content"].as_array().unwrap();
    assert_eq!(c.len(), 3, "text, then one block per tool call: {c:?}");
    assert_eq!(c[0]["text"], "Let me check.");
    assert_eq!(
        (&c[1]["id"], &c[1]["name"]),
        (&json!("call_a1"), &json!("get_weather"))
    );
    assert_eq!(
        c[1]["input"],
        json!({"city": "Paris"}),
        "a repeated id opens no new block"
    );
    assert_eq!(
        (&c[2]["id"], &c[2]["name"]),
        (&json!("call_b2"), &json!("get_time"))
    );
    assert_eq!(
        c[2]["input"],
        json!({"tz": "CET"}),
        "arguments before the name are kept"
    );
    assert_eq!(tools["stop_reason"], "tool_use");
    let thinking = msg("chat_thinking.sse");
    let c = thinking["content"].as_array().unwrap();
    assert_eq!(c[0]["thinking"], "The user greets; answer briefly.");
    assert_eq!(c[0]["signature"], MINTED_SIGNATURE);
    assert_eq!(c[1]["text"], "Hi!");
    assert_eq!(thinking["stop_reason"], "end_turn");
    let stop = msg("chat_stop_sequence.sse");
    assert_eq!(
        (&stop["stop_reason"], &stop["stop_sequence"]),
        (&json!("stop_sequence"), &json!("###"))
    );
    let err = msg("chat_error.sse");
    assert_eq!(err["error"]["type"], "api_error");
    assert_eq!(err["error"]["message"], "CUDA out of memory");
    assert_eq!(err["content"][0]["text"], "Par");
}

#[test]
fn messages_streams_become_chat_chunks_golden() {
    for name in ["text", "tools", "thinking", "stop_sequence", "error"] {
        let input = fixture(&format!("messages_{name}.sse"));
        let (out, rw) = run(to_openai(true), &input, &[]);
        golden(&format!("messages_{name}.chat.sse"), &out);
        every_split_gives_the_same_bytes(|| to_openai(true), &input, &out);
        let acc = openai_sdk_accumulate(&out);
        assert!(rw.is_done());
        let u = rw.usage().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.cached()),
            (25 + 10 + 2048, 2048),
            "{name}"
        );
        if name != "error" {
            assert_eq!(acc["usage"]["prompt_tokens"], 2083);
            assert_eq!(acc["usage"]["prompt_tokens_details"]["cached_tokens"], 2048);
        }
    }
    let acc = |n: &str| openai_sdk_accumulate(&run(to_openai(true), &fixture(n), &[]).0);
    let tools = acc("messages_tools.sse");
    assert_eq!(tools["text"], "Let me check.");
    assert_eq!(
        tools["calls"][0],
        json!({"id": "toolu_01A", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"})
    );
    assert_eq!(tools["calls"][1]["arguments"], "{\"tz\": \"CET\"}");
    assert_eq!(tools["finish"], "tool_calls");
    assert_eq!(
        acc("messages_thinking.sse")["reasoning"],
        "The user greets; answer briefly."
    );
    assert_eq!(acc("messages_stop_sequence.sse")["finish"], "stop");
    let err = acc("messages_error.sse");
    assert_eq!(err["error"]["code"], "overloaded_error");
    assert_eq!(err["text"], "Par");
}

#[test]
fn usage_chunk_only_when_the_openai_client_asked() {
    let input = fixture("messages_text.sse");
    let (out, rw) = run(to_openai(false), &input, &[]);
    assert!(openai_sdk_accumulate(&out)["usage"].is_null());
    assert_eq!(
        rw.usage().unwrap().completion_tokens,
        42,
        "still captured for accounting"
    );
}

#[test]
fn native_messages_keep_their_bytes_but_the_model() {
    for name in ["text", "tools", "thinking", "stop_sequence", "error"] {
        let input = fixture(&format!("messages_{name}.sse"));
        let make = || StreamRewriter::for_kind(StreamKind::MessagesEvents, "my-claude", false);
        let (out, rw) = run(make(), &input, &[]);
        let want = String::from_utf8(input.clone())
            .unwrap()
            .replace("\"model\":\"claude-sonnet-4-5\"", "\"model\":\"my-claude\"");
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        every_split_gives_the_same_bytes(make, &input, &out);
        assert!(rw.is_done());
        let u = rw.usage().unwrap();
        assert_eq!(u.prompt_tokens, 2083, "input + cache writes + cache reads");
        assert_eq!(u.cached(), 2048);
        let out_tokens = if name == "error" {
            1
        } else if name == "stop_sequence" {
            7
        } else {
            42
        };
        assert_eq!(
            u.completion_tokens, out_tokens,
            "{name}: message_delta's cumulative count"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_split_translates_the_same(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
        for name in ["chat_tools.sse", "chat_thinking.sse"] {
            let input = fixture(name);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % input.len()).collect();
            cuts.sort_unstable();
            let whole = run(to_anthropic(), &input, &[]).0;
            proptest::prop_assert_eq!(run(to_anthropic(), &input, &cuts).0, whole);
        }
        let input = fixture("messages_tools.sse");
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % input.len()).collect();
        cuts.sort_unstable();
        let whole = run(to_openai(true), &input, &[]).0;
        proptest::prop_assert_eq!(run(to_openai(true), &input, &cuts).0, whole);
    }
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn a_messages_request_as_chat() {
    let req = obj(json!({
        "model": "coder", "max_tokens": 512, "stream": true, "temperature": 0.2, "top_p": 0.9,
        "top_k": 40, "stop_sequences": ["###"], "metadata": {"user_id": "u-1"},
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; hash=abc"},
                   {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "UE5H"}}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
                {"type": "text", "text": "Thanks"}]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
    }));
    let (chat, asked) = to_chat(&req, "qwen3-32b").unwrap();
    assert_eq!(asked.stop_sequences, vec!["###"]);
    let want = json!({
        "model": "qwen3-32b",
        "messages": [
            {"role": "system", "content": "You are terse.\nUse tools."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,UE5H"}},
                {"type": "text", "text": "Thanks"}]},
        ],
        "max_tokens": 512, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": ["###"],
        "stream": true, "stream_options": {"include_usage": true}, "user": "u-1",
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": false,
    });
    assert_eq!(chat, want);
    for (choice, mapped) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
        ),
    ] {
        let r = obj(json!({"messages": [], "tool_choice": choice}));
        assert_eq!(to_chat(&r, "m").unwrap().0["tool_choice"], mapped);
    }
}

#[test]
fn messages_requests_chat_cannot_carry_are_refused_naming_the_place() {
    let bad = [
        (
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64"}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0]",
        ),
        (json!({"messages": "hi"}), "expected an array"),
        (
            json!({"messages": [], "tool_choice": {"type": "sometimes"}}),
            "tool_choice",
        ),
    ];
    for (req, says) in bad {
        let e = to_chat(&obj(req), "m").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains(says), "{e} names {says}");
    }
}

#[test]
fn a_chat_request_as_messages() {
    let req = obj(json!({
        "model": "claude", "stream": true, "stop": "END", "user": "u-9", "temperature": 0.5,
        "stream_options": {"include_usage": true}, "parallel_tool_calls": false,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,UE5H"}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {"role": "user", "content": "and?"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object"}}},
                  {"type": "function", "function": {"name": "g"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
    }));
    let m = to_messages(&req, "claude-sonnet-4-5", 4096).unwrap();
    let want = json!({
        "model": "claude-sonnet-4-5", "system": "Be brief.\nNo emoji.", "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "UE5H"}}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
                {"type": "text", "text": "and?"}]},
        ],
        "temperature": 0.5, "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u-9"},
        "tools": [{"name": "f", "description": "F", "input_schema": {"type": "object"}},
                  {"name": "g", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
    });
    assert_eq!(m, want);
    let n2 = obj(json!({"messages": [], "n": 2}));
    assert_eq!(to_messages(&n2, "c", 1).unwrap_err().status(), 400);
    let required = obj(json!({"messages": [], "tool_choice": "required", "max_tokens": 9}));
    let m = to_messages(&required, "c", 1).unwrap();
    assert_eq!(
        (&m["tool_choice"], &m["max_tokens"]),
        (&json!({"type": "any"}), &json!(9))
    );
}

#[test]
fn whole_answers_translate_both_ways() {
    let chat = json!({"id": "chatcmpl-42", "object": "chat.completion", "model": "qwen3",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "reasoning_content": "think", "content": "Sure.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109, "prompt_tokens_details": {"cached_tokens": 40}}});
    let msg = from_chat::from_chat(&chat, "coder", "msg_x", &asked());
    assert_eq!(
        msg,
        json!({"id": "msg_42", "type": "message", "role": "assistant", "model": "coder",
        "content": [{"type": "thinking", "thinking": "think", "signature": MINTED_SIGNATURE},
                    {"type": "text", "text": "Sure."},
                    {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 60, "output_tokens": 9, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 0}})
    );
    let anthropic = json!({"id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"b": 2}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 2}});
    let c = from_messages::from_messages(&anthropic, "claude", 11);
    assert_eq!(
        c,
        json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 11, "model": "claude",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"b\":2}"}}]}}],
        "usage": {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20, "prompt_tokens_details": {"cached_tokens": 10}}})
    );
    let u: crate::openai::Usage = serde_json::from_value(anthropic["usage"].clone()).unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached()),
        (17, 3, 10),
        "Anthropic usage read by the shared parser"
    );
}

#[test]
fn error_shapes_follow_each_sdk() {
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ] {
        assert_eq!(error_type(status), kind);
    }
    let openai = br#"{"error":{"message":"max_tokens is too large","type":"BadRequestError","param":null,"code":400}}"#;
    let a: Value = serde_json::from_slice(&error_to_anthropic(openai, 400)).unwrap();
    assert_eq!(
        a,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens is too large"}})
    );
    let already = br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#;
    assert_eq!(error_to_anthropic(already, 529), already.to_vec());
    let o: Value = serde_json::from_slice(&error_to_openai(already, 529)).unwrap();
    assert_eq!(o["error"]["message"], "busy");
    assert_eq!(o["error"]["code"], "overloaded_error");
    let html: Value =
        serde_json::from_slice(&error_to_anthropic(b"<html>bad gateway</html>", 502)).unwrap();
    assert_eq!(html["error"]["type"], "api_error");
    let e = crate::errors::GatewayError::MissingApiKey.to_anthropic_json();
    assert_eq!(e["error"]["type"], "authentication_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-api-key"));
}

#[test]
fn thinking_the_gateway_signed_is_not_sent_to_anthropic() {
    let body = json!({"model": "c", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": MINTED_SIGNATURE},
            {"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": MINTED_SIGNATURE}]},
        {"role": "user", "content": [{"type": "thinking", "thinking": "real", "signature": "EqQBCgIYAhIM"}, {"type": "text", "text": "go"}]},
    ]});
    let out: Value = serde_json::from_slice(
        &native::strip_minted_thinking(body.to_string().as_bytes()).unwrap(),
    )
    .unwrap();
    let turns = out["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "the turn left empty is dropped");
    assert_eq!(
        turns[1]["content"],
        json!([{"type": "text", "text": "Hello"}])
    );
    assert_eq!(
        turns[2]["content"][0]["signature"], "EqQBCgIYAhIM",
        "Anthropic's own are kept"
    );
    let clean = br#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        native::strip_minted_thinking(clean),
        None,
        "nothing to strip: sent as it is"
    );
}

/// Pieces streams are made of, so random concatenations reach the translators' states.
const PIECES: [&str; 16] = [
    "data: ",
    "event: message_start\n",
    "\n\n",
    "\r\n",
    "data: [DONE]\n\n",
    ": ping\n\n",
    r#"{"choices":[{"index":0,"delta":{"content":"hé"},"finish_reason":null}]}"#,
    r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"c","function":{"name":"f","arguments":"{\"a"}}]}}]}"#,
    r####"{"choices":[{"index":0,"delta":{"reasoning_content":"r"},"finish_reason":"stop","stop_reason":"###"}]}"####,
    r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#,
    r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3}}}"#,
    r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f"}}"#,
    r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"x\":"}}"#,
    r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":5}}"#,
    r#"{"type":"message_stop"}"#,
    r#"{"error":{"message":"boom"}}"#,
];

proptest::proptest! {
    #[test]
    fn arbitrary_streams_never_panic_and_any_split_gives_the_same_bytes(
        picks in proptest::collection::vec(0usize..PIECES.len(), 0..40),
        noise in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
        cut in 0usize..4000,
    ) {
        let mut input: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].bytes()).collect();
        input.extend_from_slice(&noise);
        let cut = cut % (input.len() + 1);
        let makers: [&dyn Fn() -> StreamRewriter; 3] = [
            &to_anthropic,
            &|| to_openai(true),
            &|| StreamRewriter::for_kind(StreamKind::MessagesEvents, "x", false),
        ];
        for make in makers {
            let whole = run(make(), &input, &[]).0;
            proptest::prop_assert_eq!(run(make(), &input, &[cut]).0, whole);
        }
    }

    #[test]
    fn arbitrary_requests_translate_or_are_refused_never_panic(
        picks in proptest::collection::vec(0usize..8, 0..10),
    ) {
        let parts = [
            json!({"role": "user", "content": "x"}),
            json!({"role": "assistant", "content": [{"type": "tool_use", "id": 1, "input": null}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "content": [{"type": "image"}]}]}),
            json!({"role": "tool", "tool_call_id": null, "content": [1, 2]}),
            json!({"role": "assistant", "tool_calls": [{"function": {"arguments": "{"}}]}),
            json!({"role": "system", "content": [{"type": "text"}]}),
            json!({"content": {"a": 1}}),
            json!("not a message"),
        ];
        let messages: Vec<Value> = picks.iter().map(|&i| parts[i].clone()).collect();
        let req = obj(json!({"messages": messages, "tools": [{"name": 1}], "tool_choice": "auto", "system": 5}));
        let _ = to_chat(&req, "m");
        let _ = to_messages(&req, "m", 10);
    }
}

#[test]
fn an_unterminated_last_event_is_still_translated() {
    let mut input = fixture("chat_text.sse");
    input.truncate(input.len() - 1); // "data: [DONE]\n" without its blank line
    let (out, rw) = run(to_anthropic(), &input, &[]);
    assert!(rw.is_done());
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

#[test]
fn calls_that_share_an_index_but_not_an_id_are_two_blocks_and_stop_becomes_tool_use() {
    // Ollama numbers every call 0, and some backends end a tool turn with `stop`
    let call = |id: &str, name: &str, args: &str| json!({"tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": args}}]});
    let mut input = chunk(call("call_1", "write", "{\"path\":\"a.py\"}"), None);
    input.push_str(&chunk(call("call_2", "write", "{\"path\":\"b.py\"}"), None));
    input.push_str(&chunk(json!({}), Some("stop")));
    input.push_str("data: [DONE]\n\n");
    let msg = anthropic_sdk_accumulate(&run(to_anthropic(), input.as_bytes(), &[]).0);
    let c = msg["content"].as_array().unwrap();
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(
        (&c[0]["id"], &c[0]["input"]),
        (&json!("call_1"), &json!({"path": "a.py"}))
    );
    assert_eq!(
        (&c[1]["id"], &c[1]["input"]),
        (&json!("call_2"), &json!({"path": "b.py"}))
    );
    assert_eq!(msg["stop_reason"], "tool_use");
}

#[test]
fn chat_sampling_fits_anthropics_ranges() {
    let both = obj(
        json!({"messages": [], "temperature": 1.7, "top_p": 0.9, "max_completion_tokens": null, "max_tokens": 77}),
    );
    let m = to_messages(&both, "c", 1).unwrap();
    assert_eq!(m["temperature"], 1.0, "OpenAI's 0-2 clamped to 0-1");
    assert!(
        m.get("top_p").is_none(),
        "not both: newer Claude models refuse it"
    );
    assert_eq!(
        m["max_tokens"], 77,
        "a null max_completion_tokens does not hide max_tokens"
    );
    let top_p = obj(json!({"messages": [], "top_p": 0.5}));
    assert_eq!(to_messages(&top_p, "c", 1).unwrap()["top_p"], 0.5);
}
