//! The HighLevel API proxy against the API stand-in: tokens, the rate governor, retries,
//! streaming and every error answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::helpers::*;
use crate::highlevel::StandIn;
use crate::tokens::{app_with, install};

pub(crate) fn proxied(app: &TestApp, tenant: &str, path: &str) -> String {
    app.admin_url(&format!("/v1/highlevel/{tenant}{path}"))
}

pub(crate) async fn get(app: &TestApp, tenant: &str, path: &str) -> reqwest::Response {
    app.http
        .get(proxied(app, tenant, path))
        .send()
        .await
        .unwrap()
}

pub(crate) async fn installed(extra: &[(&str, &str)], tenants: &[&str]) -> (StandIn, TestApp) {
    let standin = StandIn::start().await;
    let mut all = vec![("HLGATE_API_BASE_URL", standin.url.as_str())];
    all.extend_from_slice(extra);
    let app = app_with(&standin, &all).await;
    for tenant in tenants {
        install(&app, &standin, tenant, "Location").await;
    }
    (standin, app)
}

/// Tenants whose every token expires sooner than `HLGATE_TOKEN_MIN_TTL` wants, left alone by
/// the background schedule: only the proxy's need refreshes them.
pub(crate) async fn expiring(tenants: &[&str]) -> (StandIn, TestApp) {
    let standin = StandIn::start().await;
    standin.with(|s| s.expires_in = 600);
    let base = [
        ("HLGATE_API_BASE_URL", standin.url.as_str()),
        ("HLGATE_TOKEN_REFRESH_BEFORE", "1m"),
    ];
    let app = app_with(&standin, &base).await;
    for tenant in tenants {
        install(&app, &standin, tenant, "Location").await;
    }
    (standin, app)
}

#[tokio::test]
async fn a_request_goes_out_with_the_tenants_token_and_version_and_comes_back() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    let r = app
        .http
        .get(proxied(&app, "loc-a", "/contacts/c1?fields=name"))
        .header("Cookie", "session=caller")
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-max"], "100");
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["contact"]["id"], "c1");
    assert_eq!(body["version"], "2021-07-28");
    assert_eq!(body["query"], "fields=name");
    let names = body["headers"].as_array().unwrap();
    assert!(!names.iter().any(|n| n == "cookie"), "{names:?}");
    // The caller's own Version wins.
    let r = app
        .http
        .get(proxied(&app, "loc-a", "/contacts/c2"))
        .header("Version", "2099-01-01")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], "2099-01-01");
    // No token in the answer, the tenants view or the metrics.
    let tenants = app.admin_get("/v1/tenants").await.text().await.unwrap();
    let metrics = app.metrics_text().await;
    let issued = standin.with(|s| s.issued.clone());
    for token in &issued {
        for (what, seen) in [
            ("answer", &text),
            ("tenants", &tenants),
            ("metrics", &metrics),
        ] {
            assert!(!seen.contains(token.as_str()), "a token in the {what}");
        }
    }
    assert!(metric(&metrics, "hlgate_api_requests_total{outcome=\"ok\"}") >= 2.0);
    let view: Value = serde_json::from_str(&tenants).unwrap();
    let rate = &view["tenants"][0]["rate"];
    assert_eq!(rate["remaining"], 98, "{rate}");
    assert!(rate["daily_remaining"].as_u64().unwrap() > 0);
    assert!(rate["reset_at"].is_string());
}

