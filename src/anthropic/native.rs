//! Messages forwarded as they are (`messages: native` pools and Anthropic upstreams): the
//! client's `model` restored, usage read from `message_start` and `message_delta`. Every other
//! byte passes unchanged.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::MessagesUsage;
use crate::openai::RawObject;

/// What one Messages stream event held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MessagesEvent {
    /// Replacement bytes; `None` keeps the event as it is.
    pub bytes: Option<Vec<u8>>,
    pub usage: Option<MessagesUsage>,
    /// A content delta: generated output.
    pub output: bool,
    /// `message_stop` or `error`: the stream's last event.
    pub terminal: bool,
}

fn usage_of(v: Option<&RawValue>) -> Option<MessagesUsage> {
    serde_json::from_str::<MessagesUsage>(v?.get()).ok()
}

/// An object with its `model` replaced by `model_json` when it differs.
fn with_model(obj: &RawObject<'_>, model_json: &str, len: usize) -> Option<Vec<u8>> {
    if obj.get("model").is_none_or(|m| m.get() == model_json) {
        return None;
    }
    let mut out = Vec::with_capacity(len + model_json.len());
    obj.write(
        &mut out,
        |k, _| (k == "model").then_some(Some(Cow::Borrowed(model_json))),
        &[],
    );
    Some(out)
}

/// One event's `data`, `model_json` being the client's model as a JSON string literal.
pub fn rewrite_event(input: &[u8], model_json: &str) -> MessagesEvent {
    let Ok(obj) = RawObject::parse(input) else {
        return MessagesEvent::default();
    };
    let kind = obj
        .get("type")
        .and_then(|t| serde_json::from_str::<Cow<'_, str>>(t.get()).ok())
        .unwrap_or_default();
    let mut ev = MessagesEvent {
        output: kind == "content_block_delta",
        terminal: matches!(&*kind, "message_stop" | "error"),
        ..MessagesEvent::default()
    };
    match &*kind {
        "message_start" => {
            let Some(msg) = obj.get("message") else {
                return ev;
            };
            let Ok(inner) = RawObject::parse(msg.get().as_bytes()) else {
                return ev;
            };
            ev.usage = usage_of(inner.get("usage"));
            let new = with_model(&inner, model_json, msg.get().len())
                .and_then(|b| String::from_utf8(b).ok());
            ev.bytes = new.map(|new| {
                let mut out = Vec::with_capacity(input.len() + model_json.len());
                obj.write(
                    &mut out,
                    |k, _| (k == "message").then_some(Some(Cow::Borrowed(new.as_str()))),
                    &[],
                );
                out
            });
        }
        "message_delta" => ev.usage = usage_of(obj.get("usage")),
        _ => {}
    }
    ev
}

/// A whole Messages answer (JSON): `model` restored, usage read.
pub fn rewrite_message(input: &[u8], model_json: &str) -> (Option<Vec<u8>>, Option<MessagesUsage>) {
    let Ok(obj) = RawObject::parse(input) else {
        return (None, None);
    };
    (
        with_model(&obj, model_json, input.len()),
        usage_of(obj.get("usage")),
    )
}

/// A Messages request without the thinking blocks the gateway made from an OpenAI backend's
/// reasoning (their signature is [`super::MINTED_SIGNATURE`]), for an Anthropic upstream, which
/// rejects a signature it did not make. `None` when there are none (the body goes as it is).
pub fn strip_minted_thinking(body: &[u8]) -> Option<Vec<u8>> {
    let mark = super::MINTED_SIGNATURE.as_bytes();
    if !body.windows(mark.len()).any(|w| w == mark) {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let minted = |b: &serde_json::Value| {
        b["type"] == "thinking" && b["signature"] == super::MINTED_SIGNATURE
    };
    let turns = v.get_mut("messages")?.as_array_mut()?;
    for turn in turns.iter_mut() {
        if let Some(content) = turn.get_mut("content").and_then(|c| c.as_array_mut()) {
            content.retain(|b| !minted(b));
        }
    }
    // a turn that held nothing else is dropped rather than sent empty
    turns.retain(|t| t["content"].as_array().is_none_or(|c| !c.is_empty()));
    Some(v.to_string().into_bytes())
}
