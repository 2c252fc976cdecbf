//! Local responses written by the gateway itself, always JSON with a `Content-Length`.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::errors::GatewayError;

/// Sends an OpenAI-shaped error and records it on the context; returns `Ok(true)` (handled).
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, e: GatewayError) -> Result<bool> {
    let status = e.status().as_u16();
    let body = e.body();
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
    ctx.status = status;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(bytes::Bytes::copy_from_slice(body)), true)
        .await?;
    Ok(())
}
