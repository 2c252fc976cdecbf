//! The control plane: keys and tenants managed at runtime through the admin API and the CLI,
//! on the default SQLite store and on a real Postgres shared by two gateways.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::mock::MockOpenAi;
use crate::support::postgres_server::{self, PostgresServer};
use crate::support::{bin, config, post, TestGateway};

pub const ADMIN_KEY: &str = "adm-token-for-tests-0042";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The standard test config with an admin key and `store` (absent: the default SQLite file).
fn yaml(upstream: &str, port: u16, admin: u16, store: Option<&str>) -> String {
    let mut y = config(upstream, port, admin, "");
    y.push_str(&format!(
        "admin:\n  keys: [\"sha256:{}\"]\n",
        sha256_hex(ADMIN_KEY)
    ));
    if let Some(url) = store {
        y.push_str(&format!(
            "store:\n  url: \"{url}\"\n  cache_file: store-cache.json\n"
        ));
    }
    y
}

/// One admin API call; `token` None sends no Authorization.
async fn admin(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{}{path}", gw.admin);
    let mut req = reqwest::Client::new().request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn ok(gw: &TestGateway, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = admin(gw, method, path, body, Some(ADMIN_KEY)).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

async fn chat(gw: &TestGateway, key: &str) -> u16 {
    let body = r#"{"model":"mock/echo","messages":[{"role":"user","content":"hi"}]}"#;
    post(gw, "/v1/chat/completions", key, body)
        .await
        .status()
        .as_u16()
}

/// Polls `gw` until `key` answers `want`, for at most `limit`; returns how long it took.
async fn until_status(gw: &TestGateway, key: &str, want: u16, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = chat(gw, key).await;
        if got == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "key still answers {got}, not {want}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `{id}` and the secret of a key made by `POST /admin/v1/keys` with `body`.
async fn create(gw: &TestGateway, body: Value) -> (String, String) {
    let v = ok(gw, "POST", "/admin/v1/keys", Some(body)).await;
    (v["id"].as_str().unwrap().to_string(), secret(&v))
}

/// The status and `error.param`/`error.code` of an admin call with the admin key.
async fn refused(gw: &TestGateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (s, v) = admin(gw, method, path, body, Some(ADMIN_KEY)).await;
    (s, v["error"].clone())
}

fn secret(v: &Value) -> String {
    v["key"]
        .as_str()
        .expect("the creating response shows the secret")
        .to_string()
}

#[tokio::test]
async fn admin_api_refuses_missing_wrong_and_client_keys() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let client = crate::support::CLIENT_KEY;
    for token in [None, Some("wrong"), Some(client)] {
        let (s, v) = admin(&gw, "GET", "/admin/v1/keys", None, token).await;
        assert_eq!(s, 401, "{token:?}");
        assert_eq!(v["error"]["code"], "invalid_admin_key");
    }
}

#[tokio::test]
async fn admin_api_names_bad_fields_and_refuses_conflicts() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let bad = [
        (json!({"rpm": 5}), "rpm"),
        (json!({"limits": {"rpm": -1}}), "limits.rpm"),
        (json!({"limits": {"tpm": "lots"}}), "limits.tpm"),
        (json!({"pools": ["nowhere"]}), "pools[0]"),
        (json!({"models": ["bad glob"]}), "models[0]"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
    ];
    for (extra, param) in bad {
        let mut body = json!({"name": "a", "tenant": "t"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, e) = refused(&gw, "POST", "/admin/v1/keys", Some(body)).await;
        assert_eq!((s, e["param"].as_str()), (400, Some(param)), "{e}");
    }
    let body = json!({"name": "ci", "tenant": "acme"});
    create(&gw, body.clone()).await;
    let (s, e) = refused(&gw, "POST", "/admin/v1/keys", Some(body)).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("conflict")), "{e}");
    let chosen = json!({"name": "moved", "tenant": "acme", "key": crate::support::CLIENT_KEY});
    let (s, _) = refused(&gw, "POST", "/admin/v1/keys", Some(chosen)).await;
    assert_eq!(s, 409, "a file key's secret cannot go into the store");
    let (s, e) = refused(&gw, "PATCH", "/admin/v1/keys/key_none", Some(json!({}))).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")));
}

/// Limits counted before a `PATCH` of them still count after it.
async fn counters_carry_over_a_patch(gw: &TestGateway, id: &str, key: &str) {
    assert_eq!(
        chat(gw, key).await,
        200,
        "applies at once where it was made"
    );
    assert_eq!(chat(gw, key).await, 200);
    assert_eq!(chat(gw, key).await, 429, "rpm 2");
    let path = format!("/admin/v1/keys/{id}");
    let patched = ok(gw, "PATCH", &path, Some(json!({"limits": {"rpm": 3}}))).await;
    assert_eq!(patched["limits"]["rpm"], 3);
    assert_eq!(
        chat(gw, key).await,
        200,
        "the two requests counted carry over"
    );
    assert_eq!(chat(gw, key).await, 429);
    ok(gw, "PATCH", &path, Some(json!({"limits": null}))).await;
}

/// Rotates with an hour's grace, then without; returns the three secrets in order.
async fn rotations(gw: &TestGateway, id: &str, first: String) -> [String; 3] {
    let path = format!("/admin/v1/keys/{id}/rotate");
    let rotated = ok(gw, "POST", &path, Some(json!({"grace_secs": 3600}))).await;
    let second = secret(&rotated);
    assert_eq!(
        chat(gw, &first).await,
        200,
        "the old secret works during its grace"
    );
    assert_eq!(chat(gw, &second).await, 200);
    assert_eq!(rotated["retiring_secrets"].as_array().unwrap().len(), 1);
    let third = secret(&ok(gw, "POST", &path, None).await);
    assert_eq!(
        chat(gw, &first).await,
        401,
        "grace 0 ends every older secret"
    );
    assert_eq!(chat(gw, &second).await, 401);
    assert_eq!(chat(gw, &third).await, 200);
    [first, second, third]
}

/// Listings, the key, tenants and the audit: no secret, not even in part.
async fn listings_hold_no_secret(gw: &TestGateway, id: &str, secrets: &[String]) {
    let listing = ok(gw, "GET", "/admin/v1/keys?tenant=team", None).await;
    assert_eq!(listing["data"][0]["id"], id);
    assert!(listing["data"][0]["hint"]
        .as_str()
        .unwrap()
        .starts_with("sk-…"));
    let shown = ok(gw, "GET", &format!("/admin/v1/keys/{id}"), None).await;
    let tenants = ok(gw, "GET", "/admin/v1/tenants", None).await;
    let names: Vec<&Value> = tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["name"])
        .collect();
    assert!(names.contains(&&json!("team")), "the key made its tenant");
    let audit = ok(gw, "GET", "/admin/v1/audit", None).await;
    assert_eq!(audit["data"][0]["action"], "key.rotate");
    assert!(audit["data"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin:"));
    let everything = format!("{listing}{shown}{tenants}{audit}");
    for s in secrets {
        assert!(!everything.contains(&s[3..]), "a listing shows a secret");
    }
}

/// Every `llmedge.db*` file of `dir`, as text.
fn stored(dir: &std::path::Path) -> String {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("llmedge.db")
        {
            bytes.extend(std::fs::read(&p).unwrap());
        }
    }
    assert!(
        !bytes.is_empty(),
        "the default store is llmedge.db in the working directory"
    );
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn a_key_lives_created_used_patched_rotated_revoked_and_survives_a_restart() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let body = json!({"name": "ci", "tenant": "team", "user": "alice", "models": ["mock/*"], "limits": {"rpm": 2}});
    let (id, first) = create(&gw, body).await;
    counters_carry_over_a_patch(&gw, &id, &first).await;
    let secrets = rotations(&gw, &id, first).await;
    listings_hold_no_secret(&gw, &id, &secrets).await;
    let (dir, logs) = gw.stop_keep().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("llmedge.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the store file is the owner's only");
    }
    let db = stored(dir.path());
    for s in &secrets {
        assert!(!db.contains(&s[3..]), "the database holds a secret");
        assert!(!logs.contains(&s[3..]), "the log shows a secret");
    }
    assert!(
        db.contains(&sha256_hex(&secrets[2])),
        "only its digest is stored"
    );
    let gw = TestGateway::start_in(dir, |p, a| yaml(&mock.url(), p, a, None), &[]).await;
    assert_eq!(
        chat(&gw, &secrets[2]).await,
        200,
        "the key survives a restart"
    );
    ok(&gw, "DELETE", &format!("/admin/v1/keys/{id}"), None).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &secrets[2],
        r#"{"model":"mock/echo"}"#,
    )
    .await;
    let (s, v) = crate::support::error_json(resp).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, _) = refused(&gw, "DELETE", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(s, 404, "a revoked key is revoked once");
    let revoked = ok(&gw, "GET", "/admin/v1/keys?status=revoked", None).await;
    assert_eq!(revoked["data"][0]["status"], "revoked");
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_every_documented_route_answers() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let (s, doc) = admin(&gw, "GET", "/admin/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let in_repo: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/admin/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, in_repo, "the served document is the one in the repo");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "post", "patch", "delete"] {
            if ops.get(m).is_some() {
                documented.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> = llmedge::admin::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served, "routes and document differ");
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "key_none").replace("{name}", "nobody");
        let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH").then(|| json!({}));
        let (s, v) = admin(&gw, method, &concrete, body, Some(ADMIN_KEY)).await;
        let code = v["error"]["code"].as_str();
        assert!(
            s != 405 && code != Some("unknown_path"),
            "{method} {path} is documented but not answered: {s} {v}"
        );
    }
    let (s, v) = admin(&gw, "GET", "/admin/v1/unknown", None, Some(ADMIN_KEY)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_path"))
    );
    let (s, _) = admin(&gw, "PUT", "/admin/v1/keys", None, Some(ADMIN_KEY)).await;
    assert_eq!(s, 405);
}

