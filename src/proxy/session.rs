//! The session wrapper: forwarding a pre-read, rewritten request body of any size through
//! Pingora's normal proxy path.
//!
//! Pingora replays a body read in `request_filter` only from its retry buffer, which stops at
//! 64 KiB (`BODY_BUF_LIMIT` in pingora-core 0.9.1). We wrap the downstream session in a custom
//! session that delegates everything to the real one but answers `get_retry_buffer()` with our
//! rewritten body, so every attempt (retries included) sends it whole. See shared/BIGBODY.md.
//! The inner session is handed back through a shared slot, which avoids an unsafe downcast.
//!
//! The wrapper's `read_body_or_idle` is what Pingora polls, for the whole exchange, to notice a
//! client hang-up; it also enforces the request's upstream deadline (first byte, idle gap, total),
//! which Pingora's fixed per-read timeout cannot express.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::custom::server::Session as CustomSession;
use pingora::protocols::http::custom::CustomMessageWrite;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Digest;
use pingora::{Error, ErrorType, Result};

use super::deadline::{Deadline, TimeoutKind};
use crate::errors::GatewayError;

pub type Slot = Arc<Mutex<Option<ServerSession>>>;

/// The body to send (replaceable when a fallback pool needs another model name) and the
/// request's current upstream deadline. Shared between the request context and the wrapper.
pub struct Shared {
    body: Mutex<Bytes>,
    pub deadline: Deadline,
    tail: Mutex<Option<Tail>>,
    /// Watches a streamed tail for a second `model` field.
    watch: Mutex<Option<crate::multipart::Watch>>,
}

/// A body only partly read before routing (a multipart upload): the preset bytes are its
/// rewritten head, the rest is streamed from the client as it arrives.
#[derive(Debug, Clone, Copy)]
pub struct Tail {
    /// The client's `Content-Length`, if it sent one.
    pub declared: Option<usize>,
    /// How many client bytes the preset head stands for.
    pub head_read: usize,
    /// Bytes of the tail passed on so far; once non-zero the body cannot be replayed.
    pub streamed: usize,
    /// The body limit, enforced on the tail as it streams.
    pub max: usize,
    /// While the tail streams only the total limit applies (a slow upload is not a slow
    /// backend); the first-byte limit starts when the last byte went up.
    pub first_byte: Duration,
    pub total_at: Instant,
    /// The whole body has gone upstream.
    pub finished: bool,
}

impl Shared {
    pub fn new(body: Bytes, deadline: Instant) -> Arc<Self> {
        Arc::new(Self {
            body: Mutex::new(body),
            deadline: Deadline::new(deadline),
            tail: Mutex::new(None),
            watch: Mutex::new(None),
        })
    }

    /// Marks the body as continuing past the preset head, watched by `watch` (a multipart
    /// upload's second `model` field) when given.
    pub fn set_tail(&self, tail: Tail, watch: Option<crate::multipart::Watch>) {
        *self.tail.lock() = Some(tail);
        *self.watch.lock() = watch;
    }

    /// Whether part of a streamed tail has gone out: the request can no longer be retried.
    pub fn tail_started(&self) -> bool {
        self.tail.lock().is_some_and(|t| t.streamed > 0)
    }

    /// Whether the client is still uploading the tail (a deadline then is not the backend's).
    pub fn uploading(&self) -> bool {
        self.tail.lock().is_some_and(|t| !t.finished)
    }

    /// The `Content-Length` to send upstream: the preset body's, or for a streamed tail the
    /// client's length adjusted by the head rewrite (`None`: unknown, send chunked).
    pub fn upstream_len(&self) -> Option<usize> {
        let head = self.body.lock().len();
        match *self.tail.lock() {
            None => Some(head),
            Some(t) => t.declared.map(|d| d - t.head_read.min(d) + head),
        }
    }

    pub fn set_body(&self, body: Bytes) {
        *self.body.lock() = body;
    }

    pub fn body_len(&self) -> usize {
        self.body.lock().len()
    }
}

/// Installed in place of the real downstream session while a request is proxied.
pub struct PresetBody {
    inner: ServerSession,
    shared: Arc<Shared>,
    slot: Slot,
    /// Turns true when a graceful shutdown's grace period is over.
    drain: tokio::sync::watch::Receiver<bool>,
}

