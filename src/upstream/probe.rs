//! Small GET requests to a backend (health checks, load scrapes, model lists) over Pingora's
//! connector, so they share its TLS and keep-alive handling.

use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;

use super::Pool;

/// Why a probe failed; a closed set, safe for logs.
pub type ProbeError = &'static str;

/// `GET <base_path><path>` on one backend; returns the status and body (at most `max_bytes`).
pub async fn get(
    connector: &Connector,
    pool: &Pool,
    backend: usize,
    path: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(u16, Vec<u8>), ProbeError> {
    match tokio::time::timeout(
        timeout,
        get_inner(connector, pool, backend, path, max_bytes),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err("timed out"),
    }
}

async fn get_inner(
    connector: &Connector,
    pool: &Pool,
    backend: usize,
    path: &str,
    max_bytes: usize,
) -> Result<(u16, Vec<u8>), ProbeError> {
    let b = pool.backend(backend).ok_or("no backend")?;
    let addr = pool
        .resolve(backend)
        .await
        .map_err(|_| "does not resolve")?;
    let peer = pool.peer(backend, addr).map_err(|_| "no peer")?;
    let (mut http, _reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(|_| "connect failed")?;
    let full = format!("{}{path}", b.base_path);
    let mut req = RequestHeader::build("GET", full.as_bytes(), None).map_err(|_| "bad path")?;
    req.insert_header("host", b.authority.as_str())
        .map_err(|_| "bad header")?;
    for (name, value) in super::auth_headers(&pool.config) {
        req.insert_header(name, value).map_err(|_| "bad header")?;
    }
    http.write_request_header(Box::new(req))
        .await
        .map_err(|_| "write failed")?;
    http.finish_request_body()
        .await
        .map_err(|_| "write failed")?;
    http.read_response_header()
        .await
        .map_err(|_| "no response")?;
    let status = http.response_header().map_or(0, |h| h.status.as_u16());
    let mut body = Vec::new();
    while let Some(chunk) = http.read_response_body().await.map_err(|_| "read failed")? {
        body.extend_from_slice(&chunk);
        if body.len() > max_bytes {
            return Err("response too large");
        }
    }
    connector
        .release_http_session(http, &peer, Some(super::UPSTREAM_IDLE_TIMEOUT))
        .await;
    Ok((status, body))
}
