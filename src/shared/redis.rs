//! [`CounterServer`] on Redis or Valkey: one multiplexed connection per process (commands from
//! every request pipelined on it), reconnected by `redis`'s connection manager; the library of
//! functions is loaded on connect and again if the server lost it (a restart without
//! persistence, a `FUNCTION FLUSH`).

use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::wire;
use super::{CounterServer, Lane};
use crate::config::Secret;

pub struct RedisServer(std::sync::Arc<Inner>);

struct Inner {
    client: redis::Client,
    /// One connection per [`Lane`]: the request path's is made from a request, so its driver
    /// runs on the proxy's own runtime and a round trip does not hop to another thread pool.
    conns: [ArcSwapOption<ConnectionManager>; 2],
    connecting: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
}

impl RedisServer {
    /// A server for `url`; nothing connects until the first ping. The error never holds the URL.
    pub fn new(
        url: &Secret,
        ca_pem: Option<&[u8]>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let client = match ca_pem {
            None => redis::Client::open(url.expose()),
            Some(pem) => redis::Client::build_with_tls(
                url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        }
        .map_err(|e| format!("state.redis.url: {}", e.category()))?;
        Ok(Self(std::sync::Arc::new(Inner {
            client,
            conns: [ArcSwapOption::empty(), ArcSwapOption::empty()],
            connecting: tokio::sync::Mutex::new(()),
            connect_timeout,
        })))
    }

    /// The connection of `lane`. A missing one is made by a task of its own (on the caller's
    /// runtime), so a request that stops waiting at `timeout_ms` does not abort the connect:
    /// the next request finds it made.
    async fn connection(&self, lane: Lane) -> Result<ConnectionManager, String> {
        if let Some(c) = self.0.conns[lane as usize].load_full() {
            return Ok((*c).clone());
        }
        let inner = self.0.clone();
        tokio::spawn(async move { inner.connect(lane).await })
            .await
            .map_err(|e| format!("connect task: {e}"))?
    }
}

impl Inner {
    /// Makes the connection of `lane`, once: concurrent callers wait for the first.
    async fn connect(&self, lane: Lane) -> Result<ConnectionManager, String> {
        let slot = &self.conns[lane as usize];
        let _one = self.connecting.lock().await;
        if let Some(c) = slot.load_full() {
            return Ok((*c).clone());
        }
        // no Nagle: a request waits on every round trip; keepalive finds a silently dead peer
        let tcp = redis::io::tcp::TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(
                redis::io::tcp::socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(10))
                    .with_interval(Duration::from_secs(5)),
            );
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_number_of_retries(0)
            .set_tcp_settings(tcp);
        let c = ConnectionManager::new_with_config(self.client.clone(), cfg)
            .await
            .map_err(|e| describe(&e))?;
        slot.store(Some(std::sync::Arc::new(c.clone())));
        Ok(c)
    }
}

impl RedisServer {
    async fn load_library(&self, c: &mut ConnectionManager) -> Result<(), String> {
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(wire::LIBRARY)
            .query_async::<String>(c)
            .await
            .map(drop)
            .map_err(|e| describe(&e))
    }
}

/// A redis error in one line, without anything from the URL.
fn describe(e: &redis::RedisError) -> String {
    let mut s = e.to_string();
    s.truncate(200);
    s
}

fn ints(v: redis::Value) -> Result<Vec<i64>, String> {
    match v {
        redis::Value::Int(n) => Ok(vec![n]),
        redis::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                redis::Value::Int(n) => Ok(n),
                other => Err(format!("unexpected reply item {other:?}")),
            })
            .collect(),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

#[async_trait]
impl CounterServer for RedisServer {
    async fn call(
        &self,
        lane: Lane,
        function: &'static str,
        keys: &[String],
        arg: &str,
    ) -> Result<Vec<i64>, String> {
        let mut c = self.connection(lane).await?;
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(keys.len()).arg(keys).arg(arg);
        match cmd.query_async::<redis::Value>(&mut c).await {
            Ok(v) => ints(v),
            Err(e) if e.to_string().contains("Function not found") => {
                self.load_library(&mut c).await?;
                ints(cmd.query_async(&mut c).await.map_err(|e| describe(&e))?)
            }
            Err(e) => Err(describe(&e)),
        }
    }

    async fn ping(&self) -> Result<(), String> {
        let mut c = self.connection(Lane::Upkeep).await?;
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(|e| describe(&e))?;
        self.load_library(&mut c).await
    }
}
