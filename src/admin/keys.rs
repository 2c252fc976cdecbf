//! `/admin/v1/keys`: create, list, show, patch, revoke and rotate store keys.

use serde_json::{json, Value};

use super::api::Call;
use super::reply::{query_pairs, ApiError, Reply};
use crate::clock::{Clock, SystemClock};
use crate::control::input::{self, Catalog};
use crate::control::{secret, KeyRecord};
use crate::store::{Applied, Write};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1_000;

fn with_pools<T>(call: &Call<'_>, f: impl FnOnce(&Catalog<'_>) -> T) -> T {
    let snap = call.live.load();
    let cat = Catalog {
        pools: snap.config.pools.iter().map(|p| p.name.as_str()).collect(),
        now_ms: SystemClock.now_ms(),
    };
    f(&cat)
}

fn param<'a>(call: &'a Call<'_>) -> &'a str {
    call.params.first().map_or("", String::as_str)
}

fn key_reply(status: u16, applied: Applied, secret: Option<String>) -> Result<Reply, ApiError> {
    let Applied::Key(rec) = applied else {
        return Err(ApiError::new(500, "store_error", "unexpected store answer"));
    };
    let mut v = rec.to_json(SystemClock.now_ms());
    if let (Some(s), Some(obj)) = (secret, v.as_object_mut()) {
        // shown this once: the store keeps only its digest
        obj.insert("key".into(), Value::String(s));
    }
    Ok(Reply::json(status, &v))
}

pub async fn create(call: Call<'_>) -> Result<Reply, ApiError> {
    let mut nk = with_pools(&call, |cat| input::new_key(call.body, cat))?;
    let fresh = match nk.secret.take() {
        Some(s) => secret::from_secret(s),
        None => secret::generate().map_err(|e| ApiError::new(500, "no_randomness", e))?,
    };
    let mut d = [0u8; 32];
    hex::decode_to_slice(&fresh.digest, &mut d)
        .map_err(|_| ApiError::new(500, "store_error", "digest"))?;
    if call.live.file_has_digest(&d) {
        return Err(ApiError::conflict(
            "this secret is a key in the config file; remove it there first",
        ));
    }
    let now = SystemClock.now_ms();
    let id = secret::new_id(now).map_err(|e| ApiError::new(500, "no_randomness", e))?;
    let make_tenant = !call.live.file_tenants().contains(&nk.tenant);
    let w = Write::CreateKey {
        key: nk,
        id,
        digest: fresh.digest,
        hint: fresh.hint,
        make_tenant,
    };
    let applied = call.store()?.write(&call.actor, w).await?;
    key_reply(201, applied, Some(fresh.secret))
}

/// `?tenant=&user=&status=&limit=&cursor=`: keys by id (creation order), a page at a time.
pub fn list(call: &Call<'_>) -> Result<Reply, ApiError> {
    let (mut tenant, mut user, mut status, mut cursor) = (None, None, None, None);
    let mut limit = DEFAULT_PAGE;
    for (k, v) in query_pairs(call.query) {
        match k.as_str() {
            "tenant" => tenant = Some(v),
            "user" => user = Some(v),
            "status" => status = Some(v),
            "cursor" | "after" => cursor = Some(v),
            "limit" => limit = super::reply::page_limit(&v, MAX_PAGE)?,
            other => {
                return Err(ApiError::bad(
                    other,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    if let Some(s) = &status {
        if !["active", "revoked", "expired"].contains(&s.as_str()) {
            return Err(ApiError::bad(
                "status",
                "status is one of active, revoked, expired",
            ));
        }
    }
    let records = call.live.records();
    let now = SystemClock.now_ms();
    let keep = |k: &&KeyRecord| {
        tenant.as_ref().is_none_or(|t| &k.tenant == t)
            && user.as_ref().is_none_or(|u| &k.user == u)
            && match &status {
                Some(s) => k.status(now) == s,
                None => k.revoked_at.is_none(),
            }
            && cursor.as_ref().is_none_or(|c| k.id.as_str() > c.as_str())
    };
    let page: Vec<&KeyRecord> = records.keys.iter().filter(keep).take(limit + 1).collect();
    let has_more = page.len() > limit;
    let data: Vec<Value> = page.iter().take(limit).map(|k| k.to_json(now)).collect();
    let next = has_more
        .then(|| page.get(limit - 1).map(|k| k.id.clone()))
        .flatten();
    Ok(Reply::json(
        200,
        &json!({"object": "list", "data": data, "has_more": has_more, "next_cursor": next}),
    ))
}

pub fn show(call: &Call<'_>) -> Result<Reply, ApiError> {
    let id = param(call);
    let records = call.live.records();
    let k = records
        .key(id)
        .ok_or_else(|| ApiError::not_found(format!("no key {id}")))?;
    Ok(Reply::json(200, &k.to_json(SystemClock.now_ms())))
}

pub async fn patch(call: Call<'_>) -> Result<Reply, ApiError> {
    let patch = with_pools(&call, |cat| input::key_patch(call.body, cat))?;
    let w = Write::PatchKey {
        id: param(&call).to_string(),
        patch,
    };
    let applied = call.store()?.write(&call.actor, w).await?;
    key_reply(200, applied, None)
}

pub async fn revoke(call: Call<'_>) -> Result<Reply, ApiError> {
    let w = Write::RevokeKey {
        id: param(&call).to_string(),
    };
    let applied = call.store()?.write(&call.actor, w).await?;
    key_reply(200, applied, None)
}

pub async fn rotate(call: Call<'_>) -> Result<Reply, ApiError> {
    let grace_ms = input::rotate(call.body)?;
    let fresh = secret::generate().map_err(|e| ApiError::new(500, "no_randomness", e))?;
    let w = Write::RotateKey {
        id: param(&call).to_string(),
        grace_ms,
        digest: fresh.digest,
        hint: fresh.hint,
    };
    let applied = call.store()?.write(&call.actor, w).await?;
    key_reply(200, applied, Some(fresh.secret))
}
