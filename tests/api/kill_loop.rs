//! `kill -9` of the real binary, again and again, under load: every event answered 200 comes out
//! of the broker byte for byte with its key, no seq is handed out twice, and nothing that is not
//! a whole event is ever published. `HLGATE_KILL9_ROUNDS` sets the rounds (50 by default; the
//! documented long run in BENCHMARKS.md uses more).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;

fn rounds() -> usize {
    std::env::var("HLGATE_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_loop_loses_reuses_and_tears_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.kill9loop");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &exchange, &ed, &rsa);
    let mut tap = Tap::bind(&exchange, "#").await;
    let ed = Arc::new(ed);
    // Key → the body that got a 200 for it.
    let acknowledged = Arc::new(Mutex::new(HashMap::<String, Vec<u8>>::new()));
    let mut published: Vec<(String, Vec<u8>, u64)> = Vec::new();

    for round in 0..rounds() {
        let mut process = spawn_process(&env, Stdio::null());
        process.wait_ready().await;
        let url = process.webhook_url();
        // Kill at a moment that varies from round to round, while requests are in flight.
        let kill_after = Duration::from_millis(150 + (round as u64 * 37) % 250);
        let stop = Instant::now() + kill_after;
        let clients: Vec<_> = (0..6)
            .map(|_| {
                let (acknowledged, url, ed) = (acknowledged.clone(), url.clone(), ed.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    loop {
                        let (id, body) = contact_event("kill9loop");
                        let (h, sig) = ed.sign(&body);
                        let sent = http.post(&url).header(h, sig).body(body.clone()).send();
                        match sent.await {
                            Ok(r) if r.status() == 200 => {
                                acknowledged.lock().unwrap().insert(id, body);
                            }
                            Ok(r) => panic!("round {round}: unexpected {}", r.status()),
                            Err(_) => return, // the process is gone
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep_until(stop.into()).await;
        process.child.kill().unwrap(); // SIGKILL
        process.child.wait().unwrap();
        for c in clients {
            c.await.unwrap();
        }
        while let Some(d) = tap.next(Duration::from_millis(20)).await {
            published.push(taken(&d));
        }
    }

    // A last start publishes what is left.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let seen: HashSet<&String> = published.iter().map(|(k, _, _)| k).collect();
        if acknowledged.keys().all(|k| seen.contains(k)) || Instant::now() > give_up {
            break;
        }
        if let Some(d) = tap.next(Duration::from_secs(2)).await {
            published.push(taken(&d));
        }
    }
    while let Some(d) = tap.next(Duration::from_secs(1)).await {
        published.push(taken(&d));
    }

    assert!(
        acknowledged.len() > rounds() * 5,
        "load reached the process: {} acknowledged",
        acknowledged.len()
    );
    // Every acknowledged event came out, byte for byte, under its key.
    let by_key: HashMap<&String, &Vec<u8>> =
        published.iter().map(|(k, body, _)| (k, body)).collect();
    let missing: Vec<&String> = acknowledged
        .keys()
        .filter(|k| !by_key.contains_key(k))
        .collect();
    assert!(missing.is_empty(), "lost acknowledged events: {missing:?}");
    for (key, body) in &acknowledged {
        assert_eq!(by_key[key], body, "{key} came out changed");
    }
    // Every message is a whole event that was sent (acknowledged, or cut off by the kill), and
    // each seq belongs to one event only, however often it was published.
    let mut seqs: HashMap<u64, &String> = HashMap::new();
    for (key, body, seq) in &published {
        let event: serde_json::Value = serde_json::from_slice(body).expect("a whole JSON body");
        assert_eq!(event["type"], "ContactCreate", "{key}");
        let owner = seqs.entry(*seq).or_insert(key);
        assert_eq!(*owner, key, "seq {seq} was handed out twice");
    }
    let distinct: HashSet<&String> = published.iter().map(|(k, _, _)| k).collect();
    println!(
        "kill -9 loop: {} rounds, {} acknowledged, {} published ({} distinct)",
        rounds(),
        acknowledged.len(),
        published.len(),
        distinct.len()
    );
    tap.cleanup(&exchange).await;
}

/// A message's key, body and seq.
fn taken(d: &lapin::message::Delivery) -> (String, Vec<u8>, u64) {
    let seq = header(d, "x-hl-sequence")
        .and_then(|s| s.parse().ok())
        .expect("x-hl-sequence");
    (message_id(d), d.data.clone(), seq)
}
