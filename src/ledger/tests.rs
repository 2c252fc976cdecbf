use super::*;

fn entry(ts_ms: u64, tenant: &str, model: &str, cost: i64) -> Entry {
    Entry {
        ts_ms,
        tenant: tenant.into(),
        key_id: format!("key_{tenant}").into(),
        model: model.into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cached_tokens: 2,
        cost_micros: cost,
        ..Default::default()
    }
}

#[test]
fn the_rollup_adds_up_per_utc_day_tenant_key_and_model() {
    let day = DAY_MS;
    let rows = [
        entry(day * 3 + 1, "a", "m", 7),
        entry(day * 4 - 1, "a", "m", 3),
        entry(day * 4, "a", "m", 1),
        entry(day * 3 + 5, "b", "m", 2),
        entry(day * 3 + 5, "a", "n", 4),
    ];
    let r = rollup(rows.iter());
    assert_eq!(r.len(), 4);
    let k = DayKey {
        day: 3,
        tenant: "a".into(),
        key_id: "key_a".into(),
        model: "m".into(),
    };
    assert_eq!(
        r[&k],
        Totals {
            requests: 2,
            prompt_tokens: 20,
            completion_tokens: 10,
            cached_tokens: 4,
            cost_micros: 10,
        }
    );
    assert_eq!(r.values().map(|t| t.cost_micros).sum::<i64>(), 17);
}

#[test]
fn micros_round_to_the_micro_dollar() {
    assert_eq!(micros(0.000_002_5), 3);
    assert_eq!(micros(1.234_567_4), 1_234_567);
    assert_eq!(micros(0.0), 0);
}

#[test]
fn a_row_the_queue_cannot_take_is_counted_as_dropped() {
    let m = crate::metrics::Metrics::new(4).unwrap();
    let (tx, rx) = mpsc::sync_channel(1);
    let ledger = Ledger {
        tx,
        metrics: m.ledger.clone(),
        drop_logged: AtomicU64::new(0),
    };
    ledger.record(entry(1, "a", "m", 1));
    assert_eq!((m.ledger.queued.get(), m.ledger.dropped.get()), (1, 0));
    ledger.record(entry(2, "a", "m", 1)); // the queue is full
    assert_eq!(m.ledger.dropped.get(), 1);
    drop(rx);
    ledger.record(entry(3, "a", "m", 1)); // the writer is gone
    assert_eq!(m.ledger.dropped.get(), 2);
}
