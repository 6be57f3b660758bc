//! What `GET /v1/health` answers, made from one [`Snapshot`].

use serde::Serialize;
use serde_json::{Map, Value};

use super::clock::rfc3339;
use super::judge::{volume_threshold, HIGHLEVEL_RATIO, HIGHLEVEL_VOLUME};
use super::tally::Attempt;
use super::watch::{Snapshot, Window};

#[derive(Debug, Serialize)]
pub struct Report {
    pub status: &'static str,
    pub windows: Map<String, Value>,
    pub rule: Rule,
    pub last_accepted_at: Option<String>,
    pub silence: SilenceView,
    pub signature_failures: SignatureView,
    pub broker: BrokerView,
    pub store: &'static str,
    pub outbox: OutboxView,
    pub tenants: TenantsView,
    /// The alerts whose last change sent was not a recovery.
    pub alerts: Vec<ActiveAlert>,
    /// The first minute counted in this data dir: a window reaching further back is partial.
    pub counting_since: Option<String>,
    /// When the counts were last saved to disk (what a crash keeps).
    pub counts_saved_at: Option<String>,
}

/// What the windows are judged by.
#[derive(Debug, Serialize)]
pub struct Rule {
    pub warn: f64,
    pub critical: f64,
    pub highlevel_ratio: f64,
    pub highlevel_volume: u64,
}

#[derive(Debug, Serialize)]
pub struct WindowView {
    pub attempts: u64,
    pub succeeded: u64,
    pub accepted: u64,
    pub duplicate: u64,
    /// Every failing outcome, zeros included.
    pub failed: Map<String, Value>,
    /// `null` without attempts.
    pub success_ratio: Option<f64>,
    /// Judged only past this many attempts (HighLevel's 10 000 over 72 h, at the same rate).
    pub volume_threshold: u64,
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SilenceView {
    /// False when `HLGATE_ALERT_SILENCE` is 0.
    pub watched: bool,
    pub silent: bool,
    pub after_seconds: Option<u64>,
    /// Since the last accepted event (`null`: none accepted yet).
    pub quiet_seconds: Option<u64>,
    pub days_with_traffic: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct SignatureView {
    pub window_seconds: u64,
    pub failures: u64,
    pub attempts: u64,
    pub burst: bool,
}

#[derive(Debug, Serialize)]
pub struct BrokerView {
    pub state: &'static str,
    pub down_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct OutboxView {
    pub depth: u64,
    pub oldest_pending_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct TenantsView {
    pub needs_reauth: u64,
    /// Tenants by token state, every state named.
    pub by_state: Map<String, Value>,
    /// Tenants with a delivery on record.
    pub seen: usize,
}

#[derive(Debug, Serialize)]
pub struct ActiveAlert {
    pub alert: &'static str,
    pub state: &'static str,
    pub since: String,
}

fn window(w: &Window) -> WindowView {
    let t = &w.totals;
    WindowView {
        attempts: t.attempts(),
        succeeded: t.succeeded(),
        accepted: t.of(Attempt::Accepted),
        duplicate: t.of(Attempt::Duplicate),
        failed: t
            .failed()
            .map(|(a, n)| (a.as_str().to_string(), n.into()))
            .collect(),
        success_ratio: t.success_ratio(),
        volume_threshold: volume_threshold(w.span),
        status: w.status.as_str(),
    }
}

/// What the rest of the report needs beyond the snapshot.
pub struct Extras {
    pub signature_window_seconds: u64,
    pub silence_after_seconds: Option<u64>,
    pub tenants_seen: usize,
    pub alerts: Vec<ActiveAlert>,
    pub counting_since_ms: Option<u64>,
    pub saved_at_ms: Option<u64>,
}

impl Report {
    pub fn new(s: &Snapshot, extras: Extras) -> Report {
        let c = &s.conditions;
        let windows = s
            .windows
            .iter()
            .map(|w| {
                let view = serde_json::to_value(window(w)).expect("plain fields");
                (w.name.to_string(), view)
            })
            .collect();
        Report {
            status: s.status().as_str(),
            windows,
            rule: Rule {
                warn: s.margins.warn,
                critical: s.margins.critical,
                highlevel_ratio: HIGHLEVEL_RATIO,
                highlevel_volume: HIGHLEVEL_VOLUME,
            },
            last_accepted_at: s.last_accepted_ms.map(rfc3339),
            silence: SilenceView {
                watched: s.silence.is_some(),
                silent: s.silence.is_some_and(|x| x.silent()),
                after_seconds: extras.silence_after_seconds,
                quiet_seconds: s
                    .last_accepted_ms
                    .map(|ms| s.now_ms.saturating_sub(ms) / 1000),
                days_with_traffic: s.silence.map(|x| x.days_with_traffic),
            },
            signature_failures: SignatureView {
                window_seconds: extras.signature_window_seconds,
                failures: s.signature.signature_failures(),
                attempts: s.signature.attempts(),
                burst: s.burst,
            },
            broker: BrokerView {
                state: c.broker.as_str(),
                down_seconds: s.broker_down_ms.map(|ms| ms / 1000),
            },
            store: c.store.as_str(),
            outbox: OutboxView {
                depth: c.outbox_depth,
                oldest_pending_seconds: c.outbox_oldest_seconds,
            },
            tenants: TenantsView {
                needs_reauth: c.needs_reauth,
                by_state: c
                    .tenant_states
                    .iter()
                    .map(|(state, n)| (state.to_string(), (*n).into()))
                    .collect(),
                seen: extras.tenants_seen,
            },
            alerts: extras.alerts,
            counting_since: extras.counting_since_ms.map(rfc3339),
            counts_saved_at: extras.saved_at_ms.map(rfc3339),
        }
    }
}
