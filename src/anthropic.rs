//! Anthropic's Messages API: its error shape, its usage fields, its stream events, and the
//! translations between Messages and OpenAI chat completions in both directions.
//!
//! Inbound (`/v1/messages` to a pool of OpenAI-only backends): [`to_chat`] turns the request
//! into a chat request, [`from_chat`] the JSON answer back, [`chat_stream`] the chunks into
//! Messages events. Outbound (an OpenAI client routed to `protocol: anthropic`): [`to_messages`]
//! turns the chat request into a Messages request, [`from_messages`] the JSON answer back,
//! [`messages_stream`] the events into chunks. [`native`] rewrites Messages forwarded as they
//! are. Pure: JSON in, bytes out; no Pingora types.

pub mod chat_stream;
pub mod from_chat;
pub mod from_messages;
pub mod messages_stream;
pub mod native;
pub mod to_chat;
pub mod to_messages;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::errors::GatewayError;
use crate::openai::Usage;

/// The signature given to thinking blocks the gateway makes from an OpenAI backend's
/// reasoning (Claude Code expects one); never a real Anthropic signature.
pub const MINTED_SIGNATURE: &str = "llmedge-unsigned";

/// What one upstream event did to a translated stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// It carried generated output (the first one is the first token).
    pub output: bool,
    /// It ended the stream (the client has its last event).
    pub done: bool,
    /// The usage reported so far, when this event reported some.
    pub usage: Option<Usage>,
}

/// Turns one upstream event stream into the client's, one event's `data` at a time.
pub trait StreamTranslator: Send + Sync + std::fmt::Debug {
    /// Appends to `out` the client events that the upstream event `payload` makes.
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Step;
}

/// Usage fields of one Messages event; a later event's fields replace earlier ones (they are
/// cumulative), absent ones are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct MessagesUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

impl MessagesUsage {
    pub fn merge(&mut self, later: &Self) {
        let pairs = [
            (&mut self.input_tokens, later.input_tokens),
            (&mut self.output_tokens, later.output_tokens),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
        ];
        for (mine, theirs) in pairs {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The gateway's usage: the prompt is input plus cache reads and writes.
    pub fn usage(&self) -> Usage {
        Usage::from_anthropic(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
        )
    }

    /// Anthropic's spelling of an OpenAI usage: cached prompt tokens are cache reads, the
    /// rest of the prompt is input.
    pub fn from_usage(u: &Usage) -> Value {
        let cached = u.cached().min(u.prompt_tokens);
        json!({
            "input_tokens": u.prompt_tokens - cached,
            "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        })
    }
}

pub use crate::errors::{anthropic_error_json as error_json, anthropic_error_type as error_type};

/// One complete SSE event, `event:` line included (Anthropic's SDKs drop data-only frames).
pub fn event(out: &mut Vec<u8>, v: &Value) {
    let name = v.get("type").and_then(Value::as_str).unwrap_or("error");
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The message of an error body in either shape (`error.message`, or `message`), or what
/// the status says when the body has none (not JSON: an HTML page from a proxy, say).
fn error_message(v: Option<&Value>, status: u16) -> String {
    let msg = v.and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("error").filter(|e| e.is_string()))
    });
    match msg {
        Some(Value::String(m)) => m.clone(),
        Some(other) => other.to_string(),
        None => format!("upstream answered {status}"),
    }
}

/// An upstream's error answer in Anthropic's shape (kept when it already is).
pub fn error_to_anthropic(body: &[u8], status: u16) -> Vec<u8> {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if v.as_ref()
        .is_some_and(|v| v["type"] == "error" && v["error"]["type"].is_string())
    {
        return body.to_vec();
    }
    let msg = error_message(v.as_ref(), status);
    error_json(status, &msg).to_string().into_bytes()
}

/// An Anthropic upstream's error answer in OpenAI's shape (kept when it already is).
pub fn error_to_openai(body: &[u8], status: u16) -> Vec<u8> {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if v.as_ref()
        .is_some_and(|v| v["error"]["message"].is_string() && v["type"] != "error")
    {
        return body.to_vec();
    }
    let kind = match status {
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let upstream_type = v.as_ref().and_then(|v| v["error"]["type"].as_str());
    let msg = error_message(v.as_ref(), status);
    json!({"error": {"message": msg, "type": kind, "param": null, "code": upstream_type}})
        .to_string()
        .into_bytes()
}

/// A bad request, with the offending place in the message (`param` is the top-level field).
pub fn invalid(param: &'static str, msg: impl Into<String>) -> GatewayError {
    GatewayError::InvalidParam {
        param,
        msg: msg.into(),
    }
}

/// The text of a string or of an array of text blocks (other blocks are the caller's).
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(blocks) => Some(
            blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

/// Copies the fields named in `pairs` from `from` to `to` under their new names.
pub fn copy_fields(from: &Map<String, Value>, to: &mut Map<String, Value>, pairs: &[(&str, &str)]) {
    for (src, dst) in pairs {
        if let Some(v) = from.get(*src).filter(|v| !v.is_null()) {
            to.insert((*dst).to_string(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests;
