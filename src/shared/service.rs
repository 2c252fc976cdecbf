//! The store's background work: reconnect while it is away, merge what this process counted
//! meanwhile, and renew the leases of requests still running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::wire::{self, Lease, Wired};
use super::{within, Lane, Op, Shared};

/// How often the store is looked after: reconnects, merges and due renewals.
const TICK: Duration = Duration::from_millis(200);

pub struct StoreService(pub Arc<Shared>);

#[async_trait]
impl BackgroundService for StoreService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // renewals run on their own, so a slow reconnect or merge never delays them
        let renewals = async {
            loop {
                if self.0.is_up() {
                    self.0.renew_due().await;
                }
                tokio::time::sleep(TICK).await;
            }
        };
        let upkeep = async {
            loop {
                self.0.tick().await;
                tokio::time::sleep(TICK).await;
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            () = renewals => {}
            () = upkeep => {}
        }
    }
}

impl Shared {
    /// One round of upkeep: reconnect, send what is owed.
    pub async fn tick(&self) {
        if !self.is_up() {
            self.reconnect().await;
        }
        if self.is_up() && !self.pending.lock().is_empty() && !self.merge_pending().await {
            self.down("merge", "a call owed to the store failed");
        }
    }

    /// How long upkeep waits on the store: a connect may take longer than `timeout_ms`.
    fn upkeep_wait(&self) -> Duration {
        self.settings.timeout.max(Duration::from_secs(1))
    }

    async fn reconnect(&self) {
        match within(self.upkeep_wait(), self.server.ping()).await {
            Ok(()) if self.merge_pending().await => self.back(),
            Ok(()) => self.down("merge", "a call owed to the store failed"),
            Err(e) => self.down("connect", &e),
        }
    }

    /// Sends what is owed (calls that failed, counts made here while the store was away);
    /// what fails stays owed, whole, and is sent again later (each call applies once).
    async fn merge_pending(&self) -> bool {
        let calls = self
            .pending
            .lock()
            .take(&self.settings.prefix, &self.instance);
        let mut ok = true;
        for (function, keys, arg) in calls {
            if ok {
                let call = self.server.call(Lane::Upkeep, function, &keys, &arg);
                if let Err(e) = within(self.upkeep_wait(), call).await {
                    tracing::debug!(error = %e, "owed call failed; kept for the next try");
                    self.metrics.errors.with_label_values(&["merge"]).inc();
                    ok = false;
                }
            }
            if !ok {
                self.pending.lock().resend(function, (keys, arg));
            }
        }
        ok
    }

    /// Pushes out the expiry of leases held for a third of their life.
    pub async fn renew_due(&self) {
        let every = self.settings.lease / 3;
        let due: Vec<(Arc<Wired>, Lease)> = {
            let mut r = self.renewals.lock();
            let now = Instant::now();
            r.values_mut()
                .filter(|x| now.duration_since(x.renewed) >= every)
                .map(|x| {
                    x.renewed = now;
                    (x.wired.clone(), x.lease.clone())
                })
                .collect()
        };
        let calls = due.iter().map(|(w, l)| {
            let arg = wire::renew_arg(w, l, self.settings.lease);
            async move { self.call(Op::Renew, &w.keys, &arg).await }
        });
        futures::future::join_all(calls).await;
    }

    /// At shutdown: waits (up to `max`) for settlements on their way, then merges what is
    /// pending, so a drained gateway leaves its counts in the store.
    pub async fn quiesce(&self, max: Duration) {
        let until = Instant::now() + max;
        while self.settling() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.is_up() && !self.pending.lock().is_empty() && !self.merge_pending().await {
            tracing::warn!(
                "shared state store away at shutdown: locally counted requests not merged"
            );
        }
    }
}
