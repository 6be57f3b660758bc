//! What a proxy caller cannot make hlgate do upstream: spend a tenant's refresh token on 401s
//! that no new token cures, send HighLevel an empty `Version`, leave the base path of
//! `HLGATE_API_BASE_URL`, or tell HighLevel about the hops in front of hlgate.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::proxy::{expiring, get, installed, proxied};

/// Longest a raw request may take: a hang guard, not a measure.
const HANG_GUARD: Duration = Duration::from_secs(30);

const NO_SCOPE: &str = "The token is not authorized for this scope.";

#[tokio::test]
async fn a_401_no_new_token_cures_costs_one_refresh_however_often_it_is_asked() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    for i in 0..20 {
        let (status, body) = json(get(&app, "loc-a", "/out-of-scope").await).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some(NO_SCOPE)),
            "call {i}"
        );
    }
    // The first call refreshed once and tried again; the other 19 were held.
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        1,
        "refresh token rotated"
    );
    assert_eq!(standin.with(|s| s.api.calls("/out-of-scope")), 21);
    let metrics = app.metrics_text().await;
    let count = |outcome: &str| {
        metric(
            &metrics,
            &format!("hlgate_api_requests_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!((count("refreshed_401"), count("held_401")), (1.0, 19.0));
    // The tenant's tokens still serve what they have the scope for.
    assert_eq!(get(&app, "loc-a", "/contacts/c1").await.status(), 200);
    assert_eq!(standin.with(|s| s.reused_refresh_tokens), 0);
}

#[tokio::test]
async fn a_401_for_a_token_renewed_just_now_is_passed_on_without_another_refresh() {
    let (standin, app) = expiring(&["loc-a"]).await;
    let before = standin.with(|s| s.refresh_calls);
    // The token is renewed before the call (it expires too soon); HighLevel refuses the new one.
    let (status, body) = json(get(&app, "loc-a", "/out-of-scope").await).await;
    assert_eq!((status, body["message"].as_str()), (401, Some(NO_SCOPE)));
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        before + 1,
        "a token renewed just now was refreshed again after its 401"
    );
    assert_eq!(standin.with(|s| s.api.calls("/out-of-scope")), 1);
}

#[tokio::test]
async fn an_empty_version_is_replaced_by_the_default_one() {
    let (standin, app) = installed(&[], &["loc-a"]).await;
    for version in ["", " ", "\t "] {
        for _ in 0..3 {
            let r = app
                .http
                .get(proxied(&app, "loc-a", "/contacts/c1"))
                .header("Version", version)
                .send()
                .await
                .unwrap();
            let (status, body) = json(r).await;
            assert_eq!(status, 200, "Version {version:?}: {body}");
            assert_eq!(body["version"], "2021-07-28", "Version {version:?}");
        }
    }
    assert_eq!(standin.with(|s| s.api.unauthorized), 0);
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        0,
        "refresh token rotated"
    );
}

/// A GET of `path` exactly as written (HTTP clients resolve dot segments before sending): the
/// status and the JSON body, `Null` when the body is not JSON.
async fn raw_get(app: &TestApp, path: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(app.admin).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        app.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_path_that_climbs_above_the_base_path_is_refused_and_reaches_nothing() {
    let standin = crate::highlevel::StandIn::start().await;
    let base = format!("{}/api/v2", standin.url);
    let app = crate::tokens::app_with(&standin, &[("HLGATE_API_BASE_URL", base.as_str())]).await;
    crate::tokens::install(&app, &standin, "loc-a", "Location").await;
    let climbing = [
        "%2e%2e/%2e%2e/x",
        "%2E%2e/x",
        "contacts/../../x",
        "./contacts/.%2e/%2e./x",
        "a/%2e%2e/%2e%2e/%2e%2e/api/v2/contacts/c1",
        "a%2F..%2F..%2Fx",
        "a%5c..%5c..%5cx",
        "..%5Cx",
        "contacts\\..\\..\\x",
    ];
    for path in climbing {
        let (status, body) = raw_get(&app, &format!("/v1/highlevel/loc-a/{path}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_path")),
            "{path}: {body}"
        );
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("HLGATE_API_BASE_URL"));
    }
    assert_eq!(
        standin.with(|s| s.api.paths.clone()),
        Vec::<String>::new(),
        "HighLevel was called"
    );
    let refused = metric(
        &app.metrics_text().await,
        r#"hlgate_api_requests_total{outcome="client_error"}"#,
    );
    assert_eq!(refused, climbing.len() as f64, "each refusal is counted");

    // Dot segments that stay below the base are resolved, and the path is sent on.
    let (status, _) = raw_get(&app, "/v1/highlevel/loc-a/x/%2e%2e/contacts/./c1?q=1").await;
    assert_eq!(status, 200);
    assert_eq!(
        standin.with(|s| s.api.paths.clone()),
        ["/api/v2/contacts/c1"]
    );
}

#[tokio::test]
async fn the_hops_in_front_of_hlgate_are_not_told_to_highlevel() {
    let (_standin, app) = installed(&[], &["loc-a"]).await;
    let hops = [
        ("Forwarded", "for=10.0.0.7;proto=https"),
        ("X-Forwarded-For", "10.0.0.7"),
        ("X-Forwarded-Host", "internal.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "8443"),
        ("X-Real-IP", "10.0.0.7"),
    ];
    let mut request = app.http.get(proxied(&app, "loc-a", "/contacts/c1"));
    for (name, value) in hops {
        request = request.header(name, value);
    }
    let r = request.header("X-Trace", "t1").send().await.unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 200);
    let seen: Vec<&str> = (body["headers"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap())
        .collect();
    for (name, _) in hops {
        let name = name.to_ascii_lowercase();
        assert!(!seen.contains(&name.as_str()), "{name} sent on: {seen:?}");
    }
    assert!(seen.contains(&"x-trace"), "other headers pass: {seen:?}");
}
