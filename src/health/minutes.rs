//! The minute counts in memory: what the background task took from the tally, per unix minute,
//! the minutes not saved yet, and sums over a span of minutes.

use std::collections::{BTreeMap, BTreeSet};

use super::tally::Attempt;
use crate::store::MinuteCounts;

/// How long minute counts are kept: the 72-hour window and silence's 3 days back, with room.
pub const KEEP_MINUTES: u64 = 5 * 24 * 60;

/// Counts by [`Attempt::ALL`] slot.
pub type Counts = [u64; Attempt::ALL.len()];

/// Counts summed over a span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals(pub Counts);

impl Totals {
    pub fn of(&self, attempt: Attempt) -> u64 {
        self.0[attempt as usize]
    }

    pub fn attempts(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn succeeded(&self) -> u64 {
        self.sum(Attempt::succeeded)
    }

    pub fn signature_failures(&self) -> u64 {
        self.sum(Attempt::is_signature_failure)
    }

    /// Succeeded over attempts; `None` without attempts.
    pub fn success_ratio(&self) -> Option<f64> {
        let attempts = self.attempts();
        (attempts > 0).then(|| self.succeeded() as f64 / attempts as f64)
    }

    /// Every failing outcome with its count, zeros included, in [`Attempt::ALL`] order.
    pub fn failed(&self) -> impl Iterator<Item = (Attempt, u64)> + '_ {
        Attempt::ALL
            .into_iter()
            .filter(|a| !a.succeeded())
            .map(|a| (a, self.of(a)))
    }

    fn sum(&self, which: fn(Attempt) -> bool) -> u64 {
        Attempt::ALL
            .into_iter()
            .filter(|a| which(*a))
            .map(|a| self.of(a))
            .sum()
    }
}

#[derive(Debug, Default)]
pub struct Minutes {
    by_minute: BTreeMap<u64, Counts>,
    unsaved: BTreeSet<u64>,
}

impl Minutes {
    /// The minutes a start read back; outcomes this version does not know are left out.
    pub fn loaded(recorded: Vec<MinuteCounts>) -> Minutes {
        let mut minutes = Minutes::default();
        for (minute, named) in recorded {
            let counts = minutes.by_minute.entry(minute).or_default();
            for (name, n) in named {
                if let Some(a) = Attempt::from_name(&name) {
                    counts[a as usize] += n;
                }
            }
        }
        minutes
    }

    /// Adds `counts` to `minute`.
    pub fn add(&mut self, minute: u64, counts: &Counts) {
        if counts.iter().all(|n| *n == 0) {
            return;
        }
        let held = self.by_minute.entry(minute).or_default();
        for (held, n) in held.iter_mut().zip(counts) {
            *held += n;
        }
        self.unsaved.insert(minute);
    }

    /// The sums over the minutes `first..=last`.
    pub fn totals(&self, first: u64, last: u64) -> Totals {
        let mut totals = Totals::default();
        if first > last {
            return totals;
        }
        for counts in self.by_minute.range(first..=last).map(|(_, c)| c) {
            for (total, n) in totals.0.iter_mut().zip(counts) {
                *total += n;
            }
        }
        totals
    }

    /// Forgets the minutes before `first`.
    pub fn forget_before(&mut self, first: u64) {
        self.by_minute = self.by_minute.split_off(&first);
        self.unsaved = self.unsaved.split_off(&first);
    }

    /// The minutes changed since the last call, as the store keeps them (non-zero counts by
    /// name); they count as saved from here on, so a failed save must hand them back with
    /// [`Minutes::unsaved_again`].
    pub fn take_unsaved(&mut self) -> Vec<MinuteCounts> {
        let unsaved = std::mem::take(&mut self.unsaved);
        unsaved
            .into_iter()
            .filter_map(|minute| {
                let counts = self.by_minute.get(&minute)?;
                let named = Attempt::ALL
                    .into_iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|(a, n)| (a.as_str().to_string(), *n))
                    .collect();
                Some((minute, named))
            })
            .collect()
    }

    pub fn unsaved_again(&mut self, minutes: impl IntoIterator<Item = u64>) {
        self.unsaved.extend(minutes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(Attempt, u64)]) -> Counts {
        let mut c = Counts::default();
        for (a, n) in pairs {
            c[*a as usize] = *n;
        }
        c
    }

    #[test]
    fn sums_ratios_and_failures_over_a_span() {
        let mut m = Minutes::default();
        m.add(
            10,
            &counts(&[(Attempt::Accepted, 8), (Attempt::Duplicate, 1)]),
        );
        m.add(11, &counts(&[(Attempt::InvalidSignature, 1)]));
        m.add(12, &counts(&[(Attempt::OutboxFull, 5)]));
        let t = m.totals(10, 11);
        assert_eq!(
            (t.attempts(), t.succeeded(), t.signature_failures()),
            (10, 9, 1)
        );
        assert_eq!(t.success_ratio(), Some(0.9));
        let failed: Vec<_> = t.failed().filter(|(_, n)| *n > 0).collect();
        assert_eq!(failed, [(Attempt::InvalidSignature, 1)]);
        assert_eq!(t.failed().count(), Attempt::ALL.len() - 2);
        assert_eq!(m.totals(13, 20).success_ratio(), None);
        assert_eq!(m.totals(12, 10), Totals::default());
    }

    #[test]
    fn unsaved_minutes_are_taken_by_name_and_reload_the_same() {
        let mut m = Minutes::default();
        m.add(5, &counts(&[(Attempt::Accepted, 2)]));
        m.add(
            7,
            &counts(&[(Attempt::TooLarge, 1), (Attempt::Accepted, 1)]),
        );
        m.add(8, &Counts::default());
        let taken = m.take_unsaved();
        assert_eq!(
            taken,
            vec![
                (5, vec![("accepted".to_string(), 2)]),
                (7, vec![("accepted".into(), 1), ("too_large".into(), 1)]),
            ]
        );
        assert!(m.take_unsaved().is_empty());
        m.unsaved_again([7]);
        assert_eq!(m.take_unsaved().len(), 1);
        let mut again = taken.clone();
        again[0].1.push(("outcome_of_a_later_version".into(), 4));
        let reloaded = Minutes::loaded(again);
        assert_eq!(reloaded.totals(0, 100), m.totals(0, 100));
        m.forget_before(6);
        assert_eq!(m.totals(0, 100).attempts(), 2);
    }
}
