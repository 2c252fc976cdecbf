//! Test harness: the real `llmedge` binary on ephemeral loopback ports, in front of a mock.

pub mod mock;
pub mod mock_files;
pub mod mock_messages;
pub mod postgres_server;
pub mod redis_server;
pub mod tls;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use mock::MockOpenAi;

pub const CLIENT_KEY: &str = "sk-client-acme-0123456789";
pub const LIMITED_KEY: &str = "sk-client-limited-987";
pub const POOL_KEY: &str = "sk-upstream-pool-secret-42";

/// A free loopback port, never handed out twice by this process. Pingora binds the address
/// itself, so the port is released just before the gateway starts.
pub fn reserve_port() -> u16 {
    install_crypto();
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// reqwest's TLS (enabled for the TLS tests) needs a process-wide rustls provider before any
/// client is built; every test reserves a port or starts a mock first, which call this.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A keep-alive HTTP/1.1 chat request, as raw bytes, with the standard client key.
pub fn raw_chat_request(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A raw TCP connection to the gateway's API listener.
pub async fn connect(gw: &TestGateway) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap()
}

/// The `server:` block and the standard client key (tenant acme, user alice), which every test
/// config starts with; the caller appends more keys, pools and routes.
pub fn server_and_client_key(port: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  threads: 2\nkeys:\n  - key: \"{CLIENT_KEY}\"\n    tenant: acme\n    user: alice\n"
    )
}

/// The standard test config: two keys, one pool on the mock (with an upstream key), routes.
pub fn config(upstream: &str, port: u16, admin: u16, extra_server: &str) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:{port}"
  admin_listen: "127.0.0.1:{admin}"
  threads: 2
{extra_server}
keys:
  - key: "{CLIENT_KEY}"
    tenant: acme
    user: alice
  - key: "sha256:{limited}"
    tenant: beta
    user: bob
    models: ["mock/echo", "mock/frag-*"]
pools:
  mock:
    backends: ["{upstream}"]
    api_key: "{POOL_KEY}"
    timeouts: {{connect_ms: 500, first_byte_ms: 1500}}
  dead:
    backends: ["http://127.0.0.1:{dead}"]
routes:
  - prefix: "mock/"
    pool: mock
    strip_prefix: true
  - prefix: "dead/"
    pool: dead
    strip_prefix: true
  - prefix: "gpt-"
    pool: mock
default_model: "mock/echo"
"#,
        limited = sha256_hex(LIMITED_KEY),
        dead = reserve_port(),
    )
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

pub struct TestGateway {
    pub port: u16,
    pub admin: u16,
    child: Child,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts the gateway in front of `mock` with the standard config.
    pub async fn start(mock: &MockOpenAi) -> Self {
        Self::start_with(|port, admin| config(&mock.url(), port, admin, "")).await
    }

    pub async fn start_with(yaml: impl FnOnce(u16, u16) -> String) -> Self {
        Self::start_args(yaml, &[]).await
    }

