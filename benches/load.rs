//! End-to-end load harness (issue 5): the same workloads against the mock upstream directly,
//! through nginx (plain `proxy_pass`, buffering off), through a bare Pingora proxy with no
//! filters (the framework's floor) and through llmedge (auth, routing, SSE rewrite, usage
//! capture, limits, pricing and metrics all on), interleaved in one run.
//! Run: `cargo bench --bench load` (installs nginx with apt-get when missing; writes a section of
//! benches/RESULTS.md). Measures client-side latency, TTFT, inter-chunk gaps and event counts,
//! and the proxy process tree's CPU seconds (/proc) and peak RSS.

#![expect(clippy::print_stderr, reason = "a benchmark reports to the terminal")]

mod common;
mod traffic;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;

use common::{fail, port, spawn, wait_ok, Proc};

const KEY: &str = "sk-load";
const SMALL_BODY: &str = r#"{"model":"mock/llama3","max_tokens":16,"messages":[{"role":"user","content":"Say hello."}]}"#;

fn ensure_nginx() -> Option<String> {
    let find = || {
        ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| p.to_string())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("load bench: installing nginx with apt-get");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "nginx"])
        .status();
    find()
}

/// CPU seconds and RSS (bytes) of a process and its direct children (nginx workers).
fn proc_tree(pid: u32) -> (f64, u64) {
    let tick = 100.0; // USER_HZ on Linux
    let mut cpu = 0.0;
    let mut rss = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0.0, 0);
    };
    for e in entries.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        if p != pid && ppid != pid {
            continue;
        }
        let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        cpu += (ut + st) / tick;
        let pages: u64 = f.get(21).and_then(|v| v.parse().ok()).unwrap_or(0);
        rss += pages * 4096;
    }
    (cpu, rss)
}

/// Samples the RSS of a process tree until stopped; returns the peak.
struct RssWatch {
    base: u64,
    peak: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: Option<u32>) -> Self {
        let peak = Arc::new(Mutex::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            loop {
                let (_, rss) = proc_tree(pid);
                {
                    let mut g = p.lock();
                    *g = (*g).max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let base = pid.map_or(0, |p| proc_tree(p).1);
        Self { base, peak, task }
    }

    /// Peak RSS above what the process held when the watch started.
    fn stop_growth(self) -> u64 {
        let base = self.base;
        self.stop().saturating_sub(base)
    }

    fn stop(self) -> u64 {
        self.task.abort();
        *self.peak.lock()
    }
}

#[derive(Clone)]
struct Target {
    name: &'static str,
    base: String,
    pid: Option<u32>,
    model: &'static str,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn body_for(t: &Target, base: &str) -> String {
    base.replace("mock/llama3", t.model)
}

/// Open loop at `rate` for `secs` against `t` (see [`traffic::open_loop`]).
async fn open_loop(t: &Target, rate: u64, secs: u64) -> (Vec<f64>, usize) {
    let url = format!("{}/v1/chat/completions", t.base);
    traffic::open_loop(&url, KEY, &body_for(t, SMALL_BODY), rate, secs).await
}

/// `conns` closed-loop workers for `secs` against `t`: (requests, errors, seconds).
async fn closed_loop(t: &Target, conns: usize, secs: u64) -> (usize, usize, f64) {
    let url = format!("{}/v1/chat/completions", t.base);
    traffic::closed_loop(&url, KEY, &body_for(t, SMALL_BODY), conns, secs).await
}

struct StreamStats {
    ttft_ms: Vec<f64>,
    gaps_ms: Vec<f64>,
    events: Vec<usize>,
    errors: usize,
}

/// `n` concurrent streams of `tokens` tokens `delay_ms` apart.
async fn streams(t: &Target, n: usize, tokens: usize, delay_ms: u64) -> StreamStats {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n)
        .build()
        .unwrap_or_default();
    let url = format!("{}/v1/chat/completions", t.base);
    let body = body_for(
        t,
        r#"{"model":"mock/llama3","stream":true,"messages":[{"role":"user","content":"Stream please."}]}"#,
    );
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, u, b) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let r = c
                    .post(u)
                    .bearer_auth(KEY)
                    .header("x-mock-tokens", tokens.to_string())
                    .header("x-mock-delay-ms", delay_ms.to_string())
                    .body(b)
                    .send()
                    .await
                    .ok()?;
                let mut body = r.bytes_stream();
                let (mut first, mut last, mut gaps, mut text) =
                    (None, None::<Instant>, Vec::new(), Vec::new());
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.ok()?;
                    let now = Instant::now();
                    first.get_or_insert(now - start);
                    if let Some(l) = last {
                        gaps.push((now - l).as_secs_f64() * 1e3);
                    }
                    last = Some(now);
                    text.extend_from_slice(&chunk);
                }
                let events = String::from_utf8_lossy(&text).matches("data: ").count();
                Some((first?.as_secs_f64() * 1e3, gaps, events))
            })
        })
        .collect();
    let mut s = StreamStats {
        ttft_ms: Vec::new(),
        gaps_ms: Vec::new(),
        events: Vec::new(),
        errors: 0,
    };
    for task in tasks {
        match task.await.ok().flatten() {
            Some((ttft, gaps, events)) => {
                s.ttft_ms.push(ttft);
                s.gaps_ms.extend(gaps);
                s.events.push(events);
            }
            None => s.errors += 1,
        }
    }
    s
}

