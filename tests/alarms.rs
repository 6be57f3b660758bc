//! A broker resource alarm blocks every publisher on the broker, so these tests run in a binary
//! of their own (cargo runs test binaries one after the other) and one at a time.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::*;

/// Holds RabbitMQ's memory or disk alarm on; clears it when dropped, whatever the test did.
struct Alarm(&'static str);

impl Alarm {
    fn raise(resource: &'static str) -> Alarm {
        eval(&format!(
            "rabbit_alarm:set_alarm({{{{resource_limit, {resource}, node()}}, []}})."
        ));
        Alarm(resource)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        eval(&format!(
            "rabbit_alarm:clear_alarm({{resource_limit, {}, node()}}).",
            self.0
        ));
    }
}

fn eval(expr: &str) {
    let out = Command::new("rabbitmqctl")
        .args(["eval", expr])
        .output()
        .expect("rabbitmqctl (the tests run beside the broker)");
    assert!(out.status.success(), "{out:?}");
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn blocked_then_released(resource: &'static str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (id, body) = contact_event("alarm");
        assert_eq!(app.post_signed(&body).await.status(), 200);
        ids.push(id);
    }
    tap.take(5).await;

    let alarm = Alarm::raise(resource);
    for _ in 0..20 {
        let (id, body) = contact_event("alarm");
        assert_eq!(
            app.post_signed(&body).await.status(),
            200,
            "events are taken into the outbox meanwhile"
        );
        ids.push(id);
    }
    let mut states = Vec::new();
    for _ in 0..100 {
        states.push(app.readyz().await["broker"].as_str().unwrap().to_string());
        if states.last().unwrap() == "blocked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(states.last().unwrap(), "blocked", "{states:?}");
    let connections = metric(&app.metrics_text().await, "hlgate_broker_connections_total");
    // Past the confirm timeout: blocked all along, on the one connection it had.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(app.readyz().await["broker"], "blocked");
    }
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_broker_connections_total"),
        connections,
        "no new connection while blocked"
    );
    assert_eq!(metric(&m, "hlgate_broker_state{state=\"blocked\"}"), 1.0);
    assert_eq!(metric(&m, "hlgate_broker_connected"), 0.0);

    drop(alarm);
    // Everything comes once: nothing was left behind on an abandoned connection.
    let got = tap.take(20).await;
    let mut got_ids: Vec<String> = got.iter().map(message_id).collect();
    tap.assert_quiet(Duration::from_secs(3)).await;
    got_ids.sort();
    let mut expected = ids[5..].to_vec();
    expected.sort();
    assert_eq!(got_ids, expected);
    app.wait_drained().await;
    assert_eq!(app.readyz().await["broker"], "connected");
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_publish_total{result=\"ack\"}"), 25.0);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_memory_alarm_reads_blocked_and_publishes_each_event_once_after() {
    blocked_then_released("memory").await;
}

#[tokio::test]
async fn a_disk_alarm_reads_blocked_and_publishes_each_event_once_after() {
    blocked_then_released("disk").await;
}
