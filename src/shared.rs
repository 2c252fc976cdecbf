//! Limit counters shared by every gateway on one Redis (or Valkey) server (`state.backend:
//! redis`). One server-side call per admission checks every limit of the request and reserves
//! them all or none; settlement replaces the reservation by what was used. Concurrency slots and
//! reservations are leases that expire unless the gateway holding them renews them, so a gateway
//! that dies gives its capacity back within `lease_ms`.
//!
//! While the server is away (an error, or no answer within `timeout_ms`) the store is marked
//! down once, and requests get `on_error`: admitted and counted in this process, or refused.
//! What was counted here meanwhile is merged into the shared counters when the server is back.
//! The server sits behind [`CounterServer`], so all of this is tested without a socket.

pub mod pending;
pub mod redis;
pub mod service;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::config::Price;
use crate::limits::{Denied, RateHeaders, SharedPlan};
use crate::metrics::StateMetrics;
use pending::Pending;
use wire::{Lease, Wired};

/// Who is calling: a request (admission, settlement) or the store's upkeep (pings, merges,
/// renewals, gauges). A server may keep them on separate connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Request = 0,
    Upkeep = 1,
}

/// The server the counters live on: one call of a library function, or a ping.
#[async_trait]
pub trait CounterServer: Send + Sync {
    /// Calls `function` with `keys` and one JSON argument; integer replies come back as a list.
    async fn call(
        &self,
        lane: Lane,
        function: &'static str,
        keys: &[String],
        arg: &str,
    ) -> Result<Vec<i64>, String>;
    /// Connects if needed, loads the library, and checks the server answers.
    async fn ping(&self) -> Result<(), String>;
}

/// Store settings, from `state.redis`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: String,
    pub endpoint: String,
    pub timeout: Duration,
    pub lease: Duration,
}

pub struct Shared {
    server: Arc<dyn CounterServer>,
    settings: Settings,
    up: AtomicBool,
    /// Whether this outage was logged (once per outage, the first at start included).
    logged_down: AtomicBool,
    /// This process's lease ids: `<instance>-<n>`.
    instance: String,
    seq: AtomicU64,
    pending: Mutex<Pending>,
    renewals: Mutex<HashMap<u64, Renewal>>,
    settling: AtomicU64,
    metrics: StateMetrics,
}

/// A lease this process renews until its request settles.
struct Renewal {
    wired: Arc<Wired>,
    lease: Lease,
    renewed: Instant,
}

/// What the shared store answered an admission.
pub enum Answer {
    Granted(Held),
    Refused(Denied),
    /// The store did not answer in time: `on_error` decides.
    Unavailable,
}

/// A request admitted by the shared store, settled there (or, if it is away by then, counted
/// here and merged later).
pub struct Held {
    shared: Arc<Shared>,
    tenant: Arc<str>,
    wired: Arc<Wired>,
    /// Its id names its leases (if admission reserved anything) and marks its settlement.
    lease: Lease,
    /// The renewal registry's id while the lease is renewed.
    renewal: Option<u64>,
    at_ms: u64,
    pub price: Option<Price>,
    pub headers: RateHeaders,
}

/// A request admitted in this process while the store was away: what to merge when it is back.
pub struct Counted {
    pub tenant: Arc<str>,
    pub wired: Arc<Wired>,
}

