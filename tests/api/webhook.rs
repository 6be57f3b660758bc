//! `POST /webhooks/highlevel`: every status path, its JSON body, and what was (not) stored or
//! published.

use std::time::Duration;

use crate::helpers::*;
use serde_json::Value;

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn accepted_then_duplicate_publishes_exactly_once() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (id, body) = contact_event("loc1");

    let (status, answer) = json(app.post_signed(&body).await).await;
    assert_eq!(status, 200);
    assert_eq!(answer, serde_json::json!({"status": "accepted", "id": id}));

    let (status, answer) = json(app.post_signed(&body).await).await;
    assert_eq!(status, 200);
    assert_eq!(answer, serde_json::json!({"status": "duplicate", "id": id}));

    let got = tap.take(1).await;
    assert_eq!(message_id(&got[0]), id);
    tap.assert_quiet(QUIET).await;
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"duplicate\"}"),
        1.0
    );
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn concurrent_duplicates_are_accepted_once() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (id, body) = contact_event("loc1");
    let posts = (0..20).map(|_| app.post_signed(&body));
    let answers = futures_util::future::join_all(posts).await;
    let mut accepted = 0;
    for r in answers {
        let (status, v) = json(r).await;
        assert_eq!(status, 200);
        assert_eq!(v["id"], id.as_str());
        accepted += usize::from(v["status"] == "accepted");
    }
    assert_eq!(accepted, 1);
    tap.take(1).await;
    tap.assert_quiet(QUIET).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn without_webhook_id_the_key_is_the_body_hash() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let body = br#"{"type":"NoteCreate","locationId":"L9","id":"n1"}"#;
    let (status, v) = json(app.post_signed(body).await).await;
    assert_eq!(status, 200);
    let expected = format!(
        "sha256:{}",
        hlgate::event::hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref())
    );
    assert_eq!(v["id"], expected.as_str());
    let d = tap.take(1).await;
    assert_eq!(message_id(&d[0]), expected);
    tap.cleanup(&app.exchange).await;
}

/// Posts and asserts a 401 with `code`, and that nothing was stored or published.
async fn assert_refused(
    app: &TestApp,
    tap: &mut Tap,
    body: &[u8],
    headers: &[(&str, &str)],
    code: &str,
) {
    let (status, v) = json(app.post(body, headers).await).await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"], code);
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(app.readyz().await["outbox_depth"], 0);
    tap.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn missing_signatures_are_refused() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc1");
    assert_refused(&app, &mut tap, &body, &[], "missing_signature").await;
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-GHL-Signature", "N/A")],
        "missing_signature",
    )
    .await;
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-GHL-Signature", "")],
        "missing_signature",
    )
    .await;
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-GHL-Signature", "N/A"), ("X-WH-Signature", "N/A")],
        "missing_signature",
    )
    .await;
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"missing_signature\"}"),
        4.0
    );
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn wrong_signatures_are_refused() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc1");
    let (_, good) = app.ed.sign(&body);
    // Signed by someone else.
    let (_, foreign) = Signer::ed25519().sign(&body);
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-GHL-Signature", &foreign)],
        "invalid_signature",
    )
    .await;
    // Not base64.
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-GHL-Signature", "***")],
        "invalid_signature",
    )
    .await;
    // A good signature over other bytes.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    tampered[10] ^= 1;
    assert_refused(
        &app,
        &mut tap,
        &tampered,
        &[("X-GHL-Signature", &good)],
        "invalid_signature",
    )
    .await;
    // A failing Ed25519 header does not fall back to a valid RSA one.
    let (_, rsa) = app.rsa.sign(&body);
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-GHL-Signature", &foreign), ("X-WH-Signature", &rsa)],
        "invalid_signature",
    )
    .await;
    // An RSA signature that does not verify.
    let (_, rsa_other) = app.rsa.sign(b"other");
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[("X-WH-Signature", &rsa_other)],
        "invalid_signature",
    )
    .await;
    tap.cleanup(&app.exchange).await;
}

