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
    /// Tenants by token state, every state named.
    pub tenant_states: Vec<(&'static str, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCondition {
    Ok,
    Unwritable,
    /// A failed fsync stopped the event log: only a restart recovers.
    Stopped,
    Damaged,
}

impl StoreCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreCondition::Ok => "ok",
            StoreCondition::Unwritable => "unwritable",
            StoreCondition::Stopped => "stopped",
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
        } else if store.stopped() {
            StoreCondition::Stopped
        } else if !store.writable() {
            StoreCondition::Unwritable
        } else {
            StoreCondition::Ok
        };
        let tenant_states = tokens.state_counts();
        let needs_reauth = tenant_states
            .iter()
            .find(|(state, _)| *state == "needs_reauth")
            .map_or(0, |(_, n)| *n);
        Conditions {
            outbox_depth,
            outbox_oldest_seconds,
            broker: metrics.broker(),
            store,
            needs_reauth,
            tenant_states,
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
            StoreCondition::Stopped => (
                2,
                "a failed fsync stopped the event log: new events get 429 until a restart",
            ),
            StoreCondition::Damaged => (
                3,
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;
    use crate::health::Attempt;

    fn settings(pairs: &[(&str, &str)]) -> AlertSettings {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(None, &env).unwrap().alerts
    }

    fn calm() -> Conditions {
        Conditions {
            outbox_depth: 0,
            outbox_oldest_seconds: 0.0,
            broker: BrokerState::Connected,
            store: StoreCondition::Ok,
            needs_reauth: 0,
            tenant_states: Vec::new(),
        }
    }

    fn levels(snapshot: &Snapshot, settings: &AlertSettings) -> Vec<(&'static str, u64)> {
        let readings = snapshot.readings(settings);
        readings
            .iter()
            .map(|r| (r.kind.as_str(), r.level))
            .collect()
    }

    const NOW: u64 = 20 * 86_400_000;

    #[test]
    fn limits_decide_each_level_and_zero_watches_nothing() {
        let defaults = settings(&[]);
        let troubled = Conditions {
            outbox_depth: 7,
            outbox_oldest_seconds: 900.0,
            broker: BrokerState::Blocked,
            store: StoreCondition::Damaged,
            needs_reauth: 3,
            tenant_states: vec![("needs_reauth", 3)],
        };
        let m = Minutes::default();
        let at_limits = Snapshot::take(NOW, &m, None, Some(300_000), troubled.clone(), &defaults);
        let want = [
            ("success", 0),
            ("silence", 0),
            ("signature_failures", 0),
            ("outbox_age", 1),
            ("broker_disconnected", 1),
            ("store", 3),
            ("needs_reauth", 3),
        ];
        assert_eq!(levels(&at_limits, &defaults), want);
        let stopped = Conditions {
            store: StoreCondition::Stopped,
            ..calm()
        };
        let s = Snapshot::take(NOW, &m, None, None, stopped, &defaults);
        assert_eq!(levels(&s, &defaults)[5], ("store", 2));
        let readings = at_limits.readings(&defaults);
        assert_eq!(readings[4].details["broker"], "blocked");
        assert_eq!(readings[3].details["depth"], 7);
        // Just under the limits; then the watches turned off.
        let under = Conditions {
            outbox_oldest_seconds: 899.0,
            ..troubled.clone()
        };
        let s = Snapshot::take(NOW, &m, None, Some(299_999), under, &defaults);
        assert_eq!(
            &levels(&s, &defaults)[3..5],
            [("outbox_age", 0), ("broker_disconnected", 0)]
        );
        let off = settings(&[
            ("HLGATE_ALERT_OUTBOX_AGE", "0"),
            ("HLGATE_ALERT_BROKER_DOWN", "0"),
        ]);
        let s = Snapshot::take(NOW, &m, None, Some(86_400_000), troubled, &off);
        assert_eq!(
            &levels(&s, &off)[3..5],
            [("outbox_age", 0), ("broker_disconnected", 0)]
        );
        assert!(Snapshot::take(NOW, &m, None, None, calm(), &defaults)
            .readings(&defaults)
            .iter()
            .all(|r| r.level == 0));
    }

    #[test]
    fn the_worst_window_decides_and_silence_raises_the_status() {
        let defaults = settings(&[]);
        let mut m = Minutes::default();
        let mut counts = [0; Attempt::ALL.len()];
        // An hour ago and more, all well; in the last minute, 200 refusals.
        counts[Attempt::Accepted as usize] = 20_000;
        m.add(clock_minute(NOW) - 120, &counts);
        counts = [0; Attempt::ALL.len()];
        counts[Attempt::DiskFull as usize] = 200;
        m.add(clock_minute(NOW), &counts);
        let s = Snapshot::take(NOW, &m, Some(NOW), None, calm(), &defaults);
        let statuses: Vec<_> = s.windows.iter().map(|w| w.status).collect();
        assert_eq!(statuses, [Status::Critical, Status::Ok, Status::Ok]);
        assert_eq!(s.worst().name, "1h");
        assert_eq!(s.status(), Status::Critical);
        let success = &s.readings(&defaults)[0];
        assert_eq!(
            (success.level, &success.details["window"]),
            (2, &json!("1h"))
        );
        assert_eq!(success.details["failed"], json!({"disk_full": 200}));

        // Nothing judged, but silent: a warning. Silence off: ok.
        let mut m = Minutes::default();
        let mut counts = [0; Attempt::ALL.len()];
        counts[Attempt::Accepted as usize] = 1;
        for day in 1..=2 {
            m.add(clock_minute(NOW - day * 86_400_000) - 5, &counts);
        }
        let last = Some(NOW - 2 * 86_400_000);
        let s = Snapshot::take(NOW, &m, last, None, calm(), &defaults);
        assert_eq!((s.worst().name, s.status()), ("72h", Status::Warning));
        let off = settings(&[("HLGATE_ALERT_SILENCE", "0")]);
        let s = Snapshot::take(NOW, &m, last, None, calm(), &off);
        assert_eq!(s.status(), Status::Ok);
        assert_eq!(levels(&s, &off)[1], ("silence", 0));
    }

    fn clock_minute(ms: u64) -> u64 {
        super::super::clock::minute_of(ms)
    }

    #[test]
    fn durations_read_for_humans() {
        assert_eq!(for_humans(45_000), "45s");
        assert_eq!(for_humans(31 * 60_000), "31m");
        assert_eq!(for_humans(2 * 3_600_000), "2h");
        assert_eq!(for_humans(24 * 3_600_000 + 10 * 60_000), "24h 10m");
    }
}
