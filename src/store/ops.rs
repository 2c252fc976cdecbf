//! The control plane's reads and writes, each write one transaction that also bumps the
//! revision and records the audit row. Written once over [`Sql`] for both databases.

use serde_json::Value;

use super::sql::{read_tx, write_tx, Sql, SqlError, Val};
use crate::control::input::{KeyPatch, NewKey, TenantPatch};
use crate::control::{KeyRecord, KeySpec, Records, SecretRecord, TenantRecord, TenantSpec};

/// A change the admin API asks for (validated already).
#[derive(Debug, Clone)]
pub enum Write {
    CreateKey {
        key: NewKey,
        id: String,
        digest: String,
        hint: String,
        /// The tenant is not in the config file: make its store row if missing.
        make_tenant: bool,
    },
    PatchKey {
        id: String,
        patch: KeyPatch,
    },
    RevokeKey {
        id: String,
    },
    RotateKey {
        id: String,
        grace_ms: u64,
        digest: String,
        hint: String,
    },
    PutTenant {
        name: String,
        patch: TenantPatch,
        replace: bool,
    },
    DeleteTenant {
        name: String,
    },
}

/// What a write left behind.
#[derive(Debug, Clone)]
pub enum Applied {
    Key(KeyRecord),
    Tenant(TenantRecord),
    TenantDeleted(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Other(String),
}

impl From<SqlError> for OpError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Unavailable(m) | SqlError::Refused(m) => OpError::Unavailable(m),
            SqlError::Conflict(m) => OpError::Conflict(m),
            SqlError::Other(m) => OpError::Other(m),
        }
    }
}

const KEY_COLUMNS: &str =
    "id, tenant, name, user_name, hint, spec, expires_at, created_at, updated_at, revoked_at";

fn text(row: &[Val], i: usize) -> String {
    row.get(i)
        .and_then(Val::text)
        .unwrap_or_default()
        .to_string()
}

fn ms(row: &[Val], i: usize) -> Option<u64> {
    row.get(i).and_then(Val::ms)
}

fn spec<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, OpError> {
    serde_json::from_str(raw)
        .map_err(|e| OpError::Other(format!("a stored spec is not valid: {e}")))
}

fn key_row(row: &[Val]) -> Result<KeyRecord, OpError> {
    Ok(KeyRecord {
        id: text(row, 0),
        tenant: text(row, 1),
        name: text(row, 2),
        user: text(row, 3),
        hint: text(row, 4),
        spec: spec::<KeySpec>(&text(row, 5))?,
        expires_at: ms(row, 6),
        created_at: ms(row, 7).unwrap_or(0),
        updated_at: ms(row, 8).unwrap_or(0),
        revoked_at: ms(row, 9),
        secrets: Vec::new(),
    })
}

fn tenant_row(row: &[Val]) -> Result<TenantRecord, OpError> {
    Ok(TenantRecord {
        name: text(row, 0),
        spec: spec::<TenantSpec>(&text(row, 1))?,
        created_at: ms(row, 2).unwrap_or(0),
        updated_at: ms(row, 3).unwrap_or(0),
    })
}

fn json_text<T: serde::Serialize>(v: &T) -> Val {
    Val::Text(serde_json::to_string(v).unwrap_or_default())
}

/// A row that cannot be read is left out (a key that cannot be read does not authenticate)
/// and said so; the rest still loads, so changes keep reaching this gateway.
fn readable<T>(r: Result<T, OpError>, row: &[Val]) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(id = %text(row, 0), error = ?e, "store row not loaded");
            None
        }
    }
}

/// Everything, at one revision.
pub fn load(sql: &mut dyn Sql) -> Result<Records, OpError> {
    read_tx(sql, |sql| {
        let revision = sql
            .query(
                "SELECT value FROM llmedge_meta WHERE name = 'revision'",
                &[],
            )?
            .first()
            .and_then(|r| r.first())
            .and_then(Val::int)
            .unwrap_or(0);
        let mut keys: Vec<KeyRecord> = sql
            .query(&format!("SELECT {KEY_COLUMNS} FROM llmedge_keys"), &[])?
            .iter()
            .filter_map(|r| readable(key_row(r), r))
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        for r in sql.query("SELECT key_id, digest, until FROM llmedge_key_secrets", &[])? {
            let id = text(&r, 0);
            if let Ok(i) = keys.binary_search_by(|k| k.id.cmp(&id)) {
                if let Some(k) = keys.get_mut(i) {
                    k.secrets.push(SecretRecord {
                        digest: text(&r, 1),
                        until: ms(&r, 2),
                    });
                }
            }
        }
        let mut tenants: Vec<TenantRecord> = sql
            .query(
                "SELECT name, spec, created_at, updated_at FROM llmedge_tenants",
                &[],
            )?
            .iter()
            .filter_map(|r| readable(tenant_row(r), r))
            .collect();
        tenants.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Records {
            revision,
            keys,
            tenants,
        })
    })
}

