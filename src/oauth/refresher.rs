//! The background schedule and the request budget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::TokenService;

/// At most `max` requests per `window` per key, plus the same budget across all keys, so that a
/// crowd of tenants due at once is spread out instead of bursting at HighLevel.
pub struct RateBudget {
    max: usize,
    window: Duration,
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

const ALL: &str = "\0all";

impl RateBudget {
    pub fn new(max: usize, window: Duration) -> RateBudget {
        RateBudget {
            max,
            window,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a request for `key` fits in the budget, then counts it.
    pub async fn acquire(&self, key: &str) {
        while let Some(until) = self.take(&[key, ALL]) {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Counts a request that belongs to no tenant yet (a code exchange) against the app-wide
    /// budget, without waiting: when it is spent, `Err` says how long until it has room.
    pub fn try_acquire_app(&self) -> Result<(), Duration> {
        match self.take(&[ALL]) {
            None => Ok(()),
            Some(until) => Err(until - Instant::now()),
        }
    }

    /// Counts a request against every key in `keys` when it fits all of them; otherwise counts
    /// nothing and returns when it would fit.
    fn take(&self, keys: &[&str]) -> Option<Instant> {
        let mut sent = self.sent.lock().expect("budget lock");
        let now = Instant::now();
        let mut wait = None;
        for k in keys {
            let times = sent.entry(k.to_string()).or_default();
            while times.front().is_some_and(|t| now - *t >= self.window) {
                times.pop_front();
            }
            if times.len() >= self.max {
                let until = *times.front().expect("non-empty") + self.window;
                wait = Some(wait.map_or(until, |w: Instant| w.max(until)));
            }
        }
        if wait.is_none() {
            for k in keys {
                sent.get_mut(*k).expect("present").push_back(now);
            }
        }
        wait
    }
}

/// Runs the schedule until `shutdown`: every `every`, one pass of [`TokenService::refresh_due`].
pub async fn run(service: Arc<TokenService>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => break,
        }
        let attempted = service.refresh_due().await;
        if attempted > 0 {
            info!(attempted, "token refresh pass");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_spreads_requests_over_the_window() {
        let window = Duration::from_millis(300);
        let budget = RateBudget::new(3, window);
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire("a").await;
        }
        // The fourth request of the window waits for the first to leave it. (A lower bound:
        // a slow machine only waits longer.)
        budget.acquire("a").await;
        assert!(Instant::now() - start >= window);
    }

    #[tokio::test]
    async fn the_budget_is_shared_across_tenants_too() {
        let window = Duration::from_millis(300);
        let budget = RateBudget::new(3, window);
        let start = Instant::now();
        for key in ["a", "b", "c"] {
            budget.acquire(key).await;
        }
        // "d" has used nothing of its own, but the app-wide budget is spent.
        budget.acquire("d").await;
        assert!(Instant::now() - start >= window);
    }

    #[tokio::test]
    async fn app_requests_are_refused_not_delayed_when_the_budget_is_spent() {
        let window = Duration::from_secs(60);
        let budget = RateBudget::new(3, window);
        budget.acquire("a").await;
        assert_eq!(budget.try_acquire_app(), Ok(()));
        assert_eq!(budget.try_acquire_app(), Ok(()));
        // Spent (the tenant's request counts app-wide too): the answer is how long until the
        // oldest request leaves the window.
        let wait = budget.try_acquire_app().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= window, "{wait:?}");
    }
}
