//! `/admin/v1/usage` (totals per group) and `/admin/v1/usage/requests` (the ledger's rows),
//! in JSON or, for `Accept: text/csv`, CSV.

use serde_json::{json, Value};

use super::api::Call;
use super::reply::{query_pairs, ApiError, Reply};
use crate::clock::{parse_rfc3339, rfc3339, Clock, SystemClock};
use crate::store::reports::{self, Filter, Group, Page};

const MAX_PAGE: usize = 1_000;
const DEFAULT_PAGE: usize = 100;

const TOTALS: &[&str] = &[
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_micro_usd",
];
const ROW_FIELDS: &[&str] = &[
    "ts",
    "request_id",
    "tenant",
    "user",
    "key",
    "model",
    "route",
    "pool",
    "backend",
    "endpoint",
    "stream",
    "status",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "cost_micro_usd",
    "ttft_ms",
    "duration_ms",
    "id",
];

/// The query of either report: the window and filters, and what else it takes.
struct Query {
    filter: Filter,
    group_by: Vec<Group>,
    page: Page,
}

fn time(param: &str, v: &str) -> Result<u64, ApiError> {
    parse_rfc3339(v)
        .ok_or_else(|| ApiError::bad(param, format!("{param}: \"{v}\" is not an RFC 3339 time")))
}

