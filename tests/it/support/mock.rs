//! A scriptable OpenAI upstream on raw sockets: the upstream model name picks the behaviour, so
//! a test steers it through the gateway with nothing but the `model` field.
//!
//! | upstream model | behaviour |
//! |---|---|
//! | anything else | JSON completion, or SSE (3 tokens, usage chunk only if asked, `[DONE]`) |
//! | `frag-N` | the same SSE, written `N` bytes per HTTP chunk, each flushed on its own |
//! | `crlf` | SSE with `\r\n` line ends, `: ping` comments and multi-byte UTF-8 |
//! | `status-429` | 429 with `Retry-After: 7`, an extra header and an OpenAI error body |
//! | `cut` | two SSE events, then the connection is dropped mid-body |
//! | `endless` | one SSE event every 20 ms until the gateway hangs up (recorded) |
//! | `slow` | answers after 3 s |
//! | `account-headers` | a JSON answer with the provider account's cookie, organisation and limits |
//! | `stall` | one SSE event, a 3 s pause, then the rest |
//! | `gated` | one SSE event, then the rest once the test calls `open_gate` |
//! | `hold` | never answers; records when the gateway closes the connection (prefill abort) |
//! | `close-reused` | on a kept-alive connection, reads the request and closes without answering |
//!
//! Anthropic's `/v1/messages`, and recorded streams for translation, are in `mock_messages`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    request_notify: Notify,
    aborted: Mutex<usize>,
    abort_notify: Notify,
    knobs: Mutex<Knobs>,
    /// Events `endless` wrote whole before its peer went away.
    endless_events: Mutex<usize>,
    /// `gated` streams finish once this is open.
    gate_open: Mutex<bool>,
    gate: Notify,
    /// Files and batches created through the pass-through paths, by id.
    stored: Mutex<Vec<(String, Vec<u8>)>>,
}

/// Per-backend behaviour a test can change while the mock runs.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Answer every completion request with this status (OpenAI error body, `Retry-After: 7`).
    pub force_status: Option<u16>,
    /// `/health` answers 200 when true, 503 when false.
    pub healthy: bool,
    /// `/metrics` content as (waiting, running, kv usage); `None` answers 500.
    pub load: Option<(f64, f64, f64)>,
    /// Read each completion request, then close the connection without a response (a crash
    /// or reset before the response headers, on fresh connections too).
    pub hang_up: bool,
    /// Wait this long before answering a completion request.
    pub stall: Option<Duration>,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            force_status: None,
            healthy: true,
            load: Some((0.0, 0.0, 0.0)),
            hang_up: false,
            stall: None,
        }
    }
}

pub struct MockOpenAi {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SSE body the mock sends for a 3-token stream (used to build expectations).
pub fn sse_body(model: &str, include_usage: bool, crlf: bool) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    let mut s = String::new();
    if crlf {
        s.push_str(&format!(": ping{nl}{nl}"));
    }
    for tok in ["Hel", "lo ", "wörld😀"] {
        let mut c = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":model,
            "choices":[{"index":0,"delta":{"content":tok},"finish_reason":null}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        s.push_str(&format!("data: {c}{nl}{nl}"));
    }
    if include_usage {
        let u = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":model,"choices":[],
            "usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}});
        s.push_str(&format!("data: {u}{nl}{nl}"));
    }
    s.push_str(&format!("data: [DONE]{nl}{nl}"));
    s
}

impl MockOpenAi {
    pub async fn start() -> Self {
        super::install_crypto();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (stop, task) = accept_loop(listener, shared.clone());
        Self {
            addr,
            shared,
            task,
            stop,
        }
    }

    /// Stops listening and drops every open connection, as a crashed server would.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.stop.send(true);
    }

    /// Listens again on the same address (after `kill`).
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (stop, task) = accept_loop(listener, self.shared.clone());
        self.stop = stop;
        self.task = task;
    }

    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.shared.knobs.lock());
    }

    /// Completion requests received (health checks and scrapes are not counted).
    pub fn completions(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the upstream saw a request")
    }

    /// Waits until the upstream has received `n` requests.
    pub async fn wait_requests(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.shared.request_notify.notified();
            if self.shared.requests.lock().len() >= n {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "upstream did not receive {n} requests"
            );
        }
    }

    /// Waits until the upstream saw a client abort; false if it did not within `limit`.
    pub async fn wait_abort(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.abort_notify.notified();
            if *self.shared.aborted.lock() > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return *self.shared.aborted.lock() > 0;
            }
        }
    }

    /// Lets every `gated` stream, waiting or future, send the rest of its events.
    pub fn open_gate(&self) {
        *self.shared.gate_open.lock() = true;
        self.shared.gate.notify_waiters();
    }

    /// How many events `endless` streams wrote in full (read after `wait_abort`).
    pub fn endless_events(&self) -> usize {
        *self.shared.endless_events.lock()
    }
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let mut stopped = stopped.clone();
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = serve(sock, s) => {}
                    _ = stopped.wait_for(|v| *v) => {}
                }
            });
        }
    });
    (stop, task)
}

