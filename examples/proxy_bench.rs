//! The API proxy's overhead, in one process: the HighLevel API stand-in of the integration
//! tests (its rate limit raised out of the way), a gateway in front of it with a private token
//! per tenant, and the same `GET /contacts/{id}` requests sent straight to the stand-in and
//! through the proxy, spread over the tenants. Prints p50, p99 and requests/s of both.
//!
//! ```text
//! cargo run --release --example proxy_bench -- --tenants 100 --requests 20000 --concurrency 32
//! ```
//!
//! Client, gateway and stand-in share the machine's cores, so the figures bound the proxy's
//! cost from above.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hlgate::config::Settings;
use hlgate::startup::Application;

#[allow(dead_code)]
#[path = "../tests/api/highlevel.rs"]
mod highlevel;
#[allow(dead_code)]
#[path = "../tests/api/hlapi.rs"]
mod hlapi;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// Sends `requests` GETs from `concurrency` tasks, each to the URL and token `target` gives
/// for its request number; latencies sorted, and the wall time.
async fn load(
    requests: usize,
    concurrency: usize,
    target: Arc<dyn Fn(usize) -> (String, Option<String>) + Send + Sync>,
) -> (Vec<Duration>, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, target) = (client.clone(), next.clone(), target.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= requests {
                        return took;
                    }
                    let (url, token) = target(i);
                    let mut request = client.get(url);
                    if let Some(t) = token {
                        request = request.bearer_auth(t);
                    }
                    let t0 = Instant::now();
                    let r = request.send().await.expect("request");
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    took.push(t0.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let wall = started.elapsed();
    all.sort();
    (all, wall)
}

fn report(what: &str, (took, wall): &(Vec<Duration>, Duration)) -> Duration {
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    let rps = took.len() as f64 / wall.as_secs_f64();
    println!(
        "{what:>8}: p50 {:>7.3} ms  p99 {:>7.3} ms  {rps:>8.0} requests/s",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
    );
    at(0.5)
}

#[tokio::main]
async fn main() {
    let (tenants, requests) = (arg("--tenants", 100), arg("--requests", 20_000));
    let concurrency = arg("--concurrency", 32);
    let standin = highlevel::StandIn::start().await;
    standin.with(|s| s.api.burst = usize::MAX / 2);
    let dir = tempfile::tempdir().unwrap();
    let env: HashMap<String, String> = [
        ("HLGATE_DATA_DIR", dir.path().display().to_string()),
        ("HLGATE_LISTEN", "127.0.0.1:0".into()),
        ("HLGATE_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("HLGATE_API_BASE_URL", standin.url.clone()),
        ("HLGATE_API_BURST", "1000000000".into()),
        ("HLGATE_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let app = Application::build(Settings::load(None, &env).expect("settings"))
        .await
        .expect("app");
    let admin = app.admin_addr();
    tokio::spawn(app.run());
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..tenants).map(|i| format!("pit-{i}")).collect();
    for (i, token) in tokens.iter().enumerate() {
        let url = format!("http://{admin}/v1/tenants/loc{i}/private-token");
        let r = client
            .put(url)
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        standin.with(|s| s.current.insert(format!("loc{i}"), token.clone()));
    }
    let base = standin.url.clone();
    let tokens = Arc::new(tokens);
    let direct = {
        let tokens = tokens.clone();
        Arc::new(move |i: usize| {
            let t = i % tenants;
            (format!("{base}/contacts/c{i}"), Some(tokens[t].clone()))
        })
    };
    let proxied = Arc::new(move |i: usize| {
        let url = format!(
            "http://{admin}/v1/highlevel/loc{}/contacts/c{i}",
            i % tenants
        );
        (url, None)
    });
    // A warm-up of each, so that connections and caches are there.
    load(1000, concurrency, direct.clone()).await;
    load(1000, concurrency, proxied.clone()).await;
    println!("{requests} requests, {concurrency} at a time, across {tenants} tenants");
    let d = report("direct", &load(requests, concurrency, direct).await);
    let p = report("proxied", &load(requests, concurrency, proxied).await);
    println!(
        "added at p50: {:.3} ms",
        (p.saturating_sub(d)).as_secs_f64() * 1e3
    );
}
