//! Upstream pools: per-backend state (in-flight, health, load), selection, resolution, peers.

pub mod health;
pub mod load;
pub mod monitor;
pub mod probe;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::balance::{self, Candidate, Load};
use crate::config::{BackendUrl, PoolConfig};
use crate::errors::GatewayError;
use health::Health;
use load::Scraped;

/// How long a DNS answer for a backend host is reused.
const DNS_TTL: Duration = Duration::from_secs(30);
/// Pooled upstream connections are closed before uvicorn's 5 s keep-alive would close them,
/// so a reused connection is rarely raced by the server's own close.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// A load scrape older than this many scrape intervals (and [`MIN_STALE_AFTER`]) is unknown,
/// not zero.
const STALE_AFTER_INTERVALS: u32 = 3;
const MIN_STALE_AFTER: Duration = Duration::from_secs(1);

/// Runtime state of one backend.
pub struct BackendState {
    /// Stable identity for consistent hashing: a hash of the URL.
    pub id: u64,
    inflight: Arc<AtomicUsize>,
    health: Mutex<Health>,
    load: Mutex<Option<(Instant, Scraped)>>,
    sent_since_scrape: AtomicUsize,
    /// EWMA of how long successful requests held the backend, in seconds.
    service: Mutex<Option<f64>>,
}

/// Weight of the newest sample in the service-time average.
const SERVICE_EWMA_ALPHA: f64 = 0.2;
/// Assumed slot holding time before the first request on a backend finished.
const DEFAULT_SERVICE_SECS: f64 = 1.0;

/// Runtime state of one pool.
pub struct Pool {
    pub config: PoolConfig,
    backends: Vec<BackendState>,
    seq: AtomicU64,
    dns: Mutex<HashMap<usize, (Instant, SocketAddr)>>,
    /// The pool's own trusted roots (`tls.ca_file`), built once.
    ca: Option<Arc<CaType>>,
    /// Connection-pool partition for a pool with its own TLS trust: its name and CA bytes, so a
    /// reload that changes the CA does not reuse connections verified against the old one.
    tls_group: u64,
}

