//! The usage ledger (issue 13): (1) a month's report for one tenant, grouped by day and model,
//! on a ledger of one million rows, on SQLite and on a Postgres this bench starts; (2) what
//! recording costs the request path: two gateways, ledger on and off, in interleaved open loops
//! at 2,000 req/s. `cargo bench --bench ledger`; writes its section of benches/RESULTS.md.

#![expect(clippy::print_stderr, reason = "a benchmark reports to the terminal")]

mod common;
mod traffic;

use std::process::Command;
use std::time::Instant;

use common::{fail, port, wait_ok};
use llmedge::ledger::Entry;
use llmedge::store::reports::{self, Filter, Group};
use llmedge::store::sql::Sql;

const ROWS: u64 = 1_000_000;
const TENANTS: u64 = 100;
const KEYS: u64 = 2_000;
const MODELS: u64 = 5;
const DAYS: u64 = 30;
const RUNS: usize = 21;
const KEY: &str = "sk-bench";
const RATE: u64 = 2_000;
const SECS: u64 = 8;
const ROUNDS: usize = 4;
const BODY: &str =
    r#"{"model":"m/llama3","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
/// 2026-11-01T00:00:00Z: the month the rows fall in.
const MONTH_START: u64 = 1_793_491_200_000;

fn entry(i: u64) -> Entry {
    let key = i % KEYS;
    Entry {
        id: format!("b-{i}"),
        request_id: format!("req_{i}"),
        ts_ms: MONTH_START + (i * 7_919) % (DAYS * 86_400_000),
        tenant: format!("t{}", key % TENANTS).into(),
        key_id: format!("key_{key}").into(),
        model: format!("m{}", (i / KEYS) % MODELS),
        endpoint: "chat",
        status: 200,
        prompt_tokens: 100 + i % 50,
        completion_tokens: 20 + i % 30,
        cost_micros: 30 + (i % 11) as i64,
        duration_ms: 40,
        ..Default::default()
    }
}

/// Fills `sql` with `ROWS` rows, in the writer's batches.
fn fill(sql: &mut dyn Sql) {
    llmedge::store::schema::migrate(sql).unwrap_or_else(|e| fail(&format!("migrate: {e}")));
    let mut i = 0;
    while i < ROWS {
        let batch: Vec<Entry> = (i..(i + 500).min(ROWS)).map(entry).collect();
        llmedge::store::ledger::write_rows(sql, &batch)
            .unwrap_or_else(|e| fail(&format!("write: {e}")));
        i += 500;
    }
}

/// Median and worst of `RUNS` reports (ms), and the groups the report has.
fn time_report(sql: &mut dyn Sql) -> (f64, f64, usize) {
    let f = Filter {
        from_ms: MONTH_START,
        to_ms: MONTH_START + DAYS * 86_400_000,
        tenant: Some("t7".into()),
        ..Default::default()
    };
    let mut ms = Vec::with_capacity(RUNS);
    let mut groups = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let rows = reports::usage(sql, &f, &[Group::Day, Group::Model])
            .unwrap_or_else(|e| fail(&format!("report: {e}")));
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        groups = rows.len();
    }
    ms.sort_by(f64::total_cmp);
    (ms[RUNS / 2], ms[RUNS - 1], groups)
}

/// A Postgres of the bench's own (Debian's, as root run as `postgres`), on `port`.
fn start_postgres(dir: &std::path::Path, port: u16) -> Option<String> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .find(|p| p.join("initdb").exists())?;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| o.stdout.starts_with(b"0"));
    let run = |tool: &str, args: &[&str]| {
        let mut c = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
            c
        } else {
            Command::new(bin.join(tool))
        };
        c.args(args)
            .output()
            .ok()
            .is_some_and(|o| o.status.success())
    };
    if root {
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status();
    }
    let data = dir.join("pg");
    let data = data.to_str()?;
    if !run(
        "initdb",
        &["-D", data, "-U", "llmedge", "--auth=trust", "--no-sync"],
    ) {
        return None;
    }
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
        dir.display()
    );
    let log = dir.join("pg.log");
    run(
        "pg_ctl",
        &["-D", data, "-l", log.to_str()?, "-o", &opts, "-w", "start"],
    )
    .then(|| format!("postgres://llmedge@127.0.0.1:{port}/postgres"))
}

fn stop_postgres(dir: &std::path::Path) {
    let Some(bin) = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("pg_ctl").exists())
    }) else {
        return;
    };
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .args(["-D"])
        .arg(dir.join("pg"))
        .args(["-m", "immediate", "stop"])
        .output();
}

fn reports_section(dir: &std::path::Path) -> String {
    let path = dir.join("ledger.db");
    let mut lite = llmedge::store::sqlite::Sqlite::open(path.to_str().unwrap_or_default())
        .unwrap_or_else(|e| fail(&e.to_string()));
    let t = Instant::now();
    fill(&mut lite);
    let fill_lite = t.elapsed().as_secs_f64();
    let (l50, lmax, groups) = time_report(&mut lite);
    let mut out = format!(
        "| store | fill 1M rows (s) | report median (ms) | report worst of {RUNS} (ms) | groups |\n|---|---|---|---|---|\n| SQLite (file) | {fill_lite:.1} | {l50:.2} | {lmax:.2} | {groups} |\n"
    );
    let pg_dir = dir.join("postgres");
    let _ = std::fs::create_dir_all(&pg_dir);
    match start_postgres(&pg_dir, port()) {
        Some(url) => {
            let mut pg = llmedge::store::postgres::Postgres::connect(&url, None)
                .unwrap_or_else(|e| fail(&e.to_string()));
            let t = Instant::now();
            fill(&mut pg);
            let fill_pg = t.elapsed().as_secs_f64();
            let _ = pg.batch("ANALYZE");
            let (p50, pmax, groups) = time_report(&mut pg);
            out.push_str(&format!(
                "| Postgres 15 (local) | {fill_pg:.1} | {p50:.2} | {pmax:.2} | {groups} |\n"
            ));
            drop(pg);
            stop_postgres(&pg_dir);
        }
        None => out.push_str("| Postgres | not run: no initdb here | | | |\n"),
    }
    out
}

