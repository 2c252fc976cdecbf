//! Backend selection algorithms over a snapshot of candidates; pure and deterministic given inputs.

use crate::config::Balance;

/// What the selector knows about one usable backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Position of the backend in its pool.
    pub index: usize,
    pub weight: u32,
    /// Requests this gateway has in flight to the backend.
    pub inflight: usize,
    /// Stable identity for hashing (derived from the backend URL, not its position).
    pub id: u64,
    /// Fresh load from the backend's metrics, if any.
    pub load: Option<Load>,
    /// Share of the request's prompt blocks the backend holds (`cache_aware`), 0..=1.
    pub matched: f64,
}

/// A scraped load signal plus what the gateway sent and saw end since that scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub waiting: f64,
    pub running: f64,
    /// KV-cache usage, 0..=1.
    pub kv_usage: f64,
    pub sent_since_scrape: usize,
    /// Requests of this gateway's that ended on the backend since the scrape.
    pub ended_since_scrape: usize,
    /// How many requests the backend runs at once, as learned from its scrapes
    /// ([`slots_seen`]); `None` until one showed a full cache, a fill of 5% or more, or a queue.
    pub slots: Option<f64>,
    /// Typical time a request holds a slot on this backend (seconds), as this gateway measured.
    pub service_secs: f64,
}

/// Until a backend's slots are known, each request it holds adds this much to its fill: enough
/// to rank idle backends by what they hold, never enough to call one full.
const UNLEARNED_FILL_PER_REQUEST: f64 = 0.01;

/// Below this KV fill, `running / kv_usage` says too little (a few short requests on a large
/// cache, or a fill rounded to 0.01) to learn slots from.
const MIN_KV_FOR_SLOTS: f64 = 0.05;

/// What one scrape says about a backend's slots: with a full KV cache it runs all it can, so
/// `running` is its capacity; otherwise each running request holds `kv_usage / running` of the
/// cache, so `running / kv_usage` fit (a queue beside free cache is a per-step budget, not the
/// capacity). A queue with the cache nearly empty caps it at `running`. `None` when nothing
/// runs, or the fill is too small to tell.
pub fn slots_seen(waiting: f64, running: f64, kv_usage: f64) -> Option<f64> {
    if running < 1.0 || !kv_usage.is_finite() {
        return None;
    }
    if kv_usage >= 0.999 {
        return Some(running);
    }
    if kv_usage >= MIN_KV_FOR_SLOTS {
        return Some(running / kv_usage);
    }
    (waiting > 0.0).then_some(running)
}

impl Load {
    /// Requests the backend holds now: the scrape's running and waiting, plus what this
    /// gateway sent since, less what it saw end since; never below `inflight`, this gateway's
    /// own count, which is fresh (and exact when it is the backend's only client).
    pub fn occupancy(&self, inflight: usize) -> f64 {
        let since = self.sent_since_scrape as f64 - self.ended_since_scrape as f64;
        (self.running + self.waiting + since)
            .max(inflight as f64)
            .max(0.0)
    }

    /// Lower is better. A backend with a free slot scores its fill (occupancy per slot) in
    /// `0..1`; a full one scores above 1 by the expected wait for a slot: the requests ahead,
    /// per slot, times how long a request holds a slot there. So a backend with few or slow
    /// slots is avoided once it is full, and a request sent since the scrape fills a slot
    /// rather than counting as a queue.
    pub fn score(&self, inflight: usize) -> f64 {
        let occupancy = self.occupancy(inflight);
        let service = self.service_secs.max(0.001);
        let Some(slots) = self.slots.filter(|s| *s >= 1.0) else {
            if self.waiting > 0.0 {
                return 1.0 + (occupancy + 1.0) * service;
            }
            return (occupancy * UNLEARNED_FILL_PER_REQUEST).min(0.99);
        };
        if occupancy < slots {
            return occupancy / slots;
        }
        1.0 + (occupancy - slots + 1.0) / slots * service
    }
}

/// Picks one candidate. `seq` is a per-pool counter (round robin, tie breaks, random choices);
/// `key` is the consistent-hash key. Returns the candidate's `index`.
pub fn select(algo: Balance, cands: &[Candidate], seq: u64, key: Option<u64>) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    match algo {
        Balance::RoundRobin => round_robin(cands, seq),
        Balance::LeastOutstanding => least_outstanding(cands, seq),
        Balance::ConsistentHash => match key {
            Some(k) => rendezvous(cands, k),
            None => least_outstanding(cands, seq),
        },
        Balance::VllmLoad => {
            if cands.iter().all(|c| c.load.is_some()) {
                vllm_load(cands)
            } else {
                least_outstanding(cands, seq) // unknown signal: never guess zeros
            }
        }
        Balance::CacheAware => cache_aware(cands, seq, 1.0),
    }
}

