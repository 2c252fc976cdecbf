//! The process around the gateway: config reload (SIGHUP, `--watch`), the signals that start a
//! shutdown or an upgrade, and the drain that lets requests and streams finish.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Config;
use crate::errors::ConfigError;
use crate::live::flush::Flusher;
use crate::metrics::Metrics;
use crate::proxy::Gateway;

/// How often `--watch` looks at the config file.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// After the grace period has ended the streams still open, how long their final events get.
const FINAL_EVENTS_GRACE: Duration = Duration::from_secs(2);
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How long the drain waits for the ledger's last rows to be written.
const LEDGER_FLUSH: Duration = Duration::from_secs(8);

/// Re-reads the config file and swaps in a new snapshot, or keeps the running one.
pub struct Reloader {
    pub path: PathBuf,
    pub gateway: Gateway,
    /// One reload at a time (SIGHUP and `--watch` may fire together).
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(path: impl Into<PathBuf>, gateway: Gateway) -> Self {
        Self {
            path: path.into(),
            gateway,
            lock: Mutex::new(()),
        }
    }

    /// Loads the file; a valid config takes effect for new requests in one swap over the live
    /// state (limit counters, spend and backend state are shared, not carried over); requests
    /// in flight finish on the snapshot they started with. An invalid one is refused and the
    /// old config keeps serving.
    pub fn reload(&self, trigger: &'static str) -> Result<(), ConfigError> {
        let _one = self.lock.lock();
        let metrics: &Metrics = &self.gateway.metrics;
        let path = self.path.to_string_lossy();
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
                metrics.reloads.with_label_values(&["failure"]).inc();
                return Err(e);
            }
        };
        let state = &self.gateway.state;
        let old = state.load();
        for field in needs_restart(&old.config, &config) {
            tracing::warn!(
                field,
                "{field} changed: it takes effect at the next restart or upgrade"
            );
        }
        // built over the live state outside any lock a request waits on
        if let Err(e) = state.swap(config) {
            tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
            metrics.reloads.with_label_values(&["failure"]).inc();
            return Err(e);
        }
        metrics.reloads.with_label_values(&["success"]).inc();
        tracing::info!(trigger, config = %path, "config reloaded");
        Ok(())
    }
}

/// Settings a running process cannot change: its listeners, threads, shutdown and counter file.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    [
        ("state", old.state != new.state),
        ("store", old.store != new.store),
        (
            "state.redis",
            !same_store(old.shared.as_ref(), new.shared.as_ref()),
        ),
        ("server.grace_period_secs", o.grace_period != n.grace_period),
        ("server.listen", o.listen != n.listen),
        ("server.admin_listen", o.admin_listen != n.admin_listen),
        ("server.threads", o.threads != n.threads),
        ("server.tls", o.tls != n.tls),
        ("server.h2c", o.h2c != n.h2c),
        ("server.upgrade_sock", o.upgrade_sock != n.upgrade_sock),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect()
}

/// Whether two `state.redis` blocks name the same store (`on_error` applies at once).
fn same_store(
    a: Option<&crate::config::RedisConfig>,
    b: Option<&crate::config::RedisConfig>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.url == b.url
                && a.key_prefix == b.key_prefix
                && a.timeout == b.timeout
                && a.lease == b.lease
        }
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The signals the binary answers: SIGTERM and SIGINT drain and exit, SIGQUIT hands the
/// listeners to a new process started with `--upgrade`, SIGHUP reloads the config.
pub struct Signals {
    pub reloader: Option<Arc<Reloader>>,
}

fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(signal = name, error = %e, "cannot watch signal");
            None
        }
    }
}

async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        let mut hup = listen(SignalKind::hangup(), "SIGHUP");
        loop {
            tokio::select! {
                () = next(&mut quit) => return ShutdownSignal::GracefulUpgrade,
                () = next(&mut term) => return ShutdownSignal::GracefulTerminate,
                () = next(&mut int) => return ShutdownSignal::GracefulTerminate,
                () = next(&mut hup) => match &self.reloader {
                    // the outcome is logged and counted by `reload`
                    Some(r) => drop(r.reload("SIGHUP")),
                    None => tracing::warn!("SIGHUP ignored: no config file to reload"),
                },
            }
        }
    }
}

