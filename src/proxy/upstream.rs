//! The upstream request header: client credentials out, the pool's key, `Host`, base path and
//! framing in.

use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::plan::PIN_HEADER;
use crate::wire::Wire;

/// Client headers that carry credentials or billing choices meant for the gateway, never for an
/// upstream that is called with the pool's own key.
const CLIENT_CREDENTIAL_HEADERS: [&str; 8] = [
    "authorization",
    "x-llmedge-upstream-key",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "cookie",
];

/// What authenticates this request to `pool`: the pool's key, the caller's own provider key
/// (`credentials: client`), or an anonymous caller's own `Authorization` header, untouched
/// (`credentials: passthrough`; a virtual-key caller there gets the pool's key, if any).
fn credentials(pool: &crate::config::PoolConfig, ctx: &RequestCtx) -> Vec<(&'static str, String)> {
    use crate::config::Credentials;
    match pool.credentials {
        Credentials::Pool => crate::upstream::auth_headers(pool),
        Credentials::Client => {
            let key = ctx.upstream_key.as_ref().map(|k| k.expose());
            crate::upstream::auth_headers_with(pool, key)
        }
        Credentials::Passthrough => match &ctx.caller_auth {
            Some(auth) => vec![("authorization", auth.expose().to_string())],
            None => crate::upstream::auth_headers(pool),
        },
    }
}

const ANTHROPIC_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// Strips client credentials, injects the pool's key, and points path and `Host` at the backend.
pub fn rewrite_header(
    session: &Session,
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let (Some(pool), Some(backend)) = (ctx.pool, ctx.backend) else {
        return Err(Error::explain(InternalError, "no route chosen"));
    };
    let pool = ctx
        .snap
        .pools
        .get(pool)
        .ok_or_else(|| Error::explain(InternalError, "pool vanished"))?;
    let b = pool
        .backend(backend)
        .ok_or_else(|| Error::explain(InternalError, "backend vanished"))?;
    for h in CLIENT_CREDENTIAL_HEADERS {
        upstream.remove_header(h);
    }
    upstream.remove_header(PIN_HEADER);
    // we must read the response to rewrite it, so ask for it uncompressed (an absent
    // Accept-Encoding would allow any encoding, RFC 9110 section 12.5.3)
    upstream.insert_header("accept-encoding", "identity")?;
    upstream.remove_header("expect");
    upstream.remove_header("transfer-encoding");
    upstream.remove_header("content-length");
    // a streamed tail of unknown length goes chunked (Pingora frames a body without a length)
    if let Some(len) = ctx.shared.as_ref().map_or(Some(0), |s| s.upstream_len()) {
        upstream.insert_header("content-length", len.to_string())?;
    }
    upstream.insert_header("host", b.authority.as_str())?;
    upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
    if ctx.plan.wire == Wire::MessagesToChat {
        // Anthropic's headers mean nothing to a chat backend
        for h in ANTHROPIC_HEADERS {
            upstream.remove_header(h);
        }
    }
    for (name, value) in credentials(&pool.config, ctx) {
        upstream.insert_header(name, value)?;
    }
    if let Some(path) = ctx.plan.wire.path() {
        // a translated request goes to the other API's path, without the client's query
        let uri: http::Uri = format!("{}{path}", b.base_path)
            .parse()
            .map_err(|_| Error::explain(InternalError, "bad upstream path"))?;
        upstream.set_uri(uri);
    } else if !b.base_path.is_empty() {
        let original = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let uri: http::Uri = format!("{}{original}", b.base_path)
            .parse()
            .map_err(|_| Error::explain(InternalError, "bad upstream path"))?;
        upstream.set_uri(uri);
    }
    Ok(())
}
