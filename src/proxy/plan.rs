//! The attempt plan: the pools a request may go to (its route's pool and fallbacks, or the one
//! it pinned), the body and model name each pool receives, and which backend comes next.

use std::time::Instant;

use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::Gateway;
use crate::anthropic::to_chat::Asked;
use crate::auth::KeyEntry;
use crate::balance::hash_bytes;
use crate::config::{HashKey, Route};
use crate::errors::GatewayError;
use crate::openai::{inspect_request, rewrite_request};
use crate::state::Snapshot;
use crate::upstream::Pool;
use crate::wire::Wire;

/// A client may pin a pool its key allows with this header.
pub const PIN_HEADER: &str = "x-llmedge-pool";

/// A multipart head with its `model` value (at `at`) set to `model`; without one (a default
/// model routed the upload), the head as read: the upstream's own default applies.
pub fn multipart_for_model(head: &Bytes, at: Option<std::ops::Range<usize>>, model: &str) -> Bytes {
    match at {
        Some(r) => Bytes::from(crate::multipart::replace(head, r, model.as_bytes())),
        None => head.clone(),
    }
}

/// The model name `pool` should see for a route's upstream model (`model_map` applied).
pub fn pool_model<'a>(pool: &'a Pool, route_model: &'a str) -> &'a str {
    pool.config
        .model_map
        .get(route_model)
        .map_or(route_model, String::as_str)
}

/// Why no attempt could be made: every backend that could serve is paused by its own
/// `Retry-After` (the client gets that 429, with the remaining pause), or none is usable.
pub fn nothing_to_try(ctx: &RequestCtx, now: Instant) -> GatewayError {
    let paused = ctx
        .plan
        .chain
        .iter()
        .filter_map(|&p| ctx.snap.pools.get(p))
        .filter_map(|p| p.paused_for(&[], now))
        .min();
    match paused {
        Some(d) => GatewayError::UpstreamPaused {
            retry: crate::limits::fmt_reset(d),
            retry_after_ms: (d.as_millis() as u64).max(1),
        },
        None => GatewayError::NoBackend(ctx.pool_name().to_string()),
    }
}

/// Walks the plan: the same backend after a stale pooled connection, else a fresh backend of
/// the current pool within its retry budget, else the next pool in the chain.
pub fn next_target(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    now: Instant,
) -> Option<(usize, usize)> {
    let snap = ctx.snap.clone();
    if std::mem::take(&mut ctx.plan.retry_same) {
        if let (Some(p), Some(b)) = (ctx.pool, ctx.backend) {
            return Some((p, b));
        }
    }
    loop {
        let p = *ctx.plan.chain.get(ctx.plan.pos)?;
        let pool = snap.pools.get(p)?;
        if ctx.plan.attempts_in_pool <= pool.config.retries {
            if let Some(b) = pick(gw, pool, session, ctx, now) {
                ctx.plan.attempts_in_pool += 1;
                ctx.plan.tried.push(b);
                return Some((p, b));
            }
        }
        ctx.plan.pos += 1;
        ctx.plan.attempts_in_pool = 0;
        ctx.plan.tried.clear();
        if let Some(next) = ctx
            .plan
            .chain
            .get(ctx.plan.pos)
            .and_then(|&q| snap.pools.get(q))
        {
            gw.metrics
                .fallbacks
                .with_label_values(&[ctx.route_name(), next.name()])
                .inc();
        }
    }
}

/// Whether a failed attempt can be followed by another one: the body can be sent again (an
/// upload whose tail already streamed cannot), and a backend is left to send it to.
pub fn has_next(ctx: &RequestCtx, now: Instant) -> bool {
    if !replayable(ctx) {
        return false;
    }
    let snap = &ctx.snap;
    let plan = &ctx.plan;
    let Some(pool) = plan.chain.get(plan.pos).and_then(|&p| snap.pools.get(p)) else {
        return false;
    };
    if plan.attempts_in_pool <= pool.config.retries && pool.has_candidate(&plan.tried, now) {
        return true;
    }
    plan.chain
        .iter()
        .skip(plan.pos + 1)
        .filter_map(|&q| snap.pools.get(q))
        .any(|q| q.has_candidate(&[], now))
}

