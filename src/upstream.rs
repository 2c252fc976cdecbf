//! Upstream pools: per-backend state (in-flight, health, load), selection, resolution, peers.

pub mod health;
pub mod load;
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
use crate::prefix::PrefixIndex;
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

/// Runtime state of one backend, shared by every config snapshot that has the backend (same
/// pool name, same URL): health, ejections, scraped load and in-flight slots live here, never
/// in a snapshot.
#[derive(Default)]
pub struct BackendState {
    inflight: AtomicUsize,
    health: Mutex<Health>,
    load: Mutex<Scrapes>,
    /// Requests this gateway ever sent to the backend, and those that ended.
    sent: AtomicUsize,
    ended: AtomicUsize,
    /// EWMA of how long successful requests held the backend, in seconds.
    service: Mutex<Option<f64>>,
}

/// What a backend's scrapes have told: the last one (when it arrived, what it said, and this
/// gateway's counts when it was asked for; `None` when it failed), and the slots they have
/// shown (`balance::slots_seen`), kept through idle and failed scrapes.
#[derive(Default)]
struct Scrapes {
    last: Option<(Instant, Scraped, Counts)>,
    slots: Option<f64>,
}

/// This gateway's running totals of requests sent to a backend and ended there.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub sent: usize,
    pub ended: usize,
}

/// Weight of the newest sample in the service-time average.
const SERVICE_EWMA_ALPHA: f64 = 0.2;
/// Assumed slot holding time before the first request on a backend finished.
const DEFAULT_SERVICE_SECS: f64 = 1.0;

/// Every backend's live state by pool name and backend id.
#[derive(Default)]
pub struct Backends {
    states: Mutex<HashMap<(String, u64), Arc<BackendState>>>,
    /// Each `cache_aware` pool's prefix index, by pool name: it outlives config snapshots.
    prefixes: Mutex<HashMap<String, SharedIndex>>,
}

/// A pool's prefix index, shared by the snapshots that have the pool.
pub type SharedIndex = Arc<Mutex<PrefixIndex>>;

impl Backends {
    fn state(&self, pool: &str, id: u64) -> Arc<BackendState> {
        self.states
            .lock()
            .entry((pool.to_string(), id))
            .or_default()
            .clone()
    }

    /// The prefix index of a `cache_aware` pool, made on first use; a changed `max_blocks`
    /// starts it afresh.
    fn prefix_index(&self, pool: &str, cap: usize) -> SharedIndex {
        let mut all = self.prefixes.lock();
        let ix = all
            .entry(pool.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(PrefixIndex::new(cap))));
        if ix.lock().capacity() != cap {
            *ix = Arc::new(Mutex::new(PrefixIndex::new(cap)));
        }
        ix.clone()
    }

    /// Forgets backends that are in none of `pools`; requests still running on one keep it.
    pub fn retain(&self, pools: &[Pool]) {
        self.prefixes
            .lock()
            .retain(|name, _| pools.iter().any(|p| p.name() == name && p.prefix.is_some()));
        let live: std::collections::HashSet<(&str, u64)> = pools
            .iter()
            .flat_map(|p| p.ids.iter().map(move |&id| (p.name(), id)))
            .collect();
        self.states
            .lock()
            .retain(|(p, id), s| live.contains(&(p.as_str(), *id)) || Arc::strong_count(s) > 1);
    }
}

/// Stable identity of a backend within its pool (and for consistent hashing): a hash of its URL.
/// The headers that authenticate the gateway to a pool's backends: its key as
/// `Authorization: Bearer` (OpenAI) or `x-api-key` with `anthropic-version` (Anthropic).
pub fn auth_headers(config: &PoolConfig) -> Vec<(&'static str, String)> {
    auth_headers_with(config, config.api_key.as_ref().map(|k| k.expose()))
}

/// The same headers carrying `key` (a caller's own provider key for `credentials: client`).
pub fn auth_headers_with(config: &PoolConfig, key: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(2);
    match config.protocol {
        crate::config::Protocol::Openai => {
            if let Some(k) = key {
                h.push(("authorization", format!("Bearer {k}")));
            }
        }
        crate::config::Protocol::Anthropic => {
            if let Some(k) = key {
                h.push(("x-api-key", k.to_string()));
            }
            h.push(("anthropic-version", config.anthropic_version.clone()));
        }
    }
    h
}

pub fn backend_id(b: &BackendUrl) -> u64 {
    balance::hash_bytes(format!("{}{}", b.authority, b.base_path).as_bytes())
}

/// One pool of one config snapshot, over the live backend states.
pub struct Pool {
    pub config: PoolConfig,
    /// Each backend's id, in config order.
    ids: Vec<u64>,
    backends: Vec<Arc<BackendState>>,
    seq: AtomicU64,
    dns: Mutex<HashMap<usize, (Instant, SocketAddr)>>,
    /// The pool's own trusted roots (`tls.ca_file`), built once.
    ca: Option<Arc<CaType>>,
    /// Connection-pool partition for a pool with its own TLS trust: its name and CA bytes, so a
    /// reload that changes the CA does not reuse connections verified against the old one.
    tls_group: u64,
    /// What this pool sent where (`balance: cache_aware`).
    prefix: Option<SharedIndex>,
}

/// Holds one in-flight slot on a backend; released on drop.
pub struct BackendGuard(Arc<BackendState>);

