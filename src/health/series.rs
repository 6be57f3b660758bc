//! `GET /v1/health/series`: the minute counts in steps, for charts: each step's attempts by
//! outcome and its success ratio, oldest first, the last step ending in the current minute.

use serde::Serialize;
use serde_json::{Map, Value};

use super::clock::rfc3339;
use super::minutes::{Minutes, KEEP_MINUTES};
use super::tally::Attempt;

/// The most steps one answer holds: 72 hours of minutes.
pub const MAX_STEPS: u64 = 72 * 60;
/// The longest span asked for: the minutes kept (5 days).
pub const MAX_SPAN_MINUTES: u64 = KEEP_MINUTES;

#[derive(Debug, Serialize, PartialEq)]
pub struct Series {
    pub step_seconds: u64,
    /// The start of the first step and the end of the last (exclusive).
    pub since: String,
    pub until: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Point {
    /// The start of the step.
    pub at: String,
    pub attempts: u64,
    pub succeeded: u64,
    /// `null` without attempts.
    pub success_ratio: Option<f64>,
    /// The outcomes this step saw, by name (zeros left out).
    pub outcomes: Map<String, Value>,
}

/// `span_minutes` in steps of `step_minutes`, the last step ending with `last_minute`; the
/// caller has checked that the step divides the span and the bounds.
pub fn series(minutes: &Minutes, last_minute: u64, span_minutes: u64, step_minutes: u64) -> Series {
    let steps = span_minutes / step_minutes;
    let first = (last_minute + 1).saturating_sub(span_minutes);
    let points = (0..steps)
        .map(|i| {
            let start = first + i * step_minutes;
            let totals = minutes.totals(start, start + step_minutes - 1);
            let outcomes = Attempt::ALL
                .into_iter()
                .filter(|a| totals.of(*a) > 0)
                .map(|a| (a.as_str().to_string(), totals.of(a).into()))
                .collect();
            Point {
                at: rfc3339(start * 60_000),
                attempts: totals.attempts(),
                succeeded: totals.succeeded(),
                success_ratio: totals.success_ratio(),
                outcomes,
            }
        })
        .collect();
    Series {
        step_seconds: step_minutes * 60,
        since: rfc3339(first * 60_000),
        until: rfc3339((last_minute + 1) * 60_000),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::minutes::Counts;

    fn counts(pairs: &[(Attempt, u64)]) -> Counts {
        let mut c = Counts::default();
        for (a, n) in pairs {
            c[*a as usize] = *n;
        }
        c
    }

    #[test]
    fn steps_end_with_the_current_minute_and_sum_their_minutes() {
        let mut m = Minutes::default();
        m.add(100, &counts(&[(Attempt::Accepted, 3)]));
        m.add(101, &counts(&[(Attempt::InvalidSignature, 1)]));
        m.add(103, &counts(&[(Attempt::Duplicate, 2)]));
        // Before the span: left out.
        m.add(97, &counts(&[(Attempt::Accepted, 50)]));
        let s = series(&m, 103, 6, 2);
        assert_eq!(s.step_seconds, 120);
        assert_eq!(s.since, rfc3339(98 * 60_000));
        assert_eq!(s.until, rfc3339(104 * 60_000));
        let got: Vec<_> = s
            .points
            .iter()
            .map(|p| (p.attempts, p.succeeded, p.success_ratio))
            .collect();
        assert_eq!(got, [(0, 0, None), (4, 3, Some(0.75)), (2, 2, Some(1.0))]);
        assert_eq!(s.points[1].at, rfc3339(100 * 60_000));
        assert_eq!(
            Value::Object(s.points[1].outcomes.clone()),
            serde_json::json!({"accepted": 3, "invalid_signature": 1})
        );
        assert!(s.points[0].outcomes.is_empty());
    }
}
