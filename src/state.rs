//! The immutable snapshot of one config a request runs against: keys, routes, pools and limit
//! rules. Everything that changes at runtime (backend health and load, limit counters, spend)
//! lives in the live state (`live.rs`) and is only referenced from here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::KeyStore;
use crate::clock::Clock;
use crate::config::Config;
use crate::limits::{Counters, Governor};
use crate::upstream::{Backends, Pool};

pub struct Snapshot {
    pub config: Config,
    pub keys: KeyStore,
    pub pools: Vec<Pool>,
    pub governor: Governor,
    /// Where each key sits in this config, by its stable id (a digest prefix).
    pub key_index_by_id: HashMap<String, usize>,
    /// The most prompt bytes any pool's `hash_key: prompt_prefix[:N]` reads.
    pub prompt_prefix_bytes: usize,
}

impl Snapshot {
    /// The snapshot of `config` over the live backend states and counter cells.
    pub fn new(
        config: Config,
        backends: &Backends,
        counters: &Counters,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let keys = KeyStore::new(config.keys.clone());
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .cloned()
            .map(|p| Pool::new(p, backends))
            .collect();
        backends.retain(&pools);
        let governor = Governor::new(&config, counters, clock);
        let key_index_by_id = config
            .keys
            .iter()
            .map(|k| (k.id().to_string(), k.principal.key_index))
            .collect();
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
            governor,
            key_index_by_id,
            prompt_prefix_bytes,
        }
    }

    /// This snapshot's entry of the key that sits at `index` in `other` (None if removed).
    pub fn same_key(&self, other: &Snapshot, index: usize) -> Option<&crate::auth::KeyEntry> {
        let id = other.config.keys.get(index)?.id();
        let i = *self.key_index_by_id.get(id)?;
        self.config.keys.get(i)
    }

    pub fn pool_by_name(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name() == name)
    }

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

    /// Each route (by prefix) and whether a backend of its pool or a fallback takes requests
    /// now (`llmedge_route_available`, the admin `/readyz` body).
    pub fn route_availability(&self) -> Vec<(&str, bool)> {
        let now = std::time::Instant::now();
        self.config
            .routes
            .iter()
            .map(|r| {
                let up = std::iter::once(r.pool)
                    .chain(r.fallbacks.iter().copied())
                    .filter_map(|p| self.pools.get(p))
                    .any(|p| p.any_available(now));
                (r.prefix.as_str(), up)
            })
            .collect()
    }
}