#[tokio::test]
async fn a_burst_is_held_to_the_limit_and_another_tenant_does_not_wait() {
    let (standin, app) = installed(&[("HLGATE_API_MAX_WAIT", "120s")], &["loc-a", "loc-b"]).await;
    let app = Arc::new(app);
    let done_a = Arc::new(AtomicUsize::new(0));
    let mut burst = Vec::new();
    for i in 0..300 {
        let (app, done_a) = (app.clone(), done_a.clone());
        burst.push(tokio::spawn(async move {
            let status = get(&app, "loc-a", &format!("/contacts/a{i}"))
                .await
                .status();
            done_a.fetch_add(1, Ordering::SeqCst);
            status.as_u16()
        }));
    }
    // Once the first window is spent, loc-b's requests go through at once.
    eventually_calls(&standin, 100).await;
    for i in 0..10 {
        let r = get(&app, "loc-b", &format!("/contacts/b{i}")).await;
        assert_eq!(r.status(), 200);
    }
    assert!(
        done_a.load(Ordering::SeqCst) < 300,
        "loc-b waited for loc-a's queue to drain"
    );
    for task in burst {
        assert_eq!(task.await.unwrap(), 200);
    }
    let (max, limited) = standin.with(|s| (s.api.max_in_window, s.api.limited));
    assert!(
        max <= 100,
        "{max} requests of one token within one interval"
    );
    assert_eq!(limited, 0, "the stand-in answered 429");
}

async fn eventually_calls(standin: &StandIn, n: usize) {
    for _ in 0..200 {
        let calls: usize = standin.with(|s| s.api.calls.values().sum());
        if calls >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the stand-in never saw {n} requests");
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_first_and_a_revoked_one_after_its_401() {
    let (standin, app) = expiring(&["loc-a"]).await;
    let before = standin.with(|s| s.refresh_calls);
    assert_eq!(get(&app, "loc-a", "/contacts/c1").await.status(), 200);
    assert_eq!(standin.with(|s| s.refresh_calls), before + 1);

    let (standin, app) = installed(&[], &["loc-b"]).await;
    standin.revoke("loc-b");
    let r = get(&app, "loc-b", "/contacts/c1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(standin.with(|s| s.refresh_calls), 1);
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            "hlgate_api_requests_total{outcome=\"refreshed_401\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn concurrent_401s_cause_one_refresh() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    let app = Arc::new(app);
    standin.revoke("loc-a");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(
                async move { get(&app, "loc-a", &format!("/contacts/{i}")).await.status() },
            )
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(standin.with(|s| s.refresh_calls), 1);
}

#[tokio::test]
async fn upstream_failures_are_retried_once_and_never_for_post() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    standin.with(|s| s.api.failures.extend([503, 200]));
    assert_eq!(get(&app, "loc-a", "/fail").await.status(), 200);
    assert_eq!(standin.with(|s| s.api.calls("/fail")), 2);

    standin.with(|s| s.api.failures.extend([503, 502]));
    let (status, body) = json(get(&app, "loc-a", "/fail").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_unavailable"))
    );
    assert_eq!(standin.with(|s| s.api.calls("/fail")), 4);

    standin.with(|s| s.api.failures.extend([503]));
    let r = app
        .http
        .post(proxied(&app, "loc-a", "/fail"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_unavailable"))
    );
    assert_eq!(
        standin.with(|s| s.api.calls("/fail")),
        5,
        "POST was retried"
    );
}

#[tokio::test]
async fn head_goes_out_as_head_and_is_retried_once_like_get() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    let head = |path: &str| app.http.head(proxied(&app, "loc-a", path)).send();
    let r = head("/contacts/c1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap().is_empty(),
        "a HEAD answer has no body"
    );
    assert_eq!(standin.with(|s| s.api.calls("/contacts/c1")), 1);
    assert_eq!(standin.with(|s| s.api.methods.clone()), ["HEAD"]);

    standin.with(|s| s.api.failures.extend([503, 200]));
    assert_eq!(head("/fail").await.unwrap().status(), 200);
    assert_eq!(
        standin.with(|s| s.api.calls("/fail")),
        2,
        "HEAD is retried once"
    );
}

#[tokio::test]
async fn a_large_body_streams_both_ways() {
    let (_standin, app) = installed(&[], &["loc-a"]).await;
    let body: Vec<u8> = (0..5 << 20).map(|i| (i % 251) as u8).collect();
    let r = app
        .http
        .post(proxied(&app, "loc-a", "/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn refusals_answer_json_with_their_code() {
    let (standin, app) = installed(
        &[
            ("HLGATE_API_MAX_BODY_BYTES", "1000"),
            ("HLGATE_API_MAX_WAIT", "0s"),
        ],
        &["loc-a"],
    )
    .await;
    let (status, body) = json(get(&app, "nobody", "/contacts/c1").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_tenant"))
    );

    let r = app
        .http
        .post(proxied(&app, "loc-a", "/echo"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(standin.with(|s| s.api.calls("/echo")), 0);
    let counted = metric(
        &app.metrics_text().await,
        r#"hlgate_api_requests_total{outcome="client_error"}"#,
    );
    assert_eq!(counted, 1.0, "a body refused by its length is counted");

    // A budget of two per window: the third request is refused without calling HighLevel.
    standin.with(|s| s.api.burst = 2);
    for _ in 0..2 {
        assert_eq!(get(&app, "loc-a", "/contacts/c1").await.status(), 200);
    }
    let r = get(&app, "loc-a", "/contacts/c1").await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(
        standin.with(|s| (s.api.calls("/contacts/c1"), s.api.limited)),
        (2, 0)
    );
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            "hlgate_api_requests_total{outcome=\"rate_limited\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_path_without_a_tenant_is_answered_404_and_reaches_nothing() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    // An empty tenant segment matches no route: the admin listener's JSON 404.
    let cases = [
        ("/v1/highlevel/", "not_found"),
        ("/v1/highlevel//contacts/c1", "not_found"),
        ("/v1/highlevel/%20/contacts/c1", "unknown_tenant"),
    ];
    for (path, code) in cases {
        let r = app.http.get(app.admin_url(path)).send().await.unwrap();
        let (status, body) = json(r).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some(code)),
            "{path}"
        );
    }
    assert_eq!(
        standin.with(|s| s.api.methods.len()),
        0,
        "HighLevel was called"
    );
}

#[tokio::test]
async fn tenants_whose_tokens_cannot_be_had_are_answered_409_or_503() {
    let (standin, app) = expiring(&["loc-gone", "loc-off", "loc-down"]).await;
    standin.set_inactive("loc-off", true);
    let (status, body) = json(get(&app, "loc-off", "/contacts/c1").await).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("inactive")));

    standin.lose_refresh_tokens("loc-gone");
    standin.with(|s| s.reconnect_fails = true);
    let (status, body) = json(get(&app, "loc-gone", "/contacts/c1").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("needs_reauth"))
    );

    standin.with(|s| s.outage = Some(503));
    let (status, body) = json(get(&app, "loc-down", "/contacts/c1").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("token_unavailable"))
    );
    assert_eq!(standin.with(|s| s.api.calls("/contacts/c1")), 0);
}

