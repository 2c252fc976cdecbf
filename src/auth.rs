//! Virtual-key authentication: client key → principal, with a model allow-list. No sockets here.

use std::collections::HashMap;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::secret;
use crate::errors::GatewayError;

pub use crate::config::{KeyEntry, Principal};

impl KeyEntry {
    /// A stable, non-secret identity (a prefix of the digest), for counters and the state file.
    pub fn id(&self) -> String {
        hex::encode(&self.digest[..8])
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

/// Keys indexed by digest. Lookup hashes the presented key first, so the map probe reveals
/// nothing usable about any stored key; the final comparison is constant-time.
#[derive(Debug, Default)]
pub struct KeyStore {
    entries: Vec<KeyEntry>,
    by_digest: HashMap<[u8; 32], usize>,
}

impl KeyStore {
    pub fn new(entries: Vec<KeyEntry>) -> Self {
        let by_digest = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.digest, i))
            .collect();
        Self { entries, by_digest }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads `Authorization: Bearer <key>` or, as Azure clients send it, `api-key: <key>`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&KeyEntry, GatewayError> {
        let presented = presented_key(headers).ok_or(GatewayError::MissingApiKey)?;
        self.lookup(presented).ok_or(GatewayError::InvalidApiKey)
    }

    pub fn lookup(&self, presented: &[u8]) -> Option<&KeyEntry> {
        let d = secret::digest(presented);
        let entry = self.entries.get(*self.by_digest.get(&d)?)?;
        bool::from(entry.digest.ct_eq(&d)).then_some(entry)
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let token = strip_bearer(v)?;
        return (!token.is_empty()).then_some(token);
    }
    let v = headers.get("api-key")?.as_bytes().trim_ascii();
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
                },
                models: Some(vec![Glob::new("ollama/*"), Glob::new("gpt-4o*")]),
                pools: Some(vec![1]),
                limits: Default::default(),
                budget: Default::default(),
            },
            KeyEntry {
                digest: secret::digest(b"sk-b"),
                principal: Principal {
                    tenant: "beta".into(),
                    user: "".into(),
                    key_index: 1,
                },
                models: None,
                pools: None,
                limits: Default::default(),
                budget: Default::default(),
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
            .authenticate(&headers(&[("authorization", "Bearer sk-a")]))
            .unwrap();
        assert_eq!(&*a.principal.tenant, "acme");
        let b = s.authenticate(&headers(&[("api-key", "sk-b")])).unwrap();
        assert_eq!(&*b.principal.tenant, "beta");
        let c = s
            .authenticate(&headers(&[("authorization", "bearer   sk-b ")]))
            .unwrap();
        assert_eq!(c.principal.key_index, 1);
    }

    #[test]
    fn missing_and_wrong_keys_are_told_apart() {
        let s = store();
        assert_eq!(
            s.authenticate(&headers(&[])).unwrap_err(),
            GatewayError::MissingApiKey
        );
        assert_eq!(
            s.authenticate(&headers(&[("authorization", "Bearer sk-zzz")]))
                .unwrap_err(),
            GatewayError::InvalidApiKey
        );
        assert_eq!(
            s.authenticate(&headers(&[("authorization", "Basic sk-a")]))
                .unwrap_err(),
            GatewayError::MissingApiKey
        );
        assert_eq!(
            s.authenticate(&headers(&[("authorization", "Bearer")]))
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
}
