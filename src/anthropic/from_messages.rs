//! A Messages answer from an Anthropic upstream as a chat completion, for OpenAI clients.

use serde_json::{json, Value};

use super::messages_stream::finish_reason;
use super::MessagesUsage;

/// The chat completion for Messages answer `msg`, as the client's `model`.
pub fn from_messages(msg: &Value, model: &str, created: u64) -> Value {
    let mut text = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
    for block in msg["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("thinking") => thinking.push_str(block["thinking"].as_str().unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !thinking.is_empty() {
        message["reasoning_content"] = json!(thinking);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = finish_reason(msg["stop_reason"].as_str().unwrap_or("end_turn"));
    let usage: MessagesUsage = serde_json::from_value(msg["usage"].clone()).unwrap_or_default();
    let u = usage.usage();
    let id = msg["id"].as_str().unwrap_or("");
    json!({
        "id": format!("chatcmpl-{}", id.trim_start_matches("msg_")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": u.to_json(),
    })
}
