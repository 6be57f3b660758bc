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
        loop {
            let wait = {
                let mut sent = self.sent.lock().expect("budget lock");
                let now = Instant::now();
                let mut wait = None;
                for k in [key, ALL] {
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
                    for k in [key, ALL] {
                        sent.get_mut(k).expect("present").push_back(now);
                    }
                }
                wait
            };
            match wait {
                None => return,
                Some(until) => tokio::time::sleep_until(until).await,
            }
        }
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
}
