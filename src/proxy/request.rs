//! Request side: dispatch, auth, bounded body read, route, rewrite; the upstream peer and header.

use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use super::ctx::{request_id, Endpoint, InflightGuard, RequestCtx};
use super::{preset, respond, Gateway};
use crate::errors::GatewayError;
use crate::openai::{inspect_request, rewrite_request};
use crate::router;

/// Client headers that carry credentials meant for the gateway, never for an upstream.
const CLIENT_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "api-key", "x-api-key"];

pub async fn execute(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    ctx.request_id = request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
    let method = req.method.clone();
    let path = req.uri.path().to_string();
    let endpoint = match path.as_str() {
        "/healthz" => return respond::json(session, ctx, 200, br#"{"status":"ok"}"#).await,
        "/readyz" => return respond::json(session, ctx, 200, br#"{"status":"ready"}"#).await,
        "/v1/models" if method == Method::GET => {
            return list_models(session, ctx).await;
        }
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/models" => return method_not_allowed(session, ctx, method, path).await,
        _ => {
            let e = GatewayError::UnknownPath {
                method: method.to_string(),
                path,
            };
            return respond::error(session, ctx, e).await;
        }
    };
    if method != Method::POST {
        return method_not_allowed(session, ctx, method, path).await;
    }
    ctx.endpoint = Some(endpoint);
    match prepare(gw, session, ctx).await {
        Ok(()) => Ok(false),
        Err(e) => respond::error(session, ctx, e).await,
    }
}

async fn method_not_allowed(
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: Method,
    path: String,
) -> Result<bool> {
    let e = GatewayError::MethodNotAllowed {
        method: method.to_string(),
        path,
    };
    respond::error(session, ctx, e).await
}

/// Authenticates, reads and rewrites the body, and picks the backend.
async fn prepare(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let snap = ctx.snap.clone();
    let key = snap.keys.authenticate(&session.req_header().headers)?;
    ctx.principal = Some(key.principal.clone());
    let body = read_body(session, snap.config.server.max_body_bytes).await?;
    let (obj, head) = inspect_request(&body)?;
    let model = match (&head.model, &snap.config.default_model) {
        (Some(m), _) => m.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => return Err(GatewayError::MissingModel),
    };
    let resolved = router::resolve(&snap.config.routes, &model)
        .ok_or_else(|| GatewayError::UnknownModel(model.clone()))?;
    if !key.allows(&model) {
        return Err(GatewayError::ModelNotAllowed(model));
    }
    let route = &snap.config.routes[resolved.route];
    let pool = snap.pools.get(route.pool).ok_or(GatewayError::Internal)?;
    let rewritten = rewrite_request(&obj, &head, resolved.upstream_model);
    let upstream_body = rewritten.map_or(body.clone(), Bytes::from);
    drop(obj);
    ctx.route = Some(resolved.route);
    ctx.pool = Some(route.pool);
    ctx.backend = Some(pool.pick());
    ctx.stream = head.stream;
    ctx.strip_usage = head.stream && !head.client_include_usage;
    ctx.client_model = Some(model);
    ctx.body_len = upstream_body.len();
    ctx.inflight = Some(InflightGuard::new(
        gw.metrics.inflight.with_label_values(&[pool.name()]),
    ));
    ctx.preset_slot = Some(preset::wrap(&mut session.downstream_session, upstream_body));
    Ok(())
}

/// Reads the whole body, refusing it as soon as it passes `max` bytes.
async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, GatewayError> {
    let too_large = GatewayError::BodyTooLarge { limit: max };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        session.set_keepalive(None); // do not drain what we refused to read
        return Err(too_large);
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::Internal)?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max));
    loop {
        let chunk = session.read_request_body().await.map_err(|e| {
            tracing::debug!(error = %e, "reading request body failed");
            GatewayError::InvalidJson("the request body could not be read".into())
        })?;
        let Some(chunk) = chunk else { break };
        if buf.len() + chunk.len() > max {
            session.set_keepalive(None);
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn list_models(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let snap = ctx.snap.clone();
    let key = match snap.keys.authenticate(&session.req_header().headers) {
        Ok(k) => k,
        Err(e) => return respond::error(session, ctx, e).await,
    };
    ctx.principal = Some(key.principal.clone());
    let body = crate::models::list(&snap, key).await;
    respond::json(session, ctx, 200, &body).await
}

/// The peer for the chosen backend; resolution failures become OpenAI errors via `fail_to_proxy`.
pub async fn peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let (Some(pool), Some(backend)) = (ctx.pool, ctx.backend) else {
        return Err(Error::explain(InternalError, "no route chosen"));
    };
    let pool = ctx
        .snap
        .pools
        .get(pool)
        .ok_or_else(|| Error::explain(InternalError, "pool vanished"))?;
    let addr = match pool.resolve(backend).await {
        Ok(a) => a,
        Err(e) => {
            ctx.error = Some(e);
            return Err(Error::explain(
                ConnectNoRoute,
                "backend host does not resolve",
            ));
        }
    };
    let peer = pool
        .peer(backend, addr)
        .map_err(|_| Error::explain(InternalError, "backend vanished"))?;
    Ok(Box::new(peer))
}

/// Strips client credentials, injects the pool's key, and points path and `Host` at the backend.
pub fn rewrite_upstream_header(
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
    // we must read the response to rewrite it, so ask for it uncompressed
    upstream.remove_header("accept-encoding");
    upstream.remove_header("expect");
    upstream.remove_header("transfer-encoding");
    upstream.insert_header("content-length", ctx.body_len.to_string())?;
    upstream.insert_header("host", b.authority.as_str())?;
    upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(key) = &pool.config.api_key {
        upstream.insert_header("authorization", format!("Bearer {}", key.expose()))?;
    }
    if !b.base_path.is_empty() {
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

/// Hands the real downstream session back; must run before Pingora finishes the session.
pub fn unwrap_body(session: &mut Session, ctx: &mut RequestCtx) {
    if let Some(slot) = ctx.preset_slot.take() {
        preset::unwrap(&mut session.downstream_session, &slot);
    }
}
