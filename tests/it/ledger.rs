//! The usage ledger: every authenticated request on the books, exactly what the budget counters
//! charged, written in batches off the request path, kept through a store outage, flushed at
//! SIGTERM.

use std::time::Duration;

use llmedge::ledger::Entry;
use llmedge::store::sql::{Sql, Val};

use crate::support::mock::MockOpenAi;
use crate::support::postgres_server::PostgresServer;
use crate::support::{config, post, TestGateway, CLIENT_KEY, LIMITED_KEY};

const CHAT: &str = "/v1/chat/completions";
const STREAM: &str =
    r#"{"model":"mock/llama3","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const PLAIN: &str = r#"{"model":"mock/llama3","messages":[{"role":"user","content":"hi"}]}"#;
const BETA: &str = r#"{"model":"mock/echo","messages":[{"role":"user","content":"hi"}]}"#;

/// The standard config with prices that do not come out in whole micro-dollars, a tenant budget
/// to read the counters back from, and `store` (absent: the default SQLite file).
fn yaml(upstream: &str, port: u16, admin: u16, store: Option<&str>) -> String {
    let mut y = config(upstream, port, admin, "");
    y.push_str(
        "pricing:\n  \"mock/*\": {input: 0.7, output: 2.5}\ntenants:\n  acme: {budget: {usd_per_day: 100}}\n  beta: {limits: {rpm: 1}}\n",
    );
    if let Some(url) = store {
        y.push_str(&format!("store:\n  url: \"{url}\"\n"));
    }
    y
}

/// One whole request (its body read to the end, so the client does not hang up early).
async fn send(gw: &TestGateway, key: &str, body: &str) -> u16 {
    let r = post(gw, CHAT, key, body).await;
    let status = r.status().as_u16();
    r.text().await.unwrap();
    status
}

/// Sends `n` streams and `n` plain requests as acme, and two as beta (rpm 1: one refused).
async fn traffic(gw: &TestGateway, n: usize) {
    for _ in 0..n {
        assert_eq!(send(gw, CLIENT_KEY, STREAM).await, 200);
        assert_eq!(send(gw, CLIENT_KEY, PLAIN).await, 200);
    }
    assert_eq!(send(gw, LIMITED_KEY, BETA).await, 200);
    assert_eq!(send(gw, LIMITED_KEY, BETA).await, 429);
}

/// `(rows, prompt, completion, cost_micros)` of `tenant` in the ledger, from a query's first row.
fn totals(rows: &[Vec<Val>]) -> (i64, i64, i64, i64) {
    let r = &rows[0];
    let at = |i: usize| r[i].int().unwrap_or(0);
    (at(0), at(1), at(2), at(3))
}

const SUMS: &str = "SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros) FROM llmedge_usage WHERE tenant = $1";
const DAILY: &str = "SELECT SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_micros) FROM llmedge_usage_daily WHERE tenant = $1";