/// Swaps the downstream session for a wrapper that replays the shared body; returns the
/// hand-back slot.
pub fn wrap(
    downstream: &mut ServerSession,
    shared: Arc<Shared>,
    drain: tokio::sync::watch::Receiver<bool>,
) -> Slot {
    let slot: Slot = Arc::new(Mutex::new(None));
    let inner = std::mem::replace(downstream, ServerSession::new_custom(Box::new(())));
    *downstream = ServerSession::new_custom(Box::new(PresetBody {
        inner,
        shared,
        slot: slot.clone(),
        drain,
    }));
    slot
}

/// Puts the real session back, so keep-alive, `set_keepalive` and error responses work again.
pub fn unwrap(downstream: &mut ServerSession, slot: &Slot) {
    let Some(custom) = downstream.as_custom_mut() else {
        return;
    };
    // Pingora never calls this on our session (we never hand out a writer); it is our signal.
    if custom.restore_custom_message_writer(Box::new(())).is_err() {
        return;
    }
    if let Some(inner) = slot.lock().take() {
        *downstream = inner;
    }
}

impl PresetBody {
    /// A streamed tail is still coming from the client.
    fn streaming(&mut self) -> bool {
        self.shared.tail.lock().is_some() && !self.inner.is_body_done()
    }
}

/// A piece of the streamed tail went by: counts it against the body limit, watches it for a
/// second `model` field, and when it was the last (`done`) starts the backend's first-byte
/// limit.
fn pass_tail(shared: &Shared, chunk: Option<&Bytes>, done: bool) -> Result<()> {
    let mut tail = shared.tail.lock();
    let Some(t) = tail.as_mut() else {
        return Ok(());
    };
    let len = chunk.map_or(0, Bytes::len);
    t.streamed += len;
    if t.head_read + t.streamed > t.max {
        let e = GatewayError::BodyTooLarge { limit: t.max };
        return refuse(e, "request body over the limit");
    }
    let finished = done && !t.finished;
    t.finished |= done;
    let (first_byte, total_at) = (t.first_byte, t.total_at);
    drop(tail);
    if let (Some(c), Some(w)) = (chunk, shared.watch.lock().as_mut()) {
        if !w.feed(c, "model") {
            let e = GatewayError::InvalidParam {
                param: "model",
                msg: "the form has more than one model field".into(),
            };
            return refuse(e, "a second model field");
        }
    }
    if finished {
        shared.deadline.arm(
            TimeoutKind::FirstByte,
            Instant::now() + first_byte,
            total_at,
        );
    }
    Ok(())
}

/// The gateway stops reading the client's body: the error carries the client-facing refusal,
/// which `RequestCtx::cause` finds at its root (the client gets it, not a hang-up).
fn refuse(e: GatewayError, why: &'static str) -> Result<()> {
    Error::e_because(ErrorType::InvalidHTTPHeader, why, e)
}

fn placeholder() -> ServerSession {
    ServerSession::new_custom(Box::new(()))
}

