//! Skewed-fleet routing benchmark (issue 3): does the balancing policy keep clients out of a slow
//! backend's queue? Run: `cargo bench --bench fleet` (writes a section of benches/RESULTS.md).
//!
//! Fleet: two fast `llmedge mock` backends with 4 generation slots each, one slow backend with 1
//! slot and 4x the per-token time; each queues what it cannot run and reports its queue on
//! `/metrics` as vLLM does. 12 closed-loop clients stream completions through the gateway, once
//! per policy, in interleaved rounds. TTFT is the time to the first SSE event.

#![expect(clippy::print_stderr, reason = "a benchmark reports to the terminal")]
mod common;

use std::time::{Duration, Instant};

use common::{fail, port, wait_ok, Proc};

use futures::StreamExt;

const CLIENTS: usize = 12;
const TOKENS: &str = "40";
const FAST_DELAY_MS: &str = "10";
const SLOW_DELAY_MS: &str = "40";
const RUN: Duration = Duration::from_secs(20);
const ROUNDS: usize = 2;
const POLICIES: [&str; 3] = ["round_robin", "least_outstanding", "vllm_load"];
const KEY: &str = "sk-bench";

fn spawn(args: &[&str]) -> Proc {
    common::spawn(env!("CARGO_BIN_EXE_llmedge"), args)
}

fn mock(listen: &str, slots: &str, delay: &str) -> Proc {
    spawn(&[
        "mock",
        "--listen",
        listen,
        "--slots",
        slots,
        "--tokens",
        TOKENS,
        "--delay-ms",
        delay,
    ])
}

fn gateway_config(port: u16, admin: u16, backends: &[String], policy: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"http://{b}\"")).collect();
    format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  threads: 2\nkeys:\n  - key: \"{KEY}\"\n    tenant: bench\npools:\n  fleet:\n    backends: [{}]\n    balance: {policy}\n    metrics: {{path: /metrics, interval_ms: 100}}\nroutes:\n  - {{prefix: \"fleet/\", pool: fleet, strip_prefix: true}}\nstate:\n  enabled: false\n",
        list.join(", ")
    )
}

/// One client: streams completions back to back until `until`; returns TTFTs in seconds.
async fn client(url: String, until: Instant) -> Vec<f64> {
    let http = reqwest::Client::new();
    let mut ttfts = Vec::new();
    while Instant::now() < until {
        let start = Instant::now();
        let resp = http
            .post(&url)
            .bearer_auth(KEY)
            .body(r#"{"model":"fleet/llama3","stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await;
        let Ok(resp) = resp else { continue };
        let mut body = resp.bytes_stream();
        let mut first = None;
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
        }
        if let Some(t) = first {
            ttfts.push(t);
        }
    }
    ttfts
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Outcome {
    policy: &'static str,
    ttft: Vec<f64>,
    secs: f64,
}

async fn run_policy(policy: &'static str, backends: &[String]) -> Outcome {
    let (p, admin) = (port(), port());
    let dir = std::env::temp_dir().join(format!("llmedge-fleet-{}-{policy}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let cfg = dir.join("llmedge.yaml");
    std::fs::write(&cfg, gateway_config(p, admin, backends, policy))
        .unwrap_or_else(|e| fail(&format!("cannot write config: {e}")));
    let _gw = spawn(&["--config", cfg.to_str().unwrap_or_default()]);
    wait_ok(&format!("http://127.0.0.1:{p}/healthz")).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // first load scrapes
    let start = Instant::now();
    let until = start + RUN;
    let url = format!("http://127.0.0.1:{p}/v1/chat/completions");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(url.clone(), until)))
        .collect();
    let mut ttft = Vec::new();
    for t in tasks {
        ttft.extend(t.await.unwrap_or_default());
    }
    ttft.sort_by(f64::total_cmp);
    Outcome {
        policy,
        ttft,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn report(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    s.push_str("| policy | requests | req/s | TTFT p50 | TTFT p90 | TTFT p99 | p99 vs round_robin |\n|---|---|---|---|---|---|---|\n");
    let p99 = |name: &str| {
        let all: Vec<f64> = {
            let mut v: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.policy == name)
                .flat_map(|o| o.ttft.clone())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        pct(&all, 0.99)
    };
    let rr = p99("round_robin");
    for policy in POLICIES {
        let mut all: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.policy == policy)
            .flat_map(|o| o.ttft.clone())
            .collect();
        all.sort_by(f64::total_cmp);
        let secs: f64 = outcomes
            .iter()
            .filter(|o| o.policy == policy)
            .map(|o| o.secs)
            .sum();
        let ratio = rr / pct(&all, 0.99);
        s.push_str(&format!(
            "| {policy} | {} | {:.1} | {:.3} s | {:.3} s | {:.3} s | {:.1}x better |\n",
            all.len(),
            all.len() as f64 / secs,
            pct(&all, 0.5),
            pct(&all, 0.9),
            pct(&all, 0.99),
            ratio
        ));
    }
    let vl = p99("vllm_load");
    let pass = rr / vl >= 5.0 && vl < 1.0;
    s.push_str(&format!(
        "\nTarget (issue 3): vllm_load p99 TTFT at least 5x better than round_robin and under 1 s: **{}** ({:.1}x, {:.3} s).\n",
        if pass { "PASS" } else { "FAIL" },
        rr / vl,
        vl
    ));
    s
}

fn main() {
    let Some(rt) = common::bench_runtime("fleet", None) else {
        return;
    };
    rt.block_on(async {
        let names: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", port())).collect();
        let _fast_a = mock(&names[0], "4", FAST_DELAY_MS);
        let _fast_b = mock(&names[1], "4", FAST_DELAY_MS);
        let _slow = mock(&names[2], "1", SLOW_DELAY_MS);
        for n in &names {
            wait_ok(&format!("http://{n}/health")).await;
        }
        let mut outcomes = Vec::new();
        for round in 0..ROUNDS {
            for policy in POLICIES {
                let o = run_policy(policy, &names).await;
                eprintln!(
                    "round {round} {policy}: {} requests, p50 {:.3}s p99 {:.3}s",
                    o.ttft.len(),
                    pct(&o.ttft, 0.5),
                    pct(&o.ttft, 0.99)
                );
                outcomes.push(o);
            }
        }
        let table = report(&outcomes);
        eprintln!("{table}");
        let body = format!(
            "## Fleet routing (issue 3)\n\nCommand: `cargo bench --bench fleet`. {} {} rounds x {} s per policy, interleaved.\n\nFleet: 2 fast backends (4 slots, {FAST_DELAY_MS} ms/token) + 1 slow backend (1 slot, {SLOW_DELAY_MS} ms/token), {TOKENS} tokens per completion, {CLIENTS} closed-loop streaming clients, load scraped every 100 ms. TTFT = time to the first SSE event, measured by the client through the gateway.\n\n{table}\n",
            common::provenance(),
            ROUNDS,
            RUN.as_secs()
        );
        common::write_section("fleet", &body);
    });
}
