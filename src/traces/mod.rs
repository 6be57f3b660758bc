//! Traces: the spans of a webhook (verify, dedup, commit), of its publish (outbox to confirm)
//! and of a proxied API call (governor wait, upstream), exported over OTLP/HTTP when
//! `HLGATE_OTLP_ENDPOINT` is set, and the W3C `traceparent` a published message carries.
//!
//! Off, a [`Tracer`] holds nothing and every [`Span`] is empty: no clock read, no id, no
//! allocation. On, a sampled span is a small record handed to the exporter's bounded queue
//! when it ends ([`export`]); a full queue drops it, counted, so the hot path never waits.
//! Spans carry names, ids, times and the attributes set here (tenant, event type, outcome),
//! never a token, a signature or a body.

mod data;
pub mod export;
mod otlp;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::config::TraceSettings;
use crate::metrics::Metrics;
pub use data::{Kind, SpanContext, SpanData, Value};

/// What every span of a tracer that is on shares.
struct Shared {
    queue: mpsc::Sender<SpanData>,
    /// A root is sampled when the low 64 bits of its trace id are at most this.
    threshold: u64,
    metrics: Arc<Metrics>,
    exporter: export::Handle,
}

/// The handle spans start from; cheap to clone. [`Tracer::off`] when no endpoint is set.
#[derive(Clone, Default)]
pub struct Tracer {
    shared: Option<Arc<Shared>>,
}

/// The low 64 bits of the trace id against the ratio, as OpenTelemetry's `TraceIdRatioBased`
/// does, so that every hop sampling by the same ratio keeps the same traces.
fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        (ratio * u64::MAX as f64) as u64
    }
}

impl Tracer {
    /// No exporter, no spans.
    pub fn off() -> Tracer {
        Tracer::default()
    }

    /// Starts the exporter (on a task of its own, on the current runtime) when an endpoint is
    /// set; else [`Tracer::off`].
    pub fn start(settings: &TraceSettings, metrics: &Arc<Metrics>) -> Tracer {
        let Some(endpoint) = &settings.endpoint else {
            return Tracer::off();
        };
        let (queue, receiver) = mpsc::channel(export::QUEUED);
        let exporter = export::spawn(
            endpoint.expose(),
            &settings.headers,
            receiver,
            metrics.clone(),
        );
        Tracer {
            shared: Some(Arc::new(Shared {
                queue,
                threshold: threshold(settings.sample_ratio),
                metrics: metrics.clone(),
                exporter,
            })),
        }
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// A span starting now: a child of `parent` (sampled as it is), else the root of a new
    /// trace, sampled by the ratio.
    pub fn span(&self, name: &'static str, kind: Kind, parent: Option<SpanContext>) -> Span {
        self.span_since(name, kind, parent, Instant::now())
    }

    /// [`Tracer::span`] starting at `started`.
    pub fn span_since(
        &self,
        name: &'static str,
        kind: Kind,
        parent: Option<SpanContext>,
        started: Instant,
    ) -> Span {
        let Some(shared) = &self.shared else {
            return Span::default();
        };
        let context = match parent {
            Some(p) => p.child(),
            None => {
                let mut c = SpanContext::random(true);
                let low = u64::from_be_bytes(c.trace_id[8..].try_into().expect("8 bytes"));
                c.sampled = shared.threshold == u64::MAX || low < shared.threshold;
                c
            }
        };
        Span::started(shared, context, parent, name, kind, started)
    }

    /// Reads the `traceparent` a caller sent, only when traces are on: off, a request's
    /// headers are not even looked at.
    pub fn incoming(&self, header: impl FnOnce() -> Option<String>) -> Option<SpanContext> {
        self.shared.as_ref()?;
        header().as_deref().and_then(SpanContext::from_traceparent)
    }

    /// Sends what is queued and stops the exporter, within `within`; true when everything
    /// queued went out (or there was no exporter).
    pub async fn shutdown(&self, within: std::time::Duration) -> bool {
        match &self.shared {
            Some(shared) => shared.exporter.stop(within).await,
            None => true,
        }
    }
}

/// A recording span's record and where it goes when it ends.
struct Live {
    shared: Arc<Shared>,
    data: SpanData,
}

/// A span in progress; it ends (and is queued for export) when dropped or [`Span::end`]ed.
/// Empty when traces are off; without a record when its trace is not sampled (it still has a
/// context to propagate).
#[derive(Default)]
#[must_use = "a span ends when dropped"]
pub struct Span {
    context: Option<SpanContext>,
    live: Option<Box<Live>>,
}

/// Unix nanoseconds now.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Unix nanoseconds of a monotonic instant, taken against the clock now.
fn unix_ns(at: Instant) -> u64 {
    let now = Instant::now();
    match now.checked_duration_since(at) {
        Some(ago) => now_ns().saturating_sub(ago.as_nanos() as u64),
        None => now_ns() + at.duration_since(now).as_nanos() as u64,
    }
}

impl Span {
    fn started(
        shared: &Arc<Shared>,
        context: SpanContext,
        parent: Option<SpanContext>,
        name: &'static str,
        kind: Kind,
        started: Instant,
    ) -> Span {
        let live = context.sampled.then(|| {
            Box::new(Live {
                shared: shared.clone(),
                data: SpanData {
                    context,
                    parent: parent.map(|p| p.span_id),
                    name,
                    kind,
                    start_ns: unix_ns(started),
                    end_ns: 0,
                    attributes: Vec::new(),
                    error: None,
                },
            })
        });
        Span {
            context: Some(context),
            live,
        }
    }

    /// Its place in the trace; `None` when traces are off.
    pub fn context(&self) -> Option<SpanContext> {
        self.context
    }

    /// Recorded for export: attributes are worth computing.
    pub fn is_recording(&self) -> bool {
        self.live.is_some()
    }

    /// A child starting now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        self.child_since(name, kind, Instant::now())
    }

    /// A child starting at `started`.
    pub fn child_since(&self, name: &'static str, kind: Kind, started: Instant) -> Span {
        match (&self.live, self.context) {
            (Some(live), Some(parent)) => Span::started(
                &live.shared,
                parent.child(),
                Some(parent),
                name,
                kind,
                started,
            ),
            (None, Some(parent)) => Span {
                context: Some(parent.child()),
                live: None,
            },
            _ => Span::default(),
        }
    }

    /// A child that ran from `started` to `ended`, measured elsewhere (the store's writer).
    pub fn child_between(&self, name: &'static str, started: Instant, ended: Instant) {
        if self.live.is_some() {
            let mut child = self.child_since(name, Kind::Internal, started);
            if let Some(live) = &mut child.live {
                live.data.end_ns = unix_ns(ended).max(live.data.start_ns);
            }
        }
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(live) = &mut self.live {
            live.data.attributes.push((key, value.into()));
        }
    }

    /// Marks the operation failed, with a short fixed reason.
    pub fn fail(&mut self, why: &'static str) {
        if let Some(live) = &mut self.live {
            live.data.error = Some(why);
        }
    }

    /// Ends it now.
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some(live) = self.live.take() else { return };
        let Live { shared, mut data } = *live;
        if data.end_ns == 0 {
            data.end_ns = now_ns().max(data.start_ns);
        }
        let why = match shared.queue.try_send(data) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => export::QUEUE_FULL,
            Err(mpsc::error::TrySendError::Closed(_)) => export::STOPPED,
        };
        shared.metrics.otlp_dropped(why, 1);
    }
}

#[cfg(test)]
mod tests;
