//! What a damaged data dir lost, told from what the store can still read: seqs rise without a
//! gap from the oldest bucket on, and sweeping removes only the oldest buckets, once expired and
//! confirmed. So a seq that no bucket holds, between the oldest bucket and the newest seq (or the
//! watermark), or anywhere above the watermark, is lost.
//!
//! A start checks this from the buckets' bounds alone (what it reads anyway); a bucket's
//! database and the relay's reads are checked as they happen ([`Ledger`]); `hlgate store
//! check` reads every database in full (`store::check`). What an operator gave up with
//! `hlgate store accept-loss` is recorded in the `meta` tree, no longer reported, and counts
//! as confirmed.

use std::fmt;
use std::sync::{Mutex, OnceLock};

use super::layout::SET_ASIDE;

/// Seqs the store should hold and does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    pub first: u64,
    pub last: u64,
    /// At or below the watermark: confirmed, so only the archive and the dedup keys are gone.
    pub published: bool,
}

/// The seqs one bucket holds (`last` is `first - 1` when it holds none).
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub first: u64,
    pub last: u64,
    /// Past the retention: the sweeper may have removed what followed it.
    pub expired: bool,
}

/// A bucket directory with events that the store no longer uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Its directory name under `events/`.
    pub name: String,
    pub first: u64,
    pub last: u64,
    /// Its dedup keys (read by `hlgate store check` only).
    pub dedup_keys: Vec<String>,
}

/// What a start found lost and not accepted; the store serves, but is not ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    pub lost: Vec<Lost>,
    /// Bucket directories set aside by this start.
    pub set_aside: Vec<String>,
}

impl Damage {
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.set_aside.is_empty()
    }
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.last - self.first + 1;
        if self.published {
            write!(
                f,
                "seqs {}..{} ({n} published events gone from the archive, with their dedup keys)",
                self.first, self.last
            )
        } else {
            write!(
                f,
                "seqs {}..{} ({n} accepted events lost before they were published)",
                self.first, self.last
            )
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.lost.iter().map(|l| format!("lost {l}")).collect();
        parts.extend(self.set_aside.iter().map(|name| {
            format!(
                "bucket {name} holds events but had no ready marker: kept as {name}.{SET_ASIDE}"
            )
        }));
        write!(f, "{}", parts.join("; "))
    }
}

/// The seqs missing from `held` (sorted by first seq): below the oldest bucket only what is
/// above the watermark, between buckets and after the newest up to `through` everything, except
/// what follows an expired bucket and is confirmed (the sweeper removes those in any order).
pub(super) fn missing(held: &[Held], watermark: u64, through: u64) -> Vec<Lost> {
    let mut lost = Vec::new();
    let Some(oldest) = held.first() else {
        return lost;
    };
    let mut gap = |first: u64, last: u64, after_expired: bool| {
        if first > last {
            return;
        }
        if first <= watermark && !after_expired {
            let last = last.min(watermark);
            lost.push(Lost {
                first,
                last,
                published: true,
            });
        }
        let first = first.max(watermark + 1);
        if first <= last {
            lost.push(Lost {
                first,
                last,
                published: false,
            });
        }
    };
    gap(watermark + 1, oldest.first - 1, true);
    for pair in held.windows(2) {
        gap(pair[0].last + 1, pair[1].first - 1, pair[0].expired);
    }
    let newest = held.last().expect("not empty");
    gap(newest.last + 1, through.max(watermark), newest.expired);
    lost
}

/// Seqs `first..=last`, all lost, told apart at the watermark.
fn split_at(first: u64, last: u64, watermark: u64) -> Vec<Lost> {
    let mut lost = Vec::new();
    if last < first {
        return lost;
    }
    let split = watermark.clamp(first - 1, last);
    if split >= first {
        lost.push(Lost {
            first,
            last: split,
            published: true,
        });
    }
    if split < last {
        lost.push(Lost {
            first: split + 1,
            last,
            published: false,
        });
    }
    lost
}

/// Everything set aside counts as lost, confirmed or not.
fn set_aside_lost(aside: &[SetAside], watermark: u64) -> Vec<Lost> {
    aside
        .iter()
        .flat_map(|a| split_at(a.first, a.last, watermark))
        .collect()
}

