//! One log line per cause per interval, with how many were held back: a broker that nacks
//! every retry, or a full disk that refuses every delivery, would otherwise write a line per
//! event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Causes remembered at once; more are rare, and forgetting one only lets a line through.
const CAUSES: usize = 32;

pub struct LogLimit {
    interval: Duration,
    /// Cause, when its last line was written, lines held back since.
    causes: Mutex<Vec<(String, Instant, u64)>>,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            causes: Mutex::new(Vec::new()),
        }
    }

    /// `Some(held_back)` when a line for `cause` is to be written now (`held_back` lines of
    /// that cause were not written since the last one), `None` to hold this one back. Digits
    /// in `cause` are ignored, so that counts and seqs in a message make no new cause.
    pub fn admit(&self, cause: &str) -> Option<u64> {
        self.admit_at(cause, Instant::now())
    }

    fn admit_at(&self, cause: &str, now: Instant) -> Option<u64> {
        let cause: String = cause.chars().filter(|c| !c.is_ascii_digit()).collect();
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = causes.iter_mut().find(|(c, _, _)| *c == cause) {
            if now.duration_since(slot.1) < self.interval {
                slot.2 += 1;
                return None;
            }
            let held = slot.2;
            slot.1 = now;
            slot.2 = 0;
            return Some(held);
        }
        if causes.len() == CAUSES {
            // The one written longest ago goes.
            let oldest = (0..causes.len()).min_by_key(|&i| causes[i].1).unwrap_or(0);
            causes.swap_remove(oldest);
        }
        causes.push((cause, now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_the_count_held_back() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at("nacked seq 12", t0), Some(0));
        // Another seq is the same cause; another cause has its own interval.
        assert_eq!(limit.admit_at("nacked seq 13", t0), None);
        assert_eq!(limit.admit_at("disk full", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(
                limit.admit_at("nacked seq 14", t0 + Duration::from_secs(5)),
                None
            );
        }
        assert_eq!(
            limit.admit_at("nacked seq 15", t0 + Duration::from_secs(10)),
            Some(6)
        );
        assert_eq!(
            limit.admit_at("nacked seq 99", t0 + Duration::from_secs(11)),
            None
        );
    }

    #[test]
    fn many_causes_forget_the_oldest() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..=CAUSES {
            let cause = "x".repeat(i + 1);
            assert_eq!(
                limit.admit_at(&cause, t0 + Duration::from_millis(i as u64)),
                Some(0)
            );
        }
        assert_eq!(limit.causes.lock().unwrap().len(), CAUSES);
        // The first cause was forgotten: it writes at once.
        assert_eq!(limit.admit_at("x", t0 + Duration::from_secs(1)), Some(0));
    }
}
