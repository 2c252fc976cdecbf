//! Shared limits (issue 11): what one round trip to Redis per admission adds. Run:
//! `cargo bench --bench shared` (needs `redis-server`; writes a section of benches/RESULTS.md).
//!
//! Two gateways with the same key, limits (rpm, tpm, concurrency, a per-model tpm), tenant
//! budget and prices, in front of one `llmedge mock` answering at once: one keeps its counters in
//! process (`state: {enabled: false}`), the other in a local `redis-server`. Interleaved rounds:
//! open-loop non-streaming chat at 500 req/s (latency from the scheduled send time), then 32
//! closed-loop connections for the maximum rate. Added latency = redis minus in-process, per
//! round; the table quotes each round and the median.

#![expect(clippy::print_stderr, reason = "a benchmark reports to the terminal")]
mod common;
mod traffic;

use common::{fail, port, wait_ok, Proc};

const KEY: &str = "sk-bench";
const RATE: u64 = 500;
const OPEN_SECS: u64 = 10;
const CLOSED_SECS: u64 = 8;
const CONNS: usize = 32;
const ROUNDS: usize = 3;
const BODY: &str =
    r#"{"model":"m/llama3","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

fn config(port: u16, admin: u16, upstream: u16, state: &str) -> String {
    format!(
        r#"server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin}", threads: 2}}
keys:
  - key: "{KEY}"
    tenant: bench
    limits: {{rpm: 100000000, tpm: 1000000000000, concurrency: 100000, models: {{"m/*": {{tpm: 1000000000000}}}}}}
tenants:
  bench:
    limits: {{rpm: 100000000}}
    budget: {{usd_per_day: 1000000}}
pools:
  m: {{backends: ["http://127.0.0.1:{upstream}"]}}
routes:
  - {{prefix: "m/", pool: m, strip_prefix: true}}
pricing:
  "m/*": {{input: 0.1, output: 0.4}}
state: {state}
"#
    )
}

/// Open loop at `RATE` for `OPEN_SECS`: sorted latencies (ms) and errors.
async fn open_loop(base: &str) -> (Vec<f64>, usize) {
    let url = format!("{base}/v1/chat/completions");
    let (mut v, errors) = traffic::open_loop(&url, KEY, BODY, RATE, OPEN_SECS).await;
    v.sort_by(f64::total_cmp);
    (v, errors)
}

/// `CONNS` workers back to back for `CLOSED_SECS`: successful requests per second.
async fn closed_loop(base: &str) -> f64 {
    let url = format!("{base}/v1/chat/completions");
    let (ok, _, secs) = traffic::closed_loop(&url, KEY, BODY, CONNS, CLOSED_SECS).await;
    ok as f64 / secs
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

/// The gateway's admission round-trip histogram: cumulative `(upper bound s, count)`.
async fn store_buckets(admin: u16) -> Vec<(f64, f64)> {
    let text = match reqwest::get(format!("http://127.0.0.1:{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("llmedge_state_backend_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            Some((le.parse().unwrap_or(f64::INFINITY), n.parse().ok()?))
        })
        .collect()
}

/// `after - before`, bucket by bucket.
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0.0, |b| b.1);
            (*le, n - was)
        })
        .collect()
}

/// Quantile `q` in ms of a cumulative histogram, linear within a bucket.
fn quantile_ms(buckets: &[(f64, f64)], q: f64) -> f64 {
    let want = buckets.last().map_or(0.0, |b| b.1) * q;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= want {
            let share = if n > below {
                (want - below) / (n - below)
            } else {
                0.0
            };
            return (lo + (le - lo) * share) * 1e3;
        }
        (lo, below) = (le, n);
    }
    f64::NAN
}

/// Redis's own CPU seconds so far (`INFO cpu`, user + sys), over a fresh connection.
async fn redis_cpu(port: u16) -> f64 {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/0")) else {
        return f64::NAN;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return f64::NAN;
    };
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

struct Gw {
    _proc: Proc,
    base: String,
    admin: u16,
}

async fn gateway(dir: &std::path::Path, name: &str, upstream: u16, state: &str) -> Gw {
    let (p, admin) = (port(), port());
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, config(p, admin, upstream, state))
        .unwrap_or_else(|e| fail(&format!("cannot write config: {e}")));
    let proc = common::spawn(
        env!("CARGO_BIN_EXE_llmedge"),
        &["--config", cfg.to_str().unwrap_or_default()],
    );
    wait_ok(&format!("http://127.0.0.1:{admin}/healthz")).await;
    Gw {
        _proc: proc,
        base: format!("http://127.0.0.1:{p}"),
        admin,
    }
}

#[derive(Default)]
struct Rounds {
    p50: [Vec<f64>; 2],
    p99: [Vec<f64>; 2],
    rps: [Vec<f64>; 2],
    errors: [usize; 2],
    /// Redis CPU µs per request in the closed loop through the Redis gateway.
    redis_us: Vec<f64>,
    /// The Redis gateway's admission round trips during the open loops only.
    open_rtt: Vec<(f64, f64)>,
}

