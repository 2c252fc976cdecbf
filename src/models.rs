//! `GET /v1/models`: the models a key may use, from each pool's own list with route prefixes added.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde::Deserialize;
use serde_json::json;

use crate::auth::KeyEntry;
use crate::router;
use crate::state::Snapshot;
use crate::upstream::Pool;

const FRESH_FOR: Duration = Duration::from_secs(10);
/// A pool that failed is not asked again for this long.
const FAILED_FOR: Duration = Duration::from_secs(2);
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_LIST_BYTES: usize = 4_194_304; // 4 MiB

/// When a pool's list was fetched, and the ids (`None` = the fetch failed).
type Fetched = (Instant, Option<Vec<String>>);

/// Upstream model ids per pool index.
#[derive(Default)]
pub struct ModelsCache {
    entries: Mutex<HashMap<usize, Fetched>>,
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
pub async fn list(snap: &Snapshot, key: &KeyEntry) -> Vec<u8> {
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
    let data: Vec<_> = ids
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    json!({"object": "list", "data": data})
        .to_string()
        .into_bytes()
}

async fn pool_models(snap: &Snapshot, pool_index: usize) -> Vec<String> {
    if let Some((at, cached)) = snap.models.entries.lock().get(&pool_index) {
        let ttl = if cached.is_some() {
            FRESH_FOR
        } else {
            FAILED_FOR
        };
        if at.elapsed() < ttl {
            return cached.clone().unwrap_or_default();
        }
    }
    let Some(pool) = snap.pools.get(pool_index) else {
        return Vec::new();
    };
    let fetched = match tokio::time::timeout(FETCH_TIMEOUT, fetch(pool)).await {
        Ok(Ok(ids)) => Some(ids),
        Ok(Err(why)) => {
            tracing::warn!(pool = %pool.name(), why, "model list unavailable; pool skipped");
            None
        }
        Err(_) => {
            tracing::warn!(pool = %pool.name(), "model list timed out; pool skipped");
            None
        }
    };
    snap.models
        .entries
        .lock()
        .insert(pool_index, (Instant::now(), fetched.clone()));
    fetched.unwrap_or_default()
}

/// `GET <base>/v1/models` on one backend of the pool, with the pool's key.
async fn fetch(pool: &Pool) -> Result<Vec<String>, &'static str> {
    let index = pool.pick();
    let b = pool.backend(index).ok_or("no backend")?;
    let addr = pool.resolve(index).await.map_err(|_| "does not resolve")?;
    let peer = pool.peer(index, addr).map_err(|_| "no peer")?;
    let connector: Connector = Connector::new(None);
    let (mut http, _reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(|_| "connect failed")?;
    let path = format!("{}/v1/models", b.base_path);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|_| "bad path")?;
    let headers = [
        ("host", Some(b.authority.clone())),
        ("accept", Some("application/json".to_string())),
        (
            "authorization",
            pool.config
                .api_key
                .as_ref()
                .map(|k| format!("Bearer {}", k.expose())),
        ),
    ];
    for (name, value) in headers {
        if let Some(v) = value {
            req.insert_header(name, v).map_err(|_| "bad header")?;
        }
    }
    http.write_request_header(Box::new(req))
        .await
        .map_err(|_| "write failed")?;
    http.finish_request_body()
        .await
        .map_err(|_| "write failed")?;
    http.read_response_header()
        .await
        .map_err(|_| "no response")?;
    let status = http.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        return Err("non-200 answer");
    }
    let mut body = Vec::new();
    while let Some(chunk) = http.read_response_body().await.map_err(|_| "read failed")? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_LIST_BYTES {
            return Err("list too large");
        }
    }
    let list: ModelList =
        serde_json::from_slice(&Bytes::from(body)).map_err(|_| "not a model list")?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}
