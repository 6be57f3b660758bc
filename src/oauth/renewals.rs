//! The hold-down on forced refreshes: when each tenant's tokens were last renewed (or a
//! renewal forced) by this process, for as long as that counts as just now. HighLevel answers
//! 401 for more than an expired token (a missing scope, a missing `Version`); a 401 for a token
//! this new is one of those, and refreshing again would only spend the refresh token.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long after a tenant's renewal a 401 forces no refresh for it.
pub const HOLD_DOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Marks {
    latest: HashMap<String, Instant>,
    /// Every mark in the order made, which is the order they end in: the expired ones are
    /// dropped from the front, so that the map holds only tenants renewed within the hold-down.
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
pub(super) struct Renewals {
    hold: Duration,
    marks: Mutex<Marks>,
}

impl Default for Renewals {
    fn default() -> Self {
        Renewals::new(HOLD_DOWN)
    }
}

impl Renewals {
    pub(super) fn new(hold: Duration) -> Renewals {
        Renewals {
            hold,
            marks: Mutex::default(),
        }
    }

    /// The tenant's tokens were renewed, or a renewal forced, now.
    pub(super) fn mark(&self, tenant: &str) {
        let now = Instant::now();
        let mut marks = self.marks.lock().expect("renewals lock");
        self.expire(&mut marks, now);
        marks.latest.insert(tenant.to_string(), now);
        marks.order.push_back((now, tenant.to_string()));
    }

    /// Whether the tenant was marked within the hold-down.
    pub(super) fn holds(&self, tenant: &str) -> bool {
        let now = Instant::now();
        let mut marks = self.marks.lock().expect("renewals lock");
        self.expire(&mut marks, now);
        marks.latest.contains_key(tenant)
    }

    fn expire(&self, marks: &mut Marks, now: Instant) {
        while let Some((at, _)) = marks.order.front() {
            if now.duration_since(*at) < self.hold {
                break;
            }
            let (at, tenant) = marks.order.pop_front().expect("front");
            // A later mark of the same tenant is still in the queue: keep its entry.
            if marks.latest.get(&tenant) == Some(&at) {
                marks.latest.remove(&tenant);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let marks = self.marks.lock().expect("renewals lock");
        marks.latest.len().max(marks.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_mark_holds_its_tenant_for_the_hold_down_only() {
        let renewals = Renewals::default();
        renewals.mark("a");
        assert!(renewals.holds("a"));
        assert!(!renewals.holds("b"), "a mark holds only its tenant");
        tokio::time::advance(HOLD_DOWN - Duration::from_millis(1)).await;
        assert!(renewals.holds("a"));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!renewals.holds("a"), "held past the hold-down");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_mark_extends_the_hold_and_old_marks_are_not_kept() {
        let renewals = Renewals::default();
        renewals.mark("a");
        tokio::time::advance(HOLD_DOWN / 2).await;
        renewals.mark("a");
        renewals.mark("b");
        tokio::time::advance(HOLD_DOWN / 2).await;
        assert!(
            renewals.holds("a"),
            "the first mark's end cut the second short"
        );
        tokio::time::advance(HOLD_DOWN).await;
        assert!(!renewals.holds("a") && !renewals.holds("b"));
        assert_eq!(renewals.len(), 0, "expired marks are kept");
    }
}
