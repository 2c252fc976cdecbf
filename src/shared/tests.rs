use std::sync::atomic::AtomicBool;

use super::*;
use crate::config::Budget;
use crate::limits::{PlanScope, PlanSlot, SlotRule};

/// A server that records every call and answers a granted admission, or fails on demand.
#[derive(Default)]
struct Fake {
    fail: AtomicBool,
    calls: Mutex<Vec<(&'static str, Vec<String>, String)>>,
}

#[async_trait]
impl CounterServer for Fake {
    async fn call(
        &self,
        _: Lane,
        f: &'static str,
        keys: &[String],
        arg: &str,
    ) -> Result<Vec<i64>, String> {
        if self.fail.load(Ordering::Relaxed) {
            return Err("connection refused".into());
        }
        self.calls.lock().push((f, keys.to_vec(), arg.to_string()));
        Ok(match f {
            wire::ADMIT => vec![1, 0, -1, 0, 1_000, 10, 9, 0, -1, -1, -1, 0],
            _ => vec![1],
        })
    }

    async fn ping(&self) -> Result<(), String> {
        if self.fail.load(Ordering::Relaxed) {
            return Err("connection refused".into());
        }
        Ok(())
    }
}

impl Fake {
    fn called(&self, f: &str) -> Vec<(Vec<String>, String)> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.0 == f)
            .map(|c| (c.1.clone(), c.2.clone()))
            .collect()
    }
}

fn store(lease: Duration) -> (Arc<Fake>, Arc<Shared>, crate::metrics::StateMetrics) {
    let fake = Arc::new(Fake::default());
    let metrics = crate::metrics::Metrics::new(8).unwrap().state.clone();
    let settings = Settings {
        prefix: "t:".into(),
        endpoint: "h:6379".into(),
        timeout: Duration::from_secs(1),
        lease,
    };
    let shared = Arc::new(Shared::new(fake.clone(), settings, metrics.clone()));
    shared.back();
    (fake, shared, metrics)
}

fn plan(rpm: Option<u64>, budget: Budget) -> SharedPlan {
    SharedPlan {
        tenant: "acme".into(),
        scopes: vec![PlanScope {
            id: "tenant:acme".into(),
            name: "tenant acme".into(),
            slots: rpm
                .map(|rpm| PlanSlot {
                    pattern: None,
                    rule: SlotRule {
                        rpm: Some(rpm),
                        tpm: Some(1000),
                        concurrency: None,
                    },
                })
                .into_iter()
                .collect(),
            budget,
        }],
        tokens: 10,
        usd: 0.5,
        price: Some(Price {
            input: 1.0,
            output: 1.0,
            cached_input: None,
        }),
    }
}