/// The revision only: what the poll asks every few hundred milliseconds.
pub fn revision(sql: &mut dyn Sql) -> Result<i64, SqlError> {
    let rows = sql.query(
        "SELECT value FROM llmedge_meta WHERE name = 'revision'",
        &[],
    )?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .unwrap_or(0))
}

/// The revision and the schema version, in one round trip (the poll).
pub fn revision_and_schema(sql: &mut dyn Sql) -> Result<(i64, i64), SqlError> {
    let rows = sql.query(
        "SELECT (SELECT value FROM llmedge_meta WHERE name = 'revision'),
                (SELECT COALESCE(MAX(version), 0) FROM llmedge_schema)",
        &[],
    )?;
    let row = rows.first();
    let at = |i: usize| row.and_then(|r| r.get(i)).and_then(Val::int).unwrap_or(0);
    Ok((at(0), at(1)))
}

fn read_key(sql: &mut dyn Sql, id: &str) -> Result<Option<KeyRecord>, OpError> {
    let rows = sql.query(
        &format!("SELECT {KEY_COLUMNS} FROM llmedge_keys WHERE id = $1"),
        &[id.into()],
    )?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let mut k = key_row(row)?;
    for r in sql.query(
        "SELECT digest, until FROM llmedge_key_secrets WHERE key_id = $1",
        &[id.into()],
    )? {
        k.secrets.push(SecretRecord {
            digest: text(&r, 0),
            until: ms(&r, 1),
        });
    }
    Ok(Some(k))
}

fn live_key(sql: &mut dyn Sql, id: &str) -> Result<KeyRecord, OpError> {
    match read_key(sql, id)? {
        Some(k) if k.revoked_at.is_none() => Ok(k),
        Some(_) => Err(OpError::NotFound(format!("key {id} is revoked"))),
        None => Err(OpError::NotFound(format!("no key {id}"))),
    }
}

fn read_tenant(sql: &mut dyn Sql, name: &str) -> Result<Option<TenantRecord>, OpError> {
    let rows = sql.query(
        "SELECT name, spec, created_at, updated_at FROM llmedge_tenants WHERE name = $1",
        &[name.into()],
    )?;
    rows.first().map(|r| tenant_row(r)).transpose()
}

/// One audit row under the next revision.
struct Audit<'a> {
    at: u64,
    actor: &'a str,
    action: &'static str,
    target: &'a str,
    before: Option<Value>,
    after: Option<Value>,
}

fn record(sql: &mut dyn Sql, a: &Audit<'_>) -> Result<i64, OpError> {
    sql.exec(
        "UPDATE llmedge_meta SET value = value + 1 WHERE name = 'revision'",
        &[],
    )?;
    let revision = revision(sql)?;
    let opt = |v: &Option<Value>| v.as_ref().map_or(Val::Null, json_text);
    sql.exec(
        "INSERT INTO llmedge_audit (revision, at, actor, action, target, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            Val::Int(revision),
            a.at.into(),
            a.actor.into(),
            a.action.into(),
            a.target.into(),
            opt(&a.before),
            opt(&a.after),
        ],
    )?;
    Ok(revision)
}

/// Applies `w` at `now` on behalf of `actor`, in one transaction; with the revision it made.
pub fn apply(
    sql: &mut dyn Sql,
    now: u64,
    actor: &str,
    w: Write,
) -> Result<(Applied, i64), OpError> {
    write_tx(sql, |sql| {
        let applied = apply_in(sql, now, actor, w)?;
        Ok((applied, revision(sql)?))
    })
}

fn apply_in(sql: &mut dyn Sql, now: u64, actor: &str, w: Write) -> Result<Applied, OpError> {
    match w {
        Write::CreateKey {
            key,
            id,
            digest,
            hint,
            make_tenant,
        } => create_key(sql, now, actor, (key, id, digest, hint), make_tenant),
        Write::PatchKey { id, patch } => patch_key(sql, now, actor, &id, &patch),
        Write::RevokeKey { id } => revoke_key(sql, now, actor, &id),
        Write::RotateKey {
            id,
            grace_ms,
            digest,
            hint,
        } => rotate_key(sql, now, actor, &id, (grace_ms, digest, hint)),
        Write::PutTenant {
            name,
            patch,
            replace,
        } => put_tenant(sql, now, actor, &name, &patch, replace),
        Write::DeleteTenant { name } => delete_tenant(sql, now, actor, &name),
    }
}

