//! The store thread: owns the connection, reconnects with backoff, applies writes, polls the
//! revision and publishes new records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::sql::{Sql, SqlError};
use super::{cache, ops, schema, Job, Sink};
use crate::clock::{Clock, SystemClock};
use crate::config::{StoreConfig, StoreUrl};
use crate::control::Records;
use crate::metrics::StoreMetrics;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct Worker {
    cfg: StoreConfig,
    conn: Option<Box<dyn Sql>>,
    latest: Arc<Records>,
    sink: Option<Sink>,
    up: Arc<AtomicBool>,
    metrics: StoreMetrics,
    /// When a reconnect may be tried next, and the wait after that.
    retry_at: Instant,
    backoff: Duration,
    last_poll: Instant,
    /// The store's schema version, when it is newer than this binary knows.
    too_new: Option<i64>,
}

/// Why the store could not be used.
enum Down {
    /// Try again later (a network, a server restart).
    Retry(String),
    /// Never usable by this binary (a newer schema, a bad file).
    Fatal(String),
}

impl Worker {
    pub(super) fn new(cfg: StoreConfig, up: Arc<AtomicBool>, metrics: StoreMetrics) -> Self {
        let now = Instant::now();
        Self {
            cfg,
            conn: None,
            latest: Arc::new(Records::default()),
            sink: None,
            up,
            metrics,
            retry_at: now,
            backoff: Duration::from_millis(250),
            last_poll: now,
            too_new: None,
        }
    }

