//! Response side: choose how to treat the body, restore `model`, capture usage and first token.

use bytes::Bytes;
use pingora::prelude::*;

use super::ctx::{RequestCtx, ResponseMode};
use super::deadline::TimeoutKind;
use crate::anthropic::chat_stream::ChatStream;
use crate::anthropic::from_chat::from_chat;
use crate::anthropic::from_messages::from_messages;
use crate::anthropic::messages_stream::MessagesStream;
use crate::anthropic::MessagesUsage;
use crate::endpoint::Api;
use crate::openai::{rewrite_response_object, Usage};
use crate::sse::StreamRewriter;
use crate::wire::{pool_api, Wire};

/// Upstream response headers that describe the provider account, not the client's request.
const UPSTREAM_PRIVATE_HEADERS: [&str; 4] = [
    "set-cookie",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
];

/// JSON bodies above this are forwarded unmodified instead of being buffered further.
const MAX_JSON_BUFFER: usize = 67_108_864; // 64 MiB

/// An upstream error body is read this far to give it the client's shape.
const MAX_ERROR_BUFFER: usize = 1_048_576;

pub fn headers(resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    ctx.status = Some(resp.status.as_u16());
    ctx.ttfb = Some(ctx.start.elapsed());
    arm_idle(ctx);
    strip_private(resp);
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    super::respond::rate_headers(resp, ctx)?;
    super::respond::cors_headers(resp, ctx)?;
    let ok = resp.status.is_success();
    let encoded = resp.headers.contains_key("content-encoding");
    let ctype = resp
        .headers
        .get("content-type")
        .map(|v| v.as_bytes().to_ascii_lowercase())
        .unwrap_or_default();
    if ctx.routed.is_none() || encoded {
        return Ok(());
    }
    if !ok {
        if !error_converted(ctx) {
            return Ok(()); // upstream errors pass through with status, headers and body
        }
        ctx.response = ResponseMode::Error(Vec::new());
        resp.insert_header("content-type", "application/json")?;
        resp.remove_header("content-length");
        resp.insert_header("transfer-encoding", "chunked")?;
        return Ok(());
    }
    let sse = ctype.starts_with(b"text/event-stream");
    if sse {
        resp.insert_header("cache-control", "no-cache")?;
        resp.insert_header("x-accel-buffering", "no")?;
    }
    ctx.response = if let Some(rw) = sse.then(|| stream_mode(ctx)).flatten() {
        ResponseMode::Sse(Box::new(rw))
    } else if sse {
        return Ok(()); // other event streams (partial images, speech) pass through as sent
    } else if ctype.starts_with(b"application/json") {
        ResponseMode::Json(Vec::new())
    } else {
        return Ok(());
    };
    // the body length changes: re-frame as chunked (an h2 client ignores the header)
    resp.remove_header("content-length");
    resp.insert_header("transfer-encoding", "chunked")?;
    Ok(())
}

/// The provider account's cookies, organisation and rate limits are not the client's.
fn strip_private(resp: &mut ResponseHeader) {
    for h in UPSTREAM_PRIVATE_HEADERS {
        resp.remove_header(h);
    }
    // upstream rate limits describe the provider account; upstream CORS answers would
    // override `server.cors`, which alone decides what browsers may call
    let is_private = |k: &http::HeaderName| {
        let k = k.as_str();
        k.starts_with("x-ratelimit-")
            || k.starts_with("anthropic-ratelimit-")
            || k.starts_with("access-control-")
    };
    if resp.headers.keys().any(is_private) {
        let private: Vec<_> = resp
            .headers
            .keys()
            .filter(|k| is_private(k))
            .cloned()
            .collect();
        for h in private {
            resp.remove_header(&h);
        }
    }
}

/// Whether an upstream error answer must change shape: an Anthropic client's always (an
/// OpenAI backend's error, or a native one's in whatever shape it has), an OpenAI client's
/// when an Anthropic upstream answered.
fn error_converted(ctx: &RequestCtx) -> bool {
    ctx.api == Api::Anthropic || upstream_api(ctx) == Api::Anthropic
}

fn upstream_api(ctx: &RequestCtx) -> Api {
    ctx.pool
        .and_then(|p| ctx.snap.pools.get(p))
        .map_or(Api::OpenAi, |p| pool_api(&p.config))
}

/// The rewriter (or translator) for a successful event stream of this request.
fn stream_mode(ctx: &RequestCtx) -> Option<StreamRewriter> {
    let routed = ctx.routed.as_ref()?;
    let model = routed.model.as_str();
    Some(match ctx.plan.wire {
        Wire::MessagesToChat => {
            let id = format!("msg_{}", ctx.request_id);
            let t = ChatStream::new(model, &id, ctx.plan.asked.clone());
            StreamRewriter::translating(Box::new(t))
        }
        Wire::ChatToMessages => {
            let id = format!("chatcmpl-{}", ctx.request_id);
            let t = MessagesStream::new(model, &id, unix_now(), routed.client_usage);
            StreamRewriter::translating(Box::new(t))
        }
        Wire::Same | Wire::LocalCount => {
            let kind = routed.endpoint.stream_kind()?;
            StreamRewriter::for_kind(kind, model, routed.strip_usage)
        }
    })
}