/// The backend for the next attempt in `pool`: the one that produced the previous response
/// (Responses affinity), else the pool's balancing choice.
fn pick(
    gw: &Gateway,
    pool: &Pool,
    session: &Session,
    ctx: &mut RequestCtx,
    now: Instant,
) -> Option<usize> {
    if let Some(b) = follow_response(gw, pool, ctx, now) {
        return Some(b);
    }
    if pool.config.balance != crate::config::Balance::CacheAware {
        let key = hash_key(pool, session, ctx);
        return pool.select(&ctx.plan.tried, key, now);
    }
    let size = pool.config.cache_aware.block_chars;
    let blocks = ctx
        .plan
        .blocks
        .iter()
        .find(|(n, _)| *n == size)
        .map_or(&[][..], |(_, b)| b.as_slice());
    let (b, held) = pool.select_by_prefix(&ctx.plan.tried, blocks, now)?;
    let total = blocks.len();
    if total > 0 {
        let m = &gw.metrics.prefix_blocks;
        m.with_label_values(&[pool.name(), "hit"])
            .inc_by(held as u64);
        m.with_label_values(&[pool.name(), "miss"])
            .inc_by((total - held) as u64);
        ctx.plan.prefix_match = Some(held as f64 / total as f64);
    }
    Some(b)
}

/// The backend that produced `previous_response_id`, on the first attempt in its pool while
/// it takes requests; otherwise `None` (normal balancing), with what happened recorded once.
fn follow_response(gw: &Gateway, pool: &Pool, ctx: &mut RequestCtx, now: Instant) -> Option<usize> {
    let id = ctx.plan.previous_response.as_deref()?;
    if ctx.plan.affinity.is_some() {
        // decided on an earlier attempt: a retry balances normally, and a request whose
        // backend failed it is served elsewhere
        if ctx.plan.affinity == Some("hit") {
            ctx.plan.affinity = Some("fallback");
            let m = &gw.metrics.response_affinity;
            m.with_label_values(&[pool.name(), "fallback"]).inc();
        }
        return None;
    }
    let known = gw.affinity.get(id, now);
    let here = known
        .as_ref()
        .filter(|(p, _)| p == pool.name())
        .and_then(|(_, backend)| pool.position(*backend));
    let usable = here.filter(|&b| !ctx.plan.tried.contains(&b) && pool.takes_requests(b, now));
    let result = match (&known, usable) {
        (None, _) => "unknown",
        (Some(_), Some(_)) => "hit",
        (Some(_), None) => "fallback",
    };
    ctx.plan.affinity = Some(result);
    gw.metrics
        .response_affinity
        .with_label_values(&[pool.name(), result])
        .inc();
    if result == "fallback" {
        tracing::info!(request_id = %ctx.request_id, pool = %pool.name(), "previous_response_id: its backend is unavailable, balancing normally");
    }
    usable
}

/// The canonical prompt's block hashes for each block size the chain's `cache_aware` pools
/// use: the prompt's head (`instructions`, `system`) then the prompt itself.
pub fn prompt_blocks(
    snap: &Snapshot,
    chain: &[usize],
    head: Option<&[u8]>,
    prompt: &[u8],
) -> Vec<(usize, Vec<u64>)> {
    let mut out: Vec<(usize, Vec<u64>)> = Vec::new();
    for pool in chain.iter().filter_map(|&p| snap.pools.get(p)) {
        let size = pool.config.cache_aware.block_chars;
        if pool.config.balance != crate::config::Balance::CacheAware
            || out.iter().any(|(n, _)| *n == size)
        {
            continue;
        }
        let blocks = crate::prefix::blocks(&[head.unwrap_or_default(), prompt], size);
        out.push((size, blocks));
    }
    out
}

fn hash_key(pool: &Pool, session: &Session, ctx: &RequestCtx) -> Option<u64> {
    match &pool.config.hash_key {
        HashKey::Header(h) => session
            .req_header()
            .headers
            .get(h.as_str())
            .map(|v| hash_bytes(v.as_bytes())),
        HashKey::User => ctx.principal.as_ref().map(|p| {
            let who = if p.user.is_empty() {
                &p.tenant
            } else {
                &p.user
            };
            hash_bytes(who.as_bytes())
        }),
        HashKey::PromptPrefix(n) => {
            let prompt = &ctx.plan.prompt;
            (!prompt.is_empty()).then(|| hash_bytes(&prompt[..prompt.len().min(*n)]))
        }
    }
}

/// The client's JSON body translated for a pool that speaks the other API.
pub fn translated(
    wire: Wire,
    original: &[u8],
    model: &str,
    default_max_tokens: u64,
) -> Result<(Bytes, Asked), GatewayError> {
    let req: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(original).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
    let (v, asked) = match wire {
        Wire::MessagesToChat => crate::anthropic::to_chat::to_chat(&req, model)?,
        Wire::ChatToMessages => (
            crate::anthropic::to_messages::to_messages(&req, model, default_max_tokens)?,
            Asked::default(),
        ),
        Wire::Same | Wire::LocalCount => return Err(GatewayError::Internal),
    };
    Ok((Bytes::from(v.to_string()), asked))
}

