//! The gateway's one live state: the swappable config snapshot, and the runtime state every
//! snapshot shares by stable id (backend health, ejections, scraped load and in-flight slots;
//! limit counters and spend; the model-list cache). A reload builds a new snapshot over the same
//! runtime state and swaps it in: nothing is copied, so nothing is lost or left behind.
//!
//! Admission and settlement go through here. They need no barrier against a reload: the
//! counters a request reserves in are the cells it settles in, whichever snapshot is current.
//! Background services (health checks, load scrapes, the counter flush, the drain) read this
//! state each time they run, never a snapshot they captured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::auth::KeyEntry;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, OnError};
use crate::control::{merge, Records};
use crate::errors::ConfigError;
use crate::errors::GatewayError;
use crate::limits::{self, Ask, Counters, Denied, RateHeaders};
use crate::models::ModelsCache;
use crate::openai::Usage;
use crate::shared::{self, Answer, Counted, Held, Shared};
use crate::state::Snapshot;
use crate::store::Store;
use crate::upstream::Backends;

pub mod flush;
pub mod monitor;

pub struct Live {
    snap: ArcSwap<Snapshot>,
    backends: Backends,
    counters: Counters,
    pub models: ModelsCache,
    clock: Arc<dyn Clock>,
    /// Bumped by every swap; the upstream monitor waits on it to check new backends.
    generation: watch::Sender<u64>,
    /// What the current snapshot was built from: the config file and the store's records.
    /// Held while a snapshot is built, so swaps happen one at a time and in order.
    sources: Mutex<Sources>,
    /// The control-plane store (keys and tenants managed at runtime), once attached.
    control: std::sync::OnceLock<Arc<Store>>,
    /// The usage ledger, once attached (`store.ledger`).
    ledger: std::sync::OnceLock<Arc<crate::ledger::Ledger>>,
    /// Set when a graceful shutdown starts: `/readyz` answers 503 from then on.
    draining: AtomicBool,
    /// `state.backend: redis`: the counters every gateway shares.
    shared: Option<Arc<Shared>>,
}

struct Sources {
    file: Config,
    records: Arc<Records>,
}

/// An admitted request's reservations, wherever they were made.
pub enum Admitted {
    /// In this process's counters; `Some` while the shared store was away (merged later).
    Local(limits::Admitted, Option<Counted>),
    /// In the shared store.
    Shared(Held),
}

impl Admitted {
    /// The `x-ratelimit-*` values of the admission.
    pub fn headers(&self) -> RateHeaders {
        match self {
            Self::Local(a, _) => a.headers,
            Self::Shared(h) => h.headers,
        }
    }
}

/// What admission decided.
pub enum Admission {
    Admitted(Admitted),
    /// A limit or budget refused.
    Refused(Denied),
}

