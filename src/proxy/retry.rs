//! After each failed attempt: what caused it, whether the backend is to blame (ejection,
//! `Retry-After` holds), and whether another attempt may serve the request before any byte
//! reached the client.

use std::time::{Duration, Instant};

use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::RetryType;

use super::ctx::{Cause, RequestCtx};
use super::deadline::TimeoutKind;
use super::failure::classify;
use super::plan::{has_next, replayable};
use super::Gateway;
use crate::errors::GatewayError;
use crate::upstream::health::parse_retry_after;
use crate::upstream::Pool;

/// First retry backoff; doubles per attempt, with jitter, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(20);

const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How long a backend that answered 429 without `Retry-After` is left alone.
const DEFAULT_HOLD: Duration = Duration::from_secs(1);

pub fn backoff(attempts: u32, start: Instant) -> Duration {
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
    if matches!(e.etype(), HTTPStatus(_)) && ctx.status.is_none() {
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
        let gerr = kind.error();
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
    let started = ctx.status.is_some() || session.response_written().is_some();
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
/// its `Retry-After`, 5xx ejects it, and 429/502/503/504/529 move the request elsewhere if possible.
pub fn status_received(gw: &Gateway, resp: &ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let code = resp.status.as_u16();
    let now = Instant::now();
    let Some((pool, b)) = current(ctx) else {
        return Ok(());
    };
    // a refusal of the caller's own credentials (client or passthrough pools) is theirs to see
    let pool_creds = pool.config.credentials == crate::config::Credentials::Pool;
    if pool_creds && matches!(code, 401 | 403) {
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
    // 529: Anthropic's "overloaded", its 503
    if !matches!(code, 429 | 502 | 503 | 504 | 529) || !has_next(ctx, now) {
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

pub fn eject(ctx: &RequestCtx) {
    if let Some((pool, b)) = current(ctx) {
        let now = Instant::now();
        let was_serving = pool.takes_requests(b, now);
        let cooldown = pool.with_health(b, |h| h.eject(now));
        if was_serving {
            pool.forget_prefixes(b); // whatever it cached may be gone with it
        }
        tracing::debug!(request_id = %ctx.request_id, pool = %pool.name(), backend = b, ?cooldown, "backend ejected");
    }
}

/// The attempt ended with a response: record it and forgive the backend on success.
pub fn finished(gw: &Gateway, ctx: &RequestCtx) {
    let Some((pool, b)) = current(ctx) else {
        return;
    };
    let Some(status) = ctx.status.filter(|_| ctx.error.is_none()) else {
        return;
    };
    if (200..300).contains(&status) {
        pool.with_health(b, |h| h.on_success());
        if let Some(t) = ctx.plan.attempt_start {
            pool.observe_service(b, t.elapsed());
        }
    }
    let outcome = match status {
        200..=399 => "ok",
        429 => "status_429",
        400..=499 => "status_4xx",
        _ => "status_5xx",
    };
    record(gw, ctx, outcome);
}
