//! Usage reports off the ledger: totals per group from the daily rollup (raw rows only for the
//! partial days at a window's edges), and the raw rows newest first, a cursor page at a time.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::sql::{Sql, SqlError, Val};
use crate::clock::{rfc3339, DAY_MS};
use crate::ledger::Totals;

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Day,
    Tenant,
    Key,
    Model,
}

impl Group {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "day" => Group::Day,
            "tenant" => Group::Tenant,
            "key" => Group::Key,
            "model" => Group::Model,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            Group::Day => "day",
            Group::Tenant => "tenant",
            Group::Key => "key_id",
            Group::Model => "model",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Group::Day => "day",
            Group::Tenant => "tenant",
            Group::Key => "key",
            Group::Model => "model",
        }
    }
}

/// Filters every report takes; times are ms since the epoch, `[from, to)`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: u64,
    pub to_ms: u64,
    pub tenant: Option<String>,
    pub key: Option<String>,
    pub model: Option<String>,
}

impl Filter {
    /// ` AND tenant = $n …` for the filters given, with their values appended to `params`.
    fn clauses(&self, params: &mut Vec<Val>) -> String {
        let mut out = String::new();
        for (col, v) in [
            ("tenant", &self.tenant),
            ("key_id", &self.key),
            ("model", &self.model),
        ] {
            if let Some(v) = v {
                params.push(v.as_str().into());
                out.push_str(&format!(" AND {col} = ${}", params.len()));
            }
        }
        out
    }
}

/// One group's totals: the group's values (in `group_by` order) and what it adds up to.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub group: Vec<Val>,
    pub totals: Totals,
}

fn sums(count: &str) -> String {
    [
        count,
        "CAST(SUM(prompt_tokens) AS BIGINT)",
        "CAST(SUM(completion_tokens) AS BIGINT)",
        "CAST(SUM(cached_tokens) AS BIGINT)",
        "CAST(SUM(cost_micros) AS BIGINT)",
    ]
    .join(", ")
}

/// Totals per group over `f`'s window: whole UTC days from the rollup, the partial days at the
/// edges from the raw rows (kept `ledger_retention_days`).
pub fn usage(sql: &mut dyn Sql, f: &Filter, group_by: &[Group]) -> Result<Vec<UsageRow>, SqlError> {
    let first_day = f.from_ms.div_ceil(DAY_MS);
    let end_day = f.to_ms / DAY_MS;
    let mut parts = Vec::new();
    if first_day < end_day {
        parts.push(Part::Days(first_day, end_day));
        parts.push(Part::Raw(f.from_ms, first_day * DAY_MS));
        parts.push(Part::Raw(end_day * DAY_MS, f.to_ms));
    } else {
        parts.push(Part::Raw(f.from_ms, f.to_ms));
    }
    let mut merged: BTreeMap<Vec<String>, UsageRow> = BTreeMap::new();
    for part in parts {
        for row in part.query(sql, f, group_by)? {
            let key: Vec<String> = row.group.iter().map(|v| format!("{v:?}")).collect();
            let e = merged.entry(key).or_insert_with(|| UsageRow {
                group: row.group.clone(),
                totals: Totals::default(),
            });
            e.totals.add(&row.totals);
        }
    }
    Ok(merged.into_values().collect())
}

enum Part {
    /// Whole days `[first, end)` from the rollup.
    Days(u64, u64),
    /// Raw rows with `ts` in `[from, to)`.
    Raw(u64, u64),
}

