//! The runtime identity of a configured key: its digest, principal and what it may use.

use std::sync::Arc;

use super::{Budget, Limits};
use crate::glob::Glob;

/// Who is calling: attached to the request for limits, metrics and logs. Never holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    /// Position of the key in `keys:`, a stable handle that is safe to log.
    pub key_index: usize,
}

/// One configured key; only the SHA-256 digest of the secret is kept in memory.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub digest: [u8; 32],
    pub principal: Principal,
    /// `None` allows every model.
    pub models: Option<Vec<Glob>>,
    /// Pools this key may pin with `x-llmedge-pool` (indices); `None` allows every pool.
    pub pools: Option<Vec<usize>>,
    pub limits: Limits,
    pub budget: Budget,
}