impl Live {
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::build(config, clock, None)
    }

    /// A live state whose limits are kept in `shared` (every gateway on it sees one count).
    pub fn with_shared(config: Config, shared: Arc<Shared>) -> Arc<Self> {
        Self::build(config, Arc::new(SystemClock), Some(shared))
    }

    fn build(config: Config, clock: Arc<dyn Clock>, shared: Option<Arc<Shared>>) -> Arc<Self> {
        let backends = Backends::default();
        let counters = Counters::default();
        let sources = Sources {
            file: config.clone(),
            records: Arc::new(Records::default()),
        };
        let snap = Snapshot::new(config, &backends, &counters, clock.clone());
        Arc::new(Self {
            snap: ArcSwap::from_pointee(snap),
            backends,
            counters,
            models: ModelsCache::default(),
            clock,
            generation: watch::channel(0).0,
            sources: Mutex::new(sources),
            control: std::sync::OnceLock::new(),
            ledger: std::sync::OnceLock::new(),
            draining: AtomicBool::new(false),
            shared,
        })
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snap.load_full()
    }

    /// Builds the snapshot of the file's `config` (joined with the store's records) over the
    /// live state and makes it current; requests in flight finish on the snapshot they pinned.
    /// Refused, and the running config kept, when a file key has a store key's secret.
    pub fn swap(&self, config: Config) -> Result<(), ConfigError> {
        let mut src = self.sources.lock();
        let (merged, skipped) = merge::checked(&config, &src.records)?;
        log_skipped(&skipped);
        src.file = config;
        self.install(merged);
        Ok(())
    }

    /// Runs on the store's newest records (the file's config unchanged). A store key that
    /// clashes with the file is left out, and said so.
    pub fn set_records(&self, records: Arc<Records>) {
        let mut src = self.sources.lock();
        if Arc::ptr_eq(&src.records, &records) {
            return;
        }
        let (merged, skipped) = merge::effective(&src.file, &records);
        log_skipped(&skipped);
        src.records = records;
        self.install(merged);
    }

    /// The store records the current snapshot runs on.
    pub fn records(&self) -> Arc<Records> {
        self.sources.lock().records.clone()
    }

    /// The tenants the config file defines (the store cannot change those).
    pub fn file_tenants(&self) -> Vec<String> {
        let src = self.sources.lock();
        src.file.tenants.iter().map(|t| t.name.clone()).collect()
    }

    /// Whether a file key has the secret whose digest is `d`.
    pub fn file_has_digest(&self, d: &[u8; 32]) -> bool {
        self.sources.lock().file.keys.iter().any(|k| &k.digest == d)
    }

    /// Attaches the control-plane store (once): the admin API writes through it.
    pub fn attach_store(&self, store: Arc<Store>) {
        let _already = self.control.set(store);
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.control.get()
    }

    /// Attaches the usage ledger (once): every authenticated request is recorded in it.
    pub fn attach_ledger(&self, ledger: Arc<crate::ledger::Ledger>) {
        let _already = self.ledger.set(ledger);
    }

    pub fn ledger(&self) -> Option<&Arc<crate::ledger::Ledger>> {
        self.ledger.get()
    }

    fn install(&self, merged: Config) {
        let next = Snapshot::new(merged, &self.backends, &self.counters, self.clock.clone());
        self.snap.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that changes whenever a new snapshot is swapped in.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// Reserves a request against every limit and budget of its key and tenant, under the
    /// newest rules: a request that authenticated on an older snapshot is admitted as the key
    /// stands now, and refused if a reload revoked the key meanwhile. With a shared store this
    /// is one round trip to it (at most `timeout_ms`); while it is away, `on_error` decides.
    pub async fn admit(
        &self,
        pinned: &Snapshot,
        key: &KeyEntry,
        ask: (&str, u64, u64),
    ) -> Result<Admission, GatewayError> {
        let current = self.snap.load_full();
        if key.is_transient() {
            return self.admit_transient(&current, key, ask).await;
        }
        let key = if std::ptr::eq(&*current, pinned) {
            key
        } else {
            current
                .same_key(pinned, key.principal.key_index)
                .ok_or(GatewayError::InvalidApiKey)?
        };
        let ask = ask_of(key, ask);
        let plan = self.shared.as_ref().and_then(|s| {
            let plan = current.governor.plan(&ask)?;
            (!plan.is_free()).then_some((s, plan))
        });
        let Some((store, plan)) = plan else {
            return Ok(local(&current, &ask, None));
        };
        match store.admit(&plan).await {
            Answer::Granted(h) => Ok(Admission::Admitted(Admitted::Shared(h))),
            Answer::Refused(d) => Ok(Admission::Refused(d)),
            Answer::Unavailable => {
                if denied_while_away(&current, &plan) {
                    return Err(GatewayError::StateUnavailable);
                }
                let counted = Counted {
                    wired: Arc::new(shared::wire::Wired::new(&store.settings().prefix, &plan)),
                    tenant: plan.tenant,
                };
                Ok(local(&current, &ask, Some(counted)))
            }
        }
    }

    /// An anonymous caller: its route's limits on a cell of its own identity, shared through
    /// Redis like a key's when the gateways share counters.
    async fn admit_transient(
        &self,
        current: &Snapshot,
        key: &KeyEntry,
        ask: (&str, u64, u64),
    ) -> Result<Admission, GatewayError> {
        let ask = ask_of(key, ask);
        let plan = self
            .shared
            .as_ref()
            .zip(current.governor.plan_transient(&ask));
        if let Some((store, plan)) = plan {
            match store.admit(&plan).await {
                Answer::Granted(h) => return Ok(Admission::Admitted(Admitted::Shared(h))),
                Answer::Refused(d) => return Ok(Admission::Refused(d)),
                Answer::Unavailable if denied_while_away(current, &plan) => {
                    return Err(GatewayError::StateUnavailable);
                }
                Answer::Unavailable => {}
            }
        }
        let cell = self.counters.cell(&limits::transient_cell_id(key));
        Ok(match current.governor.admit_transient(&ask, cell) {
            Ok(a) => Admission::Admitted(Admitted::Local(a, None)),
            Err(d) => Admission::Refused(d),
        })
    }

    /// Replaces an admission's reservation by what the request used; returns its cost.
    pub fn settle(&self, adm: Admitted, used: Usage) -> f64 {
        let tokens = used.prompt_tokens.saturating_add(used.completion_tokens);
        match adm {
            Admitted::Local(a, counted) => {
                let cost = a.settle(used, &*self.clock);
                if let (Some(c), Some(s)) = (counted, &self.shared) {
                    s.count_locally(&c, tokens, cost);
                }
                cost
            }
            Admitted::Shared(h) => {
                let cost = limits::usage_cost(h.price, &used);
                h.settle(tokens, cost);
                cost
            }
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `/readyz`, as its status and `status` word (200 `ready`, 503 `draining`): the config is
    /// loaded and the listeners are up (this answers), and the process is not draining. Backend
    /// availability does not enter: every replica sees the same backends, and one dead pool
    /// must not take them all out of their load balancer.
    pub fn readiness(&self) -> (u16, &'static str) {
        if !self.draining.load(Ordering::Relaxed) {
            (200, "ready")
        } else {
            (503, "draining")
        }
    }
}

fn log_skipped(skipped: &[merge::Skipped]) {
    for s in skipped {
        tracing::error!(id = %s.id, reason = %s.reason, "store entry not loaded");
    }
}

/// Admission in this process's counters.
/// The limits' view of a request: its key, model, prompt estimate and completion reserve.
fn ask_of<'a>(key: &'a KeyEntry, (model, prompt, completion): (&'a str, u64, u64)) -> Ask<'a> {
    Ask {
        key,
        model,
        prompt,
        completion,
    }
}

/// `state.on_error` says to refuse what `plan` checks while Redis is away.
fn denied_while_away(snap: &Snapshot, plan: &limits::SharedPlan) -> bool {
    snap.config.shared.as_ref().is_some_and(|c| {
        (plan.has_budget() && c.on_error_budgets == OnError::Deny)
            || (plan.has_limits() && c.on_error_limits == OnError::Deny)
    })
}

fn local(snap: &Snapshot, ask: &Ask<'_>, counted: Option<Counted>) -> Admission {
    match snap.governor.admit(ask) {
        Ok(a) => Admission::Admitted(Admitted::Local(a, counted)),
        Err(d) => Admission::Refused(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let base = format!(
            "pools: {{p: {{backends: ['http://h:1', 'http://h:2']}}}}\nroutes: [{{prefix: '', pool: p}}]\n{yaml}"
        );
        Config::from_yaml(&base, &|_| None).unwrap()
    }

    #[test]
    fn a_swap_keeps_backend_state_and_counters_without_copying() {
        let live = Live::new(config(
            "keys: [{key: a, tenant: t, limits: {concurrency: 1}}]",
        ));
        let old = live.load();
        let key = old.keys.lookup(b"a").unwrap().clone();
        let Admission::Admitted(running) =
            futures::executor::block_on(live.admit(&old, &key, ("m", 0, 0))).unwrap()
        else {
            panic!("first request admitted")
        };
        let now = std::time::Instant::now();
        old.pools[0].with_health(1, |h| h.eject(now));
        // the new config puts a key before "a" and a backend before the ejected one
        live.swap(Config::from_yaml(
            "pools: {p: {backends: ['http://h:0', 'http://h:1', 'http://h:2']}}\nroutes: [{prefix: '', pool: p}]\nkeys: [{key: z, tenant: u}, {key: a, tenant: t, limits: {concurrency: 1}}]",
            &|_| None,
        ).unwrap()).unwrap();
        let new = live.load();
        assert!(
            !new.pools[0].is_up(2, now),
            "the ejected backend is still ejected"
        );
        assert!(new.pools[0].is_up(1, now));
        let Admission::Refused(d) =
            futures::executor::block_on(live.admit(&old, &key, ("m", 0, 0))).unwrap()
        else {
            panic!("the running request still holds the only slot")
        };
        assert_eq!(
            d.scope, "key 1",
            "under the new rules, where the key now sits"
        );
        live.settle(running, Usage::default());
        assert!(matches!(
            futures::executor::block_on(live.admit(&new, &new.config.keys[1], ("m", 0, 0)))
                .unwrap(),
            Admission::Admitted(_)
        ));
    }

    #[test]
    fn admission_does_not_wait_for_a_reload_in_progress() {
        let live = Live::new(config("keys: [{key: a, tenant: t}]"));
        let building = live.sources.lock(); // a reload building its snapshot
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let snap = live.load();
                let key = snap.config.keys[0].clone();
                let admitted = matches!(
                    futures::executor::block_on(live.admit(&snap, &key, ("m", 1, 1))),
                    Ok(Admission::Admitted(_))
                );
                let _ = tx.send(admitted);
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(10));
            drop(building);
            assert_eq!(got, Ok(true), "admitted while the reload held its lock");
        });
    }

    #[test]
    fn store_records_join_the_file_and_a_reload_with_a_store_secret_is_refused() {
        use crate::control::{KeyRecord, SecretRecord};
        let live = Live::new(config("keys: [{key: a, tenant: t}]"));
        let rec = KeyRecord {
            id: "key_1".into(),
            tenant: "s".into(),
            name: "n".into(),
            user: String::new(),
            hint: String::new(),
            spec: Default::default(),
            expires_at: None,
            created_at: 0,
            updated_at: 0,
            revoked_at: None,
            secrets: vec![SecretRecord {
                digest: hex::encode(crate::config::secret::digest(b"b")),
                until: None,
            }],
        };
        let records = Arc::new(Records {
            revision: 1,
            keys: vec![rec],
            tenants: vec![],
        });
        live.set_records(records.clone());
        let snap = live.load();
        assert_eq!(&*snap.keys.lookup(b"b").unwrap().principal.key_id, "key_1");
        assert!(snap.keys.lookup(b"a").is_some(), "the file key still works");
        let e = live
            .swap(config("keys: [{key: a, tenant: t}, {key: b, tenant: t}]"))
            .unwrap_err();
        assert!(e.to_string().contains("key_1"), "{e}");
        assert_eq!(live.load().keys.len(), 2, "the running config stays");
        live.set_records(Arc::new(Records::default()));
        assert!(
            live.load().keys.lookup(b"b").is_none(),
            "revoked by the store"
        );
    }

    #[test]
    fn a_key_revoked_by_a_reload_is_refused_and_draining_is_unready() {
        let live = Live::new(config("keys: [{key: a, tenant: t}]"));
        let old = live.load();
        let key = old.keys.lookup(b"a").unwrap().clone();
        live.swap(config("keys: [{key: b, tenant: t}]")).unwrap();
        assert!(matches!(
            futures::executor::block_on(live.admit(&old, &key, ("m", 0, 0))),
            Err(GatewayError::InvalidApiKey)
        ));
        assert_eq!(live.readiness(), (200, "ready"));
        live.start_draining();
        assert_eq!(live.readiness(), (503, "draining"));
    }

    struct Away;

    #[async_trait::async_trait]
    impl shared::CounterServer for Away {
        async fn call(
            &self,
            _: shared::Lane,
            _: &'static str,
            _: &[String],
            _: &str,
        ) -> Result<Vec<i64>, String> {
            Err("connection refused".into())
        }

        async fn ping(&self) -> Result<(), String> {
            Err("connection refused".into())
        }
    }

    fn on_redis(on_error: &str) -> Arc<Live> {
        let yaml = format!(
            "keys: [{{key: a, tenant: t, limits: {{rpm: 5}}}}, {{key: b, tenant: u}}, {{key: c, tenant: free}}]\ntenants: {{u: {{budget: {{usd_per_day: 1}}}}}}\nstate: {{backend: redis, redis: {{url: 'redis://h'}}{on_error}}}"
        );
        let settings = shared::Settings {
            prefix: "p:".into(),
            endpoint: "h:6379".into(),
            timeout: std::time::Duration::from_millis(50),
            lease: std::time::Duration::from_secs(30),
        };
        let metrics = crate::metrics::Metrics::new(4).unwrap().state.clone();
        let store = Arc::new(Shared::new(Arc::new(Away), settings, metrics));
        Live::with_shared(config(&yaml), store)
    }

    fn admit_key(live: &Live, k: &[u8]) -> Result<Admission, GatewayError> {
        let snap = live.load();
        let key = snap.keys.lookup(k).unwrap().clone();
        futures::executor::block_on(live.admit(&snap, &key, ("m", 1, 1)))
    }

    #[test]
    fn with_the_store_away_on_error_decides_per_request() {
        let live = on_redis("");
        assert!(
            matches!(
                admit_key(&live, b"a"),
                Ok(Admission::Admitted(Admitted::Local(_, Some(_))))
            ),
            "limits: allow admits and counts locally, to merge later"
        );
        assert!(
            matches!(admit_key(&live, b"b"), Err(GatewayError::StateUnavailable)),
            "budgets: deny by default"
        );
        assert!(
            matches!(
                admit_key(&live, b"c"),
                Ok(Admission::Admitted(Admitted::Local(_, None)))
            ),
            "nothing to count: no store needed"
        );
        let strict = on_redis(", on_error: {limits: deny, budgets: allow}");
        assert!(matches!(
            admit_key(&strict, b"a"),
            Err(GatewayError::StateUnavailable)
        ));
        assert!(matches!(
            admit_key(&strict, b"b"),
            Ok(Admission::Admitted(Admitted::Local(_, Some(_))))
        ));
    }
}