#[tokio::test]
async fn only_the_admin_token_and_proxy_tokens_open_the_proxy() {
    let extra = [
        ("HLGATE_ADMIN_TOKEN", "admin-t0ken"),
        ("HLGATE_PROXY_TOKENS", "proxy-one, proxy-two"),
    ];
    let (_standin, app) = installed(&extra, &["loc-a"]).await;
    let call_at = |url: String, token: Option<&'static str>| {
        let mut r = app.http.get(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap() }
    };
    let call = |token| call_at(proxied(&app, "loc-a", "/contacts/c1"), token);
    for token in [None, Some("proxy-three"), Some("")] {
        let (status, body) = json(call(token).await).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    for token in ["proxy-two", "admin-t0ken"] {
        assert_eq!(call(Some(token)).await.status(), 200);
    }
    // A proxy token opens nothing else.
    let r = call_at(app.admin_url("/v1/tenants"), Some("proxy-one")).await;
    assert_eq!(r.status(), 401);
    let counted = metric(
        &app.metrics_text().await,
        r#"hlgate_api_requests_total{outcome="unauthorized"}"#,
    );
    assert_eq!(counted, 3.0, "each refused caller is counted");
}

/// Another service of the app spends `tenant`'s window behind the proxy's back.
async fn spend(standin: &StandIn, tenant: &str, n: usize) {
    let token = standin.with(|s| s.current[tenant].clone());
    let url = format!("{}/contacts/elsewhere", standin.url);
    for _ in 0..n {
        let r = reqwest::Client::new().get(&url).bearer_auth(&token);
        let r = r.header("Version", "2021-07-28");
        r.send().await.unwrap();
    }
}

