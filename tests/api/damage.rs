//! A damaged data dir is reported, never hidden: events accepted with the broker down, the
//! process stopped, the damage done, then a restart, `hlgate store check` and
//! `hlgate store accept-loss`, all through the real binary.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;

use crate::durability::{process_env, spawn_process, Process};
use crate::helpers::*;

/// A data dir and the settings of the binary on it, the broker unreachable.
struct Site {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    exchange: String,
    ed: Signer,
}

impl Site {
    fn new(extra: &[(&str, &str)]) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let exchange = unique("test.damage");
        let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
        let mut env = process_env(dir.path(), &exchange, &ed, &rsa);
        // A port nothing listens on: every event stays in the outbox.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("amqp://guest:guest@{}/%2f", closed.local_addr().unwrap());
        drop(closed);
        env.insert("HLGATE_AMQP_URL".into(), url);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        Site {
            dir,
            env,
            exchange,
            ed,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn bucket(&self, first_seq: u64) -> PathBuf {
        self.data().join(format!("events/{first_seq:020}"))
    }

    async fn start(&self) -> Process {
        let process = spawn_process(&self.env, Stdio::piped());
        process.wait_ready().await;
        process
    }

    /// Posts `n` events; their webhook ids.
    async fn accept(&self, process: &Process, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let (id, body) = contact_event("damage");
            assert_eq!(process.post_signed(&self.ed, body).await.status(), 200);
            ids.push(id);
        }
        ids
    }

    /// Posts `n` events, several at a time (so in no particular order); their webhook ids.
    async fn accept_many(&self, process: &Process, n: usize) -> Vec<String> {
        let posts = futures_util::stream::iter((0..n).map(|_| async {
            let (id, body) = contact_event("damage");
            assert_eq!(process.post_signed(&self.ed, body).await.status(), 200);
            id
        }));
        posts.buffer_unordered(16).collect().await
    }

    /// Starts it with the broker reachable.
    fn broker_up(&mut self) {
        self.env.insert("HLGATE_AMQP_URL".into(), AMQP_URL.into());
    }

    /// `hlgate store ACTION`: exit code and stdout.
    fn store(&self, action: &str) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_hlgate"))
            .args(["store", action])
            .env_clear()
            .envs(&self.env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("hlgate store {action}:\n{stdout}{stderr}");
        (out.status.code().unwrap_or(-1), stdout)
    }
}

/// SIGTERM, a clean exit, and what the process logged.
fn stop(mut process: Process) -> String {
    process.signal("TERM");
    assert_eq!(process.child.wait().unwrap().code(), Some(0));
    let mut log = String::new();
    process
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    log
}

async fn readyz(process: &Process) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{}/readyz", process.admin))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `/readyz` once `until` holds for its body (a hang guard only: it comes long before).
async fn readyz_once(
    process: &Process,
    what: &str,
    until: impl Fn(&serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let mut last = readyz(process).await;
    for _ in 0..600 {
        if until(&last.1) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = readyz(process).await;
    }
    panic!("never {what}: {}", last.1);
}

/// The first seq of the `LOST` range ending at `last` that `store check` printed.
fn lost_through(check: &str, last: u64) -> u64 {
    let line = check
        .lines()
        .find(|l| l.starts_with("LOST: seqs ") && l.contains(&format!("..{last} (")))
        .unwrap_or_else(|| panic!("no lost seqs up to {last}:\n{check}"));
    assert!(line.contains("lost before they were published"), "{line}");
    line["LOST: seqs ".len()..]
        .split("..")
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn damaged_metric(process: &Process) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", process.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, "hlgate_store_damaged")
}

/// The start reports the damage: not ready, `"store":"damaged"`, the metric, an ERROR line.
async fn assert_started_damaged(site: &Site) {
    let process = site.start().await;
    let (status, body) = readyz(&process).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["store"], "damaged");
    assert_eq!(damaged_metric(&process).await, 1.0);
    // It still takes webhooks: the damage is about events it already had.
    site.accept(&process, 1).await;
    let log = stop(process);
    let error = log
        .lines()
        .find(|l| l.contains("\"ERROR\"") && l.contains("damaged"));
    assert!(error.is_some(), "no ERROR line about the damage:\n{log}");
}

/// After `accept-loss`, the start is ready and `check` is clean.
async fn assert_accepted_then_ready(site: &Site, gave_up: &str) {
    let (code, out) = site.store("accept-loss");
    assert_eq!(code, 0);
    assert!(out.contains(gave_up), "{out}");
    let (code, out) = site.store("check");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");
    let process = site.start().await;
    let (status, body) = readyz(&process).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"], "ok");
    assert_eq!(damaged_metric(&process).await, 0.0);
    stop(process);
}

fn truncate_to_half(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(len / 2).unwrap();
}

