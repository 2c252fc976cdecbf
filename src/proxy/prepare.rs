//! An API request becomes a plan: authenticate, read the body, route by model, admit against
//! limits and budgets, write the body the first pool receives, and wrap the session.

use bytes::Bytes;
use pingora::proxy::Session;

use super::body::{self, Incoming};
use super::ctx::{InflightGuard, Plan, RequestCtx, Routed};
use super::plan;
use super::session::{self, Shared, Tail};
use super::Gateway;
use crate::anthropic::to_chat::Asked;
use crate::auth::KeyEntry;
use crate::endpoint::Endpoint;
use crate::errors::GatewayError;
use crate::live::Admission;
use crate::openai::{inspect_request, rewrite_request, RawObject};
use crate::router::{self, Resolved};
use crate::state::Snapshot;
use crate::wire::Wire;

/// What preparing a request came to.
pub enum Prepared {
    /// The session is wrapped and the plan made: Pingora proxies it.
    Proxy,
    /// The gateway answers itself with this JSON (`count_tokens` for a pool that cannot).
    Answered(Vec<u8>),
}

/// Authenticates, reads and rewrites the body, and plans where the attempts go.
pub async fn prepare(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    endpoint: Endpoint,
) -> Result<Prepared, GatewayError> {
    let snap = ctx.snap.clone();
    let caller = authenticate(&snap, session, ctx)?;
    let max = snap.config.server.max_body_bytes;
    if endpoint.multipart() {
        let incoming = body::read_multipart(session, max, &ctx.request_id).await?;
        let mut slot = None;
        let key = caller.key(&snap, ctx, &incoming, &mut slot)?;
        return plan_request(gw, session, ctx, key, endpoint, incoming, None).await;
    }
    // a JSON body is parsed once: the object (borrowing the body) serves the route, the
    // admission and the rewrite
    let json_body = body::read_body(session, max, &ctx.request_id).await?;
    let (obj, head) = inspect_request(&json_body)?;
    if endpoint == Endpoint::Messages {
        check_messages(&obj)?;
    }
    let max_tokens = snap.config.server.default_max_tokens;
    let incoming = body::json_incoming(&json_body, &obj, head, endpoint, max_tokens);
    let mut slot = None;
    let key = caller.key(&snap, ctx, &incoming, &mut slot)?;
    plan_request(gw, session, ctx, key, endpoint, incoming, Some(&obj)).await
}

/// Who is calling: a virtual key, or (only where some route is `anonymous: true`) a bearer
/// token that is not one, known by its digest until its route says whether it may pass.
enum Caller<'s> {
    Key(&'s KeyEntry),
    Stranger([u8; 32]),
}

impl<'s> Caller<'s> {
    /// The key the request runs under: the virtual key, or a stranger's identity (kept in
    /// `slot`) when its route is anonymous.
    fn key<'k>(
        self,
        snap: &Snapshot,
        ctx: &mut RequestCtx,
        incoming: &Incoming,
        slot: &'k mut Option<KeyEntry>,
    ) -> Result<&'k KeyEntry, GatewayError>
    where
        's: 'k,
    {
        match self {
            Self::Key(k) => Ok(k),
            Self::Stranger(d) => Ok(slot.insert(stranger(snap, ctx, incoming, &d)?)),
        }
    }
}

/// The request's virtual key; an unknown bearer token is held as a stranger when some route
/// takes them. Also takes the caller's own provider key for `credentials: client` pools.
fn authenticate<'s>(
    snap: &'s Snapshot,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<Caller<'s>, GatewayError> {
    let headers = &session.req_header().headers;
    ctx.upstream_key = upstream_key(headers);
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    match snap.keys.authenticate(headers, now) {
        Ok(k) => {
            ctx.principal = Some(k.principal.clone());
            Ok(Caller::Key(k))
        }
        Err(GatewayError::InvalidApiKey) if snap.config.has_anonymous_routes() => {
            let auth = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
                .ok_or(GatewayError::InvalidApiKey)?;
            let token = auth[7..].trim();
            ctx.caller_auth = Some(crate::config::Secret::new(auth.to_string()));
            Ok(Caller::Stranger(crate::config::secret::digest(
                token.as_bytes(),
            )))
        }
        Err(e) => Err(e),
    }
}

