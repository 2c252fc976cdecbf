//! Upstream attempts: choosing the backend (with retries and fallbacks), and deciding, after
//! each failure, whether another attempt may serve the request before any byte reached the client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::RetryType;

use super::ctx::{Cause, RequestCtx};
use super::failure::classify;
use super::preset::TimeoutKind;
use super::Gateway;
use crate::balance::hash_bytes;
use crate::config::HashKey;
use crate::errors::GatewayError;
use crate::openai::{inspect_request, rewrite_request};
use crate::upstream::health::parse_retry_after;
use crate::upstream::Pool;

/// First retry backoff; doubles per attempt, with jitter, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// How long a backend that answered 429 without `Retry-After` is left alone.
const DEFAULT_HOLD: Duration = Duration::from_secs(1);

/// The model name `pool` should see for a route's upstream model (`model_map` applied).
pub fn pool_model<'a>(pool: &'a Pool, route_model: &'a str) -> &'a str {
    pool.config
        .model_map
        .get(route_model)
        .map_or(route_model, String::as_str)
}

/// Picks the backend for the next attempt; called by `upstream_peer` before every connect. A
/// backend whose host does not resolve counts as a failed attempt and the plan moves on.
pub async fn peer(gw: &Gateway, session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    loop {
        ctx.attempt = None;
        let Some((p, b)) = next_target(gw, session, ctx, Instant::now()) else {
            let e = match ctx.plan.last_error.take() {
                Some(e) => e,
                None => nothing_to_try(ctx, Instant::now()),
            };
            ctx.error = Some(e);
            return Err(Error::explain(ConnectNoRoute, "no backend left to try"));
        };
        if ctx.plan.attempts > 0 {
            tokio::time::sleep(backoff(ctx.plan.attempts, ctx.start)).await;
        }
        ctx.plan.attempts += 1;
        let snap = ctx.snap.clone();
        let pool = snap
            .pools
            .get(p)
            .ok_or_else(|| Error::explain(InternalError, "pool vanished"))?;
        set_body_for(pool, ctx)?;
        if ctx.pool != Some(p) {
            // the request is in flight on the pool that serves it, not the first it tried
            let gauge = gw.metrics.inflight.with_label_values(&[pool.name()]);
            ctx.inflight = Some(super::ctx::InflightGuard::new(gauge));
        }
        ctx.pool = Some(p);
        ctx.backend = Some(b);
        let addr = match pool.resolve(b).await {
            Ok(a) => a,
            Err(e) => {
                record(gw, ctx, e.label());
                eject(ctx);
                ctx.plan.last_error = Some(e);
                continue;
            }
        };
        ctx.attempt = pool.begin(b);
        ctx.plan.attempt_start = Some(Instant::now());
        if let Some(shared) = &ctx.shared {
            let t = &pool.config.timeouts;
            let now = Instant::now();
            shared.arm(
                TimeoutKind::FirstByte,
                now + t.first_byte,
                ctx.start + t.total,
            );
        }
        let peer = pool
            .peer(b, addr)
            .map_err(|_| Error::explain(InternalError, "backend vanished"))?;
        return Ok(Box::new(peer));
    }
}

/// Why no attempt could be made: every backend that could serve is paused by its own
/// `Retry-After` (the client gets that 429, with the remaining pause), or none is usable.
fn nothing_to_try(ctx: &RequestCtx, now: Instant) -> GatewayError {
    let paused = ctx
        .plan
        .chain
        .iter()
        .filter_map(|&p| ctx.snap.pools.get(p))
        .filter_map(|p| p.paused_for(&[], now))
        .min();
    match paused {
        Some(d) => GatewayError::UpstreamPaused {
            retry: crate::limits::fmt_reset(d),
            retry_after_ms: (d.as_millis() as u64).max(1),
        },
        None => GatewayError::NoBackend(ctx.pool_name().to_string()),
    }
}

/// Walks the plan: the same backend after a stale pooled connection, else a fresh backend of
/// the current pool within its retry budget, else the next pool in the chain.
fn next_target(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    now: Instant,
) -> Option<(usize, usize)> {
    let snap = ctx.snap.clone();
    if std::mem::take(&mut ctx.plan.retry_same) {
        if let (Some(p), Some(b)) = (ctx.pool, ctx.backend) {
            return Some((p, b));
        }
    }
    loop {
        let p = *ctx.plan.chain.get(ctx.plan.pos)?;
        let pool = snap.pools.get(p)?;
        if ctx.plan.attempts_in_pool <= pool.config.retries {
            let key = hash_key(pool, session, ctx);
            if let Some(b) = pool.select(&ctx.plan.tried, key, now) {
                ctx.plan.attempts_in_pool += 1;
                ctx.plan.tried.push(b);
                return Some((p, b));
            }
        }
        ctx.plan.pos += 1;
        ctx.plan.attempts_in_pool = 0;
        ctx.plan.tried.clear();
        if let Some(next) = ctx
            .plan
            .chain
            .get(ctx.plan.pos)
            .and_then(|&q| snap.pools.get(q))
        {
            gw.metrics
                .fallbacks
                .with_label_values(&[ctx.route_name(), next.name()])
                .inc();
        }
    }
}

