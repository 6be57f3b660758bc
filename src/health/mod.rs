//! Delivery health and alerts: every answer on the public webhook counted per minute and
//! outcome (kept on disk for 5 days), each tenant's last delivery, `/v1/health` judged against
//! HighLevel's pause rule, and alerts on transitions, logged, counted and POSTed.
//!
//! The rooms: `tally` (the hot path's atomic counters), `clock` (the time read, injectable),
//! `minutes` (the counts per minute in memory), `judge` (pure: window status, silence,
//! signature bursts), `watch` (one look at everything, and each alert's condition in it),
//! `alerts` (transitions with a hold-down), `report` (`/v1/health`), `series` (the counts in
//! steps, for charts), `notify` (the alert webhook).

mod alerts;
mod clock;
mod judge;
mod minutes;
mod notify;
mod report;
mod series;
mod tally;
mod watch;

pub use alerts::{Fired, Kind, Severity};
pub use clock::{rfc3339, Clock, ManualClock};
pub use notify::{payload, Notifier};
pub use report::{ActiveAlert, Report};
pub use series::{Series, MAX_SPAN_MINUTES, MAX_STEPS};
pub use tally::{Attempt, Tally};
pub use watch::{Conditions, StoreCondition};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::AlertSettings;
use crate::metrics::{BrokerState, Metrics};
use crate::oauth::TokenService;
use crate::store::{Attempts, Changes, LastDelivery, Store, StoreError};
use alerts::Alerts;
use clock::minute_of;
use minutes::{Minutes, KEEP_MINUTES};
use report::Extras;
use tally::Delivery;
use watch::Snapshot;

/// How often the background task takes the counts and looks at the alerts.
const TICK: Duration = Duration::from_secs(1);

/// What the background task and `/v1/health` share; the hot path never touches it.
struct Book {
    minutes: Minutes,
    tenants: BTreeMap<String, LastDelivery>,
    unsaved_tenants: BTreeSet<String>,
    deliveries: mpsc::Receiver<Delivery>,
    since_minute: u64,
    saved_at: Option<u64>,
    alerts: Alerts,
    broker_down_since: Option<u64>,
}

/// Delivery health over the store's minute counts.
pub struct Health {
    tally: Arc<Tally>,
    clock: Clock,
    settings: AlertSettings,
    attempts: Attempts,
    book: Mutex<Book>,
}

impl Health {
    /// Reads what the data dir holds back into memory. `tally` has counted since the start
    /// (while the store could not open, too); its deliveries queue is taken here.
    pub fn open(
        attempts: Attempts,
        tally: Arc<Tally>,
        clock: Clock,
        settings: AlertSettings,
    ) -> Result<Health, StoreError> {
        let now_minute = minute_of(clock.now_ms());
        let recorded = attempts.read(now_minute.saturating_sub(KEEP_MINUTES))?;
        if let Some(ms) = recorded.last_accepted_ms {
            tally.accepted_at(ms);
        }
        let book = Book {
            minutes: Minutes::loaded(recorded.minutes),
            tenants: recorded.tenants.into_iter().collect(),
            unsaved_tenants: BTreeSet::new(),
            deliveries: tally.take_deliveries(),
            since_minute: recorded.since.unwrap_or(now_minute),
            saved_at: None,
            alerts: Alerts::new(settings.hold_down.as_millis() as u64),
            broker_down_since: None,
        };
        Ok(Health {
            tally,
            clock,
            settings,
            attempts,
            book: Mutex::new(book),
        })
    }

