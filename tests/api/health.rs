//! Delivery health: every webhook answer counted by outcome, per minute, on disk; the windows,
//! ratio and silence of `/v1/health`, driven by a clock the test moves.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use hlgate::config::Settings;
use hlgate::health::ManualClock;
use hlgate::startup::Application;
use serde_json::{json, Value};

use crate::durability::{process_env, spawn_process, Process, Proxy};
use crate::helpers::*;

/// A day boundary plus ten hours, far from any real "now" the app might read elsewhere.
pub const T0: u64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The app on `clock` with the base settings plus `overrides`.
pub async fn spawn_with_clock(overrides: &[(&str, &str)], clock: &ManualClock) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.health");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = base_env(dir.path(), &exchange, &ed, &rsa);
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    let admin_token = env.get("HLGATE_ADMIN_TOKEN").cloned();
    let settings = Settings::load(None, &env).expect("test settings");
    let app = Application::build_with_clock(settings, clock.clock())
        .await
        .expect("app builds");
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

pub async fn health(app: &TestApp) -> Value {
    let (status, body) = json(app.admin_get("/v1/health").await).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Posts `n` events signed with a key hlgate does not know: `invalid_signature`.
pub async fn post_forged(app: &TestApp, n: usize, marker: &str) {
    let forger = Signer::ed25519();
    for _ in 0..n {
        let (_, body) = contact_event(marker);
        let (header, sig) = forger.sign(&body);
        let r = app.post(&body, &[(header, sig.as_str())]).await;
        assert_eq!(r.status(), 401);
    }
}

/// Every failing outcome at zero but those given.
fn failed(nonzero: &[(&str, u64)]) -> Value {
    let mut failed = json!({
        "missing_signature": 0, "invalid_signature": 0, "stale_timestamp": 0, "too_large": 0,
        "body_timeout": 0, "unreadable": 0, "outbox_full": 0, "disk_full": 0, "store_busy": 0,
        "store_error": 0, "too_many_bodies": 0,
    });
    for (name, n) in nonzero {
        failed[*name] = json!(n);
    }
    failed
}

/// Posts accepted, duplicate, 401 (missing and forged), 413 and, with the broker away and the
/// outbox full, 429: 4 of 9 answered 2xx.
async fn known_outcomes(
    post: impl AsyncFn(&[u8], &[(&str, &str)]) -> u16,
    ed: &Signer,
    big: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut first = None;
    for _ in 0..3 {
        let (id, body) = contact_event("loc-health");
        let (h, sig) = ed.sign(&body);
        assert_eq!(post(&body, &[(h, sig.as_str())]).await, 200);
        first.get_or_insert(body);
        ids.push(id);
    }
    let first = first.unwrap();
    let (h, sig) = ed.sign(&first);
    assert_eq!(post(&first, &[(h, sig.as_str())]).await, 200, "duplicate");
    assert_eq!(post(&first, &[]).await, 401, "missing signature");
    let (h, sig) = Signer::ed25519().sign(&first);
    assert_eq!(post(&first, &[(h, sig.as_str())]).await, 401, "invalid");
    let large = vec![b' '; big];
    assert_eq!(post(&large, &[]).await, 413);
    for _ in 0..2 {
        let (_, body) = contact_event("loc-health");
        let (h, sig) = ed.sign(&body);
        assert_eq!(post(&body, &[(h, sig.as_str())]).await, 429, "outbox full");
    }
    ids
}

fn assert_known_outcomes(health: &Value) {
    let want_failed = failed(&[
        ("missing_signature", 1),
        ("invalid_signature", 1),
        ("too_large", 1),
        ("outbox_full", 2),
    ]);
    for window in ["1h", "24h", "72h"] {
        let w = &health["windows"][window];
        assert_eq!(w["attempts"], 9, "{window}: {w}");
        assert_eq!(w["succeeded"], 4, "{window}: {w}");
        assert_eq!(
            (w["accepted"].clone(), w["duplicate"].clone()),
            (json!(3), json!(1))
        );
        assert_eq!(w["failed"], want_failed, "{window}");
        assert_eq!(w["success_ratio"], json!(4.0 / 9.0), "{window}");
        // 9 deliveries are far below HighLevel's volume: not judged.
        assert_eq!(w["status"], "ok", "{window}");
    }
    assert_eq!(health["windows"]["72h"]["volume_threshold"], 10_000);
    assert_eq!(health["windows"]["1h"]["volume_threshold"], 138);
}

const BROKER_AWAY: [(&str, &str); 3] = [
    ("HLGATE_OUTBOX_MAX_EVENTS", "3"),
    ("HLGATE_MAX_BODY_BYTES", "4096"),
    ("HLGATE_ALERT_BROKER_DOWN", "0"),
];

#[tokio::test]
async fn known_outcomes_give_exact_counts_and_ratio() {
    let proxy = Proxy::down().await;
    let url = proxy.url();
    let mut overrides = BROKER_AWAY.to_vec();
    overrides.push(("HLGATE_AMQP_URL", &url));
    let app = spawn_app_with(&overrides).await;
    let post = async |body: &[u8], headers: &[(&str, &str)]| {
        app.post(body, headers).await.status().as_u16()
    };
    known_outcomes(post, &app.ed, 8192).await;

    let h = health(&app).await;
    assert_known_outcomes(&h);
    assert_eq!(h["status"], "ok");
    assert!(h["last_accepted_at"].is_string(), "{h}");
    assert_eq!(h["outbox"]["depth"], 3);
    assert_eq!(h["broker"]["state"], "disconnected");
    assert_eq!(h["store"], "ok");
    assert_eq!(h["tenants"]["needs_reauth"], 0);
    assert_eq!(h["tenants"]["seen"], 1);
    assert_eq!(h["signature_failures"]["failures"], 2);
    // The metric counts the same answers, the 429s as `overloaded`.
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "hlgate_webhooks_total{outcome=\"overloaded\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "hlgate_webhooks_total{outcome=\"accepted\"}"),
        3.0
    );

    // The tenant's last delivery: the duplicate, the last 2xx of its.
    let (status, page) = json(app.admin_get("/v1/health/tenants").await).await;
    assert_eq!(status, 200);
    let tenants = page["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1, "{page}");
    assert_eq!(tenants[0]["tenant"], "loc-health");
    assert_eq!(tenants[0]["event_type"], "ContactCreate");
    assert_eq!(page["next"], Value::Null);
}

#[tokio::test]
async fn health_asks_for_the_admin_token_and_refuses_parameters_by_name() {
    let app = spawn_app_with(&[("HLGATE_ADMIN_TOKEN", "admin-s3cret")]).await;
    let anonymous = app.http.get(app.admin_url("/v1/health")).send().await;
    let (status, body) = json(anonymous.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = json(app.admin_get("/v1/health?window=1h").await).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    for (query, named) in [
        ("limit=0", "limit"),
        ("limit=5001", "limit"),
        ("after=", "after"),
        ("tenant=x", "\"tenant\""),
    ] {
        let r = app.admin_get(&format!("/v1/health/tenants?{query}")).await;
        let (status, body) = json(r).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"], "bad_request");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{query}: {message}");
    }
}

#[tokio::test]
async fn tenants_page_in_tenant_order_with_a_cursor() {
    let app = spawn_app().await;
    for tenant in ["loc-c", "loc-a", "loc-b", "loc-a"] {
        let (_, body) = contact_event(tenant);
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    let mut seen = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let r = app.admin_get(&format!("/v1/health/tenants?{query}")).await;
        let (_, page) = json(r).await;
        for t in page["tenants"].as_array().unwrap() {
            seen.push(t["tenant"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => query = format!("limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["loc-a", "loc-b", "loc-c"]);
}

#[tokio::test]
async fn the_windows_and_silence_follow_the_clock() {
    let clock = ManualClock::at(T0);
    let proxy = Proxy::down().await;
    let url = proxy.url();
    let quiet = [
        ("HLGATE_ALERT_BROKER_DOWN", "0"),
        ("HLGATE_ALERT_OUTBOX_AGE", "0"),
        ("HLGATE_AMQP_URL", &url),
    ];
    let app = spawn_with_clock(&quiet, &clock).await;
    // Ten minutes past the same hour on three days running.
    for day in 0..3 {
        if day > 0 {
            clock.advance(DAY - MINUTE * 10);
        }
        clock.advance(MINUTE * 10);
        let (_, body) = contact_event("loc-days");
        assert_eq!(app.post_signed(&body).await.status(), 200);
        // Counts go to the minute they are taken in (within a second of the answer, by a
        // clock that does not jump): take them before the clock moves on.
        health(&app).await;
    }
    let h = health(&app).await;
    assert_eq!(h["windows"]["72h"]["attempts"], 3, "{h}");
    assert_eq!(h["windows"]["24h"]["attempts"], 1);
    assert_eq!(h["silence"]["silent"], false);

    // The next day at that hour plus twenty minutes: the first day left the 72 hours, the
    // last one the 24, and nothing came for 24 h 10 m while the three days before had traffic.
    clock.advance(DAY + MINUTE * 10);
    let h = health(&app).await;
    assert_eq!(h["windows"]["72h"]["attempts"], 2, "{h}");
    assert_eq!(h["windows"]["24h"]["attempts"], 0);
    assert_eq!(h["windows"]["1h"]["success_ratio"], Value::Null);
    assert_eq!(h["silence"]["silent"], true, "{h}");
    assert_eq!(h["silence"]["days_with_traffic"], 3);
    assert_eq!(h["silence"]["quiet_seconds"], (24 * 60 + 10) * 60);
    assert_eq!(h["status"], "warning", "silence raises the status");

    let (_, body) = contact_event("loc-days");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let h = health(&app).await;
    assert_eq!(h["silence"]["silent"], false);
    assert_eq!(h["status"], "ok");
}

/// The counts of the nine known outcomes, asked of the real binary.
async fn process_health(process: &Process) -> Value {
    let url = format!("http://{}/v1/health", process.admin);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn known_outcomes_to_process(process: &Process, ed: &Signer) {
    let http = reqwest::Client::new();
    let url = process.webhook_url();
    let post = async |body: &[u8], headers: &[(&str, &str)]| {
        let mut request = http.post(&url).body(body.to_vec());
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.unwrap().status().as_u16()
    };
    known_outcomes(post, ed, 8192).await;
}

/// Restarts the binary on the same data dir and checks the counts came back.
async fn restarted_counts_match(env: &HashMap<String, String>) {
    let process = spawn_process(env, Stdio::null());
    process.wait_ready().await;
    let h = process_health(&process).await;
    assert_known_outcomes(&h);
    assert!(h["last_accepted_at"].is_string(), "{h}");
}

/// The binary's settings: the broker away, a small outbox, the test's keys.
fn binary_env(dir: &std::path::Path, proxy: &Proxy, ed: &Signer) -> HashMap<String, String> {
    let mut env = process_env(dir, &unique("test.health"), ed, &Signer::rsa());
    env.extend(
        BROKER_AWAY
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.insert("HLGATE_AMQP_URL".into(), proxy.url());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::down().await;
    let ed = Signer::ed25519();
    let env = binary_env(dir.path(), &proxy, &ed);
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    known_outcomes_to_process(&process, &ed).await;
    // At once: the stop saves what the listeners answered.
    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());
    restarted_counts_match(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_kill_9_once_saved() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::down().await;
    let ed = Signer::ed25519();
    let mut env = binary_env(dir.path(), &proxy, &ed);
    // Saved every 200 ms instead of every minute: what a kill loses is what came since.
    env.insert("HLGATE_HEALTH_SAVE_EVERY".into(), "200ms".into());
    let mut process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    known_outcomes_to_process(&process, &ed).await;
    let answered = time::OffsetDateTime::now_utc();
    // Wait for a save begun after the last answer, then kill.
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let mut tries = 0;
    loop {
        let h = process_health(&process).await;
        let saved = h["counts_saved_at"].as_str();
        let saved = saved.map(|t| time::OffsetDateTime::parse(t, rfc3339).unwrap());
        if saved.is_some_and(|t| t > answered) {
            break;
        }
        tries += 1;
        assert!(tries < 600, "no save after the answers: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.child.kill().unwrap();
    process.child.wait().unwrap();
    restarted_counts_match(&env).await;
}