    pub(super) fn run(
        mut self,
        jobs: mpsc::Receiver<Job>,
        first: mpsc::Sender<Result<Arc<Records>, String>>,
    ) {
        match self.start() {
            Ok(r) => {
                let _gone = first.send(Ok(r));
            }
            Err(e) => {
                let _gone = first.send(Err(e));
                return;
            }
        }
        loop {
            let wait = self.cfg.poll.saturating_sub(self.last_poll.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(job) => self.job(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if self.last_poll.elapsed() >= self.cfg.poll {
                self.last_poll = Instant::now();
                self.poll();
            }
        }
    }

    /// The first connect and load; Postgres falls back to its cache.
    fn start(&mut self) -> Result<Arc<Records>, String> {
        match self.connect().and_then(|()| self.reload()) {
            Ok(()) => {
                tracing::info!(
                    backend = self.cfg.backend(),
                    store = %self.cfg.endpoint,
                    revision = self.latest.revision,
                    keys = self.latest.keys.len(),
                    "control-plane store ready"
                );
                Ok(self.latest.clone())
            }
            Err(Down::Fatal(e)) => Err(format!("store: {e}")),
            Err(Down::Retry(e)) if matches!(self.cfg.url, StoreUrl::Sqlite(_)) => {
                Err(format!("store: {e}"))
            }
            Err(Down::Retry(e)) => {
                self.down(&e);
                let cached = cache::load(&self.cfg.cache_file).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "store cache unreadable; starting without store keys");
                    None
                });
                let n = cached.as_ref().map_or(0, |r| r.keys.len());
                tracing::warn!(
                    store = %self.cfg.endpoint,
                    cached_keys = n,
                    "store unreachable at start: serving the config file's keys and the store keys last seen; retrying"
                );
                self.latest = Arc::new(cached.unwrap_or_default());
                Ok(self.latest.clone())
            }
        }
    }

    fn connect(&mut self) -> Result<(), Down> {
        // a refusal (wrong password, no such database) is a configuration error, not an outage
        let down = |e: SqlError| match e {
            SqlError::Refused(_) => Down::Fatal(e.to_string()),
            e => Down::Retry(e.to_string()),
        };
        let mut conn = super::open(&self.cfg).map_err(down)?;
        match schema::migrate(&mut *conn) {
            Ok(_) => {}
            Err(schema::SchemaError::TooNew { found, known }) => {
                return Err(Down::Fatal(
                    schema::SchemaError::TooNew { found, known }.to_string(),
                ))
            }
            Err(schema::SchemaError::Sql(SqlError::Unavailable(e))) => return Err(Down::Retry(e)),
            Err(e) => return Err(Down::Fatal(format!("migration failed: {e}"))),
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// A connection, reconnecting when the backoff allows.
    fn ensure(&mut self) -> Result<&mut Box<dyn Sql>, String> {
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                return Err("store unreachable (retrying)".into());
            }
            let failed = match self.connect() {
                Ok(()) => {
                    self.backoff = Duration::from_millis(250);
                    None
                }
                Err(Down::Retry(e)) => Some(e),
                Err(Down::Fatal(e)) => {
                    // retried (someone may fix it), but never quietly
                    tracing::error!(store = %self.cfg.endpoint, error = %e, "control-plane store unusable");
                    Some(e)
                }
            };
            if let Some(e) = failed {
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return Err(e);
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "store unreachable".to_string())
    }

    fn reload(&mut self) -> Result<(), Down> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Down::Retry("not connected".into()))?;
        let records = ops::load(&mut **conn).map_err(|e| Down::Retry(format!("{e:?}")))?;
        self.publish(records);
        self.up(true);
        Ok(())
    }

    fn publish(&mut self, records: Records) {
        let records = Arc::new(records);
        self.latest = records.clone();
        let now = SystemClock.now_ms();
        let live = records
            .keys
            .iter()
            .filter(|k| k.status(now) == "active")
            .count();
        self.metrics.keys.set(live as i64);
        self.metrics.revision.set(records.revision);
        if matches!(self.cfg.url, StoreUrl::Postgres(_)) {
            if let Err(e) = cache::save(&self.cfg.cache_file, &records) {
                tracing::warn!(error = %e, "cannot save the store cache");
            }
        }
        if let Some(sink) = &self.sink {
            sink(records);
        }
    }

    fn up(&mut self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        self.metrics.up.set(i64::from(up));
        if up && !was {
            tracing::info!(store = %self.cfg.endpoint, "control-plane store reachable");
        }
    }

    fn down(&mut self, why: &str) {
        self.conn = None;
        if self.up.swap(false, Ordering::Relaxed) || self.retry_at <= Instant::now() {
            tracing::warn!(store = %self.cfg.endpoint, error = %why, "control-plane store unreachable; serving the keys loaded");
        }
        self.metrics.up.set(0);
        self.retry_at = Instant::now() + self.backoff;
    }

    fn poll(&mut self) {
        let was_down = self.conn.is_none();
        let rev = match self.ensure() {
            Ok(conn) => ops::revision_and_schema(&mut **conn).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Ok((_, version)) = rev {
            if self.newer_schema(version) {
                return;
            }
        }
        match rev.map(|(r, _)| r) {
            Ok(r) if r != self.latest.revision || was_down => {
                if let Err(Down::Retry(e) | Down::Fatal(e)) = self.reload() {
                    self.down(&e);
                }
            }
            Ok(_) => self.up(true),
            Err(e) => {
                if !was_down {
                    self.down(&e);
                }
            }
        }
    }

    /// A newer llmedge migrated the store while this one runs: keep serving the records loaded,
    /// refuse writes, and say so once.
    fn newer_schema(&mut self, version: i64) -> bool {
        let known = schema::known_version();
        let newer = version > known;
        if newer && self.too_new.is_none() {
            let e = schema::SchemaError::TooNew {
                found: version,
                known,
            };
            tracing::error!(store = %self.cfg.endpoint, error = %e, "serving the keys loaded; admin writes refused");
            self.up(false);
        }
        self.too_new = newer.then_some(version);
        newer
    }

    fn job(&mut self, job: Job) {
        match job {
            Job::Attach(sink) => {
                sink(self.latest.clone());
                self.sink = Some(sink);
            }
            Job::Write {
                actor,
                write,
                reply,
            } => {
                let r = self.write(&actor, *write);
                let _gone = reply.send(r);
            }
            Job::Read { read, reply } => {
                let r = match self.ensure() {
                    Ok(conn) => read(&mut **conn),
                    Err(e) => Err(ops::OpError::Unavailable(e)),
                };
                if let Err(ops::OpError::Unavailable(e)) = &r {
                    self.down(e);
                }
                let _gone = reply.send(r);
            }
        }
    }

    fn write(&mut self, actor: &str, write: ops::Write) -> Result<ops::Applied, ops::OpError> {
        if let Some(found) = self.too_new {
            let known = schema::known_version();
            let e = schema::SchemaError::TooNew { found, known };
            return Err(ops::OpError::Unavailable(e.to_string()));
        }
        let conn = self.ensure().map_err(ops::OpError::Unavailable)?;
        let applied = ops::apply(&mut **conn, SystemClock.now_ms(), actor, write);
        if let Ok((_, rev)) = &applied {
            // this change's row, whatever other gateways committed since
            if let Ok(Some(row)) = ops::audit_row(&mut **conn, *rev) {
                audit_line(row);
            }
        }
        let applied = applied.map(|(a, _)| a);
        match &applied {
            Err(ops::OpError::Unavailable(e)) => self.down(e),
            Ok(_) => {
                if let Err(Down::Retry(e) | Down::Fatal(e)) = self.reload() {
                    self.down(&e);
                }
            }
            Err(_) => {}
        }
        applied
    }
}

/// The change's audit row as one JSON line on stdout, beside the access lines (`"type":"audit"`
/// tells them apart).
fn audit_line(mut row: serde_json::Value) {
    use std::io::Write;
    if let Some(o) = row.as_object_mut() {
        o.insert("type".into(), "audit".into());
    }
    let mut line = row.to_string().into_bytes();
    line.push(b'\n');
    let _ignored = std::io::stdout().lock().write_all(&line);
}
