//! Criterion benches for the hot pure code: SSE rewrite, Messages translation, request
//! rewrite, auth and routing.
//! Run: cargo bench --bench rewrite

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llmedge::anthropic::chat_stream::ChatStream;
use llmedge::anthropic::messages_stream::MessagesStream;
use llmedge::anthropic::to_chat::Asked;
use llmedge::auth::{KeyEntry, KeyStore, Principal};
use llmedge::clock::SystemClock;
use llmedge::config::secret::digest;
use llmedge::endpoint::StreamKind;
use llmedge::limits::{Ask, Governor};
use llmedge::openai::Usage;
use llmedge::openai::{inspect_request, rewrite_request};
use llmedge::router::{resolve, Route};
use llmedge::sse::StreamRewriter;
use std::sync::Arc;

fn stream(events: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..events {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"llama3\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":200,\"total_tokens\":209}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn sse(c: &mut Criterion) {
    let body = stream(200);
    let mut g = c.benchmark_group("sse_rewrite");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for chunk in [16usize, 256, 4096, 65536] {
        g.bench_with_input(
            BenchmarkId::new("chunk_bytes", chunk),
            &chunk,
            |b, &chunk| {
                let mut out = Vec::with_capacity(body.len());
                b.iter(|| {
                    out.clear();
                    let mut rw = StreamRewriter::new("ollama/llama3", true);
                    for piece in body.chunks(chunk) {
                        rw.feed(black_box(piece), &mut out);
                    }
                    rw.finish(&mut out);
                    black_box(rw.usage())
                })
            },
        );
    }
    g.finish();
    let one = stream(1);
    let event = &one[..one.iter().position(|b| *b == b'\n').unwrap_or(0) + 2];
    c.bench_function("sse_rewrite/per_event", |b| {
        let mut rw = StreamRewriter::new("ollama/llama3", true);
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            rw.feed(black_box(event), &mut out);
        })
    });
}

/// A Messages stream of `tokens` text deltas, as an Anthropic upstream sends it.
fn messages_stream(tokens: usize) -> Vec<u8> {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..tokens {
        s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i}\"}}}}\n\n"));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":200}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn whole(make: impl Fn() -> StreamRewriter, body: &[u8], out: &mut Vec<u8>) -> Option<Usage> {
    out.clear();
    let mut rw = make();
    for piece in body.chunks(256) {
        rw.feed(black_box(piece), out);
    }
    rw.finish(out);
    rw.usage()
}

fn translate(c: &mut Criterion) {
    let chat = stream(200);
    let msgs = messages_stream(200);
    let to_anthropic = || {
        let t = ChatStream::new("coder", "msg_1", Asked::default());
        StreamRewriter::translating(Box::new(t))
    };
    let to_openai =
        || StreamRewriter::translating(Box::new(MessagesStream::new("c", "id", 0, true)));
    let native = || StreamRewriter::for_kind(StreamKind::MessagesEvents, "my-claude", false);
    let mut g = c.benchmark_group("messages");
    g.throughput(Throughput::Elements(200));
    let mut out = Vec::with_capacity(chat.len() * 2);
    g.bench_function("chat_to_messages/200_tokens", |b| {
        b.iter(|| black_box(whole(to_anthropic, &chat, &mut out)))
    });
    g.bench_function("messages_to_chat/200_tokens", |b| {
        b.iter(|| black_box(whole(to_openai, &msgs, &mut out)))
    });
    g.bench_function("native/200_tokens", |b| {
        b.iter(|| black_box(whole(native, &msgs, &mut out)))
    });
    g.finish();
}

fn request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_rewrite");
    for size in [200usize, 64 << 10, 1 << 20] {
        let body = format!(
            r#"{{"model":"ollama/llama3","stream":true,"temperature":0.2,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(size)
        );
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("content_bytes", size), &body, |b, body| {
            b.iter(|| {
                let (obj, head) = inspect_request(black_box(body.as_bytes()))
                    .unwrap_or_else(|_| std::process::abort());
                black_box(rewrite_request(&obj, &head, "llama3"))
            })
        });
    }
    g.finish();
}

