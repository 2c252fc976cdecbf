//! Request side: dispatch, auth, bounded body read, route, rewrite; the upstream peer and header.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::{request_id, Endpoint, InflightGuard, Plan, RequestCtx};
use super::preset::{self, Shared};
use super::{attempt, respond, Gateway};
use crate::auth::KeyEntry;
use crate::errors::GatewayError;
use crate::limits::Ask;
use crate::openai::{inspect_request, rewrite_request};
use crate::router;

/// Client headers that carry credentials or billing choices meant for the gateway, never for an
/// upstream that is called with the pool's own key.
const CLIENT_CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
    "cookie",
];
/// No request reserves more completion tokens than this, whatever `max_tokens` says.
const MAX_COMPLETION_RESERVE: u64 = 10_000_000;
/// A client may pin a pool its key allows with this header.
pub const PIN_HEADER: &str = "x-llmedge-pool";

pub async fn execute(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    ctx.request_id = request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
    let method = req.method.clone();
    let path = req.uri.path().to_string();
    if let Some(cors) = &ctx.snap.config.server.cors {
        if let Some(origin) = req.headers.get(http::header::ORIGIN) {
            ctx.cors_origin = cors
                .allow(origin.as_bytes())
                .map(|o| String::from_utf8_lossy(o).into_owned());
        }
        let preflight = method == Method::OPTIONS
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let max_age = cors.max_age_secs;
            return respond::preflight(session, ctx, max_age).await;
        }
    }
    let endpoint = match path.as_str() {
        "/healthz" => return respond::json(session, ctx, 200, br#"{"status":"ok"}"#).await,
        "/readyz" => {
            let (status, body) = ctx.snap.readiness();
            return respond::json(session, ctx, status, &body).await;
        }
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

/// Authenticates, reads and rewrites the body, and plans where the attempts go.
async fn prepare(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let snap = ctx.snap.clone();
    let key = snap.keys.authenticate(&session.req_header().headers)?;
    ctx.principal = Some(key.principal.clone());
    let body = read_body(session, snap.config.server.max_body_bytes, &ctx.request_id).await?;
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
    let route_chain = std::iter::once(route.pool).chain(route.fallbacks.iter().copied());
    let chain: Vec<usize> = match session.req_header().headers.get(PIN_HEADER) {
        None => route_chain.collect(),
        // a pin chooses among the pools that serve this model, never around the route
        Some(v) => {
            let name = String::from_utf8_lossy(v.as_bytes()).into_owned();
            let pinned = route_chain
                .clone()
                .find(|&p| snap.pools.get(p).is_some_and(|pool| pool.name() == name));
            match pinned {
                Some(p) if key.may_pin(p) => vec![p],
                _ => return Err(GatewayError::PoolNotAllowed(name)),
            }
        }
    };
    let first = snap.pools.get(chain[0]).ok_or(GatewayError::Internal)?;
    let sent_model = attempt::pool_model(first, resolved.upstream_model).to_string();
    let upstream_body = rewrite_request(&obj, &head, &sent_model).map_or(body.clone(), Bytes::from);
    let prompt = ["messages", "prompt", "input"]
        .iter()
        .find_map(|f| obj.get(f))
        .map_or_else(Bytes::new, |v| body.slice_ref(v.get().as_bytes()));
    let max_completion = match ctx.endpoint {
        Some(Endpoint::Embeddings) => 0,
        _ => ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|f| obj.get(f)?.get().parse::<u64>().ok())
            .unwrap_or(snap.config.server.default_max_tokens)
            .min(MAX_COMPLETION_RESERVE),
    };
    drop(obj);
    // characters/4 of the prompt's JSON text: cheap, and over- rather than under-estimates
    ctx.prompt_estimate = (prompt.len() as u64).div_ceil(4);
    ctx.completion_reserve = max_completion;
    admit(gw, ctx, key, &model, max_completion)?;
    ctx.route = Some(resolved.route);
    ctx.pool = Some(chain[0]);
    ctx.stream = head.stream;
    ctx.strip_usage = head.stream && !head.client_include_usage;
    ctx.plan = Plan {
        chain,
        route_model: resolved.upstream_model.to_string(),
        sent_model,
        client_body: body,
        prompt,
        ..Plan::default()
    };
    ctx.client_model = Some(model);
    ctx.inflight = Some(InflightGuard::new(
        gw.metrics.inflight.with_label_values(&[first.name()]),
    ));
    // a client that stops reading must not hold its slots forever: each write to it may take
    // at most the pool's idle limit
    session.set_write_timeout(Some(first.config.timeouts.idle));
    let shared = Shared::new(upstream_body, ctx.start + first.config.timeouts.total);
    ctx.preset_slot = Some(preset::wrap(
        &mut session.downstream_session,
        shared.clone(),
        gw.drain.subscribe(),
    ));
    ctx.shared = Some(shared);
    Ok(())
}

/// Reserves the request against every limit and budget of its key and tenant.
fn admit(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    key: &KeyEntry,
    model: &str,
    completion: u64,
) -> Result<(), GatewayError> {
    // counters live in the newest snapshot: a request that started before a reload is
    // admitted there, under the new limits, unless the reload removed its key
    let current = gw.state.load_full();
    let moved = if Arc::ptr_eq(&current, &ctx.snap) {
        None
    } else {
        current
            .same_key(&ctx.snap, key.principal.key_index)
            .filter(|&i| current.config.keys.get(i).is_some())
    };
    let (gov, key) = match moved {
        Some(i) => (current.clone(), &current.config.keys[i]),
        None => (ctx.snap.clone(), key),
    };
    let ask = Ask {
        key,
        model,
        prompt: ctx.prompt_estimate,
        completion,
    };
    match gov.governor.admit(&ask) {
        Ok(adm) => {
            ctx.rate_headers = Some(adm.headers);
            ctx.admitted = Some((gov, adm));
            Ok(())
        }
        Err(denied) => {
            gw.metrics
                .ratelimited
                .with_label_values(&[&*key.principal.tenant, denied.kind.label()])
                .inc();
            ctx.rate_headers = Some(denied.headers);
            Err(denied.to_error())
        }
    }
}

/// Reads the whole body, refusing it as soon as it passes `max` bytes.
async fn read_body(
    session: &mut Session,
    max: usize,
    request_id: &str,
) -> Result<Bytes, GatewayError> {
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
            tracing::debug!(request_id, error = %e, "reading request body failed");
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
    upstream.remove_header(PIN_HEADER);
    // we must read the response to rewrite it, so ask for it uncompressed (an absent
    // Accept-Encoding would allow any encoding, RFC 9110 section 12.5.3)
    upstream.insert_header("accept-encoding", "identity")?;
    upstream.remove_header("expect");
    upstream.remove_header("transfer-encoding");
    let body_len = ctx.shared.as_ref().map_or(0, |s| s.body_len());
    upstream.insert_header("content-length", body_len.to_string())?;
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
