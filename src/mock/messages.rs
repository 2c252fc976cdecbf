//! The mock's Anthropic side: `POST /v1/messages` (JSON, or SSE events with the same token
//! pacing as chat) and `/v1/messages/count_tokens`, so the demo and the tests can stand it in
//! for an Anthropic upstream. A request with `tools` is answered with a call to its first tool.

use std::time::Duration;

use serde_json::{json, Value};

use super::{json_reply, word, Reply};

/// The `input` the mock gives a tool: `"mock"` for every property of its schema.
fn tool_input(tool: &Value) -> Value {
    let props = tool["input_schema"]["properties"]
        .as_object()
        .or_else(|| tool["function"]["parameters"]["properties"].as_object());
    let input: serde_json::Map<String, Value> = props
        .into_iter()
        .flatten()
        .map(|(k, _)| (k.clone(), json!("mock")))
        .collect();
    Value::Object(input)
}

/// The tool the mock calls: the first one offered, unless the last turn already holds a
/// tool's result.
pub(super) fn calls_tool(v: &Value) -> Option<&Value> {
    let tool = v["tools"].as_array()?.first()?;
    let last = v["messages"].as_array()?.last()?;
    let answered = last["role"] == "tool"
        || last["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    (!answered).then_some(tool)
}

/// A tool's name and the arguments the mock calls it with (JSON text).
pub(super) fn tool_call_parts(tool: &Value) -> (String, String) {
    let name = tool["name"]
        .as_str()
        .or_else(|| tool["function"]["name"].as_str())
        .unwrap_or("tool")
        .to_string();
    (name, tool_input(tool).to_string())
}

pub(super) fn count_tokens(prompt: u64) -> Reply {
    json_reply(
        200,
        json!({ "input_tokens": prompt }).to_string().into_bytes(),
    )
}

/// A Messages answer of `n` tokens (capped by `max_tokens`), then a tool call if asked for.
pub(super) fn reply(v: &Value, tokens: usize, delay: Duration, prompt: u64) -> Reply {
    let cap = v["max_tokens"].as_u64().map_or(tokens, |m| m as usize);
    let n = tokens.min(cap);
    let model = v["model"].as_str().unwrap_or("mock");
    let tool = calls_tool(v).map(tool_call_parts);
    let stop = match (&tool, n < tokens) {
        (Some(_), _) => "tool_use",
        (None, true) => "max_tokens",
        (None, false) => "end_turn",
    };
    let usage = json!({"input_tokens": prompt, "output_tokens": n,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    if v["stream"].as_bool() != Some(true) {
        let text: String = (0..n).map(word).collect();
        let mut content = vec![json!({"type": "text", "text": text})];
        if let Some((name, input)) = &tool {
            let input: Value = serde_json::from_str(input).unwrap_or_else(|_| json!({}));
            content.push(
                json!({"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": input}),
            );
        }
        let body = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return Reply::Json {
            status: 200,
            body: body.to_string().into_bytes(),
            generate: Some(delay * n as u32),
        };
    }
    Reply::Stream(
        stream_events(model, n, tool, stop, &usage),
        delay,
        Duration::ZERO,
    )
}

fn event(v: &Value) -> String {
    format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""))
}

fn stream_events(
    model: &str,
    n: usize,
    tool: Option<(String, String)>,
    stop: &str,
    usage: &Value,
) -> Vec<String> {
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let message = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage});
    let text_block = json!({"type": "text", "text": ""});
    let mut ev = vec![
        event(&json!({"type": "message_start", "message": message})),
        event(&json!({"type": "ping"})),
        event(&json!({"type": "content_block_start", "index": 0, "content_block": text_block})),
    ];
    ev.extend((0..n).map(|i| {
        let delta = json!({"type": "text_delta", "text": word(i)});
        event(&json!({"type": "content_block_delta", "index": 0, "delta": delta}))
    }));
    ev.push(event(&json!({"type": "content_block_stop", "index": 0})));
    if let Some((name, input)) = tool {
        let block = json!({"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {}});
        ev.push(event(
            &json!({"type": "content_block_start", "index": 1, "content_block": block}),
        ));
        let half = input.len() / 2;
        let cut = (0..=half)
            .rev()
            .find(|&i| input.is_char_boundary(i))
            .unwrap_or(0);
        for part in [&input[..cut], &input[cut..]] {
            let delta = json!({"type": "input_json_delta", "partial_json": part});
            ev.push(event(
                &json!({"type": "content_block_delta", "index": 1, "delta": delta}),
            ));
        }
        ev.push(event(&json!({"type": "content_block_stop", "index": 1})));
    }
    let delta = json!({"stop_reason": stop, "stop_sequence": null});
    let out = json!({"output_tokens": usage["output_tokens"]});
    ev.push(event(
        &json!({"type": "message_delta", "delta": delta, "usage": out}),
    ));
    ev.push(event(&json!({"type": "message_stop"})));
    ev
}