async fn measure(gws: &[Gw; 2], redis_port: u16) -> Rounds {
    let mut r = Rounds::default();
    for round in 0..ROUNDS {
        for (i, gw) in gws.iter().enumerate() {
            let before = store_buckets(gw.admin).await;
            let (lat, errors) = open_loop(&gw.base).await;
            if i == 1 {
                let d = bucket_delta(&before, &store_buckets(gw.admin).await);
                r.open_rtt = if r.open_rtt.is_empty() {
                    d
                } else {
                    r.open_rtt
                        .iter()
                        .zip(&d)
                        .map(|(a, b)| (a.0, a.1 + b.1))
                        .collect()
                };
            }
            r.p50[i].push(pct(&lat, 0.5));
            r.p99[i].push(pct(&lat, 0.99));
            r.errors[i] += errors;
            let cpu0 = redis_cpu(redis_port).await;
            let rps = closed_loop(&gw.base).await;
            if i == 1 {
                let used = redis_cpu(redis_port).await - cpu0;
                r.redis_us.push(used / (rps * CLOSED_SECS as f64) * 1e6);
            }
            r.rps[i].push(rps);
            eprintln!(
                "round {round} gateway {i}: p50 {:.3} ms p99 {:.3} ms, max {rps:.0} req/s, {errors} errors",
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
    }
    r
}

fn table(r: &Rounds) -> String {
    let store_ms = (
        quantile_ms(&r.open_rtt, 0.5),
        quantile_ms(&r.open_rtt, 0.99),
    );
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let added = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(r, l)| r - l).collect::<Vec<f64>>();
    let (add50, add99) = (added(&r.p50[1], &r.p50[0]), added(&r.p99[1], &r.p99[0]));
    let (rps_l, rps_r) = (median(r.rps[0].clone()), median(r.rps[1].clone()));
    format!(
        "| | in-process | redis | added (median of rounds) | target |\n|---|---|---|---|---|\n\
         | p50 at {RATE} req/s, ms (rounds) | {} | {} | {:.3} ms | ≤ 0.3 ms |\n\
         | p99 at {RATE} req/s, ms (rounds) | {} | {} | {:.3} ms | ≤ 1 ms |\n\
         | max req/s, {CONNS} connections (median) | {rps_l:.0} | {rps_r:.0} | {:.1}% | |\n\
         | errors | {} | {} | | 0 |\n\n\
         Redis's own CPU per request (admission + settlement, `INFO cpu` over the closed loop, median of rounds): {:.0} µs, so one Redis core carries about {:.0} requests/s; here it shares the 2 cores with everything else.\n\n\
         The admission round trip itself at {RATE} req/s, from the Redis gateway's `llmedge_state_backend_seconds` during the open loops (linear within buckets): p50 {:.3} ms, p99 {:.3} ms. The in-process admission it replaces takes about a microsecond (criterion `limits/admit_and_settle_10k_keys`, benches/README.md).\n",
        rounds(&r.p50[0]),
        rounds(&r.p50[1]),
        median(add50),
        rounds(&r.p99[0]),
        rounds(&r.p99[1]),
        median(add99),
        (rps_r / rps_l - 1.0) * 100.0,
        r.errors[0],
        r.errors[1],
        median(r.redis_us.clone()),
        1e6 / median(r.redis_us.clone()),
        store_ms.0,
        store_ms.1,
    )
}

fn main() {
    let Some(rt) = common::bench_runtime("shared", None) else {
        return;
    };
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("llmedge-shared-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let (mock_port, redis_port) = (port(), port());
        let _mock = common::spawn(
            env!("CARGO_BIN_EXE_llmedge"),
            &["mock", "--listen", &format!("127.0.0.1:{mock_port}")],
        );
        let _redis = common::spawn(
            "redis-server",
            &["--bind", "127.0.0.1", "--port", &redis_port.to_string(), "--save", "", "--appendonly", "no"],
        );
        wait_ok(&format!("http://127.0.0.1:{mock_port}/health")).await;
        let redis_state = format!(
            "{{backend: redis, redis: {{url: \"redis://127.0.0.1:{redis_port}/0\", timeout_ms: 50}}}}"
        );
        let gws = [
            gateway(&dir, "local", mock_port, "{enabled: false}").await,
            gateway(&dir, "redis", mock_port, &redis_state).await,
        ];
        let r = measure(&gws, redis_port).await;
        let body = format!(
            "## Shared limits through Redis (issue 11)\n\nCommand: `cargo bench --bench shared`. {} {ROUNDS} interleaved rounds per gateway: {OPEN_SECS} s open loop at {RATE} req/s, then {CLOSED_SECS} s with {CONNS} connections. Both gateways check the same rpm, tpm, concurrency and per-model tpm on key and tenant, a tenant budget and prices; one counts in process, the other on a local redis-server 7 (one FCALL per admission, one per settlement). Client, mock, redis-server and both gateways share the machine's 2 cores.\n\n{}",
            common::provenance(),
            table(&r)
        );
        eprintln!("{body}");
        common::write_section("shared", &body);
    });
}
