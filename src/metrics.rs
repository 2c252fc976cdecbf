//! The gateway's Prometheus metrics, registered once per gateway in its own registry.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Distinct client-facing model names admitted as label values before the rest become `other`.
pub const DEFAULT_MODEL_LABEL_CAP: usize = 256;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// All metrics. Label values come from config names or closed sets; `model` is capped.
pub struct Metrics {
    registry: Registry,
    /// `llmedge_requests_total{route,pool,status}`: finished requests.
    pub requests: IntCounterVec,
    /// `llmedge_endpoint_requests_total{endpoint,pool,status}`: finished requests by endpoint
    /// (`chat`, `messages`, … or `passthrough`).
    pub endpoint_requests: IntCounterVec,
    /// `llmedge_request_duration_seconds{route,pool}`: from request header to last byte.
    pub duration: HistogramVec,
    /// `llmedge_time_to_first_token_seconds{route,pool}`: streams only, to the first choice.
    pub ttft: HistogramVec,
    /// `llmedge_tokens_total{tenant,model,kind}`, kind = prompt | completion.
    pub tokens: IntCounterVec,
    /// `llmedge_upstream_errors_total{pool,reason}`.
    pub upstream_errors: IntCounterVec,
    /// `llmedge_inflight_requests{pool}`: requests between routing and the end.
    pub inflight: IntGaugeVec,
    /// `llmedge_upstream_attempts_total{pool,backend,outcome}`: every attempt, retries included.
    pub attempts: IntCounterVec,
    /// `llmedge_retries_total{pool,reason}`: attempts followed by another one.
    pub retries: IntCounterVec,
    /// `llmedge_fallbacks_total{route,pool}`: requests moved on to a fallback pool.
    pub fallbacks: IntCounterVec,
    /// `llmedge_backend_up{pool,backend}`: 1 when checks pass and the backend is not ejected.
    pub backend_up: IntGaugeVec,
    /// `llmedge_backend_inflight{pool,backend}`: this gateway's requests on the backend.
    pub backend_inflight: IntGaugeVec,
    /// `llmedge_backend_queue_depth{pool,backend}`: scraped waiting requests (absent = unknown).
    pub backend_queue: prometheus::GaugeVec,
    /// `llmedge_backend_kv_cache_usage{pool,backend}`: scraped KV-cache usage, 0..1.
    pub backend_kv: prometheus::GaugeVec,
    /// `llmedge_ratelimited_total{tenant,limit}`, limit = rpm | tpm | concurrency | budget_day |
    /// budget_month.
    pub ratelimited: IntCounterVec,
    /// `llmedge_spend_usd_total{tenant,model}`: settled cost at the configured prices.
    pub spend: prometheus::CounterVec,
    /// `llmedge_budget_remaining_usd{tenant,window}`, window = day | month.
    pub budget_remaining: prometheus::GaugeVec,
    /// `llmedge_route_available{route}`: 1 when a backend of the route's pool or of a fallback
    /// takes requests.
    pub route_available: IntGaugeVec,
    /// `llmedge_config_reload_total{result}`, result = success | failure.
    pub reloads: IntCounterVec,
    /// `llmedge_prefix_blocks_total{pool,result}`, result = hit | miss: prompt blocks of
    /// `cache_aware` requests the chosen backend held, and those it had to prefill.
    pub prefix_blocks: IntCounterVec,
    /// `llmedge_prefix_index_blocks{pool}`: entries in a `cache_aware` pool's prefix index.
    pub prefix_index: IntGaugeVec,
    /// `llmedge_response_affinity_total{pool,result}`, result = hit | fallback | unknown:
    /// Responses requests with `previous_response_id` sent to the backend that made that
    /// response, elsewhere because it was unavailable, or not known to this gateway.
    pub response_affinity: IntCounterVec,
    /// `llmedge_state_backend_*`: the shared counter store (Redis).
    pub state: StateMetrics,
    pub store: StoreMetrics,
    pub ledger: LedgerMetrics,
    /// Every registered metric family's name (dashboards are checked against it).
    names: Vec<String>,
    models: ModelLabels,
}