impl Shared {
    pub fn new(server: Arc<dyn CounterServer>, settings: Settings, metrics: StateMetrics) -> Self {
        metrics.up.set(0);
        Self {
            server,
            settings,
            up: AtomicBool::new(false),
            logged_down: AtomicBool::new(false),
            instance: instance_id(),
            seq: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            renewals: Mutex::new(HashMap::new()),
            settling: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Checks and reserves `plan` in one round trip, within `timeout_ms`.
    pub async fn admit(self: &Arc<Self>, plan: &SharedPlan) -> Answer {
        let wired = Arc::new(Wired::new(&self.settings.prefix, plan));
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            id: format!("{}-{n}", self.instance),
            tokens: plan.tokens,
            micro: wired.reserve_micro(plan),
        };
        if plan.checks_nothing() {
            // only spend to charge: nothing to ask before the request runs
            let h = self.held(plan, wired, (n, lease, false), 0, RateHeaders::default());
            return Answer::Granted(h);
        }
        if !self.is_up() {
            return Answer::Unavailable;
        }
        let arg = wired.admit_arg(plan, &lease.id, self.settings.lease);
        let started = Instant::now();
        let reply = self.call(Op::Admit, &wired.keys, &arg).await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let verdict = reply.map(|r| wire::admit_reply(plan, &r));
        match verdict {
            Some(Ok(Ok(g))) => {
                let leased = wired.leases(plan);
                Answer::Granted(self.held(plan, wired, (n, lease, leased), g.at_ms, g.headers))
            }
            Some(Ok(Err(denied))) => Answer::Refused(denied),
            failed => {
                if let Some(Err(e)) = failed {
                    self.down("admit", &e);
                }
                // the call may still run there, late: release whatever it reserved once the
                // store is back (a settlement of nothing, applied at most once)
                if wired.leases(plan) {
                    let call = self.settle_call(&plan.tenant, &wired, &lease, 0, (0, 0));
                    self.pending.lock().resend(wire::SETTLE, call);
                }
                Answer::Unavailable
            }
        }
    }

    /// The settlement of `lease`, marked done under its id.
    fn settle_call(
        &self,
        tenant: &str,
        wired: &Wired,
        lease: &Lease,
        at_ms: u64,
        used: (u64, u64),
    ) -> (Vec<String>, String) {
        let done = wire::done_key(&self.settings.prefix, tenant, &format!("s:{}", lease.id));
        wire::settle_call(wired, done, lease, at_ms, used)
    }

    fn held(
        self: &Arc<Self>,
        plan: &SharedPlan,
        wired: Arc<Wired>,
        (n, lease, leased): (u64, Lease, bool),
        at_ms: u64,
        headers: RateHeaders,
    ) -> Held {
        if leased {
            let r = Renewal {
                wired: wired.clone(),
                lease: lease.clone(),
                renewed: Instant::now(),
            };
            self.renewals.lock().insert(n, r);
        }
        Held {
            shared: self.clone(),
            tenant: plan.tenant.clone(),
            wired,
            lease,
            renewal: leased.then_some(n),
            at_ms,
            price: plan.price,
            headers,
        }
    }

    /// One call within `timeout_ms`; a failure marks the store down and answers `None`.
    async fn call(&self, op: Op, keys: &[String], arg: &str) -> Option<Vec<i64>> {
        let call = self.server.call(op.lane(), op.function(), keys, arg);
        match within(self.settings.timeout, call).await {
            Ok(r) => Some(r),
            Err(e) => {
                self.down(op.label(), &e);
                None
            }
        }
    }

    /// Counts a failed call; the first one since the store was last up is logged.
    fn down(&self, op: &'static str, error: &str) {
        self.metrics.errors.with_label_values(&[op]).inc();
        self.up.store(false, Ordering::Relaxed);
        self.metrics.up.set(0);
        if !self.logged_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                endpoint = %self.settings.endpoint,
                op,
                error,
                "shared state store unreachable: limits and budgets follow state.on_error until it is back"
            );
        }
    }

    fn back(&self) {
        self.metrics.up.set(1);
        if !self.up.swap(true, Ordering::Relaxed) {
            self.logged_down.store(false, Ordering::Relaxed);
            tracing::info!(
                endpoint = %self.settings.endpoint,
                "shared state store reachable: limits and budgets are shared"
            );
        }
    }

    /// Records what a request admitted here (store away) used, to merge when the store is back.
    pub fn count_locally(&self, c: &Counted, tokens: u64, cost_usd: f64) {
        self.pending
            .lock()
            .add(&c.tenant, &c.wired, 1, tokens, wire::micro(cost_usd));
    }

    /// Today's and this month's spend in USD of each `(tenant, scope id)`, from the store;
    /// `None` while it is away.
    pub async fn spend(&self, scopes: &[(&str, &str)]) -> Option<Vec<(f64, f64)>> {
        let mut out = Vec::with_capacity(scopes.len());
        for (tenant, id) in scopes {
            let key = wire::spend_key(&self.settings.prefix, tenant, id);
            if !self.is_up() {
                return None;
            }
            let r = self.call(Op::Spend, &[key], "").await?;
            let usd = |i: usize| r.get(i).copied().unwrap_or(0) as f64 / 1_000_000.0;
            out.push((usd(0), usd(1)));
        }
        Some(out)
    }

    /// Settlements still on their way to the store.
    pub fn settling(&self) -> u64 {
        self.settling.load(Ordering::Relaxed)
    }
}

impl Held {
    /// Replaces the reservation by what was used (`tokens`, `cost_usd`), off the request path.
    /// If the store is away or does not answer in time, the same settlement is sent again when
    /// it is back (it applies once); the leases expire by themselves meanwhile.
    pub fn settle(mut self, tokens: u64, cost_usd: f64) {
        let shared = self.shared.clone();
        if let Some(n) = self.renewal.take() {
            shared.renewals.lock().remove(&n);
        }
        let cost = wire::micro(cost_usd);
        let leased = self.wired.leases_of(&self.lease);
        if !leased && cost == 0 && tokens == 0 {
            return;
        }
        let used = (tokens, cost);
        let call = shared.settle_call(&self.tenant, &self.wired, &self.lease, self.at_ms, used);
        shared.settling.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let (keys, arg) = &call;
            let done = shared.is_up() && shared.call(Op::Settle, keys, arg).await.is_some();
            if !done {
                shared.pending.lock().resend(wire::SETTLE, call);
            }
            shared.settling.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(n) = self.renewal {
            self.shared.renewals.lock().remove(&n);
        }
    }
}

/// The store's operations on the request path and for upkeep: which function each calls, on
/// which lane, and its `op` label in `llmedge_state_backend_errors_total`.
#[derive(Debug, Clone, Copy)]
enum Op {
    Admit,
    Settle,
    Renew,
    Spend,
}

impl Op {
    fn function(self) -> &'static str {
        match self {
            Self::Admit => wire::ADMIT,
            Self::Settle => wire::SETTLE,
            Self::Renew => wire::RENEW,
            Self::Spend => wire::SPEND,
        }
    }

    fn lane(self) -> Lane {
        match self {
            Self::Admit | Self::Settle => Lane::Request,
            Self::Renew | Self::Spend => Lane::Upkeep,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Admit => "admit",
            Self::Settle => "settle",
            Self::Renew => "renew",
            Self::Spend => "spend",
        }
    }
}

/// `fut`, or an error naming the wait once `wait` has passed.
async fn within<T>(
    wait: Duration,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(wait, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", wait.as_millis())))
}

/// A random id for this process's leases (two processes never share one).
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests;
