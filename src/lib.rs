//! llmedge: an OpenAI-compatible LLM gateway on Pingora.
//!
//! The library holds the whole gateway so that it can be embedded in another Pingora server:
//! [`build_server`] wires a [`proxy::Gateway`] and the admin listener into a `Server`, and
//! [`add_gateway`] adds them to a server you already have.

pub mod admin;
pub mod affinity;
pub mod anthropic;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod errors;
pub mod glob;
pub mod ledger;
pub mod lifecycle;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod mock;
pub mod models;
pub mod multipart;
pub mod openai;
pub mod prefix;
pub mod proxy;
pub mod router;
pub mod run;
pub mod shared;
pub mod sse;
pub mod state;
pub mod store;
pub mod upstream;
pub mod wire;

use std::net::{SocketAddr, TcpListener};

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use config::Config;
use errors::StartupError;
use metrics::Metrics;
use mock::{MockApp, MockConfig};
use proxy::Gateway;

/// Pingora settings shared by every server llmedge builds.
fn server_conf(threads: usize) -> ServerConf {
    let mut conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    conf.graceful_shutdown_timeout_seconds = Some(5);
    // attempts are bounded by each pool's `retries` and the route's fallbacks; Pingora's own cap
    // (16 by default) must not cut a longer chain short
    conf.max_retries = 64;
    conf
}

/// A bootstrapped Pingora server with `threads` worker threads per service.
pub fn new_server(threads: usize) -> Server {
    let mut server = Server::new_with_opt_and_conf(None, server_conf(threads));
    server.bootstrap();
    server
}

/// How the binary starts the gateway, beyond what the config says.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// Take the listening sockets over from a running llmedge (`--upgrade`) instead of binding.
    pub upgrade: bool,
    /// Called once a graceful shutdown has drained (the binary exits there rather than wait
    /// out the rest of Pingora's grace period; an embedding server runs its own shutdown).
    pub on_drained: Option<fn()>,
}

/// The gateway's server for `config`: OpenAI listener plus admin listener.
pub fn build_server(config: Config) -> Result<Server, StartupError> {
    launch(config, &Launch::default()).map(|(server, _)| server)
}

