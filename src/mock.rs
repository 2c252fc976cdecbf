//! `llmedge mock`: an OpenAI-compatible fake upstream for demos and load tests (no GPU needed).
//!
//! Serves `/v1/chat/completions` and `/v1/completions` (JSON or SSE with a configurable token
//! count and inter-token delay), Anthropic's `/v1/messages` and `/v1/messages/count_tokens`
//! the same way, `/v1/embeddings`, `/v1/models` and `/health`. A chat or Messages request
//! offering tools is answered with a call to its first tool. Per request,
//! `x-mock-tokens` and `x-mock-delay-ms` headers override the defaults; `max_tokens` caps output.
//!
//! With `slots`, it behaves like a GPU server with a batch limit: at most that many generations
//! run at once and the rest queue, and `/metrics` reports the queue the way vLLM does
//! (`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

mod cache;
mod messages;

const WORDS: [&str; 12] = [
    "Hello",
    " from",
    " the",
    " llmedge",
    " mock",
    " upstream",
    ",",
    " one",
    " token",
    " at",
    " a",
    " time.",
];
const MAX_BODY: usize = 67_108_864; // 64 MiB

#[derive(Debug, Clone)]
pub struct MockConfig {
    pub tokens: usize,
    pub delay: Duration,
    pub models: Vec<String>,
    /// Concurrent generations; `0` means unlimited.
    pub slots: usize,
    /// Prefix-cache capacity in 64-character blocks; `0`: no cache (and no prefill time).
    pub cache_blocks: usize,
    /// Prefill time per 1,000 prompt characters not in the cache.
    pub prefill_per_kchar: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            tokens: 16,
            delay: Duration::from_millis(20),
            models: vec!["llama3".into(), "mock-embed".into()],
            slots: 0,
            cache_blocks: 0,
            prefill_per_kchar: Duration::ZERO,
        }
    }
}

pub struct MockApp {
    config: MockConfig,
    slots: Option<Arc<Semaphore>>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    cache: parking_lot::Mutex<cache::PrefixCache>,
    requests: AtomicUsize,
}

impl MockApp {
    pub fn new(config: MockConfig) -> Self {
        let slots = (config.slots > 0).then(|| Arc::new(Semaphore::new(config.slots)));
        Self {
            cache: parking_lot::Mutex::new(cache::PrefixCache::new(config.cache_blocks)),
            config,
            slots,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        }
    }

    /// Waits for a generation slot, counting the wait as vLLM's queue.
    async fn slot(&self) -> Option<Running<'_>> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = match &self.slots {
            Some(s) => Some(s.clone().acquire_owned().await.ok()?),
            None => None,
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::Relaxed);
        Some(Running {
            app: self,
            _permit: permit,
        })
    }

    fn metrics(&self) -> Vec<u8> {
        let running = self.running.load(Ordering::Relaxed);
        let kv = if self.config.slots > 0 {
            running as f64 / self.config.slots as f64
        } else {
            0.0
        };
        let (queried, hits) = {
            let c = self.cache.lock();
            (c.queried, c.hits)
        };
        format!(
            "# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{{model_name=\"mock\"}} {queried}\n# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{{model_name=\"mock\"}} {hits}\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"mock\"}} {}\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"mock\"}} {running}\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"mock\"}} {kv}\n",
            self.waiting.load(Ordering::Relaxed)
        )
        .into_bytes()
    }
}

/// A generation in progress; frees its slot when dropped (also when the client leaves).
struct Running<'a> {
    app: &'a MockApp,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.app.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A reply the mock will write: a whole JSON body (after `generate` of simulated work, in a
/// slot), or a list of SSE events with a delay between them (in a slot).
enum Reply {
    Json {
        status: u16,
        body: Vec<u8>,
        generate: Option<Duration>,
    },
    /// Events, the delay between them, and the prefill before the first.
    Stream(Vec<String>, Duration, Duration),
}

fn json_reply(status: u16, body: Vec<u8>) -> Reply {
    Reply::Json {
        status,
        body,
        generate: None,
    }
}

