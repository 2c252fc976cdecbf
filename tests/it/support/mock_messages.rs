//! The mock upstream's Anthropic side, and its recorded streams: `/v1/messages` (JSON or SSE,
//! with tool calls), `/v1/messages/count_tokens`, and chat answers replayed from
//! `tests/fixtures/anthropic`, picked by the upstream model name:
//!
//! | path | upstream model | answer |
//! |---|---|---|
//! | `/v1/messages` | `fixture-NAME` | SSE `messages_NAME.sse` (JSON: a message with a tool call when the request has tools) |
//! | `/v1/messages` | `status-529`, `status-400` | that status with an Anthropic error body |
//! | `/v1/messages/count_tokens` | any | `{"input_tokens": 4321}` |
//! | `/v1/chat/completions` | `fixture-NAME` | SSE `chat_NAME.sse`; JSON: a completion with reasoning and a tool call |
//! | `/v1/chat/completions` | `status-400` | 400 with an OpenAI error body |

use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::mock::{finish_sse, write_json, Recorded, SSE_HEAD};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/anthropic");

/// Answers `req` when it is one of this module's; `None` leaves it to the OpenAI mock.
pub async fn answer(sock: &mut TcpStream, req: &Recorded, v: &Value, stream: bool) -> Option<bool> {
    let model = v["model"].as_str().unwrap_or("");
    let path = req.path.split('?').next().unwrap_or("");
    if path.ends_with("/v1/messages/count_tokens") {
        return Some(json_body(sock, 200, &json!({"input_tokens": 4321})).await);
    }
    if path.ends_with("/v1/messages") {
        return Some(messages(sock, v, model, stream).await);
    }
    let fixture = model.strip_prefix("fixture-");
    if path.ends_with("/v1/chat/completions") && (fixture.is_some() || model == "status-400") {
        if model == "status-400" {
            let e = json!({"error": {"message": "max_tokens is too large: 99999", "type": "BadRequestError", "param": null, "code": 400}});
            return Some(json_body(sock, 400, &e).await);
        }
        if stream {
            return Some(replay(sock, &format!("chat_{}.sse", fixture?)).await);
        }
        return Some(json_body(sock, 200, &chat_completion(model)).await);
    }
    None
}

async fn json_body(sock: &mut TcpStream, status: u16, v: &Value) -> bool {
    write_json(sock, status, "", v.to_string().as_bytes()).await
}

async fn replay(sock: &mut TcpStream, name: &str) -> bool {
    let body = std::fs::read(format!("{FIXTURES}/{name}")).unwrap();
    use tokio::io::AsyncWriteExt;
    if sock.write_all(SSE_HEAD).await.is_err() {
        return false;
    }
    // a few bytes per HTTP chunk, so the gateway sees events split everywhere
    finish_sse(sock, &body, 7).await
}

async fn messages(sock: &mut TcpStream, v: &Value, model: &str, stream: bool) -> bool {
    match model {
        "status-529" => {
            let e = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
            return json_body(sock, 529, &e).await;
        }
        "status-400" => {
            let e = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"}});
            return json_body(sock, 400, &e).await;
        }
        _ => {}
    }
    if stream {
        let name = model.strip_prefix("fixture-").unwrap_or("text");
        return replay(sock, &format!("messages_{name}.sse")).await;
    }
    let with_tools = v["tools"].as_array().is_some_and(|t| !t.is_empty());
    let content = if with_tools {
        json!([{"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": "toolu_01A", "name": v["tools"][0]["name"], "input": {"city": "Paris"}}])
    } else {
        json!([{"type": "text", "text": "Hello from Claude"}])
    };
    let msg = json!({"id": "msg_01Xy", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": if with_tools { "tool_use" } else { "end_turn" },
        "stop_sequence": null,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 2048, "output_tokens": 42}});
    json_body(sock, 200, &msg).await
}

fn chat_completion(model: &str) -> Value {
    json!({"id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "reasoning_content": "Paris, so get_weather.", "content": "Let me check.",
            "tool_calls": [{"id": "call_a1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 31, "total_tokens": 151,
            "prompt_tokens_details": {"cached_tokens": 64}}})
}