/// Holds one in-flight slot on a backend; released on drop.
pub struct BackendGuard(Arc<AtomicUsize>);

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        let backends = config
            .backends
            .iter()
            .map(|b| BackendState {
                id: balance::hash_bytes(format!("{}{}", b.authority, b.base_path).as_bytes()),
                inflight: Arc::new(AtomicUsize::new(0)),
                health: Mutex::new(Health::default()),
                load: Mutex::new(None),
                sent_since_scrape: AtomicUsize::new(0),
                service: Mutex::new(None),
            })
            .collect();
        let ca = config.tls.ca.as_ref().map(|ders| {
            let certs: Vec<WrappedX509> = ders
                .iter()
                .map(|d| WrappedX509::new(d.clone(), parse_x509))
                .collect();
            Arc::from(certs.into_boxed_slice())
        });
        let mut group = config.name.as_bytes().to_vec();
        for der in config.tls.ca.iter().flatten() {
            group.extend_from_slice(der);
        }
        group.push(u8::from(config.tls.verify));
        Self {
            config,
            backends,
            seq: AtomicU64::new(0),
            dns: Mutex::new(HashMap::new()),
            ca,
            tls_group: balance::hash_bytes(&group),
        }
    }

    /// After a reload: backends that were already in `old` keep their health, ejections,
    /// scraped load and in-flight count (shared, so requests still running on the old
    /// snapshot release their slots here).
    pub fn adopt(&mut self, old: &Pool) {
        for b in &mut self.backends {
            let Some(o) = old.backends.iter().find(|o| o.id == b.id) else {
                continue;
            };
            b.inflight = o.inflight.clone();
            *b.health.get_mut() = o.health.lock().clone();
            *b.load.get_mut() = *o.load.lock();
            *b.service.get_mut() = *o.service.lock();
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn backend(&self, index: usize) -> Option<&BackendUrl> {
        self.config.backends.get(index)
    }

    fn active_checks(&self) -> bool {
        self.config.health.is_some()
    }

    /// Picks a backend not in `exclude`: a healthy one if any, else (panic mode) one that is
    /// only passively ejected. Backends that active checks failed or that asked us to back off
    /// (`Retry-After`) are never picked.
    pub fn select(&self, exclude: &[usize], key: Option<u64>, now: Instant) -> Option<usize> {
        let mut cands = self.candidates(exclude, now, false);
        if cands.is_empty() {
            cands = self.candidates(exclude, now, true);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        balance::select(self.config.balance, &cands, seq, key)
    }

    /// Whether `select` would find anything.
    pub fn has_candidate(&self, exclude: &[usize], now: Instant) -> bool {
        !self.candidates(exclude, now, true).is_empty()
    }

    fn candidates(&self, exclude: &[usize], now: Instant, panic: bool) -> Vec<Candidate> {
        let active = self.active_checks();
        self.backends
            .iter()
            .enumerate()
            .filter(|(i, _)| !exclude.contains(i))
            .filter(|(_, b)| {
                let h = b.health.lock();
                if panic {
                    h.usable_in_panic(now)
                } else {
                    h.available(now, active)
                }
            })
            .map(|(i, b)| Candidate {
                index: i,
                weight: self.config.backends[i].weight,
                inflight: b.inflight.load(Ordering::Relaxed),
                id: b.id,
                load: self.load_signal(i, now),
            })
            .collect()
    }

    /// The backend's fresh load, or `None` when never scraped, failed, or stale.
    pub fn load_signal(&self, index: usize, now: Instant) -> Option<Load> {
        let scrape = self.config.metrics.as_ref()?;
        let b = self.backends.get(index)?;
        let (at, s) = (*b.load.lock())?;
        let stale_after = (scrape.interval * STALE_AFTER_INTERVALS).max(MIN_STALE_AFTER);
        if now.saturating_duration_since(at) > stale_after {
            return None;
        }
        Some(Load {
            waiting: s.waiting,
            running: s.running,
            kv_usage: s.kv_usage,
            sent_since_scrape: b.sent_since_scrape.load(Ordering::Relaxed),
            service_secs: b.service.lock().unwrap_or(DEFAULT_SERVICE_SECS),
        })
    }

    /// Records how long a successful request held the backend.
    pub fn observe_service(&self, index: usize, held: Duration) {
        if let Some(b) = self.backends.get(index) {
            let x = held.as_secs_f64();
            let mut s = b.service.lock();
            *s = Some(s.map_or(x, |old| old + SERVICE_EWMA_ALPHA * (x - old)));
        }
    }

    /// Any backend, for background fetches that do not need balancing.
    pub fn pick_any(&self) -> usize {
        let now = Instant::now();
        self.select(&[], None, now).unwrap_or(0)
    }

    /// Marks the start of an attempt on `index`.
    pub fn begin(&self, index: usize) -> Option<BackendGuard> {
        let b = self.backends.get(index)?;
        b.inflight.fetch_add(1, Ordering::Relaxed);
        b.sent_since_scrape.fetch_add(1, Ordering::Relaxed);
        Some(BackendGuard(b.inflight.clone()))
    }

    pub fn inflight(&self, index: usize) -> usize {
        self.backends
            .get(index)
            .map_or(0, |b| b.inflight.load(Ordering::Relaxed))
    }

    /// Up as `llmedge_backend_up` reports it.
    pub fn is_up(&self, index: usize, now: Instant) -> bool {
        let active = self.active_checks();
        self.backends
            .get(index)
            .is_some_and(|b| b.health.lock().up(now, active))
    }

    /// Whether some backend can take new requests now.
    pub fn any_available(&self, now: Instant) -> bool {
        let active = self.active_checks();
        self.backends
            .iter()
            .any(|b| b.health.lock().available(now, active))
    }

    pub fn with_health<R>(&self, index: usize, f: impl FnOnce(&mut Health) -> R) -> Option<R> {
        self.backends.get(index).map(|b| f(&mut b.health.lock()))
    }

    /// Records a scrape; `None` marks the signal unknown.
    pub fn set_load(&self, index: usize, scraped: Option<Scraped>, now: Instant) {
        if let Some(b) = self.backends.get(index) {
            *b.load.lock() = scraped.map(|s| (now, s));
            b.sent_since_scrape.store(0, Ordering::Relaxed);
        }
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

    /// The peer for a resolved backend. Pingora's per-read timeout is only a backstop: the
    /// first-byte, idle and total limits are enforced per request (see `proxy::preset`).
    pub fn peer(&self, index: usize, addr: SocketAddr) -> Result<HttpPeer, GatewayError> {
        let b = self.backend(index).ok_or(GatewayError::Internal)?;
        let t = &self.config.timeouts;
        let mut peer = HttpPeer::new(addr, b.tls, b.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect);
        o.total_connection_timeout = Some(t.connect * 2);
        o.read_timeout = Some(t.first_byte.max(t.idle) + Duration::from_secs(5));
        o.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        if b.tls {
            o.verify_cert = self.config.tls.verify;
            o.verify_hostname = self.config.tls.verify;
            o.ca = self.ca.clone();
            // Pingora reuses pooled connections by address, SNI and verify flags, not by CA:
            // a pool with its own trust (or none) keeps its connections to itself
            if self.ca.is_some() || !self.config.tls.verify {
                peer.group_key = self.tls_group;
            }
        }
        Ok(peer)
    }
}

#[cfg(test)]
mod tests;
