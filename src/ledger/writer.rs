//! The ledger's thread: pulls rows off the queue, writes them a few hundred at a time (or every
//! 100 ms), keeps them while the store is away and writes them when it is back, prunes old rows.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::{Entry, Msg, QUEUE_ROWS};
use crate::clock::{Clock, SystemClock, DAY_MS};
use crate::config::StoreConfig;
use crate::metrics::LedgerMetrics;
use crate::store::sql::Sql;

/// Rows per transaction.
pub const BATCH_ROWS: usize = 200;
/// The longest a row waits for its batch to fill. Small, frequent batches keep the writer's
/// bursts of CPU short beside the request path.
pub const BATCH_WAIT: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long a flush (SIGTERM) keeps trying a store that is away.
const FLUSH_TRIES: Duration = Duration::from_secs(5);

pub struct Writer {
    cfg: StoreConfig,
    retention_days: u64,
    metrics: LedgerMetrics,
    conn: Option<Box<dyn Sql>>,
    pending: VecDeque<Entry>,
    /// When the oldest pending row arrived.
    since: Option<Instant>,
    retry_at: Instant,
    backoff: Duration,
    last_prune: Option<Instant>,
    /// Logged once per outage.
    down_logged: bool,
    /// This gateway's part of every row id (random), and the rows numbered so far.
    pub(super) instance: String,
    seq: u64,
    /// When a drop was last logged (ms).
    drop_logged: std::sync::atomic::AtomicU64,
    /// An in-memory store: written through the store thread's connection.
    via: Option<std::sync::Arc<crate::store::Store>>,
}

impl Writer {
    pub fn new(
        cfg: StoreConfig,
        retention_days: u64,
        metrics: LedgerMetrics,
        via: Option<std::sync::Arc<crate::store::Store>>,
    ) -> Self {
        Self {
            cfg,
            retention_days,
            metrics,
            conn: None,
            pending: VecDeque::new(),
            since: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(250),
            last_prune: None,
            down_logged: false,
            instance: String::new(),
            seq: 0,
            drop_logged: std::sync::atomic::AtomicU64::new(0),
            via,
        }
    }

