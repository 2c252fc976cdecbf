//! `GET /v1/models`: the models a key may use, from each pool's own list with route prefixes added.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use serde::Deserialize;
use serde_json::json;

use crate::auth::KeyEntry;
use crate::config::Config;
use crate::router;
use crate::upstream::{probe, Pool};

const FRESH_FOR: Duration = Duration::from_secs(10);
/// A pool that failed is not asked again for this long.
const FAILED_FOR: Duration = Duration::from_secs(2);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_LIST_BYTES: usize = 4_194_304; // 4 MiB

/// When a pool's list was fetched, and the ids (`None` = the fetch failed).
type Fetched = (Instant, Option<Vec<String>>);

/// Upstream model ids per pool name, kept across reloads. Each pool's entry has its own async
/// lock: when it expires one caller fetches and the others wait for that answer. Fetches share
/// one connector, so their connections are pooled.
pub struct ModelsCache {
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Fetched>>>>>,
    connector: Connector,
    /// How long a fetched list, and a failed fetch, are reused.
    fresh_for: Duration,
    failed_for: Duration,
}

impl Default for ModelsCache {
    fn default() -> Self {
        Self::with_ttl(FRESH_FOR, FAILED_FOR)
    }
}

impl ModelsCache {
    pub fn with_ttl(fresh_for: Duration, failed_for: Duration) -> Self {
        Self {
            entries: Mutex::default(),
            connector: Connector::new(None),
            fresh_for,
            failed_for,
        }
    }
}

/// What the model list is built from: the pinned snapshot's config and pools, and the cache.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub config: &'a Config,
    pub pools: &'a [Pool],
    pub cache: &'a ModelsCache,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelItem>,
}

#[derive(Deserialize)]
struct ModelItem {
    id: String,
}

/// Builds the OpenAI list body for `key`.
pub async fn list(snap: Sources<'_>, key: &KeyEntry) -> Vec<u8> {
    let data: Vec<_> = entries(snap, key)
        .await
        .into_iter()
        .map(|(id, owner)| model_object(&id, &owner))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

/// `GET /v1/models/{id}`: the model object, when `id` is one of the models `key` may use.
pub async fn info(snap: Sources<'_>, key: &KeyEntry, id: &str) -> Option<Vec<u8>> {
    let (id, owner) = entries(snap, key)
        .await
        .into_iter()
        .find(|(i, _)| i == id)?;
    Some(model_object(&id, &owner).to_string().into_bytes())
}

fn model_object(id: &str, owner: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
}

/// `(id, owner)` of every model `key` may use, in list order.
async fn entries(snap: Sources<'_>, key: &KeyEntry) -> Vec<(String, String)> {
    let wanted: Vec<usize> = {
        let mut p: Vec<usize> = snap.config.routes.iter().map(|r| r.pool).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    let fetched = futures::future::join_all(wanted.iter().map(|&p| pool_models(snap, p))).await;
    let by_pool: HashMap<usize, Vec<String>> = wanted.into_iter().zip(fetched).collect();
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut push = |id: String, owner: &str| {
        if key.allows(&id) && !ids.iter().any(|(i, _)| *i == id) {
            ids.push((id, owner.to_string()));
        }
    };
    if let Some(d) = &snap.config.default_model {
        if let Some(r) = router::resolve(&snap.config.routes, d) {
            push(d.clone(), &snap.config.routes[r.route].pool_name);
        }
    }
    for (i, route) in snap.config.routes.iter().enumerate() {
        for upstream_id in by_pool.get(&route.pool).into_iter().flatten() {
            let id = if route.strip_prefix {
                format!("{}{upstream_id}", route.prefix)
            } else {
                upstream_id.clone()
            };
            // list only names that route back here, so every listed model works as written
            if router::resolve(&snap.config.routes, &id).is_some_and(|r| r.route == i) {
                push(id, &route.pool_name);
            }
        }
    }
    ids
}

async fn pool_models(snap: Sources<'_>, pool_index: usize) -> Vec<String> {
    let Some(pool) = snap.pools.get(pool_index) else {
        return Vec::new();
    };
    let entry = snap
        .cache
        .entries
        .lock()
        .entry(pool.name().to_string())
        .or_default()
        .clone();
    let mut entry = entry.lock().await;
    if let Some((at, cached)) = &*entry {
        let ttl = if cached.is_some() {
            snap.cache.fresh_for
        } else {
            snap.cache.failed_for
        };
        if at.elapsed() < ttl {
            return cached.clone().unwrap_or_default();
        }
    }
    let fetched = match fetch(&snap.cache.connector, pool).await {
        Ok(ids) => Some(ids),
        Err(why) => {
            tracing::warn!(pool = %pool.name(), why, "model list unavailable; pool skipped");
            None
        }
    };
    *entry = Some((Instant::now(), fetched.clone()));
    fetched.unwrap_or_default()
}

/// `GET <base>/v1/models` on one backend of the pool, with the pool's key.
async fn fetch(connector: &Connector, pool: &Pool) -> Result<Vec<String>, &'static str> {
    let backend = pool.pick_any();
    let (status, body) = probe::get(
        connector,
        pool,
        backend,
        "/v1/models",
        FETCH_TIMEOUT,
        MAX_LIST_BYTES,
    )
    .await?;
    if status != 200 {
        return Err("non-200 answer");
    }
    let list: ModelList = serde_json::from_slice(&body).map_err(|_| "not a model list")?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream answering every request on a connection with a model list, counting the
    /// connections it accepted and the requests it answered.
    async fn upstream() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (conns.clone(), reqs.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let body = br#"{"object":"list","data":[{"id":"m1"}]}"#;
                    let mut buf = vec![0u8; 4096];
                    while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {
                        r.fetch_add(1, Ordering::SeqCst);
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(body).await;
                    }
                });
            }
        });
        (port, conns, reqs)
    }

    #[tokio::test]
    async fn each_expiry_fetches_once_over_a_pooled_connection() {
        let (port, conns, reqs) = upstream().await;
        let yaml = format!(
            "pools: {{p: {{backends: ['http://127.0.0.1:{port}']}}}}\nroutes: [{{prefix: 'p/', pool: p, strip_prefix: true}}]\nkeys: [{{key: k, tenant: t}}]"
        );
        let config = Config::from_yaml(&yaml, &|_| None).unwrap();
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .map(|p| Pool::new(p.clone(), &crate::upstream::Backends::default()))
            .collect();
        let cache = ModelsCache::with_ttl(Duration::ZERO, Duration::ZERO);
        let sources = Sources {
            config: &config,
            pools: &pools,
            cache: &cache,
        };
        for _ in 0..3 {
            assert_eq!(pool_models(sources, 0).await, ["m1"]);
        }
        assert_eq!(
            reqs.load(Ordering::SeqCst),
            3,
            "expired every time: fetched every time"
        );
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection, reused");
    }
}