/// Whether a failed attempt can be followed by another one: the body can be sent again (an
/// upload whose tail already streamed cannot), and a backend is left to send it to.
fn has_next(ctx: &RequestCtx, now: Instant) -> bool {
    if !replayable(ctx) {
        return false;
    }
    let snap = &ctx.snap;
    let plan = &ctx.plan;
    let Some(pool) = plan.chain.get(plan.pos).and_then(|&p| snap.pools.get(p)) else {
        return false;
    };
    if plan.attempts_in_pool <= pool.config.retries && pool.has_candidate(&plan.tried, now) {
        return true;
    }
    plan.chain
        .iter()
        .skip(plan.pos + 1)
        .filter_map(|&q| snap.pools.get(q))
        .any(|q| q.has_candidate(&[], now))
}

fn hash_key(pool: &Pool, session: &Session, ctx: &RequestCtx) -> Option<u64> {
    match &pool.config.hash_key {
        HashKey::Header(h) => session
            .req_header()
            .headers
            .get(h.as_str())
            .map(|v| hash_bytes(v.as_bytes())),
        HashKey::User => ctx.principal.as_ref().map(|p| {
            let who = if p.user.is_empty() {
                &p.tenant
            } else {
                &p.user
            };
            hash_bytes(who.as_bytes())
        }),
        HashKey::PromptPrefix(n) => {
            let prompt = &ctx.plan.prompt;
            (!prompt.is_empty()).then(|| hash_bytes(&prompt[..prompt.len().min(*n)]))
        }
    }
}

/// Rewrites the body when this pool renames the model differently from the last attempt's.
fn set_body_for(pool: &Pool, ctx: &mut RequestCtx) -> Result<()> {
    let model = pool_model(pool, &ctx.plan.route_model).to_string();
    if model == ctx.plan.sent_model {
        return Ok(());
    }
    let plan = &ctx.plan;
    let new = match &plan.multipart_model {
        Some(r) => super::request::multipart_for_model(&plan.client_body, Some(r.clone()), &model),
        None => {
            let Some(head) = &plan.json else {
                return Ok(());
            };
            // the kept body already went through the first rewrite: compare with what it says
            let head = crate::openai::RequestHead {
                model: Some(plan.body_model.clone()),
                ..head.clone()
            };
            let body = &plan.client_body;
            let (obj, _) =
                inspect_request(body).map_err(|_| Error::explain(InternalError, "body changed"))?;
            rewrite_request(&obj, &head, &model).map_or(body.clone(), Bytes::from)
        }
    };
    if let Some(shared) = &ctx.shared {
        shared.set_body(new);
    }
    ctx.plan.sent_model = model;
    Ok(())
}

/// Part of an upload's streamed tail went out: nothing is left to send it again from.
fn replayable(ctx: &RequestCtx) -> bool {
    !ctx.shared.as_ref().is_some_and(|s| s.tail_started())
}

fn backoff(attempts: u32, start: Instant) -> Duration {
    let exp = BASE_BACKOFF * (1u32 << attempts.saturating_sub(1).min(5));
    let jitter =
        0.5 + (crate::balance::mix(start.elapsed().as_nanos() as u64) % 1000) as f64 / 2000.0;
    exp.mul_f64(jitter).min(MAX_BACKOFF)
}

fn current(ctx: &RequestCtx) -> Option<(&Pool, usize)> {
    let pool = ctx.snap.pools.get(ctx.pool?)?;
    Some((pool, ctx.backend?))
}

/// Counts one finished attempt in `llmedge_upstream_attempts_total`.
pub fn record(gw: &Gateway, ctx: &RequestCtx, outcome: &str) {
    if let Some((pool, b)) = current(ctx) {
        let backend = pool.backend(b).map_or("", |u| u.authority.as_str());
        gw.metrics
            .attempts
            .with_label_values(&[pool.name(), backend, outcome])
            .inc();
    }
}

fn retry_if_possible(
    gw: &Gateway,
    ctx: &RequestCtx,
    mut e: Box<Error>,
    reason: &str,
) -> Box<Error> {
    let again = has_next(ctx, Instant::now());
    if again {
        gw.metrics
            .retries
            .with_label_values(&[ctx.pool_name(), reason])
            .inc();
    }
    e.set_retry(again);
    e
}

/// Connecting failed: nothing was sent, so the backend is ejected and another one is tried.
pub fn connect_failed(gw: &Gateway, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
    let gerr = classify(&e);
    record(gw, ctx, gerr.label());
    eject(ctx);
    ctx.plan.last_error = Some(gerr);
    retry_if_possible(gw, ctx, e, "connect")
}

