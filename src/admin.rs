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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, ctype, body) = match req.uri.path() {
            "/metrics" => {
                let snap = self.state.load();
                self.metrics.refresh_backends(&snap.pools);
                self.metrics.refresh_routes(&snap.route_availability());
                self.metrics.refresh_budgets(&snap.governor);
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
