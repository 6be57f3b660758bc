//! One look at delivery health: the windows judged, silence, the signature-failure share, and
//! what the rest of the gateway reports (broker, store, outbox, tenants); and the reading of
//! each alert's condition from it.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::alerts::{Kind, Reading};
use super::clock::rfc3339;
use super::judge::{self, Margins, Silence, Status, HIGHLEVEL_RATIO, HIGHLEVEL_VOLUME, WINDOWS};
use super::minutes::{Minutes, Totals};
use crate::config::AlertSettings;
use crate::metrics::{BrokerState, Metrics};
use crate::oauth::TokenService;
use crate::store::Store;

/// What the rest of the gateway says, read once per look.
#[derive(Clone, Debug)]
pub struct Conditions {
    pub outbox_depth: u64,
    pub outbox_oldest_seconds: f64,
    pub broker: BrokerState,
    pub store: StoreCondition,
    pub needs_reauth: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCondition {
    Ok,
    Unwritable,
    Damaged,
}

impl StoreCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreCondition::Ok => "ok",
            StoreCondition::Unwritable => "unwritable",
            StoreCondition::Damaged => "damaged",
        }
    }
}

impl Conditions {
    /// Reads them; the outbox's oldest entry may be read from disk, so call it off the async
    /// threads.
    pub fn read(store: &Store, metrics: &Metrics, tokens: &TokenService) -> Conditions {
        let (outbox_depth, outbox_oldest_seconds) = store.outbox_state();
        let store = if !store.damage().is_empty() {
            StoreCondition::Damaged
        } else if !store.writable() {
            StoreCondition::Unwritable
        } else {
            StoreCondition::Ok
        };
        let needs_reauth = tokens
            .state_counts()
            .into_iter()
            .find(|(state, _)| *state == "needs_reauth")
            .map_or(0, |(_, n)| n);
        Conditions {
            outbox_depth,
            outbox_oldest_seconds,
            broker: metrics.broker(),
            store,
            needs_reauth,
        }
    }
}

/// One window, judged.
#[derive(Debug)]
pub struct Window {
    pub name: &'static str,
    pub span: Duration,
    pub totals: Totals,
    pub status: Status,
}

/// Everything one look found.
#[derive(Debug)]
pub struct Snapshot {
    pub now_ms: u64,
    pub windows: Vec<Window>,
    pub margins: Margins,
    pub last_accepted_ms: Option<u64>,
    /// `None` when silence is not watched.
    pub silence: Option<Silence>,
    pub signature: Totals,
    pub burst: bool,
    /// How long the broker has not been connected; `None` while it is.
    pub broker_down_ms: Option<u64>,
    pub conditions: Conditions,
}

impl Snapshot {
    pub fn take(
        now_ms: u64,
        minutes: &Minutes,
        last_accepted_ms: Option<u64>,
        broker_down_ms: Option<u64>,
        conditions: Conditions,
        settings: &AlertSettings,
    ) -> Snapshot {
        let margins = Margins {
            warn: settings.success_warn,
            critical: settings.success_critical,
        };
        let totals = |span| {
            let (first, last) = judge::span_minutes(now_ms, span);
            minutes.totals(first, last)
        };
        let windows = WINDOWS
            .iter()
            .map(|(name, span)| {
                let totals = totals(*span);
                let status = judge::judge(&totals, *span, margins);
                Window {
                    name,
                    span: *span,
                    totals,
                    status,
                }
            })
            .collect();
        let silence = settings
            .silence
            .map(|length| judge::silence(now_ms, last_accepted_ms, length, minutes));
        let signature = totals(settings.signature_window);
        Snapshot {
            now_ms,
            windows,
            margins,
            last_accepted_ms,
            silence,
            burst: judge::signature_burst(&signature, settings.signature_share),
            signature,
            broker_down_ms,
            conditions,
        }
    }

    /// The worst window; of equals, the longest (HighLevel's own).
    pub fn worst(&self) -> &Window {
        // `max_by_key` keeps the last of equals: the windows run from the shortest.
        self.windows
            .iter()
            .max_by_key(|w| w.status)
            .expect("windows")
    }

    /// The worst window's status, and at least `warning` while silent.
    pub fn status(&self) -> Status {
        let silent = self.silence.is_some_and(|s| s.silent());
        let floor = if silent { Status::Warning } else { Status::Ok };
        self.worst().status.max(floor)
    }

    /// Each alert's condition, in [`Kind::ALL`] order.
    pub fn readings(&self, settings: &AlertSettings) -> Vec<Reading> {
        vec![
            self.success(),
            self.silence_reading(settings),
            self.signature_reading(settings),
            self.outbox_reading(settings),
            self.broker_reading(settings),
            self.store_reading(),
            self.needs_reauth_reading(),
        ]
    }

