//! Which form of a body counts: the compact form when only it verified (dedup key, fields,
//! `x-hl-signature-form`), and what is JSON at all (invalid UTF-8, lone surrogates).

use std::time::Duration;

use crate::helpers::*;
use serde_json::Value;

const QUIET: Duration = Duration::from_millis(700);

/// What `JSON.stringify(JSON.parse(body))` gives in Node for both bodies below.
const COMPACT: &[u8] = r#"{"type":"NoteCreate","locationId":"loc-forms","id":"n1","body":"José / café","score":1,"customFields":{"1":"a","2":"b"}}"#.as_bytes();
const PRETTY: &[u8] = br#"{
  "type": "NoteCreate",
  "locationId": "loc-forms",
  "id": "n1",
  "body": "Jos\u00e9 \/ caf\u00E9",
  "score": 1.0,
  "customFields": { "2": "b", "1": "a" }
}"#;
const REINDENTED: &[u8] = b"{\"type\":\t\"NoteCreate\",\"locationId\":\"loc-forms\",\r\n\t\"id\":\"n1\",\"body\":\"Jos\xc3\xa9 / caf\\u00e9\",\"score\":10e-1,\"customFields\":{\"2\":\"b\",\"1\":\"a\"}}";

#[tokio::test]
async fn a_reindented_copy_of_a_compact_signed_event_is_a_duplicate() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (sig_header, sig) = app.ed.sign(COMPACT);
    let key = hlgate::event::dedup_key(None, COMPACT);

    let (status, v) = json(app.post(PRETTY, &[(sig_header, &sig)]).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, serde_json::json!({"status": "accepted", "id": key}));
    // The same event indented otherwise, and as it was signed: the same key.
    for copy in [REINDENTED, COMPACT] {
        let (status, v) = json(app.post(copy, &[(sig_header, &sig)]).await).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v, serde_json::json!({"status": "duplicate", "id": key}));
    }

    let d = tap.take(1).await.remove(0);
    assert_eq!(message_id(&d), key);
    assert_eq!(header(&d, "x-deduplication-header"), Some(key.clone()));
    // Published as received; read from the form that verified.
    assert_eq!(d.data, PRETTY.to_vec());
    assert_eq!(d.routing_key.as_str(), "NoteCreate.loc-forms");
    assert_eq!(
        header(&d, "x-hl-signature-form").as_deref(),
        Some("compact")
    );
    assert_eq!(header(&d, "x-hl-signature"), Some(sig.clone()));
    tap.assert_quiet(QUIET).await;
    let m = app.metrics_text().await;
    assert_eq!(metric(&m, "hlgate_signature_fallback_total"), 2.0);
    assert_eq!(
        metric(&m, "hlgate_webhooks_total{outcome=\"duplicate\"}"),
        2.0
    );

    // A re-indented copy with a changed value is not the signed event.
    let changed = String::from_utf8(PRETTY.to_vec())
        .unwrap()
        .replace("1.0", "2.0");
    let (status, v) = json(app.post(changed.as_bytes(), &[(sig_header, &sig)]).await).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"], "invalid_signature");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    app.wait_drained().await;
    tap.assert_quiet(QUIET).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn only_an_event_verified_over_its_compact_form_says_so() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    // Verifies over the raw bytes.
    let (status, _) = json(app.post_signed(COMPACT).await).await;
    assert_eq!(status, 200);
    let d = tap.take(1).await.remove(0);
    assert_eq!(message_id(&d), hlgate::event::dedup_key(None, COMPACT));
    assert_eq!(header(&d, "x-hl-signature-form"), None);

    // Verifies only over its compact form.
    let (_, body) = contact_event("loc-forms");
    let pretty =
        serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    let (header_name, sig) = app.ed.sign(&body);
    let (status, _) = json(app.post(&pretty, &[(header_name, &sig)]).await).await;
    assert_eq!(status, 200);
    let d = tap.take(1).await.remove(0);
    assert_eq!(d.data, pretty);
    assert_eq!(
        header(&d, "x-hl-signature-form").as_deref(),
        Some("compact")
    );
    tap.cleanup(&app.exchange).await;
}

/// Starts the app with schemas checked (the default) and with them off: the two parse paths.
async fn both_parse_paths() -> [TestApp; 2] {
    [
        spawn_app().await,
        spawn_app_with(&[("HLGATE_SCHEMA_MODE", "off")]).await,
    ]
}

#[tokio::test]
async fn invalid_utf8_is_routed_as_malformed() {
    for app in both_parse_paths().await {
        let mut tap = Tap::bind(&app.exchange, "#").await;
        let body = b"{\"type\":\"BadUtf8\",\"locationId\":\"L1\",\"note\":\"caf\xe9\"}";
        let (status, v) = json(app.post_signed(body).await).await;
        assert_eq!(status, 200);
        assert_eq!(v["status"], "accepted");
        assert_eq!(v["id"], hlgate::event::dedup_key(None, body).as_str());
        let d = tap.take(1).await.remove(0);
        assert_eq!(d.routing_key.as_str(), "_malformed.none");
        assert_eq!(header(&d, "x-hl-event-type").as_deref(), Some("_malformed"));
        assert_eq!(header(&d, "x-hl-tenant-id").as_deref(), Some("none"));
        assert_eq!(header(&d, "x-hl-schema").as_deref(), Some("unknown"));
        assert_eq!(d.data, body.to_vec());
        tap.cleanup(&app.exchange).await;
    }
}

#[tokio::test]
async fn a_lone_surrogate_escape_is_json_and_routed_by_its_type() {
    for app in both_parse_paths().await {
        let mut tap = Tap::bind(&app.exchange, "#").await;
        // A message cut in the middle of an emoji, as JavaScript's JSON.stringify writes it.
        let body = br#"{"type":"InboundMessage","locationId":"L2","body":"cut \ud83d"}"#;
        let (status, v) = json(app.post_signed(body).await).await;
        assert_eq!(status, 200);
        assert_eq!(v["status"], "accepted");
        let d = tap.take(1).await.remove(0);
        assert_eq!(d.routing_key.as_str(), "InboundMessage.L2");
        assert_eq!(header(&d, "x-hl-tenant-id").as_deref(), Some("L2"));
        assert_eq!(d.data, body.to_vec());
        tap.cleanup(&app.exchange).await;
    }
}