/// Sequential requests with a prompt of `size` bytes; returns latencies in ms.
async fn big_bodies(t: &Target, size: usize, count: usize) -> Vec<f64> {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", t.base);
    let body = body_for(
        t,
        &format!(
            r#"{{"model":"mock/llama3","max_tokens":4,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(size)
        ),
    );
    let mut v = Vec::new();
    for _ in 0..count {
        let start = Instant::now();
        let r = client
            .post(&url)
            .bearer_auth(KEY)
            .header("x-mock-delay-ms", "0")
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().is_success() && r.bytes().await.is_ok() {
                v.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    v
}

fn nginx_conf(dir: &std::path::Path, listen: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        "worker_processes 2;\nmaster_process on;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  client_max_body_size 64m;\n  client_body_buffer_size 8m;\n  upstream mock {{ server 127.0.0.1:{upstream}; keepalive 128; }}\n  server {{\n    listen 127.0.0.1:{listen};\n    location / {{\n      proxy_pass http://mock;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n      proxy_request_buffering off;\n    }}\n  }}\n}}\n"
    )
}

fn llmedge_conf(listen: u16, admin: u16, upstream: u16, state: &std::path::Path) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  threads: 2\nkeys:\n  - key: \"{KEY}\"\n    tenant: bench\n    user: load\n    limits: {{rpm: 100000000, tpm: 100000000000, concurrency: 100000}}\n    budget: {{usd_per_day: 100000000}}\ntenants:\n  bench:\n    limits: {{rpm: 100000000, tpm: 100000000000}}\npricing:\n  \"mock/*\": {{input: 0.5, output: 1.5}}\nstate:\n  path: \"{}\"\npools:\n  mock:\n    backends: [\"http://127.0.0.1:{upstream}\"]\nroutes:\n  - prefix: \"mock/\"\n    pool: mock\n    strip_prefix: true\n",
        state.display()
    )
}

fn cpu(t: &Target) -> f64 {
    t.pid.map_or(0.0, |p| proc_tree(p).0)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The framework floor: a Pingora 0.9.1 proxy with no filters in front of one upstream, run in
/// its own process (this binary, re-executed with `--bare-proxy LISTEN UPSTREAM`).
struct Bare(String);

#[async_trait::async_trait]
impl pingora::proxy::ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _session: &mut pingora::proxy::Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<pingora::upstreams::peer::HttpPeer>> {
        let peer = pingora::upstreams::peer::HttpPeer::new(self.0.as_str(), false, String::new());
        Ok(Box::new(peer))
    }
}