#[tokio::test]
async fn a_truncated_segment_is_reported_with_the_seqs_it_lost() {
    // Buckets of a quarter of the retention: a pause starts the second one.
    let site = Site::new(&[("HLGATE_DEDUP_RETENTION", "8s")]);
    let process = site.start().await;
    site.accept(&process, 30).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    site.accept(&process, 5).await;
    stop(process);
    assert!(site.bucket(31).exists(), "the second bucket starts at 31");

    // Its seal is gone with its second half: the start reads it frame by frame.
    truncate_to_half(&site.bucket(1).join("segment"));
    assert_started_damaged(&site).await;
    let (code, out) = site.store("check");
    assert_ne!(code, 0);
    let lost = out
        .lines()
        .find(|l| l.starts_with("LOST: seqs ") && l.contains("..30 ("))
        .unwrap_or_else(|| panic!("no lost seqs up to 30:\n{out}"));
    assert!(lost.contains("lost before they were published"), "{lost}");
    assert_accepted_then_ready(&site, "gave up seqs ").await;
}

#[tokio::test]
async fn a_bucket_without_its_ready_marker_is_set_aside_and_its_keys_named() {
    let site = Site::new(&[]);
    let process = site.start().await;
    let ids = site.accept(&process, 20).await;
    stop(process);
    std::fs::remove_file(site.bucket(1).join("ready")).unwrap();

    assert_started_damaged(&site).await;
    // Kept aside, not deleted: `check` reads every key from it.
    assert!(!site.bucket(1).exists());
    assert!(site.bucket(1).with_extension("damaged").join("db").exists());
    let (code, out) = site.store("check");
    assert_ne!(code, 0);
    assert!(
        out.contains("LOST: seqs 1..20 (20 accepted events"),
        "{out}"
    );
    for id in &ids {
        assert!(out.contains(&format!("  {id}\n")), "{id} not named:\n{out}");
    }
    assert_accepted_then_ready(&site, "gave up seqs 1..20").await;
}

#[tokio::test]
async fn event_buckets_without_the_main_database_refuse_to_start_until_accepted() {
    let mut site = Site::new(&[]);
    let process = site.start().await;
    let ids = site.accept(&process, 20).await;
    stop(process);
    std::fs::remove_dir_all(site.data().join("sled")).unwrap();

    let mut process = spawn_process(&site.env, Stdio::piped());
    let mut status = None;
    // A hang guard only: a refusal comes long before.
    for _ in 0..300 {
        status = process.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if status.is_none() {
        process.child.kill().unwrap();
        panic!("it started without its main database");
    }
    assert_eq!(status.unwrap().code(), Some(2));
    let mut stderr = String::new();
    let mut pipe = process.child.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("the main database"), "{stderr}");
    assert!(!site.data().join("sled").exists(), "it made a new one");
    let (code, out) = site.store("check");
    assert_ne!(code, 0);
    assert!(out.contains("MISSING: sled/"), "{out}");
    assert!(out.contains("seqs 1..20"), "{out}");

    let (code, out) = site.store("accept-loss");
    assert_eq!(code, 0);
    assert!(out.contains("gave up the main database"), "{out}");
    // Not knowing what was published, it publishes everything it still has.
    site.env.insert("HLGATE_AMQP_URL".into(), AMQP_URL.into());
    let mut tap = Tap::bind(&site.exchange, "#").await;
    let process = site.start().await;
    let got: Vec<String> = tap.take(20).await.iter().map(message_id).collect();
    assert_eq!(got, ids);
    assert_eq!(readyz(&process).await.0, 200);
    stop(process);
    tap.cleanup(&site.exchange).await;
}