#[async_trait]
impl CustomSession for PresetBody {
    fn req_header(&self) -> &RequestHeader {
        self.inner.req_header()
    }
    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.inner.req_header_mut()
    }
    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        if !self.streaming() {
            return Ok(None); // consumed by request_filter; it goes out through get_retry_buffer
        }
        let chunk = self.inner.read_request_body().await?;
        let done = self.inner.is_body_done();
        pass_tail(&self.shared, chunk.as_ref(), done)?;
        Ok(chunk)
    }
    async fn drain_request_body(&mut self) -> Result<()> {
        if self.streaming() {
            return self.inner.drain_request_body().await;
        }
        Ok(())
    }
    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, _end: bool) -> Result<()> {
        self.inner.write_response_header(resp).await
    }
    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, _end: bool) -> Result<()> {
        self.inner.write_response_header_ref(resp).await
    }
    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        self.inner.write_response_body(data, end).await
    }
    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.inner.write_response_trailers(trailers).await
    }
    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        self.inner.response_duplex_vec(tasks).await
    }
    fn proxy_tasks_enabled(&self) -> bool {
        self.inner.supports_proxy_task_api()
    }
    fn set_proxy_tasks_enabled(&mut self, enabled: bool) {
        self.inner.set_proxy_tasks_enabled(enabled)
    }
    fn send_proxy_task(&mut self, task: HttpTask) {
        self.inner.send_downstream_proxy_task(task)
    }
    fn has_pending_proxy_tasks(&self) -> bool {
        self.inner.has_pending_downstream_proxy_tasks()
    }
    async fn write_proxy_tasks(&mut self) -> Result<bool> {
        self.inner.write_downstream_proxy_tasks().await
    }
    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_read_timeout(timeout)
    }
    fn get_read_timeout(&self) -> Option<Duration> {
        self.inner.get_read_timeout()
    }
    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_write_timeout(timeout)
    }
    fn get_write_timeout(&self) -> Option<Duration> {
        self.inner.get_write_timeout()
    }
    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_total_drain_timeout(timeout)
    }
    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.inner.get_total_drain_timeout()
    }
    fn request_summary(&self) -> String {
        self.inner.request_summary()
    }
    fn response_written(&self) -> Option<&ResponseHeader> {
        self.inner.response_written()
    }
    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.inner.shutdown().await
    }
    fn is_body_done(&mut self) -> bool {
        !self.streaming()
    }
    async fn finish(&mut self) -> Result<()> {
        self.inner.finish_body().await
    }
    fn is_body_empty(&mut self) -> bool {
        self.shared.body.lock().is_empty() && !self.streaming()
    }
    async fn read_body_or_idle(&mut self, _no_body_expected: bool) -> Result<Option<Bytes>> {
        // once the body is read this is the real session's disconnect watcher (with a streamed
        // tail, it reads the tail first), raced against the upstream deadline (re-read after
        // each wake, as filters move it)
        let shared = self.shared.clone();
        let reading = self.streaming();
        // while the tail streams only the total limit applies (a slow upload is no slow backend)
        let deadline = || match (reading, *shared.tail.lock()) {
            (true, Some(t)) => (t.total_at, TimeoutKind::Total),
            _ => shared.deadline.current(),
        };
        loop {
            let (at, _) = deadline();
            tokio::select! {
                r = self.inner.read_body_or_idle(!reading) => {
                    let chunk = r?;
                    if reading {
                        pass_tail(&shared, chunk.as_ref(), self.inner.is_body_done())?;
                    }
                    return Ok(chunk);
                }
                Ok(_) = self.drain.wait_for(|over| *over) => {
                    shared.deadline.fire(TimeoutKind::Shutdown);
                    return Error::e_explain(ErrorType::ReadTimedout, "shutdown grace period over");
                }
                () = tokio::time::sleep_until(at.into()) => {
                    let (at, kind) = deadline();
                    if Instant::now() >= at {
                        shared.deadline.fire(kind);
                        return Error::e_explain(ErrorType::ReadTimedout, "upstream deadline passed");
                    }
                }
            }
        }
    }
    fn body_bytes_sent(&self) -> usize {
        self.inner.body_bytes_sent()
    }
    fn body_bytes_read(&self) -> usize {
        self.inner.body_bytes_read()
    }
    fn digest(&self) -> Option<&Digest> {
        self.inner.digest()
    }
    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.inner.digest_mut()
    }
    fn client_addr(&self) -> Option<&SocketAddr> {
        self.inner.client_addr()
    }
    fn server_addr(&self) -> Option<&SocketAddr> {
        self.inner.server_addr()
    }
    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.inner.to_h1_raw()
    }
    fn enable_retry_buffering(&mut self) {}
    fn retry_buffer_truncated(&self) -> bool {
        self.shared.tail_started()
    }
    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.shared.body.lock().clone())
    }
    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }
    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>>
    {
        None
    }
    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Error::e_explain(ErrorType::InternalError, "no custom message reader")
    }
    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }
    fn restore_custom_message_writer(&mut self, _w: Box<dyn CustomMessageWrite>) -> Result<()> {
        let inner = std::mem::replace(&mut self.inner, placeholder());
        *self.slot.lock() = Some(inner);
        Ok(())
    }
    fn is_upgrade_req(&self) -> bool {
        self.inner.is_upgrade_req()
    }
    fn was_upgraded(&self) -> bool {
        self.inner.was_upgraded()
    }
}
