//! The end of every request: metrics and exactly one JSON access-log line. Never a key.

use std::io::Write;

use pingora::prelude::*;

use super::ctx::{Cause, RequestCtx, ResponseMode};
use super::failure::CLIENT_CLOSED;
use super::Gateway;
use crate::openai::Usage;

pub fn finish(gw: &Gateway, e: Option<&Error>, ctx: &mut RequestCtx) {
    if e.is_some_and(|e| ctx.cause(e) == Cause::ClientGone) {
        ctx.client_gone = true;
    }
    let status = if ctx.client_gone {
        CLIENT_CLOSED
    } else if let Some(s) = ctx.status {
        s
    } else {
        ctx.error.as_ref().map_or(500, |e| e.status().as_u16())
    };
    let elapsed = ctx.start.elapsed();
    // labels borrow the pinned snapshot, not the context that settlement mutates below
    let snap = ctx.snap.clone();
    let route = if ctx.passthrough {
        "passthrough"
    } else {
        snap.route_label(ctx.route())
    };
    let pool = snap.pool_label(ctx.pool);
    let m = &gw.metrics;
    let status_label = status.to_string();
    m.requests
        .with_label_values(&[route, pool, &status_label])
        .inc();
    if let Some(endpoint) = endpoint_of(ctx) {
        m.endpoint_requests
            .with_label_values(&[endpoint, pool, &status_label])
            .inc();
    }
    m.duration
        .with_label_values(&[route, pool])
        .observe(elapsed.as_secs_f64());
    if let Some(t) = ctx.ttft {
        m.ttft
            .with_label_values(&[route, pool])
            .observe(t.as_secs_f64());
    }
    if let Some(err) = ctx.error.as_ref().filter(|e| e.is_upstream()) {
        m.upstream_errors
            .with_label_values(&[pool, err.label()])
            .inc();
    }
    let model_label = ctx.client_model().map(|mdl| m.model_label(mdl));
    let cost = settle(gw, ctx, model_label.as_deref());
    if let (Some(u), Some(p), Some(model)) = (ctx.usage, &ctx.principal, &model_label) {
        m.tokens
            .with_label_values(&[&*p.tenant, model.as_str(), "prompt"])
            .inc_by(u.prompt_tokens);
        m.tokens
            .with_label_values(&[&*p.tenant, model.as_str(), "completion"])
            .inc_by(u.completion_tokens);
    }
    drop(ctx.inflight.take());
    remember_response(gw, ctx, status);
    if let Some(ledger) = gw.state.ledger() {
        if let Some(e) = ledger_entry(ctx, status, elapsed, (route, pool), cost) {
            ledger.record(e);
        }
    }
    access_line(ctx, status, elapsed, route, pool);
}

/// The ledger row of an authenticated request (`None` before authentication); `cost` is what
/// settlement charged.
fn ledger_entry(
    ctx: &RequestCtx,
    status: u16,
    elapsed: std::time::Duration,
    (route, pool): (&str, &str),
    cost: f64,
) -> Option<crate::ledger::Entry> {
    let p = ctx.principal.as_ref()?;
    let u = ctx.usage.unwrap_or_default();
    Some(crate::ledger::Entry {
        id: String::new(),
        request_id: ctx.request_id.clone(),
        ts_ms: crate::clock::Clock::now_ms(&crate::clock::SystemClock),
        tenant: p.tenant.clone(),
        user: p.user.clone(),
        key_id: p.key_id.clone(),
        model: ctx
            .client_model()
            .or(ctx.asked.as_ref().map(|a| a.0.as_str()))
            .unwrap_or_default()
            .to_string(),
        route: route.to_string(),
        pool: pool.to_string(),
        backend: backend_of(ctx).unwrap_or_default().to_string(),
        endpoint: ctx
            .routed
            .as_ref()
            .map(|r| r.endpoint)
            .or(ctx.asked.as_ref().map(|a| a.1))
            .map_or("", |e| e.name()),
        stream: ctx.routed.as_ref().is_some_and(|r| r.stream),
        status,
        error: ctx.error.as_ref().map(|e| e.label()),
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0),
        cost_micros: crate::ledger::micros(cost),
        ttft_ms: ctx.ttft.map(|t| t.as_millis() as u64),
        duration_ms: elapsed.as_millis() as u64,
    })
}

/// The endpoint a request was for: `passthrough`, or the model-routed endpoint once known
/// (also for a request refused before routing finished).
fn endpoint_of(ctx: &RequestCtx) -> Option<&'static str> {
    if ctx.passthrough {
        return Some("passthrough");
    }
    ctx.routed
        .as_ref()
        .map(|r| r.endpoint)
        .or(ctx.asked.as_ref().map(|(_, e)| *e))
        .map(crate::endpoint::Endpoint::name)
}

