//! What each command does; returns the process exit code.

use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::RunArgs;
use pingora::services::background::background_service;

use crate::cli::{Cli, Command, DemoArgs, MockArgs};
use crate::config::Config;
use crate::lifecycle::{Reloader, Signals, Watch};
use crate::mock::MockConfig;
use crate::Launch;

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: i32 = 64;
pub const EXIT_STARTUP: i32 = 1;

/// Runs the command; `on_drained` ends the process once a graceful shutdown has drained.
pub fn main(cli: Cli, on_drained: fn()) -> i32 {
    let Cli {
        command,
        config,
        test,
        watch,
        upgrade,
    } = cli;
    match (command, config) {
        (Some(Command::Mock(args)), _) => mock(args),
        (Some(Command::Demo(args)), _) => demo(args, on_drained),
        (Some(Command::Keys(args)), config) => crate::client::keys(args, config.as_deref()),
        (Some(Command::Tenants(args)), config) => crate::client::tenants(args, config.as_deref()),
        (Some(Command::Usage(args)), config) => crate::client::usage(args, config.as_deref()),
        (None, Some(path)) => gateway(&path, test, watch, upgrade, on_drained),
        (None, None) => {
            say_err("error: --config PATH is required (or use `llmedge demo` / `llmedge mock`)");
            EXIT_CONFIG
        }
    }
}

fn gateway(path: &str, test: bool, watch: bool, upgrade: bool, on_drained: fn()) -> i32 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            say_err(&format!("error: {e}"));
            return EXIT_CONFIG;
        }
    };
    if test {
        say("ok");
        return 0;
    }
    tracing::info!(config = %path, watch, upgrade, "config loaded");
    let how = Launch {
        upgrade,
        on_drained: Some(on_drained),
    };
    let (mut server, gateway) = match crate::launch(config, &how) {
        Ok(s) => s,
        Err(e) => {
            say_err(&format!("error: {e}"));
            return match e {
                crate::errors::StartupError::Config(_) => EXIT_CONFIG,
                _ => EXIT_STARTUP,
            };
        }
    };
    let reloader = Arc::new(Reloader::new(path, gateway));
    if watch {
        server.add_service(background_service(
            "llmedge config watch",
            Watch {
                reloader: reloader.clone(),
            },
        ));
    }
    let signals = Signals {
        reloader: Some(reloader),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    0
}

fn mock(args: MockArgs) -> i32 {
    let MockArgs {
        listen,
        tokens,
        delay_ms,
        models,
        slots,
        cache_blocks,
        prefill_ms_per_kchar,
        threads,
    } = args;
    let cfg = MockConfig {
        tokens,
        delay: Duration::from_millis(delay_ms),
        models,
        slots,
        cache_blocks,
        prefill_per_kchar: Duration::from_secs_f64(prefill_ms_per_kchar.max(0.0) / 1000.0),
    };
    let mut server = crate::new_server(threads);
    if let Err(e) = crate::add_mock(&mut server, &listen, cfg) {
        say_err(&format!("error: {e}"));
        return EXIT_STARTUP;
    }
    tracing::info!(listen = %listen, "mock upstream listening");
    server.run_forever()
}

fn demo(args: DemoArgs, on_drained: fn()) -> i32 {
    let mock_addr = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.to_string(),
        Err(e) => {
            say_err(&format!("error: no free port for the mock upstream: {e}"));
            return EXIT_STARTUP;
        }
    };
    let yaml = demo_config(&args, &mock_addr);
    let config = match Config::from_yaml(&yaml, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            say_err(&format!("error: {e}"));
            return EXIT_CONFIG;
        }
    };
    let how = Launch {
        upgrade: false,
        on_drained: Some(on_drained),
    };
    let (mut server, gateway) = match crate::launch(config, &how) {
        Ok(s) => s,
        Err(e) => {
            say_err(&format!("error: {e}"));
            return EXIT_STARTUP;
        }
    };
    if let Err(e) = demo_key(&gateway) {
        say_err(&format!("error: cannot store the demo key: {e}"));
        return EXIT_STARTUP;
    }
    if let Err(e) = crate::add_mock(&mut server, &mock_addr, MockConfig::default()) {
        say_err(&format!("error: {e}"));
        return EXIT_STARTUP;
    }
    say(&demo_banner(&args));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { reloader: None }),
    });
    0
}

