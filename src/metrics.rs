//! Prometheus metrics: lock-free counters and histograms, rendered as text on scrape.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How a webhook request ended (`hlgate_webhooks_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    Accepted,
    Duplicate,
    InvalidSignature,
    MissingSignature,
    StaleTimestamp,
    TooLarge,
    Overloaded,
    BodyTimeout,
    /// The body could not be read (400): mostly a connection broken on the way.
    Unreadable,
}

impl WebhookOutcome {
    const ALL: [WebhookOutcome; 9] = [
        WebhookOutcome::Accepted,
        WebhookOutcome::Duplicate,
        WebhookOutcome::InvalidSignature,
        WebhookOutcome::MissingSignature,
        WebhookOutcome::StaleTimestamp,
        WebhookOutcome::TooLarge,
        WebhookOutcome::Overloaded,
        WebhookOutcome::BodyTimeout,
        WebhookOutcome::Unreadable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::InvalidSignature => "invalid_signature",
            WebhookOutcome::MissingSignature => "missing_signature",
            WebhookOutcome::StaleTimestamp => "stale_timestamp",
            WebhookOutcome::TooLarge => "too_large",
            WebhookOutcome::Overloaded => "overloaded",
            WebhookOutcome::BodyTimeout => "body_timeout",
            WebhookOutcome::Unreadable => "unreadable",
        }
    }
}

/// The link to RabbitMQ as readiness and `hlgate_broker_state` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerState {
    Disconnected,
    Connected,
    /// The broker blocks publishers (a memory or disk alarm): the relay waits on the same
    /// connection, since a new one would be blocked too.
    Blocked,
    /// The broker refuses every publish to the exchange (missing, or no write permission).
    Refused,
}

impl BrokerState {
    pub const ALL: [BrokerState; 4] = [
        BrokerState::Disconnected,
        BrokerState::Connected,
        BrokerState::Blocked,
        BrokerState::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Disconnected => "disconnected",
            BrokerState::Connected => "connected",
            BrokerState::Blocked => "blocked",
            BrokerState::Refused => "refused",
        }
    }
}

/// How a publish ended (`hlgate_publish_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishResult {
    Ack,
    Nack,
    Error,
    /// Refused by the broker for itself, and diverted to `highlevel.quarantine`.
    Quarantined,
}

const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0,
];

/// A fixed-bucket histogram of seconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric hlgate exports.
#[derive(Default)]
pub struct Metrics {
    webhooks: [AtomicU64; WebhookOutcome::ALL.len()],
    pub signature_fallback: AtomicU64,
    publish: [AtomicU64; 4],
    pub publish_seconds: Histogram,
    pub ingest_seconds: Histogram,
    /// The link to RabbitMQ ([`BrokerState`]).
    broker: AtomicU8,
    /// Entries the broker nacked, waiting to be retried.
    publish_refused: AtomicU64,
    /// Connections to the broker opened.
    pub broker_connections: AtomicU64,
    schema: [AtomicU64; 3],
    token_refresh: Mutex<BTreeMap<&'static str, u64>>,
    api_requests: Mutex<BTreeMap<&'static str, u64>>,
    /// Time proxied requests waited for their tenant's rate budget.
    pub api_wait_seconds: Histogram,
    /// Time HighLevel took to answer proxied requests (headers), retries included.
    pub api_upstream_seconds: Histogram,
    /// Alerts fired, by alert and state.
    alerts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Alert webhook deliveries, by result.
    alert_deliveries: Mutex<BTreeMap<&'static str, u64>>,
    /// Spans sent to the OTLP collector, and dropped by reason ([`OTLP_DROP_REASONS`]).
    otlp_exported: AtomicU64,
    otlp_dropped: [AtomicU64; OTLP_DROP_REASONS.len()],
}

/// Why spans are dropped: the exporter's queue was full, the collector could not take a batch,
/// or the exporter had stopped.
pub const OTLP_DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "stopped"];

/// Values read from elsewhere at scrape time.
#[derive(Default)]
pub struct Gauges {
    pub outbox_depth: u64,
    pub outbox_oldest_seconds: f64,
    /// Event buckets with their database open, and closed.
    pub buckets_open: u64,
    pub buckets_closed: u64,
    /// The start found events it cannot account for, not yet accepted.
    pub store_damaged: bool,
    /// A failed fsync stopped the event log until a restart.
    pub store_stopped: bool,
    /// New events can be stored (disk room, last write fine).
    pub store_writable: bool,
    /// The last accepted event's time (unix seconds), when one was.
    pub last_accepted_seconds: Option<f64>,
    pub tenants: Vec<(&'static str, u64)>,
}

impl Metrics {
    pub fn set_broker(&self, state: BrokerState) {
        self.broker.store(state as u8, Ordering::Relaxed);
    }

