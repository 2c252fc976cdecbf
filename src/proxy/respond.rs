//! Local responses written by the gateway itself, always JSON with a `Content-Length`.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::errors::GatewayError;
use crate::limits::fmt_reset;

/// Sends an OpenAI-shaped error and records it on the context; returns `Ok(true)` (handled).
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, e: GatewayError) -> Result<bool> {
    let status = e.status().as_u16();
    let body = e.body_for(ctx.api);
    ctx.error = Some(e);
    json(session, ctx, status, &body).await
}

pub async fn json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: &[u8],
) -> Result<bool> {
    write(session, ctx, status, body).await?;
    Ok(true)
}

/// Writes a complete JSON response; used before and instead of proxying.
pub async fn write(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: &[u8],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if !ctx.request_id.is_empty() {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    if status == 401 {
        resp.insert_header("www-authenticate", "Bearer")?;
    }
    rate_headers(&mut resp, ctx)?;
    cors_headers(&mut resp, ctx)?;
    match &ctx.error {
        Some(
            GatewayError::RateLimited { retry_after_ms, .. }
            | GatewayError::UpstreamPaused { retry_after_ms, .. },
        ) => {
            // OpenAI's SDKs read retry-after-ms first, then retry-after (whole seconds)
            resp.insert_header(
                "retry-after",
                retry_after_ms.div_ceil(1000).max(1).to_string(),
            )?;
            resp.insert_header("retry-after-ms", retry_after_ms.to_string())?;
        }
        Some(GatewayError::MethodNotAllowed { allow, .. }) => {
            resp.insert_header("allow", *allow)?;
        }
        Some(GatewayError::StateUnavailable) => {
            resp.insert_header("retry-after", "1")?;
        }
        Some(GatewayError::QuotaExceeded { .. }) => {
            // retrying cannot help until the window turns; the SDKs honour this header
            resp.insert_header("x-should-retry", "false")?;
        }
        _ => {}
    }
    ctx.status = Some(status);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(bytes::Bytes::copy_from_slice(body)), true)
        .await?;
    Ok(())
}

/// OpenAI's `x-ratelimit-*` headers for the limits that apply to this request.
pub fn rate_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(h) = ctx.rate_headers else {
        return Ok(());
    };
    for (suffix, trio) in [("requests", h.requests), ("tokens", h.tokens)] {
        let Some(t) = trio else { continue };
        resp.insert_header(format!("x-ratelimit-limit-{suffix}"), t.limit.to_string())?;
        resp.insert_header(
            format!("x-ratelimit-remaining-{suffix}"),
            t.remaining.to_string(),
        )?;
        resp.insert_header(format!("x-ratelimit-reset-{suffix}"), fmt_reset(t.reset))?;
    }
    Ok(())
}

/// Response headers a browser reads, from `server.cors`: clients may see these headers besides
/// the CORS-safelisted ones.
const CORS_EXPOSED: &str = "x-request-id, retry-after, retry-after-ms, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens";
/// Request headers a browser may send when the preflight does not list its own.
const CORS_DEFAULT_HEADERS: &str = "authorization, api-key, content-type, x-request-id, x-llmedge-pool, openai-organization, openai-project";

/// CORS headers for an allowed origin (set on the context by `request::execute`).
pub fn cors_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(origin) = &ctx.cors_origin else {
        return Ok(());
    };
    resp.insert_header("access-control-allow-origin", origin.as_str())?;
    resp.insert_header("access-control-expose-headers", CORS_EXPOSED)?;
    resp.append_header("vary", "Origin")?;
    Ok(())
}

/// Answers a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) with 204: with the
/// allow headers when the origin is allowed, without them (so the browser refuses) when not.
pub async fn preflight(
    session: &mut Session,
    ctx: &mut RequestCtx,
    max_age_secs: u64,
) -> Result<bool> {
    let mut resp = ResponseHeader::build(204, Some(8))?;
    if !ctx.request_id.is_empty() {
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    }
    if let Some(origin) = &ctx.cors_origin {
        let asked = session
            .req_header()
            .headers
            .get("access-control-request-headers")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
            })
            .map(str::to_string);
        resp.insert_header("access-control-allow-origin", origin.as_str())?;
        resp.insert_header("access-control-allow-methods", "GET, POST, OPTIONS")?;
        resp.insert_header(
            "access-control-allow-headers",
            asked.unwrap_or_else(|| CORS_DEFAULT_HEADERS.to_string()),
        )?;
        resp.insert_header("access-control-max-age", max_age_secs.to_string())?;
    }
    resp.append_header("vary", "Origin")?;
    resp.append_header("vary", "Access-Control-Request-Method")?;
    resp.append_header("vary", "Access-Control-Request-Headers")?;
    resp.insert_header("content-length", "0")?;
    ctx.status = Some(204);
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}
