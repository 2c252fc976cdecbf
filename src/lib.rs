//! llmedge: an OpenAI-compatible LLM gateway on Pingora.
//!
//! The library holds the whole gateway so that it can be embedded in another Pingora server:
//! [`build_server`] wires a [`proxy::Gateway`] and the admin listener into a `Server`, and
//! [`add_gateway`] adds them to a server you already have.

pub mod admin;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod mock;
pub mod models;
pub mod openai;
pub mod proxy;
pub mod router;
pub mod run;
pub mod sse;
pub mod state;
pub mod upstream;

use std::net::{SocketAddr, TcpListener};

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

use config::Config;
use errors::StartupError;
use metrics::Metrics;
use mock::{MockApp, MockConfig};
use proxy::Gateway;

/// A bootstrapped Pingora server with `threads` worker threads per service.
pub fn new_server(threads: usize) -> Server {
    let mut conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    conf.graceful_shutdown_timeout_seconds = Some(5);
    // attempts are bounded by each pool's `retries` and the route's fallbacks; Pingora's own cap
    // (16 by default) must not cut a longer chain short
    conf.max_retries = 64;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The gateway's server for `config`: OpenAI listener plus admin listener.
pub fn build_server(config: Config) -> Result<Server, StartupError> {
    let mut server = new_server(config.server.threads);
    add_gateway(&mut server, config)?;
    Ok(server)
}

/// Adds the gateway (and its admin listener, when configured) to an existing server.
pub fn add_gateway(server: &mut Server, config: Config) -> Result<Gateway, StartupError> {
    let metrics = Metrics::new(metrics::DEFAULT_MODEL_LABEL_CAP)
        .map_err(|e| StartupError::Other(format!("metrics: {e}")))?;
    check_bind(config.server.listen)?;
    if let Some(a) = config.server.admin_listen {
        check_bind(a)?;
    }
    let listen = config.server.listen;
    let admin = config.server.admin_listen;
    let gateway = Gateway::new(state::shared(config), metrics.clone());
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway.clone(),
        "llmedge",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    tracing::info!(listen = %listen, "OpenAI API listening");
    if let Some(st) = &gateway.state.load().config.state {
        let store = limits::persist::FileStore {
            path: st.path.clone(),
        };
        let snap = gateway.state.load();
        match limits::persist::CounterStore::load(&store) {
            Ok(Some(saved)) => snap.governor.import(&saved, &snap.key_ids),
            Ok(None) => {}
            Err(e) => return Err(StartupError::Other(format!("state.path: {e}"))),
        }
        server.add_service(pingora::services::background::background_service(
            "llmedge counters",
            limits::flush::Flusher::new(gateway.state.clone(), Box::new(store), st.flush),
        ));
    }
    let monitor = upstream::monitor::Monitor {
        state: gateway.state.clone(),
    };
    server.add_service(pingora::services::background::background_service(
        "llmedge upstream monitor",
        monitor,
    ));
    if let Some(a) = admin {
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
