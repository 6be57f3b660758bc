//! A broker resource alarm blocks every publisher on the broker, so these tests run in a binary
//! of their own (cargo runs test binaries one after the other) and one at a time.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;
#[path = "support/example.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use helpers::*;
use support::example;

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

/// The soak tool, two minutes of it: cuts, kills and an alarm, and every accepted event
/// published (BENCHMARKS.md has a long run).
#[tokio::test]
async fn two_minutes_of_faults_lose_no_accepted_event() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let soak = tokio::task::spawn_blocking(|| example("soak"))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(soak)
            .args(["--bin", env!("CARGO_BIN_EXE_hlgate")])
            .args(["--minutes", "2", "--rate", "200", "--concurrency", "8"])
            .args(["--cut-every", "25", "--cut-for", "3", "--kill-every", "35"])
            .args(["--alarm-at", "50", "--alarm-for", "10"])
            .args(["--drain-timeout", "120"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| {
            panic!(
                "no SUMMARY in {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let field = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {summary}"))
    };
    assert!(out.status.success(), "{stdout}");
    assert!(field("accepted") > 1000, "{summary}");
    assert_eq!(field("missing"), 0, "{stdout}");
    assert!(field("kills") >= 3 && field("cuts") >= 4, "{summary}");
    assert_eq!(field("alarms"), 1, "{summary}");
    assert!(field("copies") <= field("copies_bound"), "{summary}");
}
