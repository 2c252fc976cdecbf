use super::*;
use crate::store::schema;
use crate::store::sqlite::Sqlite;

fn db() -> Sqlite {
    let mut s = Sqlite::open(":memory:").unwrap();
    schema::migrate(&mut s).unwrap();
    s
}

fn row(id: &str, ts_ms: u64, cost: i64) -> Entry {
    Entry {
        id: id.into(),
        request_id: format!("req_{id}"),
        ts_ms,
        tenant: "acme".into(),
        key_id: "key_1".into(),
        model: "m".into(),
        endpoint: "chat",
        status: 200,
        prompt_tokens: 3,
        completion_tokens: 4,
        cost_micros: cost,
        duration_ms: 9,
        ..Default::default()
    }
}

fn daily(sql: &mut Sqlite) -> Vec<Vec<Val>> {
    sql.query(
        "SELECT day, requests, prompt_tokens, completion_tokens, cost_micros FROM llmedge_usage_daily ORDER BY day",
        &[],
    )
    .unwrap()
}

#[test]
fn rows_and_their_rollup_are_written_once_even_when_a_batch_is_sent_twice() {
    let mut sql = db();
    let day = crate::clock::DAY_MS;
    let batch: Vec<Entry> = (0..600)
        .map(|i| row(&format!("g-{i}"), day * 10 + u64::from(i % 2 == 0) * day, 5))
        .collect();
    assert_eq!(write_rows(&mut sql, &batch[..500]).unwrap(), 500);
    assert_eq!(
        write_rows(&mut sql, &batch[400..]).unwrap(),
        100,
        "a resent batch adds only what is new"
    );
    let d = daily(&mut sql);
    assert_eq!(d.len(), 2);
    let requests: i64 = d.iter().map(|r| r[1].int().unwrap()).sum();
    let cost: i64 = d.iter().map(|r| r[4].int().unwrap()).sum();
    assert_eq!((requests, cost), (600, 3000));
    let raw = sql
        .query("SELECT COUNT(*), SUM(cost_micros) FROM llmedge_usage", &[])
        .unwrap();
    assert_eq!((raw[0][0].int(), raw[0][1].int()), (Some(600), Some(3000)));
}

#[test]
fn pruning_drops_raw_rows_and_keeps_the_rollup() {
    let mut sql = db();
    write_rows(&mut sql, &[row("a", 1_000, 1), row("b", 9_000, 2)]).unwrap();
    assert_eq!(prune(&mut sql, 5_000).unwrap(), 1);
    let raw = sql.query("SELECT id FROM llmedge_usage", &[]).unwrap();
    assert_eq!(raw, vec![vec![Val::Text("b".into())]]);
    assert_eq!(
        daily(&mut sql)[0][4],
        Val::Int(3),
        "the rollup keeps the pruned row's cost"
    );
}

#[test]
fn a_batch_over_many_keys_rolls_up_each_one() {
    let mut sql = db();
    let rows: Vec<Entry> = (0..500u64)
        .map(|i| {
            let mut e = row(
                &format!("k-{i}"),
                (i % 2) * crate::clock::DAY_MS,
                1 + (i as i64 % 7),
            );
            e.key_id = format!("key_{}", i % 150).into();
            e
        })
        .collect();
    write_rows(&mut sql, &rows).unwrap();
    let groups = sql
        .query(
            "SELECT key_id, day, requests, cost_micros FROM llmedge_usage_daily",
            &[],
        )
        .unwrap();
    assert_eq!(groups.len(), 150, "150 keys, each on one day");
    for g in groups {
        let (key, day) = (g[0].text().unwrap(), g[1].int().unwrap() as u64);
        let mine: Vec<&Entry> = rows
            .iter()
            .filter(|e| &*e.key_id == key && e.ts_ms / crate::clock::DAY_MS == day)
            .collect();
        assert_eq!(g[2].int(), Some(mine.len() as i64));
        assert_eq!(g[3].int(), Some(mine.iter().map(|e| e.cost_micros).sum()));
    }
}