/// Runs `llmedge <args>` with the admin key in the environment; exit code and stdout.
fn cli(args: &[&str], token: &str) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env("LLMEDGE_ADMIN_KEY", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `llmedge <args> --config <cfg>` with the admin key; its stdout, once it succeeded.
fn cli_ok(cfg: &std::path::Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--config", cfg.to_str().unwrap()]);
    let (code, out, err) = cli(&all, ADMIN_KEY);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

#[tokio::test]
async fn the_cli_drives_keys_and_tenants() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let cfg = gw.config_path();
    let run = |args: &[&str]| cli_ok(&cfg, args);
    let created: Value = serde_json::from_str(&run(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--user",
        "alice",
        "--name",
        "ci",
        "--models",
        "mock/*",
        "--rpm",
        "60",
        "--usd-per-day",
        "5",
        "--json",
    ]))
    .unwrap();
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        secret(&created),
    );
    assert_eq!(
        (
            created["limits"]["rpm"].as_u64(),
            created["budget"]["usd_per_day"].as_f64()
        ),
        (Some(60), Some(5.0))
    );
    assert_eq!(chat(&gw, &key).await, 200);
    let table = run(&["keys", "list", "--tenant", "acme"]);
    assert!(
        table.starts_with("ID ") && table.contains(&id) && table.contains("rpm=60"),
        "{table}"
    );
    assert!(!table.contains(&key[3..]));
    let shown = run(&["keys", "show", &id]);
    assert!(shown.contains("ci") && shown.contains("acme"), "{shown}");
    let updated: Value =
        serde_json::from_str(&run(&["keys", "update", &id, "--tpm", "100000", "--json"])).unwrap();
    assert_eq!(
        updated["limits"],
        json!({"rpm": 60, "tpm": 100000}),
        "flags merge into the limits"
    );
    let rotated = run(&["keys", "rotate", &id, "--grace", "3600"]);
    let new_key = rotated
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("the new secret is printed once")
        .to_string();
    assert_eq!(chat(&gw, &key).await, 200, "grace");
    assert_eq!(chat(&gw, &new_key).await, 200);
    run(&["keys", "revoke", &id]);
    assert_eq!(chat(&gw, &new_key).await, 401);
    run(&[
        "tenants",
        "set",
        "acme",
        "--rpm",
        "600",
        "--usd-per-month",
        "1000",
    ]);
    let tenants = run(&["tenants", "list"]);
    assert!(
        tenants.contains("acme") && tenants.contains("rpm=600"),
        "{tenants}"
    );
    // a second set changes its flag and keeps the rest (the server merges one PATCH)
    run(&["tenants", "set", "acme", "--tpm", "5000"]);
    let tenants = run(&["tenants", "list"]);
    assert!(
        tenants.contains("rpm=600") && tenants.contains("tpm=5000"),
        "{tenants}"
    );
}

