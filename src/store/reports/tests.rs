use super::*;
use crate::ledger::Entry;
use crate::store::ledger::write_rows;
use crate::store::schema;
use crate::store::sqlite::Sqlite;

const D: u64 = DAY_MS;

fn row(id: u32, ts_ms: u64, tenant: &str, model: &str, cost: i64) -> Entry {
    Entry {
        id: format!("g-{id}"),
        request_id: format!("req_{id}"),
        ts_ms,
        tenant: tenant.into(),
        key_id: format!("key_{tenant}").into(),
        model: model.into(),
        status: if id.is_multiple_of(5) { 429 } else { 200 },
        prompt_tokens: 10,
        completion_tokens: 1,
        cost_micros: cost,
        ..Default::default()
    }
}

/// Rows over days 10..13 for two tenants and two models, with partial days at both ends.
fn ledger() -> (Sqlite, Vec<Entry>) {
    let mut sql = Sqlite::open(":memory:").unwrap();
    schema::migrate(&mut sql).unwrap();
    let rows: Vec<Entry> = (0..80)
        .map(|i| {
            let ts = 10 * D + u64::from(i) * (D / 20);
            let tenant = if i % 2 == 0 { "acme" } else { "beta" };
            let model = if i % 3 == 0 { "m1" } else { "m2" };
            row(i, ts, tenant, model, i64::from(i))
        })
        .collect();
    write_rows(&mut sql, &rows).unwrap();
    (sql, rows)
}

fn expected(rows: &[Entry], f: &Filter) -> (u64, i64) {
    let keep: Vec<&Entry> = rows
        .iter()
        .filter(|e| e.ts_ms >= f.from_ms && e.ts_ms < f.to_ms)
        .filter(|e| f.tenant.as_ref().is_none_or(|t| *e.tenant == **t))
        .filter(|e| f.model.as_ref().is_none_or(|m| &e.model == m))
        .collect();
    (keep.len() as u64, keep.iter().map(|e| e.cost_micros).sum())
}

#[test]
fn totals_are_exact_for_any_window_whole_days_or_not() {
    let (mut sql, rows) = ledger();
    let windows = [
        (10 * D, 14 * D),
        (10 * D + 7, 13 * D + 5),
        (11 * D + 1, 11 * D + 9_000_000),
        (0, 100 * D),
    ];
    for (from_ms, to_ms) in windows {
        for tenant in [None, Some("acme".to_string())] {
            let f = Filter {
                from_ms,
                to_ms,
                tenant: tenant.clone(),
                ..Default::default()
            };
            let got = usage(&mut sql, &f, &[]).unwrap();
            let (n, cost) = expected(&rows, &f);
            let (gn, gc) = got
                .first()
                .map_or((0, 0), |r| (r.totals.requests, r.totals.cost_micros));
            assert_eq!(
                (gn, gc),
                (n, cost),
                "window {from_ms}..{to_ms} tenant {tenant:?}"
            );
        }
    }
}

#[test]
fn groups_add_up_to_the_total_and_name_their_values() {
    let (mut sql, rows) = ledger();
    let f = Filter {
        from_ms: 10 * D + 3,
        to_ms: 13 * D + 3,
        ..Default::default()
    };
    let by = [Group::Day, Group::Model];
    let got = usage(&mut sql, &f, &by).unwrap();
    let total: i64 = got.iter().map(|r| r.totals.cost_micros).sum();
    assert_eq!(total, expected(&rows, &f).1);
    let v = usage_json(&got[0], &by);
    assert_eq!(v["day"], "1970-01-11");
    assert_eq!(v["model"], "m1");
    assert_eq!(v["cost_usd"], usd(v["cost_micro_usd"].as_i64().unwrap()));
    assert_eq!(usd(1_234_567), "1.234567");
    assert_eq!(usd(5), "0.000005");
}

#[test]
fn request_pages_are_newest_first_and_the_cursor_loses_nothing() {
    let (mut sql, _) = ledger();
    let f = Filter {
        from_ms: 0,
        to_ms: 100 * D,
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let mut page = Page {
        status: Some(200),
        limit: 7,
        cursor: None,
    };
    let mut seen = Vec::new();
    loop {
        let (rows, next) = requests(&mut sql, &f, &page).unwrap();
        seen.extend(rows.iter().map(|r| r["ts"].as_str().unwrap().to_string()));
        let Some(next) = next else { break };
        let (ts, id) = next.split_once(':').unwrap();
        page.cursor = Some((ts.parse().unwrap(), id.to_string()));
    }
    let acme_ok = (0..80)
        .filter(|i: &u32| i.is_multiple_of(2) && !i.is_multiple_of(5))
        .count();
    assert_eq!(seen.len(), acme_ok);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
}
