//! The token module against a HighLevel stand-in: install flow, refresh, recovery, lifecycle
//! events, attachment, and secrets kept secret.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;
use crate::highlevel::{StandIn, CLIENT_SECRET};

async fn app_with(standin: &StandIn, extra: &[(&str, &str)]) -> TestApp {
    let settings = standin.settings();
    let mut all: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    spawn_app_with(&all).await
}

async fn callback(app: &TestApp, query: &str) -> (u16, String) {
    let (status, _, _, page) = callback_answer(app, query.to_string()).await;
    (status, page)
}

async fn install(app: &TestApp, standin: &StandIn, tenant: &str, user_type: &str) {
    let code = standin.code_for(tenant, user_type);
    let (status, page) = callback(app, &format!("code={code}&user_type={user_type}")).await;
    assert_eq!(status, 200, "{page}");
}

async fn get_token(app: &TestApp, tenant: &str) -> (u16, Value) {
    let r = app.admin_get(&format!("/v1/tokens/{tenant}")).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn tenants(app: &TestApp) -> Value {
    app.admin_get("/v1/tenants").await.json().await.unwrap()
}

async fn tenant_state(app: &TestApp, tenant: &str) -> Option<String> {
    tenants(app).await["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == tenant)
        .map(|t| t["state"].as_str().unwrap().to_string())
}

/// Polls until `check` holds (for work the app does in the background).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn install_flow_redirects_exchanges_and_stores() {
    let standin = StandIn::start().await;
    let app = app_with(&standin, &[]).await;

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(app.url("/oauth/install"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        "https://marketplace.example.com/v2/oauth/chooselocation?response_type=code\
         &client_id=68a32958b5154ca8bbdc4d40-meh5chaj\
         &redirect_uri=https%3A%2F%2Fgw.example.com%2Foauth%2Fcallback\
         &scope=contacts.readonly%20locations.readonly"
    );

    let code = standin.code_for("locInstall", "Location");
    let (status, page) = callback(&app, &format!("code={code}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("Location locInstall is connected"), "{page}");
    // A code works once.
    let (status, page) = callback(&app, &format!("code={code}")).await;
    assert_eq!(status, 400);
    assert!(page.contains("Invalid grant"), "{page}");
    let (status, page) = callback(&app, "error=access_denied").await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied"));

    let (status, token) = get_token(&app, "locInstall").await;
    assert_eq!(status, 200);
    assert_eq!(token["tenant"], "locInstall");
    assert_eq!(token["user_type"], "Location");
    assert_eq!(token["scope"], "contacts.readonly");
    assert!(token["access_token"]
        .as_str()
        .unwrap()
        .starts_with("eyJ.at-"));
    assert!(token["expires_at"].as_str().is_some());
    assert_eq!(
        tenant_state(&app, "locInstall").await.as_deref(),
        Some("active")
    );
    let listing = tenants(&app).await.to_string();
    assert!(!listing.contains("eyJ"), "tokens in /v1/tenants: {listing}");
    let (status, v) = get_token(&app, "nobody").await;
    assert_eq!((status, v["error"].as_str()), (404, Some("not_found")));
    assert_eq!(standin.with(|s| s.refresh_calls), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_callback_codes_cannot_spend_more_than_the_apps_budget() {
    let standin = StandIn::start().await;
    let app = app_with(&standin, &[]).await;
    // 150 callbacks at once, far less time than the budget's 10 s window takes on any machine:
    // HighLevel may see at most 100 exchanges (100 per 10 s per app).
    let attempts = (0..150).map(|i| callback_answer(&app, format!("code=made-up-{i}")));
    let answers = futures_util::future::join_all(attempts).await;
    let exchanges = standin.with(|s| s.code_calls);
    assert!(exchanges <= 100, "{exchanges} code exchanges at HighLevel");
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert!(!refused.is_empty(), "no callback was refused");
    // Each refused one was answered without calling HighLevel; the others were exchanged.
    let failed = answers.iter().filter(|a| a.0 == 400).count();
    assert_eq!((failed, failed + refused.len()), (exchanges, 150));
    for (_, retry_after, content_type, page) in refused {
        let seconds: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=10).contains(&seconds), "Retry-After: {seconds}");
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(
            page.contains("Too many installs") && page.contains(&format!("in {seconds} seconds")),
            "{page}"
        );
    }
    assert!(tenants(&app).await["tenants"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// A callback's status, `Retry-After`, content type and page.
async fn callback_answer(app: &TestApp, query: String) -> (u16, Option<String>, String, String) {
    let r = app
        .http
        .get(app.url(&format!("/oauth/callback?{query}")))
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (retry_after, content_type) = (header("retry-after"), header("content-type"));
    let status = r.status().as_u16();
    (
        status,
        retry_after,
        content_type.unwrap_or_default(),
        r.text().await.unwrap(),
    )
}

#[tokio::test]
async fn camel_case_token_answers_are_understood() {
    let standin = StandIn::start().await;
    standin.with(|s| s.camel_case = true);
    let app = app_with(&standin, &[]).await;
    install(&app, &standin, "camelLoc", "Location").await;
    let (status, token) = get_token(&app, "camelLoc").await;
    assert_eq!(status, 200);
    assert!(token["access_token"].as_str().unwrap().contains("camelLoc"));
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 1800); // inside the 1 h refresh window
    let app = app_with(&standin, &[("HLGATE_TOKEN_REFRESH_BEFORE", "1h")]).await;
    install(&app, &standin, "locRefresh", "Location").await;
    standin.with(|s| s.expires_in = 86_399);
    eventually("a background refresh", || async {
        standin.with(|s| s.refresh_calls) >= 1
    })
    .await;
    // The first pair's refresh token was spent, a new one stored; no more refreshes are due.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(standin.with(|s| s.refresh_calls), 1);
    let (_, token) = get_token(&app, "locRefresh").await;
    assert_eq!(standin.with(|s| s.issued.len()), 4, "two pairs issued");
    assert_eq!(token["access_token"], latest_access(&standin));
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_token_refresh_total{result=\"ok\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_cause_one_refresh() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600); // less than the 15 min every served token must have
    let app = app_with(
        &standin,
        &[
            ("HLGATE_TOKEN_REFRESH_BEFORE", "1m"),
            ("HLGATE_TOKEN_MIN_TTL", "15m"),
        ],
    )
    .await;
    install(&app, &standin, "locBusy", "Location").await;
    standin.with(|s| s.expires_in = 86_399);
    let requests = (0..50).map(|_| get_token(&app, "locBusy"));
    let answers = futures_util::future::join_all(requests).await;
    let first = &answers[0].1["access_token"];
    for (status, token) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(&token["access_token"], first);
    }
    assert_eq!(standin.with(|s| s.refresh_calls), 1);
    let expires = time::OffsetDateTime::parse(
        answers[0].1["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires > time::OffsetDateTime::now_utc() + time::Duration::minutes(15));
}

#[tokio::test]
async fn invalid_grant_is_recovered_through_reconnect() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let app = app_with(&standin, &[("HLGATE_TOKEN_REFRESH_BEFORE", "1m")]).await;
    install(&app, &standin, "locLost", "Location").await;
    standin.lose_refresh_tokens("locLost");
    standin.with(|s| s.expires_in = 86_399);
    let (status, token) = get_token(&app, "locLost").await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(standin.with(|s| s.reconnect_calls), 1);
    assert_eq!(
        tenant_state(&app, "locLost").await.as_deref(),
        Some("active")
    );
    // The recovered pair refreshes normally again.
    let (status, again) = get_token(&app, "locLost").await;
    assert_eq!(status, 200);
    assert_eq!(again["access_token"], token["access_token"]);
    let m = app.metrics_text().await;
    assert_eq!(
        metric(&m, "hlgate_token_refresh_total{result=\"reconnected\"}"),
        1.0
    );
}

#[tokio::test]
async fn unrecoverable_tenants_are_reported_needs_reauth() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let app = app_with(&standin, &[("HLGATE_TOKEN_REFRESH_BEFORE", "1m")]).await;
    install(&app, &standin, "locGone", "Location").await;
    standin.lose_refresh_tokens("locGone");
    standin.with(|s| s.reconnect_fails = true);
    let (status, v) = get_token(&app, "locGone").await;
    assert_eq!((status, v["error"].as_str()), (409, Some("needs_reauth")));
    let listing = tenants(&app).await;
    let t = &listing["tenants"][0];
    assert_eq!(t["state"], "needs_reauth");
    assert!(t["last_error"]
        .as_str()
        .unwrap()
        .contains("reconnect failed"));
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_tenants{state=\"needs_reauth\"}"), 1.0);
    assert_eq!(
        metric(&m, "hlgate_token_refresh_total{result=\"needs_reauth\"}"),
        1.0
    );
    // It stays reported, and no further calls are spent on it.
    let calls = standin.with(|s| (s.refresh_calls, s.reconnect_calls));
    let (status, _) = get_token(&app, "locGone").await;
    assert_eq!(status, 409);
    assert_eq!(
        standin.with(|s| (s.refresh_calls, s.reconnect_calls)),
        calls
    );
}

#[tokio::test]
async fn a_removed_reconnect_api_is_asked_once_and_tenants_go_needs_reauth_saying_why() {
    let standin = StandIn::start().await;
    standin.with(|s| {
        s.expires_in = 600; // shorter than the 15 min a served token must have: GET refreshes
        s.reconnect_removed = true;
    });
    let dir = tempfile::tempdir().unwrap();
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &unique("test.reconnect"), &ed, &rsa);
    env.extend(
        standin
            .settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    env.insert("HLGATE_LOG".into(), "debug".into());
    env.insert("HLGATE_TOKEN_REFRESH_BEFORE".into(), "1m".into());
    let mut process = spawn_process(&env, Stdio::piped());
    process.wait_ready().await;
    let http = reqwest::Client::new();
    let get = |url: String| http.get(url).send();
    for tenant in ["locRemovedA", "locRemovedB"] {
        let code = standin.code_for(tenant, "Location");
        let url = format!("http://{}/oauth/callback?code={code}", process.public);
        assert_eq!(get(url).await.unwrap().status(), 200);
        standin.lose_refresh_tokens(tenant);
    }

    // Both refresh tokens are refused; only the first tenant's recovery asks the Reconnect API.
    for tenant in ["locRemovedA", "locRemovedB"] {
        let r = get(format!("http://{}/v1/tokens/{tenant}", process.admin))
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "needs_reauth");
    }
    assert_eq!(
        standin.with(|s| (s.refresh_calls, s.reconnect_calls)),
        (2, 1)
    );
    let listing: Value = get(format!("http://{}/v1/tenants", process.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listing["tenants"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for t in listed {
        assert_eq!(t["state"], "needs_reauth", "{t}");
        let why = t["last_error"].as_str().unwrap();
        assert!(
            why.contains("reconnect is unavailable at HighLevel"),
            "{why}"
        );
    }
    let metrics = get(format!("http://{}/metrics", process.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "hlgate_tenants{state=\"needs_reauth\"}"),
        2.0
    );

    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut process.child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("removed the Reconnect API"), "{logs}");
    let mut secrets = standin.with(|s| s.issued.clone());
    assert_eq!(secrets.len(), 4);
    secrets.push(CLIENT_SECRET.to_string());
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "{secret} in the logs");
        assert!(
            !metrics.contains(secret.as_str()),
            "{secret} in the metrics"
        );
        assert!(
            !listing.to_string().contains(secret.as_str()),
            "{secret} listed"
        );
    }
}

#[tokio::test]
async fn highlevel_outages_are_retried_with_backoff_and_nothing_is_lost() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let app = app_with(&standin, &[("HLGATE_TOKEN_REFRESH_BEFORE", "1m")]).await;
    install(&app, &standin, "locOutage", "Location").await;
    let before = latest_access(&standin);
    standin.with(|s| s.outage = Some(502));
    let (status, v) = get_token(&app, "locOutage").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (503, Some("token_unavailable"))
    );
    // Still active, with the failure on record; the refresh token was not spent.
    let listing = tenants(&app).await;
    assert_eq!(listing["tenants"][0]["state"], "active");
    assert!(listing["tenants"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("502"));
    // Inside the backoff no new call is made.
    let calls = standin.with(|s| s.refresh_calls);
    let (status, _) = get_token(&app, "locOutage").await;
    assert_eq!(status, 503);
    assert_eq!(standin.with(|s| s.refresh_calls), calls);
    // HighLevel is back: after the backoff the same refresh token works.
    standin.with(|s| {
        s.outage = None;
        s.expires_in = 86_399;
    });
    eventually("a successful refresh after the outage", || async {
        get_token(&app, "locOutage").await.0 == 200
    })
    .await;
    let (_, token) = get_token(&app, "locOutage").await;
    assert_ne!(token["access_token"], before.as_str());
    assert_eq!(standin.with(|s| s.reconnect_calls), 0);
    let m = app.metrics_text().await;
    assert!(metric(&m, "hlgate_token_refresh_total{result=\"error\"}") >= 1.0);
}

#[tokio::test]
async fn inactive_locations_keep_their_refresh_token_and_come_back() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let app = app_with(&standin, &[("HLGATE_TOKEN_REFRESH_BEFORE", "1h")]).await;
    standin.set_inactive("locPaused", true);
    install(&app, &standin, "locPaused", "Location").await;
    eventually("the tenant marked inactive", || async {
        tenant_state(&app, "locPaused").await.as_deref() == Some("inactive")
    })
    .await;
    let (status, v) = get_token(&app, "locPaused").await;
    assert_eq!((status, v["error"].as_str()), (409, Some("inactive")));
    standin.with(|s| s.expires_in = 86_399);
    standin.set_inactive("locPaused", false);
    eventually("the tenant active again", || async {
        tenant_state(&app, "locPaused").await.as_deref() == Some("active")
    })
    .await;
    // The very refresh token that was refused is the one that worked.
    let seen = standin.with(|s| s.refresh_tokens_seen.clone());
    assert!(seen.len() >= 2);
    assert!(seen.iter().all(|t| t == &seen[0]), "{seen:?}");
    assert_eq!(standin.with(|s| s.reconnect_calls), 0);
}

/// The access token the stand-in issued last.
fn latest_access(standin: &StandIn) -> String {
    standin.with(|s| s.issued[s.issued.len() - 2].clone())
}

async fn post_event(app: &TestApp, body: Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(app.post_signed(&bytes).await.status(), 200);
}

#[tokio::test]
async fn install_events_mint_location_tokens_even_when_they_race_the_exchange() {
    let standin = StandIn::start().await;
    let app = app_with(&standin, &[]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    install(&app, &standin, "agencyA", "Company").await;

    post_event(&app, json!({"type": "INSTALL", "appId": "a", "locationId": "locA", "companyId": "agencyA", "webhookId": unique("wh")})).await;
    eventually("a location token for locA", || async {
        tenant_state(&app, "locA").await.is_some()
    })
    .await;
    let versions = standin.with(|s| s.location_token_calls.clone());
    assert_eq!(versions, vec![Some("2021-07-28".to_string())]);
    let (status, token) = get_token(&app, "locA").await;
    assert_eq!(status, 200);
    assert_eq!(token["user_type"], "Location");

    // The INSTALL arrives before the agency's code exchange.
    post_event(&app, json!({"type": "INSTALL", "appId": "a", "locationId": "locB", "companyId": "agencyB", "webhookId": unique("wh")})).await;
    eventually("locB waiting for its agency", || async {
        tenants(&app).await["pending_installs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["location_id"] == "locB")
    })
    .await;
    assert_eq!(tenant_state(&app, "locB").await, None);
    install(&app, &standin, "agencyB", "Company").await;
    eventually("a location token for locB", || async {
        tenant_state(&app, "locB").await.is_some()
    })
    .await;
    eventually("no INSTALL left waiting", || async {
        tenants(&app).await["pending_installs"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    // Both INSTALL events were published like any other.
    let keys: Vec<String> = routing_keys(&tap.take(2).await);
    assert_eq!(keys, ["INSTALL.locA", "INSTALL.locB"]);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn uninstall_deletes_the_tenants_tokens_after_publishing() {
    let standin = StandIn::start().await;
    let app = app_with(&standin, &[]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    install(&app, &standin, "locBye", "Location").await;
    install(&app, &standin, "locStay", "Location").await;
    post_event(&app, json!({"type": "UNINSTALL", "appId": "a", "locationId": "locBye", "webhookId": unique("wh")})).await;
    let d = tap.take(1).await;
    assert_eq!(d[0].routing_key.as_str(), "UNINSTALL.locBye");
    eventually("locBye's tokens deleted", || async {
        tenant_state(&app, "locBye").await.is_none()
    })
    .await;
    let (status, _) = get_token(&app, "locBye").await;
    assert_eq!(status, 404);
    assert_eq!(get_token(&app, "locStay").await.0, 200);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn published_events_carry_a_fresh_token_or_say_why_not() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let app = app_with(
        &standin,
        &[
            ("HLGATE_ATTACH_TOKENS", "true"),
            ("HLGATE_TOKEN_REFRESH_BEFORE", "1m"),
            ("HLGATE_TOKEN_MIN_TTL", "15m"),
        ],
    )
    .await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    install(&app, &standin, "locAttach", "Location").await;
    standin.with(|s| s.expires_in = 86_399);
    post_event(
        &app,
        json!({"type": "ContactCreate", "locationId": "locAttach", "webhookId": unique("wh")}),
    )
    .await;
    post_event(
        &app,
        json!({"type": "ContactCreate", "locationId": "locNobody", "webhookId": unique("wh")}),
    )
    .await;
    let d = tap.take(2).await;
    // The 600 s token was too short for the 15 min minimum: a refreshed one is attached.
    let attached = header(&d[0], "x-hl-access-token").expect("token attached");
    assert_eq!(standin.with(|s| s.refresh_calls), 1);
    assert_eq!(attached, latest_access(&standin));
    let expires = time::OffsetDateTime::parse(
        &header(&d[0], "x-hl-token-expires-at").unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires >= time::OffsetDateTime::now_utc() + time::Duration::minutes(15));
    assert_eq!(header(&d[0], "x-hl-token-error"), None);
    assert_eq!(header(&d[1], "x-hl-access-token"), None);
    assert_eq!(
        header(&d[1], "x-hl-token-error").as_deref(),
        Some("no_token")
    );
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn private_integration_tokens_are_served_and_never_refreshed() {
    // No app credentials at all: private tokens work without the OAuth flow. The vault key is
    // the configured one, so none is generated into the data dir.
    let app = spawn_app_with(&[
        ("HLGATE_ATTACH_TOKENS", "true"),
        (
            "HLGATE_TOKEN_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ])
    .await;
    assert!(!app._dir.path().join("token.key").exists());
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let put = |body: Value| {
        app.http
            .put(app.admin_url("/v1/tenants/locPit/private-token"))
            .json(&body)
            .send()
    };
    assert_eq!(
        put(json!({"token": "pit-1234-secret"}))
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(put(json!({"nope": 1})).await.unwrap().status(), 400);
    assert_eq!(put(json!({"token": " "})).await.unwrap().status(), 400);
    let (status, token) = get_token(&app, "locPit").await;
    assert_eq!(status, 200);
    assert_eq!(token["access_token"], "pit-1234-secret");
    assert_eq!(token["expires_at"], Value::Null);
    assert_eq!(
        tenant_state(&app, "locPit").await.as_deref(),
        Some("private")
    );
    post_event(
        &app,
        json!({"type": "NoteCreate", "locationId": "locPit", "webhookId": unique("wh")}),
    )
    .await;
    let d = tap.take(1).await;
    assert_eq!(
        header(&d[0], "x-hl-access-token").as_deref(),
        Some("pit-1234-secret")
    );
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_tenants{state=\"private\"}"), 1.0);
    // Without credentials the install flow is off, clearly.
    let r = app
        .http
        .get(app.url("/oauth/install"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    tap.cleanup(&app.exchange).await;
}

/// Reads every file under `dir`.
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_token_or_secret_in_the_data_dir_or_the_logs() {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let dir = tempfile::tempdir().unwrap();
    let exchange = unique("test.secrets");
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &exchange, &ed, &rsa);
    for (k, v) in standin.settings() {
        env.insert(k.into(), v);
    }
    env.insert("HLGATE_LOG".into(), "debug".into());
    env.insert("HLGATE_TOKEN_REFRESH_BEFORE".into(), "1m".into());
    env.insert("HLGATE_ADMIN_TOKEN".into(), "adm-s3cret-token".into());
    let mut process = spawn_process(&env, Stdio::piped());
    process.wait_ready().await;
    let http = reqwest::Client::new();
    let admin = |path: String| {
        http.get(format!("http://{}{path}", process.admin))
            .bearer_auth("adm-s3cret-token")
            .send()
    };

    // An install, a refresh (min TTL), a lost refresh token recovered by reconnect, a private token.
    let code = standin.code_for("locSecret", "Location");
    let r = http
        .get(format!(
            "http://{}/oauth/callback?code={code}",
            process.public
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    standin.with(|s| s.expires_in = 86_399);
    assert_eq!(
        admin("/v1/tokens/locSecret".into()).await.unwrap().status(),
        200
    );
    standin.with(|s| s.expires_in = 600);
    let code = standin.code_for("locSecret2", "Location");
    http.get(format!(
        "http://{}/oauth/callback?code={code}",
        process.public
    ))
    .send()
    .await
    .unwrap();
    standin.lose_refresh_tokens("locSecret2");
    assert_eq!(
        admin("/v1/tokens/locSecret2".into())
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .put(format!(
            "http://{}/v1/tenants/locPit/private-token",
            process.admin
        ))
        .bearer_auth("adm-s3cret-token")
        .json(&json!({"token": "pit-s3cret-value"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let listing = admin("/v1/tenants".into())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("locSecret2"));

    // `hlgate tenants` shows them, without tokens.
    let mut cli_env: Vec<(String, String)> = env.clone().into_iter().collect();
    cli_env.push(("HLGATE_ADMIN_LISTEN".into(), process.admin.to_string()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hlgate"))
        .arg("tenants")
        .env_clear()
        .envs(cli_env)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        printed.contains("locSecret") && printed.contains("private"),
        "{printed}"
    );

    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut process.child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(
        logs.contains("tokens recovered through the Reconnect API"),
        "{logs}"
    );

    let mut secrets = standin.with(|s| s.issued.clone());
    assert!(secrets.len() >= 6);
    secrets.extend([
        "pit-s3cret-value".to_string(),
        CLIENT_SECRET.to_string(),
        "adm-s3cret-token".to_string(),
    ]);
    let files = all_bytes(&dir.path().join("data"));
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "{secret} in the logs");
        assert!(
            !printed.contains(secret.as_str()),
            "{secret} printed by hlgate tenants"
        );
        assert!(
            !listing.contains(secret.as_str()),
            "{secret} in /v1/tenants"
        );
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{secret} in plain text in {path}"
            );
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("data/token.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