/// `lost` without the seqs of `accepted`.
fn subtract(lost: Vec<Lost>, accepted: &[(u64, u64)]) -> Vec<Lost> {
    let mut left = lost;
    for &(a, b) in accepted {
        left = left
            .into_iter()
            .flat_map(|l| {
                let below = (l.first < a).then(|| Lost {
                    last: l.last.min(a - 1),
                    ..l
                });
                let above = (l.last > b).then(|| Lost {
                    first: l.first.max(b + 1),
                    ..l
                });
                if l.last < a || l.first > b {
                    vec![l]
                } else {
                    below.into_iter().chain(above).collect()
                }
            })
            .collect();
    }
    left.sort_by_key(|l| l.first);
    left
}

/// Whether the ranges `by` hold every seq of `first..=last`.
fn covered(first: u64, last: u64, by: &[(u64, u64)]) -> bool {
    let range = Lost {
        first,
        last,
        published: false,
    };
    subtract(vec![range], by).is_empty()
}

/// All the losses of a store: the gaps of `held` and what is set aside, minus what was accepted.
pub(super) fn all_lost(
    mut held: Vec<Held>,
    aside: &[SetAside],
    watermark: u64,
    through: u64,
    accepted: &[(u64, u64)],
) -> Vec<Lost> {
    // A set-aside bucket fills its place in the chain: it is reported as itself.
    held.extend(aside.iter().map(|a| Held {
        first: a.first,
        last: a.last,
        expired: false,
    }));
    held.sort_by_key(|h| h.first);
    let mut lost = missing(&held, watermark, through);
    lost.extend(set_aside_lost(aside, watermark));
    subtract(lost, accepted)
}

/// What a start reports, from the bounds it read; `through` is the last seq known committed.
pub(super) fn at_start(
    held: Vec<Held>,
    aside: &[SetAside],
    watermark: u64,
    through: u64,
    accepted: &[(u64, u64)],
) -> Damage {
    Damage {
        lost: all_lost(held, aside, watermark, through, accepted),
        set_aside: aside.iter().map(|a| a.name.clone()).collect(),
    }
}

/// The watermark moved past the accepted losses that follow it: nothing there will ever be
/// confirmed, and the relay must not wait for it.
fn past_accepted(watermark: u64, accepted: &[(u64, u64)]) -> u64 {
    let mut w = watermark;
    while let Some(&(_, last)) = accepted.iter().find(|(a, b)| *a <= w + 1 && *b > w) {
        w = last;
    }
    w
}

/// The losses of a running store: what an operator accepted, what the start found, and what
/// reading the buckets found since (a database holding less than its summary claims, a hole
/// in the outbox). Shared by the store and its buckets.
#[derive(Default)]
pub(super) struct Ledger {
    accepted: Vec<(u64, u64)>,
    at_start: OnceLock<Damage>,
    /// (first, last) seq ranges found missing while serving.
    found: Mutex<Vec<(u64, u64)>>,
}

impl Ledger {
    pub fn new(accepted: Vec<(u64, u64)>) -> Ledger {
        Ledger {
            accepted,
            ..Ledger::default()
        }
    }

    pub fn accepted(&self) -> &[(u64, u64)] {
        &self.accepted
    }

    /// Records what the start found (once).
    pub fn started(&self, damage: Damage) {
        let _ = self.at_start.set(damage);
    }

    /// The watermark moved over the accepted losses that follow it.
    pub fn past_accepted(&self, watermark: u64) -> u64 {
        past_accepted(watermark, &self.accepted)
    }

    /// Whether every seq of `first..=last` was given up by an operator.
    pub fn is_accepted(&self, first: u64, last: u64) -> bool {
        covered(first, last, &self.accepted)
    }

    /// Seqs `first..=last` that bucket `bucket` should hold and does not. What is news (not
    /// accepted, not reported yet) marks the store damaged, with one ERROR line.
    pub fn found(&self, bucket: u64, first: u64, last: u64) {
        let mut found = self.found.lock().expect("damage ledger");
        let mut known = self.known();
        known.extend(found.iter().copied());
        if covered(first, last, &known) {
            return;
        }
        found.push((first, last));
        tracing::error!(
            bucket,
            first_seq = first,
            last_seq = last,
            "the store is damaged: bucket {bucket} does not hold seqs {first}..{last}; /readyz \
             answers 503 until `hlgate store accept-loss` (see `hlgate store check`)"
        );
    }