    fn success(&self) -> Reading {
        let w = self.worst();
        let t = &w.totals;
        let ratio = t
            .success_ratio()
            .map_or("no".into(), |r| format!("{:.1}%", r * 100.0));
        let failed: Map<String, Value> = t
            .failed()
            .filter(|(_, n)| *n > 0)
            .map(|(a, n)| (a.as_str().to_string(), n.into()))
            .collect();
        Reading {
            kind: Kind::Success,
            level: w.status as u64,
            summary: format!(
                "{ratio} of {} deliveries over {} answered 2xx (warning below {}%, critical below \
                 {}%; HighLevel pauses a webhook URL under {}% over 72h past {HIGHLEVEL_VOLUME})",
                t.attempts(),
                w.name,
                self.margins.warn * 100.0,
                self.margins.critical * 100.0,
                HIGHLEVEL_RATIO * 100.0,
            ),
            details: json!({
                "window": w.name,
                "attempts": t.attempts(),
                "succeeded": t.succeeded(),
                "success_ratio": t.success_ratio(),
                "failed": failed,
                "warn": self.margins.warn,
                "critical": self.margins.critical,
            }),
        }
    }

    fn silence_reading(&self, settings: &AlertSettings) -> Reading {
        let silent = self.silence.is_some_and(|s| s.silent());
        let last = self.last_accepted_ms.map(rfc3339);
        let summary =
            match (silent, &last) {
                (true, _) => format!(
                "no event accepted for {} (last: {}) while the same hours had traffic on {} of \
                 the {} days before; a paused webhook URL looks like this",
                for_humans(self.now_ms.saturating_sub(self.last_accepted_ms.unwrap_or(0))),
                last.as_deref().unwrap_or("never"),
                self.silence.map_or(0, |s| s.days_with_traffic),
                judge::SILENCE_DAYS,
            ),
                (false, Some(last)) => format!("events are accepted again (last: {last})"),
                (false, None) => "no silence".into(),
            };
        Reading {
            kind: Kind::Silence,
            level: silent.into(),
            summary,
            details: json!({
                "last_accepted_at": last,
                "after_seconds": settings.silence.map(|d| d.as_secs()),
                "days_with_traffic": self.silence.map(|s| s.days_with_traffic),
            }),
        }
    }

    fn signature_reading(&self, settings: &AlertSettings) -> Reading {
        let (failures, attempts) = (
            self.signature.signature_failures(),
            self.signature.attempts(),
        );
        let window = for_humans(settings.signature_window.as_millis() as u64);
        Reading {
            kind: Kind::SignatureFailures,
            level: self.burst.into(),
            summary: format!(
                "{failures} of {attempts} deliveries over the last {window} failed their \
                 signature check (alert at {}%: a key rotation, or the wrong keys configured?)",
                settings.signature_share * 100.0
            ),
            details: json!({
                "window_seconds": settings.signature_window.as_secs(),
                "failures": failures,
                "attempts": attempts,
                "share": settings.signature_share,
            }),
        }
    }

    fn outbox_reading(&self, settings: &AlertSettings) -> Reading {
        let c = &self.conditions;
        let age = Duration::from_secs_f64(c.outbox_oldest_seconds.max(0.0));
        let late = settings.outbox_age.is_some_and(|limit| age >= limit);
        Reading {
            kind: Kind::OutboxAge,
            level: late.into(),
            summary: format!(
                "the oldest unpublished event is {} old ({} wait; alert past {})",
                for_humans(age.as_millis() as u64),
                c.outbox_depth,
                settings
                    .outbox_age
                    .map_or("never".into(), |d| for_humans(d.as_millis() as u64)),
            ),
            details: json!({
                "oldest_pending_seconds": c.outbox_oldest_seconds,
                "depth": c.outbox_depth,
                "limit_seconds": settings.outbox_age.map(|d| d.as_secs()),
            }),
        }
    }

    fn broker_reading(&self, settings: &AlertSettings) -> Reading {
        let down = self.broker_down_ms;
        let limit = settings.broker_down.map(|d| d.as_millis() as u64);
        let long = matches!((down, limit), (Some(down), Some(limit)) if down >= limit);
        let state = self.conditions.broker.as_str();
        let summary = match down {
            Some(ms) => format!("RabbitMQ has been {state} for {}", for_humans(ms)),
            None => "RabbitMQ is connected".into(),
        };
        Reading {
            kind: Kind::BrokerDisconnected,
            level: long.into(),
            summary,
            details: json!({
                "broker": state,
                "down_seconds": down.map(|ms| ms / 1000),
                "limit_seconds": settings.broker_down.map(|d| d.as_secs()),
            }),
        }
    }

    fn store_reading(&self) -> Reading {
        let store = self.conditions.store;
        let (level, summary) = match store {
            StoreCondition::Ok => (0, "the store is writable and accounts for every event"),
            StoreCondition::Unwritable => (1, "the store cannot write: new events get 429"),
            StoreCondition::Damaged => (
                2,
                "the store is missing events no operator accepted as lost (hlgate store check)",
            ),
        };
        Reading {
            kind: Kind::Store,
            level,
            summary: summary.into(),
            details: json!({ "store": store.as_str() }),
        }
    }

    fn needs_reauth_reading(&self) -> Reading {
        let n = self.conditions.needs_reauth;
        Reading {
            kind: Kind::NeedsReauth,
            level: n,
            summary: format!(
                "{n} tenant(s) need the app installed again (GET /v1/tenants?state=needs_reauth)"
            ),
            details: json!({ "needs_reauth": n }),
        }
    }
}

/// `2h 5m`, `31m`, `45s`.
pub fn for_humans(ms: u64) -> String {
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h {m}m"),
    }
}
