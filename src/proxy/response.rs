//! Response side: choose how to treat the body, restore `model`, capture usage and first token.

use bytes::Bytes;
use pingora::prelude::*;

use super::ctx::{RequestCtx, ResponseMode};
use super::deadline::TimeoutKind;
use crate::openai::rewrite_response_object;
use crate::sse::StreamRewriter;

/// Upstream response headers that describe the provider account, not the client's request.
const UPSTREAM_PRIVATE_HEADERS: [&str; 3] = ["set-cookie", "openai-organization", "openai-project"];

/// JSON bodies above this are forwarded unmodified instead of being buffered further.
const MAX_JSON_BUFFER: usize = 67_108_864; // 64 MiB

pub fn headers(resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    ctx.status = Some(resp.status.as_u16());
    ctx.ttfb = Some(ctx.start.elapsed());
    arm_idle(ctx);
    // the provider account's cookies, organisation and rate limits are not the client's
    for h in UPSTREAM_PRIVATE_HEADERS {
        resp.remove_header(h);
    }
    // upstream rate limits describe the provider account; upstream CORS answers would
    // override `server.cors`, which alone decides what browsers may call
    let is_private = |k: &http::HeaderName| {
        let k = k.as_str();
        k.starts_with("x-ratelimit-") || k.starts_with("access-control-")
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
    let Some(routed) = &ctx.routed else {
        return Ok(());
    };
    let (model, endpoint, strip_usage) = (&routed.model, routed.endpoint, routed.strip_usage);
    if !ok || encoded {
        return Ok(()); // upstream errors pass through with status, headers and body
    }
    let sse = ctype.starts_with(b"text/event-stream");
    if sse {
        resp.insert_header("cache-control", "no-cache")?;
        resp.insert_header("x-accel-buffering", "no")?;
    }
    ctx.response = if let (true, Some(kind)) = (sse, endpoint.stream_kind()) {
        ResponseMode::Sse(Box::new(StreamRewriter::for_kind(kind, model, strip_usage)))
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
                if !rw.is_done() {
                    let e = crate::errors::GatewayError::UpstreamClosed;
                    tracing::debug!(request_id = %ctx.request_id, "stream ended without [DONE]");
                    out.extend_from_slice(&e.sse_event());
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
            let model = ctx.client_model().unwrap_or_default();
            let r = rewrite_response_object(&raw, model, false);
            ctx.usage = r.usage;
            *body = Some(Bytes::from(r.bytes.unwrap_or(raw)));
        }
    }
}

/// Flushes what a broken stream still owes the client: the error as a final SSE event.
pub fn stream_error_tail(ctx: &mut RequestCtx, e: &crate::errors::GatewayError) -> Option<Bytes> {
    let ResponseMode::Sse(rw) = &ctx.response else {
        return None;
    };
    ctx.usage = rw.usage();
    Some(e.sse_event())
}
