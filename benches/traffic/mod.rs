//! Non-streaming chat load shared by the end-to-end benches that drive request rates: a fixed
//! rate (open loop, latency from each scheduled send) and back-to-back workers (closed loop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Whether the response was a success and its whole body arrived.
pub async fn ok_body(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        _ => false,
    }
}

fn send(c: &reqwest::Client, url: &str, key: &str, body: &str) -> reqwest::RequestBuilder {
    c.post(url)
        .bearer_auth(key)
        .header("x-mock-delay-ms", "0")
        .body(body.to_string())
}

/// One request every 1/rate s for `secs` to `url`; latencies (ms, counted from each scheduled
/// send, so a slow server cannot hide its queue) and the number of failures.
pub async fn open_loop(
    url: &str,
    key: &str,
    body: &str,
    rate: u64,
    secs: u64,
) -> (Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(0usize));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity((rate * secs) as usize);
    for i in 0..rate * secs {
        let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(at).await;
        let req = send(&client, url, key, body);
        let (l, e) = (lat.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            if ok_body(req.send().await).await {
                l.lock().push(at.elapsed().as_secs_f64() * 1e3);
            } else {
                *e.lock() += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let v = lat.lock().clone();
    let e = *errors.lock();
    (v, e)
}

/// `conns` workers back to back for `secs`; returns (successes, failures, seconds).
pub async fn closed_loop(
    url: &str,
    key: &str,
    body: &str,
    conns: usize,
    secs: u64,
) -> (usize, usize, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()
        .unwrap_or_default();
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (c, u, k, b) = (
                client.clone(),
                url.to_string(),
                key.to_string(),
                body.to_string(),
            );
            tokio::spawn(async move {
                let (mut ok, mut err) = (0, 0);
                while Instant::now() < until {
                    if ok_body(send(&c, &u, &k, &b).send().await).await {
                        ok += 1;
                    } else {
                        err += 1;
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap_or((0, 1));
        ok += o;
        err += e;
    }
    (ok, err, start.elapsed().as_secs_f64())
}
