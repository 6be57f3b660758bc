//! One retry delay for everything that backs off: the relay's reconnects and the token
//! module's retries.

use std::time::Duration;

/// Exponential backoff with equal jitter: the `n`th delay is uniformly random in `[d/2, d]`
/// where `d = min * 2^n`, capped at `max`. Half the delay is certain, so retries never bunch
/// up at zero; the other half spreads them out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempts: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The next delay; each call doubles the one after it, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// The delay after `attempts` earlier failures, for callers that keep the count themselves
    /// (a token record carries its own).
    pub fn delay(&self, attempts: u32) -> Duration {
        let base = self.min.saturating_mul(1 << attempts.min(20)).min(self.max);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF_MIN: Duration = Duration::from_millis(200);
    const BACKOFF_MAX: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX);
        }
        assert!(b.next_delay() >= BACKOFF_MAX / 2);
    }

    #[test]
    fn a_reset_starts_over() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }
}
