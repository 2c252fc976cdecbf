//! The entry of every request: the gateway's own endpoints (health, readiness, models, CORS
//! preflights, method and path errors) are answered here; API calls go on to be prepared.

use http::Method;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::{request_id, Endpoint, RequestCtx};
use super::{prepare, respond, Gateway};
use crate::errors::GatewayError;

pub async fn execute(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    ctx.request_id = request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
    let method = req.method.clone();
    let path = req.uri.path().to_string();
    ctx.api = client_api(&path); // the shape of every error this request gets
    if let Some(max_age) = cors(session, ctx) {
        return respond::preflight(session, ctx, max_age).await;
    }
    if let Some(entry) = ctx.snap.clone().config.passthrough_for(&path) {
        return passthrough(gw, session, ctx, entry).await;
    }
    let endpoint = match path.as_str() {
        "/healthz" => return respond::json(session, ctx, 200, br#"{"status":"ok"}"#).await,
        "/readyz" => {
            // unauthenticated: says whether to send traffic here, never which routes work
            let (code, status) = gw.state.readiness();
            let body = format!(r#"{{"status":"{status}"}}"#);
            return respond::json(session, ctx, code, body.as_bytes()).await;
        }
        "/v1/models" if method == Method::GET => {
            return list_models(gw, session, ctx, None).await;
        }
        p if p.starts_with("/v1/models/") && method == Method::GET => {
            let id = percent_decode(&p["/v1/models/".len()..]);
            return list_models(gw, session, ctx, Some(id)).await;
        }
        "/v1/models" => return method_not_allowed(session, ctx, method, path).await,
        p if p.starts_with("/v1/models/") => {
            return method_not_allowed(session, ctx, method, path).await
        }
        p => match Endpoint::from_path(p) {
            Some(e) => e,
            None => {
                let e = GatewayError::UnknownPath {
                    method: method.to_string(),
                    path,
                };
                return respond::error(session, ctx, e).await;
            }
        },
    };
    if method != Method::POST {
        return method_not_allowed(session, ctx, method, path).await;
    }
    match prepare::prepare(gw, session, ctx, endpoint).await {
        Ok(prepare::Prepared::Proxy) => Ok(false),
        Ok(prepare::Prepared::Answered(body)) => respond::json(session, ctx, 200, &body).await,
        Err(e) => respond::error(session, ctx, e).await,
    }
}

/// Notes the origin `server.cors` allows; for a CORS preflight, the `max-age` to answer it
/// with.
fn cors(session: &Session, ctx: &mut RequestCtx) -> Option<u64> {
    let cors = ctx.snap.config.server.cors.as_ref()?;
    let req = session.req_header();
    if let Some(origin) = req.headers.get(http::header::ORIGIN) {
        ctx.cors_origin = cors
            .allow(origin.as_bytes())
            .map(|o| String::from_utf8_lossy(o).into_owned());
    }
    let preflight = req.method == Method::OPTIONS
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
    preflight.then_some(cors.max_age_secs)
}

/// A `passthrough:` path: proxied as it is, or refused with an OpenAI error.
async fn passthrough(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    entry: &crate::config::Passthrough,
) -> Result<bool> {
    match super::passthrough::prepare(gw, session, ctx, entry).await {
        Ok(()) => Ok(false),
        Err(e) => respond::error(session, ctx, e).await,
    }
}

/// Anthropic's paths get Anthropic's error shape (an unknown `/v1/messages/…` path too).
fn client_api(path: &str) -> crate::endpoint::Api {
    if path == "/v1/messages" || path.starts_with("/v1/messages/") {
        crate::endpoint::Api::Anthropic
    } else {
        crate::endpoint::Api::OpenAi
    }
}

/// `%2F` and friends in a model id taken from the path (`/v1/models/ollama%2Fllama3`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn method_not_allowed(
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: Method,
    path: String,
) -> Result<bool> {
    let allow = if path.starts_with("/v1/models") {
        "GET"
    } else {
        "POST"
    };
    let e = GatewayError::MethodNotAllowed {
        method: method.to_string(),
        path,
        allow,
    };
    respond::error(session, ctx, e).await
}

/// `GET /v1/models`, or `GET /v1/models/{id}` when `id` is given.
async fn list_models(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    id: Option<String>,
) -> Result<bool> {
    let snap = ctx.snap.clone();
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let key = match snap.keys.authenticate(&session.req_header().headers, now) {
        Ok(k) => k,
        Err(e) => return respond::error(session, ctx, e).await,
    };
    ctx.principal = Some(key.principal.clone());
    let sources = crate::models::Sources {
        config: &snap.config,
        pools: &snap.pools,
        cache: &gw.state.models,
    };
    let Some(id) = id else {
        let body = crate::models::list(sources, key).await;
        return respond::json(session, ctx, 200, &body).await;
    };
    match crate::models::info(sources, key, &id).await {
        Some(body) => respond::json(session, ctx, 200, &body).await,
        None => respond::error(session, ctx, GatewayError::UnknownModel(id)).await,
    }
}