    /// When the last event was accepted (this run, or the last one saved before).
    pub fn last_accepted_ms(&self) -> Option<u64> {
        self.tally.last_accepted_ms()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the tally's counts into the current minute and its deliveries into the tenants.
    fn absorb(&self, book: &mut Book, now_ms: u64) {
        book.minutes.add(minute_of(now_ms), &self.tally.take());
        while let Ok((tenant, event_type, ms)) = book.deliveries.try_recv() {
            let newer = book.tenants.get(&tenant).is_none_or(|(at, _)| *at <= ms);
            if newer {
                book.unsaved_tenants.insert(tenant.clone());
                book.tenants.insert(tenant, (ms, event_type));
            }
        }
    }

    /// Writes what changed since the last save and flushes (blocking: call it off the async
    /// threads). What a failed save held is written by the next one.
    pub fn save(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let (minutes, tenants, since) = {
            let mut book = self.book();
            self.absorb(&mut book, now);
            let keep_from = minute_of(now).saturating_sub(KEEP_MINUTES);
            book.minutes.forget_before(keep_from);
            let minutes = book.minutes.take_unsaved();
            let unsaved = std::mem::take(&mut book.unsaved_tenants);
            let tenants: Vec<_> = unsaved
                .into_iter()
                .filter_map(|t| book.tenants.get(&t).map(|d| (t, d.clone())))
                .collect();
            (minutes, tenants, book.since_minute)
        };
        let saved = self.attempts.save(&Changes {
            minutes: &minutes,
            tenants: &tenants,
            last_accepted_ms: self.tally.last_accepted_ms(),
            since,
            keep_from: minute_of(now).saturating_sub(KEEP_MINUTES),
        });
        let mut book = self.book();
        match saved {
            Ok(()) => book.saved_at = Some(now),
            Err(_) => {
                book.minutes.unsaved_again(minutes.iter().map(|(m, _)| *m));
                book.unsaved_tenants
                    .extend(tenants.into_iter().map(|(t, _)| t));
            }
        }
        saved
    }

    fn snapshot(&self, book: &mut Book, conditions: Conditions) -> Snapshot {
        let now = self.clock.now_ms();
        self.absorb(book, now);
        if conditions.broker == BrokerState::Connected {
            book.broker_down_since = None;
        } else {
            book.broker_down_since.get_or_insert(now);
        }
        let down = book
            .broker_down_since
            .map(|since| now.saturating_sub(since));
        let last = self.tally.last_accepted_ms();
        Snapshot::take(now, &book.minutes, last, down, conditions, &self.settings)
    }

    /// The alerts `conditions` and the counts make now: each transition once.
    pub fn evaluate(&self, conditions: Conditions) -> Vec<Fired> {
        let mut book = self.book();
        let snapshot = self.snapshot(&mut book, conditions);
        let readings = snapshot.readings(&self.settings);
        book.alerts.evaluate(snapshot.now_ms, readings)
    }

    /// `GET /v1/health`.
    pub fn report(&self, conditions: Conditions) -> Report {
        let mut book = self.book();
        let snapshot = self.snapshot(&mut book, conditions);
        let alerts = book
            .alerts
            .active()
            .into_iter()
            .map(|(kind, state, since)| ActiveAlert {
                alert: kind.as_str(),
                state,
                since: rfc3339(since),
            })
            .collect();
        let extras = Extras {
            signature_window_seconds: self.settings.signature_window.as_secs(),
            silence_after_seconds: self.settings.silence.map(|d| d.as_secs()),
            tenants_seen: book.tenants.len(),
            alerts,
            counting_since_ms: Some(book.since_minute * 60_000),
            saved_at_ms: book.saved_at,
        };
        Report::new(&snapshot, extras)
    }

    /// The last `span_minutes` (ending with the current minute) in steps of `step_minutes`,
    /// which divides it.
    pub fn series(&self, span_minutes: u64, step_minutes: u64) -> Series {
        let mut book = self.book();
        let now = self.clock.now_ms();
        self.absorb(&mut book, now);
        series::series(&book.minutes, minute_of(now), span_minutes, step_minutes)
    }

    /// Up to `limit` tenants after `after` in tenant order with their last delivery, and the
    /// cursor of the next page.
    pub fn tenants(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, LastDelivery)>, Option<String>) {
        let mut book = self.book();
        self.absorb(&mut book, self.clock.now_ms());
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<_> = book
            .tenants
            .range((start, std::ops::Bound::Unbounded))
            .take(limit + 1)
            .map(|(t, d)| (t.clone(), d.clone()))
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().map(|(t, _)| t.clone()).unwrap_or_default()
        });
        (page, next)
    }
}

/// What the background task reads its conditions from and sends alerts with.
pub struct Watched {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<TokenService>,
    pub notifier: Option<Notifier>,
}