async fn serve(mut sock: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    for served in 0.. {
        let Some(req) = read_request(&mut sock, &mut buf).await else {
            return;
        };
        let stateful = super::mock_files::owns(&req.path);
        if req.method == "GET" && !req.path.ends_with("/v1/models") && !stateful {
            if !probe_answer(&mut sock, &req, &shared).await {
                return;
            }
            continue;
        }
        shared.requests.lock().push(req.clone());
        shared.request_notify.notify_waiters();
        let (hang_up, stall) = {
            let k = shared.knobs.lock();
            (k.hang_up, k.stall)
        };
        if hang_up {
            return;
        }
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        if served > 0 && req.body.windows(12).any(|w| w == b"close-reused") {
            return; // as a server whose keep-alive timer fired just as the request arrived
        }
        if !respond(&mut sock, &req, &shared).await {
            return;
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut tmp = vec![0u8; 1 << 20];
    let n = sock.read(&mut tmp).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&tmp[..n]);
    Some(())
}

/// A `Transfer-Encoding: chunked` body starting at `start`: the whole of it, read to the last
/// chunk (streamed uploads without a length arrive so).
async fn read_chunked(sock: &mut TcpStream, buf: &mut Vec<u8>, start: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut at = start;
    loop {
        let line_end = loop {
            if let Some(p) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + p;
            }
            read_more(sock, buf).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[at..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let data = line_end + 2;
        while buf.len() < data + size + 2 {
            read_more(sock, buf).await?;
        }
        body.extend_from_slice(&buf[data..data + size]);
        at = data + size + 2;
        if size == 0 {
            buf.drain(..at);
            return Some(body);
        }
    }
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 65536];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        read_chunked(sock, buf, head_end).await?
    } else {
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            read_more(sock, buf).await?;
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        body
    };
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

pub(super) async fn write_json(
    sock: &mut TcpStream,
    status: u16,
    extra: &str,
    body: &[u8],
) -> bool {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(body).await.is_ok()
}

pub(super) async fn write_chunk(sock: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    sock.write_all(data).await?;
    sock.write_all(b"\r\n").await?;
    sock.flush().await
}

pub(super) const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// Health checks and load scrapes, answered from the knobs (not recorded as requests).
async fn probe_answer(sock: &mut TcpStream, req: &Recorded, shared: &Shared) -> bool {
    let knobs = shared.knobs.lock().clone();
    if req.path.ends_with("/health") {
        let status = if knobs.healthy { 200 } else { 503 };
        return write_json(sock, status, "", b"{}").await;
    }
    if req.path.ends_with("/metrics") {
        let Some((w, r, kv)) = knobs.load else {
            return write_json(sock, 500, "", b"{}").await;
        };
        let text = format!(
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {w}\nvllm:num_requests_running{{model_name=\"m\"}} {r}\nvllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
        );
        return write_json(sock, 200, "", text.as_bytes()).await;
    }
    write_json(sock, 404, "", b"{}").await
}

/// Answers one request; returns whether the connection may be reused.
async fn respond(sock: &mut TcpStream, req: &Recorded, shared: &Shared) -> bool {
    let forced = shared.knobs.lock().force_status;
    if let Some(code) = forced {
        let body =
            json!({"error":{"message":"forced","type":"server_error","param":null,"code":null}});
        return write_json(
            sock,
            code,
            "retry-after: 7\r\n",
            body.to_string().as_bytes(),
        )
        .await;
    }
    if super::mock_files::owns(&req.path) {
        return super::mock_files::answer(sock, req, &shared.stored).await;
    }
    if req.method == "GET" && req.path.ends_with("/v1/models") {
        let body = json!({"object":"list","data":[{"id":"echo","object":"model"},{"id":"llama3","object":"model"}]});
        return write_json(sock, 200, "", body.to_string().as_bytes()).await;
    }
    let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let model = v["model"].as_str().unwrap_or("").to_string();
    let stream = v["stream"].as_bool() == Some(true);
    let include_usage = v["stream_options"]["include_usage"].as_bool() == Some(true);
    if let Some(done) = super::mock_messages::answer(sock, req, &v, stream).await {
        return done;
    }
    match model.as_str() {
        "status-429" => {
            let body = json!({"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}});
            let extra = "retry-after: 7\r\nx-upstream-thing: kept\r\n";
            return write_json(sock, 429, extra, body.to_string().as_bytes()).await;
        }
        "slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        "account-headers" => {
            let extra = "set-cookie: session=provider\r\nopenai-organization: org-provider\r\nx-ratelimit-limit-requests: 9999\r\naccess-control-allow-origin: *\r\n";
            let body =
                json!({"id":"c","object":"chat.completion","created":1,"model":model,"choices":[]});
            return write_json(sock, 200, extra, body.to_string().as_bytes()).await;
        }
        "hold" => {
            let mut probe = [0u8; 1];
            let closed = tokio::time::timeout(Duration::from_secs(30), sock.read(&mut probe)).await;
            if matches!(closed, Ok(Ok(0) | Err(_))) {
                *shared.aborted.lock() += 1;
                shared.abort_notify.notify_waiters();
            }
            return false;
        }
        _ => {}
    }
    if let Some(done) = other_endpoint(sock, req, &model, stream).await {
        return done;
    }
    if !stream || req.path.ends_with("/v1/embeddings") {
        return json_reply(sock, req, &model).await;
    }
    stream_reply(sock, &model, include_usage, shared).await
}

/// A whole JSON answer: an embedding, a completion or a chat completion.
async fn json_reply(sock: &mut TcpStream, req: &Recorded, model: &str) -> bool {
    if req.path.ends_with("/v1/embeddings") {
        let body = json!({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,0.25]}],
            "model":model,"usage":{"prompt_tokens":4,"total_tokens":4}});
        return write_json(sock, 200, "", body.to_string().as_bytes()).await;
    }
    let body = if req.path.ends_with("/v1/completions") {
        json!({"id":"cmpl-1","object":"text_completion","created":1,"model":model,
                "choices":[{"index":0,"text":"Hello","finish_reason":"stop","logprobs":null}],
                "usage":{"prompt_tokens":11,"completion_tokens":1,"total_tokens":12}})
    } else {
        json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":model,
                "choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":11,"completion_tokens":1,"total_tokens":12}})
    };
    write_json(sock, 200, "", body.to_string().as_bytes()).await
}