/// A Responses answer is remembered with the backend that made it, for the requests that
/// continue it (`previous_response_id`).
fn remember_response(gw: &Gateway, ctx: &RequestCtx, status: u16) {
    let Some(id) = ctx
        .response_id
        .as_deref()
        .filter(|_| (200..300).contains(&status))
    else {
        return;
    };
    let Some(pool) = ctx.pool.and_then(|p| ctx.snap.pools.get(p)) else {
        return;
    };
    if let Some(backend) = ctx.backend.and_then(|b| pool.id(b)) {
        gw.affinity
            .insert(id, pool.name(), backend, std::time::Instant::now());
    }
}

fn backend_of(ctx: &RequestCtx) -> Option<&str> {
    ctx.pool
        .zip(ctx.backend)
        .and_then(|(p, b)| ctx.snap.pools.get(p)?.backend(b))
        .map(|b| b.authority.as_str())
}

/// Replaces the admission reservation by what was used: the upstream's usage, or for a stream
/// cut short, the prompt estimate and one token per streamed choice.
fn settle(gw: &Gateway, ctx: &mut RequestCtx, model_label: Option<&str>) -> f64 {
    let Some(adm) = ctx.admitted.take() else {
        return 0.0;
    };
    let (prompt, reserve) = ctx
        .routed
        .as_ref()
        .map_or((0, 0), |r| (r.prompt_estimate, r.completion_reserve));
    let estimate = |completion: u64| Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: None,
    };
    let dispatched = ctx.plan.attempt_start.is_some();
    let answered = ctx.status.is_some_and(|s| (200..300).contains(&s));
    let used = ctx.usage.unwrap_or_else(|| match &ctx.response {
        ResponseMode::Sse(rw) if rw.choice_events() > 0 => estimate(rw.choice_events()),
        // the upstream worked (or may still be working) and said nothing about usage:
        // charge the reservation rather than nothing
        _ if dispatched && (answered || ctx.client_gone) => estimate(reserve),
        _ => Usage::default(),
    });
    if ctx.usage.is_none() && used.completion_tokens > 0 {
        ctx.usage = Some(used); // reported as what was charged
    }
    // the reservation settles in the cells it was made in, whatever reloads came since
    let cost = gw.state.settle(adm, used);
    if let (Some(p), Some(model), true) = (&ctx.principal, model_label, cost > 0.0) {
        gw.metrics
            .spend
            .with_label_values(&[&*p.tenant, model])
            .inc_by(cost);
    }
    cost
}

/// One access-log line; field order is the documented one.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    ts: String,
    request_id: &'a str,
    tenant: Option<&'a str>,
    user: Option<&'a str>,
    key: Option<usize>,
    /// The key's stable id: a digest prefix (file key) or `key_…` (store key); never the key.
    key_id: Option<&'a str>,
    model: Option<&'a str>,
    /// `chat`, `messages`, … or `passthrough`.
    endpoint: Option<&'static str>,
    route: &'a str,
    pool: &'a str,
    backend: Option<&'a str>,
    stream: bool,
    status: u16,
    error: Option<&'static str>,
    ttfb_ms: Option<f64>,
    ttft_ms: Option<f64>,
    duration_ms: f64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    /// Share of the prompt the chosen backend already held (`balance: cache_aware`).
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix_match: Option<f64>,
    /// `previous_response_id` affinity: hit | fallback | unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity: Option<&'static str>,
}

fn access_line(
    ctx: &RequestCtx,
    status: u16,
    elapsed: std::time::Duration,
    route: &str,
    pool: &str,
) {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let line = AccessLine {
        ts: crate::clock::rfc3339(crate::clock::Clock::now_ms(&crate::clock::SystemClock)),
        request_id: &ctx.request_id,
        tenant: ctx.principal.as_ref().map(|p| &*p.tenant),
        user: ctx.principal.as_ref().map(|p| &*p.user),
        key: ctx.principal.as_ref().map(|p| p.key_index),
        key_id: ctx.principal.as_ref().map(|p| &*p.key_id),
        model: ctx.client_model(),
        endpoint: endpoint_of(ctx),
        route,
        pool,
        backend: backend_of(ctx),
        stream: ctx.routed.as_ref().is_some_and(|r| r.stream),
        status,
        error: ctx.error.as_ref().map(|e| e.label()),
        ttfb_ms: ctx.ttfb.map(ms),
        ttft_ms: ctx.ttft.map(ms),
        duration_ms: ms(elapsed),
        prompt_tokens: ctx.usage.map(|u| u.prompt_tokens),
        completion_tokens: ctx.usage.map(|u| u.completion_tokens),
        cached_tokens: ctx
            .usage
            .and_then(|u| u.prompt_tokens_details?.cached_tokens),
        prefix_match: ctx.plan.prefix_match.map(|m| (m * 1000.0).round() / 1000.0),
        affinity: ctx.plan.affinity,
    };
    let mut buf = Vec::with_capacity(512);
    if serde_json::to_writer(&mut buf, &line).is_err() {
        return;
    }
    buf.push(b'\n');
    // one write per line; a full or closed stdout must not take the request path down with it
    let _ignored = std::io::stdout().lock().write_all(&buf);
}
