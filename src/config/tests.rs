use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-upstream".into()),
        "ACME_KEY" => Some("sk-acme".into()),
        _ => None,
    }
}

fn load(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(yaml, &env)
}

const GOOD: &str = r#"
server:
  listen: "127.0.0.1:8080"
  admin_listen: "127.0.0.1:9090"
  threads: 2
  max_body_bytes: 1048576
keys:
  - key: "sk-team-acme"
    tenant: acme
    user: alice
    models: ["ollama/*", "gpt-4o*"]
  - key: "env:ACME_KEY"
    tenant: acme
pools:
  ollama:
    backends: ["http://127.0.0.1:11434"]
  openai:
    backends: ["https://api.openai.com/v1base/"]
    api_key: "env:OPENAI_API_KEY"
routes:
  - prefix: "ollama/"
    pool: ollama
    strip_prefix: true
  - prefix: "gpt-"
    pool: openai
default_model: "ollama/llama3"
"#;

#[test]
fn the_issue_example_loads() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.server.max_body_bytes, 1_048_576);
    assert_eq!(c.keys.len(), 2);
    assert_eq!(c.routes[1].pool_name, "openai");
    let openai = &c.pools[c.routes[1].pool];
    assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-upstream");
    let b = &openai.backends[0];
    assert_eq!(
        (b.tls, b.port, b.host.as_str()),
        (true, 443, "api.openai.com")
    );
    assert_eq!(b.base_path, "/v1base");
    assert_eq!(b.authority, "api.openai.com");
    assert_eq!(
        c.pools[c.routes[0].pool].backends[0].authority,
        "127.0.0.1:11434"
    );
}

#[test]
fn defaults_apply_to_an_empty_server_block() {
    let c = load("pools: {p: {backends: ['http://h']}}\nroutes: [{prefix: '', pool: p}]").unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.admin_listen.unwrap().to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.max_body_bytes, 33_554_432);
    assert_eq!(c.pools[0].backends[0].port, 80);
}

fn err(yaml: &str) -> String {
    load(yaml).unwrap_err().to_string()
}

#[test]
fn errors_name_the_path() {
    let bad_route = GOOD.replace("pool: openai", "pool: opena");
    assert_eq!(
        err(&bad_route),
        "routes[1].pool: unknown pool \"opena\" (known: ollama, openai)"
    );
    let unknown = GOOD.replace("tenant: acme\n    user", "tenent: acme\n    user");
    assert!(
        err(&unknown).starts_with("keys[0].tenent: unknown field `tenent`"),
        "{}",
        err(&unknown)
    );
    let e = err(&GOOD.replace("threads: 2", "threads: 0"));
    assert_eq!(e, "server.threads: 0 must be between 1 and 1024");
    let e = err(&GOOD.replace("http://127.0.0.1:11434", "ftp://x"));
    assert_eq!(
        e,
        "pools.ollama.backends[0]: \"ftp://x\" must start with http:// or https://"
    );
    let e = err(&GOOD.replace("env:OPENAI_API_KEY", "env:MISSING"));
    assert_eq!(
        e,
        "pools.openai.api_key: environment variable MISSING is not set"
    );
    let e = err(&GOOD.replace("\"ollama/llama3\"", "\"claude\""));
    assert_eq!(e, "default_model: \"claude\" matches no route prefix");
    let e = err(&GOOD.replace("\"127.0.0.1:8080\"", "\"localhost\""));
    assert_eq!(e, "server.listen: \"localhost\" is not an IP:port address");
    let e = err(&GOOD.replace("max_body_bytes: 1048576", "max_body_bytes: -1"));
    assert!(e.starts_with("server.max_body_bytes: "), "{e}");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = err(&GOOD.replace("env:ACME_KEY", "sk-team-acme"));
    assert_eq!(e, "keys[1].key: the same key is listed twice");
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let c = load(GOOD).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("sk-upstream"), "{dbg}");
    assert!(!dbg.contains("sk-team-acme"));
}

#[test]
fn top_level_type_errors_are_reported() {
    assert!(err("keys: 3").starts_with("keys: "));
    assert!(err("- a").starts_with("config: "));
}

#[test]
fn counters_persist_by_default_and_can_be_moved_or_switched_off() {
    let base = "pools: {p: {backends: ['http://h']}}\nroutes: [{prefix: '', pool: p}]\n";
    let st = load(base)
        .unwrap()
        .state
        .expect("persistence is on by default");
    assert_eq!(st.path, std::path::PathBuf::from("llmedge-state.json"));
    assert_eq!(st.flush, std::time::Duration::from_millis(5000));
    let moved = load(&format!(
        "{base}state: {{path: /var/lib/x.json, flush_ms: 100}}"
    ))
    .unwrap();
    let moved = moved.state.unwrap();
    assert_eq!(
        (moved.path.to_str().unwrap(), moved.flush.as_millis()),
        ("/var/lib/x.json", 100)
    );
    assert!(load(&format!("{base}state: {{enabled: false}}"))
        .unwrap()
        .state
        .is_none());
    assert_eq!(
        err(&format!("{base}state: {{path: ''}}")),
        "state.path: must not be empty"
    );
}

