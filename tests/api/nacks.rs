//! What the broker refuses: a nack is retried on its own while the entries behind it go on,
//! nothing acked goes again, an entry refused past the bound while others pass is
//! quarantined; a broker that refuses everything, or refuses the exchange itself, is an
//! outage, and nothing is quarantined for it.

use std::collections::HashMap;
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::helpers::*;

/// A queue bound to `pattern` that holds at most `max` messages and makes the broker nack
/// every publish routed to it beyond that, as a consumer's queue does when its consumer stops.
pub async fn full_queue(exchange: &str, pattern: &str, max: i64) -> (lapin::Connection, String) {
    let (connection, channel) = amqp().await;
    let name = unique("test.full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(max));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, name)
}

pub async fn delete_queue(connection: lapin::Connection, name: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "bye".into()).await;
}

fn event(location: &str, webhook_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "ContactCreate", "locationId": location, "webhookId": webhook_id, "id": "c1",
    }))
    .unwrap()
}

/// Waits until `id` turns up in the quarantine queue (it goes there only after the bound).
async fn quarantined(id: &str) -> lapin::message::Delivery {
    for _ in 0..6 {
        if let Some(d) = find_in_queue("highlevel.quarantine", id).await {
            return d;
        }
    }
    panic!("{id} did not reach highlevel.quarantine");
}

#[tokio::test]
async fn a_nack_retries_only_the_refused_entries_and_the_rest_go_once() {
    let app = spawn_app_with(&[("HLGATE_NACK_QUARANTINE_AFTER", "3s")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (full, full_name) = full_queue(&app.exchange, "*.locfull", 2).await;
    let mut others = Vec::new();
    let mut refused = Vec::new();
    for round in 0..4 {
        let id = unique("full");
        assert_eq!(app.post_signed(&event("locfull", &id)).await.status(), 200);
        refused.push(id);
        for _ in 0..10 {
            let id = unique("other");
            let location = format!("loc{round}");
            assert_eq!(app.post_signed(&event(&location, &id)).await.status(), 200);
            others.push(id);
        }
    }

    // Every other tenant's event arrives, once: a nack sends nothing acked again.
    let mut seen: HashMap<String, usize> = HashMap::new();
    while others.iter().any(|id| !seen.contains_key(id)) {
        let d = tap
            .next(Duration::from_secs(20))
            .await
            .expect("the events of other tenants flow");
        *seen.entry(message_id(&d)).or_default() += 1;
    }
    // The two refused entries are retried (a retry reaches the other bound queues again);
    // the rest stay quiet meanwhile.
    while let Some(d) = tap.next(Duration::from_secs(2)).await {
        *seen.entry(message_id(&d)).or_default() += 1;
    }
    for id in &others {
        assert_eq!(seen[id], 1, "{id} was published {} times", seen[id]);
    }
    // The first two fit the full queue; the broker refuses the last two, again and again
    // while it takes the others, until the bound sends them to the quarantine, body intact.
    for id in &refused[2..] {
        let d = quarantined(id).await;
        assert_eq!(
            d.data,
            event("locfull", id),
            "{id} keeps its body in quarantine"
        );
        let reason = header(&d, "x-hl-quarantine-reason").unwrap();
        assert!(reason.contains("nacked"), "{reason}");
    }
    app.wait_drained().await;
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_publish_total{result=\"ack\"}"),
        42.0,
        "each entry acked once"
    );
    assert!(metric(&m, "hlgate_publish_total{result=\"nack\"}") >= 4.0);
    assert_eq!(
        metric(&m, "hlgate_publish_total{result=\"quarantined\"}"),
        2.0
    );
    assert_eq!(metric(&m, "hlgate_publish_refused"), 0.0);
    delete_queue(full, &full_name).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_broker_that_nacks_everything_quarantines_nothing_and_loses_nothing() {
    let app = spawn_app_with(&[("HLGATE_NACK_QUARANTINE_AFTER", "1s")]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (full, full_name) = full_queue(&app.exchange, "#", 0).await;
    let ids: Vec<String> = (0..5).map(|_| unique("all")).collect();
    for id in &ids {
        assert_eq!(app.post_signed(&event("loc1", id)).await.status(), 200);
    }
    // Well past the bound, every publish still refused: an outage, not poison.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = app.metrics_text().await;
    assert!(metric(&m, "hlgate_publish_total{result=\"nack\"}") >= 5.0);
    assert_eq!(
        metric(&m, "hlgate_publish_total{result=\"quarantined\"}"),
        0.0
    );
    assert_eq!(metric(&m, "hlgate_publish_total{result=\"ack\"}"), 0.0);
    assert!(metric(&m, "hlgate_publish_refused") >= 1.0);
    assert_eq!(app.readyz().await["outbox_depth"], 5);

    // The consumer's queue makes room: everything goes, and nothing went to the quarantine.
    delete_queue(full, &full_name).await;
    app.wait_drained().await;
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = tap.next(Duration::from_secs(1)).await {
        seen.insert(message_id(&d));
    }
    for id in &ids {
        assert!(seen.contains(id), "{id} was published");
    }
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_publish_total{result=\"quarantined\"}"),
        0.0
    );
    assert_eq!(metric(&m, "hlgate_publish_total{result=\"ack\"}"), 5.0);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn an_exchange_the_broker_refuses_is_an_outage_not_poison() {
    // Nobody declares the exchange: every publish to it is refused with 404.
    let app = spawn_app_with(&[("HLGATE_DECLARE_TOPOLOGY", "false")]).await;
    let ids: Vec<String> = (0..3).map(|_| unique("noexchange")).collect();
    for id in &ids {
        assert_eq!(app.post_signed(&event("loc1", id)).await.status(), 200);
    }
    // Long enough for three breaks with the same entry alone in flight, which would make a
    // refused message poison.
    let mut refused_seen = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused_seen |= app.readyz().await["broker"] == "refused";
    }
    assert!(refused_seen, "readiness says the broker refuses");
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_publish_total{result=\"quarantined\"}"),
        0.0
    );
    assert_eq!(metric(&m, "hlgate_broker_state{state=\"refused\"}"), 1.0);

    // Once the exchange exists, the events go to it, in order.
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let got = tap.take(3).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ids);
    app.wait_drained().await;
    assert_eq!(app.readyz().await["broker"], "connected");
    tap.cleanup(&app.exchange).await;
}
