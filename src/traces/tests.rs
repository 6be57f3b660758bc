use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::data::hex;
use super::*;
use crate::metrics::{Gauges, Metrics};

/// A tracer whose spans land in a queue of `capacity` the test reads.
fn tracer(ratio: f64, capacity: usize) -> (Tracer, mpsc::Receiver<SpanData>, Arc<Metrics>) {
    let (queue, receiver) = mpsc::channel(capacity);
    let metrics = Arc::new(Metrics::default());
    let shared = Shared {
        queue,
        threshold: threshold(ratio),
        metrics: metrics.clone(),
        exporter: export::Handle::none(),
    };
    let tracer = Tracer {
        shared: Some(Arc::new(shared)),
    };
    (tracer, receiver, metrics)
}

#[test]
fn traceparent_round_trips() {
    let c = SpanContext::random(true);
    let text = c.traceparent();
    assert_eq!(text.len(), 55);
    assert!(text.starts_with("00-") && text.ends_with("-01"), "{text}");
    assert_eq!(SpanContext::from_traceparent(&text), Some(c));
    let unsampled = SpanContext::random(false);
    assert!(unsampled.traceparent().ends_with("-00"));
    assert_eq!(
        SpanContext::from_traceparent(&unsampled.traceparent()),
        Some(unsampled)
    );
}

#[test]
fn traceparent_reads_the_w3c_example_and_refuses_what_it_must() {
    let example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let c = SpanContext::from_traceparent(example).unwrap();
    assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&c.span_id), "00f067aa0ba902b7");
    assert!(c.sampled);
    // A later version may add fields: its version-00 prefix is read.
    let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-whatever";
    assert!(SpanContext::from_traceparent(later).unwrap().sampled);
    for bad in [
        "",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(SpanContext::from_traceparent(bad), None, "{bad}");
    }
}

#[test]
fn off_makes_empty_spans_and_reads_no_header() {
    let tracer = Tracer::off();
    let span = tracer.span("webhook", Kind::Server, None);
    assert_eq!(span.context(), None);
    assert!(!span.is_recording());
    assert_eq!(span.child("verify", Kind::Internal).context(), None);
    let mut asked = false;
    let parent = tracer.incoming(|| {
        asked = true;
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())
    });
    assert_eq!(parent, None);
    assert!(!asked);
}

#[tokio::test]
async fn a_child_links_to_its_parent_and_both_reach_the_queue() {
    let (tracer, mut spans, _) = tracer(1.0, 16);
    let started = Instant::now();
    let mut root = tracer.span_since("webhook", Kind::Server, None, started);
    root.set("hlgate.tenant", "loc-1");
    let mut child = root.child("verify", Kind::Internal);
    child.fail("invalid signature");
    let (root_ctx, child_ctx) = (root.context().unwrap(), child.context().unwrap());
    child.end();
    root.child_between("dedup", started, started + Duration::from_millis(5));
    root.end();
    let verify = spans.recv().await.unwrap();
    let dedup = spans.recv().await.unwrap();
    let webhook = spans.recv().await.unwrap();
    assert_eq!(verify.name, "verify");
    assert_eq!(verify.context, child_ctx);
    assert_eq!(verify.parent, Some(root_ctx.span_id));
    assert_eq!(verify.context.trace_id, root_ctx.trace_id);
    assert_eq!(verify.error, Some("invalid signature"));
    assert_eq!(dedup.parent, Some(root_ctx.span_id));
    assert!(dedup.end_ns >= dedup.start_ns);
    assert!(dedup.end_ns - dedup.start_ns >= 4_000_000, "{dedup:?}");
    assert_eq!(webhook.parent, None);
    assert_eq!(webhook.kind, Kind::Server);
    assert_eq!(
        webhook.attributes,
        vec![("hlgate.tenant", Value::from("loc-1"))]
    );
    assert!(webhook.end_ns >= webhook.start_ns);
}

#[tokio::test]
async fn sampling_decides_at_the_root_and_children_follow() {
    let (never, mut spans, _) = tracer(0.0, 16);
    for _ in 0..50 {
        let root = never.span("webhook", Kind::Server, None);
        let ctx = root.context().expect("a context to propagate");
        assert!(!ctx.sampled && !root.is_recording());
        let child = root.child("verify", Kind::Internal);
        assert_eq!(child.context().unwrap().trace_id, ctx.trace_id);
        assert!(!child.is_recording());
    }
    // A caller's sampled trace is recorded even at ratio 0.
    let caller = SpanContext::random(true);
    let continued = never.span("proxy", Kind::Server, Some(caller));
    assert!(continued.is_recording());
    drop(continued);
    assert_eq!(spans.recv().await.unwrap().parent, Some(caller.span_id));
    assert!(spans.try_recv().is_err());

    let (half, _spans, _) = tracer(0.5, 16);
    let sampled = (0..2000)
        .filter(|_| half.span("webhook", Kind::Server, None).is_recording())
        .count();
    assert!((800..1200).contains(&sampled), "{sampled} of 2000 at 0.5");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let (tracer, _spans, metrics) = tracer(1.0, 2);
    for _ in 0..5 {
        tracer.span("publish", Kind::Producer, None).end();
    }
    let text = metrics.render(&Gauges::default());
    assert!(
        text.contains("hlgate_otlp_spans_dropped_total{reason=\"queue_full\"} 3"),
        "{text}"
    );
}

#[test]
fn the_endpoint_gets_the_traces_path_once() {
    use export::traces_url;
    assert_eq!(
        traces_url("http://c:4318"),
        "http://c:4318/v1/traces".to_string()
    );
    assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    assert_eq!(
        traces_url("https://c/otlp/v1/traces"),
        "https://c/otlp/v1/traces"
    );
}