#[test]
fn budget_aliases_and_per_model_token_limits_load() {
    let base = "pools: {p: {backends: ['http://h']}}\nroutes: [{prefix: '', pool: p}]\n";
    let c = load(&format!(
        "{base}keys:\n  - key: k\n    tenant: t\n    budget: {{max_usd_per_day: 5, max_usd_per_month: 50}}\n    limits: {{models: {{\"gpt-4o*\": {{tpm: 20000}}}}}}\n"
    ))
    .unwrap();
    let k = &c.keys[0];
    assert_eq!(
        (k.budget.usd_per_day, k.budget.usd_per_month),
        (Some(5.0), Some(50.0))
    );
    let (glob, l) = &k.limits.models[0];
    assert!(glob.matches("gpt-4o-mini"));
    assert_eq!(l.tpm, Some(20000));
}

#[test]
fn pools_say_which_api_their_backends_speak() {
    let c = load(GOOD).unwrap();
    let ollama = c.pools.iter().find(|p| p.name == "ollama").unwrap();
    assert_eq!(
        (ollama.protocol, ollama.messages),
        (Protocol::Openai, MessagesMode::Translate),
        "the defaults"
    );
    let native = GOOD.replace(
        "backends: [\"http://127.0.0.1:11434\"]",
        "backends: [\"http://127.0.0.1:11434\"]\n    messages: native",
    );
    let c = load(&native).unwrap();
    assert_eq!(c.pools[0].messages, MessagesMode::Native);
    let anthropic = GOOD.replace(
        "api_key: \"env:OPENAI_API_KEY\"",
        "api_key: \"env:OPENAI_API_KEY\"\n    protocol: anthropic\n    anthropic_version: \"2024-01-01\"",
    );
    let c = load(&anthropic).unwrap();
    let p = c.pools.iter().find(|p| p.name == "openai").unwrap();
    assert_eq!(p.protocol, Protocol::Anthropic);
    assert_eq!(
        p.messages,
        MessagesMode::Native,
        "Anthropic takes Messages natively"
    );
    assert_eq!(p.anthropic_version, "2024-01-01");
    let contradiction = anthropic.replace(
        "protocol: anthropic",
        "protocol: anthropic\n    messages: translate",
    );
    assert!(
        err(&contradiction).starts_with("pools.openai.messages: "),
        "{}",
        err(&contradiction)
    );
    let typo = native.replace("messages: native", "messages: nativ");
    assert!(
        err(&typo).starts_with("pools.ollama.messages: unknown variant `nativ`"),
        "{}",
        err(&typo)
    );
    let proto = GOOD.replace(
        "api_key: \"env:OPENAI_API_KEY\"",
        "api_key: \"env:OPENAI_API_KEY\"\n    protocol: gemini",
    );
    assert!(
        err(&proto).starts_with("pools.openai.protocol: "),
        "{}",
        err(&proto)
    );
    let version = anthropic.replace("\"2024-01-01\"", "\"\"");
    assert!(
        err(&version).starts_with("pools.openai.anthropic_version: "),
        "{}",
        err(&version)
    );
}

#[test]
fn credentials_anonymous_routes_and_passthrough_paths() {
    let internal = GOOD.replace(
        "backends: [\"http://127.0.0.1:11434\"]",
        "backends: [\"http://127.0.0.1:11434\"]\n    credentials: passthrough",
    );
    let anon = internal.replace(
        "    pool: ollama\n    strip_prefix: true",
        "    pool: ollama\n    strip_prefix: true\n    anonymous: true\n    limits: {rpm: 5}",
    );
    let c = load(&anon).unwrap();
    assert!(c.routes[0].anonymous && c.has_anonymous_routes());
    assert_eq!(c.routes[0].limits.rpm, Some(5));
    assert_eq!(
        c.pools
            .iter()
            .find(|p| p.name == "ollama")
            .unwrap()
            .credentials,
        Credentials::Passthrough
    );
    // a stranger's token must never reach a pool that spends its own key
    let unsafe_anon = GOOD.replace(
        "    pool: ollama\n    strip_prefix: true",
        "    pool: ollama\n    strip_prefix: true\n    anonymous: true",
    );
    assert!(
        err(&unsafe_anon).starts_with(
            "routes[0].anonymous: pool \"ollama\" must have `credentials: passthrough`"
        ),
        "{}",
        err(&unsafe_anon)
    );
    let typo = internal.replace("credentials: passthrough", "credentials: passthru");
    assert!(
        err(&typo).starts_with("pools.ollama.credentials: unknown variant `passthru`"),
        "{}",
        err(&typo)
    );
}

#[test]
fn passthrough_paths_match_by_segment_and_name_known_pools() {
    let pt = format!("{GOOD}passthrough:\n  - {{path: /v1/files, pool: openai}}\n  - {{path: /v1/files/special/, pool: ollama}}\n");
    let c = load(&pt).unwrap();
    assert_eq!(
        c.passthrough_for("/v1/files/special/x").map(|p| p.pool),
        c.pools.iter().position(|p| p.name == "ollama"),
        "the longest prefix wins"
    );
    assert!(c.passthrough_for("/v1/files").is_some());
    assert!(c.passthrough_for("/v1/files/file-1/content").is_some());
    assert!(
        c.passthrough_for("/v1/filesystem").is_none(),
        "a prefix is a path segment, not characters"
    );
    let bad_pool = format!("{GOOD}passthrough:\n  - {{path: /v1/files, pool: nope}}\n");
    assert!(
        err(&bad_pool).starts_with("passthrough[0].pool: unknown pool \"nope\""),
        "{}",
        err(&bad_pool)
    );
    let bad_path = format!("{GOOD}passthrough:\n  - {{path: files, pool: openai}}\n");
    assert!(
        err(&bad_path).starts_with("passthrough[0].path: "),
        "{}",
        err(&bad_path)
    );
}