    pub fn set_refused(&self, entries: u64) {
        self.publish_refused.store(entries, Ordering::Relaxed);
    }

    pub fn broker(&self) -> BrokerState {
        BrokerState::ALL[usize::from(self.broker.load(Ordering::Relaxed)).min(3)]
    }

    pub fn webhook(&self, outcome: WebhookOutcome) {
        let i = WebhookOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .expect("listed");
        self.webhooks[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn publish(&self, result: PublishResult, n: u64) {
        self.publish[result as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn schema(&self, outcome: crate::schema::Outcome) {
        self.schema[outcome.to_u8() as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn token_refresh(&self, result: &'static str) {
        let mut map = self.token_refresh.lock().expect("metrics lock");
        *map.entry(result).or_default() += 1;
    }

    pub fn api_request(&self, outcome: &'static str) {
        let mut map = self.api_requests.lock().expect("metrics lock");
        *map.entry(outcome).or_default() += 1;
    }

    pub fn alert(&self, alert: &'static str, state: &'static str) {
        let mut map = self.alerts.lock().expect("metrics lock");
        *map.entry((alert, state)).or_default() += 1;
    }

    pub fn alert_delivery(&self, result: &'static str) {
        let mut map = self.alert_deliveries.lock().expect("metrics lock");
        *map.entry(result).or_default() += 1;
    }

    pub fn otlp_exported(&self, n: u64) {
        self.otlp_exported.fetch_add(n, Ordering::Relaxed);
    }

    /// Atomic: a full queue may drop a span per request.
    pub fn otlp_dropped(&self, reason: &str, n: u64) {
        if let Some(i) = OTLP_DROP_REASONS.iter().position(|r| *r == reason) {
            self.otlp_dropped[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        // A metric with one unlabelled value.
        let single = |out: &mut String, kind: &str, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };

        counter(
            &mut out,
            "hlgate_webhooks_total",
            "Webhook requests by outcome.",
        );
        for (i, o) in WebhookOutcome::ALL.iter().enumerate() {
            let n = self.webhooks[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "hlgate_webhooks_total{{outcome=\"{}\"}} {n}",
                o.as_str()
            );
        }
        single(
            &mut out,
            "counter",
            "hlgate_signature_fallback_total",
            "Signatures that verified only over the compact re-serialisation.",
            self.signature_fallback.load(Ordering::Relaxed),
        );
        let batched = crate::verify::batch::counts();
        for (name, help, n) in [
            (
                "hlgate_signature_batches_total",
                "Ed25519 batches verified (signatures of requests that arrived together).",
                batched.batches,
            ),
            (
                "hlgate_signature_batched_total",
                "Signatures in those batches.",
                batched.signatures,
            ),
            (
                "hlgate_signature_batches_failed_total",
                "Batches that did not hold; their signatures were checked one by one.",
                batched.failed,
            ),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {n}");
        }
        gauge(
            &mut out,
            "hlgate_outbox_depth",
            "Events stored but not yet confirmed by RabbitMQ.",
        );
        let _ = writeln!(out, "hlgate_outbox_depth {}", gauges.outbox_depth);
        gauge(
            &mut out,
            "hlgate_outbox_oldest_seconds",
            "Age of the oldest unpublished event.",
        );
        let _ = writeln!(
            out,
            "hlgate_outbox_oldest_seconds {}",
            gauges.outbox_oldest_seconds
        );
        gauge(
            &mut out,
            "hlgate_store_buckets",
            "Event buckets on disk, by whether their database is open (held in memory).",
        );
        for (state, n) in [
            ("open", gauges.buckets_open),
            ("closed", gauges.buckets_closed),
        ] {
            let _ = writeln!(out, "hlgate_store_buckets{{state=\"{state}\"}} {n}");
        }
        gauge(
            &mut out,
            "hlgate_store_damaged",
            "1 while the store misses events that no operator accepted as lost.",
        );
        let _ = writeln!(
            out,
            "hlgate_store_damaged {}",
            u8::from(gauges.store_damaged)
        );
        gauge(
            &mut out,
            "hlgate_store_writer_stopped",
            "1 after a failed fsync stopped the event log: nothing is stored until a restart.",
        );
        let _ = writeln!(
            out,
            "hlgate_store_writer_stopped {}",
            u8::from(gauges.store_stopped)
        );
        single(
            &mut out,
            "gauge",
            "hlgate_store_writable",
            "1 while new events can be stored (disk room, last write fine).",
            u64::from(gauges.store_writable),
        );
        if let Some(seconds) = gauges.last_accepted_seconds {
            gauge(
                &mut out,
                "hlgate_last_accepted_timestamp_seconds",
                "When the last event was accepted (unix seconds).",
            );
            let _ = writeln!(out, "hlgate_last_accepted_timestamp_seconds {seconds}");
        }
        counter(
            &mut out,
            "hlgate_publish_total",
            "Publishes by broker answer.",
        );
        for (i, r) in ["ack", "nack", "error", "quarantined"].iter().enumerate() {
            let n = self.publish[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "hlgate_publish_total{{result=\"{r}\"}} {n}");
        }
        single(
            &mut out,
            "gauge",
            "hlgate_publish_refused",
            "Entries RabbitMQ nacked, waiting to be retried on their own.",
            self.publish_refused.load(Ordering::Relaxed),
        );
        self.publish_seconds.render(
            &mut out,
            "hlgate_publish_seconds",
            "Time from acceptance to broker confirm.",
        );
        self.ingest_seconds.render(
            &mut out,
            "hlgate_ingest_seconds",
            "Time from request to 2xx answer.",
        );
        let broker = self.broker();
        single(
            &mut out,
            "gauge",
            "hlgate_broker_connected",
            "1 while connected to RabbitMQ.",
            u64::from(broker == BrokerState::Connected),
        );
        single(
            &mut out,
            "counter",
            "hlgate_broker_connections_total",
            "Connections to RabbitMQ opened.",
            self.broker_connections.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "hlgate_broker_state",
            "1 for the link's state: connected, disconnected, blocked (alarm) or refused (exchange).",
        );
        for state in BrokerState::ALL {
            let _ = writeln!(
                out,
                "hlgate_broker_state{{state=\"{}\"}} {}",
                state.as_str(),
                u8::from(broker == state)
            );
        }
        counter(
            &mut out,
            "hlgate_schema_total",
            "Published events by schema outcome.",
        );
        for (i, o) in ["unknown", "valid", "invalid"].iter().enumerate() {
            let n = self.schema[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "hlgate_schema_total{{outcome=\"{o}\"}} {n}");
        }
        counter(
            &mut out,
            "hlgate_token_refresh_total",
            "Token refreshes by result.",
        );
        for (result, n) in self.token_refresh.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "hlgate_token_refresh_total{{result=\"{result}\"}} {n}");
        }
        counter(
            &mut out,
            "hlgate_api_requests_total",
            "Proxied HighLevel API requests by outcome.",
        );
        for (outcome, n) in self.api_requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "hlgate_api_requests_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        self.api_wait_seconds.render(
            &mut out,
            "hlgate_api_wait_seconds",
            "Time proxied requests waited for their tenant's rate budget.",
        );
        self.api_upstream_seconds.render(
            &mut out,
            "hlgate_api_upstream_seconds",
            "Time HighLevel took to answer proxied requests.",
        );
        gauge(&mut out, "hlgate_tenants", "Tenants by token state.");
        for (state, n) in &gauges.tenants {
            let _ = writeln!(out, "hlgate_tenants{{state=\"{state}\"}} {n}");
        }
        counter(
            &mut out,
            "hlgate_alerts_total",
            "Alerts fired, by alert and state.",
        );
        for ((alert, state), n) in self.alerts.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "hlgate_alerts_total{{alert=\"{alert}\",state=\"{state}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "hlgate_alert_deliveries_total",
            "Alert webhook POSTs by result (sent, retried, failed, dropped).",
        );
        for (result, n) in self.alert_deliveries.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "hlgate_alert_deliveries_total{{result=\"{result}\"}} {n}"
            );
        }
        single(
            &mut out,
            "counter",
            "hlgate_otlp_spans_exported_total",
            "Spans the OTLP collector took.",
            self.otlp_exported.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "hlgate_otlp_spans_dropped_total",
            "Spans dropped: exporter queue full, export failed, or exporter stopped.",
        );
        for (i, reason) in OTLP_DROP_REASONS.iter().enumerate() {
            let n = self.otlp_dropped[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "hlgate_otlp_spans_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out
    }
}
