//! The gateway value every phase receives: the live state, metrics, and the process-wide
//! request count and drain signal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::live::Live;
use crate::metrics::Metrics;

/// The gateway: shared, swappable state plus metrics. Cheap to clone into services.
#[derive(Clone)]
pub struct Gateway {
    pub state: Arc<Live>,
    pub metrics: Arc<Metrics>,
    /// Requests between header and access line, for the shutdown drain.
    pub active: Arc<AtomicUsize>,
    /// Set to true when a graceful shutdown's grace period ends: open streams get a final
    /// error event and end.
    pub drain: Arc<watch::Sender<bool>>,
    /// Which backend produced each Responses answer (`previous_response_id` affinity).
    pub affinity: Arc<crate::affinity::Affinity>,
}

impl Gateway {
    pub fn new(state: Arc<Live>, metrics: Arc<Metrics>) -> Self {
        Self {
            state,
            metrics,
            active: Arc::new(AtomicUsize::new(0)),
            drain: Arc::new(watch::channel(false).0),
            affinity: Arc::new(crate::affinity::Affinity::default()),
        }
    }

    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}
