//! The test harness: the real app on port 0 with a temp data dir and a unique exchange, the
//! real RabbitMQ, signing keys, and a consumer bound to everything the app publishes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use hlgate::cli::{ed25519_public_pem, SigningKey};
use hlgate::config::Settings;
use hlgate::startup::Application;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{:016x}", fastrand::u64(..))
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// An Ed25519 key pair made for one test, with its public PEM.
pub struct Signer {
    pub key: SigningKey,
    pub public_pem: String,
}

impl Signer {
    pub fn ed25519() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public_pem = ed25519_public_pem(pair.public_key().as_ref());
        Signer {
            key: SigningKey::Ed25519(pair),
            public_pem,
        }
    }

    /// The repository's RSA-4096 test key.
    pub fn rsa() -> Signer {
        let text = std::fs::read_to_string(repo_path("tests/keys/rsa-test.key")).unwrap();
        Signer {
            key: SigningKey::from_pem(&text).unwrap(),
            public_pem: std::fs::read_to_string(repo_path("tests/keys/rsa-test.pub")).unwrap(),
        }
    }

    pub fn sign(&self, body: &[u8]) -> (&'static str, String) {
        self.key.sign(body)
    }
}

/// The settings every test starts from.
pub fn base_env(dir: &Path, exchange: &str, ed: &Signer, rsa: &Signer) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("HLGATE_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("HLGATE_ADMIN_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("HLGATE_DATA_DIR".into(), dir.display().to_string());
    env.insert("HLGATE_EXCHANGE".into(), exchange.into());
    env.insert("HLGATE_AMQP_URL".into(), AMQP_URL.into());
    env.insert("HLGATE_ED25519_PUBLIC_KEYS".into(), ed.public_pem.clone());
    env.insert("HLGATE_RSA_PUBLIC_KEYS".into(), rsa.public_pem.clone());
    env.insert("HLGATE_SHUTDOWN_GRACE".into(), "5s".into());
    env
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub exchange: String,
    /// Kept so the data dir lives as long as the app.
    pub _dir: tempfile::TempDir,
    pub ed: Signer,
    pub rsa: Signer,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub admin_token: Option<String>,
}