/// acme's `(prompt, completion, micro-USD)` as the gateway's own counters have them:
/// llmedge_tokens_total over every model, and what the day budget was charged.
async fn counters(gw: &TestGateway) -> (f64, f64, i64) {
    let m = gw.metrics().await;
    let sum = |kind: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(&format!("llmedge_tokens_total{{kind=\"{kind}\"")))
            .filter(|l| l.contains("tenant=\"acme\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let budget = "llmedge_budget_remaining_usd{tenant=\"acme\",window=\"day\"}";
    let remaining = gw.metric_value(budget).await;
    (
        sum("prompt"),
        sum("completion"),
        ((100.0 - remaining) * 1e6).round() as i64,
    )
}

/// A stream the upstream cuts after two events, and one the client abandons after its first.
async fn broken_streams(gw: &TestGateway) {
    use futures::StreamExt;
    let cut = r#"{"model":"mock/cut","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(send(gw, CLIENT_KEY, cut).await, 200);
    let endless =
        r#"{"model":"mock/endless","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(gw, CHAT, CLIENT_KEY, endless).await;
    let mut body = r.bytes_stream();
    assert!(body.next().await.is_some());
    drop(body);
}

#[tokio::test]
async fn every_request_is_on_the_books_at_what_the_budget_charged_and_sigterm_flushes() {
    let mock = MockOpenAi::start().await;
    let mut gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    traffic(&gw, 5).await;
    broken_streams(&gw).await;
    gw.wait_metric("llmedge_requests_total{pool=\"mock\",route=\"mock/\",status=\"499\"} 1")
        .await;
    let (prompt, completion, charged) = counters(&gw).await;
    // SIGTERM right away: the last rows are still queued (batches wait up to 250 ms)
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(20)).await.success());
    let db = gw.dir().join("llmedge.db");
    let mut sql = llmedge::store::sqlite::Sqlite::open(db.to_str().unwrap()).unwrap();
    let acme = totals(&sql.query(SUMS, &["acme".into()]).unwrap());
    assert_eq!(
        acme.0, 12,
        "one row per request, cut and abandoned streams too"
    );
    assert_eq!(
        (acme.1 as f64, acme.2 as f64),
        (prompt, completion),
        "tokens as llmedge_tokens_total"
    );
    assert_eq!(
        acme.3, charged,
        "cost as the budget counters charged, to the micro-dollar"
    );
    assert_eq!(
        totals(&sql.query(DAILY, &["acme".into()]).unwrap()),
        acme,
        "the rollup agrees"
    );
    // a plain answer reports 11 + 1 tokens: 7.7 + 2.5 micro-USD at 0.7 and 2.5 USD per 1M
    let plain = "SELECT prompt_tokens, completion_tokens, cost_micros FROM llmedge_usage WHERE tenant = 'acme' AND stream = 0";
    let plain = sql.query(plain, &[]).unwrap();
    assert_eq!(plain.len(), 5);
    for r in &plain {
        assert_eq!(
            (r[0].int(), r[1].int(), r[2].int()),
            (Some(11), Some(1), Some(10))
        );
    }
    let beta =
        "SELECT status, cost_micros, error, model, endpoint FROM llmedge_usage WHERE tenant = 'beta' ORDER BY ts";
    let beta = sql.query(beta, &[]).unwrap();
    assert_eq!(beta.len(), 2, "a refused request is on the books too");
    assert_eq!((beta[1][0].int(), beta[1][1].int()), (Some(429), Some(0)));
    assert!(beta[1][2].text().is_some(), "with its error code");
    assert_eq!(
        (beta[1][3].text(), beta[1][4].text()),
        (Some("mock/echo"), Some("chat"))
    );
    let streams = "SELECT COUNT(*) FROM llmedge_usage WHERE stream = 1 AND endpoint = 'chat' AND ttft_ms IS NOT NULL AND backend <> ''";
    assert_eq!(sql.query(streams, &[]).unwrap()[0][0].int(), Some(7));
    let gone = "SELECT completion_tokens, cost_micros FROM llmedge_usage WHERE status = 499";
    let gone = sql.query(gone, &[]).unwrap();
    assert!(
        gone[0][0].int().unwrap() > 0 && gone[0][1].int().unwrap() > 0,
        "an abandoned stream is charged: {gone:?}"
    );
}

#[tokio::test]
async fn a_postgres_outage_under_traffic_loses_no_row() {
    let mut pg = PostgresServer::start().await;
    let mock = MockOpenAi::start().await;
    let url = pg.url();
    let gw = TestGateway::start_with(|p, a| with_admin(&mock.url(), p, a, Some(&url))).await;
    traffic(&gw, 3).await;
    gw.wait_metric("llmedge_ledger_queue_rows 0").await;
    pg.stop();
    // served while the store is away; the rows wait in memory
    for _ in 0..20 {
        assert_eq!(send(&gw, CLIENT_KEY, PLAIN).await, 200);
    }
    gw.wait_metric("llmedge_ledger_queue_rows 20").await;
    pg.restart().await;
    gw.wait_metric("llmedge_ledger_queue_rows 0").await;
    let (_, _, charged) = counters(&gw).await;
    let rows =
        pg.query("SELECT COUNT(*), SUM(cost_micros) FROM llmedge_usage WHERE tenant = 'acme'");
    assert_eq!(
        rows[0][0].as_deref(),
        Some("26"),
        "3 + 3 before, 20 during the outage"
    );
    assert_eq!(
        rows[0][1].as_deref(),
        Some(&*charged.to_string()),
        "every micro-dollar charged"
    );
    let daily = pg.query("SELECT SUM(requests) FROM llmedge_usage_daily WHERE tenant = 'acme'");
    assert_eq!(daily[0][0].as_deref(), Some("26"));
    gw.wait_metric("llmedge_ledger_dropped_total 0").await;
    // the report on Postgres: every group adds up to what was charged
    let path = "/admin/v1/usage?group_by=day,tenant,key,model&tenant=acme";
    let v: serde_json::Value =
        serde_json::from_str(&report(&gw, path, "application/json").await).unwrap();
    let total: i64 = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cost_micro_usd"].as_i64().unwrap())
        .sum();
    assert_eq!(total, charged);
    let page = report(
        &gw,
        "/admin/v1/usage/requests?tenant=acme&limit=10",
        "text/csv",
    )
    .await;
    assert_eq!(page.lines().count(), 11, "a header and ten rows");
}

