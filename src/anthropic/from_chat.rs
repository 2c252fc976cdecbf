//! A chat completion as a Messages answer (`messages: translate` pools, non-streaming).

use serde_json::{json, Value};

use super::to_chat::Asked;
use super::{MessagesUsage, MINTED_SIGNATURE};
use crate::openai::Usage;

/// Anthropic's `stop_reason` (and `stop_sequence`) for a chat choice's `finish_reason`. A
/// backend that reports which stop string matched (vLLM's `stop_reason`) gives
/// `stop_sequence`; a turn that made tool calls is `tool_use` whatever the backend said (some
/// finish one with `stop`).
pub fn stop_reason(
    finish: &str,
    matched: &Value,
    asked: &Asked,
    called_tools: bool,
) -> (&'static str, Value) {
    match finish {
        "length" => ("max_tokens", Value::Null),
        "tool_calls" | "function_call" => ("tool_use", Value::Null),
        "content_filter" => ("refusal", Value::Null),
        _ if called_tools => ("tool_use", Value::Null),
        _ => match matched.as_str() {
            Some(s) if asked.stop_sequences.iter().any(|q| q == s) => ("stop_sequence", json!(s)),
            _ => ("end_turn", Value::Null),
        },
    }
}

/// The reasoning text of a chat message or delta (vLLM: `reasoning_content`, newer:
/// `reasoning`).
pub fn reasoning(m: &Value) -> Option<&str> {
    m.get("reasoning_content")
        .or_else(|| m.get("reasoning"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A tool call's arguments as the object Anthropic's `input` must be.
pub fn arguments_object(args: &str) -> Value {
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// The Messages answer for a chat completion `chat`, as the client's `model` with message id
/// `id` (used when the upstream gave none).
pub fn from_chat(chat: &Value, model: &str, id: &str, asked: &Asked) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(r) = reasoning(msg) {
        content.push(json!({"type": "thinking", "thinking": r, "signature": MINTED_SIGNATURE}));
    }
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let f = &call["function"];
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": f["name"],
            "input": arguments_object(f["arguments"].as_str().unwrap_or("")),
        }));
    }
    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
    let called = content.iter().any(|b| b["type"] == "tool_use");
    let (reason, sequence) = stop_reason(finish, &choice["stop_reason"], asked, called);
    let usage: Usage = serde_json::from_value(chat["usage"].clone()).unwrap_or_default();
    let id = chat["id"].as_str().map_or_else(
        || id.to_string(),
        |c| format!("msg_{}", c.trim_start_matches("chatcmpl-")),
    );
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": MessagesUsage::from_usage(&usage),
    })
}
