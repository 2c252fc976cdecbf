//! `llmedge keys …` and `llmedge tenants …`: calls to a running gateway's admin API, printed as
//! tables (or the server's JSON with `--json`). A refused call prints the server's message and
//! exits non-zero.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cli::{
    AdminConn, CreateKey, KeyAccess, KeysArgs, KeysCommand, RuleFlags, TenantsArgs, TenantsCommand,
    UpdateKey, UsageArgs,
};

/// The environment variable the admin key is read from (never a flag: flags end up in shell
/// history and `ps`).
pub const ADMIN_KEY_ENV: &str = "LLMEDGE_ADMIN_KEY";
const EXIT_REFUSED: i32 = 1;
const EXIT_USAGE: i32 = 64;

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// Why a call failed: a usage problem (64) or the server's refusal (1).
enum Failure {
    Usage(String),
    Refused(String),
}

impl Client {
    fn new(conn: &AdminConn, config: Option<&str>) -> Result<Self, Failure> {
        let base = match (&conn.admin_url, config) {
            (Some(u), _) => u.trim_end_matches('/').to_string(),
            (None, Some(path)) => format!("http://{}", admin_listen(path)?),
            (None, None) => {
                return Err(Failure::Usage(
                    "give --admin-url URL or --config PATH (its server.admin_listen)".into(),
                ))
            }
        };
        let token = std::env::var(ADMIN_KEY_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure::Usage(format!("set {ADMIN_KEY_ENV} to an admin key")))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self { base, token, agent })
    }

    /// A GET answered in `accept` (CSV), as text.
    fn call_text(&self, path: &str, accept: &str) -> Result<String, Failure> {
        let url = format!("{}{path}", self.base);
        let sent = self
            .agent
            .get(&url)
            .header("authorization", &format!("Bearer {}", self.token))
            .header("accept", accept)
            .call();
        answer(&url, sent)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            (m, b) => {
                let text = b.map(Value::to_string).unwrap_or_default();
                let req = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                req.header("authorization", &auth)
                    .header("content-type", "application/json")
                    .send(text)
            }
        };
        let text = answer(&url, sent)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// The body of a 2xx answer; otherwise the server's message (its OpenAI-shaped error's, or the
/// body) with the status.
fn answer(
    url: &str,
    sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String, Failure> {
    let mut resp = sent.map_err(|e| Failure::Refused(format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| Failure::Refused(format!("{url}: {e}")))?;
    if (200..300).contains(&status) {
        return Ok(text);
    }
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    let msg = v["error"]["message"].as_str().unwrap_or(&text).to_string();
    Err(Failure::Refused(format!("{status}: {msg}")))
}

/// `server.admin_listen` of the config file, read without resolving its secrets.
fn admin_listen(path: &str) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("{path}: {e}")))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| Failure::Usage(format!("{path}: {e}")))?;
    v["server"]["admin_listen"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::Usage(format!("{path}: no server.admin_listen; give --admin-url")))
}

fn out(s: &str) {
    let _ignored = writeln!(std::io::stdout(), "{s}");
}

fn finish(r: Result<(), Failure>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(Failure::Usage(m)) => {
            let _ignored = writeln!(std::io::stderr(), "error: {m}");
            EXIT_USAGE
        }
        Err(Failure::Refused(m)) => {
            let _ignored = writeln!(std::io::stderr(), "error: {m}");
            EXIT_REFUSED
        }
    }
}

