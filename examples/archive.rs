//! Fills a data dir with an archive of events through the store itself (no HTTP, no broker), for
//! measuring a start over a large store: `archive DIR EVENTS [RETENTION_DAYS]`. Each event is
//! 1.5 KB of JSON with a unique `webhookId` over 100 locations, accepted as HighLevel's
//! deliveries are (one per request, many requests in flight); the watermark is left at 0, so a
//! start sees every event as unpublished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hlgate::entry::Entry;
use hlgate::schema::Outcome;
use hlgate::store::Store;
use hlgate::verify::Scheme;

const IN_FLIGHT: usize = 256;

fn event(i: u64) -> Entry {
    let location = format!("loc{:03}", i % 100);
    let key = format!("wh-{i:012}");
    let pad = "x".repeat(1300);
    let body = format!(
        r#"{{"type":"ContactCreate","locationId":"{location}","webhookId":"{key}","id":"c{i}","pad":"{pad}"}}"#
    );
    Entry {
        seq: 0,
        accepted_ms: 0,
        replay: false,
        redrive: false,
        scheme: Scheme::Ed25519,
        compact: false,
        schema: Outcome::Unknown,
        dedup_key: key.clone(),
        index: None,
        event_type: "ContactCreate".into(),
        tenant: location.clone(),
        location_id: Some(location),
        company_id: None,
        webhook_id: Some(key),
        signature: "s".repeat(88),
        body: body.into_bytes(),
        trace: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(events)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: archive DIR EVENTS [RETENTION_DAYS]");
        std::process::exit(2);
    };
    let days: u64 = args.get(3).and_then(|d| d.parse().ok()).unwrap_or(7);
    let store = Arc::new(
        Store::open(
            std::path::Path::new(dir),
            Duration::from_secs(days * 86_400),
        )
        .expect("open the store"),
    );
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= events {
                        return;
                    }
                    let e = event(i);
                    let key = e.dedup_key.clone();
                    loop {
                        match store.accept(key.clone(), vec![e.clone()]).await {
                            Ok(_) => break,
                            // A busy writer: wait a moment, as HighLevel would after a 429.
                            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    if i % 1_000_000 == 0 && i > 0 {
                        eprintln!("{i} events, {:.0} s", started.elapsed().as_secs_f64());
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    store.flush().await.expect("flush");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{events} events in {secs:.1} s ({:.0}/s), buckets: {:?}",
        events as f64 / secs,
        store.bucket_states()
    );
}