/// The shared counter store's health, as every gateway on it sees it.
#[derive(Clone)]
pub struct StateMetrics {
    /// `llmedge_state_backend_up`: 1 while Redis answers within `timeout_ms`.
    pub up: prometheus::IntGauge,
    /// `llmedge_state_backend_errors_total{op}`, op = admit | settle | renew | merge | spend |
    /// connect | ping.
    pub errors: IntCounterVec,
    /// `llmedge_state_backend_seconds`: the admission round trip.
    pub seconds: prometheus::Histogram,
}

/// The control plane's store, as this gateway sees it.
#[derive(Clone)]
pub struct StoreMetrics {
    /// `llmedge_store_up`: 1 while the keys-and-tenants store answers.
    pub up: prometheus::IntGauge,
    /// `llmedge_store_keys`: store keys this gateway authenticates (live, not revoked).
    pub keys: prometheus::IntGauge,
    /// `llmedge_store_revision`: the store revision this gateway runs on.
    pub revision: prometheus::IntGauge,
}

/// The usage ledger's writer.
#[derive(Clone)]
pub struct LedgerMetrics {
    /// `llmedge_ledger_queue_rows`: rows recorded and not yet written.
    pub queued: prometheus::IntGauge,
    /// `llmedge_ledger_rows_total`: rows written to the store.
    pub written: prometheus::IntCounter,
    /// `llmedge_ledger_dropped_total`: rows lost (a full queue, or a store away at exit).
    pub dropped: prometheus::IntCounter,
}

/// Round trips on loopback take tens of microseconds; a timeout is tens of milliseconds.
const STORE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A metric family: name, help and label names.
type Spec = (&'static str, &'static str, &'static [&'static str]);

const BACKEND: &[&str] = &["pool", "backend"];
const REQUESTS: Spec = (
    "llmedge_requests_total",
    "Requests finished, by route, pool and status",
    &["route", "pool", "status"],
);
const ENDPOINT_REQUESTS: Spec = (
    "llmedge_endpoint_requests_total",
    "Requests finished, by endpoint (chat, messages, ..., passthrough), pool and status",
    &["endpoint", "pool", "status"],
);
const DURATION: Spec = (
    "llmedge_request_duration_seconds",
    "Time from request header to the last response byte",
    &["route", "pool"],
);
const TTFT: Spec = (
    "llmedge_time_to_first_token_seconds",
    "Time from request header to the first streamed choice",
    &["route", "pool"],
);
const TOKENS: Spec = (
    "llmedge_tokens_total",
    "Tokens reported by upstreams",
    &["tenant", "model", "kind"],
);
const UPSTREAM_ERRORS: Spec = (
    "llmedge_upstream_errors_total",
    "Upstream failures by reason",
    &["pool", "reason"],
);
const INFLIGHT: Spec = (
    "llmedge_inflight_requests",
    "Requests in flight to each pool",
    &["pool"],
);
const ATTEMPTS: Spec = (
    "llmedge_upstream_attempts_total",
    "Upstream attempts by outcome",
    &["pool", "backend", "outcome"],
);
const RETRIES: Spec = (
    "llmedge_retries_total",
    "Attempts that were retried, by reason",
    &["pool", "reason"],
);
const FALLBACKS: Spec = (
    "llmedge_fallbacks_total",
    "Requests moved on to a fallback pool",
    &["route", "pool"],
);
const BACKEND_UP: Spec = (
    "llmedge_backend_up",
    "1 when the backend takes new requests",
    BACKEND,
);
const BACKEND_INFLIGHT: Spec = (
    "llmedge_backend_inflight",
    "This gateway's requests on the backend",
    BACKEND,
);
const BACKEND_QUEUE: Spec = (
    "llmedge_backend_queue_depth",
    "Waiting requests the backend reports",
    BACKEND,
);
const BACKEND_KV: Spec = (
    "llmedge_backend_kv_cache_usage",
    "KV-cache usage the backend reports",
    BACKEND,
);
const RATELIMITED: Spec = (
    "llmedge_ratelimited_total",
    "Requests refused by a limit or budget",
    &["tenant", "limit"],
);
const SPEND: Spec = (
    "llmedge_spend_usd_total",
    "Spend in USD at the configured prices",
    &["tenant", "model"],
);
const BUDGET_REMAINING: Spec = (
    "llmedge_budget_remaining_usd",
    "What is left of each tenant budget",
    &["tenant", "window"],
);
const ROUTE_AVAILABLE: Spec = (
    "llmedge_route_available",
    "1 when a backend of the route's pool or of a fallback takes requests",
    &["route"],
);
const PREFIX_BLOCKS: Spec = (
    "llmedge_prefix_blocks_total",
    "Prompt blocks of cache_aware requests the chosen backend held (hit) or not (miss)",
    &["pool", "result"],
);
const PREFIX_INDEX: Spec = (
    "llmedge_prefix_index_blocks",
    "Entries in a cache_aware pool's prefix index",
    &["pool"],
);
const RESPONSE_AFFINITY: Spec = (
    "llmedge_response_affinity_total",
    "Responses requests with previous_response_id by where they went (hit | fallback | unknown)",
    &["pool", "result"],
);
const RELOADS: Spec = (
    "llmedge_config_reload_total",
    "Config reloads by result (success | failure)",
    &["result"],
);

