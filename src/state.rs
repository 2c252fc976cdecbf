//! The immutable snapshot a request runs against: config, keys, pools and the models cache.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::KeyStore;
use crate::config::Config;
use crate::models::ModelsCache;
use crate::upstream::Pool;

pub struct Snapshot {
    pub config: Config,
    pub keys: KeyStore,
    pub pools: Vec<Pool>,
    pub models: ModelsCache,
}

impl Snapshot {
    pub fn new(config: Config) -> Self {
        let keys = KeyStore::new(config.keys.clone());
        let pools = config.pools.iter().cloned().map(Pool::new).collect();
        Self {
            config,
            keys,
            pools,
            models: ModelsCache::default(),
        }
    }
}

/// Shared, swappable state; each request pins one snapshot in `new_ctx`.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

pub fn shared(config: Config) -> SharedState {
    Arc::new(ArcSwap::from_pointee(Snapshot::new(config)))
}
