//! A request budget per resource, as HighLevel counts it: a burst window and a daily window per
//! location or company. An app-wide burst window guards the callback's code exchanges (anyone
//! can call it) and, only when configured, refreshes too. HighLevel's `X-RateLimit-*` answers
//! correct what the budget believes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::highlevel::RateLimitHeaders;

/// The budget a resource starts with, until HighLevel's headers say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests allowed in any span of one `interval` (a sliding window: HighLevel does not
    /// say whether its window is fixed or sliding).
    pub burst: usize,
    pub interval: Duration,
    /// Requests allowed per day.
    pub daily: u64,
}

impl Default for Limits {
    /// HighLevel's documented limits per app per resource.
    fn default() -> Self {
        Limits {
            burst: 100,
            interval: Duration::from_secs(10),
            daily: 200_000,
        }
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// One resource's windows.
#[derive(Debug)]
struct Window {
    burst: usize,
    interval: Duration,
    /// When each request of the current interval was sent, oldest first.
    sent: VecDeque<Instant>,
    /// Requests left until `day_ends`.
    daily_left: u64,
    daily: u64,
    day_ends: Instant,
}

impl Window {
    fn new(limits: Limits, now: Instant) -> Window {
        Window {
            burst: limits.burst,
            interval: limits.interval,
            sent: VecDeque::new(),
            daily_left: limits.daily,
            daily: limits.daily,
            day_ends: now + DAY,
        }
    }

    /// `None` when a request fits now, else when it will.
    fn wait(&mut self, now: Instant) -> Option<Instant> {
        while self.sent.front().is_some_and(|t| now - *t >= self.interval) {
            self.sent.pop_front();
        }
        if now >= self.day_ends {
            self.day_ends = now + DAY;
            self.daily_left = self.daily;
        }
        if self.daily_left == 0 {
            return Some(self.day_ends);
        }
        if self.sent.len() >= self.burst {
            return Some(*self.sent.front().expect("non-empty") + self.interval);
        }
        None
    }

    fn count(&mut self, now: Instant) {
        self.sent.push_back(now);
        self.daily_left = self.daily_left.saturating_sub(1);
    }
}

/// Requests per resource, counted before they are sent.
#[derive(Debug)]
pub struct RateBudget {
    limits: Limits,
    /// Whether every request also counts against one app-wide burst window.
    app_wide: bool,
    windows: Mutex<HashMap<String, Window>>,
}

/// The app-wide window's key: no tenant id contains a NUL.
const APP: &str = "\0app";

impl RateBudget {
    pub fn new(limits: Limits, app_wide: bool) -> RateBudget {
        RateBudget {
            limits,
            app_wide,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a request for `key` fits in the budget, then counts it.
    pub async fn acquire(&self, key: &str) {
        while let Err(wait) = self.try_acquire(key) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Counts a request for `key` when it fits now; otherwise counts nothing and says how long
    /// until it would.
    pub fn try_acquire(&self, key: &str) -> Result<(), Duration> {
        if self.app_wide {
            self.take(&[key, APP])
        } else {
            self.take(&[key])
        }
    }

    /// [`RateBudget::try_acquire`] for the proxy (never app-wide): `Ok` says when the request
    /// was counted, for [`RateBudget::settle`].
    pub fn try_take(&self, key: &str) -> Result<Instant, Duration> {
        self.take(&[key])?;
        let windows = self.windows.lock().expect("budget lock");
        Ok(*windows[key].sent.back().expect("just counted"))
    }

    /// How long until a request for `key` would fit, counting nothing.
    pub fn try_peek(&self, key: &str) -> Duration {
        let mut windows = self.windows.lock().expect("budget lock");
        let now = Instant::now();
        let wait = windows.get_mut(key).and_then(|w| w.wait(now));
        wait.map_or(Duration::ZERO, |t| t - now)
    }

    /// A request counted at `sent` was answered: it holds its place in the window from now,
    /// since HighLevel counted it on arrival, somewhere between the two.
    pub fn settle(&self, key: &str, sent: Instant) {
        let mut windows = self.windows.lock().expect("budget lock");
        if let Some(w) = windows.get_mut(key) {
            if let Some(i) = w.sent.iter().position(|t| *t == sent) {
                w.sent.remove(i);
                w.sent.push_back(Instant::now());
            }
        }
    }

    /// What the budget believes of `key` now: requests left in the burst window and today,
    /// and when the burst window next has room. `None` for a key never used.
    pub fn view(&self, key: &str) -> Option<(usize, u64, Option<Instant>)> {
        let mut windows = self.windows.lock().expect("budget lock");
        let w = windows.get_mut(key)?;
        let now = Instant::now();
        w.wait(now);
        let reset = w.sent.front().map(|t| *t + w.interval);
        Some((w.burst.saturating_sub(w.sent.len()), w.daily_left, reset))
    }

    /// Counts a request that belongs to no tenant yet (a code exchange) against the app-wide
    /// budget, without waiting: when it is spent, `Err` says how long until it has room.
    pub fn try_acquire_app(&self) -> Result<(), Duration> {
        self.take(&[APP])
    }

    /// What HighLevel answered about `key`'s budget replaces what the budget believed.
    pub fn observe(&self, key: &str, seen: &RateLimitHeaders) {
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("budget lock");
        let limits = self.limits;
        let w = windows
            .entry(key.to_string())
            .or_insert_with(|| Window::new(limits, now));
        if let Some(max) = seen.max {
            w.burst = max as usize;
        }
        if let Some(interval) = seen.interval.filter(|i| !i.is_zero()) {
            w.interval = interval;
        }
        if let Some(left) = seen.daily_remaining {
            w.daily_left = left;
        }
        if let Some(remaining) = seen.remaining {
            // Requests HighLevel counted that this budget did not see (another process of the
            // app, or the window's start) take room until an interval from now.
            let used = w.burst.saturating_sub(remaining as usize);
            while w.sent.len() < used {
                w.sent.push_back(now);
            }
        }
    }

    /// Counts a request against every key in `keys` when it fits all of them; otherwise counts
    /// nothing and returns how long until it would.
    fn take(&self, keys: &[&str]) -> Result<(), Duration> {
        let mut windows = self.windows.lock().expect("budget lock");
        let now = Instant::now();
        let mut until: Option<Instant> = None;
        for key in keys {
            let limits = if *key == APP {
                // The app-wide window spreads bursts; HighLevel keeps no daily count for it.
                Limits {
                    daily: u64::MAX,
                    ..self.limits
                }
            } else {
                self.limits
            };
            let w = windows
                .entry(key.to_string())
                .or_insert_with(|| Window::new(limits, now));
            if let Some(t) = w.wait(now) {
                until = Some(until.map_or(t, |u| u.max(t)));
            }
        }
        if let Some(until) = until {
            return Err(until - now);
        }
        for key in keys {
            windows.get_mut(*key).expect("present").count(now);
        }
        Ok(())
    }
}

/// Whole seconds to wait, rounded up, at least one (for `Retry-After`).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis() as u64).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(burst: usize, interval: Duration) -> RateBudget {
        let limits = Limits {
            burst,
            interval,
            ..Limits::default()
        };
        RateBudget::new(limits, true)
    }

    /// Sends a request for each of `first`, then one for `fourth`; true when that one had to
    /// wait for the window. (A lower bound: a slow machine only waits longer.)
    async fn fourth_waits(first: [&str; 3], fourth: &str) -> bool {
        let window = Duration::from_millis(300);
        let budget = budget(3, window);
        let start = Instant::now();
        for key in first {
            budget.acquire(key).await;
        }
        budget.acquire(fourth).await;
        Instant::now() - start >= window
    }

    #[tokio::test]
    async fn budget_spreads_requests_over_the_window() {
        // The fourth request of the window waits for the first to leave it.
        assert!(fourth_waits(["a", "a", "a"], "a").await);
    }

    #[tokio::test]
    async fn the_budget_is_shared_across_tenants_too() {
        // "d" has used nothing of its own, but the app-wide budget is spent.
        assert!(fourth_waits(["a", "b", "c"], "d").await);
    }

    #[tokio::test]
    async fn app_requests_are_refused_not_delayed_when_the_budget_is_spent() {
        let window = Duration::from_secs(60);
        let budget = budget(3, window);
        budget.acquire("a").await;
        assert_eq!(budget.try_acquire_app(), Ok(()));
        assert_eq!(budget.try_acquire_app(), Ok(()));
        // Spent (the tenant's request counts app-wide too): the answer is how long until the
        // oldest request leaves the window.
        let wait = budget.try_acquire_app().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= window, "{wait:?}");
    }

    #[test]
    fn the_daily_window_holds_a_resource_until_the_day_ends() {
        let limits = Limits {
            burst: 100,
            interval: Duration::from_millis(1),
            daily: 3,
        };
        let budget = RateBudget::new(limits, false);
        for _ in 0..3 {
            assert_eq!(budget.try_acquire("loc"), Ok(()));
        }
        let wait = budget.try_acquire("loc").unwrap_err();
        assert!(
            wait > DAY - Duration::from_secs(60) && wait <= DAY,
            "{wait:?}"
        );
        // Another resource has its own day.
        assert_eq!(budget.try_acquire("other"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_day_refills_the_daily_window() {
        let limits = Limits {
            daily: 1,
            ..Limits::default()
        };
        let budget = RateBudget::new(limits, false);
        assert_eq!(budget.try_acquire("loc"), Ok(()));
        assert!(budget.try_acquire("loc").is_err());
        tokio::time::advance(DAY).await;
        assert_eq!(budget.try_acquire("loc"), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_request_holds_its_place_from_its_answer() {
        let limits = Limits {
            burst: 1,
            interval: Duration::from_secs(10),
            daily: 100,
        };
        let budget = RateBudget::new(limits, false);
        let sent = budget.try_take("loc").unwrap();
        // HighLevel may have counted it as late as its answer.
        tokio::time::advance(Duration::from_secs(4)).await;
        budget.settle("loc", sent);
        tokio::time::advance(Duration::from_secs(7)).await;
        let wait = budget.try_take("loc").unwrap_err();
        assert_eq!(wait, Duration::from_secs(3));
        assert_eq!(
            budget.view("loc").map(|(left, day, _)| (left, day)),
            Some((0, 99))
        );
    }

    #[test]
    fn highlevels_headers_replace_what_the_budget_believed() {
        let budget = RateBudget::new(Limits::default(), false);
        // HighLevel counted requests of the window this budget never saw.
        let seen = RateLimitHeaders {
            max: Some(5),
            remaining: Some(1),
            interval: Some(Duration::from_secs(2)),
            daily_remaining: None,
        };
        budget.observe("loc", &seen);
        assert_eq!(budget.try_acquire("loc"), Ok(()));
        let wait = budget.try_acquire("loc").unwrap_err();
        assert!(wait <= Duration::from_secs(2), "{wait:?}");
        // The day is spent at HighLevel: nothing more today, whatever the burst says.
        let other = RateLimitHeaders {
            daily_remaining: Some(0),
            ..RateLimitHeaders::default()
        };
        budget.observe("other", &other);
        let wait = budget.try_acquire("other").unwrap_err();
        assert!(wait > Duration::from_secs(3600), "{wait:?}");
    }
}