fn parse(q: &str, report: bool) -> Result<Query, ApiError> {
    let now = SystemClock.now_ms();
    let mut filter = Filter {
        from_ms: crate::clock::month_start(now),
        to_ms: now + 1,
        ..Default::default()
    };
    let mut group_by = Vec::new();
    let mut page = Page {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    for (k, v) in query_pairs(q) {
        match (k.as_str(), report) {
            ("from", _) => filter.from_ms = time("from", &v)?,
            ("to", _) => filter.to_ms = time("to", &v)?,
            ("tenant", _) => filter.tenant = Some(v),
            ("key", _) => filter.key = Some(v),
            ("model", _) => filter.model = Some(v),
            ("group_by", true) => group_by = groups(&v)?,
            ("status", false) => {
                page.status = Some(
                    v.parse()
                        .map_err(|_| ApiError::bad("status", "status is an HTTP status"))?,
                )
            }
            ("limit", false) => page.limit = super::reply::page_limit(&v, MAX_PAGE)?,
            ("cursor", false) => page.cursor = Some(cursor(&v)?),
            (other, _) => {
                return Err(ApiError::bad(
                    other,
                    format!("unknown query parameter `{other}`"),
                ))
            }
        }
    }
    if filter.from_ms >= filter.to_ms {
        return Err(ApiError::bad("from", "from must be before to"));
    }
    Ok(Query {
        filter,
        group_by,
        page,
    })
}

fn groups(v: &str) -> Result<Vec<Group>, ApiError> {
    let mut out = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let g = Group::parse(name).ok_or_else(|| {
            ApiError::bad(
                "group_by",
                format!("group_by: unknown group \"{name}\" (known: day, tenant, key, model)"),
            )
        })?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

fn cursor(v: &str) -> Result<(u64, String), ApiError> {
    v.split_once(':')
        .and_then(|(ts, id)| Some((ts.parse().ok()?, id.to_string())))
        .ok_or_else(|| ApiError::bad("cursor", "cursor is the next_cursor of the previous page"))
}

fn wants_csv(call: &Call<'_>) -> bool {
    call.accept
        .is_some_and(|a| a.windows(8).any(|w| w.eq_ignore_ascii_case(b"text/csv")))
}

pub async fn usage(call: &Call<'_>) -> Result<Reply, ApiError> {
    let q = parse(call.query, true)?;
    let (filter, group_by) = (q.filter.clone(), q.group_by.clone());
    let v = call
        .store()?
        .read(move |sql| {
            let rows =
                reports::usage(sql, &filter, &group_by).map_err(crate::store::OpError::from)?;
            Ok(Value::Array(
                rows.iter()
                    .map(|r| reports::usage_json(r, &group_by))
                    .collect(),
            ))
        })
        .await?;
    let names: Vec<&str> = q.group_by.iter().map(|g| g.name()).collect();
    if wants_csv(call) {
        let cols: Vec<&str> = names
            .iter()
            .copied()
            .chain(TOTALS.iter().copied())
            .collect();
        return Ok(csv(&cols, &v));
    }
    Ok(Reply::json(
        200,
        &json!({
            "object": "list",
            "from": rfc3339(q.filter.from_ms),
            "to": rfc3339(q.filter.to_ms),
            "group_by": names,
            "data": v,
        }),
    ))
}

pub async fn requests(call: &Call<'_>) -> Result<Reply, ApiError> {
    let q = parse(call.query, false)?;
    let (filter, page) = (q.filter.clone(), q.page.clone());
    let v = call
        .store()?
        .read(move |sql| {
            let (rows, next) =
                reports::requests(sql, &filter, &page).map_err(crate::store::OpError::from)?;
            Ok(json!({"data": rows, "next_cursor": next}))
        })
        .await?;
    if wants_csv(call) {
        return Ok(csv(ROW_FIELDS, &v["data"]));
    }
    Ok(Reply::json(
        200,
        &json!({"object": "list", "data": v["data"], "next_cursor": v["next_cursor"],
                "has_more": !v["next_cursor"].is_null()}),
    ))
}

/// `rows` (JSON objects) as CSV with a header of `cols`.
fn csv(cols: &[&str], rows: &Value) -> Reply {
    let mut out = cols.join(",");
    out.push_str("\r\n");
    for r in rows.as_array().into_iter().flatten() {
        let cells: Vec<String> = cols.iter().map(|c| cell(&r[*c])).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    Reply {
        status: 200,
        content_type: "text/csv; charset=utf-8",
        body: out.into_bytes(),
        header: None,
    }
}

fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // a cell a spreadsheet would run as a formula (a client's model name can be anything)
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_name_the_parameter() {
        let q = parse(
            "from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z&tenant=acme&group_by=day,model,day",
            true,
        )
        .unwrap();
        assert_eq!(q.filter.to_ms - q.filter.from_ms, crate::clock::DAY_MS);
        assert_eq!(q.group_by, vec![Group::Day, Group::Model]);
        for (bad, param) in [
            ("from=yesterday", "from"),
            ("group_by=week", "group_by"),
            ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "from"),
            ("colour=red", "colour"),
        ] {
            assert_eq!(
                parse(bad, true).err().and_then(|e| e.param),
                Some(param.to_string()),
                "{bad}"
            );
        }
        assert!(parse("limit=5000", false).is_err());
        assert!(
            parse("group_by=day", false).is_err(),
            "requests take no group_by"
        );
        let p = parse("cursor=17:g-3&status=429&limit=2", false).unwrap();
        assert_eq!(
            (p.page.cursor, p.page.status, p.page.limit),
            (Some((17, "g-3".into())), Some(429), 2)
        );
        assert_eq!(
            crate::clock::month_start(crate::clock::parse_rfc3339("2026-12-17T05:00:00Z").unwrap()),
            crate::clock::parse_rfc3339("2026-12-01T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let r = csv(
            &["a", "b"],
            &json!([{"a": "x,y", "b": 3}, {"a": "say \"hi\"", "b": null}]),
        );
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "a,b\r\n\"x,y\",3\r\n\"say \"\"hi\"\"\",\r\n"
        );
        let f = csv(&["m"], &json!([{"m": "=HYPERLINK(1)"}, {"m": "@x"}]));
        assert_eq!(
            String::from_utf8(f.body).unwrap(),
            "m\r\n'=HYPERLINK(1)\r\n'@x\r\n",
            "a formula is text, not run"
        );
    }
}
