//! Prefix-cache-aware routing benchmark (issue 15). Run: `cargo bench --bench prefix` (writes a
//! section of benches/RESULTS.md).
//!
//! Fleet: 4 `llmedge mock` backends with 4 generation slots each and the mock's prefix-cache
//! model (an LRU of 64-character blocks with a fixed capacity; prefill time per uncached
//! character before the first token). Workload: 64 conversations of 8 turns, each opening with
//! one of 4 system prompts of about 8 KB, each turn adding a tool output of about 2 KB (agent
//! traffic); every turn resends the whole history, as chat clients do. 16 or 32 closed-loop clients each take the next conversation and play its turns in order.
//! Per policy, fresh backends (cold caches). TTFT = time to the first SSE event; the hit ratio
//! is the backends' own count of prompt characters found cached; the hotspot ratio is backends
//! x the largest share of requests one backend served. "ideal" pins every conversation to one
//! backend (consistent hash on a conversation header): the hit ratio to compare with.

#![expect(clippy::print_stderr, reason = "a benchmark reports to the terminal")]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{fail, port, wait_ok, Proc};
use futures::StreamExt;
use serde_json::{json, Value};

const BACKENDS: usize = 4;
const SLOTS: &str = "4";
const TOKENS: &str = "16";
const DELAY_MS: &str = "5";
const CACHE_BLOCKS: &str = "2500";
const PREFILL_MS_PER_KCHAR: &str = "20";
const CONVERSATIONS: usize = 64;
const TURNS: usize = 8;
const KEY: &str = "sk-bench";
/// Interleaved rounds; a policy's figures pool its rounds' requests (TTFT percentiles over all
/// of them, hit and hotspot ratios over the rounds' totals).
const ROUNDS: usize = 2;
/// (name in the table, `balance`, extra pool settings)
const POLICIES: [(&str, &str, &str); 6] = [
    ("round_robin", "round_robin", ""),
    ("least_outstanding", "least_outstanding", ""),
    (
        "consistent_hash",
        "consistent_hash",
        "\n    hash_key: prompt_prefix",
    ),
    ("vllm_load", "vllm_load", ""),
    ("cache_aware", "cache_aware", ""),
    (
        "ideal",
        "consistent_hash",
        "\n    hash_key: \"header:x-conversation\"",
    ),
];

fn spawn(args: &[&str]) -> Proc {
    common::spawn(env!("CARGO_BIN_EXE_llmedge"), args)
}

fn system_prompt(k: usize) -> String {
    let line = format!("System prompt {k}: you are agent number {k}; follow the house rules, cite sources, keep answers short and check every tool result twice. ");
    line.repeat(8192 / line.len() + 1)
}

fn gateway_config(
    port: u16,
    admin: u16,
    backends: &[String],
    balance: &str,
    extra: &str,
) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"http://{b}\"")).collect();
    format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  threads: 2\nkeys:\n  - key: \"{KEY}\"\n    tenant: bench\npools:\n  fleet:\n    backends: [{}]\n    balance: {balance}{extra}\n    metrics: {{path: /metrics, interval_ms: 100}}\n    timeouts: {{first_byte_ms: 120000}}\nroutes:\n  - {{prefix: \"fleet/\", pool: fleet, strip_prefix: true}}\nstate:\n  enabled: false\nstore:\n  url: \"sqlite::memory:\"\n  ledger: false\n",
        list.join(", ")
    )
}

/// One turn: streams the answer; returns (TTFT seconds, the answer's text).
async fn turn(
    http: &reqwest::Client,
    url: &str,
    conv: usize,
    messages: &[Value],
) -> Option<(f64, String)> {
    let body = json!({"model": "fleet/llama3", "stream": true, "messages": messages});
    let start = Instant::now();
    let resp = http
        .post(url)
        .bearer_auth(KEY)
        .header("x-conversation", conv.to_string())
        .body(body.to_string())
        .send()
        .await
        .ok()?;
    let mut stream = resp.bytes_stream();
    let (mut first, mut text, mut raw) = (None, String::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        first.get_or_insert_with(|| start.elapsed().as_secs_f64());
        raw.extend_from_slice(&chunk);
    }
    for line in String::from_utf8_lossy(&raw).lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    Some((first?, text))
}