impl Part {
    fn query(
        &self,
        sql: &mut dyn Sql,
        f: &Filter,
        group_by: &[Group],
    ) -> Result<Vec<UsageRow>, SqlError> {
        let (table, count, range, lo, hi) = match *self {
            Part::Days(a, b) => (
                "llmedge_usage_daily",
                "CAST(SUM(requests) AS BIGINT)",
                "day",
                a,
                b,
            ),
            Part::Raw(a, b) if a < b => ("llmedge_usage", "COUNT(*)", "ts", a, b),
            Part::Raw(..) => return Ok(Vec::new()),
        };
        let cols: Vec<&str> = group_by.iter().map(|g| g.column()).collect();
        let mut params: Vec<Val> = vec![lo.into(), hi.into()];
        let filters = f.clauses(&mut params);
        let select = cols
            .iter()
            .copied()
            .chain(std::iter::once(sums(count).as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut q =
            format!("SELECT {select} FROM {table} WHERE {range} >= $1 AND {range} < $2{filters}");
        if !cols.is_empty() {
            q.push_str(&format!(" GROUP BY {}", cols.join(", ")));
        }
        let n = cols.len();
        Ok(sql
            .query(&q, &params)?
            .into_iter()
            // an ungrouped SUM over no rows is one row of NULLs: no usage
            .filter(|r| r.get(n).and_then(Val::int).unwrap_or(0) > 0)
            .map(|r| {
                let at = |i: usize| r.get(n + i).and_then(Val::int).unwrap_or(0);
                UsageRow {
                    group: r.iter().take(n).cloned().collect(),
                    totals: Totals {
                        requests: at(0) as u64,
                        prompt_tokens: at(1) as u64,
                        completion_tokens: at(2) as u64,
                        cached_tokens: at(3) as u64,
                        cost_micros: at(4),
                    },
                }
            })
            .collect())
    }
}

/// `123456` micro-USD as `"0.123456"`.
pub fn usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// A usage row as the API shows it.
pub fn usage_json(r: &UsageRow, group_by: &[Group]) -> Value {
    let mut v = serde_json::Map::new();
    for (g, val) in group_by.iter().zip(&r.group) {
        let shown = match (g, val) {
            (Group::Day, Val::Int(d)) => Value::from(rfc3339(*d as u64 * DAY_MS)[..10].to_string()),
            (_, Val::Text(s)) => Value::from(s.as_str()),
            (_, Val::Int(i)) => Value::from(*i),
            (_, Val::Null) => Value::Null,
        };
        v.insert(g.name().into(), shown);
    }
    let t = &r.totals;
    v.insert("requests".into(), t.requests.into());
    v.insert("prompt_tokens".into(), t.prompt_tokens.into());
    v.insert("completion_tokens".into(), t.completion_tokens.into());
    v.insert("cached_tokens".into(), t.cached_tokens.into());
    v.insert("cost_usd".into(), usd(t.cost_micros).into());
    v.insert("cost_micro_usd".into(), t.cost_micros.into());
    Value::Object(v)
}

/// `/admin/v1/usage/requests`: rows newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub status: Option<u16>,
    pub limit: usize,
    /// `(ts, id)` of the last row of the previous page.
    pub cursor: Option<(u64, String)>,
}

const ROW_COLUMNS: &str = "id, request_id, ts, tenant, user_name, key_id, model, route, pool, \
     backend, endpoint, stream, status, error, prompt_tokens, completion_tokens, cached_tokens, \
     cost_micros, ttft_ms, duration_ms";

/// A page of rows and the cursor of the next one.
pub fn requests(
    sql: &mut dyn Sql,
    f: &Filter,
    p: &Page,
) -> Result<(Vec<Value>, Option<String>), SqlError> {
    let mut params: Vec<Val> = vec![f.from_ms.into(), f.to_ms.into()];
    let mut q = format!("SELECT {ROW_COLUMNS} FROM llmedge_usage WHERE ts >= $1 AND ts < $2");
    q.push_str(&f.clauses(&mut params));
    if let Some(s) = p.status {
        params.push(Val::Int(i64::from(s)));
        q.push_str(&format!(" AND status = ${}", params.len()));
    }
    if let Some((ts, id)) = &p.cursor {
        params.push((*ts).into());
        params.push(id.as_str().into());
        let (a, b) = (params.len() - 1, params.len());
        q.push_str(&format!(" AND (ts < ${a} OR (ts = ${a} AND id < ${b}))"));
    }
    q.push_str(&format!(" ORDER BY ts DESC, id DESC LIMIT {}", p.limit + 1));
    let rows = sql.query(&q, &params)?;
    let more = rows.len() > p.limit;
    let page: Vec<&Vec<Val>> = rows.iter().take(p.limit).collect();
    let next = more
        .then(|| {
            page.last()
                .map(|r| format!("{}:{}", r[2].int().unwrap_or(0), r[0].text().unwrap_or("")))
        })
        .flatten();
    Ok((page.into_iter().map(|r| row_json(r)).collect(), next))
}

fn row_json(r: &[Val]) -> Value {
    let text = |i: usize| r.get(i).and_then(Val::text).map(str::to_string);
    let int = |i: usize| r.get(i).and_then(Val::int);
    let cost = int(17).unwrap_or(0);
    json!({
        "id": text(0),
        "request_id": text(1),
        "ts": int(2).map(|t| rfc3339(t.max(0) as u64)),
        "tenant": text(3),
        "user": text(4),
        "key": text(5),
        "model": text(6),
        "route": text(7),
        "pool": text(8),
        "backend": text(9),
        "endpoint": text(10),
        "stream": int(11) == Some(1),
        "status": int(12),
        "error": text(13),
        "prompt_tokens": int(14),
        "completion_tokens": int(15),
        "cached_tokens": int(16),
        "cost_usd": usd(cost),
        "cost_micro_usd": cost,
        "ttft_ms": int(18),
        "duration_ms": int(19),
    })
}

#[cfg(test)]
mod tests;