#[tokio::test]
async fn a_refused_cli_call_prints_the_server_message_and_exits_non_zero() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let cfg = gw.config_path();
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = cli(&["keys", "list", "--config", cfg], "not-an-admin-key");
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("incorrect admin key"),
        "{err}"
    );
    let (code, _, err) = cli(&["keys", "show", "key_nope", "--config", cfg], ADMIN_KEY);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = cli(&["tenants", "list"], ADMIN_KEY);
    assert_eq!(code, 64, "no --config and no --admin-url: {err}");
}

#[tokio::test]
async fn a_store_key_with_a_file_key_secret_or_a_newer_schema_refuses_to_start() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let moved = "sk-moved-into-the-store-77";
    let v = ok(
        &gw,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name": "m", "tenant": "acme", "key": moved})),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(chat(&gw, moved).await, 200);
    let (dir, _) = gw.stop_keep().await;
    let cfg = dir.path().join("llmedge.yaml");
    let with_clash = std::fs::read_to_string(&cfg).unwrap().replace(
        "keys:\n",
        &format!("keys:\n  - key: \"{moved}\"\n    tenant: acme\n"),
    );
    std::fs::write(&cfg, with_clash).unwrap();
    let run = |dir: &std::path::Path| {
        std::process::Command::new("timeout")
            .arg("20")
            .arg(bin())
            .arg("--config")
            .arg(dir.join("llmedge.yaml"))
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let out = run(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains(&id) && err.contains("same secret"), "{err}");
    assert!(!err.contains(moved));

    let db = dir.path().join("llmedge.db");
    let mut sql = llmedge::store::sqlite::Sqlite::open(db.to_str().unwrap()).unwrap();
    use llmedge::store::sql::Sql;
    sql.exec(
        "INSERT INTO llmedge_schema (version, name, applied_at) VALUES (42, 'future', 0)",
        &[],
    )
    .unwrap();
    let out = run(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let line = err
        .lines()
        .find(|l| l.contains("schema"))
        .unwrap_or_default();
    assert!(
        line.contains("version 42, newer than this llmedge knows (2)"),
        "{err}"
    );
}

/// Two gateways on one Postgres (`a`, `b`) in front of `mock`.
async fn fleet(pg: &PostgresServer, mock: &MockOpenAi) -> (TestGateway, TestGateway) {
    let url = pg.url();
    let a = TestGateway::start_with(|p, ad| yaml(&mock.url(), p, ad, Some(&url))).await;
    let b = TestGateway::start_with(|p, ad| yaml(&mock.url(), p, ad, Some(&url))).await;
    (a, b)
}

#[tokio::test]
async fn two_gateways_on_one_postgres_see_each_others_changes_within_a_second() {
    let pg = PostgresServer::start().await;
    let mock = MockOpenAi::start().await;
    let (a, b) = fleet(&pg, &mock).await;
    let (id, key) = create(&a, json!({"name": "ci", "tenant": "acme"})).await;
    assert_eq!(chat(&a, &key).await, 200);
    let took = until_status(&b, &key, 200, Duration::from_secs(1)).await;
    eprintln!("created on a, working on b after {took:?}");
    ok(&a, "DELETE", &format!("/admin/v1/keys/{id}"), None).await;
    let took = until_status(&b, &key, 401, Duration::from_secs(1)).await;
    eprintln!("revoked on a, refused on b after {took:?}");
    let (_, second) = create(&b, json!({"name": "two", "tenant": "acme"})).await;
    until_status(&a, &second, 200, Duration::from_secs(1)).await;
    concurrent_writes_all_land(&a, &b).await;
    let (_, ready) = admin(&b, "GET", "/readyz", None, None).await;
    assert_eq!(
        (&ready["store"]["up"], &ready["store"]["backend"]),
        (&json!(true), &json!("postgres"))
    );
    let rows = pg.query("SELECT digest FROM llmedge_key_secrets");
    assert!(rows
        .iter()
        .all(|r| r[0].as_deref().is_some_and(|d| d.len() == 64)));
    let dump = format!(
        "{:?}{:?}",
        pg.query("SELECT * FROM llmedge_keys"),
        pg.query("SELECT * FROM llmedge_audit")
    );
    assert!(
        !dump.contains(&second[3..]) && !dump.contains(&key[3..]),
        "a secret in the database"
    );
    for logs in [a.logs(), b.logs()] {
        assert!(
            !logs.contains(postgres_server::PASSWORD),
            "the database password is logged"
        );
        assert!(!logs.contains(&second[3..]));
    }
}

/// Two gateways PATCH one key at once, each a different field, and race a rotation against a
/// revocation: every change lands, none is lost, nothing deadlocks.
async fn concurrent_writes_all_land(a: &TestGateway, b: &TestGateway) {
    let (id, _) = create(a, json!({"name": "race", "tenant": "acme"})).await;
    let path = format!("/admin/v1/keys/{id}");
    let mut calls = Vec::new();
    for i in 0..6u64 {
        let (gw, body) = if i % 2 == 0 {
            (a, json!({"limits": {"rpm": 100 + i}}))
        } else {
            (b, json!({"budget": {"usd_per_day": i}}))
        };
        calls.push(refused(gw, "PATCH", &path, Some(body)));
    }
    for (s, e) in futures::future::join_all(calls).await {
        assert_eq!(s, 200, "{e}");
    }
    let key = ok(a, "GET", &path, None).await;
    assert!(
        key["limits"]["rpm"].as_u64().is_some() && key["budget"]["usd_per_day"].is_number(),
        "{key}"
    );
    let rotate_path = format!("{path}/rotate");
    let rotate = refused(a, "POST", &rotate_path, None);
    let revoke = refused(b, "DELETE", &path, None);
    let ((s1, e1), (s2, e2)) = futures::future::join(rotate, revoke).await;
    assert!(s1 != 500 && s2 != 500, "{e1} {e2}");
}

#[tokio::test]
async fn a_postgres_outage_keeps_requests_served_and_a_start_during_it_uses_the_cache() {
    let mut pg = PostgresServer::start().await;
    let mock = MockOpenAi::start().await;
    let (a, b) = fleet(&pg, &mock).await;
    let (_, key) = create(&a, json!({"name": "ci", "tenant": "acme"})).await;
    until_status(&b, &key, 200, Duration::from_secs(1)).await;
    pg.stop();
    b.wait_metric("llmedge_store_up 0").await;
    assert_eq!(
        chat(&b, &key).await,
        200,
        "keys already loaded keep working"
    );
    let (s, e) = refused(
        &a,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name": "x", "tenant": "acme"})),
    )
    .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (503, Some("store_unavailable")),
        "{e}"
    );
    let (_, ready) = admin(&b, "GET", "/readyz", None, None).await;
    assert_eq!(ready["store"]["up"], false);
    let (dir, _) = b.stop_keep().await;
    let url = pg.url();
    let b = TestGateway::start_in(dir, |p, ad| yaml(&mock.url(), p, ad, Some(&url)), &[]).await;
    b.wait_log("store unreachable at start").await;
    assert_eq!(chat(&b, &key).await, 200, "the cached store key works");
    pg.restart().await;
    a.wait_metric("llmedge_store_up 1").await;
    b.wait_metric("llmedge_store_up 1").await;
    let (_, other) = create(&a, json!({"name": "after", "tenant": "acme"})).await;
    until_status(&b, &other, 200, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_revoked_key_lets_its_stream_finish_and_an_expired_key_stops() {
    use futures::StreamExt;
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let (id, key) = create(&gw, json!({"name": "s", "tenant": "acme"})).await;
    let body =
        r#"{"model":"mock/gated","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = post(&gw, "/v1/chat/completions", &key, body).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    ok(&gw, "DELETE", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!(
        chat(&gw, &key).await,
        401,
        "revoked for new requests at once"
    );
    mock.open_gate();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("[DONE]"),
        "the stream in flight finished"
    );

    let now = llmedge::clock::Clock::now_ms(&llmedge::clock::SystemClock);
    let soon = llmedge::clock::rfc3339(now + 1_500);
    let (_, short) = create(
        &gw,
        json!({"name": "e", "tenant": "acme", "expires_at": soon}),
    )
    .await;
    assert_eq!(chat(&gw, &short).await, 200);
    until_status(&gw, &short, 401, Duration::from_secs(5)).await;

    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(r#""type":"audit""#) && l.contains("key.revoke"))
        .unwrap_or_else(|| panic!("no audit line:\n{logs}"));
    let v: Value = serde_json::from_str(line).expect("the audit line is one JSON object");
    assert_eq!(
        (v["target"].as_str(), v["after"]["status"].as_str()),
        (Some(id.as_str()), Some("revoked"))
    );
}

#[tokio::test]
async fn a_store_tenant_limit_applies_to_its_keys_at_once_and_a_file_tenant_is_read_only() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| {
        let y = yaml(&mock.url(), p, a, None);
        format!("{y}tenants:\n  fixed: {{limits: {{rpm: 5}}}}\n")
    })
    .await;
    let (_, key) = create(&gw, json!({"name": "a", "tenant": "squad"})).await;
    assert_eq!(chat(&gw, &key).await, 200);
    let t = ok(
        &gw,
        "PUT",
        "/admin/v1/tenants/squad",
        Some(json!({"limits": {"rpm": 2}})),
    )
    .await;
    assert_eq!(
        (t["source"].as_str(), t["limits"]["rpm"].as_u64()),
        (Some("store"), Some(2))
    );
    assert_eq!(
        chat(&gw, &key).await,
        200,
        "the tenant's count so far carries over"
    );
    assert_eq!(
        chat(&gw, &key).await,
        429,
        "the tenant's rpm 2 applies to its key"
    );
    let (s, e) = refused(&gw, "DELETE", "/admin/v1/tenants/squad", None).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (409, Some("conflict")),
        "it has a live key"
    );
    let (s, e) = refused(
        &gw,
        "PATCH",
        "/admin/v1/tenants/fixed",
        Some(json!({"limits": {"rpm": 9}})),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    let fixed = ok(&gw, "GET", "/admin/v1/tenants/fixed", None).await;
    assert_eq!(
        (fixed["source"].as_str(), fixed["limits"]["rpm"].as_u64()),
        (Some("config"), Some(5))
    );
}