/// Starts the app with the base settings plus `overrides`.
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.events");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = base_env(dir.path(), &exchange, &ed, &rsa);
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    start(dir, exchange, ed, rsa, env).await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts an app on an existing data dir (a restart).
pub async fn start(
    dir: tempfile::TempDir,
    exchange: String,
    ed: Signer,
    rsa: Signer,
    env: HashMap<String, String>,
) -> TestApp {
    let admin_token = env.get("HLGATE_ADMIN_TOKEN").cloned();
    let settings = Settings::load(None, &env).expect("test settings");
    let app = Application::build(settings).await.expect("app builds");
    let shutdown = app.shutdown_token();
    let (addr, admin) = (app.public_addr(), app.admin_addr());
    tokio::spawn(app.run());
    TestApp {
        addr,
        admin,
        exchange,
        _dir: dir,
        ed,
        rsa,
        http: reqwest::Client::new(),
        shutdown,
        admin_token,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POSTs a body signed with the test's Ed25519 key.
    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        let (header, sig) = self.ed.sign(body);
        self.post(body, &[(header, sig.as_str())]).await
    }

    pub async fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url("/webhooks/highlevel"))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.expect("request")
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        let mut request = self.http.get(self.admin_url(path));
        if let Some(t) = &self.admin_token {
            request = request.bearer_auth(t);
        }
        request.send().await.expect("admin request")
    }

    pub async fn readyz(&self) -> serde_json::Value {
        self.admin_get("/readyz").await.json().await.unwrap()
    }

    pub async fn metrics_text(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// Waits until the outbox is empty (everything confirmed).
    pub async fn wait_drained(&self) {
        for _ in 0..200 {
            if self.readyz().await["outbox_depth"] == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("outbox did not drain: {}", self.readyz().await);
    }
}

impl Drop for TestApp {
    /// Stops the app's listeners and relay when the test ends.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A body like HighLevel's ContactCreate with a unique webhookId and a current timestamp.
pub fn contact_event(location: &str) -> (String, Vec<u8>) {
    let id = unique("wh");
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = serde_json::json!({
        "type": "ContactCreate",
        "locationId": location,
        "id": "nmFmQEsNgz6AVpgLVUJ0",
        "email": "john@deo.com",
        "timestamp": now,
        "webhookId": id,
    });
    (id, serde_json::to_vec(&body).unwrap())
}

/// A consumer on an exclusive queue bound with `#` to a test exchange.
pub struct Tap {
    pub connection: Connection,
    pub channel: Channel,
    consumer: Consumer,
}

pub async fn amqp() -> (Connection, Channel) {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

/// Declares the exchange exactly as hlgate does (so the order of declaration does not matter).
pub async fn declare_exchange(channel: &Channel, exchange: &str) {
    hlgate::publish::amqp::declare_topology(channel, exchange)
        .await
        .unwrap();
}

/// Takes messages off a durable queue (acking them) until the one with `id` turns up.
pub async fn find_in_queue(queue: &str, id: &str) -> Option<Delivery> {
    let (connection, channel) = amqp().await;
    let mut found = None;
    for _ in 0..100 {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            Some(m) => {
                m.delivery.ack(BasicAckOptions::default()).await.unwrap();
                if message_id(&m.delivery) == id {
                    found = Some(m.delivery);
                    break;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = connection.close(200, "bye".into()).await;
    found
}

impl Tap {
    /// Binds `pattern` on `exchange` before anything is published.
    pub async fn bind(exchange: &str, pattern: &str) -> Tap {
        let (connection, channel) = amqp().await;
        declare_exchange(&channel, exchange).await;
        Tap::attach(connection, channel, exchange, pattern).await
    }

    /// Binds `pattern` on an exchange that already exists, declaring nothing else.
    pub async fn attach(
        connection: Connection,
        channel: Channel,
        exchange: &str,
        pattern: &str,
    ) -> Tap {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Tap {
            connection,
            channel,
            consumer,
        }
    }

    /// The next message within `wait`, acked.
    pub async fn next(&mut self, wait: Duration) -> Option<Delivery> {
        match tokio::time::timeout(wait, self.consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await.unwrap();
                Some(d)
            }
            _ => None,
        }
    }

    /// Exactly `n` messages (panics if fewer arrive within 20 s).
    pub async fn take(&mut self, n: usize) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(Duration::from_secs(20)).await {
                Some(d) => out.push(d),
                None => panic!("expected {n} messages, got {}", out.len()),
            }
        }
        out
    }

    /// Up to `n` messages, each waited for at most `wait`.
    pub async fn take_up_to(&mut self, n: usize, wait: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(wait).await {
                Some(d) => out.push(d),
                None => break,
            }
        }
        out
    }

    /// Asserts nothing more arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(d) = self.next(wait).await {
            panic!(
                "unexpected message {:?}: {}",
                d.routing_key,
                String::from_utf8_lossy(&d.data)
            );
        }
    }

    /// Deletes the test exchange.
    pub async fn cleanup(self, exchange: &str) {
        let _ = self
            .channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

/// An answer's status and JSON body.
pub async fn json(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A header of a delivery as text.
pub fn header(d: &Delivery, name: &str) -> Option<String> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn routing_keys(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d.routing_key.as_str().to_string())
        .collect()
}

pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default()
}

/// A counter or gauge value from Prometheus text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in metrics"))
}

/// Waits until no process or thread holds a sled database under `data_dir`: a store's writer
/// thread lets go of its databases a moment after the store is dropped, and a gateway started
/// before that could not open them (tests that seed a data dir through a `Store`).
pub fn wait_unlocked(data_dir: &std::path::Path) {
    use fs2::FileExt;
    let mut dirs = vec![data_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            // sled locks the file named `db` of each database.
            if path.file_name().is_none_or(|n| n != "db") {
                continue;
            }
            let lock = std::fs::File::open(&path).unwrap();
            let mut tries = 0;
            while lock.try_lock_exclusive().is_err() {
                tries += 1;
                assert!(
                    tries < 1000,
                    "the seeding store still holds {}",
                    path.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            FileExt::unlock(&lock).unwrap();
        }
    }
}
