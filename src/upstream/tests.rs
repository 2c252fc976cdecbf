use super::*;
use crate::config::Config;

fn pool(extra: &str) -> Pool {
    let yaml = format!(
        "pools:\n  p:\n    backends: ['http://127.0.0.1:1', 'http://127.0.0.1:2', 'http://[::1]:3/base']\n{extra}\nroutes: [{{prefix: '', pool: p}}]"
    );
    let c = Config::from_yaml(&yaml, &|_| None).unwrap();
    Pool::new(c.pools[0].clone(), &Backends::default())
}

#[test]
fn selection_skips_tried_ejected_and_held_backends() {
    let p = pool("");
    let now = Instant::now();
    assert_eq!(p.select(&[0, 1], None, now), Some(2));
    p.with_health(2, |h| h.eject(now));
    assert_eq!(p.select(&[0], None, now), Some(1));
    assert_eq!(
        p.select(&[0, 1], None, now),
        Some(2),
        "panic mode: an ejected backend is better than none"
    );
    p.with_health(2, |h| h.hold(now, Duration::from_secs(5)));
    assert_eq!(
        p.select(&[0, 1], None, now),
        None,
        "Retry-After is always honoured"
    );
    assert_eq!(p.paused_for(&[0, 1], now), Some(Duration::from_secs(5)));
    assert_eq!(
        p.paused_for(&[0, 1], now + Duration::from_secs(2)),
        Some(Duration::from_secs(3))
    );
    assert_eq!(p.paused_for(&[0, 1], now + Duration::from_secs(5)), None);
    assert!(!p.has_candidate(&[0, 1], now));
    assert!(p.has_candidate(&[0], now));
}

#[test]
fn active_checks_keep_a_failed_backend_out_even_in_panic() {
    let p = pool("    health: {path: /health, unhealthy_after: 1}");
    let now = Instant::now();
    let cfg = p.config.health.clone().unwrap();
    p.with_health(0, |h| h.on_check(false, now, &cfg));
    assert!(!p.is_up(0, now));
    assert_eq!(p.select(&[1, 2], None, now), None);
    assert!(p.any_available(now));
}

#[test]
fn in_flight_guards_count_and_release() {
    let p = pool("");
    let g = p.begin(1).unwrap();
    let g2 = p.begin(1).unwrap();
    assert_eq!(p.inflight(1), 2);
    drop(g);
    drop(g2);
    assert_eq!(p.inflight(1), 0);
}

#[test]
fn scrapes_teach_slots_and_ends_since_the_scrape_are_counted() {
    let p = pool("    balance: vllm_load\n    metrics: {interval_ms: 500}");
    let t0 = Instant::now();
    let scraped = |waiting, running, kv_usage| {
        Some(Scraped {
            waiting,
            running,
            kv_usage,
        })
    };
    p.set_load(0, scraped(0.0, 0.0, 0.0), p.counts(0), t0);
    assert_eq!(
        p.load_signal(0, t0).unwrap().slots,
        None,
        "idle: not learned"
    );
    p.set_load(0, scraped(0.0, 2.0, 0.0001), p.counts(0), t0);
    assert_eq!(
        p.load_signal(0, t0).unwrap().slots,
        None,
        "too little fill to tell"
    );
    p.set_load(0, scraped(0.0, 3.0, 0.75), p.counts(0), t0);
    drop(p.begin(0));
    let l = p.load_signal(0, t0).unwrap();
    assert_eq!(l.slots, Some(4.0));
    assert_eq!((l.sent_since_scrape, l.ended_since_scrape), (1, 1));
    // asked for, then a request is sent while the scrape is on its way: it counts as after it
    let base = p.counts(0);
    let _g = p.begin(0);
    p.set_load(0, scraped(0.0, 0.0, 0.0), base, t0);
    let l = p.load_signal(0, t0).unwrap();
    assert_eq!(l.slots, Some(4.0), "an idle scrape keeps what was learned");
    assert_eq!((l.sent_since_scrape, l.ended_since_scrape), (1, 0));
    p.set_load(0, None, p.counts(0), t0);
    p.set_load(0, scraped(0.0, 0.0, 0.0), p.counts(0), t0);
    let l = p.load_signal(0, t0).unwrap();
    assert_eq!(
        l.slots,
        Some(4.0),
        "a failed scrape forgets the signal, not the slots"
    );
    assert_eq!((l.sent_since_scrape, l.ended_since_scrape), (0, 0));
}

#[test]
fn load_signal_is_fresh_or_unknown_and_counts_sends_since_the_scrape() {
    let p = pool("    balance: vllm_load\n    metrics: {interval_ms: 500}");
    let t0 = Instant::now();
    assert_eq!(p.load_signal(0, t0), None, "never scraped: unknown");
    let s = Scraped {
        waiting: 2.0,
        running: 1.0,
        kv_usage: 0.5,
    };
    p.set_load(0, Some(s), p.counts(0), t0);
    let _g = p.begin(0);
    let l = p.load_signal(0, t0).unwrap();
    assert_eq!((l.waiting, l.sent_since_scrape), (2.0, 1));
    assert_eq!(
        p.load_signal(0, t0 + Duration::from_millis(1501)),
        None,
        "stale after 3 intervals"
    );
    assert!(p.load_signal(0, t0 + Duration::from_millis(1499)).is_some());
    assert_eq!(l.service_secs, 1.0, "no request finished yet");
    p.observe_service(0, Duration::from_millis(500));
    p.observe_service(0, Duration::from_millis(1500));
    let l = p.load_signal(0, t0).unwrap();
    assert!(
        (l.service_secs - 0.7).abs() < 1e-9,
        "ewma: {}",
        l.service_secs
    );
    p.set_load(0, None, p.counts(0), t0);
    assert_eq!(
        p.load_signal(0, t0),
        None,
        "failed scrape: unknown, not zero"
    );
}