fn auth_and_route(c: &mut Criterion) {
    let entries: Vec<KeyEntry> = (0..10_000)
        .map(|i| KeyEntry {
            digest: digest(format!("sk-key-{i}").as_bytes()),
            principal: Principal {
                tenant: "t".into(),
                user: "u".into(),
                key_index: i,
                key_id: format!("k{i}").into(),
            },
            models: None,
            pools: None,
            limits: Default::default(),
            budget: Default::default(),
            expires_ms: None,
            retiring: Vec::new(),
        })
        .collect();
    let store = KeyStore::new(entries);
    c.bench_function("auth_lookup/10k_keys", |b| {
        b.iter(|| black_box(store.lookup_at(black_box(b"sk-key-5000"), 1).is_some()))
    });
    let routes: Vec<Route> = (0..100)
        .map(|i| Route {
            prefix: format!("p{i}/"),
            pool: 0,
            pool_name: "x".into(),
            strip_prefix: true,
            fallbacks: vec![],
            endpoints: llmedge::endpoint::EndpointSet::all(),
            anonymous: false,
            limits: llmedge::config::Limits::default(),
        })
        .collect();
    c.bench_function("router_resolve/100_routes_last", |b| {
        b.iter(|| black_box(resolve(&routes, black_box("p99/llama3"))))
    });
}

fn limits(c: &mut Criterion) {
    let mut yaml = String::from(
        "pools: {p: {backends: ['http://h']}}\nroutes: [{prefix: '', pool: p}]\n\
         pricing: {'m*': {input: 2.5, output: 10}}\n\
         tenants: {t: {limits: {rpm: 1000000000, tpm: 1000000000000}, budget: {usd_per_day: 1000000}}}\nkeys:\n",
    );
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - {{key: sk-{i}, tenant: t, limits: {{rpm: 1000000, tpm: 1000000000, models: {{'m*': {{tpm: 1000000000}}}}}}, budget: {{usd_per_day: 1000}}}}\n"
        ));
    }
    let config = llmedge::config::Config::from_yaml(&yaml, &|_| None)
        .unwrap_or_else(|_| std::process::abort());
    let g = Governor::new(
        &config,
        &llmedge::limits::Counters::default(),
        Arc::new(SystemClock),
    );
    let mut i = 0usize;
    c.bench_function("limits/admit_and_settle_10k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let ask = Ask {
                key: &config.keys[i],
                model: "m1",
                prompt: 100,
                completion: 200,
            };
            if let Ok(adm) = g.admit(black_box(&ask)) {
                black_box(g.settle(
                    &adm,
                    Usage {
                        prompt_tokens: 90,
                        completion_tokens: 150,
                        total_tokens: 240,
                        prompt_tokens_details: None,
                    },
                ));
            }
        })
    });
}

/// What one store change costs a gateway with 10,000 store keys: the file config joined with
/// the records, and the snapshot built from it (off the request path, on the store thread).
fn control_merge(c: &mut Criterion) {
    use llmedge::control::{KeyRecord, KeySpec, Records, SecretRecord};
    let Ok(config) = llmedge::config::Config::from_yaml(
        "pools: {p: {backends: ['http://127.0.0.1:1']}}\nroutes: [{prefix: '', pool: p}]\nstate: {enabled: false}",
        &|_| None,
    ) else {
        return;
    };
    let keys = (0..10_000)
        .map(|i| KeyRecord {
            id: format!("key_{i:020}"),
            tenant: format!("t{}", i % 100),
            name: format!("k{i}"),
            user: String::new(),
            hint: "sk-…0000".into(),
            spec: KeySpec {
                models: Some(vec!["ollama/*".into()]),
                pools: None,
                limits: Some(serde_json::json!({"rpm": 60, "tpm": 100000})),
                budget: Some(serde_json::json!({"usd_per_day": 5.0})),
            },
            expires_at: None,
            created_at: 0,
            updated_at: 0,
            revoked_at: None,
            secrets: vec![SecretRecord {
                digest: hex::encode(digest(format!("sk-{i}").as_bytes())),
                until: None,
            }],
        })
        .collect();
    let records = Arc::new(Records {
        revision: 1,
        keys,
        tenants: vec![],
    });
    let mut g = c.benchmark_group("control");
    g.sample_size(10);
    g.bench_function("apply_revision/10k_store_keys", |b| {
        b.iter(|| {
            let live = llmedge::live::Live::new(config.clone());
            live.set_records(records.clone());
            black_box(live.load().keys.len())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    sse,
    translate,
    request,
    auth_and_route,
    limits,
    control_merge
);
criterion_main!(benches);