fn create_key(
    sql: &mut dyn Sql,
    now: u64,
    actor: &str,
    (key, id, digest, hint): (NewKey, String, String, String),
    make_tenant: bool,
) -> Result<Applied, OpError> {
    if make_tenant {
        sql.exec(
            "INSERT INTO llmedge_tenants (name, spec, created_at, updated_at)
             VALUES ($1, '{}', $2, $2) ON CONFLICT (name) DO NOTHING",
            &[key.tenant.as_str().into(), now.into()],
        )?;
    }
    let inserted = sql.exec(
        &format!("INSERT INTO llmedge_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, NULL)"),
        &[
            id.as_str().into(),
            key.tenant.as_str().into(),
            key.name.as_str().into(),
            key.user.as_str().into(),
            hint.as_str().into(),
            json_text(&key.spec),
            key.expires_at.into(),
            now.into(),
        ],
    );
    if let Err(SqlError::Conflict(_)) = inserted {
        return Err(OpError::Conflict(format!(
            "tenant {} already has a live key named \"{}\"",
            key.tenant, key.name
        )));
    }
    inserted?;
    add_secret(sql, &id, &digest)?;
    let after = live_key(sql, &id)?;
    record(
        sql,
        &Audit {
            at: now,
            actor,
            action: "key.create",
            target: &id,
            before: None,
            after: Some(after.to_json(now)),
        },
    )?;
    Ok(Applied::Key(after))
}

fn add_secret(sql: &mut dyn Sql, id: &str, digest: &str) -> Result<(), OpError> {
    let r = sql.exec(
        "INSERT INTO llmedge_key_secrets (digest, key_id, until) VALUES ($1, $2, NULL)",
        &[digest.into(), id.into()],
    );
    match r {
        Err(SqlError::Conflict(_)) => Err(OpError::Conflict(
            "this secret already belongs to another key".into(),
        )),
        other => other.map(drop).map_err(OpError::from),
    }
}

fn patch_key(
    sql: &mut dyn Sql,
    now: u64,
    actor: &str,
    id: &str,
    patch: &KeyPatch,
) -> Result<Applied, OpError> {
    let before = live_key(sql, id)?;
    let mut after = patch.apply(&before);
    after.updated_at = now;
    let r = sql.exec(
        "UPDATE llmedge_keys SET name = $2, spec = $3, expires_at = $4, updated_at = $5
         WHERE id = $1 AND revoked_at IS NULL",
        &[
            id.into(),
            after.name.as_str().into(),
            json_text(&after.spec),
            after.expires_at.into(),
            now.into(),
        ],
    );
    if let Err(SqlError::Conflict(_)) = r {
        return Err(OpError::Conflict(format!(
            "tenant {} already has a live key named \"{}\"",
            after.tenant, after.name
        )));
    }
    r?;
    record(
        sql,
        &Audit {
            at: now,
            actor,
            action: "key.patch",
            target: id,
            before: Some(before.to_json(now)),
            after: Some(after.to_json(now)),
        },
    )?;
    Ok(Applied::Key(after))
}

fn revoke_key(sql: &mut dyn Sql, now: u64, actor: &str, id: &str) -> Result<Applied, OpError> {
    let before = live_key(sql, id)?;
    sql.exec(
        "UPDATE llmedge_keys SET revoked_at = $2, updated_at = $2 WHERE id = $1",
        &[id.into(), now.into()],
    )?;
    sql.exec(
        "DELETE FROM llmedge_key_secrets WHERE key_id = $1",
        &[id.into()],
    )?;
    let after = read_key(sql, id)?.ok_or_else(|| OpError::NotFound(format!("no key {id}")))?;
    record(
        sql,
        &Audit {
            at: now,
            actor,
            action: "key.revoke",
            target: id,
            before: Some(before.to_json(now)),
            after: Some(after.to_json(now)),
        },
    )?;
    Ok(Applied::Key(after))
}

