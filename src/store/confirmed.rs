//! Seqs the broker confirmed above the watermark. After a nack the relay goes on with the
//! entries behind the refused one; what it confirmed there is kept here, on disk with the
//! watermark, so that neither this process nor the next start publishes it again.

use std::collections::BTreeMap;

/// Disjoint ranges of confirmed seqs, none adjacent to another.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Confirmed {
    /// First seq → last seq of each range.
    ranges: BTreeMap<u64, u64>,
    /// How many seqs the ranges hold.
    count: u64,
}

impl Confirmed {
    /// Adds `first..=last`, merging it with the ranges it touches.
    pub fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let (mut first, mut last) = (first, last);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|&(_, &end)| end.saturating_add(1) >= first)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in touching {
            self.ranges.remove(&a);
            self.count -= b - a + 1;
            first = first.min(a);
            last = last.max(b);
        }
        self.ranges.insert(first, last);
        self.count += last - first + 1;
    }

    /// Drops what is at or below `watermark` and takes the range that continues it, if any:
    /// returns the watermark that follows.
    pub fn advance(&mut self, watermark: u64) -> u64 {
        let mut watermark = watermark;
        while let Some((&first, &last)) = self.ranges.first_key_value() {
            if first > watermark.saturating_add(1) {
                break;
            }
            self.ranges.remove(&first);
            self.count -= last - first + 1;
            watermark = watermark.max(last);
        }
        watermark
    }

    /// Whether `seq` is confirmed.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &last)| last >= seq)
    }

    /// How many seqs are confirmed above the watermark.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// (first, last) pairs, u64 BE each.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ranges.len() * 16);
        for (first, last) in &self.ranges {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&last.to_be_bytes());
        }
        out
    }

    /// `None` for bytes that are not (first, last) pairs.
    pub fn decode(bytes: &[u8]) -> Option<Confirmed> {
        if bytes.len() % 16 != 0 {
            return None;
        }
        let mut confirmed = Confirmed::default();
        for pair in bytes.chunks_exact(16) {
            let first = u64::from_be_bytes(pair[..8].try_into().ok()?);
            let last = u64::from_be_bytes(pair[8..].try_into().ok()?);
            if first > last {
                return None;
            }
            confirmed.insert(first, last);
        }
        Some(confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_merge_and_the_watermark_takes_the_one_that_continues_it() {
        let mut c = Confirmed::default();
        c.insert(5, 6);
        c.insert(9, 9);
        c.insert(7, 7);
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.count(), 4);
        assert!(c.contains(5) && c.contains(7) && !c.contains(8) && c.contains(9));
        // 4 is not confirmed: the watermark at 2 cannot move.
        assert_eq!(c.advance(2), 2);
        assert_eq!(c.advance(4), 7);
        assert_eq!(c.count(), 1);
        assert_eq!(c.advance(8), 9);
        assert!(c.is_empty());
        assert_eq!(Confirmed::decode(&[1; 15]), None);
    }

    proptest! {
        /// Against a plain set: membership, count, the watermark's move, and the encoding.
        #[test]
        fn behaves_like_a_set(
            ops in proptest::collection::vec((0u64..60, 0u64..6), 0..40),
            watermark in 0u64..30,
        ) {
            let mut c = Confirmed::default();
            let mut model = std::collections::BTreeSet::new();
            for (first, len) in ops {
                c.insert(first, first + len);
                model.extend(first..=first + len);
            }
            prop_assert_eq!(c.count(), model.len() as u64);
            for s in 0..70 {
                prop_assert_eq!(c.contains(s), model.contains(&s));
            }
            prop_assert_eq!(Confirmed::decode(&c.encode()), Some(c.clone()));
            let mut expected = watermark;
            while model.contains(&(expected + 1)) {
                expected += 1;
            }
            let moved = c.advance(watermark);
            prop_assert_eq!(moved, expected);
            model.retain(|&s| s > moved);
            prop_assert_eq!(c.count(), model.len() as u64);
        }
    }
}
