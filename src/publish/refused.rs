//! Entries the broker refused (nacked): a consumer queue full with `reject-publish`, a queue
//! that cannot take a message now. Each is retried on its own with backoff while the entries
//! behind it go on (contract 1.6); one refused for longer than the bound while the broker took
//! other entries meanwhile is the entry's own problem, and goes to the quarantine queue. When
//! the broker refuses everything, that is an outage, not poison: nothing is quarantined, the
//! relay stops reading further entries and retries the oldest refused one with backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The first retry's delay; each further one doubles it, up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What becomes of an entry the broker just nacked.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Retried on its own when due.
    Retry,
    /// Refused for longer than the bound while others passed: divert it.
    Quarantine {
        attempts: u32,
        refused_for: Duration,
    },
}

#[derive(Debug)]
struct Refusal {
    first: Instant,
    attempts: u32,
    next: Instant,
    /// Handed to the broker again, its answer not yet in.
    retrying: bool,
}

/// The refused entries by seq, with when each is due again.
#[derive(Debug)]
pub struct Refused {
    entries: BTreeMap<u64, Refusal>,
    /// When the broker last acked a publish.
    last_ack: Option<Instant>,
    /// How long an entry may be refused while others pass before it is quarantined.
    bound: Duration,
}

impl Refused {
    pub fn new(bound: Duration) -> Refused {
        Refused {
            entries: BTreeMap::new(),
            last_ack: None,
            bound,
        }
    }

    /// The broker acked `seq` (a retry or any other entry).
    pub fn acked(&mut self, seq: u64, now: Instant) {
        self.entries.remove(&seq);
        self.last_ack = Some(now);
    }

    /// The broker nacked `seq`.
    pub fn nacked(&mut self, seq: u64, now: Instant) -> Verdict {
        let refusal = self.entries.entry(seq).or_insert(Refusal {
            first: now,
            attempts: 0,
            next: now,
            retrying: false,
        });
        refusal.attempts += 1;
        refusal.retrying = false;
        let refused_for = now.saturating_duration_since(refusal.first);
        let others_pass = self.last_ack.is_some_and(|at| at > refusal.first);
        if refused_for >= self.bound && others_pass {
            return Verdict::Quarantine {
                attempts: refusal.attempts,
                refused_for,
            };
        }
        let doublings = (refusal.attempts - 1).min(16);
        refusal.next = now + RETRY_MIN.saturating_mul(1 << doublings).min(RETRY_MAX);
        Verdict::Retry
    }

    /// `seq` left the outbox another way (quarantined, or confirmed meanwhile).
    pub fn settled(&mut self, seq: u64) {
        self.entries.remove(&seq);
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Up to `limit` refused seqs due for a retry at `now`, oldest first, taken for that retry:
    /// they are not due again until the broker answered.
    pub fn take_due(&mut self, now: Instant, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for (&seq, refusal) in &mut self.entries {
            if out.len() == limit {
                break;
            }
            if !refusal.retrying && refusal.next <= now {
                refusal.retrying = true;
                out.push(seq);
            }
        }
        out
    }

    /// Takes `seq` for a retry now, due or not.
    pub fn take(&mut self, seq: u64) {
        if let Some(refusal) = self.entries.get_mut(&seq) {
            refusal.retrying = true;
        }
    }

    /// The link broke: the retries it carried got no answer and are due again.
    pub fn link_lost(&mut self) {
        for refusal in self.entries.values_mut() {
            refusal.retrying = false;
        }
    }

    /// When the next retry falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|r| !r.retrying)
            .map(|r| r.next)
            .min()
    }

    /// The broker has acked nothing since it began refusing: every entry would be refused, so
    /// this is an outage. Returns the oldest refused seq, the one to try again.
    pub fn refusing_all(&self) -> Option<u64> {
        let (&oldest, _) = self.entries.first_key_value()?;
        let began = self.entries.values().map(|r| r.first).min()?;
        match self.last_ack {
            Some(at) if at > began => None,
            _ => Some(oldest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    #[test]
    fn a_refused_entry_is_retried_with_backoff_and_quarantined_once_others_passed_past_the_bound() {
        let t0 = Instant::now();
        let mut r = Refused::new(BOUND);
        r.acked(1, t0);
        assert_eq!(r.nacked(2, t0), Verdict::Retry);
        assert!(r.contains(2) && r.take_due(t0, 10).is_empty());
        assert_eq!(r.take_due(t0 + RETRY_MIN, 10), [2]);
        // In flight: not due again until the broker answers, or the link breaks.
        assert!(r.take_due(t0 + RETRY_MIN, 10).is_empty());
        assert_eq!(r.next_due(), None);
        r.link_lost();
        assert_eq!(r.take_due(t0 + RETRY_MIN, 10), [2]);
        assert_eq!(r.nacked(2, t0 + RETRY_MIN), Verdict::Retry);
        // Twice the delay now.
        assert!(r.take_due(t0 + RETRY_MIN * 2, 10).is_empty());
        assert_eq!(r.next_due(), Some(t0 + RETRY_MIN * 3));
        // Others pass meanwhile; at the bound, the next refusal diverts it.
        r.acked(3, t0 + Duration::from_secs(1));
        assert_eq!(r.refusing_all(), None);
        assert_eq!(
            r.nacked(2, t0 + BOUND),
            Verdict::Quarantine {
                attempts: 3,
                refused_for: BOUND
            }
        );
        r.settled(2);
        assert!(r.is_empty());
    }

    #[test]
    fn when_the_broker_refuses_everything_nothing_is_quarantined() {
        let t0 = Instant::now();
        let mut r = Refused::new(BOUND);
        r.acked(1, t0);
        for seq in 2..5 {
            assert_eq!(r.nacked(seq, t0 + Duration::from_millis(1)), Verdict::Retry);
        }
        assert_eq!(r.refusing_all(), Some(2));
        let late = t0 + BOUND * 3;
        assert_eq!(r.nacked(2, late), Verdict::Retry);
        // One ack ends the outage; the rest are retried as they fall due.
        r.acked(2, late);
        assert_eq!(r.refusing_all(), None);
        assert_eq!(r.len(), 2);
        assert_eq!(r.take_due(late, 10), [3, 4]);
    }

    #[test]
    fn retry_delays_are_capped() {
        let t0 = Instant::now();
        let mut r = Refused::new(BOUND);
        for _ in 0..40 {
            assert_eq!(r.nacked(7, t0), Verdict::Retry);
        }
        assert_eq!(r.next_due(), Some(t0 + RETRY_MAX));
    }
}
