//! The hot path's side of delivery health: every answer on the public webhook is one atomic add
//! to its outcome's counter. The background task takes the counts into the current minute; an
//! accepted delivery also leaves its tenant in a bounded queue that task empties. Nothing here
//! waits on a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::clock::Clock;
use crate::metrics::WebhookOutcome;

/// How one answer on `POST /webhooks/highlevel` ended, finer than the metric's outcome: each
/// refusal by its cause, since each calls for a different fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Accepted,
    Duplicate,
    MissingSignature,
    InvalidSignature,
    StaleTimestamp,
    TooLarge,
    BodyTimeout,
    /// The body could not be read (a broken connection, mostly): 400.
    Unreadable,
    OutboxFull,
    /// The data disk under its reserve, out of space, or the store not open for want of it.
    DiskFull,
    /// The store's queue full, or a commit not done in time.
    StoreBusy,
    StoreError,
    /// The bodies being received hold all the memory they may.
    TooManyBodies,
}

impl Attempt {
    pub const ALL: [Attempt; 13] = [
        Attempt::Accepted,
        Attempt::Duplicate,
        Attempt::MissingSignature,
        Attempt::InvalidSignature,
        Attempt::StaleTimestamp,
        Attempt::TooLarge,
        Attempt::BodyTimeout,
        Attempt::Unreadable,
        Attempt::OutboxFull,
        Attempt::DiskFull,
        Attempt::StoreBusy,
        Attempt::StoreError,
        Attempt::TooManyBodies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Accepted => "accepted",
            Attempt::Duplicate => "duplicate",
            Attempt::MissingSignature => "missing_signature",
            Attempt::InvalidSignature => "invalid_signature",
            Attempt::StaleTimestamp => "stale_timestamp",
            Attempt::TooLarge => "too_large",
            Attempt::BodyTimeout => "body_timeout",
            Attempt::Unreadable => "unreadable",
            Attempt::OutboxFull => "outbox_full",
            Attempt::DiskFull => "disk_full",
            Attempt::StoreBusy => "store_busy",
            Attempt::StoreError => "store_error",
            Attempt::TooManyBodies => "too_many_bodies",
        }
    }

    pub fn from_name(name: &str) -> Option<Attempt> {
        Attempt::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// A 2xx: what HighLevel counts as delivered.
    pub fn succeeded(self) -> bool {
        matches!(self, Attempt::Accepted | Attempt::Duplicate)
    }

    /// Refused for its signature (not for its timestamp): what a key rotation looks like.
    pub fn is_signature_failure(self) -> bool {
        matches!(self, Attempt::MissingSignature | Attempt::InvalidSignature)
    }

    /// `hlgate_webhooks_total{outcome}`.
    pub fn outcome(self) -> WebhookOutcome {
        match self {
            Attempt::Accepted => WebhookOutcome::Accepted,
            Attempt::Duplicate => WebhookOutcome::Duplicate,
            Attempt::MissingSignature => WebhookOutcome::MissingSignature,
            Attempt::InvalidSignature => WebhookOutcome::InvalidSignature,
            Attempt::StaleTimestamp => WebhookOutcome::StaleTimestamp,
            Attempt::TooLarge => WebhookOutcome::TooLarge,
            Attempt::BodyTimeout => WebhookOutcome::BodyTimeout,
            Attempt::Unreadable => WebhookOutcome::Unreadable,
            Attempt::OutboxFull
            | Attempt::DiskFull
            | Attempt::StoreBusy
            | Attempt::StoreError
            | Attempt::TooManyBodies => WebhookOutcome::Overloaded,
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Deliveries waiting for the background task; past this many, a tenant's last delivery is
/// not updated (its counts still are).
const DELIVERIES_QUEUED: usize = 64 * 1024;
/// A tenant id or event type longer than this is cut (a signed body is still a body).
const NAME_MAX: usize = 256;

/// A delivery's tenant, event type and time.
pub(super) type Delivery = (String, String, u64);

/// Counts since the background task last took them.
pub struct Tally {
    live: [AtomicU64; Attempt::ALL.len()],
    last_accepted_ms: AtomicU64,
    deliveries: mpsc::Sender<Delivery>,
    /// The queue's other end, until the health task takes it.
    queued: Mutex<Option<mpsc::Receiver<Delivery>>>,
    clock: Clock,
}

impl Tally {
    pub fn new(clock: Clock) -> Tally {
        let (deliveries, receiver) = mpsc::channel(DELIVERIES_QUEUED);
        Tally {
            live: Default::default(),
            last_accepted_ms: AtomicU64::new(0),
            deliveries,
            queued: Mutex::new(Some(receiver)),
            clock,
        }
    }

    /// The deliveries queue, for the one reader (a second call gets a queue that stays empty).
    pub(super) fn take_deliveries(&self) -> mpsc::Receiver<Delivery> {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        queued.take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    /// One answer.
    pub fn count(&self, attempt: Attempt) {
        self.live[attempt.slot()].fetch_add(1, Ordering::Relaxed);
    }

    /// One 2xx for a delivery of `tenant`'s: counted, and the tenant's last delivery noted.
    pub fn delivered(&self, attempt: Attempt, tenant: &str, event_type: &str) {
        self.count(attempt);
        let now = self.clock.now_ms();
        if attempt == Attempt::Accepted {
            self.last_accepted_ms.fetch_max(now, Ordering::Relaxed);
        }
        let delivery = (cut(tenant), cut(event_type), now);
        // A full queue drops the note, never the answer.
        let _ = self.deliveries.try_send(delivery);
    }

    /// The counts since the last call, by [`Attempt::ALL`] slot; they start again from zero.
    pub(super) fn take(&self) -> [u64; Attempt::ALL.len()] {
        std::array::from_fn(|i| self.live[i].swap(0, Ordering::Relaxed))
    }

    /// The last accepted event's time, when one was accepted since the start (or given back
    /// by [`Tally::accepted_at`]).
    pub fn last_accepted_ms(&self) -> Option<u64> {
        Some(self.last_accepted_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// What a start read back of the last acceptance.
    pub(super) fn accepted_at(&self, ms: u64) {
        self.last_accepted_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(NAME_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ManualClock;

    #[test]
    fn every_attempt_has_its_slot_and_name() {
        for (i, a) in Attempt::ALL.iter().enumerate() {
            assert_eq!(a.slot(), i);
            assert_eq!(Attempt::from_name(a.as_str()), Some(*a));
        }
        assert_eq!(Attempt::from_name("nonsense"), None);
    }

    #[test]
    fn counts_are_taken_once_and_deliveries_queued() {
        let clock = ManualClock::at(90_000);
        let tally = Tally::new(clock.clock());
        let mut queue = tally.take_deliveries();
        tally.count(Attempt::TooLarge);
        tally.delivered(Attempt::Accepted, "loc-1", "ContactCreate");
        clock.advance(std::time::Duration::from_secs(1));
        tally.delivered(Attempt::Duplicate, &"é".repeat(200), "X");
        let taken = tally.take();
        assert_eq!(taken[Attempt::TooLarge.slot()], 1);
        assert_eq!(taken[Attempt::Accepted.slot()], 1);
        assert_eq!(taken[Attempt::Duplicate.slot()], 1);
        assert_eq!(tally.take(), [0; Attempt::ALL.len()]);
        // The duplicate came later but accepted nothing.
        assert_eq!(tally.last_accepted_ms(), Some(90_000));
        let first = queue.try_recv().unwrap();
        assert_eq!(first, ("loc-1".into(), "ContactCreate".into(), 90_000));
        let second = queue.try_recv().unwrap();
        assert_eq!(second.0.len(), 256, "cut at a character boundary");
    }
}
