//! The live state across reloads: health checks and load scrapes keep running on the backends
//! the current config names, and pools added by a reload are checked too.

use crate::support::*;

const CHECKS: &str = "    health: {path: /health, interval_ms: 100, timeout_ms: 100, unhealthy_after: 1, healthy_after: 1}\n    metrics: {path: /metrics, interval_ms: 100}\n";

/// Pool `f` on `a` (route `f/`), and with `b` also pool `g` on it (route `g/`).
fn checked(port: u16, admin: u16, a: &str, b: Option<&str>) -> String {
    let head = server_and_client_key(port, admin);
    let mut pools = format!("pools:\n  f:\n    backends: [\"{a}\"]\n{CHECKS}");
    let mut routes = "routes:\n  - {prefix: 'f/', pool: f, strip_prefix: true}\n".to_string();
    if let Some(b) = b {
        pools.push_str(&format!("  g:\n    backends: [\"{b}\"]\n{CHECKS}"));
        routes.push_str("  - {prefix: 'g/', pool: g, strip_prefix: true}\n");
    }
    format!("{head}{pools}{routes}")
}

fn up(pool: &str, mock: &MockOpenAi, value: u8) -> String {
    format!(
        "llmedge_backend_up{{backend=\"{}\",pool=\"{pool}\"}} {value}",
        mock.addr
    )
}

async fn reload(gw: &TestGateway, yaml: String, count: u32) {
    std::fs::write(gw.config_path(), yaml).unwrap();
    gw.signal("HUP");
    gw.wait_metric(&format!(
        "llmedge_config_reload_total{{result=\"success\"}} {count}"
    ))
    .await;
}

#[tokio::test]
async fn health_checks_and_scrapes_follow_every_reload_and_check_pools_a_reload_added() {
    let mut a = MockOpenAi::start().await;
    let b = MockOpenAi::start().await;
    let (au, bu) = (a.url(), b.url());
    let gw = TestGateway::start_with(|p, ad| checked(p, ad, &au, None)).await;
    gw.wait_metric(&up("f", &a, 1)).await;

    reload(&gw, checked(gw.port, gw.admin, &au, Some(&bu)), 1).await;
    a.kill();
    gw.wait_metric(&up("f", &a, 0)).await;
    a.restart().await;
    gw.wait_metric(&up("f", &a, 1)).await;
    // the pool the reload added is checked: its backend failing is seen
    gw.wait_metric(&up("g", &b, 1)).await;
    b.knobs(|k| k.healthy = false);
    gw.wait_metric(&up("g", &b, 0)).await;
    b.knobs(|k| k.healthy = true);
    gw.wait_metric(&up("g", &b, 1)).await;

    // and after several more reloads, checks and scrapes still run on what the config names
    reload(&gw, checked(gw.port, gw.admin, &au, None), 2).await;
    reload(&gw, checked(gw.port, gw.admin, &au, Some(&bu)), 3).await;
    a.knobs(|k| k.healthy = false);
    gw.wait_metric(&up("f", &a, 0)).await;
    a.knobs(|k| {
        k.healthy = true;
        k.load = Some((5.0, 1.0, 0.25));
    });
    gw.wait_metric(&up("f", &a, 1)).await;
    gw.wait_metric(&format!(
        "llmedge_backend_queue_depth{{backend=\"{}\",pool=\"f\"}} 5",
        a.addr
    ))
    .await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        CLIENT_KEY,
        r#"{"model":"g/echo","messages":[]}"#,
    )
    .await;
    assert_eq!(resp.status(), 200, "the re-added pool serves");
}