/// A streamed chat answer, shaped by the model name (`cut`, `endless`, `gated`, `stall`, `crlf`,
/// `frag-N`, anything else: the standard 3-token stream).
async fn stream_reply(
    sock: &mut TcpStream,
    model: &str,
    include_usage: bool,
    shared: &Shared,
) -> bool {
    if sock.write_all(SSE_HEAD).await.is_err() {
        return false;
    }
    match model {
        "cut" => {
            let body = sse_body(model, include_usage, false);
            let two: String = body.split_inclusive("\n\n").take(2).collect();
            let _ = write_chunk(sock, two.as_bytes()).await;
            false // dropped without the terminating chunk
        }
        "endless" => endless(sock, model, shared).await,
        "gated" => {
            let body = sse_body(model, include_usage, false);
            let (first, rest) = body.split_at(body.find("\n\n").unwrap() + 2);
            if write_chunk(sock, first.as_bytes()).await.is_err() {
                return false;
            }
            loop {
                let opened = shared.gate.notified();
                if *shared.gate_open.lock() {
                    break;
                }
                if tokio::time::timeout(Duration::from_secs(30), opened)
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            finish_sse(sock, rest.as_bytes(), usize::MAX).await
        }
        "stall" => {
            let body = sse_body(model, include_usage, false);
            let (first, rest) = body.split_at(body.find("\n\n").unwrap() + 2);
            if write_chunk(sock, first.as_bytes()).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            finish_sse(sock, rest.as_bytes(), usize::MAX).await
        }
        "crlf" => {
            finish_sse(
                sock,
                sse_body(model, include_usage, true).as_bytes(),
                usize::MAX,
            )
            .await
        }
        m => {
            let frag = m
                .strip_prefix("frag-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            finish_sse(sock, sse_body(model, include_usage, false).as_bytes(), frag).await
        }
    }
}

pub(super) async fn finish_sse(sock: &mut TcpStream, body: &[u8], frag: usize) -> bool {
    for piece in body.chunks(frag.min(body.len()).max(1)) {
        if write_chunk(sock, piece).await.is_err() {
            return false;
        }
        if frag != usize::MAX {
            tokio::task::yield_now().await;
        }
    }
    sock.write_all(b"0\r\n\r\n").await.is_ok()
}

async fn endless(sock: &mut TcpStream, model: &str, shared: &Shared) -> bool {
    let ev = json!({"id":"x","object":"chat.completion.chunk","model":model,
        "choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]});
    let ev = format!("data: {ev}\n\n");
    let (mut rd, mut wr) = sock.split();
    let mut probe = [0u8; 1];
    loop {
        let write = async {
            write_chunk_split(&mut wr, ev.as_bytes()).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<(), std::io::Error>(())
        };
        let gone = tokio::select! {
            r = write => r.is_err(),
            r = rd.read(&mut probe) => matches!(r, Ok(0) | Err(_)),
        };
        if !gone {
            *shared.endless_events.lock() += 1;
        }
        if gone {
            *shared.aborted.lock() += 1;
            shared.abort_notify.notify_waiters();
            return false;
        }
    }
}

async fn write_chunk_split(
    wr: &mut tokio::net::tcp::WriteHalf<'_>,
    data: &[u8],
) -> std::io::Result<()> {
    wr.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    wr.write_all(data).await?;
    wr.write_all(b"\r\n").await?;
    wr.flush().await
}

/// The endpoints beyond chat, completions and embeddings; `None` when `req` is not for one.
async fn other_endpoint(
    sock: &mut TcpStream,
    req: &Recorded,
    model: &str,
    stream: bool,
) -> Option<bool> {
    let path = req.path.as_str();
    let ctype = req.header("content-type").unwrap_or("").to_string();
    if ctype.starts_with("multipart/form-data") {
        let model = multipart_model(&req.body);
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&req.body));
        let body = json!({"text":"hello from the mock","model":model,"bytes":req.body.len(),"sha256":sha,
            "usage":{"type":"tokens","input_tokens":7,"output_tokens":2,"total_tokens":9}});
        return Some(write_json(sock, 200, "", body.to_string().as_bytes()).await);
    }
    let body = if path.ends_with("/v1/audio/speech") {
        let audio: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\n\r\n",
            audio.len()
        );
        let ok =
            sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(&audio).await.is_ok();
        return Some(ok);
    } else if path.ends_with("/v1/responses") && stream {
        return Some(responses_stream(sock, model).await);
    } else if path.ends_with("/v1/responses") {
        json!({"id":response_id(sock),"object":"response","created_at":1,"status":"completed","model":model,
            "output":[],
            "usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":4},"output_tokens":3,
                "output_tokens_details":{"reasoning_tokens":0},"total_tokens":12}})
    } else if path.ends_with("/v1/moderations") {
        json!({"id":"modr-1","model":model,"results":[{"flagged":false,"categories":{},"category_scores":{}}]})
    } else if path.ends_with("/rerank") {
        json!({"id":"rerank-1","model":model,"results":[{"index":1,"relevance_score":0.9},{"index":0,"relevance_score":0.1}],
            "usage":{"total_tokens":5}})
    } else if path.ends_with("/v1/score") {
        json!({"id":"score-1","object":"list","created":1,"model":model,
            "data":[{"index":0,"object":"score","score":0.7}],"usage":{"prompt_tokens":6,"total_tokens":6}})
    } else if path.ends_with("/v1/images/generations") {
        json!({"created":1,"data":[{"b64_json":"aGVsbG8="}],
            "usage":{"input_tokens":10,"output_tokens":20,"total_tokens":30}})
    } else {
        return None;
    };
    Some(write_json(sock, 200, "", body.to_string().as_bytes()).await)
}