/// [`build_server`] with start-up options; also returns the gateway, for reloads.
pub fn launch(config: Config, how: &Launch) -> Result<(Server, Gateway), StartupError> {
    let mut conf = server_conf(config.server.threads);
    // the drain ends the streams at the grace period and exits; Pingora's own timer is the
    // backstop for an embedding that does not exit
    conf.grace_period_seconds = Some(config.server.grace_period.as_secs() + 5);
    conf.upgrade_sock = config.server.upgrade_sock.clone();
    let opt = pingora::server::configuration::Opt {
        upgrade: how.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let gateway = add_gateway_with(&mut server, config, how)?;
    Ok((server, gateway))
}

/// Adds the gateway (and its admin listener, when configured) to an existing server.
pub fn add_gateway(server: &mut Server, config: Config) -> Result<Gateway, StartupError> {
    add_gateway_with(server, config, &Launch::default())
}

fn add_gateway_with(
    server: &mut Server,
    config: Config,
    how: &Launch,
) -> Result<Gateway, StartupError> {
    let metrics = Metrics::new(metrics::DEFAULT_MODEL_LABEL_CAP)
        .map_err(|e| StartupError::Other(format!("metrics: {e}")))?;
    if !how.upgrade {
        // an upgrade inherits the bound sockets from the old process
        check_bind(config.server.listen)?;
        if let Some(a) = config.server.admin_listen {
            check_bind(a)?;
        }
    }
    let srv = config.server.clone();
    let (control, records) = open_control(&config, &metrics)?;
    let config_store = config.store.clone();
    let live = match config.shared.clone() {
        Some(r) => {
            let store = shared_store(&r, &metrics)?;
            server.add_service(pingora::services::background::background_service(
                "llmedge shared state",
                shared::service::StoreService(store.clone()),
            ));
            tracing::info!(endpoint = %r.endpoint, "limits and budgets shared through Redis");
            live::Live::with_shared(config, store)
        }
        None => {
            // the in-process store is always there
            metrics.state.up.set(1);
            live::Live::new(config)
        }
    };
    attach_control(&live, control, records, &config_store, &metrics)?;
    let gateway = Gateway::new(live, metrics.clone());
    add_api_listener(server, &gateway, &srv)?;
    let flusher = add_flusher(server, &gateway)?;
    server.add_service(pingora::services::background::background_service(
        "llmedge drain",
        lifecycle::Drain {
            gateway: gateway.clone(),
            grace: srv.grace_period,
            flusher,
            on_drained: how.on_drained,
        },
    ));
    let monitor = live::monitor::Monitor {
        live: gateway.state.clone(),
    };
    server.add_service(pingora::services::background::background_service(
        "llmedge upstream monitor",
        monitor,
    ));
    if let Some(a) = srv.admin_listen {
        let app = admin::AdminApp {
            metrics,
            state: gateway.state.clone(),
        };
        let mut svc = Service::new("llmedge admin".to_string(), app);
        svc.add_tcp(&a.to_string());
        server.add_service(svc);
        tracing::info!(admin_listen = %a, "admin (metrics) listening");
    }
    Ok(gateway)
}

/// The control-plane store, migrated and loaded; a store key with a file key's secret is a
/// config error naming the key.
fn open_control(
    config: &Config,
    metrics: &Metrics,
) -> Result<
    (
        std::sync::Arc<store::Store>,
        std::sync::Arc<control::Records>,
    ),
    StartupError,
> {
    let (store, records) =
        store::Store::open(&config.store, metrics.store.clone()).map_err(StartupError::Other)?;
    control::merge::checked(config, &records)?;
    Ok((std::sync::Arc::new(store), records))
}

/// Runs `live` on the store's records, and on every later revision; starts the usage ledger
/// (`store.ledger`).
fn attach_control(
    live: &std::sync::Arc<live::Live>,
    control: std::sync::Arc<store::Store>,
    records: std::sync::Arc<control::Records>,
    cfg: &config::StoreConfig,
    metrics: &Metrics,
) -> Result<(), StartupError> {
    live.set_records(records);
    let weak = std::sync::Arc::downgrade(live);
    control.attach(Box::new(move |r| {
        if let Some(live) = weak.upgrade() {
            live.set_records(r);
        }
    }));
    if cfg.ledger {
        let ledger =
            ledger::Ledger::start(cfg, cfg.retention_days, metrics.ledger.clone(), &control)
                .map_err(StartupError::Other)?;
        live.attach_ledger(ledger);
    }
    live.attach_store(control);
    Ok(())
}

/// The shared counter store of `state.redis` (connected by its background service).
fn shared_store(
    r: &config::RedisConfig,
    metrics: &Metrics,
) -> Result<std::sync::Arc<shared::Shared>, StartupError> {
    let connect = r.timeout.max(std::time::Duration::from_secs(1));
    let server = shared::redis::RedisServer::new(&r.url, r.ca_pem.as_deref(), connect)
        .map_err(StartupError::Other)?;
    let settings = shared::Settings {
        prefix: r.key_prefix.clone(),
        endpoint: r.endpoint.clone(),
        timeout: r.timeout,
        lease: r.lease,
    };
    Ok(std::sync::Arc::new(shared::Shared::new(
        std::sync::Arc::new(server),
        settings,
        metrics.state.clone(),
    )))
}

/// The OpenAI API listener: TCP or TLS (h2 by ALPN), h2c when configured.
fn add_api_listener(
    server: &mut Server,
    gateway: &Gateway,
    srv: &config::ServerConfig,
) -> Result<(), StartupError> {
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway.clone(),
        "llmedge",
    );
    let listen = srv.listen.to_string();
    match &srv.tls {
        Some(tls) => {
            let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
            let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key)
                .map_err(|e| StartupError::Other(format!("server.tls: {e}")))?;
            settings.enable_h2();
            proxy.add_tls_with_settings(&listen, None, settings);
        }
        None => proxy.add_tcp(&listen),
    }
    if srv.h2c {
        if let Some(app) = proxy.app_logic_mut() {
            let mut opts = pingora::apps::HttpServerOptions::default();
            opts.h2c = true;
            app.server_options = Some(opts);
        }
    }
    server.add_service(proxy);
    tracing::info!(listen = %listen, tls = srv.tls.is_some(), h2c = srv.h2c, "OpenAI API listening");
    Ok(())
}

/// With `state:` enabled: loads the saved counters and adds the service that keeps them saved.
fn add_flusher(
    server: &mut Server,
    gateway: &Gateway,
) -> Result<Option<std::sync::Arc<live::flush::Flusher>>, StartupError> {
    let Some(st) = gateway.state.load().config.state.clone() else {
        return Ok(None);
    };
    let store = limits::persist::FileStore {
        path: st.path.clone(),
    };
    let f = live::flush::Flusher::start(gateway.state.clone(), Box::new(store), st.flush)
        .map_err(|e| StartupError::Other(format!("state.path: {e}")))?;
    let f = std::sync::Arc::new(f);
    server.add_service(pingora::services::background::background_service(
        "llmedge counters",
        live::flush::FlushService(f.clone()),
    ));
    Ok(Some(f))
}

/// Adds the built-in mock upstream on `listen`.
pub fn add_mock(server: &mut Server, listen: &str, config: MockConfig) -> Result<(), StartupError> {
    let addr: SocketAddr = listen.parse().map_err(|_| StartupError::Listen {
        addr: listen.to_string(),
        reason: "not an IP:port address".into(),
    })?;
    check_bind(addr)?;
    let mut svc = Service::new("llmedge mock".to_string(), MockApp::new(config));
    svc.add_tcp(listen);
    server.add_service(svc);
    Ok(())
}

/// Fails early, with the address in the message, when a listener cannot bind.
fn check_bind(addr: SocketAddr) -> Result<(), StartupError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| StartupError::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}
