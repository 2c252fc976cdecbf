//! Messages events from an Anthropic upstream as chat completion chunks, for OpenAI clients:
//! the role chunk first, tool calls numbered among tool blocks from 0 with `id`, `type` and
//! `name` on their first delta, `finish_reason` from `message_delta`, and the usage chunk
//! when the client asked for it (usage is captured for accounting either way).

use serde_json::{json, Value};

use super::{MessagesUsage, Step, StreamTranslator};

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Translates one Messages stream for an OpenAI client.
#[derive(Debug)]
pub struct MessagesStream {
    model: String,
    id: String,
    /// `model` and `id` as JSON string literals, for the per-token chunks.
    model_json: String,
    id_json: String,
    created: u64,
    include_usage: bool,
    /// The tool-call index of each content block that is a tool call.
    tool_of_block: Vec<Option<u64>>,
    tools: u64,
    usage: MessagesUsage,
    done: bool,
}

impl MessagesStream {
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> Self {
        Self {
            model: model.to_string(),
            id: id.to_string(),
            id_json: crate::openai::json_string(id),
            model_json: crate::openai::json_string(model),
            created,
            include_usage,
            tool_of_block: Vec::new(),
            tools: 0,
            usage: MessagesUsage::default(),
            done: false,
        }
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        let c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        data(out, &c);
    }

    fn block_start(&mut self, v: &Value, out: &mut Vec<u8>) -> bool {
        let index = v["index"].as_u64().unwrap_or(0).min(4096) as usize;
        let block = &v["content_block"];
        if self.tool_of_block.len() <= index {
            self.tool_of_block.resize(index + 1, None);
        }
        match block["type"].as_str() {
            Some("tool_use") => {
                let n = self.tools;
                self.tools += 1;
                self.tool_of_block[index] = Some(n);
                let call = json!({"index": n, "id": block["id"], "type": "function",
                    "function": {"name": block["name"], "arguments": ""}});
                self.chunk(out, json!({"tool_calls": [call]}), None);
                true
            }
            Some("text") => self.text(out, &block["text"], "content"),
            Some("thinking") => self.text(out, &block["thinking"], "reasoning_content"),
            _ => false,
        }
    }

    fn text(&self, out: &mut Vec<u8>, text: &Value, field: &str) -> bool {
        match text.as_str().filter(|t| !t.is_empty()) {
            Some(t) => {
                // the per-token chunk, written straight out (keys sorted, as `chunk` has them)
                use std::io::Write;
                let _infallible = write!(
                    out,
                    "data: {{\"choices\":[{{\"delta\":{{\"{field}\":{}}},\"finish_reason\":null,\"index\":0}}],\"created\":{},\"id\":{},\"model\":{},\"object\":\"chat.completion.chunk\"}}\n\n",
                    crate::openai::json_string(t),
                    self.created,
                    self.id_json,
                    self.model_json,
                );
                true
            }
            None => false,
        }
    }

    fn block_delta(&self, v: &Value, out: &mut Vec<u8>) -> bool {
        let d = &v["delta"];
        match d["type"].as_str() {
            Some("text_delta") => self.text(out, &d["text"], "content"),
            Some("thinking_delta") => self.text(out, &d["thinking"], "reasoning_content"),
            Some("input_json_delta") => {
                let index = v["index"].as_u64().unwrap_or(0) as usize;
                let Some(Some(n)) = self.tool_of_block.get(index) else {
                    return false;
                };
                if d["partial_json"].as_str().is_none_or(str::is_empty) {
                    return false;
                }
                let call = json!({"index": n, "function": {"arguments": d["partial_json"]}});
                self.chunk(out, json!({"tool_calls": [call]}), None);
                true
            }
            _ => false,
        }
    }

    fn stop(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let u = self.usage.usage();
            let c = json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [],
                "usage": u.to_json(),
            });
            data(out, &c);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn take_usage(&mut self, u: &Value) -> bool {
        match serde_json::from_value::<MessagesUsage>(u.clone()) {
            Ok(u) if !u.is_empty() => {
                self.usage.merge(&u);
                true
            }
            _ => false,
        }
    }
}

fn data(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl StreamTranslator for MessagesStream {
    fn data(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Step {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return Step::default();
        };
        if self.done {
            return Step::default();
        }
        let mut step = Step::default();
        let mut usage = false;
        match v["type"].as_str().unwrap_or("") {
            "message_start" => {
                if let Some(id) = v["message"]["id"].as_str() {
                    self.id = format!("chatcmpl-{}", id.trim_start_matches("msg_"));
                    self.id_json = crate::openai::json_string(&self.id);
                }
                usage = self.take_usage(&v["message"]["usage"]);
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => step.output = self.block_start(&v, out),
            "content_block_delta" => step.output = self.block_delta(&v, out),
            "message_delta" => {
                usage = self.take_usage(&v["usage"]);
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.chunk(out, json!({}), Some(finish_reason(r)));
                }
            }
            "message_stop" => {
                self.stop(out);
                step.done = true;
            }
            "error" => {
                let e = &v["error"];
                let body = json!({"error": {"message": e["message"], "type": "server_error",
                    "param": null, "code": e["type"]}});
                data(out, &body);
                self.done = true;
                step.done = true;
            }
            _ => {}
        }
        if usage {
            step.usage = Some(self.usage.usage());
        }
        step
    }
}
