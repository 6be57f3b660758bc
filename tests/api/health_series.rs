//! `GET /v1/health/series`: the minute counts in steps for the console's charts, by a clock
//! the test moves; `/v1/health`'s tenants by token state; the parameters refused by name.

use std::time::Duration;

use hlgate::health::ManualClock;
use serde_json::{json, Value};

use crate::health::{health, post_forged, spawn_with_clock, T0};
use crate::helpers::*;

const MINUTE: Duration = Duration::from_secs(60);

async fn series(app: &TestApp, query: &str) -> Value {
    let (status, body) = json(app.admin_get(&format!("/v1/health/series?{query}")).await).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

#[tokio::test]
async fn steps_hold_each_minutes_outcomes_and_end_with_the_current_minute() {
    let clock = ManualClock::at(T0);
    let app = spawn_with_clock(&[("HLGATE_ALERT_BROKER_DOWN", "0")], &clock).await;
    // Bound, so that nothing is left in the shared highlevel.unrouted.
    let tap = Tap::bind(&app.exchange, "#").await;
    // Minute 0: two accepted and one forged; minute 2: one accepted.
    for _ in 0..2 {
        let (_, body) = contact_event("loc-series");
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    post_forged(&app, 1, "loc-series").await;
    // Counts go to the minute they are taken in: take them before the clock moves.
    health(&app).await;
    clock.advance(MINUTE * 2);
    let (_, body) = contact_event("loc-series");
    assert_eq!(app.post_signed(&body).await.status(), 200);

    let s = series(&app, "span=4m&step=1m").await;
    assert_eq!(s["step_seconds"], 60);
    assert_eq!(s["since"], hlgate::health::rfc3339(T0 - 60_000));
    assert_eq!(s["until"], hlgate::health::rfc3339(T0 + 3 * 60_000));
    let points = s["points"].as_array().unwrap();
    let counts: Vec<_> = points
        .iter()
        .map(|p| (p["attempts"].clone(), p["succeeded"].clone()))
        .collect();
    assert_eq!(
        counts,
        [
            (json!(0), json!(0)),
            (json!(3), json!(2)),
            (json!(0), json!(0)),
            (json!(1), json!(1))
        ]
    );
    assert_eq!(
        points[1]["outcomes"],
        json!({"accepted": 2, "invalid_signature": 1})
    );
    assert_eq!(points[1]["success_ratio"], json!(2.0 / 3.0));
    assert_eq!(points[1]["at"], hlgate::health::rfc3339(T0));
    assert_eq!(points[0]["success_ratio"], Value::Null);
    assert_eq!(points[0]["outcomes"], json!({}));

    // Two-minute steps sum their minutes; the default is 72 hourly steps.
    let s = series(&app, "span=4m&step=2m").await;
    let attempts: Vec<_> = s["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attempts"].clone())
        .collect();
    assert_eq!(attempts, [json!(3), json!(1)]);
    let s = series(&app, "").await;
    assert_eq!(s["step_seconds"], 3600);
    let points = s["points"].as_array().unwrap();
    assert_eq!(points.len(), 72);
    assert_eq!(points[71]["attempts"], 4);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn health_counts_tenants_by_every_token_state() {
    let app = spawn_app().await;
    let h = health(&app).await;
    assert_eq!(
        h["tenants"]["by_state"],
        json!({"active": 0, "inactive": 0, "needs_reauth": 0, "private": 0})
    );

    let dir = tempfile::tempdir().unwrap();
    let seeded = crate::tenant_pages::seed(dir.path(), 9);
    let exchange = unique("test.series");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let env = base_env(dir.path(), &exchange, &ed, &rsa);
    let app = start(dir, exchange, ed, rsa, env).await;
    let mut want = json!({"active": 0, "inactive": 0, "needs_reauth": 0, "private": 0});
    for state in seeded.values() {
        want[*state] = json!(want[*state].as_u64().unwrap() + 1);
    }
    let h = health(&app).await;
    assert_eq!(h["tenants"]["by_state"], want, "{h}");
    assert_eq!(h["tenants"]["needs_reauth"], want["needs_reauth"]);
}

#[tokio::test]
async fn series_asks_for_the_admin_token_and_refuses_parameters_by_name() {
    let app = spawn_app_with(&[("HLGATE_ADMIN_TOKEN", "admin-s3cret")]).await;
    let anonymous = app.http.get(app.admin_url("/v1/health/series")).send();
    let (status, body) = json(anonymous.await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    for (query, named) in [
        ("span=0m", "span"),
        ("span=90s", "span"),
        ("span=soon", "span"),
        ("step=", "step"),
        ("step=1500ms", "step"),
        ("span=6d", "span must be at most 5d"),
        ("span=10m&step=3m", "step must divide span"),
        ("span=5d&step=1m", "more than 4320 steps"),
        ("window=1h", "\"window\""),
    ] {
        let r = app.admin_get(&format!("/v1/health/series?{query}")).await;
        let (status, body) = json(r).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{query}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{query}: {message}");
    }
}
