//! A `redis-server` of the test's own (Debian's package, installed by `.ci/deps`), on an
//! ephemeral loopback port with a password, so a test can kill and restart it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::reserve_port;

pub const PASSWORD: &str = "redis-secret-hunter2";

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
    /// TLS only (`--port 0 --tls-port`), with certificates for 127.0.0.1 from this test CA.
    tls: Option<super::tls::TestCerts>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_as(false).await
    }

    /// A one-node Redis Cluster serving every slot: a call whose keys span two slots fails
    /// with CROSSSLOT, as on a real cluster.
    pub async fn start_cluster() -> Self {
        Self::start_as(true).await
    }

    /// A server that speaks TLS only; [`RedisServer::ca`] holds the CA that signed its cert.
    pub async fn start_tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = super::tls::TestCerts::write(dir.path());
        let mut r = Self {
            port: reserve_port(),
            child: None,
            dir,
            cluster: false,
            tls: Some(certs),
        };
        r.spawn().await;
        r
    }

    pub fn ca(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|c| c.ca.as_path())
    }

    async fn start_as(cluster: bool) -> Self {
        let mut r = Self {
            port: reserve_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            cluster,
            tls: None,
        };
        r.spawn().await;
        if cluster {
            r.query(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !format!("{:?}", r.query(&["CLUSTER", "INFO"]).await).contains("cluster_state:ok")
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cluster never became ok"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        r
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let listen: Vec<&str> = match &self.tls {
            None => vec!["--port", &port],
            Some(c) => vec![
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                c.cert.to_str().unwrap(),
                "--tls-key-file",
                c.key.to_str().unwrap(),
                "--tls-ca-cert-file",
                c.ca.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
            ],
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(&listen)
            .args([
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(if self.cluster {
                vec!["--cluster-enabled", "yes"]
            } else {
                vec![]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed for these tests (bash .ci/deps installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.query(&["PING"]).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://:<password>@127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://:{PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: no goodbye to connected clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: nothing was saved).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// One command on a fresh connection.
    pub async fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = match &self.tls {
            None => redis::Client::open(self.url())?,
            Some(c) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&c.ca).unwrap()),
                },
            )?,
        };
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await
    }

    /// The sum of a spend hash's `d<day>` fields, in micro-dollars.
    pub async fn day_spend(&self, key: &str) -> i64 {
        let Ok(redis::Value::Array(v)) = self.query(&["HGETALL", key]).await else {
            return 0;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        v.chunks(2)
            .filter(|kv| text(&kv[0]).starts_with('d'))
            .map(|kv| text(&kv[1]).parse::<i64>().unwrap_or(0))
            .sum()
    }
}