    /// What was accepted or reported at start.
    fn known(&self) -> Vec<(u64, u64)> {
        let start = self
            .at_start
            .get()
            .map(|d| d.lost.as_slice())
            .unwrap_or(&[]);
        let mut known = self.accepted.clone();
        known.extend(start.iter().map(|l| (l.first, l.last)));
        known
    }

    /// Everything lost and not accepted, told apart at `watermark`.
    pub fn damage(&self, watermark: u64) -> Damage {
        let mut damage = self.at_start.get().cloned().unwrap_or_default();
        let found: Vec<Lost> = {
            let found = self.found.lock().expect("damage ledger");
            found
                .iter()
                .flat_map(|&(a, b)| split_at(a, b, watermark))
                .collect()
        };
        damage.lost.extend(subtract(found, &self.known()));
        damage.lost.sort_by_key(|l| l.first);
        damage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(first: u64, last: u64) -> Held {
        Held {
            first,
            last,
            expired: false,
        }
    }

    fn expired(first: u64, last: u64) -> Held {
        Held {
            expired: true,
            ..held(first, last)
        }
    }

    fn lost(first: u64, last: u64) -> Lost {
        Lost {
            first,
            last,
            published: false,
        }
    }

    fn published(first: u64, last: u64) -> Lost {
        Lost {
            published: true,
            ..lost(first, last)
        }
    }

    #[test]
    fn missing_finds_nothing_in_an_empty_store_or_adjacent_buckets() {
        assert_eq!(missing(&[], 0, 0), []);
        assert_eq!(missing(&[], 10, 20), []);
        assert_eq!(missing(&[held(1, 10), held(11, 20)], 5, 20), []);
        // An empty newest bucket right after the last event.
        assert_eq!(missing(&[held(1, 10), held(11, 10)], 10, 10), []);
    }

    #[test]
    fn missing_finds_gaps_between_buckets_split_at_the_watermark() {
        assert_eq!(missing(&[held(1, 10), held(21, 30)], 0, 30), [lost(11, 20)]);
        assert_eq!(
            missing(&[held(1, 10), held(21, 30)], 15, 30),
            [published(11, 15), lost(16, 20)]
        );
        assert_eq!(
            missing(&[held(1, 10), held(21, 30)], 30, 30),
            [published(11, 20)]
        );
    }

    #[test]
    fn missing_excuses_a_confirmed_gap_after_an_expired_bucket_only() {
        // The sweeper removes expired confirmed buckets in any order.
        assert_eq!(missing(&[expired(1, 10), held(21, 30)], 30, 30), []);
        // What is not confirmed yet is never swept.
        assert_eq!(
            missing(&[expired(1, 10), held(21, 30)], 15, 30),
            [lost(16, 20)]
        );
        // Below the oldest bucket, confirmed seqs are the sweeper's; others are lost.
        assert_eq!(missing(&[held(11, 20)], 10, 20), []);
        assert_eq!(missing(&[held(11, 20)], 5, 20), [lost(6, 10)]);
    }

    #[test]
    fn missing_finds_the_newest_bucket_cut_short_below_the_watermark_or_the_last_commit() {
        // The watermark says 15 was confirmed, so it was written.
        assert_eq!(missing(&[held(1, 10)], 15, 15), [published(11, 15)]);
        // A clean stop recorded 20 as committed.
        assert_eq!(missing(&[held(1, 10)], 0, 20), [lost(11, 20)]);
        assert_eq!(
            missing(&[held(1, 10)], 15, 20),
            [published(11, 15), lost(16, 20)]
        );
        // A newest bucket that lost everything.
        assert_eq!(missing(&[held(1, 0)], 0, 20), [lost(1, 20)]);
    }

    #[test]
    fn split_at_tells_published_from_unpublished() {
        assert_eq!(split_at(5, 4, 0), []);
        assert_eq!(split_at(5, 9, 0), [lost(5, 9)]);
        assert_eq!(split_at(5, 9, 4), [lost(5, 9)]);
        assert_eq!(split_at(5, 9, 5), [published(5, 5), lost(6, 9)]);
        assert_eq!(split_at(5, 9, 9), [published(5, 9)]);
        assert_eq!(split_at(5, 9, 100), [published(5, 9)]);
    }

    #[test]
    fn subtract_removes_only_the_accepted_seqs() {
        assert_eq!(subtract(vec![], &[(1, 10)]), []);
        assert_eq!(subtract(vec![lost(5, 9)], &[]), [lost(5, 9)]);
        // Adjacent on either side: nothing in common.
        assert_eq!(
            subtract(vec![lost(5, 9)], &[(1, 4), (10, 20)]),
            [lost(5, 9)]
        );
        // Exactly, or covering.
        assert_eq!(subtract(vec![lost(5, 9)], &[(5, 9)]), []);
        assert_eq!(subtract(vec![lost(5, 9)], &[(1, 20)]), []);
        // Overlapping one end, the other, or the middle.
        assert_eq!(subtract(vec![lost(5, 9)], &[(1, 6)]), [lost(7, 9)]);
        assert_eq!(subtract(vec![lost(5, 9)], &[(8, 20)]), [lost(5, 7)]);
        assert_eq!(
            subtract(vec![lost(5, 9)], &[(7, 7)]),
            [lost(5, 6), lost(8, 9)]
        );
        // Several ranges, in any order, keeping whether each was published.
        assert_eq!(
            subtract(
                vec![lost(20, 29), published(1, 9)],
                &[(25, 40), (3, 4), (4, 5)]
            ),
            [published(1, 2), published(6, 9), lost(20, 24)]
        );
        // The ends of the seq space.
        assert_eq!(subtract(vec![lost(1, 5)], &[(0, 2)]), [lost(3, 5)]);
        assert_eq!(
            subtract(
                vec![lost(u64::MAX - 5, u64::MAX)],
                &[(u64::MAX - 1, u64::MAX)]
            ),
            [lost(u64::MAX - 5, u64::MAX - 2)]
        );
    }

    #[test]
    fn the_watermark_moves_over_accepted_losses_that_follow_it() {
        assert_eq!(past_accepted(10, &[]), 10);
        // Not adjacent: there is an unconfirmed seq between.
        assert_eq!(past_accepted(10, &[(12, 20)]), 10);
        assert_eq!(past_accepted(10, &[(11, 20)]), 20);
        // Below or reaching back under it.
        assert_eq!(past_accepted(10, &[(1, 5)]), 10);
        assert_eq!(past_accepted(10, &[(5, 15)]), 15);
        // Chains of adjacent or overlapping ranges, in any order.
        assert_eq!(past_accepted(10, &[(21, 30), (11, 20), (25, 40)]), 40);
        assert_eq!(past_accepted(0, &[(1, 1), (2, 2), (4, 4)]), 2);
    }

    #[test]
    fn the_ledger_reports_what_is_news_once_split_at_the_current_watermark() {
        let ledger = Ledger::new(vec![(31, 40)]);
        ledger.started(Damage {
            lost: vec![lost(41, 45)],
            set_aside: Vec::new(),
        });
        assert!(ledger.is_accepted(31, 40) && ledger.is_accepted(35, 35));
        assert!(!ledger.is_accepted(30, 40));
        // Accepted or known from the start: not news.
        ledger.found(31, 32, 44);
        assert_eq!(ledger.damage(0).lost, [lost(41, 45)]);
        // Partly news: what is new is reported, once.
        ledger.found(1, 5, 12);
        ledger.found(1, 5, 12);
        ledger.found(1, 6, 8);
        assert_eq!(ledger.damage(0).lost, [lost(5, 12), lost(41, 45)]);
        assert_eq!(
            ledger.damage(8).lost,
            [published(5, 8), lost(9, 12), lost(41, 45)]
        );
        ledger.found(1, 25, 35);
        assert_eq!(
            ledger.damage(0).lost,
            [lost(5, 12), lost(25, 30), lost(41, 45)]
        );
    }
}