/// An unknown token's identity, when the request's route is `anonymous: true`; anywhere else
/// it stays a wrong key.
fn stranger(
    snap: &Snapshot,
    ctx: &mut RequestCtx,
    incoming: &Incoming,
    digest: &[u8; 32],
) -> Result<KeyEntry, GatewayError> {
    let model = incoming
        .model
        .as_deref()
        .or(snap.config.default_model.as_deref())
        .ok_or(GatewayError::InvalidApiKey)?;
    let route = router::resolve(&snap.config.routes, model)
        .map(|r| &snap.config.routes[r.route])
        .filter(|r| r.anonymous)
        .ok_or(GatewayError::InvalidApiKey)?;
    let key = KeyEntry::anonymous(digest, &route.prefix, &route.limits);
    ctx.principal = Some(key.principal.clone());
    Ok(key)
}

/// Where a `credentials: client` caller sends its own provider key.
const UPSTREAM_KEY_HEADER: &str = "x-llmedge-upstream-key";

/// The caller's own provider key (`x-llmedge-upstream-key`), held as a secret.
pub fn upstream_key(headers: &http::HeaderMap) -> Option<crate::config::Secret> {
    headers
        .get(UPSTREAM_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| crate::config::Secret::new(v.to_string()))
}

/// What Anthropic's API itself refuses: a Messages request without `messages` or
/// `max_tokens`.
fn check_messages(obj: &RawObject<'_>) -> Result<(), GatewayError> {
    let is_array = obj
        .get("messages")
        .is_some_and(|v| v.get().trim_start().starts_with('['));
    if !is_array {
        return Err(GatewayError::InvalidParam {
            param: "messages",
            msg: "expected an array of messages".into(),
        });
    }
    if obj
        .get("max_tokens")
        .and_then(|v| v.get().parse::<u64>().ok())
        .is_none()
    {
        return Err(GatewayError::InvalidParam {
            param: "max_tokens",
            msg: "a positive integer is required".into(),
        });
    }
    Ok(())
}

/// The route for `model`, once the key may use it on this endpoint.
fn route_for<'m>(
    snap: &Snapshot,
    key: &KeyEntry,
    model: &'m str,
    endpoint: Endpoint,
) -> Result<Resolved<'m>, GatewayError> {
    let resolved = router::resolve(&snap.config.routes, model)
        .ok_or_else(|| GatewayError::UnknownModel(model.to_string()))?;
    if !key.allows(model) {
        return Err(GatewayError::ModelNotAllowed(model.to_string()));
    }
    if !snap.config.routes[resolved.route]
        .endpoints
        .contains(endpoint)
    {
        return Err(GatewayError::EndpointNotServed {
            model: model.to_string(),
            path: endpoint.path(),
        });
    }
    Ok(resolved)
}

/// The body the first pool receives: the client's with that pool's model name, or its
/// translation for that pool's API.
fn first_body(
    snap: &Snapshot,
    incoming: &Incoming,
    obj: Option<&RawObject<'_>>,
    model: &str,
    wire: Wire,
) -> Result<(Bytes, Asked), GatewayError> {
    let body = &incoming.body;
    if wire != Wire::Same {
        let max_tokens = snap.config.server.default_max_tokens;
        return plan::translated(wire, body, model, max_tokens);
    }
    let same = match (&incoming.multipart, obj, &incoming.json) {
        (Some(m), _, _) => plan::multipart_for_model(body, m.model_at.clone(), model),
        (None, Some(obj), Some(head)) => {
            rewrite_request(obj, head, model).map_or_else(|| body.clone(), Bytes::from)
        }
        _ => body.clone(),
    };
    Ok((same, Asked::default()))
}

/// The chain without the pools that cannot take `endpoint` (a fallback that could only
/// estimate `count_tokens` included); refused when none is left, or when a pool needs the
/// caller's own provider key and none came.
fn servable(
    snap: &Snapshot,
    mut chain: Vec<usize>,
    endpoint: Endpoint,
    model: &str,
    upstream_key: bool,
) -> Result<Vec<usize>, GatewayError> {
    let mut first = true;
    chain.retain(|&p| {
        let wire = snap
            .pools
            .get(p)
            .and_then(|pool| Wire::of(&pool.config, endpoint));
        let keep = matches!(wire, Some(w) if first || w != Wire::LocalCount);
        first &= !keep;
        keep
    });
    if chain.is_empty() {
        return Err(GatewayError::EndpointNotServed {
            model: model.to_string(),
            path: endpoint.path(),
        });
    }
    if !upstream_key && needs_client_key(snap, &chain) {
        return Err(GatewayError::MissingUpstreamKey);
    }
    Ok(chain)
}