/// Rewrites the body when this pool renames the model differently from the last attempt's,
/// or takes it in another API. A translation this pool refuses ends the request with it.
pub fn set_body_for(pool: &Pool, ctx: &mut RequestCtx) -> Result<()> {
    let model = pool_model(pool, &ctx.plan.route_model).to_string();
    let endpoint = ctx.routed.as_ref().map(|r| r.endpoint);
    let wire = endpoint
        .and_then(|e| Wire::of(&pool.config, e))
        .unwrap_or_default();
    let previous = ctx.pool.and_then(|p| ctx.snap.pools.get(p));
    let same_api = previous.is_some_and(|prev| prev.config.protocol == pool.config.protocol);
    if model == ctx.plan.sent_model && wire == ctx.plan.wire && same_api {
        return Ok(());
    }
    if wire != Wire::Same {
        let original = ctx.plan.original.clone().unwrap_or_default();
        let max = ctx.snap.config.server.default_max_tokens;
        let (body, asked) = translated(wire, &original, &model, max).map_err(|e| {
            ctx.error = Some(e);
            Error::explain(InternalError, "translation refused")
        })?;
        if let Some(shared) = &ctx.shared {
            shared.set_body(body);
        }
        ctx.plan.asked = asked;
        ctx.plan.wire = wire;
        ctx.plan.sent_model = model;
        return Ok(());
    }
    ctx.plan.wire = wire;
    let plan = &ctx.plan;
    let new = match &plan.multipart_model {
        Some(r) => multipart_for_model(&plan.client_body, Some(r.clone()), &model),
        None => {
            let Some(head) = &plan.json else {
                return Ok(());
            };
            // the kept body already went through the first rewrite: compare with what it says
            let head = crate::openai::RequestHead {
                model: Some(plan.body_model.clone()),
                ..head.clone()
            };
            let body = &plan.client_body;
            let (obj, _) =
                inspect_request(body).map_err(|_| Error::explain(InternalError, "body changed"))?;
            rewrite_request(&obj, &head, &model).map_or(body.clone(), Bytes::from)
        }
    };
    let new = for_pool(pool, endpoint, new);
    if let Some(shared) = &ctx.shared {
        shared.set_body(new);
    }
    ctx.plan.sent_model = model;
    Ok(())
}

/// The body as `pool` may receive it: Messages for an Anthropic upstream lose the thinking
/// blocks the gateway signed itself (Anthropic would refuse them).
pub fn for_pool(pool: &Pool, endpoint: Option<crate::endpoint::Endpoint>, body: Bytes) -> Bytes {
    let to_anthropic = pool.config.protocol == crate::config::Protocol::Anthropic;
    let messages = matches!(
        endpoint,
        Some(crate::endpoint::Endpoint::Messages | crate::endpoint::Endpoint::CountTokens)
    );
    if !to_anthropic || !messages {
        return body;
    }
    crate::anthropic::native::strip_minted_thinking(&body).map_or(body, Bytes::from)
}

/// Part of an upload's streamed tail went out: nothing is left to send it again from.
pub fn replayable(ctx: &RequestCtx) -> bool {
    !ctx.shared.as_ref().is_some_and(|s| s.tail_started())
}

/// The pools a request may use, in order: its route's pool and fallbacks, or the one pool it
/// pinned with [`PIN_HEADER`] (a pin chooses among the pools that serve the model, never around
/// the route, and only one the key allows).
pub fn chain(
    snap: &Snapshot,
    route: &Route,
    key: &KeyEntry,
    pin: Option<&http::HeaderValue>,
) -> Result<Vec<usize>, GatewayError> {
    let route_chain = std::iter::once(route.pool).chain(route.fallbacks.iter().copied());
    let Some(v) = pin else {
        return Ok(route_chain.collect());
    };
    let name = String::from_utf8_lossy(v.as_bytes()).into_owned();
    let pinned = route_chain
        .clone()
        .find(|&p| snap.pools.get(p).is_some_and(|pool| pool.name() == name));
    match pinned {
        Some(p) if key.may_pin(p) => Ok(vec![p]),
        _ => Err(GatewayError::PoolNotAllowed(name)),
    }
}