/// The `model` form field of a multipart body, as the upstream received it.
fn multipart_model(body: &[u8]) -> String {
    let marker = b"name=\"model\"\r\n\r\n";
    let Some(at) = body.windows(marker.len()).position(|w| w == marker) else {
        return String::new();
    };
    let rest = &body[at + marker.len()..];
    let end = rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// A Responses API stream, each event written in 7-byte pieces (events split across reads).
/// A response id naming the mock that made it (its port), so tests see where a response
/// came from.
fn response_id(sock: &TcpStream) -> String {
    format!("resp_{}", sock.local_addr().map_or(0, |a| a.port()))
}

async fn responses_stream(sock: &mut TcpStream, model: &str) -> bool {
    let id = response_id(sock);
    let resp = |status: &str, usage: Value| json!({"id":id,"object":"response","status":status,"model":model,"output":[],"usage":usage});
    let events = [
        (
            "response.created",
            json!({"type":"response.created","sequence_number":0,"response":resp("in_progress", Value::Null)}),
        ),
        (
            "response.output_text.delta",
            json!({"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hel"}),
        ),
        (
            "response.output_text.delta",
            json!({"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"lo"}),
        ),
        (
            "response.completed",
            json!({"type":"response.completed","sequence_number":3,
            "response":resp("completed", json!({"input_tokens":9,"output_tokens":3,"total_tokens":12}))}),
        ),
    ];
    if sock.write_all(SSE_HEAD).await.is_err() {
        return false;
    }
    for (name, data) in events {
        let ev = format!("event: {name}\ndata: {data}\n\n");
        for piece in ev.as_bytes().chunks(7) {
            if write_chunk(sock, piece).await.is_err() {
                return false;
            }
        }
    }
    sock.write_all(b"0\r\n\r\n").await.is_ok()
}