impl Metrics {
    pub fn new(model_label_cap: usize) -> Result<Arc<Self>, prometheus::Error> {
        let r = Reg {
            registry: Registry::new(),
            names: Mutex::new(Vec::new()),
        };
        Ok(Arc::new(Self {
            requests: r.counter(REQUESTS)?,
            endpoint_requests: r.counter(ENDPOINT_REQUESTS)?,
            duration: r.histogram(DURATION)?,
            ttft: r.histogram(TTFT)?,
            tokens: r.counter(TOKENS)?,
            upstream_errors: r.counter(UPSTREAM_ERRORS)?,
            inflight: r.int_gauge(INFLIGHT)?,
            attempts: r.counter(ATTEMPTS)?,
            retries: r.counter(RETRIES)?,
            fallbacks: r.counter(FALLBACKS)?,
            backend_up: r.int_gauge(BACKEND_UP)?,
            backend_inflight: r.int_gauge(BACKEND_INFLIGHT)?,
            backend_queue: r.gauge(BACKEND_QUEUE)?,
            backend_kv: r.gauge(BACKEND_KV)?,
            ratelimited: r.counter(RATELIMITED)?,
            spend: r.float_counter(SPEND)?,
            budget_remaining: r.gauge(BUDGET_REMAINING)?,
            route_available: r.int_gauge(ROUTE_AVAILABLE)?,
            reloads: r.counter(RELOADS)?,
            prefix_blocks: r.counter(PREFIX_BLOCKS)?,
            prefix_index: r.int_gauge(PREFIX_INDEX)?,
            response_affinity: r.counter(RESPONSE_AFFINITY)?,
            state: r.state()?,
            store: r.store()?,
            ledger: r.ledger()?,
            registry: r.registry,
            names: r.names.into_inner(),
            models: ModelLabels::new(model_label_cap),
        }))
    }

    /// The label value for a client-facing model that matched a route.
    pub fn model_label(&self, model: &str) -> String {
        self.models.admit(model)
    }