/// `--watch`: reloads when the config file's contents change.
pub struct Watch {
    pub reloader: Arc<Reloader>,
}

fn fingerprint(path: &std::path::Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

#[async_trait]
impl BackgroundService for Watch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.reloader.path.clone();
        let mut seen = fingerprint(&path);
        loop {
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let now = fingerprint(&path);
            // a file being rewritten can be missing or empty for a moment: wait for content
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            // the outcome is logged and counted by `reload`
            drop(self.reloader.reload("watch"));
        }
    }
}

/// The graceful drain: once Pingora has stopped the listeners, waits for the requests in
/// progress, ends the streams still open at the end of the grace period with a final error
/// event, saves the counters and (in the binary) exits without waiting out the rest.
pub struct Drain {
    pub gateway: Gateway,
    pub grace: Duration,
    pub flusher: Option<Arc<Flusher>>,
    /// Called when drained (the binary exits there); an embedding server decides itself.
    pub on_drained: Option<fn()>,
}

impl Drain {
    async fn wait_idle(&self, until: Instant) -> bool {
        while self.gateway.active() > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        true
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        self.gateway.state.start_draining();
        let active = self.gateway.active();
        tracing::info!(
            active,
            grace_secs = self.grace.as_secs(),
            "shutting down: listeners closed, draining requests"
        );
        let mut again = listen(SignalKind::interrupt(), "SIGINT");
        let drained = tokio::select! {
            d = self.wait_idle(Instant::now() + self.grace) => d,
            // a second Ctrl-C (or SIGINT) means now
            () = next(&mut again) => false,
        };
        if !drained {
            let left = self.gateway.active();
            tracing::warn!(
                active = left,
                "grace period over: ending the remaining requests"
            );
            self.gateway.drain.send_replace(true);
            self.wait_idle(Instant::now() + FINAL_EVENTS_GRACE).await;
        }
        if let Some(f) = &self.flusher {
            f.save();
        }
        if let Some(l) = self.gateway.state.ledger().cloned() {
            // the ledger's rows reach the store before the process exits
            let flushed = tokio::task::spawn_blocking(move || l.flush(LEDGER_FLUSH))
                .await
                .unwrap_or(false);
            if !flushed {
                tracing::error!("ledger rows not written before exit (llmedge_ledger_queue_rows)");
            }
        }
        if let Some(s) = self.gateway.state.shared() {
            s.quiesce(FINAL_EVENTS_GRACE).await;
        }
        tracing::info!("drained");
        if let Some(done) = self.on_drained {
            done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_the_settings_that_wait_for_a_restart() {
        let load = |extra: &str| {
            let yaml = format!("server: {{listen: '127.0.0.1:1'{extra}}}\npools: {{p: {{backends: ['http://h']}}}}\nroutes: [{{prefix: '', pool: p}}]\n");
            Config::from_yaml(&yaml, &|_| None).unwrap()
        };
        let old = load("");
        assert!(needs_restart(&old, &load("")).is_empty());
        assert_eq!(
            needs_restart(&old, &load(", threads: 4, grace_period_secs: 5")),
            ["server.grace_period_secs", "server.threads"]
        );
        let redis = |state: &str| {
            let yaml = format!("pools: {{p: {{backends: ['http://h']}}}}\nroutes: [{{prefix: '', pool: p}}]\nstate: {state}\n");
            Config::from_yaml(&yaml, &|_| None).unwrap()
        };
        let a = redis("{backend: redis, redis: {url: 'redis://a'}}");
        assert!(
            needs_restart(
                &a,
                &redis("{backend: redis, redis: {url: 'redis://a'}, on_error: {limits: deny}}")
            )
            .is_empty(),
            "on_error applies at once"
        );
        assert_eq!(
            needs_restart(&a, &redis("{backend: redis, redis: {url: 'redis://b'}}")),
            ["state.redis"]
        );
    }
}
