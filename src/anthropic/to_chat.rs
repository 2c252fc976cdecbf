//! A Messages request as a chat completions request, for pools whose backends speak only
//! OpenAI's API (`messages: translate`).

use serde_json::{json, Map, Value};

use super::{copy_fields, invalid, text_of};
use crate::errors::GatewayError;

/// What the answer's translation needs from the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    pub stop_sequences: Vec<String>,
}

/// Claude Code's attribution block: a per-request hash that would defeat prefix caching.
pub const BILLING_HEADER: &str = "x-anthropic-billing-header";

/// The chat request for a Messages request `req`, naming `model`.
pub fn to_chat(req: &Map<String, Value>, model: &str) -> Result<(Value, Asked), GatewayError> {
    let mut system = system_text(req.get("system"))?;
    let mut messages = Vec::new();
    let turns = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "expected an array of messages"))?;
    for (i, m) in turns.iter().enumerate() {
        match m["role"].as_str() {
            // newer Claude Code sends system turns inside `messages`: they join the system
            // prompt, as a chat template placing them mid-conversation breaks tool calling
            Some("system") => push_system(&mut system, text_of(&m["content"]).unwrap_or_default()),
            Some("user") => user_turn(&m["content"], i, &mut messages)?,
            Some("assistant") => messages.push(assistant_turn(&m["content"], i)?),
            _ => {
                let msg = format!("messages[{i}].role: expected \"user\" or \"assistant\"");
                return Err(invalid("messages", msg));
            }
        }
    }
    if let Some(s) = system {
        messages.insert(0, json!({"role": "system", "content": s}));
    }
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    copy_fields(
        req,
        &mut out,
        &[
            ("max_tokens", "max_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("stop_sequences", "stop"),
        ],
    );
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(u) = req.get("metadata").and_then(|m| m.get("user_id")) {
        out.insert("user".into(), u.clone());
    }
    tools(req, &mut out)?;
    let stop_sequences = req
        .get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok((Value::Object(out), Asked { stop_sequences }))
}

fn push_system(system: &mut Option<String>, text: String) {
    if text.is_empty() {
        return;
    }
    match system {
        Some(s) => {
            s.push('\n');
            s.push_str(&text);
        }
        None => *system = Some(text),
    }
}

/// `system` as a string or text blocks, without Claude Code's billing header block.
fn system_text(v: Option<&Value>) -> Result<Option<String>, GatewayError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok((!s.is_empty()).then(|| s.clone())),
        Some(Value::Array(blocks)) => {
            let mut out = None;
            for b in blocks {
                let text = b["text"]
                    .as_str()
                    .ok_or_else(|| invalid("system", "expected text blocks"))?;
                if !text.starts_with(BILLING_HEADER) {
                    push_system(&mut out, text.to_string());
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(
            "system",
            "expected a string or an array of text blocks",
        )),
    }
}

/// A user turn: its `tool_result` blocks become `tool` messages (which must follow the
/// assistant's calls), the rest one user message.
fn user_turn(content: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), GatewayError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content: expected a string or blocks"),
            ))
        }
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b["type"].as_str().unwrap_or("") {
            "tool_result" => {
                let (text, images) = tool_result(b, i, j)?;
                let id = b["tool_use_id"].clone();
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                parts.extend(images);
            }
            _ => {
                if let Some(p) = user_part(b, i, j)? {
                    parts.push(p);
                }
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = if all_text {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        json!(texts.join("\n"))
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

/// A tool result's text, and its images (which chat can only carry in a user message).
fn tool_result(b: &Value, i: usize, j: usize) -> Result<(String, Vec<Value>), GatewayError> {
    let mut images = Vec::new();
    let text = match &b["content"] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(inner) => {
            let mut texts = Vec::new();
            for c in inner {
                match user_part(c, i, j)? {
                    Some(p) if p["type"] == "text" => {
                        texts.push(p["text"].as_str().unwrap_or("").to_string());
                    }
                    Some(p) => images.push(p),
                    None => {}
                }
            }
            texts.join("\n")
        }
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content[{j}].content: expected a string or blocks"),
            ))
        }
    };
    let text = if b["is_error"] == Value::Bool(true) && !text.is_empty() {
        format!("Error: {text}")
    } else {
        text
    };
    Ok((text, images))
}

/// A content block as a chat content part; `None` for blocks chat has no place for.
fn user_part(b: &Value, i: usize, j: usize) -> Result<Option<Value>, GatewayError> {
    let kind = b["type"].as_str().unwrap_or("");
    let at = format!("messages[{i}].content[{j}]");
    match kind {
        "text" => Ok(Some(
            json!({"type": "text", "text": b["text"].as_str().unwrap_or("")}),
        )),
        "image" => {
            let src = &b["source"];
            let url = match src["type"].as_str() {
                Some("base64") => format!(
                    "data:{};base64,{}",
                    src["media_type"].as_str().unwrap_or("image/png"),
                    src["data"].as_str().unwrap_or("")
                ),
                Some("url") => src["url"].as_str().unwrap_or("").to_string(),
                _ => {
                    return Err(invalid(
                        "messages",
                        format!("{at}.source: expected a base64 or url image"),
                    ))
                }
            };
            Ok(Some(
                json!({"type": "image_url", "image_url": {"url": url}}),
            ))
        }
        "document" if b["source"]["type"] == "text" => {
            let text = b["source"]["data"].as_str().unwrap_or("");
            Ok(Some(json!({"type": "text", "text": text})))
        }
        // earlier turns' reasoning is not sent back to a chat template, as vLLM does
        "thinking" | "redacted_thinking" | "tool_reference" => Ok(None),
        other => Err(invalid(
            "messages",
            format!("{at}: content block type `{other}` cannot be sent to this model's backends"),
        )),
    }
}

/// An assistant turn: its text as `content`, its `tool_use` blocks as `tool_calls`.
fn assistant_turn(content: &Value, i: usize) -> Result<Value, GatewayError> {
    let blocks = match content {
        Value::String(s) => return Ok(json!({"role": "assistant", "content": s})),
        Value::Array(b) => b,
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content: expected a string or blocks"),
            ))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b["type"].as_str().unwrap_or("") {
            "text" => text.push_str(b["text"].as_str().unwrap_or("")),
            "tool_use" => calls.push(json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            "thinking" | "redacted_thinking" => {}
            other => {
                let msg = format!("messages[{i}].content[{j}]: content block type `{other}` cannot be sent to this model's backends");
                return Err(invalid("messages", msg));
            }
        }
    }
    let mut m = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    Ok(m)
}

/// `tools` and `tool_choice` in OpenAI's shape.
fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), GatewayError> {
    if let Some(list) = req.get("tools").and_then(Value::as_array) {
        let mut converted = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            if let Some(kind) = t["type"].as_str().filter(|k| *k != "custom") {
                let msg = format!(
                    "tools[{i}]: server tool `{kind}` is not available on this model's backends"
                );
                return Err(invalid("tools", msg));
            }
            let mut f = json!({"name": t["name"], "parameters": t["input_schema"]});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            converted.push(json!({"type": "function", "function": f}));
        }
        out.insert("tools".into(), Value::Array(converted));
    }
    let Some(choice) = req.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let mapped = match choice["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
        _ => {
            return Err(invalid(
                "tool_choice",
                "expected type auto, any, tool or none",
            ))
        }
    };
    out.insert("tool_choice".into(), mapped);
    if choice["disable_parallel_tool_use"] == Value::Bool(true) {
        out.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(())
}