#[tokio::test]
async fn a_429_from_highlevel_is_retried_once_when_it_fits_else_passed_on() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    standin.with(|s| s.api.interval = std::time::Duration::from_secs(1));
    standin.with(|s| s.api.burst = 3);
    spend(&standin, "loc-a", 3).await;
    assert_eq!(get(&app, "loc-a", "/contacts/c1").await.status(), 200);
    assert_eq!(standin.with(|s| s.api.limited), 1);

    let (standin, app) = installed(&[("HLGATE_API_MAX_WAIT", "0s")], &["loc-b"]).await;
    standin.with(|s| s.api.burst = 3);
    spend(&standin, "loc-b", 3).await;
    let r = get(&app, "loc-b", "/contacts/c1").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "10");
    assert_eq!(standin.with(|s| s.api.limited), 1, "retried without room");
}

#[tokio::test]
async fn an_unreachable_highlevel_is_502_after_one_retry() {
    let standin = StandIn::start().await;
    let app = app_with(&standin, &[("HLGATE_API_BASE_URL", "http://127.0.0.1:1")]).await;
    install(&app, &standin, "loc-a", "Location").await;
    let (status, body) = json(get(&app, "loc-a", "/contacts/c1").await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_unavailable"))
    );
}

#[tokio::test]
async fn a_private_token_is_used_as_is_and_its_401_passed_on() {
    let (standin, app) = installed(&[], &[]).await;
    let r = app
        .http
        .put(app.admin_url("/v1/tenants/loc-p/private-token"))
        .json(&serde_json::json!({"token": "pit-s3cret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    standin.with(|s| s.current.insert("loc-p".into(), "pit-s3cret".into()));
    assert_eq!(get(&app, "loc-p", "/contacts/c1").await.status(), 200);
    standin.revoke("loc-p");
    let r = get(&app, "loc-p", "/contacts/c1").await;
    assert_eq!(r.status(), 401);
    assert_eq!(standin.with(|s| s.refresh_calls), 0);
}

#[tokio::test]
async fn one_log_line_per_request_and_never_a_token_in_the_logs() {
    let standin = StandIn::start().await;
    let (_dir, mut env) = crate::tokens::process_env_with(&standin, "test.proxy");
    env.insert("HLGATE_API_BASE_URL".into(), standin.url.clone());
    env.insert("HLGATE_LOG".into(), "debug".into());
    env.insert("HLGATE_PROXY_TOKENS".into(), "proxy-s3cret".into());
    let mut process = crate::durability::spawn_process(&env, std::process::Stdio::piped());
    process.wait_ready().await;
    let http = reqwest::Client::new();
    let code = standin.code_for("locLog", "Location");
    let callback = format!("http://{}/oauth/callback?code={code}", process.public);
    assert_eq!(http.get(callback).send().await.unwrap().status(), 200);
    standin.revoke("locLog");
    let url = format!(
        "http://{}/v1/highlevel/locLog/contacts/c9?q=private-query",
        process.admin
    );
    let proxied = http.get(&url).bearer_auth("proxy-s3cret").send();
    assert_eq!(proxied.await.unwrap().status(), 200);

    process.signal("TERM");
    assert!(process.child.wait().unwrap().success());
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut process.child.stderr.take().unwrap(), &mut logs).unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("\"proxied\"")).collect();
    assert_eq!(lines.len(), 1, "{logs}");
    for field in [
        "locLog",
        "/contacts/c9",
        "\"status\":200",
        "wait_ms",
        "upstream_ms",
    ] {
        assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
    }
    assert!(!logs.contains("private-query"));
    let mut secrets = standin.with(|s| s.issued.clone());
    secrets.push("proxy-s3cret".into());
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a token in the logs");
    }
}