#[tokio::test]
async fn a_schema_migrated_past_a_running_gateway_keeps_keys_working_and_refuses_writes() {
    use llmedge::store::sql::Sql;
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let (_, key) = create(&gw, json!({"name": "k", "tenant": "acme"})).await;
    let db = gw.dir().join("llmedge.db");
    let mut sql = llmedge::store::sqlite::Sqlite::open(db.to_str().unwrap()).unwrap();
    let future = "INSERT INTO llmedge_schema (version, name, applied_at) VALUES (7, 'future', 0)";
    sql.exec(future, &[]).unwrap();
    gw.wait_log("admin writes refused").await;
    gw.wait_metric("llmedge_store_up 0").await;
    assert_eq!(chat(&gw, &key).await, 200, "the keys loaded keep working");
    let (s, e) = refused(
        &gw,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name": "x", "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 503, "{e}");
    assert!(e["message"].as_str().is_some(), "{e}");
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_and_a_plain_connection_is_refused() {
    crate::support::install_crypto();
    let pg = PostgresServer::start_tls().await;
    let mock = MockOpenAi::start().await;
    let ca = pg.ca().unwrap().to_str().unwrap().to_string();
    let url = format!("{}?sslmode=verify-full", pg.url());
    let gw = TestGateway::start_with(|p, a| {
        let y = yaml(&mock.url(), p, a, Some(&url));
        format!("{y}  tls: {{ca_file: \"{ca}\"}}\n")
    })
    .await;
    let (_, key) = create(&gw, json!({"name": "tls", "tenant": "acme"})).await;
    assert_eq!(chat(&gw, &key).await, 200);
    let ssl = pg.query("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'llmedge'");
    assert_ne!(
        ssl[0][0].as_deref(),
        Some("0"),
        "the gateway's connection is TLS"
    );
    let (code, err) = start_alone(&format!("{}?sslmode=disable", pg.url()), "");
    assert_eq!(
        code,
        Some(1),
        "a server that wants TLS refuses a plain connection: {err}"
    );
    let (code, err) = start_alone(&format!("{}?sslmode=require", pg.url()), "");
    assert_eq!(
        code,
        Some(1),
        "the system roots do not know the test CA: {err}"
    );
    assert!(err.contains("certificate"), "{err}");
    let wrong = pg
        .url()
        .replace(postgres_server::PASSWORD, "not-the-password");
    let tls = format!(", tls: {{ca_file: '{ca}'}}");
    let (code, err) = start_alone(&format!("{wrong}?sslmode=require"), &tls);
    assert_eq!(
        code,
        Some(1),
        "a wrong password is a config error, not an outage: {err}"
    );
    assert!(
        err.contains("28P01") && err.contains("password authentication failed"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
}

/// A gateway on `store: {url: <url><extra>}` alone, run to its exit (at most 20 s: one that
/// wrongly starts is ended by `timeout` and fails the test); exit code and stderr.
fn start_alone(url: &str, extra: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let yaml = format!(
        "server: {{listen: '127.0.0.1:0', admin_listen: null}}\nstore: {{url: '{url}'{extra}}}\n"
    );
    std::fs::write(&cfg, yaml).unwrap();
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(bin())
        .arg("--config")
        .arg(&cfg)
        .current_dir(dir.path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
