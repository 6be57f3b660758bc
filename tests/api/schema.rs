//! Schema modes end to end: `x-hl-schema`, the per-outcome metric, and quarantine in enforce mode.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

fn contact(webhook_id: &str, email: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "ContactCreate", "locationId": "locS", "id": "c1",
        "email": email, "webhookId": webhook_id,
    }))
    .unwrap()
}

#[tokio::test]
async fn warn_mode_marks_and_counts_but_publishes_everything() {
    let app = spawn_app().await; // warn is the default
    let mut tap = Tap::bind(&app.exchange, "#").await;
    assert_eq!(
        app.post_signed(&contact(&unique("v"), json!("a@b.c")))
            .await
            .status(),
        200
    );
    // `email` must be a string in ContactCreate's schema.
    assert_eq!(
        app.post_signed(&contact(&unique("i"), json!(42)))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_signed(br#"{"type":"BrandNewEvent","locationId":"locS"}"#)
            .await
            .status(),
        200
    );
    assert_eq!(app.post_signed(b"not json").await.status(), 200);
    let d = tap.take(4).await;
    let marks: Vec<String> = d
        .iter()
        .map(|m| header(m, "x-hl-schema").unwrap())
        .collect();
    assert_eq!(marks, ["valid", "invalid", "unknown", "unknown"]);
    assert_eq!(d[1].routing_key.as_str(), "ContactCreate.locS");
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_schema_total{outcome=\"valid\"}"), 1.0);
    assert_eq!(metric(&m, "hlgate_schema_total{outcome=\"invalid\"}"), 1.0);
    assert_eq!(metric(&m, "hlgate_schema_total{outcome=\"unknown\"}"), 2.0);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn off_mode_validates_nothing() {
    let app = spawn_app_with(&[("HLGATE_SCHEMA_MODE", "off")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    assert_eq!(
        app.post_signed(&contact(&unique("i"), json!(42)))
            .await
            .status(),
        200
    );
    let d = tap.take(1).await;
    assert_eq!(header(&d[0], "x-hl-schema").as_deref(), Some("unknown"));
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn enforce_mode_quarantines_invalid_events_and_drops_none() {
    let app = spawn_app_with(&[("HLGATE_SCHEMA_MODE", "enforce")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let bad_id = unique("quarantine");
    assert_eq!(
        app.post_signed(&contact(&bad_id, json!(42))).await.status(),
        200
    );
    let good_id = unique("valid");
    assert_eq!(
        app.post_signed(&contact(&good_id, json!("a@b.c")))
            .await
            .status(),
        200
    );
    let d = tap.take(1).await;
    assert_eq!(message_id(&d[0]), good_id);
    tap.assert_quiet(Duration::from_millis(500)).await;
    app.wait_drained().await;

    let q = find_in_queue("highlevel.quarantine", &bad_id)
        .await
        .expect("the invalid event is in highlevel.quarantine");
    assert_eq!(q.data, contact(&bad_id, json!(42)));
    assert_eq!(header(&q, "x-hl-schema").as_deref(), Some("invalid"));
    assert_eq!(
        header(&q, "x-hl-event-type").as_deref(),
        Some("ContactCreate")
    );
    tap.cleanup(&app.exchange).await;
}