#[test]
fn peers_use_the_pool_timeouts() {
    let p = pool("    timeouts: {connect_ms: 100, first_byte_ms: 2000, idle_ms: 500}");
    let peer = p.peer(2, "[::1]:3".parse().unwrap()).unwrap();
    assert_eq!(
        peer.options.connection_timeout,
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        peer.options.read_timeout,
        Some(Duration::from_millis(7000)),
        "backstop only"
    );
    assert_eq!(peer.options.idle_timeout, Some(UPSTREAM_IDLE_TIMEOUT));
    let idle = peer.options.idle_timeout.unwrap();
    assert!(
        idle < Duration::from_secs(5) && idle >= Duration::from_secs(1),
        "pooled connections retire before uvicorn's 5 s keep-alive closes them: {idle:?}"
    );
}

#[test]
fn pools_of_two_snapshots_share_backend_state_by_url() {
    let live = Backends::default();
    let yaml = |backends: &str, health: &str| {
        format!(
            "pools:\n  p:\n    backends: [{backends}]\n{health}\nroutes: [{{prefix: '', pool: p}}]"
        )
    };
    let health = "    health: {path: /health, unhealthy_after: 1}";
    let c = Config::from_yaml(&yaml("'http://a:1', 'http://b:1'", health), &|_| None).unwrap();
    let old = Pool::new(c.pools[0].clone(), &live);
    let now = Instant::now();
    let cfg = old.config.health.clone().unwrap();
    old.with_health(1, |h| h.on_check(false, now, &cfg));
    let _slot = old.begin(1);
    let c = Config::from_yaml(&yaml("'http://b:1'", health), &|_| None).unwrap();
    let new = Pool::new(c.pools[0].clone(), &live);
    assert!(
        !new.is_up(0, now),
        "the failed check counts in the new snapshot"
    );
    assert_eq!(
        new.inflight(0),
        1,
        "the old snapshot's request holds its slot here"
    );
    new.with_health(0, |h| h.on_check(true, now, &cfg));
    assert!(
        old.is_up(1, now),
        "and a check through the new snapshot is seen by the old"
    );
    let c = Config::from_yaml(&yaml("'http://b:1'", ""), &|_| None).unwrap();
    old.with_health(1, |h| h.on_check(false, now, &cfg));
    let unchecked = Pool::new(c.pools[0].clone(), &live);
    assert!(
        unchecked.is_up(0, now),
        "without checks, their old verdict does not hold it down"
    );
}

fn cache_aware_config(max_blocks: usize) -> PoolConfig {
    let yaml = format!(
        "pools:\n  p:\n    backends: ['http://127.0.0.1:1', 'http://127.0.0.1:2']\n    balance: cache_aware\n    cache_aware: {{block_chars: 16, max_blocks: {max_blocks}}}\nroutes: [{{prefix: '', pool: p}}]"
    );
    Config::from_yaml(&yaml, &|_| None).unwrap().pools[0].clone()
}

#[test]
fn the_prefix_index_follows_the_prompt_outlives_reloads_and_forgets_a_backend() {
    let live = Backends::default();
    let p = Pool::new(cache_aware_config(1000), &live);
    let now = Instant::now();
    let blocks = crate::prefix::blocks(&[&[b'x'; 160]], 16);
    let (first, held) = p.select_by_prefix(&[], &blocks, now).unwrap();
    assert_eq!(held, 0, "cold");
    for _ in 0..5 {
        assert_eq!(
            p.select_by_prefix(&[], &blocks, now),
            Some((first, 10)),
            "it stays where its prefix is"
        );
    }
    // a reload with the same settings keeps what was learnt
    let reloaded = Pool::new(cache_aware_config(1000), &live);
    assert_eq!(
        reloaded.select_by_prefix(&[], &blocks, now),
        Some((first, 10))
    );
    assert_eq!(reloaded.prefix_entries(), Some(10));
    // the backend ejected or down: forgotten, so nothing pulls the prompt back to it
    reloaded.forget_prefixes(first);
    assert_eq!(reloaded.prefix_entries(), Some(0));
    // a changed max_blocks starts afresh; a pool that is not cache_aware has no index
    let resized = Pool::new(cache_aware_config(5), &live);
    assert_eq!(resized.prefix_entries(), Some(0));
    resized.select_by_prefix(&[], &blocks, now);
    assert_eq!(resized.prefix_entries(), Some(5), "bounded by max_blocks");
    assert_eq!(pool("").prefix_entries(), None);
}
