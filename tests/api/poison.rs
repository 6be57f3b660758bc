//! No single event stops the events behind it: oversized fields are bounded in the message, and
//! what the broker still refuses for one entry goes to `highlevel.quarantine`, body intact.

use std::time::Duration;

use crate::helpers::*;

fn event(kind: &str, location: &str, webhook_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": kind, "locationId": location, "webhookId": webhook_id, "id": "c1",
    }))
    .unwrap()
}

#[tokio::test]
async fn huge_ids_are_bounded_in_headers_and_the_events_behind_them_flow() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let huge_id = format!("wh-{}", "w".repeat(200 * 1024));
    let huge_location = "L".repeat(100 * 1024);
    let huge_type = "T".repeat(100 * 1024);
    let bodies = [
        event("ContactCreate", "loc1", &unique("before")),
        event(&huge_type, &huge_location, &huge_id),
        event("ContactCreate", "loc1", &unique("after")),
    ];
    for body in &bodies {
        let r = app.post_signed(body).await;
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }

    let got = tap.take(3).await;
    let bodies_got: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(
        bodies_got,
        bodies.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    let poison = &got[1];
    for name in [
        "x-hl-webhook-id",
        "x-hl-location-id",
        "x-hl-tenant-id",
        "x-hl-event-type",
    ] {
        let value = header(poison, name).unwrap();
        assert!(value.len() <= 1024, "{name} is {} bytes", value.len());
        assert!(
            value.contains("...sha256:"),
            "{name} carries the cut marker"
        );
    }
    let cut = header(poison, "x-hl-truncated").expect("the cut headers are listed");
    assert!(
        cut.contains("x-hl-webhook-id") && cut.contains("x-hl-event-type"),
        "{cut}"
    );
    assert!(poison.routing_key.as_str().len() <= 255);
    assert_eq!(header(&got[0], "x-hl-truncated"), None);
    app.wait_drained().await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn an_entry_the_broker_keeps_refusing_is_quarantined_and_the_rest_flow() {
    // The smallest frame RabbitMQ allows: headers of ~6 KB no longer fit in a content header
    // frame, so the broker closes the connection on that one message, as it would on any frame
    // over its limit.
    let url = format!("{AMQP_URL}?frame_max=4096");
    let app = spawn_app_with(&[("HLGATE_AMQP_URL", &url)]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let poison_id = unique("poison");
    let long = |c: &str| c.repeat(1000);
    let poison = serde_json::to_vec(&serde_json::json!({
        "type": long("T"), "locationId": long("L"), "companyId": long("C"),
        "webhookId": poison_id,
    }))
    .unwrap();
    let before = event("ContactCreate", "loc1", &unique("before"));
    let after = event("ContactCreate", "loc1", &unique("after"));
    for body in [&before, &poison, &after] {
        assert_eq!(app.post_signed(body).await.status(), 200);
    }

    let got = tap.take(2).await;
    assert_eq!(got[0].data, before);
    assert_eq!(
        got[1].data, after,
        "the entry behind the refused one is published"
    );
    let quarantined = find_in_queue("highlevel.quarantine", &poison_id)
        .await
        .expect("the refused entry is in highlevel.quarantine");
    assert_eq!(quarantined.data, poison, "its body is intact");
    let reason = header(&quarantined, "x-hl-quarantine-reason").expect("says why");
    assert!(!reason.is_empty());
    assert_eq!(
        header(&quarantined, "x-hl-sequence").as_deref(),
        Some("2"),
        "keeps its outbox sequence"
    );
    app.wait_drained().await;
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(&metrics, "hlgate_publish_total{result=\"quarantined\"}"),
        1.0
    );
    tap.assert_quiet(Duration::from_millis(300)).await;
    tap.cleanup(&app.exchange).await;
}