/// The ledger config with the control tests' admin key.
fn with_admin(upstream: &str, port: u16, admin: u16, store: Option<&str>) -> String {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(crate::control::ADMIN_KEY.as_bytes()));
    format!(
        "{}admin:\n  keys: [\"sha256:{digest}\"]\n",
        yaml(upstream, port, admin, store)
    )
}

async fn report(gw: &TestGateway, path: &str, accept: &str) -> String {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", gw.admin))
        .bearer_auth(crate::control::ADMIN_KEY)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap()
}

#[tokio::test]
async fn reports_total_per_group_csv_matches_json_and_the_cli_prints_them() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| with_admin(&mock.url(), p, a, None)).await;
    traffic(&gw, 5).await;
    gw.wait_metric("llmedge_ledger_rows_total 12").await;
    let (_, _, charged) = counters(&gw).await;
    let path = "/admin/v1/usage?group_by=tenant,model,day";
    let v: serde_json::Value =
        serde_json::from_str(&report(&gw, path, "application/json").await).unwrap();
    let rows = v["data"].as_array().unwrap();
    let acme = rows.iter().find(|r| r["tenant"] == "acme").unwrap();
    assert_eq!(
        (acme["model"].as_str(), acme["requests"].as_u64()),
        (Some("mock/llama3"), Some(10))
    );
    assert_eq!(
        acme["cost_micro_usd"].as_i64(),
        Some(charged),
        "the report is what the budget charged"
    );
    assert_eq!(
        acme["cost_usd"].as_str().unwrap(),
        format!("{}.{:06}", charged / 1_000_000, charged % 1_000_000)
    );
    let csv = report(&gw, path, "text/csv").await;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "tenant,model,day,requests,prompt_tokens,completion_tokens,cached_tokens,cost_usd,cost_micro_usd");
    assert_eq!(lines.len(), rows.len() + 1);
    for (line, r) in lines[1..].iter().zip(rows) {
        let want: Vec<String> = [
            "tenant",
            "model",
            "day",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
            "cost_micro_usd",
        ]
        .iter()
        .map(|f| {
            r[*f]
                .as_str()
                .map_or_else(|| r[*f].to_string(), str::to_string)
        })
        .collect();
        assert_eq!(*line, want.join(","), "CSV matches JSON");
    }
    let refused = report(
        &gw,
        "/admin/v1/usage/requests?tenant=beta&status=429",
        "application/json",
    )
    .await;
    let refused: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(refused["data"].as_array().unwrap().len(), 1);
    assert_eq!(refused["data"][0]["cost_micro_usd"], 0);
    cli_usage(&gw, charged);
    usage_errors_have_the_openai_shape(&gw).await;
}

/// Bad report queries: 400 with OpenAI's error object naming the parameter; no admin key: 401.
async fn usage_errors_have_the_openai_shape(gw: &TestGateway) {
    let base = format!("http://127.0.0.1:{}", gw.admin);
    for (q, param) in [
        ("/admin/v1/usage?from=yesterday", "from"),
        ("/admin/v1/usage?group_by=week", "group_by"),
        ("/admin/v1/usage/requests?limit=0", "limit"),
        ("/admin/v1/usage/requests?colour=red", "colour"),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{base}{q}"))
            .bearer_auth(crate::control::ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let (s, v) = crate::support::error_json(r).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{q}: {v}"
        );
    }
    let r = reqwest::get(format!("{base}/admin/v1/usage"))
        .await
        .unwrap();
    assert_eq!(crate::support::error_json(r).await.0, 401);
}

