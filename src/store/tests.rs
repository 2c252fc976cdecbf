use super::*;
use crate::control::input::{self, Catalog};

fn metrics() -> StoreMetrics {
    crate::metrics::Metrics::new(8).unwrap().store.clone()
}

fn config(url: &str) -> StoreConfig {
    let yaml = format!("store: {{url: \"{url}\", poll_ms: 20}}");
    crate::config::Config::from_yaml(&yaml, &|_| None)
        .unwrap()
        .store
}

fn new_key(name: &str) -> Write {
    let cat = Catalog {
        pools: vec![],
        now_ms: 0,
    };
    let body = format!(r#"{{"name":"{name}","tenant":"acme"}}"#);
    let s = crate::control::secret::generate().unwrap();
    Write::CreateKey {
        key: input::new_key(body.as_bytes(), &cat).unwrap(),
        id: crate::control::secret::new_id(1).unwrap(),
        digest: s.digest,
        hint: s.hint,
        make_tenant: true,
    }
}

#[test]
fn writes_reach_the_sink_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let cfg = config(&format!("sqlite://{}", path.display()));
    let (store, first) = Store::open(&cfg, metrics()).unwrap();
    assert_eq!(first.revision, 0);
    assert!(store.is_up());
    let (tx, rx) = std::sync::mpsc::channel();
    store.attach(Box::new(move |r| {
        let _ = tx.send(r.revision);
    }));
    assert_eq!(
        rx.recv().unwrap(),
        0,
        "attaching hands over the latest at once"
    );
    futures::executor::block_on(store.write("admin:x", new_key("ci"))).unwrap();
    assert_eq!(
        rx.recv().unwrap(),
        1,
        "the write is published before it returns"
    );
    drop(store);
    let (_again, records) = Store::open(&cfg, metrics()).unwrap();
    assert_eq!(records.revision, 1);
    assert_eq!(records.keys[0].name, "ci");
}

#[test]
fn a_second_handle_on_the_same_file_sees_changes_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&format!("sqlite://{}", dir.path().join("c.db").display()));
    let (a, _) = Store::open(&cfg, metrics()).unwrap();
    let (b, _) = Store::open(&cfg, metrics()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    b.attach(Box::new(move |r| {
        let _ = tx.send(r.keys.len());
    }));
    assert_eq!(rx.recv().unwrap(), 0);
    futures::executor::block_on(a.write("admin:x", new_key("ci"))).unwrap();
    let seen = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(seen, 1);
}

#[test]
fn an_unreachable_postgres_at_start_serves_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(&format!("postgres://u:p@127.0.0.1:{port}/db"));
    cfg.cache_file = dir.path().join("cache.json");
    let cached = Records {
        revision: 4,
        ..Default::default()
    };
    cache::save(&cfg.cache_file, &cached).unwrap();
    let (store, records) = Store::open(&cfg, metrics()).unwrap();
    assert_eq!(records.revision, 4);
    assert!(!store.is_up());
    let e = futures::executor::block_on(store.write("admin:x", new_key("ci"))).unwrap_err();
    assert!(matches!(e, OpError::Unavailable(_)), "{e:?}");
}