async fn settled(shared: &Shared) {
    while shared.settling() > 0 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_admission_is_one_call_and_its_lease_is_renewed_until_it_settles() {
    let (fake, shared, _) = store(Duration::ZERO);
    let Answer::Granted(held) = shared.admit(&plan(Some(10), Budget::default())).await else {
        panic!("granted")
    };
    assert_eq!(held.headers.requests.unwrap().remaining, 9);
    assert_eq!(fake.called(wire::ADMIT).len(), 1, "one round trip");
    shared.renew_due().await;
    let renewed = fake.called(wire::RENEW);
    assert_eq!(renewed.len(), 1, "a running request's lease is renewed");
    assert!(renewed[0].1.contains(":10\""), "{}", renewed[0].1);
    held.settle(7, 0.25);
    settled(&shared).await;
    let s = fake.called(wire::SETTLE);
    assert_eq!(s.len(), 1);
    assert!(s[0].1.contains("\"actual\":7") && s[0].1.contains("\"cost\":250000"));
    assert!(
        s[0].0.last().unwrap().contains("{acme}:done:s:"),
        "the settlement is marked done under its lease id: {:?}",
        s[0].0
    );
    shared.renew_due().await;
    assert_eq!(
        fake.called(wire::RENEW).len(),
        1,
        "a settled lease is not renewed"
    );
}

#[tokio::test]
async fn a_plan_with_only_a_price_asks_nothing_before_the_request_and_charges_after() {
    let (fake, shared, _) = store(Duration::from_secs(30));
    let Answer::Granted(held) = shared.admit(&plan(None, Budget::default())).await else {
        panic!("granted")
    };
    assert!(fake.called(wire::ADMIT).is_empty());
    held.settle(3, 0.001);
    settled(&shared).await;
    assert_eq!(fake.called(wire::SETTLE).len(), 1);
}

#[tokio::test]
async fn a_failed_call_marks_the_store_down_once_and_local_counts_merge_when_it_is_back() {
    let (fake, shared, metrics) = store(Duration::from_secs(30));
    fake.fail.store(true, Ordering::Relaxed);
    let p = plan(Some(10), Budget::default());
    assert!(matches!(shared.admit(&p).await, Answer::Unavailable));
    assert!(!shared.is_up());
    assert_eq!(metrics.up.get(), 0);
    assert!(matches!(shared.admit(&p).await, Answer::Unavailable));
    assert_eq!(
        metrics.errors.with_label_values(&["admit"]).get(),
        1,
        "while down, requests do not wait on the store"
    );
    let counted = Counted {
        tenant: p.tenant.clone(),
        wired: Arc::new(Wired::new("t:", &p)),
    };
    shared.count_locally(&counted, 40, 0.002);
    shared.count_locally(&counted, 2, 0.0);
    shared.tick().await;
    assert!(!shared.is_up(), "still away");
    assert_eq!(metrics.errors.with_label_values(&["connect"]).get(), 1);
    fake.fail.store(false, Ordering::Relaxed);
    shared.tick().await;
    assert!(shared.is_up());
    assert_eq!(metrics.up.get(), 1);
    let merged = fake.called(wire::MERGE);
    assert_eq!(merged.len(), 1, "one call per tenant");
    let arg: serde_json::Value = serde_json::from_str(&merged[0].1).unwrap();
    assert_eq!(
        arg["w"][0],
        serde_json::json!([1, 2, 42]),
        "2 requests, 42 tokens"
    );
    assert_eq!(
        arg["s"][0],
        serde_json::json!([2, 2000]),
        "$0.002 in micro-USD"
    );
    shared.tick().await;
    assert_eq!(fake.called(wire::MERGE).len(), 1, "merged once");
}

#[tokio::test]
async fn a_settlement_that_cannot_reach_the_store_is_sent_again_whole() {
    let (fake, shared, _) = store(Duration::from_secs(30));
    let Answer::Granted(held) = shared.admit(&plan(Some(10), Budget::default())).await else {
        panic!("granted")
    };
    fake.fail.store(true, Ordering::Relaxed);
    held.settle(9, 0.003);
    settled(&shared).await;
    assert!(!shared.is_up());
    fake.fail.store(false, Ordering::Relaxed);
    shared.tick().await;
    assert!(shared.is_up());
    let s = fake.called(wire::SETTLE);
    assert_eq!(s.len(), 1, "the same settlement, once");
    assert!(s[0].1.contains("\"actual\":9") && s[0].1.contains("\"cost\":3000"));
    assert!(
        s[0].0.last().unwrap().contains(":done:s:"),
        "applied at most once there"
    );
    assert!(fake.called(wire::MERGE).is_empty());
}

#[tokio::test]
async fn an_admission_that_failed_is_released_when_the_store_is_back() {
    let (fake, shared, _) = store(Duration::from_secs(30));
    fake.fail.store(true, Ordering::Relaxed);
    assert!(matches!(
        shared.admit(&plan(Some(10), Budget::default())).await,
        Answer::Unavailable
    ));
    fake.fail.store(false, Ordering::Relaxed);
    shared.tick().await;
    let s = fake.called(wire::SETTLE);
    assert_eq!(
        s.len(),
        1,
        "it may have run there late: its leases are given back"
    );
    assert!(s[0].1.contains("\"actual\":0") && s[0].1.contains("\"cost\":0"));
}
