use super::*;

fn cand(index: usize, weight: u32, inflight: usize) -> Candidate {
    Candidate {
        index,
        weight,
        inflight,
        id: hash_bytes(format!("backend-{index}").as_bytes()),
        load: None,
        matched: 0.0,
    }
}

fn counts(algo: Balance, cands: &[Candidate], n: u64) -> Vec<usize> {
    let mut c = vec![0; cands.iter().map(|c| c.index).max().unwrap() + 1];
    for seq in 0..n {
        c[select(algo, cands, seq, None).unwrap()] += 1;
    }
    c
}

#[test]
fn weighted_round_robin_follows_weights_exactly() {
    let cands = [cand(0, 2, 0), cand(1, 1, 0), cand(2, 1, 0)];
    assert_eq!(counts(Balance::RoundRobin, &cands, 400), [200, 100, 100]);
    assert_eq!(select(Balance::RoundRobin, &[], 0, None), None);
}

#[test]
fn least_outstanding_prefers_idle_backends() {
    let two = [cand(0, 1, 5), cand(1, 1, 0)];
    assert_eq!(counts(Balance::LeastOutstanding, &two, 100), [0, 100]);
    let three = [cand(0, 1, 9), cand(1, 1, 0), cand(2, 1, 9)];
    let c = counts(Balance::LeastOutstanding, &three, 3000);
    assert!(
        c[1] > 1800,
        "p2c picks the idle one whenever it is drawn: {c:?}"
    );
    let weighted = [cand(0, 4, 4), cand(1, 1, 2)];
    assert_eq!(
        select(Balance::LeastOutstanding, &weighted, 0, None),
        Some(0),
        "4/4 < 2/1"
    );
}

#[test]
fn consistent_hash_is_sticky_and_moves_about_one_nth_when_a_backend_leaves() {
    let four: Vec<Candidate> = (0..4).map(|i| cand(i, 1, 0)).collect();
    let three: Vec<Candidate> = four.iter().copied().filter(|c| c.index != 2).collect();
    let keys: Vec<u64> = (0..4000)
        .map(|k| hash_bytes(format!("session-{k}").as_bytes()))
        .collect();
    let mut moved = 0;
    let mut per = [0usize; 4];
    for &k in &keys {
        let before = select(Balance::ConsistentHash, &four, 0, Some(k)).unwrap();
        assert_eq!(
            select(Balance::ConsistentHash, &four, 99, Some(k)),
            Some(before),
            "sticky"
        );
        per[before] += 1;
        let after = select(Balance::ConsistentHash, &three, 0, Some(k)).unwrap();
        if after != before {
            assert_eq!(before, 2, "only keys of the removed backend move");
            moved += 1;
        }
    }
    assert!(
        (800..1200).contains(&moved),
        "about 1/4 of keys move: {moved}"
    );
    assert!(
        per.iter().all(|&n| (800..1200).contains(&n)),
        "even spread: {per:?}"
    );
}

#[test]
fn consistent_hash_respects_weights() {
    let cands = [cand(0, 3, 0), cand(1, 1, 0)];
    let mut per = [0usize; 2];
    for k in 0..4000u64 {
        per[select(Balance::ConsistentHash, &cands, 0, Some(mix(k))).unwrap()] += 1;
    }
    assert!((2800..3200).contains(&per[0]), "3:1 weights: {per:?}");
}

fn loaded(index: usize, waiting: f64, running: f64, kv: f64, sent: usize) -> Candidate {
    Candidate {
        load: Some(Load {
            waiting,
            running,
            kv_usage: kv,
            sent_since_scrape: sent,
            ended_since_scrape: 0,
            slots: slots_seen(waiting, running, kv),
            service_secs: 1.0,
        }),
        ..cand(index, 1, 0)
    }
}

#[test]
fn vllm_load_prefers_free_slots_then_short_queues_per_slot() {
    let free = [loaded(0, 0.0, 3.0, 0.75, 0), loaded(1, 0.0, 1.0, 0.25, 0)];
    assert_eq!(
        select(Balance::VllmLoad, &free, 0, None),
        Some(1),
        "emptiest cache wins"
    );
    let full = [loaded(0, 1.0, 4.0, 1.0, 0), loaded(1, 0.0, 1.0, 1.0, 0)];
    assert_eq!(
        select(Balance::VllmLoad, &full, 0, None),
        Some(0),
        "a 4-slot backend with one queued beats a full 1-slot backend"
    );
    let mut sent = [loaded(0, 0.0, 0.0, 0.0, 3), loaded(1, 0.0, 1.0, 0.5, 0)];
    sent[0].load.as_mut().unwrap().slots = Some(4.0);
    assert_eq!(
        select(Balance::VllmLoad, &sent, 0, None),
        Some(1),
        "recent sends count: 3 of 4 slots filled since the scrape"
    );
    sent[0].load.as_mut().unwrap().ended_since_scrape = 2;
    assert_eq!(
        select(Balance::VllmLoad, &sent, 0, None),
        Some(0),
        "and so do the ends seen since: 1 of 4 slots held"
    );
}