impl Drop for BackendGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// The pool of `config` over the live states in `live` (created for new backends).
    pub fn new(config: PoolConfig, live: &Backends) -> Self {
        let ids: Vec<u64> = config.backends.iter().map(backend_id).collect();
        let backends: Vec<Arc<BackendState>> =
            ids.iter().map(|&id| live.state(&config.name, id)).collect();
        if config.health.is_none() {
            // no active checks any more: an old verdict would hold the backend down for good
            for b in &backends {
                b.health.lock().clear_active();
            }
        }
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
        let prefix = (config.balance == crate::config::Balance::CacheAware)
            .then(|| live.prefix_index(&config.name, config.cache_aware.max_blocks));
        Self {
            prefix,
            config,
            ids,
            backends,
            seq: AtomicU64::new(0),
            dns: Mutex::new(HashMap::new()),
            ca,
            tls_group: balance::hash_bytes(&group),
        }
    }

    /// The position of the backend with `id` in this snapshot's pool.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }

    pub fn id(&self, index: usize) -> Option<u64> {
        self.ids.get(index).copied()
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

    /// `cache_aware`: the backend where the prompt's `blocks` cost least (prefill it would
    /// redo against its load), with the prompt then recorded as sent there. Returns the backend
    /// and how many leading blocks it held.
    pub fn select_by_prefix(
        &self,
        exclude: &[usize],
        blocks: &[u64],
        now: Instant,
    ) -> Option<(usize, usize)> {
        let Some(index) = &self.prefix else {
            return self.select(exclude, None, now).map(|b| (b, 0));
        };
        let mut cands = self.candidates(exclude, now, false);
        if cands.is_empty() {
            cands = self.candidates(exclude, now, true);
        }
        let mut ix = index.lock();
        let share = |n: usize| n as f64 / blocks.len().max(1) as f64;
        for c in &mut cands {
            c.matched = share(ix.matched(c.id, blocks));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let weight = self.config.cache_aware.load_weight;
        let pick = balance::cache_aware(&cands, seq, weight)?;
        let held = ix.matched(self.ids[pick], blocks);
        ix.record(self.ids[pick], blocks);
        Some((pick, held))
    }

    /// Drops what the index says backend `index` holds: it was ejected, went down or
    /// restarted, so its cache is gone or unknown.
    pub fn forget_prefixes(&self, index: usize) {
        if let (Some(ix), Some(&id)) = (&self.prefix, self.ids.get(index)) {
            ix.lock().forget(id);
        }
    }

    /// Entries in the pool's prefix index (`None`: not `cache_aware`).
    pub fn prefix_entries(&self) -> Option<usize> {
        self.prefix.as_ref().map(|ix| ix.lock().len())
    }

    /// Whether backend `index` takes new requests now (healthy, not ejected, not holding
    /// off after a `Retry-After`).
    pub fn takes_requests(&self, index: usize, now: Instant) -> bool {
        let active = self.active_checks();
        self.backends
            .get(index)
            .is_some_and(|b| b.health.lock().available(now, active))
    }

    /// When nothing can be selected because backends asked to be left alone (`Retry-After`):
    /// the shortest remaining pause among them, else `None`.
    pub fn paused_for(&self, exclude: &[usize], now: Instant) -> Option<Duration> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(i, _)| !exclude.contains(i))
            .filter_map(|(_, b)| b.health.lock().held_for(now))
            .min()
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
                id: self.ids[i],
                load: self.load_signal(i, now),
                matched: 0.0,
            })
            .collect()
    }

    /// The backend's fresh load, or `None` when never scraped, failed, or stale.
    pub fn load_signal(&self, index: usize, now: Instant) -> Option<Load> {
        let scrape = self.config.metrics.as_ref()?;
        let b = self.backends.get(index)?;
        let (last, slots) = {
            let l = b.load.lock();
            (l.last, l.slots)
        };
        let (at, s, base) = last?;
        let stale_after = (scrape.interval * STALE_AFTER_INTERVALS).max(MIN_STALE_AFTER);
        if now.saturating_duration_since(at) > stale_after {
            return None;
        }
        Some(Load {
            waiting: s.waiting,
            running: s.running,
            kv_usage: s.kv_usage,
            sent_since_scrape: b.sent.load(Ordering::Relaxed).saturating_sub(base.sent),
            ended_since_scrape: b.ended.load(Ordering::Relaxed).saturating_sub(base.ended),
            slots,
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
        b.sent.fetch_add(1, Ordering::Relaxed);
        Some(BackendGuard(b.clone()))
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

    /// What this gateway has sent to backend `index` and seen end so far: taken when a scrape
    /// is asked for, so what happens while it is on its way counts as after it.
    pub fn counts(&self, index: usize) -> Counts {
        self.backends
            .get(index)
            .map_or_else(Counts::default, |b| Counts {
                sent: b.sent.load(Ordering::Relaxed),
                ended: b.ended.load(Ordering::Relaxed),
            })
    }

    /// Records a scrape asked for when this gateway's counts were `base`; `None` marks the
    /// signal unknown (slots learned earlier are kept).
    pub fn set_load(&self, index: usize, scraped: Option<Scraped>, base: Counts, now: Instant) {
        if let Some(b) = self.backends.get(index) {
            let mut l = b.load.lock();
            let seen = scraped.and_then(|s| balance::slots_seen(s.waiting, s.running, s.kv_usage));
            l.slots = seen.or(l.slots);
            l.last = scraped.map(|s| (now, s, base));
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