fn rotate_key(
    sql: &mut dyn Sql,
    now: u64,
    actor: &str,
    id: &str,
    (grace_ms, digest, hint): (u64, String, String),
) -> Result<Applied, OpError> {
    let before = live_key(sql, id)?;
    if grace_ms == 0 {
        sql.exec(
            "DELETE FROM llmedge_key_secrets WHERE key_id = $1",
            &[id.into()],
        )?;
    } else {
        let until = now.saturating_add(grace_ms);
        sql.exec(
            "UPDATE llmedge_key_secrets SET until = $2 WHERE key_id = $1 AND (until IS NULL OR until > $2)",
            &[id.into(), until.into()],
        )?;
        sql.exec(
            "DELETE FROM llmedge_key_secrets WHERE key_id = $1 AND until <= $2",
            &[id.into(), now.into()],
        )?;
    }
    add_secret(sql, id, &digest)?;
    sql.exec(
        "UPDATE llmedge_keys SET hint = $2, updated_at = $3 WHERE id = $1",
        &[id.into(), hint.as_str().into(), now.into()],
    )?;
    let after = live_key(sql, id)?;
    record(
        sql,
        &Audit {
            at: now,
            actor,
            action: "key.rotate",
            target: id,
            before: Some(before.to_json(now)),
            after: Some(after.to_json(now)),
        },
    )?;
    Ok(Applied::Key(after))
}

fn put_tenant(
    sql: &mut dyn Sql,
    now: u64,
    actor: &str,
    name: &str,
    patch: &TenantPatch,
    replace: bool,
) -> Result<Applied, OpError> {
    let before = read_tenant(sql, name)?;
    if before.is_none() && !replace {
        return Err(OpError::NotFound(format!("no tenant {name}")));
    }
    let spec = patch.apply(before.as_ref().map(|t| &t.spec), replace);
    sql.exec(
        "INSERT INTO llmedge_tenants (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        &[name.into(), json_text(&spec), now.into()],
    )?;
    let after = read_tenant(sql, name)?.ok_or_else(|| OpError::NotFound(name.into()))?;
    record(
        sql,
        &Audit {
            at: now,
            actor,
            action: if replace {
                "tenant.put"
            } else {
                "tenant.patch"
            },
            target: name,
            before: before.map(|t| t.to_json()),
            after: Some(after.to_json()),
        },
    )?;
    Ok(Applied::Tenant(after))
}

fn delete_tenant(sql: &mut dyn Sql, now: u64, actor: &str, name: &str) -> Result<Applied, OpError> {
    let before =
        read_tenant(sql, name)?.ok_or_else(|| OpError::NotFound(format!("no tenant {name}")))?;
    // expired keys count too: a PATCH of expires_at would bring them back
    let live = sql.query(
        "SELECT COUNT(*) FROM llmedge_keys WHERE tenant = $1 AND revoked_at IS NULL",
        &[name.into()],
    )?;
    let n = live
        .first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .unwrap_or(0);
    if n > 0 {
        return Err(OpError::Conflict(format!(
            "tenant {name} has {n} key(s) not revoked; revoke them first"
        )));
    }
    sql.exec(
        "DELETE FROM llmedge_tenants WHERE name = $1",
        &[name.into()],
    )?;
    record(
        sql,
        &Audit {
            at: now,
            actor,
            action: "tenant.delete",
            target: name,
            before: Some(before.to_json()),
            after: None,
        },
    )?;
    Ok(Applied::TenantDeleted(name.to_string()))
}

/// The audit row of one revision.
pub fn audit_row(sql: &mut dyn Sql, rev: i64) -> Result<Option<Value>, OpError> {
    Ok(audit(sql, Some(rev.saturating_add(1)), 1)?
        .into_iter()
        .find(|r| r["revision"].as_i64() == Some(rev)))
}

/// Audit rows, newest first, below revision `before` (all when `None`).
pub fn audit(sql: &mut dyn Sql, before: Option<i64>, limit: u32) -> Result<Vec<Value>, OpError> {
    let rows = sql.query(
        "SELECT revision, at, actor, action, target, before, after FROM llmedge_audit
         WHERE revision < $1 ORDER BY revision DESC LIMIT $2",
        &[Val::Int(before.unwrap_or(i64::MAX)), Val::Int(limit.into())],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let doc = |i: usize| {
                r.get(i)
                    .and_then(Val::text)
                    .and_then(|t| serde_json::from_str::<Value>(t).ok())
            };
            serde_json::json!({
                "revision": r.first().and_then(Val::int),
                "at": ms(r, 1).map(crate::clock::rfc3339),
                "actor": text(r, 2),
                "action": text(r, 3),
                "target": text(r, 4),
                "before": doc(5),
                "after": doc(6),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests;
