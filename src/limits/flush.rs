//! The background service that writes spend and limit windows to the counter store
//! periodically and once more at shutdown.

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
}

impl Flusher {
    fn save(&self) {
        let snap = self.state.load();
        if let Err(e) = self.store.save(&snap.governor.export(&snap.key_ids)) {
            tracing::warn!(error = %e, "saving limit and spend counters failed");
        }
    }
}

#[async_trait]
impl BackgroundService for Flusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.every) => self.save(),
                _ = shutdown.changed() => {
                    self.save();
                    return;
                }
            }
        }
    }
}
