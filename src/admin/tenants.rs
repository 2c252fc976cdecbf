//! `/admin/v1/tenants` (the file's tenants, read-only, and the store's) and `/admin/v1/audit`.

use serde_json::{json, Map, Value};

use super::api::Call;
use super::reply::{query_pairs, ApiError, Reply};
use crate::config::{Budget, Limits, TenantConfig};
use crate::control::input;
use crate::store::{Applied, Write};

fn limits_json(l: &Limits) -> Value {
    let mut m = Map::new();
    for (k, v) in [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("concurrency", l.concurrency),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    }
    if !l.models.is_empty() {
        let models: Map<String, Value> = l
            .models
            .iter()
            .map(|(g, l)| (g.pattern().to_string(), limits_json(l)))
            .collect();
        m.insert("models".into(), Value::Object(models));
    }
    Value::Object(m)
}

fn budget_json(b: &Budget) -> Value {
    let mut m = Map::new();
    for (k, v) in [
        ("usd_per_day", b.usd_per_day),
        ("usd_per_month", b.usd_per_month),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.into());
        }
    }
    Value::Object(m)
}

fn file_tenant(t: &TenantConfig) -> Value {
    json!({
        "object": "tenant",
        "name": t.name,
        "source": "config",
        "limits": limits_json(&t.limits),
        "budget": budget_json(&t.budget),
    })
}

/// The file's tenants, then the store's, by name.
fn all(call: &Call<'_>) -> Vec<(String, Value)> {
    let file = call.live.file_tenants();
    let snap = call.live.load();
    let mut out: Vec<(String, Value)> = snap
        .config
        .tenants
        .iter()
        .filter(|t| file.contains(&t.name))
        .map(|t| (t.name.clone(), file_tenant(t)))
        .collect();
    let records = call.live.records();
    out.extend(
        records
            .tenants
            .iter()
            .filter(|t| !file.contains(&t.name))
            .map(|t| (t.name.clone(), t.to_json())),
    );
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn list(call: &Call<'_>) -> Result<Reply, ApiError> {
    let data: Vec<Value> = all(call).into_iter().map(|(_, v)| v).collect();
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
}

fn name<'a>(call: &'a Call<'_>) -> Result<&'a str, ApiError> {
    let n = call.params.first().map_or("", String::as_str);
    input::tenant_name(n)?;
    Ok(n)
}

pub fn show(call: &Call<'_>) -> Result<Reply, ApiError> {
    let n = name(call)?;
    all(call)
        .into_iter()
        .find(|(t, _)| t == n)
        .map(|(_, v)| Reply::json(200, &v))
        .ok_or_else(|| ApiError::not_found(format!("no tenant {n}")))
}

fn not_in_file(call: &Call<'_>, n: &str) -> Result<(), ApiError> {
    if call.live.file_tenants().iter().any(|t| t == n) {
        return Err(ApiError::conflict(format!(
            "tenant {n} is defined in the config file; change it there"
        )));
    }
    Ok(())
}

/// `PUT` (`replace`) or `PATCH` a store tenant.
pub async fn put(call: Call<'_>, replace: bool) -> Result<Reply, ApiError> {
    let n = name(&call)?.to_string();
    not_in_file(&call, &n)?;
    let patch = input::tenant(call.body)?;
    let w = Write::PutTenant {
        name: n,
        patch,
        replace,
    };
    match call.store()?.write(&call.actor, w).await? {
        Applied::Tenant(t) => Ok(Reply::json(200, &t.to_json())),
        _ => Err(ApiError::new(500, "store_error", "unexpected store answer")),
    }
}

pub async fn delete(call: Call<'_>) -> Result<Reply, ApiError> {
    let n = name(&call)?.to_string();
    not_in_file(&call, &n)?;
    let w = Write::DeleteTenant { name: n.clone() };
    call.store()?.write(&call.actor, w).await?;
    Ok(Reply::json(
        200,
        &json!({"object": "tenant", "name": n, "deleted": true}),
    ))
}

/// `?limit=&cursor=<revision>`: changes, newest first.
pub async fn audit(call: &Call<'_>) -> Result<Reply, ApiError> {
    let (mut limit, mut before) = (100u32, None);
    for (k, v) in query_pairs(call.query) {
        match k.as_str() {
            "limit" => limit = super::reply::page_limit(&v, 1000)? as u32,
            "cursor" => {
                before = Some(
                    v.parse::<i64>()
                        .map_err(|_| ApiError::bad("cursor", "cursor is a revision number"))?,
                )
            }
            other => {
                return Err(ApiError::bad(
                    other,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    let rows = call.store()?.audit(before, limit).await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().and_then(|r| r["revision"].as_i64()))
        .flatten();
    Ok(Reply::json(
        200,
        &json!({"object": "list", "data": rows, "next_cursor": next}),
    ))
}
