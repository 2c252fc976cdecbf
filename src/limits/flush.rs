//! The background service that writes spend and limit windows to the counter store
//! periodically and once more at shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::persist::CounterStore;
use crate::state::SharedState;

pub struct Flusher {
    pub state: SharedState,
    pub store: Box<dyn CounterStore>,
    pub every: Duration,
    /// Whether the last save failed: a failure is logged when it starts and when it ends, not
    /// on every flush of a read-only directory.
    pub failing: AtomicBool,
    /// One save at a time: the last one written is the newest.
    saving: parking_lot::Mutex<()>,
}

impl Flusher {
    pub fn new(state: SharedState, store: Box<dyn CounterStore>, every: Duration) -> Self {
        Self {
            state,
            store,
            every,
            failing: AtomicBool::new(false),
            saving: parking_lot::Mutex::new(()),
        }
    }

    pub fn save(&self) {
        let _one = self.saving.lock();
        let snap = self.state.load();
        match self.store.save(&snap.governor.export(&snap.key_ids)) {
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "saving limit and spend counters failed; spend will not survive a restart until it succeeds");
                }
            }
            Ok(()) => {
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