pub const DEMO_KEY: &str = "sk-llmedge-demo";
/// The demo's admin key, for `llmedge keys list` against it.
pub const DEMO_ADMIN_KEY: &str = "sk-llmedge-demo-admin";

/// The demo key goes into the (in-memory) store, as a key issued through the admin API would.
fn demo_key(gateway: &crate::proxy::Gateway) -> Result<(), String> {
    let store = gateway.state.store().ok_or("no store")?;
    let cat = crate::control::input::Catalog {
        pools: vec![],
        now_ms: 0,
    };
    let body = br#"{"name":"demo","tenant":"demo","user":"newcomer"}"#;
    let key = crate::control::input::new_key(body, &cat).map_err(|e| e.msg)?;
    let fresh = crate::control::secret::from_secret(DEMO_KEY.to_string());
    let w = crate::store::Write::CreateKey {
        key,
        id: crate::control::secret::new_id(crate::clock::Clock::now_ms(
            &crate::clock::SystemClock,
        ))?,
        digest: fresh.digest,
        hint: fresh.hint,
        make_tenant: true,
    };
    futures::executor::block_on(store.write("demo", w))
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

fn demo_config(args: &DemoArgs, mock_addr: &str) -> String {
    format!(
        r#"
server:
  listen: "{listen}"
  admin_listen: "{admin}"
  threads: 2
store:
  url: "sqlite::memory:"              # the demo key lives in an in-memory store
admin:
  keys: ["{DEMO_ADMIN_KEY}"]
pools:
  mock:
    backends: ["http://{mock_addr}"]   # /v1/messages is translated to chat for it
  claude:
    backends: ["http://{mock_addr}"]   # the mock standing in for Anthropic's API
    protocol: anthropic
    api_key: "sk-ant-demo"
routes:
  - prefix: "mock/"
    pool: mock
    strip_prefix: true
  - prefix: "claude/"
    pool: claude
    strip_prefix: true
default_model: "mock/llama3"
state:
  enabled: false                      # a demo leaves no counter file behind
"#,
        listen = args.listen,
        admin = args.admin_listen,
    )
}

fn demo_banner(args: &DemoArgs) -> String {
    let base = format!("http://{}", args.listen);
    format!(
        r#"llmedge demo: gateway on {base}/v1, metrics on http://{admin}/metrics
demo key: {DEMO_KEY}   models: mock/llama3 (chat, completions, messages), mock/mock-embed
(embeddings), claude/* (chat and messages on a mock Anthropic upstream)

  curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \
    -H 'Content-Type: application/json' \
    -d '{{"model":"mock/llama3","messages":[{{"role":"user","content":"hi"}}]}}'

  curl -sN {base}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \
    -H 'Content-Type: application/json' \
    -d '{{"model":"mock/llama3","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'

  curl -s {base}/v1/messages -H 'x-api-key: {DEMO_KEY}' -H 'Content-Type: application/json' \
    -d '{{"model":"mock/llama3","max_tokens":64,"messages":[{{"role":"user","content":"hi"}}]}}'

  curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \
    -H 'Content-Type: application/json' \
    -d '{{"model":"claude/sonnet","messages":[{{"role":"user","content":"hi"}}]}}'

  curl -s {base}/v1/models -H 'Authorization: Bearer {DEMO_KEY}'
  curl -s http://{admin}/metrics | grep llmedge_

Keys are managed at runtime through the admin API:
  export LLMEDGE_ADMIN_KEY={DEMO_ADMIN_KEY}
  llmedge keys list --admin-url http://{admin}
  llmedge keys create --admin-url http://{admin} --tenant demo --name mine --rpm 60

Python: OpenAI(base_url="{base}/v1", api_key="{DEMO_KEY}")
        Anthropic(base_url="{base}", api_key="{DEMO_KEY}")
Claude Code: ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN={DEMO_KEY} claude --model mock/llama3
Ctrl-C stops it."#,
        admin = args.admin_listen,
    )
}

fn say(msg: &str) {
    let _ignored = writeln!(std::io::stdout(), "{msg}");
}

fn say_err(msg: &str) {
    let _ignored = writeln!(std::io::stderr(), "{msg}");
}
