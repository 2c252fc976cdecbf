//! The end of every request: metrics and exactly one JSON access-log line. Never a key.

use std::io::Write;

use pingora::prelude::*;
use pingora::ErrorSource;
use serde_json::json;

use super::ctx::RequestCtx;
use super::failure::CLIENT_CLOSED;
use super::Gateway;

pub fn finish(gw: &Gateway, e: Option<&Error>, ctx: &mut RequestCtx) {
    let timed_out = ctx.shared.as_ref().and_then(|s| s.fired()).is_some();
    if e.is_some_and(|e| matches!(e.esource(), ErrorSource::Downstream)) && !timed_out {
        ctx.client_gone = true;
    }
    let status = if ctx.client_gone {
        CLIENT_CLOSED
    } else if ctx.status != 0 {
        ctx.status
    } else {
        ctx.error.as_ref().map_or(500, |e| e.status().as_u16())
    };
    let elapsed = ctx.start.elapsed();
    let route = ctx.route_name().to_string();
    let pool = ctx.pool_name().to_string();
    let m = &gw.metrics;
    m.requests
        .with_label_values(&[route.as_str(), pool.as_str(), &status.to_string()])
        .inc();
    m.duration
        .with_label_values(&[route.as_str(), pool.as_str()])
        .observe(elapsed.as_secs_f64());
    if let Some(t) = ctx.ttft {
        m.ttft
            .with_label_values(&[route.as_str(), pool.as_str()])
            .observe(t.as_secs_f64());
    }
    if let Some(err) = ctx.error.as_ref().filter(|e| e.is_upstream()) {
        m.upstream_errors
            .with_label_values(&[pool.as_str(), err.label()])
            .inc();
    }
    let model_label = ctx.client_model.as_deref().map(|mdl| m.model_label(mdl));
    if let (Some(u), Some(p), Some(model)) = (ctx.usage, &ctx.principal, &model_label) {
        m.tokens
            .with_label_values(&[&*p.tenant, model.as_str(), "prompt"])
            .inc_by(u.prompt_tokens);
        m.tokens
            .with_label_values(&[&*p.tenant, model.as_str(), "completion"])
            .inc_by(u.completion_tokens);
    }
    drop(ctx.inflight.take());
    access_line(ctx, status, elapsed, &route, &pool);
}

fn access_line(
    ctx: &RequestCtx,
    status: u16,
    elapsed: std::time::Duration,
    route: &str,
    pool: &str,
) {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let backend = ctx
        .pool
        .zip(ctx.backend)
        .and_then(|(p, b)| ctx.snap.pools.get(p)?.backend(b))
        .map(|b| b.authority.as_str());
    let line = json!({
        "ts": chrono_like_now(),
        "request_id": ctx.request_id,
        "tenant": ctx.principal.as_ref().map(|p| &*p.tenant),
        "user": ctx.principal.as_ref().map(|p| &*p.user),
        "key": ctx.principal.as_ref().map(|p| p.key_index),
        "model": ctx.client_model,
        "route": route,
        "pool": pool,
        "backend": backend,
        "stream": ctx.stream,
        "status": status,
        "error": ctx.error.as_ref().map(|e| e.label()),
        "ttfb_ms": ctx.ttfb.map(ms),
        "ttft_ms": ctx.ttft.map(ms),
        "duration_ms": ms(elapsed),
        "prompt_tokens": ctx.usage.map(|u| u.prompt_tokens),
        "completion_tokens": ctx.usage.map(|u| u.completion_tokens),
        "cached_tokens": ctx.usage.and_then(|u| u.prompt_tokens_details?.cached_tokens),
    });
    let mut out = std::io::stdout().lock();
    // a full or closed stdout must not take the request path down with it
    let _ignored = writeln!(out, "{line}");
}

/// RFC 3339 UTC timestamp with milliseconds, without a date crate.
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