    /// [`TestGateway::start_with`] with extra command-line arguments (`--watch`).
    pub async fn start_args(yaml: impl FnOnce(u16, u16) -> String, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, yaml, args).await
    }

    /// Starts the gateway with its config, counter file and sockets in `dir`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        yaml: impl FnOnce(u16, u16) -> String,
        args: &[&str],
    ) -> Self {
        let (port, admin) = (reserve_port(), reserve_port());
        let path = dir.path().join("llmedge.yaml");
        std::fs::write(&path, yaml(port, admin)).unwrap();
        let path = path.to_str().unwrap();
        let mut all = vec!["--config", path];
        all.extend_from_slice(args);
        // the working directory holds the default counter file (state.path)
        let (child, logs) = spawn_bin_in(dir.path(), &all);
        let mut gw = Self {
            port,
            admin,
            child,
            logs,
            _dir: dir,
        };
        gw.wait_ready().await;
        gw
    }

    /// Both listeners answer: each Pingora service binds on its own thread, so the API listener
    /// being up says nothing about the admin one.
    /// The API listener is checked by connecting, as it may speak TLS or h2c only.
    async fn wait_ready(&mut self) {
        let admin = format!("http://127.0.0.1:{}/healthz", self.admin);
        let port = self.port;
        let logs = self.logs.clone();
        let both = async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "API listener never came up:\n{}",
                    logs.lock()
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            wait_http_ok(&admin, &logs).await;
        };
        tokio::select! {
            () = both => {}
            status = self.child.wait() => {
                panic!("gateway exited ({status:?}) before it was ready:\n{}", self.logs())
            }
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().clone()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls the admin metrics until the sample `needle` shows up (scrapes, checks and logging
    /// run apart from the response the client already has); fails the test after 10 s.
    pub async fn wait_metric(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics().await;
            // a needle with a value must be a whole sample line ("} 1" is not "} 12");
            // a needle ending in its labels matches that series whatever its value
            let found = m
                .lines()
                .any(|l| l == needle || (needle.ends_with('}') && l.starts_with(needle)));
            if found {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle} in\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The value of one series (`name{labels}`), once it exists.
    pub async fn metric_value(&self, series: &str) -> f64 {
        self.wait_metric(series).await;
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// Sends a chat request in the background (for requests the mock holds open).
    pub fn post_in_background(&self, body: &'static str) -> tokio::task::JoinHandle<()> {
        let url = self.url("/v1/chat/completions");
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .body(body)
                .send()
                .await;
        })
    }

    /// Waits until an access-log line containing `needle` has been written.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle}; logs:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the gateway to shut down gracefully (SIGTERM), as an orchestrator would.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }

    /// The config file the gateway was started with (tests rewrite it to reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("llmedge.yaml")
    }

    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Sends a signal (`HUP`, `TERM`, `QUIT`, ...) to the gateway process.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits for the process to exit; fails the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the gateway did not exit within {limit:?}:\n{}",
                self.logs()
            ),
        }
    }

    /// Kills the gateway and hands back its directory (config, store, counters), so a test can
    /// start another one on it.
    pub async fn stop_keep(mut self) -> (tempfile::TempDir, String) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        let logs = self.logs();
        (self._dir, logs)
    }

    pub async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.logs()
    }
}

/// Runs the `llmedge` binary with `args`; stdout and stderr are collected into one log.
pub fn spawn_bin(args: &[&str]) -> (Child, Arc<Mutex<String>>) {
    spawn_bin_in(&std::env::temp_dir(), args)
}

/// [`spawn_bin`] with `dir` as the working directory.
pub fn spawn_bin_in(dir: &std::path::Path, args: &[&str]) -> (Child, Arc<Mutex<String>>) {
    let mut child = Command::new(bin())
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(String::new()));
    collect(child.stdout.take().unwrap(), logs.clone());
    collect(child.stderr.take().unwrap(), logs.clone());
    (child, logs)
}

/// Polls `url` until it answers 200, failing the test (with `logs`) after 20 s.
pub async fn wait_http_ok(url: &str, logs: &Mutex<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not become ready; logs:\n{}",
            logs.lock()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until a spawned process's output (from [`spawn_bin`]) contains `needle`; fails the
/// test after 10 s saying `what` did not happen.
pub async fn wait_output(logs: &Mutex<String>, needle: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !logs.lock().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}:\n{}",
            logs.lock()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn collect<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R, into: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let mut s = into.lock();
            s.push_str(&l);
            s.push('\n');
        }
    });
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_llmedge")
}

/// An authenticated JSON POST through the gateway.
pub async fn post(gw: &TestGateway, path: &str, key: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

pub async fn error_json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.expect("error body is JSON");
    for field in ["message", "type", "param", "code"] {
        assert!(
            v["error"].get(field).is_some(),
            "error.{field} missing in {v}"
        );
    }
    (status, v)
}

pub fn openai_client(
    gw: &TestGateway,
    key: &str,
) -> async_openai::Client<async_openai::config::OpenAIConfig> {
    let cfg = async_openai::config::OpenAIConfig::new()
        .with_api_base(gw.url("/v1"))
        .with_api_key(key);
    async_openai::Client::with_config(cfg)
}

/// The venv `.ci/deps` made, with the official Python SDKs.
fn sdk_python() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let py = target.join("sdk-venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `bash .ci/deps`",
        py.display()
    );
    py
}

/// Runs `tests/sdk/<script>` with `args` and returns the JSON it printed.
pub async fn run_sdk(script: &str, args: &[&str]) -> serde_json::Value {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(sdk_python())
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}