/// `llmedge usage` as a table, JSON and CSV.
fn cli_usage(gw: &TestGateway, charged: i64) {
    let run = |extra: &[&str]| {
        let cfg = gw.config_path();
        let mut args = vec![
            "usage",
            "--tenant",
            "acme",
            "--since",
            "7d",
            "--by",
            "day,model",
            "--config",
        ];
        args.push(cfg.to_str().unwrap());
        args.extend_from_slice(extra);
        let out = std::process::Command::new(crate::support::bin())
            .args(&args)
            .env("LLMEDGE_ADMIN_KEY", crate::control::ADMIN_KEY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = run(&[]);
    assert!(
        table.starts_with("DAY") && table.contains("mock/llama3") && table.contains(" 10 "),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["data"][0]["cost_micro_usd"].as_i64(), Some(charged));
    let csv = run(&["--csv"]);
    assert!(csv.starts_with("day,model,requests"), "{csv}");
}

#[tokio::test]
async fn retention_prunes_old_rows_and_keeps_their_rollup() {
    let mock = MockOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("llmedge.db");
    let now = llmedge::clock::Clock::now_ms(&llmedge::clock::SystemClock);
    let old = |id: &str, days: u64| Entry {
        id: id.into(),
        ts_ms: now - days * llmedge::clock::DAY_MS,
        tenant: "acme".into(),
        cost_micros: 7,
        ..Default::default()
    };
    {
        let mut sql = llmedge::store::sqlite::Sqlite::open(db.to_str().unwrap()).unwrap();
        llmedge::store::schema::migrate(&mut sql).unwrap();
        llmedge::store::ledger::write_rows(&mut sql, &[old("old", 40), old("recent", 2)]).unwrap();
    }
    let gw = TestGateway::start_in(
        dir,
        |p, a| {
            format!(
                "{}  ledger_retention_days: 30\n",
                yaml(
                    &mock.url(),
                    p,
                    a,
                    Some(&format!("sqlite://{}", db.display()))
                )
            )
        },
        &[],
    )
    .await;
    // the writer prunes when it starts, then hourly
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sql = llmedge::store::sqlite::Sqlite::open(db.to_str().unwrap()).unwrap();
    loop {
        let ids = sql
            .query("SELECT id FROM llmedge_usage ORDER BY id", &[])
            .unwrap();
        if ids == vec![vec![Val::Text("recent".into())]] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pruned: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = sql
        .query(
            "SELECT CAST(SUM(cost_micros) AS BIGINT) FROM llmedge_usage_daily",
            &[],
        )
        .unwrap();
    assert_eq!(
        kept[0][0].int(),
        Some(14),
        "the rollup keeps the pruned row"
    );
    drop(gw);
}

#[tokio::test]
async fn a_ledger_turned_off_records_nothing() {
    let mock = MockOpenAi::start().await;
    let mut off = TestGateway::start_with(|p, a| {
        format!("{}store:\n  ledger: false\n", yaml(&mock.url(), p, a, None))
    })
    .await;
    assert_eq!(send(&off, CLIENT_KEY, PLAIN).await, 200);
    off.terminate();
    assert!(off.wait_exit(Duration::from_secs(20)).await.success());
    let mut sql =
        llmedge::store::sqlite::Sqlite::open(off.dir().join("llmedge.db").to_str().unwrap())
            .unwrap();
    let rows = sql
        .query("SELECT COUNT(*) FROM llmedge_usage", &[])
        .unwrap();
    assert_eq!(
        rows[0][0].int(),
        Some(0),
        "store.ledger: false records nothing"
    );
}

#[tokio::test]
async fn a_sigterm_with_the_store_away_counts_and_logs_the_rows_it_loses() {
    let mut pg = PostgresServer::start().await;
    let mock = MockOpenAi::start().await;
    let url = pg.url();
    let mut gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, Some(&url))).await;
    pg.stop();
    for _ in 0..3 {
        assert_eq!(send(&gw, CLIENT_KEY, PLAIN).await, 200);
    }
    gw.wait_metric("llmedge_ledger_queue_rows 3").await;
    gw.terminate();
    assert!(gw.wait_exit(Duration::from_secs(30)).await.success());
    let logs = gw.logs();
    assert!(logs.contains("ledger flush gave up"), "{logs}");
    assert!(
        logs.contains("the store was away at exit")
            && logs.contains("llmedge_ledger_dropped_total"),
        "{logs}"
    );
}
