//! Request side: dispatch, auth, bounded body read, route, rewrite; the upstream peer and header.

use bytes::{Bytes, BytesMut};
use http::Method;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::{request_id, Endpoint, InflightGuard, Plan, RequestCtx};
use super::preset::{self, Shared, Tail};
use super::{attempt, respond, Gateway};
use crate::auth::KeyEntry;
use crate::endpoint::StreamKind;
use crate::errors::GatewayError;
use crate::live::Admission;
use crate::multipart::Scan;
use crate::openai::{inspect_request, rewrite_request};
use crate::router;

/// Client headers that carry credentials or billing choices meant for the gateway, never for an
/// upstream that is called with the pool's own key.
const CLIENT_CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "proxy-authorization",
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
            // unauthenticated: says whether to send traffic here, never which routes work
            let (status, body) = readiness(gw.state.ready());
            return respond::json(session, ctx, status, body).await;
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
    ctx.endpoint = Some(endpoint);
    match prepare(gw, session, ctx, endpoint).await {
        Ok(()) => Ok(false),
        Err(e) => respond::error(session, ctx, e).await,
    }
}

/// The `/readyz` answer: ready unless draining.
pub fn readiness(ready: bool) -> (u16, &'static [u8]) {
    if ready {
        (200, br#"{"status":"ready"}"#)
    } else {
        (503, br#"{"status":"draining"}"#)
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

/// What routing and admission need from a request body.
struct Incoming {
    /// The client bytes read (the whole body, or a multipart upload's head).
    body: Bytes,
    model: Option<String>,
    stream: bool,
    /// Completion tokens the request may generate, from its cap field or the default.
    max_completion: u64,
    /// The prompt's raw text (for token estimates and `hash_key: prompt_prefix`).
    prompt: Bytes,
    /// JSON request fields, for the rewrite (`None` for multipart).
    json: Option<crate::openai::RequestHead>,
    multipart: Option<MultipartHead>,
}

/// Where a multipart upload's `model` value sits in the head read so far.
pub struct MultipartHead {
    pub model_at: Option<std::ops::Range<usize>>,
    /// The whole body was read (it was small, or `model` came after the file).
    pub complete: bool,
    pub declared: Option<usize>,
    /// Carries on watching the streamed tail for a second `model` field.
    pub watch: crate::multipart::Watch,
}

/// Authenticates, reads and rewrites the body, and plans where the attempts go.
async fn prepare(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
) -> Result<(), GatewayError> {
    let snap = ctx.snap.clone();
    let key = snap.keys.authenticate(&session.req_header().headers)?;
    ctx.principal = Some(key.principal.clone());
    let max = snap.config.server.max_body_bytes;
    // a JSON body is parsed once: the object (borrowing `json_body`) serves the route, the
    // admission and the rewrite
    let json_body: Bytes;
    let (incoming, obj) = if endpoint.multipart() {
        (read_multipart(session, max, &ctx.request_id).await?, None)
    } else {
        json_body = read_body(session, max, &ctx.request_id).await?;
        let (obj, head) = inspect_request(&json_body)?;
        let max_tokens = snap.config.server.default_max_tokens;
        let incoming = json_incoming(&json_body, &obj, head, endpoint, max_tokens);
        (incoming, Some(obj))
    };
    let model = match (&incoming.model, &snap.config.default_model) {
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
    if !route.endpoints.contains(endpoint) {
        return Err(GatewayError::EndpointNotServed {
            model,
            path: endpoint.path(),
        });
    }
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
    let body = incoming.body.clone();
    let upstream_body = match (&incoming.multipart, &obj, &incoming.json) {
        (Some(m), _, _) => multipart_for_model(&body, m.model_at.clone(), &sent_model),
        (None, Some(obj), Some(head)) => {
            rewrite_request(obj, head, &sent_model).map_or_else(|| body.clone(), Bytes::from)
        }
        _ => body.clone(),
    };
    drop(obj);
    // characters/4 of the prompt's JSON text: cheap, and over- rather than under-estimates
    ctx.prompt_estimate = (incoming.prompt.len() as u64).div_ceil(4);
    ctx.completion_reserve = incoming.max_completion;
    admit(gw, ctx, key, &model, incoming.max_completion)?;
    ctx.route = Some(resolved.route);
    ctx.pool = Some(chain[0]);
    ctx.stream = incoming.stream;
    ctx.strip_usage = incoming.json.as_ref().is_some_and(|h| h.inject_usage);
    let multipart = incoming.multipart;
    // A JSON body is kept once, as rewritten: a fallback pool's rename rewrites that copy again
    // (the rewrite is idempotent), so a 16 MiB request holds 16 MiB, not twice that. Only the
    // prompt prefix that consistent hashing reads is copied out. A multipart head is kept as
    // read, since `multipart_model` indexes it.
    let (kept_body, prompt) = if multipart.is_some() {
        (body, incoming.prompt)
    } else {
        let prefix = snap.prompt_prefix_bytes.min(incoming.prompt.len());
        let prompt = Bytes::copy_from_slice(&incoming.prompt[..prefix]);
        drop(incoming.prompt);
        drop(body);
        (upstream_body.clone(), prompt)
    };
    ctx.plan = Plan {
        chain,
        route_model: resolved.upstream_model.to_string(),
        sent_model: sent_model.clone(),
        client_body: kept_body,
        body_model: sent_model.clone(),
        prompt,
        json: incoming.json,
        multipart_model: multipart.as_ref().and_then(|m| m.model_at.clone()),
        ..Plan::default()
    };
    ctx.client_model = Some(model);
    ctx.inflight = Some(InflightGuard::new(
        gw.metrics.inflight.with_label_values(&[first.name()]),
    ));
    // a client that stops reading must not hold its slots forever: each write to it may take
    // at most the pool's idle limit
    session.set_write_timeout(Some(first.config.timeouts.idle));
    let head_read = ctx.plan.client_body.len();
    let shared = Shared::new(upstream_body, ctx.start + first.config.timeouts.total);
    if let Some(m) = multipart.filter(|m| !m.complete) {
        shared.set_tail(
            Tail {
                declared: m.declared,
                head_read,
                streamed: 0,
                max,
                first_byte: first.config.timeouts.first_byte,
                total_at: ctx.start + first.config.timeouts.total,
                finished: false,
            },
            m.watch,
        );
    }
    ctx.preset_slot = Some(preset::wrap(
        &mut session.downstream_session,
        shared.clone(),
        gw.drain.subscribe(),
    ));
    ctx.shared = Some(shared);
    Ok(())
}

/// A multipart head with its `model` value (at `at`) set to `model`; without one (a default
/// model routed the upload), the head as read: the upstream's own default applies.
pub fn multipart_for_model(head: &Bytes, at: Option<std::ops::Range<usize>>, model: &str) -> Bytes {
    match at {
        Some(r) => Bytes::from(crate::multipart::replace(head, r, model.as_bytes())),
        None => head.clone(),
    }
}

fn json_incoming(
    body: &Bytes,
    obj: &crate::openai::RawObject<'_>,
    mut head: crate::openai::RequestHead,
    endpoint: Endpoint,
    default_max_tokens: u64,
) -> Incoming {
    // only chat and legacy completions streams have a usage chunk to ask for
    head.inject_usage &= endpoint.stream_kind() == Some(StreamKind::Chunks);
    let prompt = ["messages", "prompt", "input", "query", "text_1"]
        .iter()
        .find_map(|f| obj.get(f))
        .map_or_else(|| body.clone(), |v| body.slice_ref(v.get().as_bytes()));
    let max_completion = if endpoint.generates_tokens() {
        endpoint
            .completion_cap_fields()
            .iter()
            .find_map(|f| obj.get(f)?.get().parse::<u64>().ok())
            .unwrap_or(default_max_tokens)
            .min(MAX_COMPLETION_RESERVE)
    } else {
        0
    };
    Incoming {
        model: head.model.clone(),
        stream: head.stream,
        max_completion,
        prompt,
        json: Some(head),
        multipart: None,
        body: body.clone(),
    }
}

/// Reads a multipart upload until its `model` field is known: usually the first part, so only
/// the head is held and the file streams through; when `model` comes after the file, up to the
/// whole body (`max` bytes).
async fn read_multipart(
    session: &mut Session,
    max: usize,
    request_id: &str,
) -> Result<Incoming, GatewayError> {
    let headers = &session.req_header().headers;
    let boundary = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| crate::multipart::boundary(v.as_bytes()))
        .ok_or_else(|| GatewayError::InvalidParam {
            param: "content-type",
            msg: "expected multipart/form-data with a boundary".into(),
        })?;
    let declared = begin_body(session, max).await?;
    let mut buf = BytesMut::new();
    let mut complete = false;
    let mut scanner = crate::multipart::Scanner::new(&boundary);
    let model_at = loop {
        match scanner.scan(&buf, "model") {
            Scan::Found(r) => break Some(r),
            Scan::Absent => break None,
            Scan::More if complete => break None,
            Scan::More => {}
        }
        match next_chunk(session, request_id).await? {
            Some(c) if buf.len() + c.len() > max => {
                session.set_keepalive(None);
                return Err(GatewayError::BodyTooLarge { limit: max });
            }
            Some(c) => buf.extend_from_slice(&c),
            None => complete = true,
        }
    };
    let complete = complete || session.is_body_done();
    let body = buf.freeze();
    // the gateway routes, allows and prices by this field: a second one, which an upstream
    // reading the last value would run instead, is refused here or while the rest streams
    let mut watch = crate::multipart::Watch::new(&boundary);
    if let Some(r) = &model_at {
        if !watch.feed(&body[r.end..], "model") {
            return Err(GatewayError::InvalidParam {
                param: "model",
                msg: "the form has more than one model field".into(),
            });
        }
    }
    let model = match &model_at {
        Some(r) => Some(
            std::str::from_utf8(&body[r.clone()])
                .map_err(|_| GatewayError::InvalidParam {
                    param: "model",
                    msg: "expected UTF-8 text".into(),
                })?
                .to_string(),
        ),
        None => None,
    };
    Ok(Incoming {
        model,
        stream: false,
        max_completion: 0,
        prompt: Bytes::new(),
        json: None,
        multipart: Some(MultipartHead {
            model_at,
            complete,
            declared,
            watch,
        }),
        body,
    })
}

/// Before the first body byte: refuses a declared length over `max` (without draining what
/// it will not read) and answers `Expect: 100-continue`; returns the declared length.
async fn begin_body(session: &mut Session, max: usize) -> Result<Option<usize>, GatewayError> {
    let headers = &session.req_header().headers;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared.is_some_and(|n| n > max) {
        session.set_keepalive(None);
        return Err(GatewayError::BodyTooLarge { limit: max });
    }
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::Internal)?;
    }
    Ok(declared)
}

async fn next_chunk(
    session: &mut Session,
    request_id: &str,
) -> Result<Option<Bytes>, GatewayError> {
    session.read_request_body().await.map_err(|e| {
        tracing::debug!(request_id, error = %e, "reading request body failed");
        GatewayError::InvalidParam {
            param: "body",
            msg: "the request body could not be read".into(),
        }
    })
}

/// Reserves the request against every limit and budget of its key and tenant.
fn admit(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    key: &KeyEntry,
    model: &str,
    completion: u64,
) -> Result<(), GatewayError> {
    let ask = (model, ctx.prompt_estimate, completion);
    match gw.state.admit(&ctx.snap, key, ask)? {
        Admission::Admitted(adm) => {
            ctx.rate_headers = Some(adm.headers);
            ctx.admitted = Some(adm);
            Ok(())
        }
        Admission::Refused(denied) => {
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
    let declared = begin_body(session, max).await?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max));
    loop {
        let chunk = next_chunk(session, request_id).await?;
        let Some(chunk) = chunk else { break };
        if buf.len() + chunk.len() > max {
            session.set_keepalive(None);
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// `GET /v1/models`, or `GET /v1/models/{id}` when `id` is given.
async fn list_models(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    id: Option<String>,
) -> Result<bool> {
    let snap = ctx.snap.clone();
    let key = match snap.keys.authenticate(&session.req_header().headers) {
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
    upstream.remove_header("content-length");
    // a streamed tail of unknown length goes chunked (Pingora frames a body without a length)
    if let Some(len) = ctx.shared.as_ref().map_or(Some(0), |s| s.upstream_len()) {
        upstream.insert_header("content-length", len.to_string())?;
    }
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
