//! Responses affinity: which backend produced each response this gateway forwarded, so a
//! request continuing it (`previous_response_id`) goes back there (vLLM keeps response state
//! per instance; any other backend answers 404). Bounded (oldest first out) and with a TTL.
//! Pure apart from the lock: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Responses remembered at most.
pub const CAPACITY: usize = 100_000;
/// How long a response is followed.
pub const TTL: Duration = Duration::from_secs(6 * 3600);

/// response id → (pool, backend id).
pub struct Affinity {
    inner: Mutex<Inner>,
    cap: usize,
    ttl: Duration,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, (String, u64, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl Default for Affinity {
    fn default() -> Self {
        Self::new(CAPACITY, TTL)
    }
}

impl Affinity {
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
            ttl,
        }
    }

    /// Remembers that `backend` of `pool` produced response `id`.
    pub fn insert(&self, id: &str, pool: &str, backend: u64, now: Instant) {
        let mut g = self.inner.lock();
        g.by_id
            .insert(id.to_string(), (pool.to_string(), backend, now));
        g.order.push_back((id.to_string(), now));
        while g.order.len() > self.cap
            || g.order
                .front()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) > self.ttl)
        {
            let Some((old, at)) = g.order.pop_front() else {
                break;
            };
            // only the entry this queue slot stands for (a re-insert made a newer one)
            if g.by_id.get(&old).is_some_and(|e| e.2 == at) {
                g.by_id.remove(&old);
            }
        }
    }

    /// The pool and backend that produced `id`, while it is remembered.
    pub fn get(&self, id: &str, now: Instant) -> Option<(String, u64)> {
        let g = self.inner.lock();
        let (pool, backend, at) = g.by_id.get(id)?;
        (now.saturating_duration_since(*at) <= self.ttl).then(|| (pool.clone(), *backend))
    }

    pub fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_ttl_and_capacity() {
        let a = Affinity::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        a.insert("resp_1", "vllm", 11, t0);
        assert_eq!(a.get("resp_1", t0), Some(("vllm".into(), 11)));
        assert_eq!(
            a.get("resp_1", t0 + Duration::from_secs(11)),
            None,
            "past the TTL"
        );
        for i in 2..=4 {
            a.insert(&format!("resp_{i}"), "vllm", i, t0);
        }
        assert_eq!(a.len(), 3);
        assert_eq!(a.get("resp_1", t0), None, "the oldest goes first");
        assert_eq!(a.get("resp_4", t0), Some(("vllm".into(), 4)));
        a.insert("resp_5", "vllm", 5, t0 + Duration::from_secs(20));
        assert_eq!(a.len(), 1, "expired entries leave as new ones come");
    }
}
