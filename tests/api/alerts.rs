//! Alerts: each transition POSTed once, in order, to a local incoming-webhook stand-in, with
//! no secret or event body in it; a receiver that fails is tried again; flapping is held down.

use std::time::Duration;

use hlgate::health::ManualClock;

use crate::durability::Proxy;
use crate::health::{health, post_forged, spawn_with_clock, T0};
use crate::helpers::*;
use crate::receiver::{transitions, Receiver};

const MINUTE: Duration = Duration::from_secs(60);
const ADMIN_TOKEN: &str = "admin-s3cret-for-alerts";
const CLIENT_SECRET: &str = "client-s3cret-for-alerts";
const MARKER: &str = "body-marker-for-alerts";

/// Settings for an app that sends alerts to `receiver` and watches only what a test drives.
fn alerting<'a>(receiver: &'a Receiver, hold_down: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HLGATE_ALERT_WEBHOOK_URL", receiver.url.as_str()),
        ("HLGATE_ALERT_HOLD_DOWN", hold_down),
        ("HLGATE_ALERT_BROKER_DOWN", "0"),
        ("HLGATE_ALERT_OUTBOX_AGE", "0"),
        ("HLGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("HLGATE_CLIENT_ID", "app-alerts"),
        ("HLGATE_CLIENT_SECRET", CLIENT_SECRET),
    ]
}

/// What no alert may carry: the admin token, the client secret, the receiver's own URL path,
/// an event body or a signature.
fn assert_clean(bodies: &[String], receiver: &Receiver) {
    for body in bodies {
        for secret in [ADMIN_TOKEN, CLIENT_SECRET, Receiver::SECRET_PATH, MARKER] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
        assert!(!body.contains(&receiver.url), "{body}");
    }
}

#[tokio::test]
async fn each_transition_is_sent_once_in_order_without_secrets() {
    let receiver = Receiver::start();
    let clock = ManualClock::at(T0);
    let app = spawn_with_clock(&alerting(&receiver, "0"), &clock).await;

    // Ten forged signatures: a burst (10 failures, all of the attempts).
    post_forged(&app, 10, MARKER).await;
    let alerts = receiver.wait_for(1).await;
    assert_eq!(
        transitions(&alerts),
        [("signature_failures".into(), "started".into())]
    );
    let alert = &alerts[0];
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["details"]["failures"], 10);
    assert_eq!(alert["details"]["attempts"], 10);
    let text = alert["text"].as_str().unwrap();
    assert!(
        text.starts_with("hlgate: signature_failures started: 10 of 10"),
        "{text}"
    );
    let h = health(&app).await;
    assert_eq!(h["alerts"][0]["alert"], "signature_failures", "{h}");

    // Sixteen minutes on, the failures left the 15-minute window: the burst ended.
    clock.advance(MINUTE * 16);
    let alerts = receiver.wait_for(2).await;
    assert_eq!(
        transitions(&alerts)[1],
        ("signature_failures".into(), "ended".into())
    );
    assert_eq!(alerts[1]["severity"], "resolved");

    // Nothing changes any more: nothing more comes.
    let bodies = receiver.settled().await;
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_clean(&bodies, &receiver);
    let text = app.metrics_text().await;
    for state in ["started", "ended"] {
        let series =
            format!("hlgate_alerts_total{{alert=\"signature_failures\",state=\"{state}\"}}");
        assert_eq!(metric(&text, &series), 1.0);
    }
    assert_eq!(
        metric(&text, "hlgate_alert_deliveries_total{result=\"sent\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_receiver_that_fails_gets_the_alert_again_until_it_takes_it() {
    let receiver = Receiver::start();
    receiver.fail_next(2);
    let clock = ManualClock::at(T0);
    let app = spawn_with_clock(&alerting(&receiver, "0"), &clock).await;
    post_forged(&app, 10, MARKER).await;

    // Two 500s, then the same alert taken.
    let alerts = receiver.wait_for(3).await;
    assert_eq!(alerts[0], alerts[1]);
    assert_eq!(alerts[1], alerts[2]);
    assert_eq!(alerts[2]["alert"], "signature_failures");
    let bodies = receiver.settled().await;
    assert_eq!(bodies.len(), 3, "sent once taken: {bodies:?}");
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "hlgate_alert_deliveries_total{result=\"retried\"}"),
        2.0
    );
    assert_eq!(
        metric(&text, "hlgate_alert_deliveries_total{result=\"sent\"}"),
        1.0
    );
}

#[tokio::test]
async fn flapping_is_held_down() {
    let receiver = Receiver::start();
    let clock = ManualClock::at(T0);
    let app = spawn_with_clock(&alerting(&receiver, "1h"), &clock).await;

    post_forged(&app, 10, MARKER).await;
    receiver.wait_for(1).await;
    // Off and on twice within the hour's hold-down: nothing sent.
    for _ in 0..2 {
        clock.advance(MINUTE * 16);
        health(&app).await;
        post_forged(&app, 10, MARKER).await;
        health(&app).await;
    }
    assert_eq!(receiver.settled().await.len(), 1);
    // Quiet past the hold-down: the end is sent, once.
    clock.advance(MINUTE * 30);
    let alerts = receiver.wait_for(2).await;
    assert_eq!(
        transitions(&alerts),
        [
            ("signature_failures".into(), "started".into()),
            ("signature_failures".into(), "ended".into())
        ]
    );
    assert_eq!(receiver.settled().await.len(), 2);
}

#[tokio::test]
async fn a_broker_away_longer_than_the_limit_is_an_alert_until_it_is_back() {
    let receiver = Receiver::start();
    let proxy = Proxy::down().await;
    let url = proxy.url();
    let clock = ManualClock::at(T0);
    let mut settings = alerting(&receiver, "0");
    settings.retain(|(k, _)| *k != "HLGATE_ALERT_BROKER_DOWN");
    settings.push(("HLGATE_ALERT_BROKER_DOWN", "5m"));
    settings.push(("HLGATE_AMQP_URL", &url));
    let app = spawn_with_clock(&settings, &clock).await;

    // Away from the start; 4 minutes are within the limit.
    assert_eq!(health(&app).await["broker"]["state"], "disconnected");
    clock.advance(MINUTE * 4);
    assert_eq!(health(&app).await["broker"]["down_seconds"], 240);
    clock.advance(MINUTE * 2);
    let alerts = receiver.wait_for(1).await;
    assert_eq!(
        transitions(&alerts),
        [("broker_disconnected".into(), "started".into())]
    );
    assert_eq!(alerts[0]["details"]["broker"], "disconnected");
    assert_eq!(alerts[0]["severity"], "warning");

    proxy.up().await;
    let alerts = receiver.wait_for(2).await;
    assert_eq!(
        transitions(&alerts)[1],
        ("broker_disconnected".into(), "ended".into())
    );
    let bodies = receiver.settled().await;
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    // The AMQP URL's password never shows.
    assert!(bodies.iter().all(|b| !b.contains("guest:guest")));
    let tap = Tap::bind(&app.exchange, "#").await;
    tap.cleanup(&app.exchange).await;
}
