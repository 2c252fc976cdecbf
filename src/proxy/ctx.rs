//! Per-request state: one config snapshot, the principal, the route, and what the response did.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::deadline::TimeoutKind;
use super::session::{self, Shared, Slot};
use crate::auth::Principal;
use crate::errors::GatewayError;
use crate::limits::RateHeaders;
use crate::openai::Usage;
use crate::sse::StreamRewriter;
use crate::state::Snapshot;
use crate::upstream::BackendGuard;

/// The attempt plan of one request across its pools.
#[derive(Default)]
pub struct Plan {
    pub chain: Vec<usize>,
    /// Index into `chain` of the pool being tried.
    pub pos: usize,
    /// Attempts made in the current pool, and the backends they used.
    pub attempts_in_pool: u32,
    pub tried: Vec<usize>,
    /// Whether the last failure was a stale pooled connection: retry the same backend once.
    pub retry_same: bool,
    /// All attempts, for metrics and backoff.
    pub attempts: u32,
    /// When the current attempt was dispatched.
    pub attempt_start: Option<Instant>,
    /// The client body and the model name the route gives the upstream (before pool renames).
    pub client_body: Bytes,
    pub route_model: String,
    /// The model name in the body being sent now.
    pub sent_model: String,
    /// The raw prompt (`messages`, `prompt` or `input`), for `hash_key: prompt_prefix`.
    pub prompt: Bytes,
    /// The last upstream failure, reported if no later attempt succeeds.
    pub last_error: Option<GatewayError>,
    /// The JSON body's fields, to rewrite it for another pool's model name.
    pub json: Option<crate::openai::RequestHead>,
    /// The model name written in `client_body` (a JSON body is kept as first rewritten).
    pub body_model: String,
    /// Where a multipart head carries `model`, for the same reason.
    pub multipart_model: Option<std::ops::Range<usize>>,
    /// The client's body as sent, kept when a pool of the chain takes it translated.
    pub original: Option<Bytes>,
    /// How the body being sent now reaches its pool.
    pub wire: crate::wire::Wire,
    /// What a translated answer needs from the request (its stop sequences).
    pub asked: crate::anthropic::to_chat::Asked,
    /// The canonical prompt's block hashes, per block size of the chain's `cache_aware` pools.
    pub blocks: Vec<(usize, Vec<u64>)>,
    /// Share of the prompt the chosen backend held (`cache_aware`), for the access line.
    pub prefix_match: Option<f64>,
    /// A Responses request's `previous_response_id`, and what affinity made of it.
    pub previous_response: Option<String>,
    pub affinity: Option<&'static str>,
}

/// How the response body is treated.
pub enum ResponseMode {
    /// Errors and anything we do not rewrite go through untouched.
    Passthrough,
    /// A JSON completion or embedding, buffered to restore `model` and read `usage`.
    Json(Vec<u8>),
    /// An event stream, rewritten (or translated) event by event.
    Sse(Box<StreamRewriter>),
    /// An upstream error answer, buffered to give it the client API's error shape.
    Error(Vec<u8>),
}

pub use crate::endpoint::Endpoint;

/// An API request as routing and admission decided it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub endpoint: Endpoint,
    /// The client-facing model name.
    pub model: String,
    pub route: usize,
    pub stream: bool,
    /// The gateway injected `include_usage`, so the usage chunk must not reach the client.
    pub strip_usage: bool,
    /// The client asked for the usage chunk itself.
    pub client_usage: bool,
    /// Prompt tokens estimated, and completion tokens reserved, at admission.
    pub prompt_estimate: u64,
    pub completion_reserve: u64,
}