fn config(p: u16, admin: u16, upstream: u16, ledger: bool) -> String {
    format!(
        "server: {{listen: \"127.0.0.1:{p}\", admin_listen: \"127.0.0.1:{admin}\", threads: 2}}\nkeys: [{{key: \"{KEY}\", tenant: bench}}]\npools: {{m: {{backends: [\"http://127.0.0.1:{upstream}\"]}}}}\nroutes: [{{prefix: \"m/\", pool: m, strip_prefix: true}}]\npricing: {{\"m/*\": {{input: 0.1, output: 0.4}}}}\nstate: {{enabled: false}}\nstore: {{ledger: {ledger}}}\n"
    )
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The two gateways (ledger on, off) in front of one mock: name, process, chat URL.
async fn gateways(
    dir: &std::path::Path,
    mock_port: u16,
) -> Vec<(&'static str, common::Proc, String)> {
    let mut gws = Vec::new();
    for (name, on) in [("on", true), ("off", false)] {
        let (p, admin) = (port(), port());
        let gw_dir = dir.join(name);
        let _ = std::fs::create_dir_all(&gw_dir);
        let cfg = gw_dir.join("c.yaml");
        std::fs::write(&cfg, config(p, admin, mock_port, on))
            .unwrap_or_else(|e| fail(&e.to_string()));
        let args = ["--config", cfg.to_str().unwrap_or_default()];
        let proc = common::spawn_in(&gw_dir, env!("CARGO_BIN_EXE_llmedge"), &args);
        wait_ok(&format!("http://127.0.0.1:{admin}/healthz")).await;
        gws.push((
            name,
            proc,
            format!("http://127.0.0.1:{p}/v1/chat/completions"),
        ));
    }
    gws
}

/// p50s, p99s, errors of the open loops, and req/s of one closed loop, per gateway.
type Figures = (Vec<f64>, Vec<f64>, usize, f64);

async fn request_path_section(dir: &std::path::Path) -> String {
    let mock_port = port();
    let mock_args = [
        "mock",
        "--listen",
        &format!("127.0.0.1:{mock_port}"),
        "--delay-ms",
        "0",
        "--tokens",
        "4",
    ];
    let _mock = common::spawn(env!("CARGO_BIN_EXE_llmedge"), &mock_args);
    wait_ok(&format!("http://127.0.0.1:{mock_port}/health")).await;
    let gws = gateways(dir, mock_port).await;
    let mut rows: Vec<Figures> = vec![(Vec::new(), Vec::new(), 0, 0.0); 2];
    for _ in 0..ROUNDS {
        for (i, (_, _, url)) in gws.iter().enumerate() {
            let (mut lat, errors) = traffic::open_loop(url, KEY, BODY, RATE, SECS).await;
            lat.sort_by(f64::total_cmp);
            rows[i].0.push(pct(&lat, 0.5));
            rows[i].1.push(pct(&lat, 0.99));
            rows[i].2 += errors;
        }
    }
    for (i, (_, _, url)) in gws.iter().enumerate() {
        let (ok, _, secs) = traffic::closed_loop(url, KEY, BODY, 32, SECS).await;
        rows[i].3 = ok as f64 / secs;
    }
    let mut out = String::from("| ledger | p50 per round (ms) | p99 per round (ms) | errors | closed loop, 32 connections (req/s) |\n|---|---|---|---|---|\n");
    for (i, (name, _, _)) in gws.iter().enumerate() {
        let f = |v: &Vec<f64>| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let r = &rows[i];
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {:.0} |\n",
            f(&r.0),
            f(&r.1),
            r.2,
            r.3
        ));
    }
    out
}

fn main() {
    let Some(rt) = common::bench_runtime("ledger", None) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("llmedge-ledger-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let reports = reports_section(&dir);
    let path = rt.block_on(request_path_section(&dir));
    let body = format!(
        "## Usage ledger (issue 13)\n\nCommand: `cargo bench --bench ledger`. {}\n\nA month's report for one tenant (of {TENANTS}), grouped by day and model, on a ledger of {ROWS} rows ({KEYS} keys, {MODELS} models, {DAYS} days), read from the daily rollup; target under 100 ms:\n\n{reports}\nWhat recording costs the request path: the same gateway with `store.ledger` on and off (SQLite store), non-streaming chat to `llmedge mock`, {ROUNDS} interleaved rounds of {SECS} s open loop at {RATE} req/s; client, mock and gateway share the machine:\n\n{path}",
        common::provenance()
    );
    eprintln!("{body}");
    common::write_section("ledger", &body);
    let _ = std::fs::remove_dir_all(&dir);
}