/// `rules` applied over `limits` and `budget` objects (the flags given replace their fields).
fn merge_rules(
    rules: &RuleFlags,
    limits: &mut Map<String, Value>,
    budget: &mut Map<String, Value>,
) {
    for (k, v) in [
        ("rpm", rules.rpm),
        ("tpm", rules.tpm),
        ("concurrency", rules.concurrency),
    ] {
        if let Some(v) = v {
            limits.insert(k.into(), v.into());
        }
    }
    for (k, v) in [
        ("usd_per_day", rules.usd_per_day),
        ("usd_per_month", rules.usd_per_month),
    ] {
        if let Some(v) = v {
            budget.insert(k.into(), v.into());
        }
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", compact(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(a) => a.iter().map(compact).collect::<Vec<_>>().join(","),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.iter().map(|r| line(r.clone())));
    lines.join("\n")
}

fn key_row(k: &Value) -> Vec<String> {
    [
        "id",
        "name",
        "tenant",
        "user",
        "hint",
        "status",
        "models",
        "limits",
        "budget",
        "expires_at",
    ]
    .iter()
    .map(|f| compact(&k[*f]))
    .collect()
}

const KEY_HEADER: &[&str] = &[
    "ID", "NAME", "TENANT", "USER", "HINT", "STATUS", "MODELS", "LIMITS", "BUDGET", "EXPIRES",
];

fn show_keys(v: &Value, json_out: bool) {
    if json_out {
        out(&serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = match v["data"].as_array() {
        Some(list) => list.iter().map(key_row).collect(),
        None => vec![key_row(v)],
    };
    out(&table(KEY_HEADER, &rows));
    if let Some(secret) = v["key"].as_str() {
        out(&format!(
            "\nkey: {secret}\n(shown this once: the gateway keeps only its digest)"
        ));
    }
}

/// Sets the fields that are given.
fn set_fields<const N: usize>(body: &mut Value, fields: [(&str, Option<Value>); N]) {
    for (k, v) in fields {
        if let Some(v) = v {
            body[k] = v;
        }
    }
}

fn key_fields(body: &mut Value, a: KeyAccess) {
    set_fields(
        body,
        [
            ("models", a.models.map(Value::from)),
            ("pools", a.pools.map(Value::from)),
            ("expires_at", a.expires_at.map(Value::from)),
        ],
    );
}

/// Every page of `GET /admin/v1/keys?<query>`, as one list.
fn list_all(c: &Client, query: &[String]) -> Result<Value, Failure> {
    let mut data = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.to_vec();
        q.push("limit=1000".into());
        if let Some(cur) = &cursor {
            q.push(format!("cursor={}", encode(cur)));
        }
        let page = c.call("GET", &format!("/admin/v1/keys?{}", q.join("&")), None)?;
        data.extend(page["data"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if !page["has_more"].as_bool().unwrap_or(false) || cursor.is_none() {
            return Ok(json!({"object": "list", "data": data}));
        }
    }
}

/// `{"limits": {...}, "budget": {...}}` of the flags given (each object only when set).
fn rules_body(rules: &RuleFlags) -> Value {
    let (mut limits, mut budget) = (Map::new(), Map::new());
    merge_rules(rules, &mut limits, &mut budget);
    let mut body = json!({});
    set_fields(
        &mut body,
        [
            (
                "limits",
                (!limits.is_empty()).then_some(Value::Object(limits)),
            ),
            (
                "budget",
                (!budget.is_empty()).then_some(Value::Object(budget)),
            ),
        ],
    );
    body
}

fn create(c: &Client, a: CreateKey) -> Result<Value, Failure> {
    let mut body = rules_body(&a.rules);
    set_fields(
        &mut body,
        [
            ("tenant", Some(Value::from(a.tenant))),
            ("name", Some(Value::from(a.name))),
            ("user", a.user.map(Value::from)),
        ],
    );
    key_fields(&mut body, a.access);
    c.call("POST", "/admin/v1/keys", Some(&body))
}

/// The flags given change those fields; the server merges limits and budget into what the key
/// has (one PATCH: no read-modify-write to race another change).
fn update(c: &Client, a: UpdateKey) -> Result<Value, Failure> {
    let path = format!("/admin/v1/keys/{}", encode(&a.id));
    let mut body = rules_body(&a.rules);
    set_fields(&mut body, [("name", a.name.map(Value::from))]);
    key_fields(&mut body, a.access);
    c.call("PATCH", &path, Some(&body))
}

pub fn keys(args: KeysArgs, config: Option<&str>) -> i32 {
    finish(Client::new(&args.conn, config).and_then(|c| run_keys(&c, args.command, args.conn.json)))
}

fn run_keys(c: &Client, cmd: KeysCommand, json_out: bool) -> Result<(), Failure> {
    let v = match cmd {
        KeysCommand::Create(args) => create(c, args)?,
        KeysCommand::List {
            tenant,
            user,
            status,
        } => {
            let q: Vec<String> = [("tenant", tenant), ("user", user), ("status", status)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(&v))))
                .collect();
            list_all(c, &q)?
        }
        KeysCommand::Show { id } => {
            c.call("GET", &format!("/admin/v1/keys/{}", encode(&id)), None)?
        }
        KeysCommand::Update(args) => update(c, args)?,
        KeysCommand::Revoke { id } => {
            c.call("DELETE", &format!("/admin/v1/keys/{}", encode(&id)), None)?
        }
        KeysCommand::Rotate { id, grace } => c.call(
            "POST",
            &format!("/admin/v1/keys/{}/rotate", encode(&id)),
            Some(&json!({ "grace_secs": grace })),
        )?,
    };
    show_keys(&v, json_out);
    Ok(())
}

fn tenant_row(t: &Value) -> Vec<String> {
    ["name", "source", "limits", "budget"]
        .iter()
        .map(|f| compact(&t[*f]))
        .collect()
}

pub fn tenants(args: TenantsArgs, config: Option<&str>) -> i32 {
    finish(
        Client::new(&args.conn, config).and_then(|c| run_tenants(&c, args.command, args.conn.json)),
    )
}

fn run_tenants(c: &Client, cmd: TenantsCommand, json_out: bool) -> Result<(), Failure> {
    let v = match cmd {
        TenantsCommand::Set { name, rules } => {
            let path = format!("/admin/v1/tenants/{}", encode(&name));
            // the flags given change those fields and the server merges them into the rest
            // (one PATCH, as `keys update`: no read-modify-write to race another change); a
            // tenant that does not exist yet is created with them
            let body = rules_body(&rules);
            match c.call("PATCH", &path, Some(&body)) {
                Err(Failure::Refused(m)) if m.starts_with("404") => {
                    c.call("PUT", &path, Some(&body))?
                }
                other => other?,
            }
        }
        TenantsCommand::List => c.call("GET", "/admin/v1/tenants", None)?,
        TenantsCommand::Show { name } => {
            c.call("GET", &format!("/admin/v1/tenants/{}", encode(&name)), None)?
        }
        TenantsCommand::Delete { name } => c.call(
            "DELETE",
            &format!("/admin/v1/tenants/{}", encode(&name)),
            None,
        )?,
    };
    if json_out {
        out(&serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = match v["data"].as_array() {
        Some(list) => list.iter().map(tenant_row).collect(),
        None => vec![tenant_row(&v)],
    };
    out(&table(&["NAME", "SOURCE", "LIMITS", "BUDGET"], &rows));
    Ok(())
}

/// `7d`, `12h`, `30m` as milliseconds.
fn span_ms(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// The query string of `llmedge usage`.
fn usage_query(a: &UsageArgs) -> Result<String, Failure> {
    let mut q: Vec<String> = Vec::new();
    if let Some(s) = &a.since {
        let back =
            span_ms(s).ok_or_else(|| Failure::Usage(format!("--since {s}: use 7d, 12h or 30m")))?;
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        q.push(format!(
            "from={}",
            encode(&crate::clock::rfc3339(now.saturating_sub(back)))
        ));
    }
    for (k, v) in [
        ("from", &a.from),
        ("to", &a.to),
        ("tenant", &a.tenant),
        ("key", &a.key),
        ("model", &a.model),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", encode(v)));
        }
    }
    if !a.by.is_empty() {
        q.push(format!("group_by={}", encode(&a.by.join(","))));
    }
    Ok(q.join("&"))
}

pub fn usage(args: UsageArgs, config: Option<&str>) -> i32 {
    finish(Client::new(&args.conn, config).and_then(|c| run_usage(&c, &args)))
}

fn run_usage(c: &Client, a: &UsageArgs) -> Result<(), Failure> {
    let path = format!("/admin/v1/usage?{}", usage_query(a)?);
    if a.csv {
        out(c.call_text(&path, "text/csv")?.trim_end());
        return Ok(());
    }
    let v = c.call("GET", &path, None)?;
    if a.conn.json {
        out(&serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    let groups: Vec<String> = v["group_by"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let fields: Vec<&str> = groups
        .iter()
        .map(String::as_str)
        .chain([
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
        ])
        .collect();
    let header: Vec<String> = fields.iter().map(|f| f.to_uppercase()).collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| fields.iter().map(|f| compact(&r[*f])).collect())
        .collect();
    out(&table(&header, &rows));
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_values_print_compactly() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1");
        assert_eq!(compact(&json!({"rpm": 60, "tpm": 5})), "rpm=60 tpm=5");
        assert_eq!(compact(&json!(["a/*", "b"])), "a/*,b");
        assert_eq!(compact(&Value::Null), "-");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn rule_flags_merge_over_what_is_there() {
        let mut limits = json!({"rpm": 1, "tpm": 2}).as_object().cloned().unwrap();
        let mut budget = Map::new();
        let rules = RuleFlags {
            rpm: Some(60),
            usd_per_day: Some(5.0),
            ..Default::default()
        };
        merge_rules(&rules, &mut limits, &mut budget);
        assert_eq!(Value::Object(limits), json!({"rpm": 60, "tpm": 2}));
        assert_eq!(Value::Object(budget), json!({"usd_per_day": 5.0}));
    }
}
