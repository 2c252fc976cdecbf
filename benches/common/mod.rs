//! Helpers shared by the end-to-end benches: child processes, ports, machine facts, and the
//! sections they write into benches/RESULTS.md.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The runtime of a bench run with `cargo bench --bench <name>`, crypto installed; `None`
/// when `cargo test --benches` lists or runs the binary without `--bench` (nothing to do).
/// `workers` pins the runtime's threads (the default is one per core).
pub fn bench_runtime(name: &str, workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    if std::env::args().any(|a| a == "--list") {
        return None;
    }
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("{name} bench: run it with `cargo bench --bench {name}`");
        return None;
    }
    install_crypto();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    let rt = b
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    Some(rt)
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// reqwest is built with TLS for the integration tests, which needs a process-wide rustls
/// provider before any client exists; the benches speak plain HTTP but must install it too.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[expect(
    clippy::exit,
    reason = "a bench binary, not the library: it ends itself on a setup failure"
)]
pub fn fail(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

pub fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

pub fn spawn(cmd: &str, args: &[&str]) -> Proc {
    spawn_in(&std::env::current_dir().unwrap_or_default(), cmd, args)
}

/// [`spawn`] with `dir` as the working directory (where a gateway keeps its store).
pub fn spawn_in(dir: &std::path::Path, cmd: &str, args: &[&str]) -> Proc {
    launch(dir, cmd, args, Stdio::null())
}

/// [`spawn_in`], keeping the process's output in `output.log` in `dir` when
/// `LLMEDGE_BENCH_LOGS` is set (to study a run's decisions from the gateway's access lines).
#[allow(dead_code, reason = "only the benches that study decisions keep logs")]
pub fn spawn_logged(dir: &std::path::Path, cmd: &str, args: &[&str]) -> Proc {
    let out = std::env::var_os("LLMEDGE_BENCH_LOGS")
        .and_then(|_| std::fs::File::create(dir.join("output.log")).ok())
        .map_or_else(Stdio::null, Stdio::from);
    launch(dir, cmd, args, out)
}

fn launch(dir: &std::path::Path, cmd: &str, args: &[&str], out: Stdio) -> Proc {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .map(Proc)
        .unwrap_or_else(|e| fail(&format!("cannot start {cmd}: {e}")))
}

/// Polls `url` until it answers below 500.
pub async fn wait_ok(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().as_u16() < 500)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fail(&format!("{url} never answered"));
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// "Machine: N cores, CPU model. Commit: abc. Date: YYYY-MM-DD."
pub fn provenance() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "Machine: {cores} cores, {cpu}. Commit: {}. Date: {}.",
        output("git", &["rev-parse", "--short", "HEAD"]),
        output("date", &["-u", "+%Y-%m-%d"])
    )
}

/// Replaces the `<!-- tag:begin -->` .. `<!-- tag:end -->` section of benches/RESULTS.md.
pub fn write_section(tag: &str, body: &str) {
    let (begin, end) = (
        format!("<!-- {tag}:begin -->"),
        format!("<!-- {tag}:end -->"),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/RESULTS.md");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmark results\n".into());
    let section = format!("{begin}\n{body}{end}\n");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{section}{}",
            &old[..a],
            old[b + end.len()..].trim_start_matches('\n')
        ),
        _ => format!("{old}\n{section}"),
    };
    if let Err(e) = std::fs::write(path, new) {
        fail(&format!("cannot write {path}: {e}"));
    }
}