pub struct RequestCtx {
    pub snap: Arc<Snapshot>,
    pub start: Instant,
    pub request_id: String,
    pub principal: Option<Principal>,
    /// What routing and admission decided, once they did.
    pub routed: Option<Routed>,
    /// The pool serving the current attempt.
    pub pool: Option<usize>,
    pub backend: Option<usize>,
    /// Where attempts go: the route's pool then its fallbacks, or the one pinned pool.
    pub plan: Plan,
    /// The body and deadline shared with the session wrapper (set once the request is routed).
    pub shared: Option<Arc<Shared>>,
    /// The attempt in flight on `backend`, released when it ends.
    pub attempt: Option<BackendGuard>,
    /// Set while the downstream session is wrapped by `session::wrap`.
    pub session_slot: Option<Slot>,
    pub response: ResponseMode,
    /// Status sent to the client, once decided (the upstream's, or the gateway's own answer).
    pub status: Option<u16>,
    pub error: Option<GatewayError>,
    pub client_gone: bool,
    pub ttfb: Option<Duration>,
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    pub inflight: Option<InflightGuard>,
    /// Limits and budget reserved at admission, settled in `logging`.
    pub admitted: Option<crate::live::Admitted>,
    /// `x-ratelimit-*` values for the response, and the wait a refusal announces.
    pub rate_headers: Option<RateHeaders>,
    /// Counts this request as active until the context is dropped.
    pub active: Option<ActiveGuard>,
    /// The `Access-Control-Allow-Origin` value when `server.cors` allows the request's origin.
    pub cors_origin: Option<String>,
    /// The model and endpoint asked for, known before admission (the ledger names them for a
    /// request a limit refused, which never gets `routed`).
    pub asked: Option<(String, Endpoint)>,
    /// The API the client speaks (by path): it decides the shape of every error it gets.
    pub api: crate::endpoint::Api,
    /// The id of the Responses answer, remembered for `previous_response_id` affinity.
    pub response_id: Option<String>,
    /// The caller's own provider key (`x-llmedge-upstream-key`), for `credentials: client`
    /// pools; never logged, never kept past the request.
    pub upstream_key: Option<crate::config::Secret>,
    /// An anonymous caller's `Authorization` header, forwarded to `credentials: passthrough`.
    pub caller_auth: Option<crate::config::Secret>,
    /// A pass-through request (`passthrough:` paths): forwarded as it is.
    pub passthrough: bool,
}

impl RequestCtx {
    pub fn new(snap: Arc<Snapshot>) -> Self {
        Self {
            snap,
            start: Instant::now(),
            request_id: String::new(),
            principal: None,
            routed: None,
            pool: None,
            backend: None,
            plan: Plan::default(),
            shared: None,
            attempt: None,
            session_slot: None,
            response: ResponseMode::Passthrough,
            status: None,
            error: None,
            client_gone: false,
            ttfb: None,
            ttft: None,
            usage: None,
            inflight: None,
            admitted: None,
            rate_headers: None,
            active: None,
            cors_origin: None,
            asked: None,
            api: crate::endpoint::Api::OpenAi,
            response_id: None,
            upstream_key: None,
            caller_auth: None,
            passthrough: false,
        }
    }

    /// The route, once routed.
    pub fn route(&self) -> Option<usize> {
        self.routed.as_ref().map(|r| r.route)
    }

    /// The client-facing model, once routed.
    pub fn client_model(&self) -> Option<&str> {
        self.routed.as_ref().map(|r| r.model.as_str())
    }

    pub fn route_name(&self) -> &str {
        self.snap.route_label(self.route())
    }

    pub fn pool_name(&self) -> &str {
        self.snap.pool_label(self.pool)
    }
}

/// Why a proxied exchange broke, as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// One of this request's upstream deadlines passed. The session wrapper reports it through
    /// the downstream watcher, so Pingora labels it a downstream error; it is not a hang-up.
    Timeout(TimeoutKind),
    /// The client went away.
    ClientGone,
    /// The gateway refused the rest of the client's body while it streamed upstream.
    Refused(GatewayError),
    /// Anything else (an upstream or internal failure).
    Other,
}

impl RequestCtx {
    pub fn cause(&self, e: &pingora::Error) -> Cause {
        if let Some(kind) = self.shared.as_ref().and_then(|s| s.deadline.fired()) {
            return Cause::Timeout(kind);
        }
        if let Some(refusal) = e.root_cause().downcast_ref::<GatewayError>() {
            return Cause::Refused(refusal.clone());
        }
        if matches!(e.esource(), pingora::ErrorSource::Downstream) {
            return Cause::ClientGone;
        }
        Cause::Other
    }
}

impl RequestCtx {
    /// Hands the real downstream session back from the wrapper; must run before Pingora
    /// finishes the session.
    pub fn restore_session(&mut self, session: &mut pingora::proxy::Session) {
        if let Some(slot) = self.session_slot.take() {
            session::unwrap(&mut session.downstream_session, &slot);
        }
    }
}

/// Counts the request in the gateway's active total while it lives.
pub struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    pub fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps `llmedge_inflight_requests{pool}` right whichever way the request ends.
pub struct InflightGuard(prometheus::IntGauge);

impl InflightGuard {
    pub fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request id: the client's `x-request-id` when it is short and printable, else a new one.
pub fn request_id(client: Option<&[u8]>) -> String {
    if let Some(v) = client {
        if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) {
            return String::from_utf8_lossy(v).into_owned();
        }
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("req_{:016x}{:08x}", mix(t ^ n.rotate_left(32)), n as u32)
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: spreads the clock bits so ids do not look sequential
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_client_ids_are_kept_when_sane() {
        assert_ne!(request_id(None), request_id(None));
        assert_eq!(request_id(Some(b"abc-1")), "abc-1");
        assert!(request_id(Some(b"has space")).starts_with("req_"));
        assert!(request_id(Some(&[b'a'; 200])).starts_with("req_"));
    }
}
