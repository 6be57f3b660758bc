//! A 2xx means durable: broker outages and `kill -9` lose nothing that was acknowledged.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::*;

/// A TCP proxy in front of the real RabbitMQ that the test can cut off and restore.
pub struct Proxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Reserves a port with nothing listening on it yet.
    pub async fn down() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        Proxy {
            addr,
            tasks: Arc::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes the listener and every open connection.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn broker_outage_loses_nothing_and_publishes_once_when_back() {
    let proxy = Proxy::down().await;
    let url = proxy.url();
    let app = spawn_app_with(&[("HLGATE_AMQP_URL", &url)]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;

    // The broker was never reachable: events are still accepted into the outbox.
    let mut ids = Vec::new();
    for _ in 0..40 {
        let (id, body) = contact_event("L");
        assert_eq!(app.post_signed(&body).await.status(), 200);
        ids.push(id);
    }
    let ready = app.readyz().await;
    assert_eq!(ready["broker"], "disconnected");
    assert_eq!(ready["outbox_depth"], 40);
    tap.assert_quiet(Duration::from_millis(500)).await;

    proxy.up().await;
    let got: Vec<String> = tap.take(40).await.iter().map(message_id).collect();
    assert_eq!(got, ids);
    app.wait_drained().await;

    // Cut the broker off while connected, accept more, restore.
    proxy.cut();
    let mut more = Vec::new();
    for _ in 0..30 {
        let (id, body) = contact_event("L");
        assert_eq!(app.post_signed(&body).await.status(), 200);
        more.push(id);
    }
    proxy.up().await;
    let got: Vec<String> = tap.take(30).await.iter().map(message_id).collect();
    assert_eq!(got, more);
    // Exactly once: nothing arrives twice.
    tap.assert_quiet(Duration::from_secs(1)).await;
    app.wait_drained().await;
    tap.cleanup(&app.exchange).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, as an operator runs it.
pub struct Process {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

pub fn spawn_process(env: &HashMap<String, String>, stderr: Stdio) -> Process {
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hlgate"))
        .arg("serve")
        .env_clear()
        .envs(env)
        .env("HLGATE_LISTEN", public.to_string())
        .env("HLGATE_ADMIN_LISTEN", admin.to_string())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("hlgate binary");
    Process {
        child,
        public,
        admin,
    }
}

impl Drop for Process {
    /// A test that fails half-way leaves no gateway running to publish into the shared broker.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("http://{}/healthz", self.public))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("hlgate did not start");
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhooks/highlevel", self.public)
    }

    /// POSTs `body` signed with `signer`.
    pub async fn post_signed(&self, signer: &Signer, body: Vec<u8>) -> reqwest::Response {
        let (header, sig) = signer.sign(&body);
        reqwest::Client::new()
            .post(self.webhook_url())
            .header(header, sig)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Env for the binary: keys as files, a temp data dir, a unique exchange.
pub fn process_env(
    dir: &std::path::Path,
    exchange: &str,
    ed: &Signer,
    rsa: &Signer,
) -> HashMap<String, String> {
    let ed_path = dir.join("ed25519.pub");
    let rsa_path = dir.join("rsa.pub");
    std::fs::write(&ed_path, &ed.public_pem).unwrap();
    std::fs::write(&rsa_path, &rsa.public_pem).unwrap();
    let mut env = base_env(&dir.join("data"), exchange, ed, rsa);
    env.insert(
        "HLGATE_ED25519_PUBLIC_KEYS".into(),
        format!("@{}", ed_path.display()),
    );
    env.insert(
        "HLGATE_RSA_PUBLIC_KEYS".into(),
        format!("@{}", rsa_path.display()),
    );
    env.insert("HLGATE_LOG".into(), "warn".into());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.kill9");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &exchange, &ed, &rsa);
    let mut tap = Tap::bind(&exchange, "#").await;
    let ed = Arc::new(ed);

    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = process.webhook_url();
    let deadline = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (acknowledged, url, ed) = (acknowledged.clone(), url.clone(), ed.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while Instant::now() < deadline {
                    let (id, body) = contact_event("kill9");
                    let (h, sig) = ed.sign(&body);
                    match http.post(&url).header(h, sig).body(body).send().await {
                        Ok(r) if r.status() == 200 => acknowledged.lock().unwrap().push(id),
                        Ok(r) => panic!("unexpected {}", r.status()),
                        Err(_) => return, // the process is gone
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // What the broker had confirmed a moment before the kill.
    let confirmed = metric(
        &process_metrics(&process).await,
        "hlgate_publish_total{result=\"ack\"}",
    );
    process.child.kill().unwrap(); // SIGKILL
    process.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    // What reached the consumer before the kill: confirmed, or still in flight.
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Some(d) = tap.next(Duration::from_millis(500)).await {
        *seen.entry(message_id(&d)).or_default() += 1;
    }
    let before_kill = seen.len();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "load reached the process: {}",
        acknowledged.len()
    );

    // Restart on the same data dir; everything acknowledged must come out.
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let wanted: HashSet<&String> = acknowledged.iter().collect();
    let give_up = Instant::now() + Duration::from_secs(60);
    while !wanted.iter().all(|id| seen.contains_key(*id)) && Instant::now() < give_up {
        if let Some(d) = tap.next(Duration::from_secs(2)).await {
            *seen.entry(message_id(&d)).or_default() += 1;
        }
    }
    // Drain what is left so duplicates are counted too.
    while let Some(d) = tap.next(Duration::from_secs(1)).await {
        *seen.entry(message_id(&d)).or_default() += 1;
    }
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    let twice = seen.values().filter(|n| **n > 1).count();
    // Published again are what was in flight (reached the consumer, not yet confirmed) and what
    // was confirmed after the watermark last reached the disk.
    let in_flight = before_kill.saturating_sub(confirmed as usize);
    println!(
        "kill -9: {} acknowledged, {} published ({before_kill} before the kill, {confirmed} of \
         them confirmed), {} missing, {twice} published twice",
        acknowledged.len(),
        seen.len(),
        missing.len(),
    );
    assert!(missing.is_empty(), "lost acknowledged events: {missing:?}");
    // The watermark is flushed with each confirmed window: beyond what was in flight, a crash
    // republishes at most the window whose flush it interrupted (and what was confirmed in the
    // moment between reading the metrics and the kill).
    let confirmed_again = twice.saturating_sub(in_flight);
    assert!(
        confirmed_again <= 3 + before_kill / 100,
        "{confirmed_again} confirmed events were published again"
    );
    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());
    tap.cleanup(&exchange).await;
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.term");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &exchange, &ed, &rsa);
    let mut tap = Tap::bind(&exchange, "#").await;
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    for _ in 0..20 {
        let (_, body) = contact_event("term");
        assert_eq!(process.post_signed(&ed, body).await.status(), 200);
    }
    process.signal("TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = process.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "did not stop within the grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    // Whatever was accepted is published, now or after the next start.
    let mut got = tap.take_up_to(20, Duration::from_secs(3)).await;
    if got.len() < 20 {
        let mut process = spawn_process(&env, Stdio::null());
        process.wait_ready().await;
        got.extend(
            tap.take_up_to(20 - got.len(), Duration::from_secs(20))
                .await,
        );
        process.signal("TERM");
        process.child.wait().unwrap();
    }
    assert_eq!(got.len(), 20);

    // SIGINT (Ctrl-C) stops it the same way.
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    process.signal("INT");
    assert_eq!(process.child.wait().unwrap().code(), Some(0));
    tap.cleanup(&exchange).await;
}

/// The admin `/metrics` text of a running process.
async fn process_metrics(process: &Process) -> String {
    reqwest::get(format!("http://{}/metrics", process.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls until the process's bucket gauges read `open` and `closed`.
async fn wait_buckets(process: &Process, open: f64, closed: f64) {
    let mut last = String::new();
    for _ in 0..100 {
        last = process_metrics(process).await;
        if metric(&last, "hlgate_store_buckets{state=\"open\"}") == open
            && metric(&last, "hlgate_store_buckets{state=\"closed\"}") == closed
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("buckets never {open} open and {closed} closed:\n{last}");
}

#[tokio::test]
async fn published_events_leave_memory_but_keep_deduplicating_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.closed");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = process_env(dir.path(), &exchange, &ed, &rsa);
    let mut tap = Tap::bind(&exchange, "#").await;
    let (id, body) = contact_event("closed");
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    assert_eq!(process.post_signed(&ed, body.clone()).await.status(), 200);
    assert_eq!(message_id(&tap.take(1).await[0]), id);
    process.signal("TERM");
    assert_eq!(process.child.wait().unwrap().code(), Some(0));

    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    // The event's bucket is all published: it is closed; a new one takes events.
    wait_buckets(&process, 1.0, 1.0).await;
    let r = process.post_signed(&ed, body.clone()).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "duplicate");
    // Reading the key's time opened it; the sweeper closes it again.
    wait_buckets(&process, 1.0, 1.0).await;
    let (other, body) = contact_event("closed");
    assert_eq!(process.post_signed(&ed, body).await.status(), 200);
    assert_eq!(message_id(&tap.take(1).await[0]), other);
    tap.assert_quiet(Duration::from_millis(500)).await;
    // A replay reads the closed bucket as well as the current one.
    let hour = time::Duration::hours(1);
    let now = time::OffsetDateTime::now_utc();
    let window = serde_json::json!({
        "since": (now - hour).format(&time::format_description::well_known::Rfc3339).unwrap(),
        "until": (now + hour).format(&time::format_description::well_known::Rfc3339).unwrap(),
    });
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/replay", process.admin))
        .json(&window)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({"replayed": 2}));
    let replayed = tap.take(2).await;
    assert_eq!(
        replayed.iter().map(message_id).collect::<Vec<_>>(),
        vec![id, other]
    );
    for m in &replayed {
        assert_eq!(header(m, "x-hl-replay").as_deref(), Some("true"));
    }
    process.signal("TERM");
    assert_eq!(process.child.wait().unwrap().code(), Some(0));
    tap.cleanup(&exchange).await;
}