#[test]
fn a_request_sent_since_the_scrape_fills_a_slot_rather_than_queueing() {
    let l = loaded(0, 0.0, 2.0, 0.5, 1).load.unwrap();
    assert_eq!(l.slots, Some(4.0), "2 running at half the cache: 4 fit");
    assert_eq!(l.score(0), 0.75, "3 of 4 slots held, none queued");
    assert_eq!(
        l.score(4),
        1.25,
        "the gateway's own in-flight count is a floor"
    );
    let idle = loaded(0, 0.0, 0.0, 0.0, 5).load.unwrap();
    assert_eq!(idle.slots, None, "nothing ran: capacity unknown");
    assert!(idle.score(5) < 0.1, "unknown capacity is never called full");
    let stuck = loaded(0, 2.0, 0.0, 0.0, 0).load.unwrap();
    assert_eq!(
        stuck.slots, None,
        "a queue with nothing running shows no capacity"
    );
    assert!(stuck.score(0) > 1.0, "but a backend that queues is full");
    let quieter = loaded(0, 0.0, 0.0, 0.0, 2).load.unwrap();
    assert!(
        idle.score(5) > quieter.score(2),
        "but ranks by what it holds"
    );
    assert_eq!(
        slots_seen(0.0, 4.0, 1.0),
        Some(4.0),
        "a full cache shows the limit"
    );
    assert_eq!(
        slots_seen(3.0, 6.0, 0.6),
        Some(10.0),
        "a queue beside free cache is a step budget: the cache tells"
    );
    assert_eq!(
        slots_seen(3.0, 8.0, 0.01),
        Some(8.0),
        "a queue on an empty cache"
    );
    assert_eq!(slots_seen(0.0, 2.0, 0.01), None, "too little fill to tell");
    assert_eq!(slots_seen(0.0, 2.0, f64::NAN), None);
}

#[test]
fn vllm_load_weighs_queues_by_how_long_slots_are_held() {
    let mut fast = loaded(0, 3.0, 4.0, 1.0, 0);
    let mut slow = loaded(1, 0.0, 1.0, 1.0, 0);
    fast.load.as_mut().unwrap().service_secs = 0.4;
    slow.load.as_mut().unwrap().service_secs = 1.6;
    assert_eq!(
        select(Balance::VllmLoad, &[fast, slow], 0, None),
        Some(0),
        "3 queued on 4 fast slots (0.4 s wait) beat 1 slow slot (1.6 s wait)"
    );
}

#[test]
fn vllm_load_without_a_fresh_signal_falls_back_to_least_outstanding() {
    let mixed = [loaded(0, 0.0, 0.0, 0.0, 0), cand(1, 1, 0)];
    let mut busy = mixed;
    busy[0].inflight = 7;
    assert_eq!(select(Balance::VllmLoad, &busy, 0, None), Some(1));
}

fn holding(index: usize, inflight: usize, matched: f64) -> Candidate {
    Candidate {
        matched,
        ..cand(index, 1, inflight)
    }
}

#[test]
fn cache_aware_follows_the_prefix_while_its_holder_is_not_saturated() {
    // equal load: the backend holding most of the prompt wins, every time
    let c = [holding(0, 2, 0.1), holding(1, 2, 0.9), holding(2, 2, 0.0)];
    for seq in 0..50 {
        assert_eq!(cache_aware(&c, seq, 1.0), Some(1));
    }
    // a little busier still wins: the prefill it saves outweighs its extra load
    let c = [holding(0, 3, 0.0), holding(1, 5, 0.9)];
    assert_eq!(cache_aware(&c, 0, 1.0), Some(1));
}

#[test]
fn cache_aware_moves_off_a_saturated_holder_and_a_shared_prefix_spreads() {
    // the holder has far more in flight than the rest: it loses the request
    let c = [holding(0, 20, 1.0), holding(1, 1, 0.0), holding(2, 1, 0.0)];
    assert_ne!(cache_aware(&c, 0, 1.0), Some(0));
    // with scraped load: a backend with a queue loses to one with free slots
    let busy = Candidate {
        matched: 0.8,
        ..loaded(0, 12.0, 8.0, 1.0, 0)
    };
    let free = Candidate {
        matched: 0.1,
        ..loaded(1, 0.0, 2.0, 0.3, 0)
    };
    assert_eq!(cache_aware(&[busy, free], 0, 1.0), Some(1));
    // every backend holds the shared system prompt: load decides, and ties rotate
    let all = [
        holding(0, 0, 0.5),
        holding(1, 0, 0.5),
        holding(2, 0, 0.5),
        holding(3, 0, 0.5),
    ];
    let mut seen = [0usize; 4];
    for seq in 0..400 {
        seen[cache_aware(&all, seq, 1.0).unwrap()] += 1;
    }
    assert!(seen.iter().all(|&n| n > 50), "ties spread: {seen:?}");
    // load_weight 0: pure affinity
    let c = [holding(0, 50, 1.0), holding(1, 0, 0.0)];
    assert_eq!(cache_aware(&c, 0, 0.0), Some(0));
    assert_eq!(cache_aware(&[], 0, 1.0), None);
}

#[test]
fn cache_aware_keeps_a_burst_on_the_holder_while_it_has_free_slots() {
    // cold start: nothing ran yet, so no backend's slots are known; what was just sent to the
    // holder does not make it look saturated
    let mut holder = loaded(0, 0.0, 0.0, 0.0, 3);
    holder.matched = 0.8;
    holder.inflight = 3;
    let idle = loaded(1, 0.0, 0.0, 0.0, 0);
    assert_eq!(cache_aware(&[holder, idle], 0, 1.0), Some(0));
    // once the scrapes show 4 slots and the holder has all 4 busy, the request goes to a
    // backend with a free slot
    let mut full = loaded(0, 0.0, 3.0, 0.75, 1);
    full.matched = 0.8;
    full.inflight = 4;
    let mut near = loaded(1, 0.0, 1.0, 0.25, 0);
    near.matched = 0.2;
    near.inflight = 1;
    assert_eq!(cache_aware(&[full, near], 0, 1.0), Some(1));
    // with a free slot left the holder keeps it
    full.inflight = 3;
    full.load.as_mut().unwrap().sent_since_scrape = 0;
    assert_eq!(cache_aware(&[full, near], 0, 1.0), Some(0));
}
