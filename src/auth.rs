//! Virtual-key authentication: client key → principal, with a model allow-list. No sockets here.

use std::collections::HashMap;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::secret;
use crate::errors::GatewayError;

pub use crate::config::{KeyEntry, Principal};

impl KeyEntry {
    /// A stable, non-secret identity, for counters, logs and the state file.
    pub fn id(&self) -> &str {
        &self.principal.key_id
    }

    pub fn allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|g| g.matches(model)))
    }

    pub fn may_pin(&self, pool: usize) -> bool {
        self.pools.as_ref().is_none_or(|p| p.contains(&pool))
    }
}

/// Keys indexed by the digests of their secrets (a rotated key has its retiring ones too), each
/// with the time it stops being accepted. Lookup hashes the presented key first, so the map
/// probe reveals nothing usable about any stored key; the final comparison is constant-time.
#[derive(Debug, Default)]
pub struct KeyStore {
    entries: Vec<KeyEntry>,
    by_digest: HashMap<[u8; 32], (usize, u64)>,
}

impl KeyStore {
    pub fn new(entries: Vec<KeyEntry>) -> Self {
        let mut by_digest = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let until = e.expires_ms.unwrap_or(u64::MAX);
            by_digest.insert(e.digest, (i, until));
            for (d, t) in &e.retiring {
                by_digest.insert(*d, (i, until.min(*t)));
            }
        }
        Self { entries, by_digest }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads `Authorization: Bearer <key>`, or `x-api-key: <key>` as Anthropic clients send it,
    /// or `api-key: <key>` as Azure clients do; a
    /// key past its expiry (or a retired secret past its grace) is refused like a wrong one.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        now_ms: u64,
    ) -> Result<&KeyEntry, GatewayError> {
        let presented = presented_key(headers).ok_or(GatewayError::MissingApiKey)?;
        self.lookup_at(presented, now_ms)
            .ok_or(GatewayError::InvalidApiKey)
    }

    /// The key `presented` authenticates, whatever the time (tests, benches, collisions).
    pub fn lookup(&self, presented: &[u8]) -> Option<&KeyEntry> {
        self.lookup_at(presented, 0)
    }

    pub fn lookup_at(&self, presented: &[u8], now_ms: u64) -> Option<&KeyEntry> {
        let d = secret::digest(presented);
        let (stored, (i, until)) = self.by_digest.get_key_value(&d)?;
        let entry = self.entries.get(*i)?;
        (bool::from(stored.ct_eq(&d)) && now_ms < *until).then_some(entry)
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let token = strip_bearer(v)?;
        return (!token.is_empty()).then_some(token);
    }
    // Anthropic's SDKs send `x-api-key`, Azure's `api-key`
    let v = headers
        .get("x-api-key")
        .or_else(|| headers.get("api-key"))?
        .as_bytes()
        .trim_ascii();
    (!v.is_empty()).then_some(v)
}

fn strip_bearer(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::glob::Glob;

    fn store() -> KeyStore {
        KeyStore::new(vec![
            KeyEntry {
                digest: secret::digest(b"sk-a"),
                principal: Principal {
                    tenant: "acme".into(),
                    user: "alice".into(),
                    key_index: 0,
                    key_id: "ka".into(),
                },
                models: Some(vec![Glob::new("ollama/*"), Glob::new("gpt-4o*")]),
                pools: Some(vec![1]),
                limits: Default::default(),
                budget: Default::default(),
                expires_ms: None,
                retiring: Vec::new(),
            },
            KeyEntry {
                digest: secret::digest(b"sk-b"),
                principal: Principal {
                    tenant: "beta".into(),
                    user: "".into(),
                    key_index: 1,
                    key_id: "kb".into(),
                },
                models: None,
                pools: None,
                limits: Default::default(),
                budget: Default::default(),
                expires_ms: None,
                retiring: Vec::new(),
            },
        ])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_and_azure_header_both_authenticate() {
        let s = store();
        let a = s
            .authenticate(&headers(&[("authorization", "Bearer sk-a")]), 1)
            .unwrap();
        assert_eq!(&*a.principal.tenant, "acme");
        let b = s.authenticate(&headers(&[("api-key", "sk-b")]), 1).unwrap();
        let x = s
            .authenticate(&headers(&[("x-api-key", "sk-b")]), 1)
            .unwrap();
        assert_eq!(x.principal.tenant, b.principal.tenant);
        assert_eq!(&*b.principal.tenant, "beta");
        let c = s
            .authenticate(&headers(&[("authorization", "bearer   sk-b ")]), 1)
            .unwrap();
        assert_eq!(c.principal.key_index, 1);
    }

    #[test]
    fn missing_and_wrong_keys_are_told_apart() {
        let s = store();
        assert_eq!(
            s.authenticate(&headers(&[]), 1).unwrap_err(),
            GatewayError::MissingApiKey
        );
        assert_eq!(
            s.authenticate(&headers(&[("authorization", "Bearer sk-zzz")]), 1)
                .unwrap_err(),
            GatewayError::InvalidApiKey
        );
        assert_eq!(
            s.authenticate(&headers(&[("authorization", "Basic sk-a")]), 1)
                .unwrap_err(),
            GatewayError::MissingApiKey
        );
        assert_eq!(
            s.authenticate(&headers(&[("authorization", "Bearer")]), 1)
                .unwrap_err(),
            GatewayError::MissingApiKey
        );
    }

    #[test]
    fn allow_list_uses_globs() {
        let s = store();
        let a = s.lookup(b"sk-a").unwrap();
        assert!(a.allows("ollama/llama3"));
        assert!(a.allows("gpt-4o-mini"));
        assert!(!a.allows("gpt-3.5-turbo"));
        assert!(s.lookup(b"sk-b").unwrap().allows("anything"));
        assert!(a.may_pin(1) && !a.may_pin(0));
        assert!(s.lookup(b"sk-b").unwrap().may_pin(7));
    }

    #[test]
    fn expired_keys_and_retired_secrets_stop_at_their_time() {
        let mut entries = store().entries;
        entries[0].expires_ms = Some(5_000);
        entries[1].retiring = vec![(secret::digest(b"sk-b-old"), 2_000)];
        let s = KeyStore::new(entries);
        assert!(s.lookup_at(b"sk-a", 4_999).is_some());
        assert!(s.lookup_at(b"sk-a", 5_000).is_none());
        let old = s.lookup_at(b"sk-b-old", 1_999).unwrap();
        assert_eq!(&*old.principal.key_id, "kb");
        assert!(s.lookup_at(b"sk-b-old", 2_000).is_none());
        assert!(s.lookup_at(b"sk-b", u64::MAX - 1).is_some());
    }
}
