//! The console's actions in the browser: search, an event's page, replay of one event and of
//! a window; the quarantine's redrive and the tenants that need re-authorisation first.

use std::time::Duration;

use hlgate::oauth::TenantState;
use serde_json::json;

use crate::helpers::*;
use crate::setup::{app_on, seed_tenants};
use crate::{api, assert_only_admin, browser, listed, post, seq_of};

#[tokio::test]
async fn search_an_event_s_page_a_replay_and_a_window_replay() {
    let app = app_on(tempfile::tempdir().unwrap(), &[], None).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    // Dots would be replaced in the routing key: tenant ids as HighLevel makes them.
    let (a, other) = (
        unique("locA").replace('.', ""),
        unique("locB").replace('.', ""),
    );
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            post(
                &app,
                "ContactCreate",
                &a,
                &format!("note {i} for the console"),
                json!("ada@example.com"),
            )
            .await,
        );
    }
    let others = [
        post(&app, "NoteCreate", &other, "other", json!("c@d.e")).await,
        post(&app, "NoteCreate", &other, "other", json!("c@d.e")).await,
    ];
    app.wait_drained().await;
    assert_eq!(tap.take(5).await.len(), 5);
    let mut want = Vec::new();
    for id in ids.iter().rev() {
        want.push(seq_of(&app, id).await);
    }

    let Some(b) = browser::open().await else {
        return;
    };
    b.goto(&app.admin_url("/#/events")).await;
    // A body search without a window, tenant or type: the API's refusal, said on the page.
    b.fill("#f-q", "console").await;
    b.click("form.search button[type=submit]").await;
    b.text_with("#results [role=alert]", "bad_request: q reads event bodies")
        .await;
    b.fill("#f-q", "").await;
    b.fill("#f-tenant", &a).await;
    b.click("form.search button[type=submit]").await;
    b.until("document.querySelectorAll('#results tbody tr').length === 3")
        .await;
    assert_eq!(
        listed(&b).await,
        want,
        "exactly the tenant's events, newest first"
    );
    b.assert_labelled().await;

    // The newest one's page: its body, headers and routing key.
    b.click(&format!("#results tbody tr[data-seq='{}'] a", want[0]))
        .await;
    let body = b.text_with("#body", "note 2 for the console").await;
    assert!(body.contains(&ids[2]), "{body}");
    let routing_key = b.find("#routing-key").await.text().await.unwrap();
    assert_eq!(routing_key, format!("ContactCreate.{a}"));
    let headers = b.find("#headers").await.text().await.unwrap();
    assert!(
        headers.contains("x-hl-tenant-id") && headers.contains(&a),
        "{headers}"
    );
    assert!(
        headers.contains("x-hl-webhook-id") && headers.contains(&ids[2]),
        "{headers}"
    );
    b.text_with("ol.timeline", "Published and confirmed").await;
    b.assert_labelled().await;
    b.assert_fits(1280, 800).await;
    b.screenshot("console-event.png", 1000).await;

    // Replay, once confirmed: exactly one message, marked.
    b.press("Replay").await;
    b.text_with(".confirm", "Publish event").await;
    // The confirmation takes the focus, so that Enter or Escape-then-Tab decide it.
    let focused = b.js("return document.activeElement.textContent;").await;
    assert_eq!(focused, "Yes, replay");
    tap.assert_quiet(Duration::from_millis(300)).await;
    b.press("Yes, replay").await;
    b.text_with(".confirm", "Queued").await;
    let d = tap.take(1).await;
    assert_eq!(message_id(&d[0]), ids[2]);
    assert_eq!(header(&d[0], "x-hl-replay").as_deref(), Some("true"));
    tap.assert_quiet(Duration::from_millis(500)).await;

    // A window's replay shows its dry-run count first and publishes only once confirmed.
    let since = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let until = time::OffsetDateTime::now_utc() + Duration::from_secs(120);
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let hash = format!(
        "#/events?tenant={other}&since={}&until={}",
        rfc(since),
        rfc(until)
    )
    .replace('+', "%2B");
    b.goto(&app.admin_url(&format!("/{hash}"))).await;
    b.until("document.querySelectorAll('#results tbody tr').length === 2")
        .await;
    b.press("Count events").await;
    b.text_with(
        "#dry-run-count",
        "2 events in this window would be published again",
    )
    .await;
    tap.assert_quiet(Duration::from_millis(300)).await;
    b.press("Replay 2 events").await;
    b.press("Yes, replay 2 events").await;
    b.text_with("#replay-outcome", "2 events queued for replay")
        .await;
    let copies = tap.take(2).await;
    let mut got: Vec<_> = copies.iter().map(message_id).collect();
    let mut sent = others.to_vec();
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
    assert!(copies
        .iter()
        .all(|d| header(d, "x-hl-replay").as_deref() == Some("true")));
    tap.assert_quiet(Duration::from_millis(500)).await;

    b.goto(&app.admin_url(&format!("/#/events/{}", want[0])))
        .await;
    b.text_with("#body", "note 2").await;
    b.assert_fits(390, 844).await;
    assert_only_admin(&b, &app).await;
    b.close().await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn quarantine_redrives_an_event_and_tenants_list_needs_reauth_first() {
    let dir = tempfile::tempdir().unwrap();
    let reauth = "loc-zz-reauth";
    // What HighLevel answered, as hostile as a body: shown as text too.
    let error = "invalid_grant <img src=x onerror=\"window.__pwned=1;alert(1)\">";
    seed_tenants(
        dir.path(),
        &[
            ("loc-aa-active", TenantState::Active, None),
            ("loc-mm-private", TenantState::Private, None),
            (reauth, TenantState::NeedsReauth, Some(error)),
        ],
    );
    let app = app_on(dir, &[("HLGATE_SCHEMA_MODE", "enforce")], None).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    // An email that is a number fails ContactCreate's schema: quarantined under enforce.
    let id = post(&app, "ContactCreate", &unique("locQ"), "invalid", json!(42)).await;
    app.wait_drained().await;
    let seq = seq_of(&app, &id).await;
    assert_eq!(
        api(&app, &format!("/v1/events/{seq}")).await["state"],
        "quarantined"
    );

    let Some(b) = browser::open().await else {
        return;
    };
    b.goto(&app.admin_url("/#/quarantine")).await;
    let row = format!("tr[data-seq='{seq}']");
    b.text_with(&format!("{row} .reason"), "schema").await;
    b.assert_labelled().await;
    tap.assert_quiet(Duration::from_millis(300)).await;
    b.press("Redrive").await;
    b.press("Yes, redrive").await;
    b.text_with(&format!("{row} .confirm"), "Queued for the main exchange")
        .await;
    let d = tap.take(1).await;
    assert_eq!(message_id(&d[0]), id);
    assert_eq!(header(&d[0], "x-hl-replay").as_deref(), Some("true"));
    tap.assert_quiet(Duration::from_millis(500)).await;
    // The original stays in highlevel.quarantine, shared by every test: take it off.
    assert!(find_in_queue("highlevel.quarantine", &id).await.is_some());

    b.goto(&app.admin_url("/#/tenants")).await;
    b.text_with("#needs-reauth", error).await;
    b.assert_no_dialog().await;
    let injected = b
        .js("return [window.__pwned === undefined, document.querySelectorAll('img').length];")
        .await;
    assert_eq!(injected, json!([true, 0]));
    let first = b
        .js("return document.querySelector('tbody tr').dataset.tenant;")
        .await;
    assert_eq!(
        first, reauth,
        "needs_reauth comes before tenants whose ids sort first"
    );
    let all = b.js("return [...document.querySelectorAll('#all-tenants tbody tr')].map(r => r.dataset.tenant);").await;
    assert_eq!(all, json!(["loc-aa-active", "loc-mm-private", reauth]));
    b.assert_labelled().await;
    b.goto(&app.admin_url("/#/tenants?state=private")).await;
    b.until("document.querySelector('#all-tenants h2')?.textContent === 'Tenants: private'")
        .await;
    let private = b
        .js("return [...document.querySelectorAll('tbody tr')].map(r => r.dataset.tenant);")
        .await;
    assert_eq!(private, json!(["loc-mm-private"]));
    b.goto(&app.admin_url("/#/tenants?state=needs_reauth"))
        .await;
    b.until("document.querySelector('#all-tenants h2')?.textContent === 'Tenants: needs_reauth'")
        .await;
    let listed = b
        .js("return [...document.querySelectorAll('tbody tr')].map(r => r.dataset.tenant);")
        .await;
    assert_eq!(listed, json!([reauth]));
    b.text_with("main .attention", "must install the app again")
        .await;
    b.goto(&app.admin_url("/")).await;
    b.text_with("[data-metric='tenants-needs_reauth']", "1")
        .await;
    assert_only_admin(&b, &app).await;
    b.close().await;
    tap.cleanup(&app.exchange).await;
}
