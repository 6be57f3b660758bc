//! The operator console in a real browser (headless Chromium through WebDriver) against the
//! real app on port 0 with the real RabbitMQ: sign-in, the overview's counts, hostile content
//! and what the page loads here; search, replay, redrive and tenants in `console/actions.rs`.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

#[path = "console/actions.rs"]
mod actions;
#[path = "console/browser.rs"]
mod browser;
#[path = "console/setup.rs"]
mod setup;

use hlgate::health::ManualClock;
use serde_json::{json, Value};

use helpers::*;
use setup::{app_on, traffic};

/// What the first load of the overview may transfer, every file and API answer included.
const FIRST_LOAD_BUDGET: u64 = 300 * 1024;

async fn api(app: &TestApp, path: &str) -> Value {
    let (status, body) = json(app.admin_get(path).await).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Every request the page made went to the admin listener.
async fn assert_only_admin(b: &browser::Browser, app: &TestApp) -> u64 {
    let origin = app.admin_url("/");
    let requests = b.requests().await;
    assert!(!requests.is_empty());
    for (url, _) in &requests {
        assert!(url.starts_with(&origin), "{url} is not on {origin}");
    }
    requests.iter().map(|(_, bytes)| bytes).sum()
}

#[tokio::test]
async fn sign_in_refuses_a_wrong_token_and_keeps_the_right_one_for_the_tab_only() {
    let token = unique("console-token");
    let app = app_on(
        tempfile::tempdir().unwrap(),
        &[("HLGATE_ADMIN_TOKEN", &token)],
        None,
    )
    .await;
    // The page's own headers: no inline script, no framing.
    for path in ["/", "/console/app.js", "/console/console.css"] {
        let r = app.http.get(app.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let missing = app
        .http
        .get(app.admin_url("/console/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(missing).await,
        (
            404,
            json!({"error": "not_found", "message": "no such endpoint"})
        )
    );

    let Some(b) = browser::open().await else {
        return;
    };
    b.goto(&app.admin_url("/")).await;
    b.find("#token").await;
    assert_eq!(b.js("return document.activeElement.id;").await, "token");
    b.assert_labelled().await;
    // Typed and sent with the keyboard alone.
    b.find("#token")
        .await
        .send_keys("wrong-token\u{E007}")
        .await
        .unwrap();
    b.text_with("#sign-in-error", "The admin token was refused.")
        .await;
    assert_eq!(b.js("return sessionStorage.length;").await, 0);
    assert!(b
        .js("return document.getElementById('nav').hidden;")
        .await
        .as_bool()
        .unwrap());

    b.fill("#token", &token).await;
    b.click("form.sign-in button[type=submit]").await;
    b.text_with("main h1", "Overview").await;
    b.find("[data-metric='attempts-72h']").await;
    // The skip link moves the focus to the content without leaving the page.
    // Shown once focused, as a Tab from the top would; Enter follows it.
    b.js("document.querySelector('.skip').focus();").await;
    b.find(".skip").await.send_keys("\u{E007}").await.unwrap();
    let skipped = b
        .js("return [location.hash, document.activeElement.id];")
        .await;
    assert_eq!(skipped, json!(["", "main"]));
    let url = b.client.current_url().await.unwrap().to_string();
    assert!(!url.contains(&token), "{url}");
    let kept = b
        .js("return [document.cookie, localStorage.length, sessionStorage.length];")
        .await;
    assert_eq!(kept, json!(["", 0, 1]));
    // A reload in the same tab stays signed in; signing out forgets the token.
    b.client.refresh().await.unwrap();
    b.text_with("main h1", "Overview").await;
    b.click("#sign-out").await;
    b.find("#token").await;
    assert_eq!(b.js("return sessionStorage.length;").await, 0);
    assert_only_admin(&b, &app).await;
    b.close().await;
}

#[tokio::test]
async fn the_overview_shows_the_counts_of_72_hours_of_traffic() {
    let now = hlgate::entry::now_ms();
    let clock = ManualClock::at(now - (71 * 60 + 30) * 60_000);
    let app = app_on(
        tempfile::tempdir().unwrap(),
        &[("HLGATE_ALERT_BROKER_DOWN", "0")],
        Some(&clock),
    )
    .await;
    // Bound, so that what the traffic publishes is not left in the shared highlevel.unrouted.
    let tap = Tap::bind(&app.exchange, "#").await;
    let windows = traffic(&app, &clock).await;
    app.wait_drained().await;
    let health = api(&app, "/v1/health").await;
    assert_eq!(health["windows"]["72h"]["attempts"], windows[2].attempts());

    let Some(b) = browser::open().await else {
        return;
    };
    b.goto(&app.admin_url("/")).await;
    for (name, c) in ["1h", "24h", "72h"].iter().zip(windows) {
        let cell = |what: &str| format!("[data-metric='{what}-{name}']");
        b.text_with(&cell("attempts"), &c.attempts().to_string())
            .await;
        assert_eq!(
            b.find(&cell("attempts")).await.text().await.unwrap(),
            c.attempts().to_string()
        );
        assert_eq!(
            b.find(&cell("accepted")).await.text().await.unwrap(),
            c.accepted.to_string()
        );
        assert_eq!(
            b.find(&cell("duplicate")).await.text().await.unwrap(),
            c.duplicate.to_string()
        );
        assert_eq!(
            b.find(&cell("failed")).await.text().await.unwrap(),
            c.failed.to_string()
        );
    }
    // The last hour's bars by outcome, and the 72 hourly points of the ratio chart.
    let hour = windows[0];
    assert_eq!(
        b.find("[data-metric='hour-o-accepted']")
            .await
            .text()
            .await
            .unwrap(),
        hour.accepted.to_string()
    );
    assert_eq!(
        b.find("[data-metric='hour-o-signature']")
            .await
            .text()
            .await
            .unwrap(),
        hour.failed.to_string()
    );
    assert_eq!(
        b.js("return document.querySelectorAll('svg.chart')[0].querySelectorAll('circle').length;")
            .await,
        72
    );
    assert_eq!(
        b.find("[data-metric='outbox-depth']")
            .await
            .text()
            .await
            .unwrap(),
        "0"
    );
    assert_eq!(
        b.find("[data-metric='broker']").await.text().await.unwrap(),
        "connected"
    );
    assert_eq!(
        b.find("[data-metric='store']").await.text().await.unwrap(),
        "ok"
    );
    assert_eq!(
        b.find("[data-metric='tenants-needs_reauth']")
            .await
            .text()
            .await
            .unwrap(),
        "0"
    );
    b.assert_labelled().await;

    let transferred = assert_only_admin(&b, &app).await;
    assert!(transferred <= FIRST_LOAD_BUDGET, "{transferred} bytes");
    let drawn = b
        .js("return performance.getEntriesByName('hlgate-overview-drawn')[0].startTime;")
        .await;
    eprintln!("the overview's first load: {transferred} bytes, drawn {drawn} ms after navigation");
    b.assert_fits(1280, 800).await;
    b.assert_fits(390, 844).await;
    b.screenshot("console-overview.png", 1200).await;
    b.close().await;
    tap.cleanup(&app.exchange).await;
}

/// Posts an event for `tenant` with `note` in its body; its webhook id (the dedup key).
async fn post(app: &TestApp, event_type: &str, tenant: &str, note: &str, email: Value) -> String {
    let id = unique("wh");
    let body = json!({
        "type": event_type, "locationId": tenant, "id": "nmFmQEsNgz6AVpgLVUJ0",
        "firstName": "Ada", "email": email, "note": note, "webhookId": id,
    });
    let r = app.post_signed(&serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(r.status(), 200);
    id
}

/// The seqs the browser's results table lists, in its order.
async fn listed(b: &browser::Browser) -> Vec<u64> {
    let seqs = b
        .js("return [...document.querySelectorAll('#results tbody tr')].map(r => +r.dataset.seq);")
        .await;
    serde_json::from_value(seqs).unwrap()
}

async fn seq_of(app: &TestApp, key: &str) -> u64 {
    api(app, &format!("/v1/events?key={key}")).await["events"][0]["seq"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn hostile_fields_show_as_text_and_run_nothing() {
    let app = app_on(tempfile::tempdir().unwrap(), &[], None).await;
    let script = "<script>window.__pwned=1</script>";
    let img = "<img src=x onerror=\"window.__pwned=1;alert(1)\">";
    let svg = "\"><svg onload=\"window.__pwned=1;alert(1)\">";
    let tap = Tap::bind(&app.exchange, "#").await;
    let id = post(&app, script, img, svg, json!(svg)).await;
    app.wait_drained().await;
    let seq = seq_of(&app, &id).await;

    let Some(b) = browser::open().await else {
        return;
    };
    b.goto(&app.admin_url("/#/events")).await;
    b.fill("#f-tenant", img).await;
    b.click("form.search button[type=submit]").await;
    b.until("document.querySelectorAll('#results tbody tr').length === 1")
        .await;
    assert_eq!(
        b.find("#results .cell-tenant").await.text().await.unwrap(),
        img
    );
    assert_eq!(
        b.find("#results .cell-type").await.text().await.unwrap(),
        script
    );
    b.click(&format!("#results tbody tr[data-seq='{seq}'] a"))
        .await;
    let body = b.text_with("#body", "onload").await;
    assert!(
        body.contains(script) && body.contains("\\\"><svg onload="),
        "{body}"
    );
    let headers = b.find("#headers").await.text().await.unwrap();
    assert!(headers.contains(img), "{headers}");

    b.assert_no_dialog().await;
    let injected = b
        .js("return [window.__pwned === undefined, document.querySelectorAll('img, svg, [onerror], [onload]').length, \
             [...document.scripts].every(s => s.src.endsWith('/console/app.js'))];")
        .await;
    assert_eq!(injected, json!([true, 0, true]));
    assert_only_admin(&b, &app).await;
    b.close().await;
    tap.cleanup(&app.exchange).await;
}
