//! Pass-through paths (`passthrough:`): OpenAI's stateful endpoints (files, batches,
//! fine-tuning...) have no `model` to route by, so each listed path prefix goes to one pool,
//! any method, after virtual-key auth (the key's `pools` allow-list applies) and its request
//! limits. Nothing is rewritten: the body streams up and the answer streams down untouched
//! (uploads and downloads of any size), and there is no token accounting.

use bytes::Bytes;
use pingora::proxy::Session;

use super::ctx::{Plan, RequestCtx};
use super::prepare::{admit, needs_client_key, upstream_key, wrap_session};
use super::session::Tail;
use super::Gateway;
use crate::config::Passthrough;
use crate::errors::GatewayError;

/// Authenticates and admits a pass-through request and wraps the session so its body streams
/// to the pool.
pub async fn prepare(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    entry: &Passthrough,
) -> Result<(), GatewayError> {
    let snap = ctx.snap.clone();
    let headers = &session.req_header().headers;
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let key = snap.keys.authenticate(headers, now)?;
    ctx.principal = Some(key.principal.clone());
    ctx.passthrough = true;
    ctx.upstream_key = upstream_key(headers);
    let pool = snap.pools.get(entry.pool).ok_or(GatewayError::Internal)?;
    if !key.may_pin(entry.pool) {
        return Err(GatewayError::PoolNotAllowed(pool.name().to_string()));
    }
    if ctx.upstream_key.is_none() && needs_client_key(&snap, &[entry.pool]) {
        return Err(GatewayError::MissingUpstreamKey);
    }
    // requests and concurrency count; there are no tokens to reserve
    admit(gw, ctx, key, ("", 0, 0)).await?;
    let tail = streamed_body(session, pool, ctx.start);
    if tail.is_some() && expects_continue(session) {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::Internal)?;
    }
    ctx.pool = Some(entry.pool);
    ctx.plan = Plan {
        chain: vec![entry.pool],
        ..Plan::default()
    };
    wrap_session(
        gw,
        session,
        ctx,
        pool,
        Bytes::new(),
        tail.map(|t| (t, None)),
    );
    Ok(())
}

/// The request body as a tail streamed from the client (`None`: the request has none).
fn streamed_body(
    session: &Session,
    pool: &crate::upstream::Pool,
    start: std::time::Instant,
) -> Option<Tail> {
    let headers = &session.req_header().headers;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        return None;
    }
    let t = &pool.config.timeouts;
    Some(Tail {
        declared,
        head_read: 0,
        streamed: 0,
        // the upstream owns its own size limits for files
        max: usize::MAX,
        first_byte: t.first_byte,
        total_at: start + t.total,
        finished: false,
    })
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}
