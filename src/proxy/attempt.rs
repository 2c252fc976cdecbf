//! Dispatching one attempt: the next backend of the plan, resolved, with its in-flight slot,
//! first-byte deadline and Pingora peer.

use std::time::Instant;

use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use super::ctx::{InflightGuard, RequestCtx};
use super::deadline::TimeoutKind;
use super::plan::{next_target, nothing_to_try, set_body_for};
use super::retry::{backoff, eject, record};
use super::Gateway;

/// Picks the backend for the next attempt; called by `upstream_peer` before every connect. A
/// backend whose host does not resolve counts as a failed attempt and the plan moves on.
pub async fn peer(gw: &Gateway, session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    loop {
        ctx.attempt = None;
        let Some((p, b)) = next_target(gw, session, ctx, Instant::now()) else {
            let e = match ctx.plan.last_error.take() {
                Some(e) => e,
                None => nothing_to_try(ctx, Instant::now()),
            };
            ctx.error = Some(e);
            return Err(Error::explain(ConnectNoRoute, "no backend left to try"));
        };
        if ctx.plan.attempts > 0 {
            tokio::time::sleep(backoff(ctx.plan.attempts, ctx.start)).await;
        }
        ctx.plan.attempts += 1;
        let snap = ctx.snap.clone();
        let pool = snap
            .pools
            .get(p)
            .ok_or_else(|| Error::explain(InternalError, "pool vanished"))?;
        set_body_for(pool, ctx)?;
        if ctx.pool != Some(p) {
            // the request is in flight on the pool that serves it, not the first it tried
            let gauge = gw.metrics.inflight.with_label_values(&[pool.name()]);
            ctx.inflight = Some(InflightGuard::new(gauge));
        }
        ctx.pool = Some(p);
        ctx.backend = Some(b);
        let addr = match pool.resolve(b).await {
            Ok(a) => a,
            Err(e) => {
                record(gw, ctx, e.label());
                eject(ctx);
                ctx.plan.last_error = Some(e);
                continue;
            }
        };
        ctx.attempt = pool.begin(b);
        ctx.plan.attempt_start = Some(Instant::now());
        if let Some(shared) = &ctx.shared {
            let t = &pool.config.timeouts;
            let now = Instant::now();
            shared.deadline.arm(
                TimeoutKind::FirstByte,
                now + t.first_byte,
                ctx.start + t.total,
            );
        }
        let peer = pool
            .peer(b, addr)
            .map_err(|_| Error::explain(InternalError, "backend vanished"))?;
        return Ok(Box::new(peer));
    }
}