fn bare_proxy(listen: &str, upstream: &str) -> ! {
    let mut server = llmedge::new_server(2);
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Bare(upstream.to_string()));
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, listen, upstream] = args.as_slice() {
        if flag == "--bare-proxy" {
            bare_proxy(listen, upstream);
        }
    }
    let Some(rt) = common::bench_runtime("load", Some(2)) else {
        return;
    };
    rt.block_on(run());
}

async fn run() {
    let bin = env!("CARGO_BIN_EXE_llmedge");
    let dir = std::env::temp_dir().join(format!("llmedge-load-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let (mock_port, ng_port, gw_port, admin) = (port(), port(), port(), port());
    let mock_listen = format!("127.0.0.1:{mock_port}");
    let _mock = start_mock(bin, &mock_listen).await;
    let nginx = start_nginx(&dir, ng_port, mock_port).await;
    let gw_conf = dir.join("llmedge.yaml");
    let _ = std::fs::write(
        &gw_conf,
        llmedge_conf(gw_port, admin, mock_port, &dir.join("state.json")),
    );
    let gw = spawn(bin, &["--config", gw_conf.to_str().unwrap_or_default()]);
    wait_ok(&format!("http://127.0.0.1:{gw_port}/healthz")).await;
    let (bare, bare_port) = start_bare(&mock_listen).await;
    let mut targets = vec![target(
        "direct",
        format!("http://{mock_listen}"),
        None,
        "llama3",
    )];
    if let Some(n) = &nginx {
        let base = format!("http://127.0.0.1:{ng_port}");
        targets.push(target("nginx", base, Some(n.0.id()), "llama3"));
    }
    let base = format!("http://127.0.0.1:{bare_port}");
    targets.push(target("pingora", base, Some(bare.0.id()), "llama3"));
    let base = format!("http://127.0.0.1:{gw_port}");
    targets.push(target("llmedge", base, Some(gw.0.id()), "mock/llama3"));
    // warm-up: connections and caches
    for t in &targets {
        let _ = open_loop(t, 200, 1).await;
    }
    let mut report = Report::default();
    measure_open(&targets, &mut report).await;
    measure_closed(&targets, &mut report).await;
    measure_streams(&targets, &mut report).await;
    measure_bodies(&targets, &mut report).await;
    let text = report.render();
    eprintln!("{text}");
    write_section(&text);
    drop(gw);
    drop(bare);
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

fn target(name: &'static str, base: String, pid: Option<u32>, model: &'static str) -> Target {
    Target {
        name,
        base,
        pid,
        model,
    }
}

/// The mock upstream every target forwards to: 16 tokens per completion, no delay.
async fn start_mock(bin: &str, listen: &str) -> Proc {
    let args = [
        "mock",
        "--listen",
        listen,
        "--threads",
        "2",
        "--tokens",
        "16",
    ];
    let more = ["--delay-ms", "0", "--models", "llama3"];
    let args: Vec<&str> = args.iter().chain(more.iter()).copied().collect();
    let p = spawn(bin, &args);
    wait_ok(&format!("http://{listen}/health")).await;
    p
}

/// nginx in front of the mock, when it can be installed.
async fn start_nginx(dir: &std::path::Path, port: u16, mock_port: u16) -> Option<Proc> {
    let b = ensure_nginx()?;
    let conf = dir.join("nginx.conf");
    let _ = std::fs::write(&conf, nginx_conf(dir, port, mock_port));
    let dir = dir.to_str().unwrap_or_default();
    let p = spawn(&b, &["-c", conf.to_str().unwrap_or_default(), "-p", dir]);
    wait_ok(&format!("http://127.0.0.1:{port}/health")).await;
    Some(p)
}

/// A bare Pingora proxy (this bench binary, re-executed): the framework's floor.
async fn start_bare(mock_listen: &str) -> (Proc, u16) {
    let bare_port = port();
    let me = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
    let listen = format!("127.0.0.1:{bare_port}");
    let p = spawn(
        me.to_str().unwrap_or_default(),
        &["--bare-proxy", &listen, mock_listen],
    );
    wait_ok(&format!("http://127.0.0.1:{bare_port}/health")).await;
    (p, bare_port)
}

/// Open-loop latency at fixed request rates.
async fn measure_open(targets: &[Target], report: &mut Report) {
    for rate in [500u64, 2000] {
        for t in targets {
            let (mut lat, err) = open_loop(t, rate, 4).await;
            let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            eprintln!(
                "open {rate}/s {}: p50 {p50:.3} ms p99 {p99:.3} ms errors {err}",
                t.name
            );
            report.open.push((rate, t.name, p50, p99, err));
        }
    }
}

/// Closed-loop throughput and CPU per request with 64 connections.
async fn measure_closed(targets: &[Target], report: &mut Report) {
    for t in targets {
        let c0 = cpu(t);
        let (ok, err, secs) = closed_loop(t, 64, 4).await;
        let per_req_us = if t.pid.is_some() {
            (cpu(t) - c0) / ok.max(1) as f64 * 1e6
        } else {
            f64::NAN
        };
        eprintln!(
            "closed 64 {}: {:.0} req/s, {per_req_us:.1} us CPU/req, errors {err}",
            t.name,
            ok as f64 / secs
        );
        report
            .closed
            .push((t.name, ok as f64 / secs, per_req_us, err));
    }
}

/// 1,000 concurrent streams: TTFT, chunk gaps, events and peak RSS.
async fn measure_streams(targets: &[Target], report: &mut Report) {
    for t in targets {
        let watch = RssWatch::start(t.pid);
        let s = streams(t, 1000, 200, 10).await;
        let rss = watch.stop();
        let (mut ttft, mut gaps) = (s.ttft_ms.clone(), s.gaps_ms.clone());
        let (t50, t99, g50, g99) = (
            pct(&mut ttft, 0.5),
            pct(&mut ttft, 0.99),
            pct(&mut gaps, 0.5),
            pct(&mut gaps, 0.99),
        );
        let min_ev = s.events.iter().min().copied().unwrap_or(0);
        let max_ev = s.events.iter().max().copied().unwrap_or(0);
        eprintln!("streams {}: ttft p50 {t50:.2} p99 {t99:.2} ms, gap p50 {g50:.2} p99 {g99:.2} ms, events {min_ev}..{max_ev}, errors {}, rss {:.1} MB", t.name, s.errors, mb(rss));
        report
            .streams
            .push((t.name, t50, t99, g50, g99, min_ev, max_ev, s.errors, rss));
    }
}

/// Large prompts: latency and RSS growth.
async fn measure_bodies(targets: &[Target], report: &mut Report) {
    for size in [256 * 1024, 4 * 1024 * 1024] {
        for t in targets {
            let watch = RssWatch::start(t.pid);
            let mut lat = big_bodies(t, size, 20).await;
            let rss = watch.stop_growth();
            let p50 = pct(&mut lat, 0.5);
            eprintln!(
                "body {} KiB {}: p50 {p50:.2} ms, rss growth {:.1} MB",
                size / 1024,
                t.name,
                mb(rss)
            );
            report.bodies.push((size, t.name, p50, rss, lat.len()));
        }
    }
}

/// target, TTFT p50/p99, gap p50/p99 (ms), min/max events per stream, errors, peak RSS.
type StreamRow = (&'static str, f64, f64, f64, f64, usize, usize, usize, u64);

#[derive(Default)]
struct Report {
    open: Vec<(u64, &'static str, f64, f64, usize)>,
    closed: Vec<(&'static str, f64, f64, usize)>,
    streams: Vec<StreamRow>,
    bodies: Vec<(usize, &'static str, f64, u64, usize)>,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

impl Report {
    fn get_open(&self, rate: u64, name: &str) -> Option<(f64, f64)> {
        self.open
            .iter()
            .find(|o| o.0 == rate && o.1 == name)
            .map(|o| (o.2, o.3))
    }

    fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("### 1. Non-streaming chat, small body, fixed rate (latency from the scheduled send)\n\n| rate | target | p50 | p99 | errors | added p50 vs direct | added p99 vs direct |\n|---|---|---|---|---|---|---|\n");
        for &(rate, name, p50, p99, err) in &self.open {
            let (d50, d99) = self
                .get_open(rate, "direct")
                .unwrap_or((f64::NAN, f64::NAN));
            s.push_str(&format!("| {rate}/s | {name} | {p50:.3} ms | {p99:.3} ms | {err} | {:+.3} ms | {:+.3} ms |\n", p50 - d50, p99 - d99));
        }
        s.push_str("\n### 2. Non-streaming, max throughput, 64 connections\n\n| target | req/s | proxy CPU per request | errors |\n|---|---|---|---|\n");
        for &(name, rps, us, err) in &self.closed {
            let cpu = if us.is_nan() {
                "n/a".to_string()
            } else {
                format!("{us:.1} µs")
            };
            s.push_str(&format!("| {name} | {rps:.0} | {cpu} | {err} |\n"));
        }
        s.push_str("\n### 3. Streaming: 1,000 concurrent streams, 200 tokens 10 ms apart\n\n| target | TTFT p50 | TTFT p99 | chunk gap p50 | chunk gap p99 | events per stream | errors | peak RSS |\n|---|---|---|---|---|---|---|---|\n");
        for &(name, t50, t99, g50, g99, mn, mx, err, rss) in &self.streams {
            let rss = if name == "direct" {
                "n/a".to_string()
            } else {
                format!("{:.1} MB", mb(rss))
            };
            s.push_str(&format!("| {name} | {t50:.2} ms | {t99:.2} ms | {g50:.2} ms | {g99:.2} ms | {mn}..{mx} | {err} | {rss} |\n"));
        }
        s.push_str("\n### 4. Large bodies (20 sequential requests each)\n\n| prompt | target | p50 | added p50 vs direct | RSS growth over the scenario |\n|---|---|---|---|---|\n");
        for &(size, name, p50, rss, _) in &self.bodies {
            let d = self
                .bodies
                .iter()
                .find(|b| b.0 == size && b.1 == "direct")
                .map_or(f64::NAN, |b| b.2);
            let rss = if name == "direct" {
                "n/a".to_string()
            } else {
                format!("{:.1} MB", mb(rss))
            };
            s.push_str(&format!(
                "| {} KiB | {name} | {p50:.2} ms | {:+.2} ms | {rss} |\n",
                size / 1024,
                p50 - d
            ));
        }
        s.push_str(&self.targets());
        s
    }

    fn targets(&self) -> String {
        let mut s = String::from("\n### Targets (issue 5)\n\n");
        let (d50, d99) = self.get_open(500, "direct").unwrap_or((f64::NAN, f64::NAN));
        let (l50, l99) = self
            .get_open(500, "llmedge")
            .unwrap_or((f64::NAN, f64::NAN));
        s.push_str(&format!(
            "- Added latency at 500 req/s: p50 {:+.3} ms (≤ 0.2), p99 {:+.3} ms (≤ 1): **{}**\n",
            l50 - d50,
            l99 - d99,
            verdict(l50 - d50 <= 0.2 && l99 - d99 <= 1.0)
        ));
        let find = |n: &str| self.closed.iter().find(|c| c.0 == n);
        if let (Some(ng), Some(pg)) = (find("nginx"), find("pingora")) {
            s.push_str(&format!(
                "- Framework floor (no target): a bare Pingora 0.9.1 proxy, no filters, {:.1} µs CPU per request = {:.2}x nginx, {:.0} req/s = {:.0}% of nginx\n",
                pg.2,
                pg.2 / ng.2,
                pg.1,
                pg.1 / ng.1 * 100.0
            ));
        }
        if let (Some(ng), Some(lm)) = (find("nginx"), find("llmedge")) {
            s.push_str(&format!(
                "- CPU per request: llmedge {:.1} µs vs nginx {:.1} µs = {:.2}x (≤ 1.5x): **{}**\n",
                lm.2,
                ng.2,
                lm.2 / ng.2,
                verdict(lm.2 / ng.2 <= 1.5)
            ));
            s.push_str(&format!(
                "- Max throughput: llmedge {:.0} req/s = {:.0}% of nginx {:.0} (≥ 70%): **{}**\n",
                lm.1,
                lm.1 / ng.1 * 100.0,
                ng.1,
                verdict(lm.1 / ng.1 >= 0.7)
            ));
        }
        s.push_str(&self.stream_targets());
        s.push_str(&self.body_targets());
        s
    }
}

impl Report {
    fn stream_targets(&self) -> String {
        let mut s = String::new();
        let st = |n: &str| self.streams.iter().find(|x| x.0 == n);
        if let (Some(d), Some(l)) = (st("direct"), st("llmedge")) {
            s.push_str(&format!(
                "- Streaming added TTFT p99 {:+.2} ms (≤ 1): **{}**\n",
                l.2 - d.2,
                verdict(l.2 - d.2 <= 1.0)
            ));
            s.push_str(&format!(
                "- Streaming added chunk-gap p99 {:+.2} ms (≤ 0.5): **{}**\n",
                l.4 - d.4,
                verdict(l.4 - d.4 <= 0.5)
            ));
            s.push_str(&format!(
                "- Event count preserved: direct {}..{}, llmedge {}..{}: **{}**\n",
                d.5,
                d.6,
                l.5,
                l.6,
                verdict(d.5 == l.5 && d.6 == l.6 && l.7 == 0)
            ));
            s.push_str(&format!(
                "- RSS at 1,000 streams {:.1} MB (≤ 64): **{}**\n",
                mb(l.8),
                verdict(mb(l.8) <= 64.0)
            ));
        }
        s
    }

    fn body_targets(&self) -> String {
        let mut s = String::new();
        let body = |n: &str| {
            self.bodies
                .iter()
                .find(|b| b.0 == 4 * 1024 * 1024 && b.1 == n)
        };
        if let (Some(d), Some(l)) = (body("direct"), body("llmedge")) {
            s.push_str(&format!(
                "- 4 MiB prompt adds {:+.2} ms (≤ 5): **{}**\n",
                l.2 - d.2,
                verdict(l.2 - d.2 <= 5.0)
            ));
            let growth = l.3 as f64 / (4.0 * 1_048_576.0);
            s.push_str(&format!(
                "- RSS growth with 4 MiB prompts, one in flight: {:.1} MB = {growth:.1}x the body (≤ 3x): **{}**\n",
                mb(l.3),
                verdict(growth <= 3.0)
            ));
        }
        s
    }
}

fn write_section(body: &str) {
    let nginx = std::process::Command::new("sh")
        .args(["-c", "nginx -v 2>&1 | cut -d/ -f2"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let header = format!(
        "## End-to-end load (issue 5)\n\nCommand: `cargo bench --bench load`. {} The load generator, mock upstream, nginx, bare Pingora and llmedge share the machine. nginx {nginx}: `proxy_pass` with keep-alive, `proxy_buffering off`, 2 workers; pingora: a bare Pingora 0.9.1 proxy with no filters, 2 threads (the framework floor); llmedge: 2 threads, auth, routing with prefix strip, SSE rewrite with usage injection and stripping, limits, pricing and metrics on. Upstream: `llmedge mock`. One interleaved round; a shared 2-core VM, so read ratios and medians.\n\n",
        common::provenance()
    );
    common::write_section("load", &format!("{header}{body}"));
}
