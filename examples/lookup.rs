//! Event lookup over a generated archive (BENCHMARKS.md, "Event lookup"):
//! `lookup DIR EVENTS`. Fills DIR through the store itself (no HTTP, no broker) with EVENTS
//! events of about 700 bytes over 1 000 tenants and 10 types, a unique `webhookId` each, one
//! tenant (`locRare`) only once per 100 000 events; reopens it (the sealed segments' rows are
//! then read from their index files), and times lookups by key and first pages of tenants,
//! cold and warm. Then the index's CPU per accepted event, on the writer's path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hlgate::entry::Entry;
use hlgate::schema::Outcome;
use hlgate::store::{Query, Store};
use hlgate::verify::Scheme;

const IN_FLIGHT: usize = 256;
const RETENTION: Duration = Duration::from_secs(7 * 86_400);

fn tenant(i: u64) -> String {
    if i % 100_000 == 50_000 {
        "locRare".into()
    } else {
        format!("loc{:04}", i % 1000)
    }
}

fn key(i: u64) -> String {
    format!("wh-{i:012}")
}

fn event(i: u64) -> Entry {
    let (location, key) = (tenant(i), key(i));
    let kind = format!("Type{}", i % 10);
    let pad = "x".repeat(550);
    let body = format!(
        r#"{{"type":"{kind}","locationId":"{location}","webhookId":"{key}","id":"c{i}","pad":"{pad}"}}"#
    );
    Entry {
        seq: 0,
        accepted_ms: 0,
        replay: false,
        redrive: false,
        trace: None,
        scheme: Scheme::Ed25519,
        compact: false,
        schema: Outcome::Unknown,
        dedup_key: key.clone(),
        index: None,
        event_type: kind,
        tenant: location.clone(),
        location_id: Some(location),
        company_id: None,
        webhook_id: Some(key),
        signature: "s".repeat(88),
        body: body.into_bytes(),
    }
}

async fn fill(store: Arc<Store>, events: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (store, next) = (store.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return;
                }
                let e = event(i);
                while store
                    .accept(e.dedup_key.clone(), vec![e.clone()])
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Median and 99th percentile, in ms.
fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    format!(
        "median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} runs)",
        at(0.5),
        at(0.99),
        at(1.0),
        times.len()
    )
}

fn timed(store: &Store, query: &Query, expect: usize) -> Duration {
    let started = Instant::now();
    let page = store.lookup().page(query).expect("a lookup");
    let took = started.elapsed();
    assert!(
        page.events.len() >= expect.min(1),
        "{query:?} found {}",
        page.events.len()
    );
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(events)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: lookup DIR EVENTS");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    if !dir.join("sled").exists() {
        let store = Arc::new(Store::open(dir, RETENTION).expect("open the store"));
        let started = Instant::now();
        fill(store.clone(), events).await;
        store.flush().await.unwrap();
        println!(
            "filled {events} events in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        drop(store);
        std::thread::sleep(Duration::from_secs(2));
    }
    let store = Store::open(dir, RETENTION).expect("reopen the store");
    println!("buckets: {:?} (open, closed)", store.bucket_states());
    let page = |q: Query| Query { limit: 50, ..q };

    let keys: Vec<u64> = (0..200).map(|_| fastrand::u64(0..events)).collect();
    let by_key: Vec<Duration> = keys
        .iter()
        .map(|&i| {
            timed(
                &store,
                &page(Query {
                    key: Some(key(i)),
                    ..Query::default()
                }),
                1,
            )
        })
        .collect();
    println!("one key, cold buckets: {}", spread(by_key));
    let by_key: Vec<Duration> = keys
        .iter()
        .map(|&i| {
            timed(
                &store,
                &page(Query {
                    key: Some(key(i)),
                    ..Query::default()
                }),
                1,
            )
        })
        .collect();
    println!("one key, again: {}", spread(by_key));

    let tenants: Vec<String> = (0..50).map(|_| tenant(fastrand::u64(0..1000))).collect();
    for round in ["cold", "warm"] {
        let firsts: Vec<Duration> = tenants
            .iter()
            .map(|t| {
                timed(
                    &store,
                    &page(Query {
                        tenant: Some(t.clone()),
                        ..Query::default()
                    }),
                    50,
                )
            })
            .collect();
        println!("first page of a tenant ({round}): {}", spread(firsts));
    }
    let rare = timed(
        &store,
        &page(Query {
            tenant: Some("locRare".into()),
            ..Query::default()
        }),
        1,
    );
    println!(
        "first page of a rare tenant (every segment's tags read): {:.2} ms",
        rare.as_secs_f64() * 1e3
    );

    let sample: Vec<Entry> = (0..1_000_000).map(event).collect();
    for commit in [1, 64] {
        let mut runs: Vec<Duration> = (0..5)
            .map(|_| hlgate::store::index_work(&sample, commit))
            .collect();
        runs.sort();
        let per_event = runs[2].as_nanos() as f64 / sample.len() as f64;
        println!("index work per accepted event, commits of {commit}: {per_event:.0} ns (median of 5 runs of 1 M)");
    }
}