    /// Sets the per-backend gauges from the pools' live state (called at scrape time).
    pub fn refresh_backends(&self, pools: &[crate::upstream::Pool]) {
        let now = std::time::Instant::now();
        // a reload may have removed backends: rebuild the series from the current pools
        self.backend_up.reset();
        self.backend_inflight.reset();
        self.backend_queue.reset();
        self.backend_kv.reset();
        for pool in pools {
            if let Some(n) = pool.prefix_entries() {
                self.prefix_index
                    .with_label_values(&[pool.name()])
                    .set(n as i64);
            }
            for b in 0..pool.len() {
                let backend = pool.backend(b).map_or("", |u| u.authority.as_str());
                let labels = [pool.name(), backend];
                self.backend_up
                    .with_label_values(&labels)
                    .set(i64::from(pool.is_up(b, now)));
                self.backend_inflight
                    .with_label_values(&labels)
                    .set(pool.inflight(b) as i64);
                match pool.load_signal(b, now) {
                    Some(l) => {
                        self.backend_queue.with_label_values(&labels).set(l.waiting);
                        self.backend_kv.with_label_values(&labels).set(l.kv_usage);
                    }
                    None => {
                        let _absent = self.backend_queue.remove_label_values(&labels);
                        let _absent = self.backend_kv.remove_label_values(&labels);
                    }
                }
            }
        }
    }

    /// Sets the per-route availability gauge (called at scrape time).
    pub fn refresh_routes(&self, routes: &[(&str, bool)]) {
        self.route_available.reset();
        for (route, up) in routes {
            self.route_available
                .with_label_values(&[route])
                .set(i64::from(*up));
        }
    }

    /// Sets the budget gauges from the governor (called at scrape time).
    pub fn refresh_budgets(&self, governor: &crate::limits::Governor) {
        for (tenant, window, usd) in governor.budget_remaining() {
            self.budget_remaining
                .with_label_values(&[tenant.as_str(), window])
                .set(usd);
        }
    }

    /// The name of every metric family this gateway exports.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // encoding into a Vec only fails on invalid metric families, which we never build
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        buf
    }
}

/// A registry that remembers what was registered in it.
struct Reg {
    registry: Registry,
    names: Mutex<Vec<String>>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    r: &Reg,
    c: C,
) -> Result<C, prometheus::Error> {
    r.registry.register(Box::new(c.clone()))?;
    r.names
        .lock()
        .extend(c.desc().iter().map(|d| d.fq_name.clone()));
    Ok(c)
}

