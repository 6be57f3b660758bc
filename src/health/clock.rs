//! The time delivery health reads: the system's, or one a test sets, so that the 72-hour window,
//! silence and hold-downs are driven without waiting for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::entry::now_ms;

/// Unix milliseconds; cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(now_ms))
    }

    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn at(ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    /// The clock to hand to what reads it.
    pub fn clock(&self) -> Clock {
        let time = self.0.clone();
        Clock(Arc::new(move || time.load(Ordering::SeqCst)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Unix ms as RFC 3339, UTC.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The unix minute `ms` falls in.
pub fn minute_of(ms: u64) -> u64 {
    ms / 60_000
}
