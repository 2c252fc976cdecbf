//! The usage ledger: one row for every request that passed authentication, written off the
//! request path in batches through a bounded queue (`ledger/writer.rs`), with a daily rollup
//! kept in the same transaction. Recording never blocks or fails a request: a row that finds
//! the queue full is dropped, counted (`llmedge_ledger_dropped_total`) and logged.

pub mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::DAY_MS;
use crate::config::StoreConfig;
use crate::metrics::LedgerMetrics;

/// Rows waiting for the writer, at most; more are dropped (and counted).
pub const QUEUE_ROWS: usize = 100_000;

/// One request on the books. `cost_micros` is what the budget counters were charged, in
/// integer micro-USD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// `<gateway instance>-<sequence>`, given by the writer: unique, so a batch written twice
    /// adds nothing twice.
    pub id: String,
    pub request_id: String,
    pub ts_ms: u64,
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    pub key_id: Arc<str>,
    pub model: String,
    pub route: String,
    pub pool: String,
    pub backend: String,
    pub endpoint: &'static str,
    pub stream: bool,
    pub status: u16,
    pub error: Option<&'static str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: i64,
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
}

/// USD as the ledger's integer micro-USD (costs are already whole micro-dollars).
pub fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// One rollup row's identity: a UTC day, a tenant, a key and a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DayKey {
    pub day: u64,
    pub tenant: String,
    pub key_id: String,
    pub model: String,
}

/// What a rollup row adds up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: i64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cost_micros += o.cost_micros;
    }
}

/// The daily rollup of `rows`.
pub fn rollup<'a>(rows: impl Iterator<Item = &'a Entry>) -> BTreeMap<DayKey, Totals> {
    let mut out: BTreeMap<DayKey, Totals> = BTreeMap::new();
    for e in rows {
        let t = out
            .entry(DayKey {
                day: e.ts_ms / DAY_MS,
                tenant: e.tenant.to_string(),
                key_id: e.key_id.to_string(),
                model: e.model.clone(),
            })
            .or_default();
        t.add(&Totals {
            requests: 1,
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            cached_tokens: e.cached_tokens,
            cost_micros: e.cost_micros,
        });
    }
    out
}

/// Counts `n` lost rows and logs it, at most once per 10 s per `last_log` (ms of the last).
pub(crate) fn count_dropped(metrics: &LedgerMetrics, last_log: &AtomicU64, n: u64, why: &str) {
    metrics.dropped.inc_by(n);
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let last = last_log.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 10_000
        && last_log
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(
            total = metrics.dropped.get(),
            reason = why,
            "ledger rows dropped (llmedge_ledger_dropped_total)"
        );
    }
}

pub(crate) enum Msg {
    Row(Box<Entry>),
    /// Write everything queued, then answer.
    Flush(mpsc::Sender<bool>),
}

/// The handle the request path records through.
pub struct Ledger {
    tx: SyncSender<Msg>,
    metrics: LedgerMetrics,
    /// When a drop was last logged (ms), so a full queue logs once per 10 s, not per row.
    drop_logged: AtomicU64,
}

impl Ledger {
    /// Starts the writer thread on its own connection to `cfg`'s store (already migrated).
    /// `store` is the control plane's: an in-memory SQLite store is one database per
    /// connection, so its rows go through the store's own.
    pub fn start(
        cfg: &StoreConfig,
        retention_days: u64,
        metrics: LedgerMetrics,
        store: &Arc<crate::store::Store>,
    ) -> Result<Arc<Self>, String> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_ROWS);
        let memory = matches!(&cfg.url, crate::config::StoreUrl::Sqlite(p) if p == ":memory:");
        let via = memory.then(|| store.clone());
        let mut w = writer::Writer::new(cfg.clone(), retention_days, metrics.clone(), via);
        // row ids are `<instance>-<seq>` and the store keeps the first row of an id: the
        // instance carries its start time, so a restart can never reuse an earlier one's ids
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        w.instance =
            crate::control::secret::time_id("", now).map_err(|e| format!("ledger: {e}"))?;
        std::thread::Builder::new()
            .name("llmedge-ledger".into())
            .spawn(move || w.run(rx))
            .map_err(|e| format!("ledger: cannot start its thread: {e}"))?;
        Ok(Arc::new(Self {
            tx,
            metrics,
            drop_logged: AtomicU64::new(0),
        }))
    }

    /// Queues `e` for writing; never blocks.
    pub fn record(&self, e: Entry) {
        let why = match self.tx.try_send(Msg::Row(Box::new(e))) {
            Ok(()) => return self.metrics.queued.inc(),
            Err(TrySendError::Full(_)) => "the ledger queue is full",
            Err(TrySendError::Disconnected(_)) => "the ledger writer has stopped",
        };
        count_dropped(&self.metrics, &self.drop_logged, 1, why);
    }

    /// Writes every row queued so far; false if that did not finish within `within` (the
    /// rows stay queued, and are counted as dropped only if the process then exits).
    pub fn flush(&self, within: Duration) -> bool {
        let (reply, done) = mpsc::channel();
        if self.tx.send(Msg::Flush(reply)).is_err() {
            return false;
        }
        done.recv_timeout(within).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
