//! The background service that runs active health checks and load scrapes. It follows the live
//! state: after every reload it starts checks for backends and pools that are new, and each
//! check finds its backend in the current snapshot on every round, so it stops by itself when
//! a reload removes the backend or its `health:` / `metrics:` section.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinHandle;

use super::Live;
use crate::upstream::{load, probe, Pool};

const MAX_HEALTH_BODY: usize = 65_536;
const MAX_METRICS_BODY: usize = 8_388_608; // 8 MiB

pub struct Monitor {
    pub live: Arc<Live>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Health,
    Scrape,
}

/// One check loop: which backend (pool name and backend id) and what it does.
type TaskKey = (String, u64, Kind);

/// The checks the current snapshot asks for.
fn wanted(live: &Live) -> HashSet<TaskKey> {
    let snap = live.load();
    let mut out = HashSet::new();
    for pool in &snap.pools {
        for b in 0..pool.len() {
            let Some(id) = pool.id(b) else { continue };
            if pool.config.health.is_some() {
                out.insert((pool.name().to_string(), id, Kind::Health));
            }
            if pool.config.metrics.is_some() {
                out.insert((pool.name().to_string(), id, Kind::Scrape));
            }
        }
    }
    out
}

/// Starts the loops that are wanted and not running; forgets those that ended.
fn reconcile(
    live: &Arc<Live>,
    connector: &Arc<Connector>,
    tasks: &mut HashMap<TaskKey, JoinHandle<()>>,
) {
    let want = wanted(live);
    tasks.retain(|k, h| {
        let keep = !h.is_finished() && want.contains(k);
        if !keep {
            // a loop whose backend a reload removed and a later one re-added must not run twice
            h.abort();
        }
        keep
    });
    for key in want {
        if tasks.contains_key(&key) {
            continue;
        }
        let (live, connector) = (live.clone(), connector.clone());
        let k = key.clone();
        let handle = tokio::spawn(async move {
            match k.2 {
                Kind::Health => health_loop(&live, &connector, &k.0, k.1).await,
                Kind::Scrape => scrape_loop(&live, &connector, &k.0, k.1).await,
            }
        });
        tasks.insert(key, handle);
    }
}

#[async_trait]
impl BackgroundService for Monitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let connector = Arc::new(Connector::new(None));
        let mut tasks = HashMap::new();
        let mut swaps = self.live.subscribe();
        loop {
            reconcile(&self.live, &connector, &mut tasks);
            tokio::select! {
                changed = swaps.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        for (_, h) in tasks {
            h.abort();
        }
    }
}

/// Runs `f` with the backend's pool and index in the current snapshot; `None` once a reload
/// removed it.
fn with_backend<R>(
    live: &Live,
    pool: &str,
    id: u64,
    f: impl FnOnce(&Pool, usize) -> R,
) -> Option<R> {
    let snap = live.load();
    let p = snap.pool_by_name(pool)?;
    let b = p.position(id)?;
    Some(f(p, b))
}

/// One probe's GET on the backend as the current snapshot has it, with the section `section`
/// picks from its pool's config; `None` once a reload removed the backend or the section.
async fn probe_now<C>(
    live: &Live,
    connector: &Connector,
    (pool, id): (&str, u64),
    section: impl Fn(&Pool) -> Option<C>,
    request: impl Fn(&C) -> (String, Duration, usize),
) -> Option<(C, Result<(u16, Vec<u8>), probe::ProbeError>)> {
    let snap = live.load();
    let p = snap.pool_by_name(pool)?;
    let (b, cfg) = (p.position(id)?, section(p)?);
    let (path, timeout, max) = request(&cfg);
    let got = probe::get(connector, p, b, &path, timeout, max).await;
    Some((cfg, got))
}

async fn health_loop(live: &Live, connector: &Connector, pool: &str, id: u64) {
    loop {
        let section = |p: &Pool| p.config.health.clone();
        let request =
            |c: &crate::config::HealthConfig| (c.path.clone(), c.timeout, MAX_HEALTH_BODY);
        let Some((cfg, result)) = probe_now(live, connector, (pool, id), section, request).await
        else {
            return;
        };
        let ok = matches!(result, Ok((200..=299, _)));
        // the verdict goes to the backend as the snapshot current now has it
        let changed = with_backend(live, pool, id, |p, b| {
            // a reload turned checks off while this probe ran: no verdict
            p.config.health.as_ref()?;
            let now = Instant::now();
            let before = p.is_up(b, now);
            p.with_health(b, |h| h.on_check(ok, now, &cfg));
            let after = p.is_up(b, now);
            if before && !after {
                p.forget_prefixes(b); // down: its cache is gone or unknown
            }
            (before != after).then(|| (after, p.backend(b).map(|u| u.authority.clone())))
        });
        match changed {
            None => return,
            Some(Some((up, label))) => {
                let why = match &result {
                    Ok((status, _)) => format!("status {status}"),
                    Err(e) => (*e).to_string(),
                };
                let backend = label.unwrap_or_default();
                tracing::warn!(pool, backend = %backend, up, why, "backend health changed");
            }
            Some(None) => {}
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

async fn scrape_loop(live: &Live, connector: &Connector, pool: &str, id: u64) {
    loop {
        let Some(base) = with_backend(live, pool, id, |p, b| p.counts(b)) else {
            return;
        };
        let section = |p: &Pool| p.config.metrics.clone();
        let request = |c: &crate::config::ScrapeConfig| {
            let timeout = c.interval.max(Duration::from_secs(1));
            (c.path.clone(), timeout, MAX_METRICS_BODY)
        };
        let Some((cfg, got)) = probe_now(live, connector, (pool, id), section, request).await
        else {
            return;
        };
        let scraped = match got {
            Ok((200, body)) => load::parse(&String::from_utf8_lossy(&body)),
            _ => None,
        };
        if with_backend(live, pool, id, |p, b| {
            p.set_load(b, scraped, base, Instant::now())
        })
        .is_none()
        {
            return;
        }
        tokio::time::sleep(cfg.interval).await;
    }
}
