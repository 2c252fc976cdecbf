//! Chat completion chunks as Messages events, translated one upstream event at a time: an
//! explicit state machine (`message_start`, then blocks opened and closed in index order, then
//! `message_delta` and `message_stop`), so Anthropic's SDKs accept every stream it emits.
//!
//! Tool calls are keyed by the upstream's `index`, not by `id` (some tool parsers repeat the id
//! on every delta); a `tool_use` block opens once the call's name is known, with `input: {}`,
//! and its arguments follow only as `input_json_delta`s.

use serde_json::{json, Value};

use super::from_chat::{reasoning, stop_reason};
use super::to_chat::Asked;
use super::{event, MessagesUsage, Step, StreamTranslator, MINTED_SIGNATURE};
use crate::openai::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// A tool call, by its upstream index.
    Tool(usize),
}

#[derive(Debug, Default)]
struct Call {
    id: Option<String>,
    name: Option<String>,
    /// Arguments received before the block could open.
    pending: String,
    /// The block index once open.
    block: Option<u64>,
}

/// Translates one chat stream for an Anthropic client.
#[derive(Debug)]
pub struct ChatStream {
    model: String,
    id: String,
    asked: Asked,
    started: bool,
    open: Option<(Block, u64)>,
    next: u64,
    calls: Vec<Call>,
    /// The call each backend tool-call index currently stands for.
    slots: Vec<Option<usize>>,
    stop: Option<(&'static str, Value)>,
    usage: Option<Usage>,
    done: bool,
}

impl ChatStream {
    /// `model` is the client's model name, `id` the message id to announce.
    pub fn new(model: &str, id: &str, asked: Asked) -> Self {
        Self {
            model: model.to_string(),
            id: id.to_string(),
            asked,
            started: false,
            open: None,
            next: 0,
            calls: Vec::new(),
            slots: Vec::new(),
            stop: None,
            usage: None,
            done: false,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        event(out, &json!({"type": "message_start", "message": message}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let Some((kind, index)) = self.open.take() else {
            return;
        };
        if kind == Block::Thinking {
            let delta = json!({"type": "signature_delta", "signature": MINTED_SIGNATURE});
            event(
                out,
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            );
        }
        event(out, &json!({"type": "content_block_stop", "index": index}));
    }

    /// Opens a block of `kind` unless it is the one open; returns its index.
    fn open(&mut self, kind: Block, start: Value, out: &mut Vec<u8>) -> u64 {
        if let Some((k, i)) = self.open {
            if k == kind {
                return i;
            }
        }
        self.close(out);
        let index = self.next;
        self.next += 1;
        let ev = json!({"type": "content_block_start", "index": index, "content_block": start});
        event(out, &ev);
        self.open = Some((kind, index));
        index
    }

    /// A `content_block_delta` carrying `field: text` in a delta of type `kind`, written
    /// straight out (the per-token event: no JSON tree built and encoded for it). Keys in the
    /// order every other event has them (sorted).
    fn delta(out: &mut Vec<u8>, index: u64, kind: &str, field: &str, text: &str) {
        use std::io::Write;
        let _infallible = write!(
            out,
            "event: content_block_delta\ndata: {{\"delta\":{{\"{field}\":{},\"type\":\"{kind}\"}},\"index\":{index},\"type\":\"content_block_delta\"}}\n\n",
            crate::openai::json_string(text)
        );
    }

    /// The slot of the call a delta belongs to: by the backend's `index`, except that a new
    /// id at an index already holding another call (Ollama numbers every call 0) is a new call.
    fn slot(&mut self, call: &Value) -> usize {
        let index = call["index"].as_u64().unwrap_or(0).min(1024) as usize;
        let id = call["id"].as_str().filter(|s| !s.is_empty());
        let current = self.slots.get(index).copied().flatten();
        let reuse = current.filter(|&s| match (id, &self.calls[s].id) {
            (Some(new), Some(old)) => new == old,
            _ => true,
        });
        if let Some(s) = reuse {
            return s;
        }
        self.calls.push(Call::default());
        if self.slots.len() <= index {
            self.slots.resize(index + 1, None);
        }
        self.slots[index] = Some(self.calls.len() - 1);
        self.calls.len() - 1
    }

    fn tool_delta(&mut self, call: &Value, out: &mut Vec<u8>) {
        let at = self.slot(call);
        let c = &mut self.calls[at];
        let f = &call["function"];
        let known = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
        c.id = c.id.take().or_else(|| known(&call["id"]));
        c.name = c.name.take().or_else(|| known(&f["name"]));
        c.pending.push_str(f["arguments"].as_str().unwrap_or(""));
        if c.block.is_none() {
            let Some(name) = c.name.clone() else {
                return; // the arguments wait for the name
            };
            let id =
                c.id.clone()
                    .unwrap_or_else(|| format!("toolu_{}_{at}", self.id));
            let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
            let index = self.open(Block::Tool(at), start, out);
            self.calls[at].block = Some(index);
        }
        let c = &mut self.calls[at];
        if let (Some(index), false) = (c.block, c.pending.is_empty()) {
            let partial = std::mem::take(&mut c.pending);
            Self::delta(out, index, "input_json_delta", "partial_json", &partial);
        }
    }

    fn called_tools(&self) -> bool {
        self.calls.iter().any(|c| c.block.is_some())
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close(out);
        // a stream that ended without a finish_reason ended its turn
        let (reason, sequence) = match self.stop.take() {
            Some(s) => s,
            None => stop_reason("stop", &Value::Null, &self.asked, self.called_tools()),
        };
        let usage = MessagesUsage::from_usage(&self.usage.unwrap_or_default());
        let delta = json!({"stop_reason": reason, "stop_sequence": sequence});
        event(
            out,
            &json!({"type": "message_delta", "delta": delta, "usage": usage}),
        );
        event(out, &json!({"type": "message_stop"}));
        self.done = true;
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<u8>) -> bool {
        let delta = &choice["delta"];
        let mut output = false;
        if let Some(r) = reasoning(delta) {
            let start = json!({"type": "thinking", "thinking": "", "signature": ""});
            let i = self.open(Block::Thinking, start, out);
            Self::delta(out, i, "thinking_delta", "thinking", r);
            output = true;
        }
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let i = self.open(Block::Text, json!({"type": "text", "text": ""}), out);
            Self::delta(out, i, "text_delta", "text", t);
            output = true;
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.tool_delta(call, out);
            output = true;
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.close(out);
            let called = self.called_tools();
            self.stop = Some(stop_reason(f, &choice["stop_reason"], &self.asked, called));
        }
        output
    }
}

impl StreamTranslator for ChatStream {
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Step {
        if self.done {
            return Step::default();
        }
        if payload.trim_ascii() == b"[DONE]" {
            self.finish(out);
            return Step {
                done: true,
                ..Step::default()
            };
        }
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return Step::default();
        };
        self.start(out);
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            let msg = e["message"]
                .as_str()
                .unwrap_or("the upstream failed mid-stream");
            event(out, &super::error_json(500, msg));
            self.done = true;
            return Step {
                done: true,
                ..Step::default()
            };
        }
        let mut step = Step::default();
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            if let Ok(u) = serde_json::from_value::<Usage>(u.clone()) {
                self.usage = Some(u);
                step.usage = Some(u);
            }
        }
        if let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) {
            step.output = self.choice(choice, out);
        }
        step
    }
}
