//! The background service that writes spend and limit windows to the counter store
//! periodically and once more at shutdown.
//!
//! Two processes write the same file during an `--upgrade` (the old one finishing its streams,
//! the new one serving): each save merges what the other counted since this process last read
//! or wrote the file, then writes the sum, under the store's lock. So neither overwrites the
//! other's spend, however their saves interleave.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::Live;
use crate::limits::persist::{CounterStore, StateFile};
use crate::limits::Counters;

pub struct Flusher {
    live: Arc<Live>,
    store: Box<dyn CounterStore>,
    every: Duration,
    /// Whether the last save failed: a failure is logged when it starts and when it ends, not
    /// on every flush of a read-only directory.
    failing: AtomicBool,
    /// The stored state as this process last read or wrote it (one save at a time).
    seen: Mutex<StateFile>,
}

impl Flusher {
    /// Loads the stored counters into the live cells; the flusher then keeps them saved.
    pub fn start(
        live: Arc<Live>,
        store: Box<dyn CounterStore>,
        every: Duration,
    ) -> Result<Self, String> {
        let seen = store.load()?.unwrap_or_default();
        live.counters().import(&seen);
        tracing::info!(
            scopes = seen.scopes.len(),
            "limit and spend counters loaded"
        );
        Ok(Self {
            live,
            store,
            every,
            failing: AtomicBool::new(false),
            seen: Mutex::new(seen),
        })
    }

    pub fn save(&self) {
        let mut seen = self.seen.lock();
        let counters: &Counters = self.live.counters();
        let saved = self.store.update(&mut |stored| {
            if let Some(stored) = stored {
                counters.merge_since(&seen, &stored);
                // merged into the cells now, whether or not this write succeeds: a failed save
                // must not add the other writer's counts again next time
                *seen = stored;
            }
            counters.export()
        });
        match saved {
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "saving limit and spend counters failed; spend will not survive a restart until it succeeds");
                }
            }
            Ok(state) => {
                *seen = state;
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("saving limit and spend counters works again");
                }
            }
        }
    }
}

/// Saves periodically, and once more when shutdown starts (the drain saves again at its end).
pub struct FlushService(pub Arc<Flusher>);

#[async_trait]
impl BackgroundService for FlushService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.0.every) => self.0.save(),
                _ = shutdown.changed() => {
                    self.0.save();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::limits::persist::FileStore;

    fn live() -> Arc<Live> {
        let yaml = "pools: {p: {backends: ['http://h']}}\nroutes: [{prefix: '', pool: p}]\nkeys: [{key: a, tenant: t}]\npricing: {m: {input: 1000000, output: 0}}";
        Live::new(Config::from_yaml(yaml, &|_| None).unwrap())
    }

    fn spend(live: &Live, usd: u64) {
        let snap = live.load();
        let key = snap.config.keys[0].clone();
        let crate::live::Admission::Admitted(a) =
            futures::executor::block_on(live.admit(&snap, &key, ("m", 0, 0))).unwrap()
        else {
            panic!("admitted")
        };
        let used = crate::openai::Usage {
            prompt_tokens: usd,
            ..Default::default()
        };
        live.settle(a, used);
    }

    fn day_usd(path: &std::path::Path) -> f64 {
        let f: StateFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        f.scopes["tenant:t"].day.usd
    }

    /// A file store whose next `fail` writes fail after the merge ran (a full disk).
    struct Flaky {
        inner: FileStore,
        fail: Arc<parking_lot::Mutex<u32>>,
    }

    impl CounterStore for Flaky {
        fn load(&self) -> Result<Option<StateFile>, String> {
            self.inner.load()
        }

        fn update(
            &self,
            next: &mut dyn FnMut(Option<StateFile>) -> StateFile,
        ) -> Result<StateFile, String> {
            let mut fail = self.fail.lock();
            if *fail > 0 {
                *fail -= 1;
                let _ = next(self.inner.load()?);
                return Err("disk full".into());
            }
            self.inner.update(next)
        }
    }

    #[test]
    fn a_failed_save_does_not_count_the_other_writer_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (old, new) = (live(), live());
        let every = Duration::from_secs(1);
        let file = || FileStore { path: path.clone() };
        let old_f = Flusher::start(old.clone(), Box::new(file()), every).unwrap();
        let fail = Arc::new(parking_lot::Mutex::new(0));
        let flaky = Flaky {
            inner: file(),
            fail: fail.clone(),
        };
        let new_f = Flusher::start(new.clone(), Box::new(flaky), every).unwrap();
        spend(&old, 4);
        old_f.save();
        *fail.lock() = 3;
        for _ in 0..3 {
            new_f.save(); // merges the old process's 4, then the write fails
        }
        new_f.save();
        assert!((day_usd(&path) - 4.0).abs() < 1e-9, "{}", day_usd(&path));
    }

    #[test]
    fn two_processes_sharing_the_file_lose_no_spend_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = || Box::new(FileStore { path: path.clone() });
        let (old, new) = (live(), live());
        let old_f = Flusher::start(old.clone(), store(), Duration::from_secs(1)).unwrap();
        spend(&old, 1);
        old_f.save(); // 1
                      // the upgrade: the new process loads the file, then both keep spending and saving
        let new_f = Flusher::start(new.clone(), store(), Duration::from_secs(1)).unwrap();
        spend(&new, 2);
        new_f.save();
        spend(&old, 4); // a stream the old process finished after the hand-over
        old_f.save(); // the old process's final save
        spend(&new, 8);
        new_f.save();
        assert!((day_usd(&path) - 15.0).abs() < 1e-9, "{}", day_usd(&path));
        new_f.save();
        assert!(
            (day_usd(&path) - 15.0).abs() < 1e-9,
            "saving again adds nothing"
        );
    }
}
