//! The token module around events and processes: INSTALL and UNINSTALL, tokens attached to
//! published events, private tokens, a refresh in flight at shutdown, and secrets kept secret.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::durability::{process_env, spawn_process};
use crate::helpers::*;
use crate::highlevel::{StandIn, CLIENT_SECRET};
use crate::tokens::{
    app_with, eventually, get_token, install, latest_access, process_env_with, tenant_state,
    tenants,
};

/// An app pointed at `standin`, its exchange tapped.
async fn tapped_app(standin: &StandIn) -> (TestApp, Tap) {
    let app = app_with(standin, &[]).await;
    let tap = Tap::bind(&app.exchange, "#").await;
    (app, tap)
}

async fn post_event(app: &TestApp, body: Value) {
    let bytes = serde_json::to_vec(&body).unwrap();
    assert_eq!(app.post_signed(&bytes).await.status(), 200);
}

#[tokio::test]
async fn install_events_mint_location_tokens_even_when_they_race_the_exchange() {
    let standin = StandIn::start().await;
    let (app, mut tap) = tapped_app(&standin).await;
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
    let (app, mut tap) = tapped_app(&standin).await;
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

// Two threads: the stand-in must answer while this test waits for the process to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_in_flight_at_shutdown_stores_its_pair() {
    let standin = StandIn::start().await;
    // Inside the 1 h refresh window: the schedule refreshes it at once, and HighLevel is slow.
    standin.with(|s| {
        s.expires_in = 1800;
        s.refresh_delay = Some(Duration::from_secs(2));
    });
    let (_dir, mut env) = process_env_with(&standin, "test.drain");
    env.insert("HLGATE_TOKEN_REFRESH_BEFORE".into(), "1h".into());
    let process = spawn_process(&env, Stdio::null());
    process.wait_ready().await;
    let code = standin.code_for("locDrain", "Location");
    let callback = format!("http://{}/oauth/callback?code={code}", process.public);
    assert_eq!(reqwest::get(callback).await.unwrap().status(), 200);
    standin.with(|s| s.expires_in = 86_399);
    eventually("a refresh in flight", || async {
        standin.with(|s| s.refreshes_begun) >= 1
    })
    .await;

    // Shutdown while HighLevel has the refresh token and has not answered yet.
    process.signal("TERM");
    let mut process = process;
    assert!(process.child.wait().unwrap().success());
    assert_eq!(
        standin.with(|s| s.refresh_calls),
        1,
        "the refresh was answered"
    );

    // The next start serves the new pair and never presents the spent refresh token again.
    let again = spawn_process(&env, Stdio::null());
    again.wait_ready().await;
    let r = reqwest::get(format!("http://{}/v1/tokens/locDrain", again.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: Value = r.json().await.unwrap();
    assert_eq!(token["access_token"], latest_access(&standin));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(standin.with(|s| s.refresh_tokens_seen.len()), 1);
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
