//! The immutable snapshot a request runs against: config, keys, pools and the models cache.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::KeyStore;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::limits::Governor;
use crate::models::ModelsCache;
use crate::upstream::Pool;

pub struct Snapshot {
    pub config: Config,
    pub keys: KeyStore,
    pub pools: Vec<Pool>,
    pub models: ModelsCache,
    pub governor: Governor,
    /// Stable, non-secret identities of keys for the state file (a prefix of the key digest).
    pub key_ids: HashMap<usize, String>,
    /// The reverse of `key_ids`: where a key sits in this config.
    pub key_index_by_id: HashMap<String, usize>,
    /// The most prompt bytes any pool's `hash_key: prompt_prefix[:N]` reads.
    pub prompt_prefix_bytes: usize,
}

impl Snapshot {
    pub fn new(config: Config) -> Self {
        let keys = KeyStore::new(config.keys.clone());
        let pools = config.pools.iter().cloned().map(Pool::new).collect();
        let governor = Governor::new(&config, Arc::new(SystemClock));
        let key_ids: HashMap<usize, String> = config
            .keys
            .iter()
            .map(|k| (k.principal.key_index, hex::encode(&k.digest[..8])))
            .collect();
        let key_index_by_id = key_ids.iter().map(|(i, id)| (id.clone(), *i)).collect();
        let prompt_prefix_bytes = config
            .pools
            .iter()
            .filter_map(|p| match p.hash_key {
                crate::config::HashKey::PromptPrefix(n) => Some(n),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        Self {
            config,
            keys,
            pools,
            models: ModelsCache::default(),
            governor,
            key_ids,
            key_index_by_id,
            prompt_prefix_bytes,
        }
    }

    /// The snapshot a reload swaps in for `old`: `config`'s keys, routes, pools, limits and
    /// pricing, with the live state carried over (limit windows, spend, reservations and
    /// in-flight counts; backend health, ejections, scraped load and in-flight slots).
    pub fn succeed(old: &Snapshot, config: Config) -> Self {
        let mut next = Self::new(config);
        next.governor
            .take_over(&old.governor, &old.key_ids, &next.key_ids);
        for pool in &mut next.pools {
            if let Some(prev) = old.pools.iter().find(|p| p.name() == pool.name()) {
                pool.adopt(prev);
            }
        }
        next
    }

    /// This snapshot's index of the key that sits at `index` in `other` (None if removed).
    pub fn same_key(&self, other: &Snapshot, index: usize) -> Option<usize> {
        let id = other.key_ids.get(&index)?;
        self.key_index_by_id.get(id).copied()
    }
}

impl Snapshot {
    /// The metric label of a route (its prefix), `""` before routing.
    pub fn route_label(&self, route: Option<usize>) -> &str {
        route
            .and_then(|r| self.config.routes.get(r))
            .map_or("", |r| r.prefix.as_str())
    }

    /// The metric label of a pool (its name), `""` before routing.
    pub fn pool_label(&self, pool: Option<usize>) -> &str {
        pool.and_then(|p| self.pools.get(p))
            .map_or("", |p| p.name())
    }

    /// `/readyz`: 200 when every route has a backend that takes requests (in its pool or a
    /// fallback), else 503 naming the routes that have none.
    pub fn readiness(&self) -> (u16, Vec<u8>) {
        let now = std::time::Instant::now();
        let unready: Vec<&str> = self
            .config
            .routes
            .iter()
            .filter(|r| {
                !std::iter::once(r.pool)
                    .chain(r.fallbacks.iter().copied())
                    .filter_map(|p| self.pools.get(p))
                    .any(|p| p.any_available(now))
            })
            .map(|r| r.prefix.as_str())
            .collect();
        if unready.is_empty() {
            return (200, br#"{"status":"ready"}"#.to_vec());
        }
        let body = serde_json::json!({"status": "unready", "routes_without_backend": unready});
        (503, body.to_string().into_bytes())
    }
}

/// Shared, swappable state; each request pins one snapshot in `new_ctx`.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

pub fn shared(config: Config) -> SharedState {
    Arc::new(ArcSwap::from_pointee(Snapshot::new(config)))
}
