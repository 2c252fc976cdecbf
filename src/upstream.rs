//! Upstream pools: backend choice and address resolution, and the `HttpPeer` for a backend.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{BackendUrl, PoolConfig};
use crate::errors::GatewayError;

/// How long a DNS answer for a backend host is reused.
const DNS_TTL: Duration = Duration::from_secs(30);
/// Pooled upstream connections are closed before uvicorn's 5 s keep-alive would close them,
/// so a reused connection is never raced by the server's own close.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Runtime state of one pool.
pub struct Pool {
    pub config: PoolConfig,
    next: AtomicUsize,
    dns: Mutex<HashMap<usize, (Instant, SocketAddr)>>,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            next: AtomicUsize::new(0),
            dns: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Round robin over the pool's backends.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.config.backends.len().max(1)
    }

    pub fn backend(&self, index: usize) -> Option<&BackendUrl> {
        self.config.backends.get(index)
    }

    /// Resolves the backend's host, from cache when fresh; IP literals never touch DNS.
    pub async fn resolve(&self, index: usize) -> Result<SocketAddr, GatewayError> {
        let b = self.backend(index).ok_or(GatewayError::Internal)?;
        if let Ok(ip) = b.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, b.port));
        }
        if let Some((at, addr)) = self.dns.lock().get(&index) {
            if at.elapsed() < DNS_TTL {
                return Ok(*addr);
            }
        }
        let addr = tokio::net::lookup_host((b.host.as_str(), b.port))
            .await
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| {
                tracing::warn!(pool = %self.config.name, host = %b.host, "backend host does not resolve");
                GatewayError::UpstreamUnreachable
            })?;
        self.dns.lock().insert(index, (Instant::now(), addr));
        Ok(addr)
    }

    /// The peer for a resolved backend, with the pool's timeouts.
    pub fn peer(&self, index: usize, addr: SocketAddr) -> Result<HttpPeer, GatewayError> {
        let b = self.backend(index).ok_or(GatewayError::Internal)?;
        let mut peer = HttpPeer::new(addr, b.tls, b.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout);
        o.total_connection_timeout = Some(self.config.connect_timeout * 2);
        o.read_timeout = Some(self.config.first_byte_timeout);
        o.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_backend;

    fn pool(urls: &[&str]) -> Pool {
        Pool::new(PoolConfig {
            name: "p".into(),
            backends: urls
                .iter()
                .map(|u| parse_backend("b", u).unwrap())
                .collect(),
            api_key: None,
            connect_timeout: Duration::from_millis(100),
            first_byte_timeout: Duration::from_millis(1000),
        })
    }

    #[test]
    fn round_robin_visits_every_backend() {
        let p = pool(&[
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ]);
        let picks: Vec<usize> = (0..6).map(|_| p.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[tokio::test]
    async fn ip_literals_resolve_without_dns_and_peers_carry_timeouts() {
        let p = pool(&["http://[::1]:8000/base"]);
        let addr = p.resolve(0).await.unwrap();
        assert_eq!(addr.to_string(), "[::1]:8000");
        let peer = p.peer(0, addr).unwrap();
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_millis(100))
        );
        assert_eq!(peer.options.idle_timeout, Some(UPSTREAM_IDLE_TIMEOUT));
    }
}
