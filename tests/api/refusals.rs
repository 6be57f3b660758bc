//! When hlgate cannot take a delivery it answers 429, never 5xx; a redelivery of what it holds is
//! still a duplicate; and a full disk recovers by itself when space comes back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;

#[tokio::test]
async fn a_full_outbox_still_answers_redeliveries_as_duplicates() {
    let app = spawn_app_with(&[
        ("HLGATE_OUTBOX_MAX_EVENTS", "2"),
        ("HLGATE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
    ])
    .await;
    let (first_id, first) = contact_event("L");
    let (_, second) = contact_event("L");
    assert_eq!(app.post_signed(&first).await.status(), 200);
    assert_eq!(app.post_signed(&second).await.status(), 200);
    let (_, third) = contact_event("L");
    assert_eq!(app.post_signed(&third).await.status(), 429);

    let r = app.post_signed(&first).await;
    assert_eq!(
        r.status(),
        200,
        "a redelivery is not refused for the full outbox"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "duplicate");
    assert_eq!(v["id"], first_id.as_str());
    assert_eq!(app.readyz().await["outbox_depth"], 2);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status();
        status
            .is_ok_and(|s| s.success())
            .then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until no more than `leave` bytes are free; returns its path.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while fs2::available_space(self.path()).unwrap() > leave {
            if file.write_all(&chunk).is_err() {
                break;
            }
            file.flush().unwrap();
        }
        path
    }

    /// Writes a file until not one byte is free; returns its path.
    fn fill_up(&self) -> PathBuf {
        use std::io::Write;
        let path = self.fill(64 * 1024);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        while file
            .write_all(&[0u8; 512])
            .and_then(|()| file.flush())
            .is_ok()
        {}
        assert_eq!(fs2::available_space(self.path()).unwrap(), 0);
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Posts new events until one is taken (429 meanwhile, for at most 30 s); returns its id.
async fn post_until_taken(process: &crate::durability::Process, signer: &Signer) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (id, body) = contact_event("L");
        let status = process.post_signed(signer, body).await.status().as_u16();
        assert!(status == 200 || status == 429, "answered {status}");
        if status == 200 {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing after space came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_full_disk_answers_429_and_takes_events_again_when_space_returns() {
    let Some(disk) = SmallDisk::mount(24) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let exchange = unique("test.disk");
    let (signer, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut tap = Tap::bind(&exchange, "#").await;
    let mut env = process_env(disk.path(), &exchange, &signer, &rsa);
    env.insert(
        "HLGATE_MAX_BODY_BYTES".into(),
        (4 * 1024 * 1024).to_string(),
    );
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;

    // A 24 MB volume takes events: the reserve scales with the disk.
    let mut accepted = Vec::new();
    let (id, body) = contact_event("L");
    assert_eq!(process.post_signed(&signer, body).await.status(), 200);
    accepted.push(id);

    // Just over the reserve (2 MiB on so small a disk) is left: events of 3 MB pass the reserve
    // check and then fail in sled for want of space, until the disk is so full that the check
    // refuses. Either way the answer is 429, never a 5xx.
    let filler = disk.fill(2 * 1024 * 1024 + 100 * 1024);
    let padding = "p".repeat(3 * 1024 * 1024);
    let mut refused = 0;
    for _ in 0..5 {
        let (id, mut body) = contact_event("L");
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v["padding"] = Value::from(padding.as_str());
        body = serde_json::to_vec(&v).unwrap();
        let r = process.post_signed(&signer, body).await;
        match r.status().as_u16() {
            200 => accepted.push(id),
            429 => {
                refused += 1;
                assert!(r.headers().contains_key("retry-after"));
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"], "overloaded");
            }
            other => panic!("a full disk answered {other}"),
        }
    }
    assert!(refused > 0, "a full disk refused nothing");

    // Space comes back: within seconds, without a restart, events are taken again.
    std::fs::remove_file(filler).unwrap();
    accepted.push(post_until_taken(&process, &signer).await);

    // Every event answered 200 is published.
    let got = tap.take(accepted.len()).await;
    let mut ids: Vec<String> = got.iter().map(message_id).collect();
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted);
    process.signal("TERM");
    tap.cleanup(&exchange).await;
}

/// sled writes as it opens a database: on a disk without one free byte, an existing data dir
/// cannot open. The gateway starts all the same, refuses webhooks with 429 (HighLevel retries
/// them) and reports why on `/readyz`, then opens the store by itself once there is room, and
/// publishes what it held.
#[tokio::test]
async fn a_full_disk_at_start_answers_429_until_space_returns_then_publishes_what_it_held() {
    let Some(disk) = SmallDisk::mount(24) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let exchange = unique("test.fullstart");
    let (signer, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut tap = Tap::bind(&exchange, "#").await;
    let mut env = process_env(disk.path(), &exchange, &signer, &rsa);

    // A first run that cannot reach the broker leaves its events in the outbox.
    let broker = env.insert(
        "HLGATE_AMQP_URL".into(),
        "amqp://guest:guest@127.0.0.1:1/%2f".into(),
    );
    let mut first = spawn_process(&env, Stdio::null());
    first.wait_ready().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (id, body) = contact_event("L");
        assert_eq!(first.post_signed(&signer, body).await.status(), 200);
        held.push(id);
    }
    first.signal("TERM");
    assert!(first.child.wait().unwrap().success());

    let filler = disk.fill_up();
    env.insert("HLGATE_AMQP_URL".into(), broker.unwrap());
    // A gateway waiting for space stops as any other does.
    let mut waiting = spawn_process(&env, Stdio::null());
    waiting.wait_ready().await;
    waiting.signal("TERM");
    assert!(waiting.child.wait().unwrap().success());

    env.insert("HLGATE_ADMIN_TOKEN".into(), "adm1n-t0ken".into());
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let admin = |path: &str, token: &str| {
        let request = reqwest::Client::new()
            .get(format!("http://{}{path}", process.admin))
            .bearer_auth(token);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, v) = admin("/readyz", "adm1n-t0ken").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["store"], "disk_full", "{v}");
    let (status, v) = admin("/readyz", "wrong").await;
    assert_eq!((status, &v["error"]), (401, &Value::from("unauthorized")));
    let (status, v) = admin("/metrics", "adm1n-t0ken").await;
    assert_eq!((status, &v["error"]), (503, &Value::from("unavailable")));
    let (refused_id, body) = contact_event("L");
    let r = process.post_signed(&signer, body).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "overloaded", "{v}");
    tap.assert_quiet(Duration::from_millis(500)).await;

    // Space comes back: without a restart the store opens and events are taken again.
    std::fs::remove_file(filler).unwrap();
    let mut accepted = held.clone();
    accepted.push(post_until_taken(&process, &signer).await);
    let (status, v) = admin("/readyz", "adm1n-t0ken").await;
    assert_eq!((status, &v["store"]), (200, &Value::from("ok")), "{v}");

    // What the data dir held and the new event are published, the refused one is not.
    let mut ids: Vec<String> = tap
        .take(accepted.len())
        .await
        .iter()
        .map(message_id)
        .collect();
    tap.assert_quiet(Duration::from_millis(500)).await;
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted);
    assert!(!ids.contains(&refused_id));
    process.signal("TERM");
    tap.cleanup(&exchange).await;
}
