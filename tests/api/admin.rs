//! The admin listener: health, readiness, metrics, bearer auth, replay, retention sweep.

use std::time::Duration;

use crate::helpers::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    let tap = Tap::bind(&app.exchange, "#").await;
    assert_eq!(app.admin_get("/healthz").await.status(), 200);
    // Wait for the relay's first connection.
    for _ in 0..100 {
        if app.readyz().await["broker"] == "connected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = app.admin_get("/readyz").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"store": "ok", "broker": "connected", "outbox_depth": 0, "oldest_pending_seconds": 0.0})
    );
    let (_, body) = contact_event("L");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    app.wait_drained().await;
    let m = app.metrics_text().await;
    for series in [
        "hlgate_webhooks_total{outcome=\"accepted\"} 1",
        "hlgate_signature_fallback_total 0",
        "hlgate_outbox_depth 0",
        "hlgate_outbox_oldest_seconds 0",
        "hlgate_publish_total{result=\"ack\"} 1",
        "hlgate_publish_total{result=\"nack\"} 0",
        "hlgate_publish_total{result=\"error\"} 0",
        "hlgate_publish_seconds_count 1",
        "hlgate_ingest_seconds_count 1",
        "hlgate_broker_connected 1",
        "hlgate_store_buckets{state=\"open\"} 1",
        "hlgate_store_buckets{state=\"closed\"} 0",
    ] {
        assert!(m.lines().any(|l| l == series), "missing {series}");
    }
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn admin_token_guards_everything_but_healthz() {
    let app = spawn_app_with(&[("HLGATE_ADMIN_TOKEN", "adm1n-t0ken")]).await;
    let get = |path: &'static str, token: Option<&'static str>| {
        let mut r = app.http.get(app.admin_url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    for path in ["/readyz", "/metrics"] {
        let r = get(path, None).await.unwrap();
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert!(!v.to_string().contains("adm1n-t0ken"));
        assert_eq!(get(path, Some("wrong")).await.unwrap().status(), 401);
        assert_ne!(get(path, Some("adm1n-t0ken")).await.unwrap().status(), 401);
    }
    let r = app
        .http
        .post(app.admin_url("/v1/replay"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn replay(app: &TestApp, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.admin_url("/v1/replay"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn replay_republishes_a_window_marked_as_replay() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let mut ids = Vec::new();
    for (kind, loc) in [
        ("NoteCreate", "L1"),
        ("TaskCreate", "L1"),
        ("NoteCreate", "L2"),
    ] {
        let id = unique("wh");
        let body = format!(r#"{{"type":"{kind}","locationId":"{loc}","webhookId":"{id}"}}"#);
        assert_eq!(app.post_signed(body.as_bytes()).await.status(), 200);
        ids.push(id);
    }
    tap.take(3).await;
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);

    let (status, v) = replay(
        &app,
        json!({"since": rfc3339(start), "until": rfc3339(end), "type": "NoteCreate"}),
    )
    .await;
    assert_eq!((status, v), (200, json!({"replayed": 2})));
    let d = tap.take(2).await;
    assert_eq!(message_id(&d[0]), ids[0]);
    assert_eq!(message_id(&d[1]), ids[2]);
    for m in &d {
        assert_eq!(header(m, "x-hl-replay").as_deref(), Some("true"));
        assert_eq!(header(m, "x-deduplication-header"), None);
    }

    let (status, v) = replay(
        &app,
        json!({"since": rfc3339(start), "until": rfc3339(end), "tenant": "L1"}),
    )
    .await;
    assert_eq!((status, v), (200, json!({"replayed": 2})));
    tap.take(2).await;

    // A window before anything was accepted.
    let (status, v) = replay(
        &app,
        json!({"since": rfc3339(start - time::Duration::hours(2)), "until": rfc3339(start - time::Duration::hours(1))}),
    )
    .await;
    assert_eq!((status, v), (200, json!({"replayed": 0})));

    for bad in [
        json!({"since": "yesterday", "until": rfc3339(end)}),
        json!({"until": rfc3339(end)}),
        json!({"since": rfc3339(end), "until": rfc3339(start)}),
    ] {
        let (status, v) = replay(&app, bad).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"], "bad_request");
    }
    tap.assert_quiet(Duration::from_millis(500)).await;
    tap.cleanup(&app.exchange).await;
}

/// `n` elements of an array delivery, NoteCreate and TaskCreate in turn, each with its own id.
/// Waits (10 s at most) until the outbox holds `n` events.
async fn wait_depth(app: &TestApp, n: u64) {
    for _ in 0..400 {
        if app.readyz().await["outbox_depth"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(app.readyz().await["outbox_depth"], n);
}

fn mixed_array(n: usize) -> Vec<u8> {
    let elements: Vec<Value> = (0..n)
        .map(|i| {
            let kind = if i % 2 == 0 {
                "NoteCreate"
            } else {
                "TaskCreate"
            };
            json!({"type": kind, "locationId": "L1", "id": unique("n"), "body": i})
        })
        .collect();
    serde_json::to_vec(&elements).unwrap()
}

#[tokio::test]
async fn a_replay_wider_than_a_chunk_republishes_exactly_its_window() {
    // 3 000 events: three reads of the archive (a chunk is 1 000), queued at the relay's pace.
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    for _ in 0..3 {
        assert_eq!(app.post_signed(&mixed_array(1000)).await.status(), 200);
    }
    let originals = tap.take(3000).await;
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let notes: Vec<_> = originals
        .iter()
        .filter(|d| header(d, "x-hl-event-type").as_deref() == Some("NoteCreate"))
        .collect();
    assert_eq!(notes.len(), 1500);

    let (status, v) = replay(
        &app,
        json!({"since": rfc3339(start), "until": rfc3339(end), "type": "NoteCreate"}),
    )
    .await;
    assert_eq!((status, v), (200, json!({"replayed": 1500})));
    let replayed = tap.take(1500).await;
    tap.assert_quiet(Duration::from_millis(500)).await;
    for (copy, original) in replayed.iter().zip(&notes) {
        assert_eq!(message_id(copy), message_id(original));
        assert_eq!(copy.data, original.data);
        assert_eq!(header(copy, "x-hl-replay").as_deref(), Some("true"));
    }
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_second_replay_while_one_runs_gets_409_and_queues_nothing() {
    // An outbox of 40: a replay queues while it holds fewer than 20 events.
    let broker = crate::durability::Proxy::down().await;
    broker.up().await;
    let url = broker.url();
    let app = spawn_app_with(&[
        ("HLGATE_AMQP_URL", &url),
        ("HLGATE_OUTBOX_MAX_EVENTS", "40"),
    ])
    .await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let mut ids = Vec::new();
    for _ in 0..30 {
        let (id, body) = contact_event("L1");
        assert_eq!(app.post_signed(&body).await.status(), 200);
        ids.push(id);
    }
    tap.take(30).await;
    app.wait_drained().await;
    let window = json!({"since": rfc3339(start), "until": rfc3339(time::OffsetDateTime::now_utc() + time::Duration::seconds(1))});

    // With the broker away, the first replay queues 20 and waits for the relay.
    broker.cut();
    let first = {
        let (http, url, window) = (
            app.http.clone(),
            app.admin_url("/v1/replay"),
            window.clone(),
        );
        tokio::spawn(async move { json(http.post(url).json(&window).send().await.unwrap()).await })
    };
    wait_depth(&app, 20).await;

    let second = tokio::time::timeout(Duration::from_secs(10), replay(&app, window));
    let (status, v) = second.await.expect("the second replay answers at once");
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"], "replay_running");
    assert_eq!(app.readyz().await["outbox_depth"], 20);
    assert!(!first.is_finished());

    // The broker returns: the first replay finishes, and only its copies arrive, once each.
    broker.up().await;
    assert_eq!(first.await.unwrap(), (200, json!({"replayed": 30})));
    let replayed = tap.take(30).await;
    tap.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(replayed.iter().map(message_id).collect::<Vec<_>>(), ids);
    assert!(replayed
        .iter()
        .all(|d| header(d, "x-hl-replay").as_deref() == Some("true")));
    app.wait_drained().await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_replay_waiting_for_the_relay_stops_at_shutdown() {
    let app = spawn_app_with(&[
        ("HLGATE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("HLGATE_OUTBOX_MAX_EVENTS", "40"),
    ])
    .await;
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    for _ in 0..15 {
        let (_, body) = contact_event("L1");
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    // With 15 unpublished events in an outbox of 40, a replay queues 5 and waits for the relay.
    let window = json!({"since": rfc3339(start), "until": rfc3339(end)});
    let waiting = {
        let (http, url) = (app.http.clone(), app.admin_url("/v1/replay"));
        tokio::spawn(async move { json(http.post(url).json(&window).send().await.unwrap()).await })
    };
    wait_depth(&app, 20).await;
    app.shutdown.cancel();
    let (status, v) = waiting.await.unwrap();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"], "shutting_down");
    assert_eq!(
        v["message"],
        "the replay stopped at shutdown after queueing 5 events"
    );
}

#[tokio::test]
async fn dedup_keys_expire_with_the_retention_and_are_swept() {
    let app = spawn_app_with(&[("HLGATE_DEDUP_RETENTION", "1s")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let body = format!(
        r#"{{"type":"NoteCreate","locationId":"L","webhookId":"{}"}}"#,
        unique("wh")
    );
    assert_eq!(app.post_signed(body.as_bytes()).await.status(), 200);
    let v: Value = app.post_signed(body.as_bytes()).await.json().await.unwrap();
    assert_eq!(v["status"], "duplicate");
    tap.take(1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Past the retention the same key is a new delivery again.
    let v: Value = app.post_signed(body.as_bytes()).await.json().await.unwrap();
    assert_eq!(v["status"], "accepted");
    tap.take(1).await;
    // The first event's bucket is past the retention and confirmed: it has left the disk.
    let first_bucket = app._dir.path().join(format!("events/{:020}", 1));
    assert!(!first_bucket.exists(), "{first_bucket:?} is still there");
    tap.cleanup(&app.exchange).await;
}
