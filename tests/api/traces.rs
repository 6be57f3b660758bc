//! OpenTelemetry traces through the real app and the real RabbitMQ, exported to a local
//! collector (`otlp.rs`): the spans of a webhook, of its publish and of a proxied call, their
//! links and attributes, the `traceparent` a message carries, and no secret in any export.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use crate::otlp::{contains, named, Collector, SpanKind};
use crate::proxy::{installed, proxied};

const ADMIN: &str = "admin-t0ken-for-traces";

/// `(trace id, span id, flags)` of a message's `traceparent`.
fn traceparent(d: &lapin::message::Delivery) -> (String, String, String) {
    let value = header(d, "traceparent").expect("a traceparent header");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn signed_body(app: &TestApp, body: &serde_json::Value) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(body).unwrap();
    let (_, signature) = app.ed.sign(&body);
    (body, signature)
}

async fn post_with(app: &TestApp, body: &[u8], signature: &str, extra: &[(&str, &str)]) -> u16 {
    let mut headers = vec![("x-ghl-signature", signature)];
    headers.extend_from_slice(extra);
    app.post(body, &headers).await.status().as_u16()
}

/// A metric's value, read until `until` holds for it; panics after 30 s.
async fn metric_until(app: &TestApp, series: &str, until: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = metric(&app.metrics_text().await, series);
        if until(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `a` no later than `b`, give or take the millisecond the clock conversions of spans timed
/// elsewhere (the store's writer) may be off by.
fn before(a: u64, b: u64) -> bool {
    a <= b + 1_000_000
}

const EXPORTED: &str = "hlgate_otlp_spans_exported_total";
const FAILED: &str = "hlgate_otlp_spans_dropped_total{reason=\"export_failed\"}";

#[tokio::test]
async fn a_webhook_and_its_publish_are_one_trace_that_the_message_carries_on() {
    let collector = Collector::start();
    let endpoint = collector.endpoint.clone();
    let app = spawn_app_with(&[
        ("HLGATE_OTLP_ENDPOINT", endpoint.as_str()),
        ("HLGATE_ADMIN_TOKEN", ADMIN),
    ])
    .await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let marker = unique("bodymarker");
    let event = json!({"type": "ContactCreate", "locationId": "loc-tr", "webhookId": unique("wh"),
        "email": format!("{marker}@example.com")});
    let (body, signature) = signed_body(&app, &event);
    assert_eq!(post_with(&app, &body, &signature, &[]).await, 200);
    let message = tap.next(Duration::from_secs(10)).await.expect("published");
    let (trace, span_id, flags) = traceparent(&message);
    assert_eq!(flags, "01");

    let spans = collector
        .wait_until(|s| {
            let names: Vec<&str> = (s.iter().filter(|x| x.trace_id == trace))
                .map(|x| x.name.as_str())
                .collect();
            ["webhook", "verify", "dedup", "commit", "publish"]
                .iter()
                .all(|n| names.contains(n))
        })
        .await;
    let webhook = named(&spans, &trace, "webhook");
    assert_eq!(webhook.parent, "");
    assert_eq!(webhook.kind, SpanKind::Server);
    assert_eq!(webhook.attr("hlgate.tenant"), Some("loc-tr"));
    assert_eq!(webhook.attr("hlgate.event_type"), Some("ContactCreate"));
    assert_eq!(webhook.attr("hlgate.outcome"), Some("accepted"));
    assert_eq!(webhook.attr("http.response.status_code"), Some("200"));
    assert_eq!((webhook.status_code, webhook.flags), (0, 1));
    assert_eq!(
        webhook.resource.get("service.name").map(String::as_str),
        Some("hlgate")
    );
    for name in ["verify", "dedup", "commit"] {
        let child = named(&spans, &trace, name);
        assert_eq!(child.parent, webhook.span_id, "{name}");
        assert_eq!(child.kind, SpanKind::Internal, "{name}");
        let within = before(webhook.start, child.start) && before(child.end, webhook.end);
        assert!(within, "{child:?} outside {webhook:?}");
    }
    let verify = named(&spans, &trace, "verify");
    assert_eq!(verify.attr("hlgate.signature_scheme"), Some("ed25519"));
    let (dedup, commit) = (
        named(&spans, &trace, "dedup"),
        named(&spans, &trace, "commit"),
    );
    assert!(before(verify.end, dedup.start) && before(dedup.end, commit.start));

    // The message's traceparent is the publish span, a child of the webhook's.
    let publish = named(&spans, &trace, "publish");
    assert_eq!(publish.span_id, span_id);
    assert_eq!(publish.parent, webhook.span_id);
    assert_eq!(publish.kind, SpanKind::Producer);
    assert_eq!(publish.attr("hlgate.tenant"), Some("loc-tr"));
    assert_eq!(publish.attr("hlgate.event_type"), Some("ContactCreate"));
    let routing_key = publish.attr("messaging.rabbitmq.destination.routing_key");
    assert_eq!(routing_key, Some("ContactCreate.loc-tr"));
    let message_id = message_id(&message);
    assert_eq!(
        publish.attr("messaging.message.id"),
        Some(message_id.as_str())
    );
    assert!(before(commit.start, publish.start) && publish.end >= publish.start);

    // A redelivery: its dedup answers, nothing is committed or published.
    assert_eq!(post_with(&app, &body, &signature, &[]).await, 200);
    let spans = collector
        .wait_until(|s| {
            s.iter()
                .any(|x| x.attr("hlgate.outcome") == Some("duplicate"))
        })
        .await;
    let duplicate = spans
        .iter()
        .find(|x| x.attr("hlgate.outcome") == Some("duplicate"))
        .unwrap();
    let again = &duplicate.trace_id;
    assert_eq!(named(&spans, again, "dedup").parent, duplicate.span_id);
    assert!(!spans
        .iter()
        .any(|x| &x.trace_id == again && ["commit", "publish"].contains(&x.name.as_str())));
    tap.assert_quiet(Duration::from_millis(300)).await;

    assert!(collector
        .content_types()
        .iter()
        .all(|c| c == "application/x-protobuf"));
    for export in collector.bodies() {
        for secret in [ADMIN, marker.as_str(), signature.as_str(), "example.com"] {
            assert!(!contains(&export, secret.as_bytes()), "{secret} exported");
        }
    }
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_refused_webhook_is_an_error_span_and_publishes_nothing() {
    let collector = Collector::start();
    let app = spawn_app_with(&[("HLGATE_OTLP_ENDPOINT", collector.endpoint.as_str())]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc-bad");
    let (_, wrong) = app.ed.sign(b"another body");
    assert_eq!(post_with(&app, &body, &wrong, &[]).await, 401);
    let spans = collector
        .wait_until(|s| s.iter().any(|x| x.name == "webhook") && s.len() >= 2)
        .await;
    let webhook = spans.iter().find(|x| x.name == "webhook").unwrap();
    assert_eq!(webhook.status_code, 2);
    assert_eq!(webhook.attr("hlgate.outcome"), Some("invalid_signature"));
    assert_eq!(webhook.attr("http.response.status_code"), Some("401"));
    // Nothing was stored: no tenant is named, and only the check ran.
    assert_eq!(webhook.attr("hlgate.tenant"), None);
    let verify = named(&spans, &webhook.trace_id, "verify");
    assert_eq!(
        (verify.parent.as_str(), verify.status_code),
        (webhook.span_id.as_str(), 2)
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    tap.assert_quiet(Duration::from_millis(500)).await;
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_proxied_call_continues_the_callers_trace_with_wait_and_upstream_spans() {
    let collector = Collector::start();
    let endpoint = collector.endpoint.clone();
    let (standin, app) =
        installed(&[("HLGATE_OTLP_ENDPOINT", endpoint.as_str())], &["loc-p"]).await;
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller = format!("00-{caller_trace}-b7ad6b7169203331-01");
    let r = (app.http.get(proxied(&app, "loc-p", "/contacts/c1")))
        .header("traceparent", &caller)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = app
        .admin_get("/v1/tokens/loc-p")
        .await
        .json()
        .await
        .unwrap();
    let access_token = token["access_token"].as_str().unwrap().to_string();

    let spans = collector
        .wait_until(|s| s.iter().filter(|x| x.trace_id == caller_trace).count() >= 3)
        .await;
    let proxy = named(&spans, caller_trace, "proxy");
    assert_eq!(proxy.parent, "b7ad6b7169203331");
    assert_eq!(proxy.kind, SpanKind::Server);
    assert_eq!(proxy.attr("hlgate.tenant"), Some("loc-p"));
    assert_eq!(proxy.attr("http.request.method"), Some("GET"));
    assert_eq!(proxy.attr("http.response.status_code"), Some("200"));
    assert_eq!(proxy.attr("hlgate.outcome"), Some("ok"));
    let wait = named(&spans, caller_trace, "governor_wait");
    assert_eq!(
        (wait.parent.as_str(), wait.kind),
        (proxy.span_id.as_str(), SpanKind::Internal)
    );
    let upstream = named(&spans, caller_trace, "upstream");
    assert_eq!(upstream.parent, proxy.span_id);
    assert_eq!(upstream.kind, SpanKind::Client);
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert!(wait.end <= upstream.start);

    let client_secret = standin
        .settings()
        .into_iter()
        .find(|(k, _)| *k == "HLGATE_CLIENT_SECRET");
    let client_secret = client_secret.unwrap().1;
    for export in collector.bodies() {
        for secret in [access_token.as_str(), client_secret.as_str()] {
            assert!(!contains(&export, secret.as_bytes()), "{secret} exported");
        }
    }
}

#[tokio::test]
async fn an_unreachable_collector_drops_and_counts_spans_while_webhooks_get_200() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let app = spawn_app_with(&[("HLGATE_OTLP_ENDPOINT", endpoint.as_str())]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    for _ in 0..20 {
        let (_, body) = contact_event("loc-away");
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    for message in tap.take(20).await {
        assert_eq!(traceparent(&message).2, "01");
    }
    metric_until(&app, FAILED, |n| n > 0.0).await;
    assert_eq!(metric(&app.metrics_text().await, EXPORTED), 0.0);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_collector_that_never_answers_holds_no_webhook() {
    let collector = Collector::stalled();
    let app = spawn_app_with(&[("HLGATE_OTLP_ENDPOINT", collector.endpoint.as_str())]).await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc-stall");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while collector.arrived() == 0 {
        assert!(Instant::now() < deadline, "no export came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The exporter now waits on the collector; webhooks and publishes go on.
    for _ in 0..20 {
        let (_, body) = contact_event("loc-stall");
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    assert_eq!(tap.take(21).await.len(), 21);
    assert_eq!(metric(&app.metrics_text().await, EXPORTED), 0.0);
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_messages_still_carry_a_traceparent() {
    let app = spawn_app().await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc-off");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let message = tap.next(Duration::from_secs(10)).await.expect("published");
    let (trace, span, flags) = traceparent(&message);
    // Not sampled: nothing recorded it, a consumer may still continue it.
    assert_eq!(flags, "00");
    assert!(trace.chars().any(|c| c != '0') && span.chars().any(|c| c != '0'));
    let text = app.metrics_text().await;
    assert_eq!(metric(&text, EXPORTED), 0.0);
    for reason in ["queue_full", "export_failed", "stopped"] {
        let series = format!("hlgate_otlp_spans_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), 0.0, "{reason}");
    }
    tap.cleanup(&app.exchange).await;
}

#[tokio::test]
async fn a_zero_ratio_records_only_the_traces_a_caller_sampled() {
    let collector = Collector::start();
    let app = spawn_app_with(&[
        ("HLGATE_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("HLGATE_OTLP_SAMPLE_RATIO", "0"),
    ])
    .await;
    let mut tap = Tap::bind(&app.exchange, "#").await;
    let (_, body) = contact_event("loc-ratio");
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let unsampled = tap.next(Duration::from_secs(10)).await.expect("published");
    let (unsampled_trace, _, flags) = traceparent(&unsampled);
    assert_eq!(flags, "00");

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let (_, body) = contact_event("loc-ratio");
    let (_, signature) = app.ed.sign(&body);
    let status = post_with(&app, &body, &signature, &[("traceparent", &caller)]).await;
    assert_eq!(status, 200);
    let sampled = tap.next(Duration::from_secs(10)).await.expect("published");
    let (trace, span, flags) = traceparent(&sampled);
    assert_eq!((trace.as_str(), flags.as_str()), (caller_trace, "01"));
    let spans = collector
        .wait_until(|s| s.iter().any(|x| x.name == "publish"))
        .await;
    let webhook = named(&spans, caller_trace, "webhook");
    assert_eq!(webhook.parent, "00f067aa0ba902b7");
    assert_eq!(named(&spans, caller_trace, "publish").span_id, span);
    assert!(spans.iter().all(|s| s.trace_id != unsampled_trace));
    tap.cleanup(&app.exchange).await;
}
