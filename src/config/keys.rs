//! The runtime identity of a key (from the file or the store): its digest, principal and what
//! it may use.

use std::sync::Arc;

use super::{Budget, Limits};
use crate::glob::Glob;

/// Who is calling: attached to the request for limits, metrics and logs. Never holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    /// Position of the key in this snapshot's key list (the file's `keys:` first).
    pub key_index: usize,
    /// The key's stable, non-secret id: a digest prefix for a file key, the record id
    /// (`key_…`) for a store key. Counters, logs and the ledger use it.
    pub key_id: Arc<str>,
}

/// One key; only SHA-256 digests of its secrets are kept in memory.
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
    /// When the key stops authenticating (ms since the epoch); `None`: never.
    pub expires_ms: Option<u64>,
    /// Earlier secrets of a rotated key, each accepted until its time (ms since the epoch).
    pub retiring: Vec<([u8; 32], u64)>,
}

impl KeyEntry {
    /// The `key_index` of a caller no config names (an anonymous caller).
    pub const TRANSIENT_INDEX: usize = usize::MAX;

    /// The id of a file key: the first 8 bytes of its digest, in hex.
    pub fn file_id(digest: &[u8; 32]) -> Arc<str> {
        hex::encode(&digest[..8]).into()
    }

    /// A caller whose bearer token is not a virtual key, on an `anonymous: true` route: tenant
    /// `passthrough`, user `key:<first 12 hex of the token's SHA-256>`, the route's `limits`.
    /// Only the digest is kept, never the token.
    pub fn anonymous(digest: &[u8; 32], route_prefix: &str, limits: &Limits) -> Self {
        let short = hex::encode(&digest[..6]);
        Self {
            digest: *digest,
            principal: Principal {
                tenant: "passthrough".into(),
                user: format!("key:{short}").into(),
                key_index: Self::TRANSIENT_INDEX,
                key_id: format!("anon:{short}@{route_prefix}").into(),
            },
            models: None,
            pools: None,
            limits: limits.clone(),
            budget: Budget::default(),
            expires_ms: None,
            retiring: Vec::new(),
        }
    }

    pub fn is_transient(&self) -> bool {
        self.principal.key_index == Self::TRANSIENT_INDEX
    }
}
