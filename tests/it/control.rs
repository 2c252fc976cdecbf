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

fn secret(v: &Value) -> String {
    v["key"]
        .as_str()
        .expect("the creating response shows the secret")
        .to_string()
}

#[tokio::test]
async fn admin_api_needs_an_admin_key_and_names_bad_fields() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let (s, v) = admin(&gw, "GET", "/admin/v1/keys", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_admin_key"))
    );
    let (s, _) = admin(&gw, "GET", "/admin/v1/keys", None, Some("wrong")).await;
    assert_eq!(s, 401);
    let (s, _) = admin(
        &gw,
        "GET",
        "/admin/v1/keys",
        None,
        Some(crate::support::CLIENT_KEY),
    )
    .await;
    assert_eq!(s, 401, "a client key is not an admin key");
    let bad = [
        (json!({"name": "a", "tenant": "t", "rpm": 5}), "rpm"),
        (
            json!({"name": "a", "tenant": "t", "limits": {"rpm": -1}}),
            "limits.rpm",
        ),
        (
            json!({"name": "a", "tenant": "t", "limits": {"tpm": "lots"}}),
            "limits.tpm",
        ),
        (
            json!({"name": "a", "tenant": "t", "pools": ["nowhere"]}),
            "pools[0]",
        ),
        (
            json!({"name": "a", "tenant": "t", "models": ["bad glob"]}),
            "models[0]",
        ),
        (
            json!({"name": "a", "tenant": "t", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ];
    for (body, param) in bad {
        let (s, v) = admin(
            &gw,
            "POST",
            "/admin/v1/keys",
            Some(body.clone()),
            Some(ADMIN_KEY),
        )
        .await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}: {v}"
        );
    }
    let body = json!({"name": "ci", "tenant": "acme"});
    ok(&gw, "POST", "/admin/v1/keys", Some(body.clone())).await;
    let (s, v) = admin(&gw, "POST", "/admin/v1/keys", Some(body), Some(ADMIN_KEY)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let chosen = json!({"name": "moved", "tenant": "acme", "key": crate::support::CLIENT_KEY});
    let (s, _) = admin(&gw, "POST", "/admin/v1/keys", Some(chosen), Some(ADMIN_KEY)).await;
    assert_eq!(s, 409, "a file key's secret cannot go into the store");
    let (s, _) = admin(
        &gw,
        "PUT",
        "/admin/v1/tenants/acme",
        Some(json!({})),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        s, 200,
        "acme is not in this file's tenants: the store may set it"
    );
}

#[tokio::test]
async fn a_key_lives_created_used_patched_rotated_revoked_and_survives_a_restart() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let created = ok(
        &gw,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name": "ci", "tenant": "team", "user": "alice", "models": ["mock/*"], "limits": {"rpm": 2}})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let first = secret(&created);
    assert_eq!(
        chat(&gw, &first).await,
        200,
        "applies at once on the gateway that took it"
    );
    assert_eq!(chat(&gw, &first).await, 200);
    assert_eq!(chat(&gw, &first).await, 429, "rpm 2");
    let patched = ok(
        &gw,
        "PATCH",
        &format!("/admin/v1/keys/{id}"),
        Some(json!({"limits": {"rpm": 3}})),
    )
    .await;
    assert_eq!(patched["limits"]["rpm"], 3);
    assert_eq!(
        chat(&gw, &first).await,
        200,
        "the two requests already counted carry over"
    );
    assert_eq!(chat(&gw, &first).await, 429);
    ok(
        &gw,
        "PATCH",
        &format!("/admin/v1/keys/{id}"),
        Some(json!({"limits": null})),
    )
    .await;
    let rotated = ok(
        &gw,
        "POST",
        &format!("/admin/v1/keys/{id}/rotate"),
        Some(json!({"grace_secs": 3600})),
    )
    .await;
    let second = secret(&rotated);
    assert_eq!(
        chat(&gw, &first).await,
        200,
        "the old secret works during its grace"
    );
    assert_eq!(chat(&gw, &second).await, 200);
    assert_eq!(rotated["retiring_secrets"].as_array().unwrap().len(), 1);
    let third = secret(&ok(&gw, "POST", &format!("/admin/v1/keys/{id}/rotate"), None).await);
    assert_eq!(
        chat(&gw, &first).await,
        401,
        "grace 0 ends every older secret"
    );
    assert_eq!(chat(&gw, &second).await, 401);
    assert_eq!(chat(&gw, &third).await, 200);
    let listing = ok(&gw, "GET", "/admin/v1/keys?tenant=team", None).await;
    assert_eq!(listing["data"][0]["id"], id.as_str());
    assert!(listing["data"][0]["hint"]
        .as_str()
        .unwrap()
        .starts_with("sk-…"));
    let shown = ok(&gw, "GET", &format!("/admin/v1/keys/{id}"), None).await;
    let tenants = ok(&gw, "GET", "/admin/v1/tenants", None).await;
    assert!(tenants["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "team"));
    let audit = ok(&gw, "GET", "/admin/v1/audit", None).await;
    let everything = format!("{listing}{shown}{tenants}{audit}");
    for s in [&first, &second, &third] {
        assert!(!everything.contains(s.as_str()), "a listing shows a secret");
        assert!(
            !everything.contains(&s[3..]),
            "a listing shows part of a secret"
        );
    }
    assert_eq!(audit["data"][0]["action"], "key.rotate");
    assert!(audit["data"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin:"));

    let (dir, logs) = gw.stop_keep().await;
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("llmedge.db")
        {
            stored.extend(std::fs::read(&p).unwrap());
        }
    }
    assert!(
        !stored.is_empty(),
        "the default store is llmedge.db in the working directory"
    );
    let stored = String::from_utf8_lossy(&stored);
    for s in [&first, &second, &third] {
        assert!(!stored.contains(&s[3..]), "the database holds a secret");
        assert!(!logs.contains(&s[3..]), "the log shows a secret");
    }
    assert!(
        stored.contains(&sha256_hex(&third)),
        "only its digest is stored"
    );
    let gw = TestGateway::start_in(dir, |p, a| yaml(&mock.url(), p, a, None), &[]).await;
    assert_eq!(chat(&gw, &third).await, 200, "the key survives a restart");
    ok(&gw, "DELETE", &format!("/admin/v1/keys/{id}"), None).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &third,
        r#"{"model":"mock/echo"}"#,
    )
    .await;
    let (s, v) = crate::support::error_json(resp).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (s, _) = admin(
        &gw,
        "DELETE",
        &format!("/admin/v1/keys/{id}"),
        None,
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(s, 404, "a revoked key is revoked once");
    let revoked = ok(&gw, "GET", &format!("/admin/v1/keys?status=revoked"), None).await;
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

#[tokio::test]
async fn the_cli_drives_keys_and_tenants() {
    let mock = MockOpenAi::start().await;
    let gw = TestGateway::start_with(|p, a| yaml(&mock.url(), p, a, None)).await;
    let cfg = gw.config_path();
    let cfg = cfg.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", cfg]);
        let (code, out, err) = cli(&all, ADMIN_KEY);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
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
    let id = created["id"].as_str().unwrap().to_string();
    let key = secret(&created);
    assert_eq!(created["limits"]["rpm"], 60);
    assert_eq!(created["budget"]["usd_per_day"], 5.0);
    assert_eq!(chat(&gw, &key).await, 200);
    let table = run(&["keys", "list", "--tenant", "acme"]);
    assert!(
        table.starts_with("ID ") && table.contains(&id) && table.contains("rpm=60"),
        "{table}"
    );
    assert!(!table.contains(&key[3..]));
    let shown = run(&["keys", "show", &id]);
    assert!(shown.contains("ci") && shown.contains("acme"), "{shown}");
    let updated = run(&["keys", "update", &id, "--tpm", "100000", "--json"]);
    let updated: Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(
        updated["limits"],
        json!({"rpm": 60, "tpm": 100000}),
        "flags merge into the limits"
    );
    let rotated = run(&["keys", "rotate", &id, "--grace", "3600"]);
    let new_key = rotated
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("the rotated secret is printed once")
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
    let (code, _, err) = cli(&["keys", "list", "--config", cfg], "not-an-admin-key");
    assert_eq!(code, 1);
    assert!(
        err.contains("401") && err.contains("incorrect admin key"),
        "{err}"
    );
    let (code, _, err) = cli(&["keys", "show", "key_nope", "--config", cfg], ADMIN_KEY);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
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
        std::process::Command::new(bin())
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
        line.contains("version 42, newer than this llmedge knows (1)"),
        "{err}"
    );
}

#[tokio::test]
async fn two_gateways_on_one_postgres_see_each_others_changes_within_a_second() {
    let mut pg = PostgresServer::start().await;
    let mock = MockOpenAi::start().await;
    let url = pg.url();
    let a = TestGateway::start_with(|p, ad| yaml(&mock.url(), p, ad, Some(&url))).await;
    let b = TestGateway::start_with(|p, ad| yaml(&mock.url(), p, ad, Some(&url))).await;
    let created = ok(
        &a,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name": "ci", "tenant": "acme"})),
    )
    .await;
    let key = secret(&created);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(chat(&a, &key).await, 200);
    let took = until_status(&b, &key, 200, Duration::from_secs(1)).await;
    eprintln!("created on a, working on b after {took:?}");
    let (_, ready) = admin(&b, "GET", "/readyz", None, None).await;
    assert_eq!(ready["store"]["up"], true);
    assert_eq!(ready["store"]["backend"], "postgres");

    // the store goes away: requests keep being served, writes answer 503
    pg.stop();
    b.wait_metric("llmedge_store_up 0").await;
    assert_eq!(
        chat(&b, &key).await,
        200,
        "keys already loaded keep working"
    );
    let (s, v) = admin(
        &a,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name": "x", "tenant": "acme"})),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    let (_, ready) = admin(&b, "GET", "/readyz", None, None).await;
    assert_eq!(ready["store"]["up"], false);
    pg.restart().await;
    a.wait_metric("llmedge_store_up 1").await;

    ok(&a, "DELETE", &format!("/admin/v1/keys/{id}"), None).await;
    let took = until_status(&b, &key, 401, Duration::from_secs(1)).await;
    eprintln!("revoked on a, refused on b after {took:?}");
    let second = secret(
        &ok(
            &b,
            "POST",
            "/admin/v1/keys",
            Some(json!({"name": "two", "tenant": "acme"})),
        )
        .await,
    );
    until_status(&a, &second, 200, Duration::from_secs(1)).await;

    // a gateway that starts while the store is down serves what it last saw
    let (dir, logs_b) = b.stop_keep().await;
    pg.stop();
    let b = TestGateway::start_in(dir, |p, ad| yaml(&mock.url(), p, ad, Some(&url)), &[]).await;
    b.wait_log("store unreachable at start").await;
    assert_eq!(chat(&b, &second).await, 200, "the cached store key works");
    assert_eq!(chat(&b, &key).await, 401);
    let (_, ready) = admin(&b, "GET", "/readyz", None, None).await;
    assert_eq!(ready["store"]["up"], false);
    pg.restart().await;
    b.wait_metric("llmedge_store_up 1").await;
    let rows = pg.query("SELECT digest FROM llmedge_key_secrets");
    assert!(rows
        .iter()
        .all(|r| r[0].as_deref().is_some_and(|d| d.len() == 64)));
    let dump = format!("{:?}", pg.query("SELECT * FROM llmedge_keys"));
    assert!(!dump.contains(&second[3..]) && !dump.contains(&key[3..]));
    for logs in [logs_b, a.logs(), b.logs()] {
        assert!(
            !logs.contains(postgres_server::PASSWORD),
            "the database password is logged"
        );
        assert!(!logs.contains(&second[3..]));
    }
}