/// Signatures of concurrent requests are verified in batches: a forged one among them must be
/// refused on its own, and every good one around it accepted and published.
#[tokio::test]
async fn forged_signatures_among_concurrent_good_ones_are_refused_alone() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let forger = Signer::ed25519();
    let events: Vec<(String, Vec<u8>, String, bool)> = (0..60)
        .map(|i| {
            let (id, body) = contact_event(&format!("loc{i}"));
            let forged = i % 12 == 5;
            let (_, sig) = if forged {
                forger.sign(&body)
            } else {
                app.ed.sign(&body)
            };
            (id, body, sig, forged)
        })
        .collect();
    let app = &app;
    let posts = events
        .iter()
        .map(|(_, body, sig, _)| async move { app.post(body, &[("X-GHL-Signature", sig)]).await });
    let answers = futures_util::future::join_all(posts).await;
    let mut good = Vec::new();
    for (r, (id, _, _, forged)) in answers.into_iter().zip(&events) {
        let (status, v) = json(r).await;
        if *forged {
            assert_eq!(status, 401, "{id}");
            assert_eq!(v["error"], "invalid_signature", "{id}");
        } else {
            assert_eq!(status, 200, "{id}");
            assert_eq!(v, serde_json::json!({"status": "accepted", "id": id}));
            good.push(id.clone());
        }
    }
    assert_eq!(good.len(), 55);
    let mut published: Vec<String> = tap.take(55).await.iter().map(message_id).collect();
    tap.assert_quiet(QUIET).await;
    published.sort();
    good.sort();
    assert_eq!(published, good);
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"invalid_signature\"}"),
        5.0
    );
    // The batch counters are process-wide (other tests' gateways count into them too): only
    // that they are exported is checked here; src/verify/batch.rs counts exactly per thread.
    for series in [
        "hlgate_signature_batches_total",
        "hlgate_signature_batched_total",
        "hlgate_signature_batches_failed_total",
    ] {
        assert!(metric(&m, series) >= 0.0, "{series}");
    }
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn legacy_rsa_is_accepted_and_can_be_turned_off() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (id, body) = contact_event("loc1");
    let (header, sig) = app.rsa.sign(&body);
    assert_eq!(header, "X-WH-Signature");
    let (status, v) = json(
        app.post(&body, &[(header, &sig), ("X-GHL-Signature", "N/A")])
            .await,
    )
    .await;
    assert_eq!((status, v["status"].as_str()), (200, Some("accepted")));
    let d = tap.take(1).await;
    assert_eq!(message_id(&d[0]), id);
    assert_eq!(header_of(&d[0], "x-hl-signature-scheme"), "rsa-sha256");
    assert_eq!(header_of(&d[0], "x-hl-signature"), sig);
    tap.cleanup(&app.exchange).await;

    let app = spawn_app_with(&[("HLGATE_ACCEPT_LEGACY_RSA", "false")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc1");
    let (header, sig) = app.rsa.sign(&body);
    assert_refused(
        &app,
        &mut tap,
        &body,
        &[(header, &sig)],
        "missing_signature",
    )
    .await;
    tap.cleanup(&app.exchange).await;
}

fn header_of(d: &lapin::message::Delivery, name: &str) -> String {
    header(d, name).unwrap_or_else(|| panic!("no header {name}"))
}

#[tokio::test]
async fn compact_reserialisation_fallback_is_counted() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    // HighLevel's examples sign JSON.stringify(body); a proxy may have re-indented it.
    let compact = br#"{"type":"TaskCreate","locationId":"L","id":"t1","webhookId":"wh-fallback"}"#;
    let pretty = b"{\n  \"type\": \"TaskCreate\",\n  \"locationId\": \"L\",\n  \"id\": \"t1\",\n  \"webhookId\": \"wh-fallback\"\n}";
    let (header, sig) = app.ed.sign(compact);
    let (status, _) = json(app.post(pretty, &[(header, &sig)]).await).await;
    assert_eq!(status, 200);
    let d = tap.take(1).await;
    // The body is published exactly as received, not re-serialised.
    assert_eq!(d[0].data, pretty.to_vec());
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_signature_fallback_total"), 1.0);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn too_large_bodies_get_413_and_nothing_is_stored() {
    let app = spawn_app_with(&[("HLGATE_MAX_BODY_BYTES", "512")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let body = format!(r#"{{"type":"NoteCreate","pad":"{}"}}"#, "x".repeat(600)).into_bytes();
    let (header, sig) = app.ed.sign(&body);
    let (status, v) = json(app.post(&body, &[(header, &sig)]).await).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"], "too_large");
    // A body of exactly the limit is fine.
    let frame = r#"{"type":"NoteCreate","pad":""}"#.len();
    let exact = format!(
        r#"{{"type":"NoteCreate","pad":"{}"}}"#,
        "x".repeat(512 - frame)
    )
    .into_bytes();
    assert_eq!(exact.len(), 512);
    let (status, _) = json(app.post_signed(&exact).await).await;
    assert_eq!(status, 200);
    tap.take(1).await;
    tap.assert_quiet(QUIET).await;
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"too_large\"}"),
        1.0
    );
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn timestamps_outside_the_window_are_refused() {
    let app = spawn_app_with(&[
        ("HLGATE_DEDUP_RETENTION", "1h"),
        ("HLGATE_MAX_FUTURE_SKEW", "5m"),
    ])
    .await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    for ts in [
        now - time::Duration::hours(2),
        now + time::Duration::minutes(10),
    ] {
        let body = format!(
            r#"{{"type":"NoteCreate","locationId":"L","timestamp":"{}"}}"#,
            fmt(ts)
        );
        let (header, sig) = app.ed.sign(body.as_bytes());
        assert_refused(
            &app,
            &mut tap,
            body.as_bytes(),
            &[(header, &sig)],
            "stale_timestamp",
        )
        .await;
    }
    // Inside the window (an hour-old retry), and unparseable: accepted.
    for ts in [
        fmt(now - time::Duration::minutes(50)),
        "last tuesday".to_string(),
    ] {
        let body = format!(r#"{{"type":"NoteCreate","locationId":"L","timestamp":"{ts}"}}"#);
        let (status, _) = json(app.post_signed(body.as_bytes()).await).await;
        assert_eq!(status, 200, "{ts}");
    }
    tap.take(2).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn malformed_json_is_accepted_and_routed_as_malformed() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let body = b"{\"type\": \"ContactCreate\", oops";
    let (status, v) = json(app.post_signed(body).await).await;
    assert_eq!(status, 200);
    assert!(v["id"].as_str().unwrap().starts_with("sha256:"));
    let d = tap.take(1).await;
    assert_eq!(d[0].routing_key.as_str(), "_malformed.none");
    assert_eq!(d[0].data, body.to_vec());
    assert_eq!(header_of(&d[0], "x-hl-event-type"), "_malformed");
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn arrays_are_one_delivery_of_several_messages() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let body = br#"[ {"type":"SaasPlanCreate","companyId":"C1","planId":"p1"},
                    {"type":"SaasPlanCreate","companyId":"C2","planId":"p2"} ]"#;
    let (status, v) = json(app.post_signed(body).await).await;
    assert_eq!(status, 200);
    let key = v["id"].as_str().unwrap().to_string();
    let d = tap.take(2).await;
    assert_eq!(message_id(&d[0]), format!("{key}/0"));
    assert_eq!(message_id(&d[1]), format!("{key}/1"));
    assert_eq!(d[0].routing_key.as_str(), "SaasPlanCreate.C1");
    assert_eq!(d[1].routing_key.as_str(), "SaasPlanCreate.C2");
    assert_eq!(
        d[0].data,
        br#"{"type":"SaasPlanCreate","companyId":"C1","planId":"p1"}"#.to_vec()
    );
    // The whole array is deduplicated as one.
    let (_, v) = json(app.post_signed(body).await).await;
    assert_eq!(v["status"], "duplicate");
    tap.assert_quiet(QUIET).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn overload_answers_429_with_retry_after_and_keeps_what_it_took() {
    // No broker (nothing listens on port 1), so the outbox only grows.
    let app = spawn_app_with(&[
        ("HLGATE_OUTBOX_MAX_EVENTS", "2"),
        ("HLGATE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
    ])
    .await;
    for _ in 0..2 {
        let (_, body) = contact_event("L");
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    let (_, body) = contact_event("L");
    let r = app.post_signed(&body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "overloaded");
    let ready = app.admin_get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["outbox_depth"], 2);
    assert_eq!(ready["broker"], "disconnected");
    // The oldest unpublished event's age grows while it waits (a lower bound: a slow machine
    // only makes it older).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(
        app.readyz().await["oldest_pending_seconds"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
    assert!(metric(&app.metrics_text().await, "hlgate_outbox_oldest_seconds") >= 1.0);
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"overloaded\"}"),
        1.0
    );
    assert_eq!(metric(&m, "hlgate_broker_connected"), 0.0);
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
