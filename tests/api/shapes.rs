//! Bodies of unusual shape, signed: an empty array, a large array of tiny elements. Whatever
//! their shape they are answered, deduplicated and published element by element.

use std::time::Duration;

use crate::helpers::*;
use serde_json::Value;

#[tokio::test]
async fn an_empty_array_is_accepted_deduplicated_and_publishes_nothing() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    for body in [&b"[]"[..], b"[ ]", b"[\n]"] {
        let key = hlgate::event::dedup_key(None, body);
        let (status, v) = json(app.post_signed(body).await).await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(v, serde_json::json!({"status": "accepted", "id": key}));
        let (status, v) = json(app.post_signed(body).await).await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(v, serde_json::json!({"status": "duplicate", "id": key}));
    }
    assert_eq!(app.readyz().await["outbox_depth"], 0);
    tap.assert_quiet(Duration::from_millis(700)).await;

    // The app still serves: the next event goes through.
    let (id, body) = contact_event("L1");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(message_id(&tap.take(1).await[0]), id);
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"accepted\"}"),
        4.0
    );
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"duplicate\"}"),
        3.0
    );
    tap.cleanup(&app.exchange).await;
}

/// Element `i` of the large array below: mostly tiny, with a few real events among them.
fn element(i: usize) -> Value {
    match i % 5000 {
        1 => serde_json::json!({"type": "ContactCreate", "locationId": "locA", "id": "c1",
                                "email": "a@b.c", "webhookId": "wA"}),
        2 => serde_json::json!({"type": "ContactCreate", "locationId": "locB", "id": "c2",
                                "email": 42}),
        3 => serde_json::json!({}),
        _ => serde_json::json!(i),
    }
}

#[tokio::test]
async fn a_large_array_of_tiny_elements_publishes_every_element_in_order() {
    const ELEMENTS: usize = 20_000;
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let elements: Vec<Value> = (0..ELEMENTS).map(element).collect();
    let body = serde_json::to_vec(&elements).unwrap();

    let (status, v) = json(app.post_signed(&body).await).await;
    assert_eq!(status, 200);
    // The first element that has a webhookId names the whole delivery.
    assert_eq!(v, serde_json::json!({"status": "accepted", "id": "wA"}));

    let got = tap.take(ELEMENTS).await;
    for (i, (d, expected)) in got.iter().zip(&elements).enumerate() {
        assert_eq!(message_id(d), format!("wA/{i}"));
        assert_eq!(d.data, serde_json::to_vec(expected).unwrap(), "element {i}");
        let (key, schema) = match i % 5000 {
            1 => ("ContactCreate.locA", "valid"),
            2 => ("ContactCreate.locB", "invalid"),
            _ => ("unknown.none", "unknown"),
        };
        assert_eq!(d.routing_key.as_str(), key, "element {i}");
        assert_eq!(
            header(d, "x-hl-schema").as_deref(),
            Some(schema),
            "element {i}"
        );
    }
    let (_, v) = json(app.post_signed(&body).await).await;
    assert_eq!(v["status"], "duplicate");
    tap.assert_quiet(Duration::from_millis(700)).await;
    tap.cleanup(&app.exchange).await;
}

/// A delivery of 200 000 numbers is one stored record: accepted, and every element published
/// in order, each with its own message id and body, read back from that record window by window.
#[tokio::test]
async fn an_array_of_200_000_numbers_is_accepted_and_published_in_order() {
    const ELEMENTS: usize = 200_000;
    let app = spawn_app_with(&[("HLGATE_MAX_BODY_BYTES", "4194304")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let numbers: Vec<String> = (0..ELEMENTS).map(|i| (i % 1000).to_string()).collect();
    let body = format!("[{}]", numbers.join(", "));
    let key = hlgate::event::dedup_key(None, body.as_bytes());

    let (status, v) = json(app.post_signed(body.as_bytes()).await).await;
    assert_eq!(status, 200);
    assert_eq!(v, serde_json::json!({"status": "accepted", "id": key}));

    let got = tap.take(ELEMENTS).await;
    for (i, (d, number)) in got.iter().zip(&numbers).enumerate() {
        assert_eq!(message_id(d), format!("{key}/{i}"));
        assert_eq!(d.data, number.as_bytes(), "element {i}");
        assert_eq!(d.routing_key.as_str(), "unknown.none", "element {i}");
    }
    let sequences: Vec<u64> = got
        .iter()
        .map(|d| header(d, "x-hl-sequence").unwrap().parse().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1));
    let (_, v) = json(app.post_signed(body.as_bytes()).await).await;
    assert_eq!(v["status"], "duplicate");
    tap.assert_quiet(Duration::from_millis(700)).await;
    tap.cleanup(&app.exchange).await;
}

/// serde reads a JSON array of as many items as a struct has fields as that struct; an element
/// that is an array has no fields, whether or not schemas are checked.
#[tokio::test]
async fn an_array_element_that_is_an_array_has_no_fields() {
    let items = r#"["ContactCreate","locA",null,null,null,"wX",null]"#;
    let body = format!(r#"[{items},{{"type":"ContactCreate","locationId":"locB"}}]"#);
    for mode in ["off", "warn"] {
        let app = spawn_app_with(&[("HLGATE_SCHEMA_MODE", mode)]).await;
        let mut tap = Tap::bind(&app.exchange, "#").await;
        let (status, v) = json(app.post_signed(body.as_bytes()).await).await;
        assert_eq!(status, 200);
        assert_eq!(
            v["id"],
            hlgate::event::dedup_key(None, body.as_bytes()),
            "{mode}"
        );
        let got = tap.take(2).await;
        assert_eq!(
            routing_keys(&got),
            ["unknown.none", "ContactCreate.locB"],
            "{mode}"
        );
        assert_eq!(got[0].data, items.as_bytes());
        tap.cleanup(&app.exchange).await;
    }
}