/// How loaded a candidate is, for `cache_aware`: the `vllm_load` score when every candidate
/// has a fresh scrape (its fill while a slot is free, above 1 by the expected wait once
/// full), else its in-flight requests relative to the pool's mean (1 = average).
fn pressure(c: &Candidate, all_scraped: bool, mean_inflight: f64) -> f64 {
    match (all_scraped, c.load) {
        (true, Some(l)) => l.score(c.inflight),
        _ => c.inflight as f64 / f64::from(c.weight.max(1)) / (mean_inflight + 1.0),
    }
}

/// `cache_aware`: the lowest cost, where cost is the share of the prompt the backend would
/// have to prefill (1 − matched) plus `load_weight` × its pressure. A backend that holds the
/// prefix wins until its load costs more than the prefill it saves; a prefix every backend
/// holds (one system prompt for all) leaves the choice to load alone. Ties (cold start,
/// idle pool) rotate with `seq`, so an empty index never funnels traffic to one backend.
pub fn cache_aware(cands: &[Candidate], seq: u64, load_weight: f64) -> Option<usize> {
    let all_scraped = cands.iter().all(|c| c.load.is_some());
    let mean = cands
        .iter()
        .map(|c| c.inflight as f64 / f64::from(c.weight.max(1)))
        .sum::<f64>()
        / cands.len().max(1) as f64;
    let cost = |c: &Candidate| {
        (1.0 - c.matched.clamp(0.0, 1.0)) + load_weight * pressure(c, all_scraped, mean)
    };
    let best = cands.iter().map(cost).min_by(f64::total_cmp)?;
    let tied: Vec<&Candidate> = cands.iter().filter(|c| cost(c) <= best + 1e-9).collect();
    let pick = tied.get((mix(seq) % tied.len().max(1) as u64) as usize)?;
    Some(pick.index)
}

/// Weighted round robin: the counter walks the cumulative weights.
fn round_robin(cands: &[Candidate], seq: u64) -> Option<usize> {
    let total: u64 = cands.iter().map(|c| u64::from(c.weight.max(1))).sum();
    let mut pos = seq % total;
    for c in cands {
        let w = u64::from(c.weight.max(1));
        if pos < w {
            return Some(c.index);
        }
        pos -= w;
    }
    cands.last().map(|c| c.index)
}

/// Power of two choices on in-flight requests per unit of weight.
fn least_outstanding(cands: &[Candidate], seq: u64) -> Option<usize> {
    let n = cands.len();
    if n <= 2 {
        return cands
            .iter()
            .min_by(|a, b| per_weight(a).total_cmp(&per_weight(b)))
            .map(|c| c.index);
    }
    let r = mix(seq);
    let a = (r % n as u64) as usize;
    let mut b = ((r >> 32) % (n as u64 - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let (ca, cb) = (&cands[a], &cands[b]);
    Some(if per_weight(cb) < per_weight(ca) {
        cb.index
    } else {
        ca.index
    })
}

fn per_weight(c: &Candidate) -> f64 {
    c.inflight as f64 / f64::from(c.weight.max(1))
}

/// Weighted rendezvous hashing: each key goes to the backend with the highest score, so a
/// backend leaving moves only the keys it held.
fn rendezvous(cands: &[Candidate], key: u64) -> Option<usize> {
    cands
        .iter()
        .map(|c| {
            let h = mix(key ^ c.id);
            let u = (h >> 11) as f64 / (1u64 << 53) as f64; // uniform in [0, 1)
            let score = -f64::from(c.weight.max(1)) / (u.max(f64::MIN_POSITIVE)).ln();
            (score, c.index)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, i)| i)
}

fn vllm_load(cands: &[Candidate]) -> Option<usize> {
    cands
        .iter()
        .filter_map(|c| Some((c.load?.score(c.inflight), c.inflight, c.index)))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, _, i)| i)
}

/// splitmix64: a fast, well-spread 64-bit mixer.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a, for hashing keys and backend identities.
pub fn hash_bytes(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