impl Reg {
    fn counter(&self, (name, help, labels): Spec) -> Result<IntCounterVec, prometheus::Error> {
        register(self, IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn float_counter(
        &self,
        (name, help, labels): Spec,
    ) -> Result<prometheus::CounterVec, prometheus::Error> {
        register(
            self,
            prometheus::CounterVec::new(Opts::new(name, help), labels)?,
        )
    }

    fn gauge(&self, (name, help, labels): Spec) -> Result<prometheus::GaugeVec, prometheus::Error> {
        register(
            self,
            prometheus::GaugeVec::new(Opts::new(name, help), labels)?,
        )
    }

    fn int_gauge(&self, (name, help, labels): Spec) -> Result<IntGaugeVec, prometheus::Error> {
        register(self, IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn store(&self) -> Result<StoreMetrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            prometheus::IntGauge::new(name, help).and_then(|g| register(self, g))
        };
        Ok(StoreMetrics {
            up: gauge(
                "llmedge_store_up",
                "1 while the control-plane store (keys and tenants) answers",
            )?,
            keys: gauge(
                "llmedge_store_keys",
                "Keys from the control-plane store this gateway authenticates",
            )?,
            revision: gauge(
                "llmedge_store_revision",
                "The control-plane store revision this gateway runs on",
            )?,
        })
    }

    fn ledger(&self) -> Result<LedgerMetrics, prometheus::Error> {
        let counter = |name: &str, help: &str| {
            prometheus::IntCounter::new(name, help).and_then(|c| register(self, c))
        };
        Ok(LedgerMetrics {
            queued: prometheus::IntGauge::new(
                "llmedge_ledger_queue_rows",
                "Usage-ledger rows recorded and not yet written",
            )
            .and_then(|g| register(self, g))?,
            written: counter(
                "llmedge_ledger_rows_total",
                "Usage-ledger rows written to the store",
            )?,
            dropped: counter(
                "llmedge_ledger_dropped_total",
                "Usage-ledger rows lost: the queue was full, or the store was away at exit",
            )?,
        })
    }

    fn state(&self) -> Result<StateMetrics, prometheus::Error> {
        let up = prometheus::IntGauge::new(
            "llmedge_state_backend_up",
            "1 while the shared counter store (Redis) answers in time",
        )?;
        let opts = HistogramOpts::new(
            "llmedge_state_backend_seconds",
            "Admission round trips to the shared counter store",
        )
        .buckets(STORE_BUCKETS.to_vec());
        Ok(StateMetrics {
            up: register(self, up)?,
            errors: self.counter((
                "llmedge_state_backend_errors_total",
                "Failed or timed-out calls to the shared counter store, by operation",
                &["op"],
            ))?,
            seconds: register(self, prometheus::Histogram::with_opts(opts)?)?,
        })
    }

    /// A latency histogram (labelled by route and pool).
    fn histogram(&self, (name, help, labels): Spec) -> Result<HistogramVec, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        register(self, HistogramVec::new(opts, labels)?)
    }
}

/// Admits up to `cap` distinct values, then answers `other`.
struct ModelLabels {
    cap: usize,
    seen: Mutex<HashSet<String>>,
}

impl ModelLabels {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn admit(&self, model: &str) -> String {
        let mut seen = self.seen.lock();
        if seen.contains(model) {
            return model.to_string();
        }
        if seen.len() < self.cap {
            seen.insert(model.to_string());
            return model.to_string();
        }
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_capped() {
        let m = Metrics::new(2).unwrap();
        assert_eq!(m.model_label("a"), "a");
        assert_eq!(m.model_label("b"), "b");
        assert_eq!(m.model_label("c"), "other");
        assert_eq!(m.model_label("a"), "a", "admitted values stay admitted");
    }

    #[test]
    fn every_metric_the_dashboard_queries_is_exported() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana/llmedge.json");
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let m = Metrics::new(4).unwrap();
        let mut queried = 0;
        for panel in dash["panels"].as_array().unwrap() {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("llmedge_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .filter(|f| m.names().iter().any(|n| n == f))
                        .unwrap_or(&name);
                    assert!(
                        m.names().iter().any(|n| n == family),
                        "panel {} queries {name}, which llmedge does not export",
                        panel["title"]
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 15, "the dashboard covers the metrics: {queried}");
        for needed in [
            "llmedge_requests_total",
            "llmedge_upstream_errors_total",
            "llmedge_time_to_first_token_seconds",
            "llmedge_tokens_total",
            "llmedge_spend_usd_total",
            "llmedge_backend_up",
        ] {
            let shown = dash.to_string().contains(needed);
            assert!(shown, "the dashboard shows {needed}");
        }
    }

    #[test]
    fn exposition_has_the_contract_names() {
        let m = Metrics::new(4).unwrap();
        m.requests.with_label_values(&["r", "p", "200"]).inc();
        m.duration.with_label_values(&["r", "p"]).observe(0.1);
        m.ttft.with_label_values(&["r", "p"]).observe(0.1);
        m.tokens.with_label_values(&["t", "m", "prompt"]).inc_by(3);
        m.upstream_errors
            .with_label_values(&["p", "connect_error"])
            .inc();
        m.inflight.with_label_values(&["p"]).set(0);
        let text = String::from_utf8(m.encode()).unwrap();
        for name in [
            "llmedge_requests_total{pool=\"p\",route=\"r\",status=\"200\"} 1",
            "llmedge_request_duration_seconds_bucket",
            "llmedge_time_to_first_token_seconds_count",
            "llmedge_tokens_total{kind=\"prompt\",model=\"m\",tenant=\"t\"} 3",
            "llmedge_upstream_errors_total{pool=\"p\",reason=\"connect_error\"} 1",
            "llmedge_inflight_requests{pool=\"p\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