/// One client: plays whole conversations, taking the next from `next`, until none are left.
async fn client(url: String, next: Arc<AtomicUsize>) -> Vec<f64> {
    let http = reqwest::Client::new();
    let mut ttfts = Vec::new();
    loop {
        let conv = next.fetch_add(1, Ordering::Relaxed);
        if conv >= CONVERSATIONS {
            return ttfts;
        }
        let mut messages = vec![json!({"role": "system", "content": system_prompt(conv % 4)})];
        for t in 0..TURNS {
            // agent traffic: each turn brings a tool's output of ~2 KB, unique to the turn
            let row = format!("row {conv}.{t}: status ok, 17 items, checksum {conv:04}{t:02}; ");
            let ask = format!(
                "Conversation {conv}, step {t}, tool output: {}",
                row.repeat(40)
            );
            messages.push(json!({"role": "user", "content": ask}));
            let Some((ttft, answer)) = turn(&http, &url, conv, &messages).await else {
                fail(&format!("conversation {conv} turn {t} failed"));
            };
            ttfts.push(ttft);
            messages.push(json!({"role": "assistant", "content": answer}));
        }
    }
}

async fn stats(backend: &str) -> Value {
    let body = reqwest::get(format!("http://{backend}/stats")).await.ok();
    match body {
        Some(r) => r.json().await.unwrap_or(Value::Null),
        None => Value::Null,
    }
}

struct Outcome {
    policy: &'static str,
    clients: usize,
    ttft: Vec<f64>,
    hit_ratio: f64,
    hotspot: f64,
    per_backend: Vec<u64>,
    rounds: usize,
    /// Each round's own TTFT p99 (the pooled p99 sits on a few slow requests: this shows
    /// how much it moves between rounds).
    round_p99: Vec<f64>,
}