/// Whether a pool of the chain authenticates with the caller's own provider key.
pub fn needs_client_key(snap: &Snapshot, chain: &[usize]) -> bool {
    chain
        .iter()
        .filter_map(|&p| snap.pools.get(p))
        .any(|p| p.config.credentials == crate::config::Credentials::Client)
}

/// Routes, admits and plans a request whose body (or multipart head) has been read.
async fn plan_request(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key: &KeyEntry,
    endpoint: Endpoint,
    incoming: Incoming,
    obj: Option<&RawObject<'_>>,
) -> Result<Prepared, GatewayError> {
    let snap = ctx.snap.clone();
    let model = match (&incoming.model, &snap.config.default_model) {
        (Some(m), _) => m.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => return Err(GatewayError::MissingModel),
    };
    let resolved = route_for(&snap, key, &model, endpoint)?;
    let pin = session.req_header().headers.get(plan::PIN_HEADER);
    let chain = plan::chain(&snap, &snap.config.routes[resolved.route], key, pin)?;
    let chain = servable(&snap, chain, endpoint, &model, ctx.upstream_key.is_some())?;
    let first = snap.pools.get(chain[0]).ok_or(GatewayError::Internal)?;
    let wire = Wire::of(&first.config, endpoint).unwrap_or_default();
    // characters/4 of the prompt's JSON text: cheap, and over- rather than under-estimates
    let estimate = (incoming.prompt_bytes as u64).div_ceil(4);
    ctx.asked = Some((model.clone(), endpoint));
    // counting tokens generates none: only request limits apply to it
    let counting = endpoint == Endpoint::CountTokens;
    let prompt_estimate = if counting { 0 } else { estimate };
    let ask = (model.as_str(), prompt_estimate, incoming.max_completion);
    admit(gw, ctx, key, ask).await?;
    if wire == Wire::LocalCount {
        let body = serde_json::json!({ "input_tokens": estimate });
        return Ok(Prepared::Answered(body.to_string().into_bytes()));
    }
    let sent_model = plan::pool_model(first, resolved.upstream_model).to_string();
    let (upstream_body, asked) = first_body(&snap, &incoming, obj, &sent_model, wire)?;
    let upstream_body = plan::for_pool(first, Some(endpoint), upstream_body);
    ctx.pool = Some(chain[0]);
    let route_model = resolved.upstream_model.to_string();
    ctx.routed = Some(routed(
        &incoming,
        endpoint,
        resolved.route,
        model,
        prompt_estimate,
    ));
    let mut incoming = incoming;
    let (multipart_model, tail) = take_multipart(&mut incoming, &snap, first, ctx.start);
    let names = (route_model, sent_model);
    let mut plan = keep_plan(
        &snap,
        chain,
        names,
        incoming,
        multipart_model,
        (&upstream_body, wire, endpoint),
    );
    plan.asked = asked;
    ctx.plan = plan;
    wrap_session(gw, session, ctx, first, upstream_body, tail);
    Ok(Prepared::Proxy)
}

/// What routing and admission decided, for the response and the books.
fn routed(
    incoming: &Incoming,
    endpoint: Endpoint,
    route: usize,
    model: String,
    prompt_estimate: u64,
) -> Routed {
    let head = incoming.json.as_ref();
    Routed {
        endpoint,
        route,
        stream: incoming.stream,
        strip_usage: head.is_some_and(|h| h.inject_usage),
        client_usage: head.is_some_and(|h| h.client_include_usage),
        prompt_estimate,
        completion_reserve: incoming.max_completion,
        model,
    }
}

/// Counts the request in flight on its first pool, bounds each write to the client by the
/// pool's idle limit, and wraps the session around the body to send.
pub(super) fn wrap_session(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    first: &crate::upstream::Pool,
    upstream_body: Bytes,
    tail: Option<(Tail, Option<crate::multipart::Watch>)>,
) {
    ctx.inflight = Some(InflightGuard::new(
        gw.metrics.inflight.with_label_values(&[first.name()]),
    ));
    // a client that stops reading must not hold its slots forever: each write to it may take
    // at most the pool's idle limit
    session.set_write_timeout(Some(first.config.timeouts.idle));
    let total_at = ctx.start + first.config.timeouts.total;
    let shared = Shared::new(upstream_body, total_at);
    if let Some((tail, watch)) = tail {
        shared.set_tail(tail, watch);
    }
    let drain = gw.drain.subscribe();
    ctx.session_slot = Some(session::wrap(
        &mut session.downstream_session,
        shared.clone(),
        drain,
    ));
    ctx.shared = Some(shared);
}

