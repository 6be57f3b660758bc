//! The OTLP/HTTP exporter: spans from the bounded queue, sent in batches (protobuf, `POST
//! …/v1/traces`) by a task of its own. A batch that cannot be sent is dropped and counted,
//! never retried: holding spans for a collector that is away would grow memory, and a trace is
//! for looking, not for keeping. After a failure the exporter pauses (with backoff) while the
//! queue fills; what does not fit is dropped and counted too. Nothing here waits on the spans'
//! producers, or they on it.
//!
//! Besides the CLI, the HighLevel client and the alert sender, this is the one file that names
//! reqwest: the collector is not HighLevel, and this file sends nothing else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::data::SpanData;
use super::otlp;
use crate::backoff::Backoff;
use crate::loglimit::LogLimit;
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Spans waiting for the exporter; past this many, new ones are dropped.
pub const QUEUED: usize = 4096;
/// Spans in one request at most.
const BATCH: usize = 512;
/// How long a batch that is not full waits for more.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed export, growing while failures go on.
const PAUSE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Why spans were dropped (`hlgate_otlp_spans_dropped_total{reason}`).
pub const QUEUE_FULL: &str = "queue_full";
pub const EXPORT_FAILED: &str = "export_failed";
/// Ended after the exporter stopped (the last moments of a shutdown).
pub const STOPPED: &str = "stopped";

static FAILURES: LogLimit = LogLimit::new(Duration::from_secs(60));

/// Stops the exporter.
pub struct Handle {
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// A handle on no exporter, for tests that read the queue themselves.
    #[cfg(test)]
    pub(super) fn none() -> Handle {
        Handle {
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    /// Asks the exporter to send what is queued and stop; waits for it at most `within`.
    pub async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        let task = self.task.lock().expect("exporter task").take();
        match task {
            Some(task) => tokio::time::timeout(within, task).await.is_ok(),
            None => true,
        }
    }
}

/// Where spans go, and the headers a collector may want (an API key: secret).
struct Exporter {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, Secret)>,
    metrics: Arc<Metrics>,
}

/// `endpoint` as given when it ends in `/v1/traces`, else that path appended (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Starts the exporter on the current runtime.
pub(super) fn spawn(
    endpoint: &str,
    headers: &[(String, Secret)],
    receiver: mpsc::Receiver<SpanData>,
    metrics: Arc<Metrics>,
) -> Handle {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .build()
        .expect("an HTTP client with timeouts");
    let exporter = Exporter {
        client,
        url: traces_url(endpoint),
        headers: headers.to_vec(),
        metrics,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(exporter.run(receiver, stop.clone()));
    Handle {
        stop,
        task: Mutex::new(Some(task)),
    }
}

impl Exporter {
    async fn run(self, mut receiver: mpsc::Receiver<SpanData>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut backoff = Backoff::new(PAUSE.0, PAUSE.1);
        let mut failing = false;
        while !stop.is_cancelled() {
            if !self.gather(&mut receiver, &mut batch, &stop).await {
                break;
            }
            let sent = tokio::select! {
                sent = self.send(&batch) => sent,
                () = stop.cancelled() => false,
            };
            self.settle(&mut batch, sent);
            failing = !sent;
            if failing {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = stop.cancelled() => {}
                }
            } else {
                backoff.reset();
            }
        }
        // The last spans (the shutdown's own requests and publishes), once, unless the
        // collector was failing: then they would only hold the stop.
        receiver.close();
        while let Ok(span) = receiver.try_recv() {
            batch.push(span);
        }
        for chunk in batch.chunks(BATCH) {
            let sent = !failing && self.send(chunk).await;
            self.count(chunk.len(), sent);
        }
    }

    /// Waits for a first span, then for more until the batch is full or [`FLUSH_EVERY`] has
    /// passed; false when the queue closed or the stop came with nothing gathered.
    async fn gather(
        &self,
        receiver: &mut mpsc::Receiver<SpanData>,
        batch: &mut Vec<SpanData>,
        stop: &CancellationToken,
    ) -> bool {
        tokio::select! {
            n = receiver.recv_many(batch, BATCH) => if n == 0 { return false },
            () = stop.cancelled() => return false,
        }
        let deadline = Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            tokio::select! {
                n = receiver.recv_many(batch, BATCH - batch.len()) => if n == 0 { break },
                () = tokio::time::sleep_until(deadline) => break,
                () = stop.cancelled() => break,
            }
        }
        true
    }

    fn settle(&self, batch: &mut Vec<SpanData>, sent: bool) {
        self.count(batch.len(), sent);
        batch.clear();
    }

    fn count(&self, n: usize, sent: bool) {
        if sent {
            self.metrics.otlp_exported(n as u64);
        } else {
            self.metrics.otlp_dropped(EXPORT_FAILED, n as u64);
        }
    }

    /// One POST; true on a 2xx. Failures are logged once a minute, without the URL (whose
    /// query or path may carry a key).
    async fn send(&self, spans: &[SpanData]) -> bool {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(otlp::encode(spans));
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.expose());
        }
        let why = match request.send().await {
            Ok(r) if r.status().is_success() => {
                debug!(spans = spans.len(), "spans exported");
                return true;
            }
            Ok(r) => format!("the collector answered {}", r.status().as_u16()),
            Err(e) => e.without_url().to_string(),
        };
        if let Some(held_back) = FAILURES.admit("export") {
            warn!(error = %why, spans = spans.len(), held_back,
                "spans could not be exported; they are dropped");
        }
        false
    }
}
