//! The background service that runs active health checks and load scrapes for every pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{load, probe};
use crate::state::{SharedState, Snapshot};

const MAX_HEALTH_BODY: usize = 65_536;
const MAX_METRICS_BODY: usize = 8_388_608; // 8 MiB

pub struct Monitor {
    pub state: SharedState,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let snap = self.state.load_full();
        let connector = Arc::new(Connector::new(None));
        let mut tasks: Vec<Task> = Vec::new();
        for (p, pool) in snap.pools.iter().enumerate() {
            for b in 0..pool.len() {
                if pool.config.health.is_some() {
                    tasks.push(Box::pin(health_loop(snap.clone(), connector.clone(), p, b)));
                }
                if pool.config.metrics.is_some() {
                    tasks.push(Box::pin(scrape_loop(snap.clone(), connector.clone(), p, b)));
                }
            }
        }
        if tasks.is_empty() {
            return;
        }
        tokio::select! {
            _ = futures::future::join_all(tasks) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn health_loop(snap: Arc<Snapshot>, connector: Arc<Connector>, p: usize, b: usize) {
    let Some(pool) = snap.pools.get(p) else {
        return;
    };
    let Some(cfg) = pool.config.health.clone() else {
        return;
    };
    let label = pool
        .backend(b)
        .map(|u| u.authority.clone())
        .unwrap_or_default();
    loop {
        let result = probe::get(&connector, pool, b, &cfg.path, cfg.timeout, MAX_HEALTH_BODY).await;
        let ok = matches!(result, Ok((200..=299, _)));
        let now = Instant::now();
        let before = pool.is_up(b, now);
        pool.with_health(b, |h| h.on_check(ok, now, &cfg));
        let after = pool.is_up(b, now);
        if before != after {
            let why = match &result {
                Ok((status, _)) => format!("status {status}"),
                Err(e) => (*e).to_string(),
            };
            tracing::warn!(pool = %pool.name(), backend = %label, up = after, why, "backend health changed");
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

async fn scrape_loop(snap: Arc<Snapshot>, connector: Arc<Connector>, p: usize, b: usize) {
    let Some(pool) = snap.pools.get(p) else {
        return;
    };
    let Some(cfg) = pool.config.metrics.clone() else {
        return;
    };
    let timeout = cfg.interval.max(Duration::from_secs(1));
    loop {
        let scraped =
            match probe::get(&connector, pool, b, &cfg.path, timeout, MAX_METRICS_BODY).await {
                Ok((200, body)) => load::parse(&String::from_utf8_lossy(&body)),
                _ => None,
            };
        pool.set_load(b, scraped, Instant::now());
        tokio::time::sleep(cfg.interval).await;
    }
}