#[tokio::test]
async fn an_undamaged_store_stays_ready_through_stops_and_sweeps() {
    // Buckets of 500 ms, removed once past 2 s and published.
    let mut site = Site::new(&[("HLGATE_DEDUP_RETENTION", "2s")]);
    let process = site.start().await;
    let mut ids = site.accept(&process, 10).await;
    stop(process);
    let (code, out) = site.store("check");
    assert_eq!(code, 0, "{out}");

    // The broker back: the restart publishes everything, and the sweeper removes it all.
    site.env.insert("HLGATE_AMQP_URL".into(), AMQP_URL.into());
    let mut tap = Tap::bind(&site.exchange, "#").await;
    let process = site.start().await;
    assert_eq!(readyz(&process).await.0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    ids.extend(site.accept(&process, 10).await);
    let got: Vec<String> = tap.take(20).await.iter().map(message_id).collect();
    assert_eq!(got, ids);
    let mut left = Vec::new();
    for _ in 0..200 {
        left = bucket_names(&site.data());
        if !left.contains(&format!("{:020}", 1)) && !left.contains(&format!("{:020}", 11)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !left.contains(&format!("{:020}", 11)),
        "never swept: {left:?}"
    );
    let (status, body) = readyz(&process).await;
    assert_eq!((status, &body["store"]), (200, &"ok".into()), "{body}");
    stop(process);

    let (code, out) = site.store("check");
    assert_eq!(code, 0, "{out}");
    let process = site.start().await;
    assert_eq!(readyz(&process).await.0, 200);
    let more = site.accept(&process, 3).await;
    let got: Vec<String> = tap.take(3).await.iter().map(message_id).collect();
    assert_eq!(got, more);
    stop(process);
    tap.cleanup(&site.exchange).await;
}

fn bucket_names(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[tokio::test]
async fn a_segment_cut_short_behind_an_intact_summary_is_reported_at_start() {
    // Buckets of 6 s, none expired before the test ends.
    let mut site = Site::new(&[("HLGATE_DEDUP_RETENTION", "24s")]);
    site.broker_up();
    let mut tap = Tap::bind(&site.exchange, "#").await;
    let process = site.start().await;
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let (_, body) = contact_event("damage");
        assert_eq!(
            process.post_signed(&site.ed, body.clone()).await.status(),
            200
        );
        bodies.push(body);
    }
    tokio::time::sleep(Duration::from_millis(6100)).await;
    site.accept(&process, 5).await;
    tap.take(35).await;
    // Published and taking no more events, the first bucket is closed with its summary.
    let summary = site.bucket(1).join("keys");
    for _ in 0..200 {
        if summary.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(summary.exists(), "the first bucket was never closed");
    stop(process);
    truncate_to_half(&site.bucket(1).join("segment"));
    let (code, out) = site.store("check");
    assert_ne!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("LOST: seqs ") && l.contains("..30 ("))
        .unwrap_or_else(|| panic!("no lost seqs up to 30:\n{out}"));
    assert!(
        line.contains("published events gone from the archive"),
        "{line}"
    );

    // The start checks the segment (its seal is gone) and reports it; a redelivery of a
    // lost event is still a duplicate: its key is on record.
    let process = site.start().await;
    let redelivered = process.post_signed(&site.ed, bodies[29].clone()).await;
    assert_eq!(redelivered.status(), 200);
    let body: serde_json::Value = redelivered.json().await.unwrap();
    assert_eq!(body["status"], "duplicate", "{body}");
    let (status, body) = readyz(&process).await;
    assert_eq!((status, &body["store"]), (503, &"damaged".into()), "{body}");
    assert_eq!(damaged_metric(&process).await, 1.0);
    let log = stop(process);
    let range = &line["LOST: ".len()..line.find(" (").unwrap()];
    let error = log
        .lines()
        .find(|l| l.contains("\"ERROR\"") && l.contains("damaged") && l.contains(range));
    assert!(error.is_some(), "no ERROR line naming {range}:\n{log}");
    // Reported by every start now, until accepted.
    let process = site.start().await;
    assert_eq!(readyz(&process).await.1["store"], "damaged");
    stop(process);
    assert_accepted_then_ready(&site, &format!("gave up {range}")).await;
    tap.cleanup(&site.exchange).await;
}

#[tokio::test]
async fn an_accepted_loss_in_the_middle_of_the_outbox_is_passed_and_the_outbox_drains() {
    // Buckets of 2 s: a pause starts the next one.
    let mut site = Site::new(&[("HLGATE_DEDUP_RETENTION", "8s")]);
    let process = site.start().await;
    // A whole window of the relay's before the loss, so that its next window starts past it.
    let mut ids = site.accept_many(&process, 2000).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let lost = site.accept(&process, 5).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    ids.extend(site.accept(&process, 5).await);
    stop(process);
    assert!(site.bucket(2001).exists() && site.bucket(2006).exists());
    std::fs::remove_dir_all(site.bucket(2001)).unwrap();

    let (code, out) = site.store("check");
    assert_ne!(code, 0);
    assert_eq!(lost_through(&out, 2005), 2001);
    let (code, out) = site.store("accept-loss");
    assert_eq!(code, 0);
    assert!(out.contains("gave up seqs 2001..2005"), "{out}");

    site.broker_up();
    let mut tap = Tap::bind(&site.exchange, "#").await;
    let process = site.start().await;
    let mut got: Vec<String> = tap.take(2005).await.iter().map(message_id).collect();
    assert_eq!(got[2000..], ids[2000..]);
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert!(lost.iter().all(|id| !got.contains(id)));
    let (status, body) = readyz_once(&process, "drained", |b| b["outbox_depth"] == 0).await;
    assert_eq!((status, &body["store"]), (200, &"ok".into()), "{body}");
    stop(process);
    tap.cleanup(&site.exchange).await;
}

#[tokio::test]
async fn a_newest_bucket_cut_short_after_a_clean_stop_is_reported() {
    let site = Site::new(&[]);
    let process = site.start().await;
    site.accept(&process, 30).await;
    stop(process);
    // The only bucket, the newest: the checkpoint tells what its segment held.
    assert!(!site.bucket(1).join("keys").exists());
    truncate_to_half(&site.bucket(1).join("segment"));

    assert_started_damaged(&site).await;
    let (code, out) = site.store("check");
    assert_ne!(code, 0);
    let first_lost = lost_through(&out, 30);
    assert_accepted_then_ready(&site, &format!("gave up seqs {first_lost}..30")).await;
}