    /// Wakes on a timer, never per row: a receiver blocked on the queue would be woken by
    /// every request's send (a futex wake and a context switch on the request path). Each
    /// tick takes everything queued, then writes what is due.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            std::thread::sleep(self.wait());
            loop {
                match rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            if self.due() {
                self.write_pending();
            }
            self.prune_if_due();
        }
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Row(e) => self.push(*e),
            Msg::Flush(reply) => {
                let _gone = reply.send(self.flush());
            }
        }
    }

    fn push(&mut self, mut e: Entry) {
        if self.pending.len() >= QUEUE_ROWS {
            // the store has been away long enough to fill the buffer: this row is lost
            self.metrics.queued.dec();
            super::count_dropped(
                &self.metrics,
                &self.drop_logged,
                1,
                "the store is away and the buffer is full",
            );
            return;
        }
        if e.id.is_empty() {
            e.id = format!("{}-{}", self.instance, self.seq);
            self.seq += 1;
        }
        self.since.get_or_insert_with(Instant::now);
        self.pending.push_back(e);
    }

    /// Until the pending batch is due, but never past one batch wait: a flush (SIGTERM) is
    /// seen within 100 ms even while a retry backs off for seconds (`due` honours the backoff).
    fn wait(&self) -> Duration {
        let Some(since) = self.since else {
            return BATCH_WAIT;
        };
        (since + BATCH_WAIT)
            .max(self.retry_at)
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), BATCH_WAIT)
    }

    fn due(&self) -> bool {
        let full = self.pending.len() >= BATCH_ROWS;
        let old = self.since.is_some_and(|s| s.elapsed() >= BATCH_WAIT);
        (full || old) && Instant::now() >= self.retry_at
    }

    fn connect(&mut self) -> Result<&mut Box<dyn Sql>, String> {
        if self.conn.is_none() {
            self.conn = Some(crate::store::open(&self.cfg).map_err(|e| e.to_string())?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "not connected".to_string())
    }

    /// Runs `f` on this writer's connection, or for an in-memory store (one database per
    /// connection) on the store thread's.
    fn with_sql(
        &mut self,
        f: impl FnOnce(&mut dyn Sql) -> Result<u64, crate::store::sql::SqlError> + Send + 'static,
    ) -> Result<u64, String> {
        if let Some(store) = &self.via {
            let read = store.read(move |sql| {
                f(sql)
                    .map(serde_json::Value::from)
                    .map_err(crate::store::OpError::from)
            });
            return futures::executor::block_on(read)
                .map(|v| v.as_u64().unwrap_or(0))
                .map_err(|e| format!("{e:?}"));
        }
        let c = self.connect()?;
        f(&mut **c).map_err(|e| e.to_string())
    }

    /// Writes pending rows, a batch per transaction, until none are left or the store fails.
    fn write_pending(&mut self) -> bool {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH_ROWS);
            let batch: Vec<Entry> = self.pending.iter().take(n).cloned().collect();
            let written = self.with_sql(move |sql| {
                crate::store::ledger::write_rows(sql, &batch).map(|n| n as u64)
            });
            match written {
                Ok(_) => {
                    self.pending.drain(..n);
                    self.metrics.queued.sub(n as i64);
                    self.metrics.written.inc_by(n as u64);
                    self.backoff = Duration::from_millis(250);
                    if self.down_logged {
                        self.down_logged = false;
                        tracing::info!(store = %self.cfg.endpoint, "ledger writing again");
                    }
                }
                Err(e) => {
                    self.failed(&e);
                    return false;
                }
            }
        }
        self.since = None;
        true
    }

    fn failed(&mut self, e: &str) {
        self.conn = None;
        if !self.down_logged {
            self.down_logged = true;
            tracing::warn!(store = %self.cfg.endpoint, error = %e, pending = self.pending.len(),
                "ledger cannot write: rows wait in memory until the store is back");
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Everything pending, now; tries a store that is away for a few seconds.
    fn flush(&mut self) -> bool {
        let until = Instant::now() + FLUSH_TRIES;
        loop {
            self.retry_at = Instant::now();
            if self.write_pending() {
                return true;
            }
            if Instant::now() >= until {
                // the process is about to exit: what is still pending is lost, and counted
                let lost = self.pending.len();
                tracing::error!(
                    rows = lost,
                    "ledger flush gave up: the store is unreachable"
                );
                self.metrics.queued.sub(lost as i64);
                let why = "the store was away at exit";
                super::count_dropped(&self.metrics, &self.drop_logged, lost as u64, why);
                self.pending.clear();
                self.since = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn prune_if_due(&mut self) {
        if self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let before = SystemClock
            .now_ms()
            .saturating_sub(self.retention_days.saturating_mul(DAY_MS));
        let pruned = self.with_sql(move |sql| crate::store::ledger::prune(sql, before));
        match pruned {
            Ok(n) if n > 0 => tracing::info!(
                rows = n,
                retention_days = self.retention_days,
                "ledger pruned"
            ),
            Ok(_) => {}
            Err(e) => self.failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_and_counts_what_overflows() {
        let cfg = crate::config::Config::from_yaml("store: {url: 'sqlite::memory:'}", &|_| None)
            .unwrap()
            .store;
        let metrics = crate::metrics::Metrics::new(8).unwrap().ledger.clone();
        let (store, _) =
            crate::store::Store::open(&cfg, crate::metrics::Metrics::new(8).unwrap().store.clone())
                .unwrap();
        let mut w = Writer::new(cfg, 90, metrics.clone(), Some(std::sync::Arc::new(store)));
        for i in 0..QUEUE_ROWS + 5 {
            metrics.queued.inc();
            w.push(Entry {
                id: format!("x-{i}"),
                ..Default::default()
            });
        }
        assert_eq!(w.pending.len(), QUEUE_ROWS);
        assert_eq!(metrics.dropped.get(), 5, "every dropped row is counted");
        assert_eq!(metrics.queued.get(), QUEUE_ROWS as i64);
        assert!(w.write_pending(), "an in-memory store takes them all");
        assert_eq!((w.pending.len(), metrics.queued.get()), (0, 0));
        assert_eq!(metrics.written.get(), QUEUE_ROWS as u64);
    }
}
