//! The operators' listener: `/metrics`, `/healthz`, `/readyz`, and the admin API
//! (`/admin/v1/…`, in `admin/`).

pub mod api;
mod keys;
pub mod reply;
mod tenants;
mod usage;

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
        let store = self.state.store().map(|s| {
            serde_json::json!({
                "up": s.is_up(),
                "backend": s.backend(),
                "endpoint": s.endpoint(),
                "revision": self.state.records().revision,
            })
        });
        let body = serde_json::json!({"status": status, "routes": routes, "store": store});
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
        if session.req_header().uri.path().starts_with("/admin/") {
            let reply = self.admin_api(session).await;
            return respond(reply);
        }
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

impl AdminApp {
    /// An `/admin/v1/…` request: its body read (at most [`api::MAX_BODY`]), then answered.
    async fn admin_api(&self, session: &mut ServerSession) -> reply::Reply {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > api::MAX_BODY {
                        return reply::ApiError::new(
                            413,
                            "request_too_large",
                            format!("admin request bodies are at most {} bytes", api::MAX_BODY),
                        )
                        .reply();
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return reply::ApiError::new(
                        400,
                        "bad_body",
                        format!("cannot read the body: {e}"),
                    )
                    .reply()
                }
            }
        }
        let req = session.req_header();
        let request = api::ApiRequest {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query().unwrap_or(""),
            authorization: req
                .headers
                .get(http::header::AUTHORIZATION)
                .map(http::HeaderValue::as_bytes),
            accept: req
                .headers
                .get(http::header::ACCEPT)
                .map(http::HeaderValue::as_bytes),
            body: &body,
        };
        api::handle(&self.state, request).await
    }
}

fn respond(r: reply::Reply) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(r.status)
        .header("content-type", r.content_type)
        .header("content-length", r.body.len())
        .header("cache-control", "no-store");
    if let Some((k, v)) = r.header {
        b = b.header(k, v);
    }
    b.body(r.body).unwrap_or_else(|_| Response::new(Vec::new()))
}