fn unix_now() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock) / 1000
}

/// A whole JSON answer for the client: `model` restored, or translated into its API; the
/// usage it reports.
fn json_answer(ctx: &RequestCtx, raw: &[u8]) -> (Option<Vec<u8>>, Option<Usage>) {
    let model = ctx.client_model().unwrap_or_default();
    let parsed = || serde_json::from_slice::<serde_json::Value>(raw).ok();
    match ctx.plan.wire {
        Wire::MessagesToChat => {
            let Some(chat) = parsed() else {
                return (None, None);
            };
            let id = format!("msg_{}", ctx.request_id);
            let usage = serde_json::from_value::<Usage>(chat["usage"].clone()).ok();
            let msg = from_chat(&chat, model, &id, &ctx.plan.asked);
            (Some(msg.to_string().into_bytes()), usage)
        }
        Wire::ChatToMessages => {
            let Some(msg) = parsed() else {
                return (None, None);
            };
            let usage = serde_json::from_value::<MessagesUsage>(msg["usage"].clone())
                .ok()
                .map(|u| u.usage());
            let chat = from_messages(&msg, model, unix_now());
            (Some(chat.to_string().into_bytes()), usage)
        }
        Wire::Same | Wire::LocalCount => {
            let r = rewrite_response_object(raw, model, false);
            (r.bytes, r.usage)
        }
    }
}

/// A Responses answer's id, for `previous_response_id` affinity.
fn responses_id(ctx: &RequestCtx, raw: &[u8]) -> Option<String> {
    let responses =
        ctx.routed.as_ref().map(|r| r.endpoint) == Some(crate::endpoint::Endpoint::Responses);
    responses.then(|| crate::openai::object_id(raw)).flatten()
}

/// An upstream error answer in the client API's shape.
fn error_answer(ctx: &RequestCtx, raw: &[u8]) -> Vec<u8> {
    let status = ctx.status.unwrap_or(502);
    match ctx.api {
        Api::Anthropic => crate::anthropic::error_to_anthropic(raw, status),
        Api::OpenAi => crate::anthropic::error_to_openai(raw, status),
    }
}

/// From the first response byte on, the limit is the gap to the next chunk (and the total).
fn arm_idle(ctx: &RequestCtx) {
    let (Some(shared), Some(pool)) = (&ctx.shared, ctx.pool.and_then(|p| ctx.snap.pools.get(p)))
    else {
        return;
    };
    let t = &pool.config.timeouts;
    let now = std::time::Instant::now();
    shared
        .deadline
        .arm(TimeoutKind::Idle, now + t.idle, ctx.start + t.total);
}

pub fn body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
    if body.is_some() {
        arm_idle(ctx);
    }
    if end_of_stream {
        // the backend is done with this request before the client sees its last byte
        ctx.attempt = None;
    }
    match &mut ctx.response {
        ResponseMode::Passthrough => {}
        ResponseMode::Sse(rw) => {
            let mut out = Vec::new();
            if let Some(chunk) = body.take() {
                if rw.feed(&chunk, &mut out).first_choice {
                    ctx.ttft = Some(ctx.start.elapsed());
                }
            }
            if end_of_stream {
                rw.finish(&mut out);
                ctx.usage = rw.usage();
                ctx.response_id = rw.response_id().map(str::to_string);
                if !rw.is_done() {
                    let e = crate::errors::GatewayError::UpstreamClosed;
                    tracing::debug!(request_id = %ctx.request_id, "stream ended without its last event");
                    out.extend_from_slice(&e.sse_event_for(ctx.api));
                    ctx.error = Some(e);
                }
            }
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        }
        ResponseMode::Json(buf) => {
            if let Some(chunk) = body.take() {
                buf.extend_from_slice(&chunk);
            }
            if buf.len() > MAX_JSON_BUFFER {
                tracing::warn!(request_id = %ctx.request_id, "JSON response too large to rewrite");
                *body = Some(Bytes::from(std::mem::take(buf)));
                ctx.response = ResponseMode::Passthrough;
                return;
            }
            if !end_of_stream {
                return;
            }
            let raw = std::mem::take(buf);
            let (bytes, usage) = json_answer(ctx, &raw);
            ctx.usage = usage;
            ctx.response_id = responses_id(ctx, &raw);
            *body = Some(Bytes::from(bytes.unwrap_or(raw)));
        }
        ResponseMode::Error(buf) => {
            if let Some(chunk) = body.take() {
                if buf.len() < MAX_ERROR_BUFFER {
                    buf.extend_from_slice(&chunk);
                }
            }
            if end_of_stream {
                let raw = std::mem::take(buf);
                *body = Some(Bytes::from(error_answer(ctx, &raw)));
            }
        }
    }
}

/// Flushes what a broken stream still owes the client: the error as a final SSE event.
pub fn stream_error_tail(ctx: &mut RequestCtx, e: &crate::errors::GatewayError) -> Option<Bytes> {
    let ResponseMode::Sse(rw) = &ctx.response else {
        return None;
    };
    ctx.usage = rw.usage();
    Some(e.sse_event_for(ctx.api))
}
