//! The token module against a HighLevel stand-in: install flow, refresh, recovery and
//! backoff. Lifecycle events, attachment, shutdown and secrets are in `token_events`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;
use crate::highlevel::{StandIn, CLIENT_SECRET};

/// Env for the binary pointed at `standin`, in a new temp dir.
pub(crate) fn process_env_with(
    standin: &StandIn,
    exchange: &str,
) -> (tempfile::TempDir, std::collections::HashMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let (ed, rsa) = (Signer::ed25519(), Signer::rsa());
    let mut env = process_env(dir.path(), &unique(exchange), &ed, &rsa);
    env.extend(
        standin
            .settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    (dir, env)
}

pub(crate) async fn app_with(standin: &StandIn, extra: &[(&str, &str)]) -> TestApp {
    let settings = standin.settings();
    let mut all: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    spawn_app_with(&all).await
}

async fn callback(app: &TestApp, query: &str) -> (u16, String) {
    let (status, _, _, page) = callback_answer(app, query.to_string()).await;
    (status, page)
}

pub(crate) async fn install(app: &TestApp, standin: &StandIn, tenant: &str, user_type: &str) {
    let code = standin.code_for(tenant, user_type);
    let (status, page) = callback(app, &format!("code={code}&user_type={user_type}")).await;
    assert_eq!(status, 200, "{page}");
}

pub(crate) async fn get_token(app: &TestApp, tenant: &str) -> (u16, Value) {
    let r = app.admin_get(&format!("/v1/tokens/{tenant}")).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

pub(crate) async fn tenants(app: &TestApp) -> Value {
    app.admin_get("/v1/tenants").await.json().await.unwrap()
}

pub(crate) async fn tenant_state(app: &TestApp, tenant: &str) -> Option<String> {
    tenants(app).await["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == tenant)
        .map(|t| t["state"].as_str().unwrap().to_string())
}

/// Polls until `check` holds (for work the app does in the background).
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
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
    let (_dir, mut env) = process_env_with(&standin, "test.reconnect");
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
    // The first retry waits until the whole second after the failure: begin at the start of a
    // second, so that the second call below falls inside that wait however slow the machine.
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    tokio::time::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(unix().subsec_nanos()),
    ))
    .await;
    let began = unix().as_secs();
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
    if unix().as_secs() == began {
        assert_eq!(standin.with(|s| s.refresh_calls), calls);
    } else {
        eprintln!("the calls took over a second: the backoff may have passed, not checked");
    }
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
pub(crate) fn latest_access(standin: &StandIn) -> String {
    standin.with(|s| s.issued[s.issued.len() - 2].clone())
}
