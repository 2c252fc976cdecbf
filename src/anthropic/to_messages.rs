//! A chat completions request as a Messages request, for `protocol: anthropic` pools.

use serde_json::{json, Map, Value};

use super::{copy_fields, invalid, text_of};
use crate::errors::GatewayError;

/// The Messages request for chat request `req`, naming `model`; `max_tokens` (which Anthropic
/// requires) is `default_max_tokens` when the client gave none.
pub fn to_messages(
    req: &Map<String, Value>,
    model: &str,
    default_max_tokens: u64,
) -> Result<Value, GatewayError> {
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid(
            "n",
            "an Anthropic model returns one choice; n must be 1",
        ));
    }
    let format = req.get("response_format").and_then(|f| f.get("type"));
    if let Some(kind) = format.and_then(Value::as_str) {
        if kind != "text" {
            let msg = format!("response_format `{kind}` is not available on this model");
            return Err(invalid("response_format", msg));
        }
    }
    let turns = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "expected an array of messages"))?;
    let (system, messages) = turns_of(turns)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n")));
    }
    let max = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| req.get(*f).and_then(Value::as_u64))
        .unwrap_or(default_max_tokens);
    out.insert("max_tokens".into(), json!(max));
    sampling(req, &mut out);
    match req.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if req.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(u) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    tools(req, &mut out);
    Ok(Value::Object(out))
}

/// `temperature` (OpenAI's 0–2 clamped to Anthropic's 0–1) or else `top_p`: newer Claude
/// models refuse both at once.
fn sampling(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    } else {
        copy_fields(req, out, &[("top_p", "top_p")]);
    }
}

/// System prompts lifted out, the other turns as Messages (consecutive turns of one role
/// merged, tool results joining the user turn).
fn turns_of(turns: &[Value]) -> Result<(Vec<String>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for (i, m) in turns.iter().enumerate() {
        let (role, blocks) = match m["role"].as_str() {
            Some("system" | "developer") => {
                system.push(text_of(&m["content"]).unwrap_or_default());
                continue;
            }
            Some("user") => ("user", user_blocks(&m["content"], i)?),
            Some("assistant") => ("assistant", assistant_blocks(m, i)?),
            Some("tool") => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m["tool_call_id"],
                    "content": text_of(&m["content"]).unwrap_or_default(),
                })],
            ),
            _ => {
                let msg = format!("messages[{i}].role: expected system, user, assistant or tool");
                return Err(invalid("messages", msg));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(c) = last["content"].as_array_mut() {
                    c.extend(blocks);
                }
            }
            _ => out.push(json!({"role": role, "content": blocks})),
        }
    }
    Ok((system, out))
}

fn user_blocks(content: &Value, i: usize) -> Result<Vec<Value>, GatewayError> {
    let parts = match content {
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(p) => p,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(invalid(
                "messages",
                format!("messages[{i}].content: expected a string or parts"),
            ))
        }
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match p["type"].as_str() {
            Some("text") => blocks.push(json!({"type": "text", "text": p["text"]})),
            Some("image_url") => blocks.push(image(p["image_url"]["url"].as_str().unwrap_or(""))),
            other => {
                let msg = format!(
                    "messages[{i}].content[{j}]: part type `{}` is not available on this model",
                    other.unwrap_or("")
                );
                return Err(invalid("messages", msg));
            }
        }
    }
    Ok(blocks)
}

/// An image part: a `data:` URL becomes a base64 source, anything else a URL source.
fn image(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((media, data)) = rest.split_once(";base64,") {
            return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
        }
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

fn assistant_blocks(m: &Value, i: usize) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = Vec::new();
    if let Some(t) = text_of(&m["content"]).filter(|t| !t.is_empty()) {
        blocks.push(json!({"type": "text", "text": t}));
    }
    for (j, call) in m["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let f = &call["function"];
        let args = f["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(if args.is_empty() { "{}" } else { args })
            .map_err(|_| {
                invalid(
                    "messages",
                    format!("messages[{i}].tool_calls[{j}].function.arguments: expected JSON"),
                )
            })?;
        blocks
            .push(json!({"type": "tool_use", "id": call["id"], "name": f["name"], "input": input}));
    }
    Ok(blocks)
}

fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    if let Some(list) = req.get("tools").and_then(Value::as_array) {
        let converted: Vec<Value> = list
            .iter()
            .map(|t| {
                let f = &t["function"];
                let schema = match &f["parameters"] {
                    Value::Null => json!({"type": "object", "properties": {}}),
                    p => p.clone(),
                };
                let mut tool = json!({"name": f["name"], "input_schema": schema});
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                tool
            })
            .collect();
        out.insert("tools".into(), Value::Array(converted));
    }
    let parallel_off = req.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let mut choice = match req.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
        Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
        Some(Value::Object(c)) => {
            json!({"type": "tool", "name": c.get("function").map_or(&Value::Null, |f| &f["name"])})
        }
        Some(_) => json!({"type": "auto"}),
        None if parallel_off => json!({"type": "auto"}),
        None => return,
    };
    if parallel_off {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    out.insert("tool_choice".into(), choice);
}