/// The rest of an upload still to stream, and what watches it.
type StreamedTail = (Tail, Option<crate::multipart::Watch>);

/// Where a multipart head carries `model`, and the tail still to stream when only the head
/// was read.
fn take_multipart(
    incoming: &mut Incoming,
    snap: &Snapshot,
    first: &crate::upstream::Pool,
    start: std::time::Instant,
) -> (Option<Option<std::ops::Range<usize>>>, Option<StreamedTail>) {
    let multipart = incoming.multipart.take();
    let model_at = multipart.as_ref().map(|m| m.model_at.clone());
    let total_at = start + first.config.timeouts.total;
    let tail = multipart.filter(|m| !m.complete).map(|m| {
        let max = snap.config.server.max_body_bytes;
        let (tail, watch) = streamed_tail(m, incoming.body.len(), max, first, total_at);
        (tail, Some(watch))
    });
    (model_at, tail)
}

/// An upload only partly read (its head): the rest streams, watched and limited as it goes.
fn streamed_tail(
    m: body::MultipartHead,
    head_read: usize,
    max: usize,
    first: &crate::upstream::Pool,
    total_at: std::time::Instant,
) -> (Tail, crate::multipart::Watch) {
    let tail = Tail {
        declared: m.declared,
        head_read,
        streamed: 0,
        max,
        first_byte: first.config.timeouts.first_byte,
        total_at,
        finished: false,
    };
    (tail, m.watch)
}

/// The attempt plan, holding the body once. A JSON body is kept as rewritten: a fallback pool's
/// rename rewrites that copy again (the rewrite is idempotent), so a 16 MiB request holds
/// 16 MiB, not twice that; only the prompt prefix that consistent hashing reads is copied out.
/// A multipart head is kept as read, since `multipart_model` indexes it.
fn keep_plan(
    snap: &Snapshot,
    chain: Vec<usize>,
    (route_model, sent_model): (String, String),
    incoming: Incoming,
    multipart: Option<Option<std::ops::Range<usize>>>,
    (upstream_body, wire, endpoint): (&Bytes, Wire, Endpoint),
) -> Plan {
    // a pool of the chain that takes the body in the other API translates the client's
    let translates = chain.iter().any(|&p| {
        let w = snap
            .pools
            .get(p)
            .and_then(|pool| Wire::of(&pool.config, endpoint));
        w.is_some_and(|w| w != Wire::Same)
    });
    let original = translates.then(|| incoming.body.clone());
    let head = incoming.prompt_head.as_deref();
    let blocks = plan::prompt_blocks(snap, &chain, head, &incoming.prompt);
    let (client_body, prompt) = if multipart.is_some() {
        (incoming.body.clone(), incoming.prompt.clone())
    } else {
        let prefix = snap.prompt_prefix_bytes.min(incoming.prompt.len());
        let prompt = Bytes::copy_from_slice(&incoming.prompt[..prefix]);
        // a translated first body is no base for another pool's: keep the client's
        let kept = if wire == Wire::Same {
            upstream_body.clone()
        } else {
            incoming.body.clone()
        };
        (kept, prompt)
    };
    let body_model = if wire == Wire::Same {
        sent_model.clone()
    } else {
        incoming.model.clone().unwrap_or_default()
    };
    Plan {
        chain,
        route_model,
        body_model,
        wire,
        original,
        blocks,
        previous_response: incoming.previous_response,
        sent_model,
        client_body,
        prompt,
        json: incoming.json,
        multipart_model: multipart.flatten(),
        ..Plan::default()
    }
}

/// Reserves the request against every limit and budget of its key and tenant.
pub(super) async fn admit(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    key: &KeyEntry,
    ask: (&str, u64, u64),
) -> Result<(), GatewayError> {
    match gw.state.admit(&ctx.snap, key, ask).await? {
        Admission::Admitted(adm) => {
            ctx.rate_headers = Some(adm.headers());
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