impl Outcome {
    /// Pools another round of the same policy into this one.
    fn absorb(&mut self, o: Outcome) {
        let n = self.rounds as f64;
        self.hit_ratio = (self.hit_ratio * n + o.hit_ratio) / (n + 1.0);
        self.hotspot = (self.hotspot * n + o.hotspot) / (n + 1.0);
        for (a, b) in self.per_backend.iter_mut().zip(o.per_backend) {
            *a += b;
        }
        self.ttft.extend(o.ttft);
        self.ttft.sort_by(f64::total_cmp);
        self.round_p99.extend(o.round_p99);
        self.rounds += 1;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Fresh backends and a gateway for `policy`: the processes (killed when dropped), the
/// backends' addresses and the gateway's chat URL.
async fn start_fleet(
    policy: (&str, &str, &str),
    clients: usize,
    round: usize,
) -> (Vec<Proc>, Vec<String>, String) {
    let names: Vec<String> = (0..BACKENDS)
        .map(|_| format!("127.0.0.1:{}", port()))
        .collect();
    let mut procs: Vec<Proc> = names
        .iter()
        .map(|n| {
            spawn(&[
                "mock",
                "--listen",
                n,
                "--slots",
                SLOTS,
                "--tokens",
                TOKENS,
                "--delay-ms",
                DELAY_MS,
                "--cache-blocks",
                CACHE_BLOCKS,
                "--prefill-ms-per-kchar",
                PREFILL_MS_PER_KCHAR,
            ])
        })
        .collect();
    for n in &names {
        wait_ok(&format!("http://{n}/health")).await;
    }
    let (p, admin) = (port(), port());
    let dir = std::env::temp_dir().join(format!(
        "llmedge-prefix-{}-{}-{clients}-{round}",
        std::process::id(),
        policy.0
    ));
    let _ = std::fs::create_dir_all(&dir);
    let cfg = dir.join("llmedge.yaml");
    std::fs::write(&cfg, gateway_config(p, admin, &names, policy.1, policy.2))
        .unwrap_or_else(|e| fail(&format!("cannot write config: {e}")));
    let gw = common::spawn_logged(
        &dir,
        env!("CARGO_BIN_EXE_llmedge"),
        &["--config", cfg.to_str().unwrap_or_default()],
    );
    procs.push(gw);
    wait_ok(&format!("http://127.0.0.1:{p}/healthz")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // first load scrapes
    (
        procs,
        names,
        format!("http://127.0.0.1:{p}/v1/chat/completions"),
    )
}

async fn run(policy: (&'static str, &str, &str), clients: usize, round: usize) -> Outcome {
    let (_procs, names, url) = start_fleet(policy, clients, round).await;
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(url.clone(), next.clone())))
        .collect();
    let mut ttft = Vec::new();
    for t in tasks {
        ttft.extend(t.await.unwrap_or_default());
    }
    ttft.sort_by(f64::total_cmp);
    let mut per_backend = Vec::new();
    let (mut queried, mut hits) = (0.0, 0.0);
    for n in &names {
        let s = stats(n).await;
        per_backend.push(s["requests"].as_u64().unwrap_or(0));
        queried += s["prefix_queried_chars"].as_f64().unwrap_or(0.0);
        hits += s["prefix_hit_chars"].as_f64().unwrap_or(0.0);
    }
    let total: u64 = per_backend.iter().sum();
    let max = per_backend.iter().copied().max().unwrap_or(0);
    let round_p99 = vec![pct(&ttft, 0.99)];
    Outcome {
        policy: policy.0,
        clients,
        ttft,
        hit_ratio: hits / queried.max(1.0),
        hotspot: BACKENDS as f64 * max as f64 / total.max(1) as f64,
        per_backend,
        rounds: 1,
        round_p99,
    }
}

fn p99(o: &Outcome) -> f64 {
    pct(&o.ttft, 0.99)
}

/// The targets for `cache_aware`, as report lines, and whether all are met.
fn targets(ca: &Outcome, vl: &Outcome, ch: &Outcome, ideal: &Outcome) -> (String, bool) {
    let checks = [
        (
            format!(
                "TTFT p99 ≤ 0.5× vllm_load's: {:.3} s vs {:.3} s ({:.2}×)",
                p99(ca),
                p99(vl),
                p99(ca) / p99(vl)
            ),
            p99(ca) <= 0.5 * p99(vl),
        ),
        (
            format!(
                "TTFT p99 ≤ 0.5× consistent_hash's: {:.3} s vs {:.3} s ({:.2}×)",
                p99(ca),
                p99(ch),
                p99(ca) / p99(ch)
            ),
            p99(ca) <= 0.5 * p99(ch),
        ),
        (
            format!(
                "hit ratio ≥ 0.8× ideal: {:.2} vs {:.2} ({:.2}×)",
                ca.hit_ratio,
                ideal.hit_ratio,
                ca.hit_ratio / ideal.hit_ratio
            ),
            ca.hit_ratio >= 0.8 * ideal.hit_ratio,
        ),
        (
            format!("hotspot ratio ≤ 1.5: {:.2}", ca.hotspot),
            ca.hotspot <= 1.5,
        ),
    ];
    let mut all = true;
    let mut s = String::from("\ncache_aware targets:\n");
    for (what, ok) in checks {
        all &= ok;
        s.push_str(&format!(
            "- {what}: **{}**\n",
            if ok { "PASS" } else { "FAIL" }
        ));
    }
    (s, all)
}

fn report(outcomes: &[Outcome], clients: usize) -> (String, bool) {
    let of = |name: &str| {
        outcomes
            .iter()
            .find(|o| o.policy == name && o.clients == clients)
    };
    let mut s = format!("**{clients} concurrent clients**\n\n| policy | requests | TTFT p50 | TTFT p99 | p99 per round | hit ratio | hotspot ratio | requests per backend |\n|---|---|---|---|---|---|---|---|\n");
    for o in outcomes.iter().filter(|o| o.clients == clients) {
        s.push_str(&format!(
            "| {} | {} | {:.3} s | {:.3} s | {} | {:.2} | {:.2} | {:?} |\n",
            o.policy,
            o.ttft.len(),
            pct(&o.ttft, 0.5),
            p99(o),
            o.round_p99
                .iter()
                .map(|p| format!("{p:.3}"))
                .collect::<Vec<_>>()
                .join(" / "),
            o.hit_ratio,
            o.hotspot,
            o.per_backend
        ));
    }
    let (Some(ca), Some(vl), Some(ch), Some(ideal)) = (
        of("cache_aware"),
        of("vllm_load"),
        of("consistent_hash"),
        of("ideal"),
    ) else {
        return (s, false);
    };
    let (t, ok) = targets(ca, vl, ch, ideal);
    s.push_str(&t);
    (s, ok)
}

fn main() {
    let Some(rt) = common::bench_runtime("prefix", None) else {
        return;
    };
    rt.block_on(async {
        let mut outcomes: Vec<Outcome> = Vec::new();
        // LLMEDGE_BENCH_POLICIES=cache_aware,vllm_load and LLMEDGE_BENCH_ROUNDS=1 narrow a run
        let only = std::env::var("LLMEDGE_BENCH_POLICIES").ok();
        let rounds = std::env::var("LLMEDGE_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(ROUNDS);
        let chosen: Vec<_> = POLICIES
            .into_iter()
            .filter(|p| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == p.0)))
            .collect();
        // LLMEDGE_BENCH_CLIENTS=16 runs one of the two loads
        let only_load = std::env::var("LLMEDGE_BENCH_CLIENTS").ok();
        let loads: Vec<usize> = [16, 32]
            .into_iter()
            .filter(|n| only_load.as_deref().is_none_or(|o| o == n.to_string()))
            .collect();
        for (round, clients) in (0..rounds).flat_map(|r| loads.iter().map(move |&n| (r, n))) {
            for &policy in &chosen {
                let o = run(policy, clients, round).await;
                eprint!("round {round}: ");
                eprintln!(
                    "{clients} clients {}: {} requests, TTFT p50 {:.3}s p99 {:.3}s, hits {:.2}, hotspot {:.2} {:?}",
                    o.policy, o.ttft.len(), pct(&o.ttft, 0.5), pct(&o.ttft, 0.99), o.hit_ratio, o.hotspot, o.per_backend
                );
                match outcomes.iter_mut().find(|p| p.policy == o.policy && p.clients == clients) {
                    Some(p) => p.absorb(o),
                    None => outcomes.push(o),
                }
            }
        }
        let (t16, ok16) = report(&outcomes, 16);
        let (t32, ok32) = report(&outcomes, 32);
        eprintln!("{t16}\n{t32}");
        let body = format!(
            "## Prefix-cache-aware routing (issue 15)\n\nCommand: `cargo bench --bench prefix`. {}\n\nFleet: {BACKENDS} `llmedge mock` backends, {SLOTS} slots each, {TOKENS} tokens per answer at {DELAY_MS} ms/token, prefix cache of {CACHE_BLOCKS} blocks of 64 characters per backend, {PREFILL_MS_PER_KCHAR} ms of prefill per 1,000 uncached characters before the first token; load scraped every 100 ms for every policy. Workload: {CONVERSATIONS} conversations x {TURNS} turns, 4 system prompts of ~8 KB, each turn adding a ~2 KB tool output, the whole history resent each turn; fresh backends per policy and round; {ROUNDS} interleaved rounds, pooled (TTFT percentiles over all their requests, hit and hotspot ratios averaged over the rounds; \"p99 per round\" is each round's own p99, for how far the pooled one moves). TTFT = time to the first SSE event at the client; hit ratio = prompt characters the backends found cached / all prompt characters; hotspot ratio = backends x the largest share of requests. `ideal` = every conversation pinned to one backend. `cache_aware` at its defaults (block_chars 128, load_weight 1.0).\n\n{t16}\n{t32}\nAll targets met: **{}**.\n",
            common::provenance(),
            if ok16 && ok32 { "yes" } else { "no" }
        );
        common::write_section("prefix", &body);
    });
}
