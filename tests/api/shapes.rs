//! Bodies of unusual shape, signed: an empty array, a large array of tiny elements. Whatever
//! their shape they are answered, deduplicated and published element by element.

use std::time::Duration;

use crate::helpers::*;
use serde_json::Value;

async fn json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn body_hash_key(body: &[u8]) -> String {
    format!(
        "sha256:{}",
        hlgate::event::hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref())
    )
}

#[tokio::test]
async fn an_empty_array_is_accepted_deduplicated_and_publishes_nothing() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    for body in [&b"[]"[..], b"[ ]", b"[\n]"] {
        let key = body_hash_key(body);
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
