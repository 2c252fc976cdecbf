//! A PostgreSQL server of the test's own (Debian's `postgresql`, installed by `.ci/deps`):
//! `initdb` and `pg_ctl` in a temporary directory, on an ephemeral loopback port with a
//! password, so a test can stop and restart it. As root (CI), the server runs as `postgres`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::reserve_port;

pub const PASSWORD: &str = "pg-secret-hunter2";

pub struct PostgresServer {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
    /// TLS only (`hostssl` in pg_hba.conf), with certificates for 127.0.0.1 from this test CA.
    tls: Option<super::tls::TestCerts>,
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `initdb`'s directory: on PATH, or where Debian keeps it.
fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            let real = std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(&p));
            return real.parent().unwrap().to_path_buf();
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is needed for these tests (bash .ci/deps installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Test certificates for the server, and a pg_hba.conf that refuses connections without TLS.
fn only_tls(dir: &Path, data: &Path) -> super::tls::TestCerts {
    let certs = super::tls::TestCerts::write(dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba = data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    if is_root() {
        for f in [&certs.cert, &certs.key, &certs.ca, &hba] {
            Command::new("chown")
                .arg("postgres")
                .arg(f)
                .status()
                .unwrap();
        }
    }
    certs
}

/// Runs a PostgreSQL tool, as `postgres` when the tests run as root (initdb refuses root).
fn run(tool: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()))
}

impl PostgresServer {
    pub async fn start() -> Self {
        Self::start_as(false).await
    }

    /// A server that takes TLS connections only; [`PostgresServer::ca`] signed its certificate.
    pub async fn start_tls() -> Self {
        Self::start_as(true).await
    }

    pub fn ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|c| c.ca.as_path())
    }

    async fn start_as(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
        }
        let bin = bin_dir();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            Command::new("chown")
                .arg("postgres")
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let data = dir.path().join("data");
        let out = run(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "llmedge",
                "--auth=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls = tls.then(|| only_tls(dir.path(), &data));
        let mut pg = Self {
            port: reserve_port(),
            dir,
            bin,
            running: false,
            tls,
        };
        pg.restart().await;
        pg
    }

    /// `postgres://llmedge:<password>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://llmedge:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if let Some(c) = &self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.cert.display(),
                c.key.display()
            ));
        }
        let out = run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server at once (in-flight transactions are lost, as in a crash).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.dir.path().join("data");
        let _ = run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        self.running = false;
    }

    /// Runs SQL as the superuser (over the tests' own client, on a thread of its own: the sync
    /// client brings its own runtime), returning each row's text.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        // over the Unix socket (trusted locally), so a TLS-only server answers too
        let url = format!(
            "host={} port={} user=llmedge password={PASSWORD} dbname=postgres",
            self.dir.path().display(),
            self.port
        );
        let sql = sql.to_string();
        std::thread::spawn(move || Self::query_now(&url, &sql))
            .join()
            .unwrap()
    }

    fn query_now(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.simple_query(sql)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    }
}