/// Every [`TICK`]: the counts taken, the alerts looked at (each logged, counted and sent);
/// every `HLGATE_HEALTH_SAVE_EVERY`, the counts saved. Ends on `shutdown` without a save: the
/// stop saves once the listeners are closed, so that the last answers are in it.
pub async fn run(health: Arc<Health>, watched: Watched, shutdown: CancellationToken) {
    let mut next_save = tokio::time::Instant::now() + health.settings.save_every;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK.min(health.settings.save_every)) => {}
            () = shutdown.cancelled() => return,
        }
        let (store, metrics, tokens) = (
            watched.store.clone(),
            watched.metrics.clone(),
            watched.tokens.clone(),
        );
        let read = move || Conditions::read(&store, &metrics, &tokens);
        let Ok(conditions) = tokio::task::spawn_blocking(read).await else {
            continue;
        };
        for alert in health.evaluate(conditions) {
            announce(&alert, &watched);
        }
        if tokio::time::Instant::now() >= next_save {
            next_save = tokio::time::Instant::now() + health.settings.save_every;
            save(health.clone()).await;
        }
    }
}

/// [`Health::save`] off the async threads; a failure is logged (the next save tries again).
pub async fn save(health: Arc<Health>) {
    let saved = tokio::task::spawn_blocking(move || health.save()).await;
    let failed = match saved {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    warn!(error = %failed, "the health counts could not be saved");
}

/// Logs, counts and sends one alert.
fn announce(alert: &Fired, watched: &Watched) {
    let (name, state, severity) = (alert.kind.as_str(), alert.state, alert.severity.as_str());
    let details = alert.details.to_string();
    match alert.severity {
        Severity::Critical => error!(alert = name, state, severity, details, "{}", alert.text),
        Severity::Warning | Severity::Resolved => {
            warn!(alert = name, state, severity, details, "{}", alert.text)
        }
    }
    watched.metrics.alert(name, state);
    if let Some(notifier) = &watched.notifier {
        notifier.send(alert);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Settings;

    const DAY: Duration = Duration::from_secs(86_400);

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

    /// The store in `dir` (once a store dropped before lets go of its files) and health on it.
    fn open(dir: &std::path::Path, clock: &ManualClock) -> (Store, Arc<Tally>, Health) {
        let mut tries = 0;
        let store = loop {
            match Store::open(dir, DAY * 7) {
                Ok(store) => break store,
                Err(e) if e.is_locked() && tries < 1000 => tries += 1,
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let tally = Arc::new(Tally::new(clock.clock()));
        let settings = Settings::load(None, &HashMap::new()).unwrap().alerts;
        let health = Health::open(
            store.attempts().unwrap(),
            tally.clone(),
            clock.clock(),
            settings,
        );
        (store, tally, health.unwrap())
    }

    #[test]
    fn counts_and_last_deliveries_come_back_after_a_save_and_old_minutes_leave() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(1_800_000_000_000);
        let (store, tally, health) = open(dir.path(), &clock);
        tally.delivered(Attempt::Accepted, "loc-1", "ContactCreate");
        tally.count(Attempt::OutboxFull);
        let accepted_at = clock.now_ms();
        health.save().unwrap();
        clock.advance(DAY);
        tally.delivered(Attempt::Duplicate, "loc-2", "NoteCreate");
        health.save().unwrap();
        drop((health, tally, store));

        let (_store, _tally, health) = open(dir.path(), &clock);
        let report = serde_json::to_value(health.report(calm())).unwrap();
        let w72 = &report["windows"]["72h"];
        assert_eq!(
            (w72["attempts"].clone(), w72["succeeded"].clone()),
            (3.into(), 2.into())
        );
        assert_eq!(w72["failed"]["outbox_full"], 1);
        assert_eq!(report["windows"]["24h"]["attempts"], 1);
        assert_eq!(report["last_accepted_at"], rfc3339(accepted_at));
        let (page, next) = health.tenants(None, 1);
        assert_eq!(
            page,
            [("loc-1".into(), (accepted_at, "ContactCreate".into()))]
        );
        assert_eq!(next.as_deref(), Some("loc-1"));
        let (page, next) = health.tenants(next.as_deref(), 1);
        assert_eq!((page[0].0.as_str(), next), ("loc-2", None));

        // Six days on, the first day's minute is past the five kept: gone from disk too.
        clock.advance(DAY * 5);
        health.save().unwrap();
        let kept = health.attempts.read(0).unwrap();
        assert_eq!(kept.minutes.len(), 1);
    }
}
