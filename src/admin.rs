//! The operators' listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::errors::GatewayError;
use crate::live::Live;
use crate::metrics::Metrics;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub state: Arc<Live>,
}

impl AdminApp {
    /// The same verdict as the API listener's `/readyz`, with each route's availability (this
    /// listener is the operators').
    fn readiness(&self) -> (u16, Vec<u8>) {
        let (code, status) = self.state.readiness();
        let snap = self.state.load();
        let routes: serde_json::Map<String, serde_json::Value> = snap
            .route_availability()
            .into_iter()
            .map(|(prefix, up)| (prefix.to_string(), serde_json::json!({ "available": up })))
            .collect();
        let body = serde_json::json!({"status": status, "routes": routes});
        (code, body.to_string().into_bytes())
    }
}

impl AdminApp {
    /// The budget gauges from the shared spend (left as they were while the store is away).
    async fn shared_budgets(&self, store: &crate::shared::Shared, g: &crate::limits::Governor) {
        let budgets = g.tenant_budgets();
        let scopes: Vec<(&str, &str)> = budgets.iter().map(|(n, id, _)| (&**n, *id)).collect();
        let Some(spent) = store.spend(&scopes).await else {
            return;
        };
        for ((name, _, b), (day, month)) in budgets.iter().zip(spent) {
            for (window, budget, used) in [
                ("day", b.usd_per_day, day),
                ("month", b.usd_per_month, month),
            ] {
                if let Some(budget) = budget {
                    self.metrics
                        .budget_remaining
                        .with_label_values(&[&**name, window])
                        .set((budget - used).max(0.0));
                }
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, ctype, body) = match req.uri.path() {
            "/metrics" => {
                let snap = self.state.load();
                self.metrics.refresh_backends(&snap.pools);
                self.metrics.refresh_routes(&snap.route_availability());
                match self.state.shared() {
                    Some(store) => self.shared_budgets(store, &snap.governor).await,
                    None => self.metrics.refresh_budgets(&snap.governor),
                }
                (200, "text/plain; version=0.0.4", self.metrics.encode())
            }
            "/healthz" => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let (status, body) = self.readiness();
                (status, "application/json", body)
            }
            other => {
                let e = GatewayError::UnknownPath {
                    method: req.method.to_string(),
                    path: other.to_string(),
                };
                (404, "application/json", e.body().to_vec())
            }
        };
        let len = body.len();
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", len)
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
