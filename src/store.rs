//! The control plane's store: one thread that owns the database connection (SQLite by default,
//! Postgres for a fleet), migrates it at start, applies the admin API's writes, and polls the
//! revision so changes made through any gateway reach this one within `store.poll_ms`. The
//! request path never waits on it: it only publishes new [`Records`] to the live state.

pub mod cache;
pub mod ledger;
pub mod ops;
pub mod postgres;
pub mod reports;
pub mod schema;
pub mod sql;
pub mod sqlite;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::config::StoreConfig;
use crate::control::Records;
use crate::metrics::StoreMetrics;
pub use ops::{Applied, OpError, Write};

/// Where new records go: the live state rebuilds its snapshot from them.
pub type Sink = Box<dyn Fn(Arc<Records>) + Send>;

/// A new connection to `cfg`'s database (not yet migrated).
pub fn open(cfg: &StoreConfig) -> Result<Box<dyn sql::Sql>, sql::SqlError> {
    Ok(match &cfg.url {
        crate::config::StoreUrl::Sqlite(path) => Box::new(sqlite::Sqlite::open(path)?),
        crate::config::StoreUrl::Postgres(url) => Box::new(postgres::Postgres::connect(
            url.expose(),
            cfg.ca_pem.as_deref(),
        )?),
    })
}

/// A read run on the store thread's connection.
pub type Reader = dyn FnOnce(&mut dyn sql::Sql) -> Result<Value, OpError> + Send;

/// How long a start waits for the store thread's first answer (connect, migrate, load).
const OPEN_WAIT: Duration = Duration::from_secs(30);

enum Job {
    Write {
        actor: String,
        write: Box<Write>,
        reply: oneshot::Sender<Result<Applied, OpError>>,
    },
    /// A read on the store's connection (audit pages, usage reports).
    Read {
        read: Box<Reader>,
        reply: oneshot::Sender<Result<Value, OpError>>,
    },
    Attach(Sink),
}

/// The handle the gateway holds; dropping it ends the store thread.
pub struct Store {
    jobs: mpsc::Sender<Job>,
    up: Arc<AtomicBool>,
    backend: &'static str,
    endpoint: String,
}

impl Store {
    /// Starts the store thread and waits for its first load. A Postgres that cannot be reached
    /// is not fatal: the cached records (or none) serve until it answers. A SQLite file that
    /// cannot be opened, or a schema newer than this binary, is.
    pub fn open(cfg: &StoreConfig, metrics: StoreMetrics) -> Result<(Store, Arc<Records>), String> {
        let (jobs, rx) = mpsc::channel();
        let (first_tx, first_rx) = mpsc::channel();
        let up = Arc::new(AtomicBool::new(false));
        let w = worker::Worker::new(cfg.clone(), up.clone(), metrics);
        std::thread::Builder::new()
            .name("llmedge-store".into())
            .spawn(move || w.run(rx, first_tx))
            .map_err(|e| format!("store: cannot start its thread: {e}"))?;
        let records = first_rx
            .recv_timeout(OPEN_WAIT)
            .map_err(|_| "store: no answer from the store thread".to_string())??;
        Ok((
            Store {
                jobs,
                up,
                backend: cfg.backend(),
                endpoint: cfg.endpoint.clone(),
            },
            records,
        ))
    }

    /// From now on every new revision goes to `sink` (the latest one at once).
    pub fn attach(&self, sink: Sink) {
        let _gone = self.jobs.send(Job::Attach(sink));
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// `host:port/db` or the SQLite file: never a password.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Applies `write`; once it returns, this gateway runs on the records it made.
    pub async fn write(&self, actor: &str, write: Write) -> Result<Applied, OpError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Write {
            actor: actor.to_string(),
            write: Box::new(write),
            reply,
        };
        self.jobs
            .send(job)
            .map_err(|_| OpError::Unavailable("the store thread has stopped".into()))?;
        rx.await
            .map_err(|_| OpError::Unavailable("the store thread has stopped".into()))?
    }

    /// Audit rows, newest first, below revision `before`.
    pub async fn audit(&self, before: Option<i64>, limit: u32) -> Result<Vec<Value>, OpError> {
        let v = self
            .read(move |sql| ops::audit(sql, before, limit).map(Value::Array))
            .await?;
        Ok(match v {
            Value::Array(rows) => rows,
            _ => Vec::new(),
        })
    }

    /// Runs `read` on the store's connection (one at a time with its writes).
    pub async fn read(
        &self,
        read: impl FnOnce(&mut dyn sql::Sql) -> Result<Value, OpError> + Send + 'static,
    ) -> Result<Value, OpError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Read {
                read: Box::new(read),
                reply,
            })
            .map_err(|_| OpError::Unavailable("the store thread has stopped".into()))?;
        rx.await
            .map_err(|_| OpError::Unavailable("the store thread has stopped".into()))?
    }
}

#[cfg(test)]
mod tests;
