//! The ledger's writes: a batch of rows and their daily rollup in one transaction, exactly
//! once (a row already there adds nothing), and the pruning of old rows (rollups stay).

use std::collections::HashSet;

use super::sql::{write_tx, Sql, SqlError, Val};
use crate::ledger::{rollup, Entry};

const COLUMNS: &str = "id, request_id, ts, day, tenant, user_name, key_id, model, route, pool, \
     backend, endpoint, stream, status, error, prompt_tokens, completion_tokens, cached_tokens, \
     cost_micros, ttft_ms, duration_ms";
const WIDTH: usize = 21;

fn row_values(e: &Entry) -> [Val; WIDTH] {
    [
        e.id.as_str().into(),
        e.request_id.as_str().into(),
        e.ts_ms.into(),
        (e.ts_ms / crate::clock::DAY_MS).into(),
        (*e.tenant).into(),
        (*e.user).into(),
        (*e.key_id).into(),
        e.model.as_str().into(),
        e.route.as_str().into(),
        e.pool.as_str().into(),
        e.backend.as_str().into(),
        e.endpoint.into(),
        Val::Int(i64::from(e.stream)),
        Val::Int(i64::from(e.status)),
        e.error.map_or(Val::Null, Val::from),
        e.prompt_tokens.into(),
        e.completion_tokens.into(),
        e.cached_tokens.into(),
        Val::Int(e.cost_micros),
        e.ttft_ms.into(),
        e.duration_ms.into(),
    ]
}

/// `($1, $2, …), ($n, …)` for `rows` rows of `width` parameters.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `rows`, skipping ids already there; the ids that were new. SQLite runs one cached
/// single-row statement per row (in-process: no round trips, no re-parsing a statement the
/// size of the batch); Postgres one multi-row statement (one round trip).
fn insert_new(sql: &mut dyn Sql, rows: &[Entry]) -> Result<HashSet<String>, SqlError> {
    if sql.dialect() == super::sql::Dialect::Sqlite {
        let one = format!(
            "INSERT INTO llmedge_usage ({COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING",
            placeholders(1, WIDTH)
        );
        let mut new = HashSet::with_capacity(rows.len());
        for e in rows {
            if sql.exec(&one, &row_values(e))? == 1 {
                new.insert(e.id.clone());
            }
        }
        return Ok(new);
    }
    let params: Vec<Val> = rows.iter().flat_map(row_values).collect();
    let insert = format!(
        "INSERT INTO llmedge_usage ({COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING RETURNING id",
        placeholders(rows.len(), WIDTH)
    );
    Ok(sql
        .query(&insert, &params)?
        .into_iter()
        .filter_map(|r| r.first().and_then(Val::text).map(str::to_string))
        .collect())
}

/// Writes `rows` (a few hundred at most) and adds the ones that were new to the rollup, in one
/// transaction; returns how many were new.
pub fn write_rows(sql: &mut dyn Sql, rows: &[Entry]) -> Result<usize, SqlError> {
    if rows.is_empty() {
        return Ok(0);
    }
    write_tx(sql, |sql| {
        let new = insert_new(sql, rows)?;
        let days = rollup(rows.iter().filter(|e| new.contains(&e.id)));
        if days.is_empty() {
            return Ok(0);
        }
        let mut params = Vec::with_capacity(days.len() * 9);
        for (k, t) in &days {
            params.extend([
                k.day.into(),
                k.tenant.as_str().into(),
                k.key_id.as_str().into(),
                k.model.as_str().into(),
                t.requests.into(),
                t.prompt_tokens.into(),
                t.completion_tokens.into(),
                t.cached_tokens.into(),
                Val::Int(t.cost_micros),
            ]);
        }
        let upsert = format!(
            "INSERT INTO llmedge_usage_daily (day, tenant, key_id, model, requests, prompt_tokens, \
             completion_tokens, cached_tokens, cost_micros) VALUES {} \
             ON CONFLICT (day, tenant, key_id, model) DO UPDATE SET \
             requests = llmedge_usage_daily.requests + excluded.requests, \
             prompt_tokens = llmedge_usage_daily.prompt_tokens + excluded.prompt_tokens, \
             completion_tokens = llmedge_usage_daily.completion_tokens + excluded.completion_tokens, \
             cached_tokens = llmedge_usage_daily.cached_tokens + excluded.cached_tokens, \
             cost_micros = llmedge_usage_daily.cost_micros + excluded.cost_micros",
            placeholders(days.len(), 9)
        );
        sql.exec(&upsert, &params)?;
        Ok(new.len())
    })
}

/// Deletes raw rows older than `before_ms`; the rollup keeps their totals.
pub fn prune(sql: &mut dyn Sql, before_ms: u64) -> Result<u64, SqlError> {
    sql.exec(
        "DELETE FROM llmedge_usage WHERE ts < $1",
        &[before_ms.into()],
    )
}

#[cfg(test)]
mod tests;