#[async_trait]
impl HttpServerApp for MockApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await.ok()? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return None;
            }
        }
        let reply = self.reply(&session, &body);
        match reply {
            Reply::Json {
                status,
                body: json,
                generate,
            } => {
                if let Some(work) = generate {
                    let _running = self.slot().await?;
                    tokio::time::sleep(work).await;
                }
                let mut h = ResponseHeader::build(status, Some(2)).ok()?;
                h.insert_header("content-type", "application/json").ok()?;
                h.insert_header("content-length", json.len().to_string())
                    .ok()?;
                session.write_response_header(Box::new(h)).await.ok()?;
                session
                    .write_response_body(Bytes::from(json), true)
                    .await
                    .ok()?;
            }
            Reply::Stream(events, delay, prefill) => {
                let _running = self.slot().await?;
                let mut h = ResponseHeader::build(200, Some(2)).ok()?;
                h.insert_header("content-type", "text/event-stream").ok()?;
                h.insert_header("transfer-encoding", "chunked").ok()?;
                session.write_response_header(Box::new(h)).await.ok()?;
                if !prefill.is_zero() {
                    tokio::time::sleep(prefill).await; // the first token waits for the prefill
                }
                let last = events.len().saturating_sub(1);
                for (i, ev) in events.into_iter().enumerate() {
                    // a failed write means the client left: stop generating, as vLLM does
                    session
                        .write_response_body(Bytes::from(ev), i == last)
                        .await
                        .ok()?;
                    if i < last && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

impl MockApp {
    fn reply(&self, session: &ServerSession, body: &[u8]) -> Reply {
        let req = session.req_header();
        let header_num = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let tokens = header_num("x-mock-tokens").map_or(self.config.tokens, |n| n as usize);
        let delay = header_num("x-mock-delay-ms").map_or(self.config.delay, Duration::from_millis);
        let path = req.uri.path();
        if req.method == http::Method::GET {
            return match path {
                "/v1/models" => json_reply(200, models(&self.config.models)),
                "/health" | "/" => json_reply(200, br#"{"status":"ok"}"#.to_vec()),
                "/metrics" => json_reply(200, self.metrics()),
                "/stats" => json_reply(200, self.stats()),
                _ => not_found(),
            };
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            let e = json!({"error": {"message": "invalid JSON", "type": "invalid_request_error", "param": null, "code": null}});
            return json_reply(400, e.to_string().into_bytes());
        };
        let prompt_tokens = (body.len() as u64 / 4).max(1);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let reply = self.route(path, &v, tokens, delay, prompt_tokens);
        self.with_prefill(reply, &v)
    }

    fn route(
        &self,
        path: &str,
        v: &Value,
        tokens: usize,
        delay: Duration,
        prompt_tokens: u64,
    ) -> Reply {
        match path {
            "/v1/chat/completions" => completion(v, tokens, delay, prompt_tokens, true),
            "/v1/completions" => completion(v, tokens, delay, prompt_tokens, false),
            "/v1/embeddings" => json_reply(200, embeddings(v, prompt_tokens)),
            "/v1/messages" => messages::reply(v, tokens, delay, prompt_tokens),
            "/v1/messages/count_tokens" => messages::count_tokens(prompt_tokens),
            _ => not_found(),
        }
    }
}

impl MockApp {
    /// The prompt goes through the prefix cache: what was not cached costs prefill time,
    /// before the first token of a stream or with a JSON answer's generation.
    fn with_prefill(&self, reply: Reply, v: &Value) -> Reply {
        if self.config.cache_blocks == 0 {
            return reply;
        }
        let uncached = self.cache.lock().admit(&cache::prompt_text(v));
        let prefill = self
            .config
            .prefill_per_kchar
            .mul_f64(uncached as f64 / 1000.0);
        match reply {
            Reply::Stream(ev, delay, p) => Reply::Stream(ev, delay, p + prefill),
            Reply::Json {
                status: 200,
                body,
                generate,
            } => Reply::Json {
                status: 200,
                body,
                generate: Some(generate.unwrap_or_default() + prefill),
            },
            other => other,
        }
    }

    /// `GET /stats`: requests served and the prefix cache's counts (in characters).
    fn stats(&self) -> Vec<u8> {
        let c = self.cache.lock();
        json!({"requests": self.requests.load(Ordering::Relaxed),
               "prefix_queried_chars": c.queried, "prefix_hit_chars": c.hits})
        .to_string()
        .into_bytes()
    }
}

/// The i-th generated token: the sentence repeats, with a space between repeats.
fn word(i: usize) -> &'static str {
    match i % WORDS.len() {
        0 if i > 0 => " Hello",
        k => WORDS[k],
    }
}

fn not_found() -> Reply {
    let e = json!({"error": {"message": "not found", "type": "invalid_request_error", "param": null, "code": "unknown_url"}});
    json_reply(404, e.to_string().into_bytes())
}

fn models(ids: &[String]) -> Vec<u8> {
    let data: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

/// What the mock generates for one completion request.
struct Generated {
    model: String,
    id: &'static str,
    chat: bool,
    n: usize,
    finish: &'static str,
    usage: Value,
    /// A call to the first tool offered (name, arguments).
    tool: Option<(String, String)>,
}

fn completion(v: &Value, tokens: usize, delay: Duration, prompt: u64, chat: bool) -> Reply {
    let cap = v["max_completion_tokens"]
        .as_u64()
        .or_else(|| v["max_tokens"].as_u64())
        .map_or(tokens, |m| m as usize);
    let n = tokens.min(cap);
    let g = Generated {
        model: v["model"].as_str().unwrap_or("mock").to_string(),
        id: if chat { "chatcmpl-mock" } else { "cmpl-mock" },
        chat,
        n,
        finish: if n < tokens { "length" } else { "stop" },
        usage: json!({"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n as u64}),
        tool: chat
            .then(|| messages::calls_tool(v).map(messages::tool_call_parts))
            .flatten(),
    };
    let g = Generated {
        finish: if g.tool.is_some() {
            "tool_calls"
        } else {
            g.finish
        },
        ..g
    };
    if v["stream"].as_bool() != Some(true) {
        let text: String = (0..n).map(word).collect();
        let (object, choice) = if chat {
            let mut m = json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": g.finish});
            if let Some((name, args)) = &g.tool {
                m["message"]["tool_calls"] = json!([{"id": "call_mock_1", "type": "function",
                    "function": {"name": name, "arguments": args}}]);
            }
            ("chat.completion", m)
        } else {
            let t = json!({"index": 0, "text": text, "finish_reason": g.finish});
            ("text_completion", t)
        };
        let body = json!({"id": g.id, "object": object, "created": 0, "model": g.model,
                          "choices": [choice], "usage": g.usage});
        return Reply::Json {
            status: 200,
            body: body.to_string().into_bytes(),
            generate: Some(delay * n as u32),
        };
    }
    let include_usage = v["stream_options"]["include_usage"].as_bool() == Some(true);
    Reply::Stream(stream_events(&g, include_usage), delay, Duration::ZERO)
}

fn stream_events(g: &Generated, include_usage: bool) -> Vec<String> {
    let (id, model, chat) = (g.id, &g.model, g.chat);
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |choice: Value| {
        let mut c =
            json!({"id": id, "object": object, "created": 0, "model": model, "choices": [choice]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let piece = |text: &str, finish: Option<&str>| {
        if chat {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish})
        }
    };
    let mut events = Vec::with_capacity(g.n + 4);
    if chat {
        events.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})));
    }
    events.extend((0..g.n).map(|i| chunk(piece(word(i), None))));
    if let Some((name, args)) = &g.tool {
        let call = |c: Value| {
            chunk(json!({"index": 0, "delta": {"tool_calls": [c]}, "finish_reason": null}))
        };
        events.push(call(
            json!({"index": 0, "id": "call_mock_1", "type": "function",
            "function": {"name": name, "arguments": ""}}),
        ));
        let half = args.len() / 2;
        let cut = (0..=half)
            .rev()
            .find(|&i| args.is_char_boundary(i))
            .unwrap_or(0);
        for part in [&args[..cut], &args[cut..]] {
            events.push(call(json!({"index": 0, "function": {"arguments": part}})));
        }
    }
    events.push(chunk(piece("", Some(g.finish))));
    if include_usage {
        let u = json!({"id": id, "object": object, "created": 0, "model": model, "choices": [], "usage": g.usage});
        events.push(format!("data: {u}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn embeddings(v: &Value, prompt: u64) -> Vec<u8> {
    let inputs = match &v["input"] {
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let dims = v["dimensions"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
    let data: Vec<_> = (0..inputs)
        .map(|i| {
            let emb: Vec<f64> = (0..dims)
                .map(|d| ((i * 31 + d * 7) % 100) as f64 / 100.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let model = v["model"].as_str().unwrap_or("mock-embed");
    json!({"object": "list", "data": data, "model": model,
           "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})
    .to_string()
    .into_bytes()
}