/// A failure after connecting. Before any response header it is retried (a stale pooled
/// connection on the same backend, anything else elsewhere); after, never.
pub fn failed_while_proxying(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    if matches!(e.etype(), HTTPStatus(_)) && ctx.status == 0 {
        return e; // a status retry decided in `status_received`
    }
    let cause = ctx.cause(&e);
    if let Cause::Refused(_) = cause {
        // the gateway stopped the client's upload: no backend's fault, nothing to retry with
        record(gw, ctx, "client_refused");
        e.set_retry(false);
        return e;
    }
    if let Cause::Timeout(kind) = cause {
        let gerr = timeout_error(kind);
        record(gw, ctx, gerr.label());
        // the backend was slow; the gateway ending its streams, or a client still uploading,
        // is not that
        let uploading = ctx.shared.as_ref().is_some_and(|s| s.uploading());
        if kind != TimeoutKind::Shutdown && !uploading {
            eject(ctx);
        }
        e.set_retry(false);
        return e;
    }
    let started = ctx.status != 0 || session.response_written().is_some();
    if started || cause == Cause::ClientGone {
        if !started {
            record(gw, ctx, "client_closed");
        }
        e.set_retry(false);
        return e;
    }
    if client_reused && matches!(e.retry, RetryType::ReusedOnly) && replayable(ctx) {
        // the backend closed an idle pooled connection as we reused it: not its fault
        ctx.plan.retry_same = true;
        record(gw, ctx, "stale_connection");
        e.set_retry(true);
        return e;
    }
    let gerr = classify(&e);
    record(gw, ctx, gerr.label());
    eject(ctx);
    ctx.plan.last_error = Some(gerr);
    retry_if_possible(gw, ctx, e, "reset")
}

/// The upstream's status is known before anything reaches the client: 429 holds the backend for
/// its `Retry-After`, 5xx ejects it, and 429/502/503/504 move the request elsewhere if possible.
pub fn status_received(gw: &Gateway, resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let code = resp.status.as_u16();
    let now = Instant::now();
    let Some((pool, b)) = current(ctx) else {
        return Ok(());
    };
    if matches!(code, 401 | 403) {
        // the upstream refused the pool's credentials: not the client's fault, and its message
        // may quote part of the pool key
        tracing::warn!(request_id = %ctx.request_id, pool = %pool.name(), status = code, "upstream rejected the pool credentials");
        record(gw, ctx, "status_4xx");
        ctx.plan.last_error = Some(GatewayError::UpstreamAuth);
        let mut e = Error::explain(HTTPStatus(502), "upstream rejected the pool credentials");
        e.set_retry(has_next(ctx, now));
        return Err(e);
    }
    match code {
        429 => {
            let after = parse_retry_after(resp.headers.get("retry-after").map(|v| v.as_bytes()));
            pool.with_health(b, |h| h.hold(now, after.unwrap_or(DEFAULT_HOLD)));
        }
        500..=599 => {
            pool.with_health(b, |h| h.eject(now));
        }
        _ => return Ok(()),
    }
    if !matches!(code, 429 | 502 | 503 | 504) || !has_next(ctx, now) {
        return Ok(()); // nowhere else to go: the client gets the upstream's answer
    }
    let reason = if code == 429 {
        "status_429"
    } else {
        "status_5xx"
    };
    gw.metrics
        .retries
        .with_label_values(&[pool.name(), reason])
        .inc();
    record(gw, ctx, reason);
    ctx.plan.last_error = Some(GatewayError::UpstreamStatus(code));
    let mut e = Error::explain(HTTPStatus(code), "retryable upstream status");
    e.set_retry(true);
    Err(e)
}

fn eject(ctx: &RequestCtx) {
    if let Some((pool, b)) = current(ctx) {
        let cooldown = pool.with_health(b, |h| h.eject(Instant::now()));
        tracing::debug!(request_id = %ctx.request_id, pool = %pool.name(), backend = b, ?cooldown, "backend ejected");
    }
}

pub fn timeout_error(kind: TimeoutKind) -> GatewayError {
    match kind {
        TimeoutKind::FirstByte => GatewayError::FirstByteTimeout,
        TimeoutKind::Idle => GatewayError::IdleTimeout,
        TimeoutKind::Total => GatewayError::TotalTimeout,
        TimeoutKind::Shutdown => GatewayError::ShuttingDown,
    }
}

/// The attempt ended with a response: record it and forgive the backend on success.
pub fn finished(gw: &Gateway, ctx: &RequestCtx) {
    let Some((pool, b)) = current(ctx) else {
        return;
    };
    if ctx.status == 0 || ctx.error.is_some() {
        return;
    }
    if (200..300).contains(&ctx.status) {
        pool.with_health(b, |h| h.on_success());
        if let Some(t) = ctx.plan.attempt_start {
            pool.observe_service(b, t.elapsed());
        }
    }
    let outcome = match ctx.status {
        200..=399 => "ok",
        429 => "status_429",
        400..=499 => "status_4xx",
        _ => "status_5xx",
    };
    record(gw, ctx, outcome);
}
