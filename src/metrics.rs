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
    /// `llmedge_request_duration_seconds{route,pool}`: from request header to last byte.
    pub duration: HistogramVec,
    /// `llmedge_time_to_first_token_seconds{route,pool}`: streams only, to the first choice.
    pub ttft: HistogramVec,
    /// `llmedge_tokens_total{tenant,model,kind}`, kind = prompt | completion.
    pub tokens: IntCounterVec,
    /// `llmedge_upstream_errors_total{pool,reason}`.
    pub upstream_errors: IntCounterVec,
    /// `llmedge_inflight_requests{pool}`: requests between backend choice and the end.
    pub inflight: IntGaugeVec,
    models: ModelLabels,
}

impl Metrics {
    pub fn new(model_label_cap: usize) -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "llmedge_requests_total",
                "Requests finished, by route, pool and status",
            ),
            &["route", "pool", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "llmedge_request_duration_seconds",
                "Time from request header to the last response byte",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "pool"],
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "llmedge_time_to_first_token_seconds",
                "Time from request header to the first streamed choice",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "pool"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("llmedge_tokens_total", "Tokens reported by upstreams"),
            &["tenant", "model", "kind"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "llmedge_upstream_errors_total",
                "Upstream failures by reason",
            ),
            &["pool", "reason"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "llmedge_inflight_requests",
                "Requests in flight to each pool",
            ),
            &["pool"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        Ok(Arc::new(Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            upstream_errors,
            inflight,
            models: ModelLabels::new(model_label_cap),
        }))
    }

    /// The label value for a client-facing model that matched a route.
    pub fn model_label(&self, model: &str) -> String {
        self.models.admit(model)
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
