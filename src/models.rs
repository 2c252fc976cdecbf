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
}

impl Default for ModelsCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            connector: Connector::new(None),
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
            FRESH_FOR
        } else {
            FAILED_FOR
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
