//! The dedup keys' records ([`DedupRecord`]), and the key index behind `dedup`: which buckets may hold a dedup key, without opening any, from
//! the 64-bit hashes of the keys of every bucket that no longer takes events.
//!
//! The hashes sit in sorted runs of (hash, bucket), each run covering consecutive buckets. A
//! bucket's run is merged with the one before while that one is at most twice as large, so
//! there are O(log n) runs and a lookup is that many binary searches, however many buckets the
//! retention holds (one sorted slice per bucket would cost a search per bucket). Twelve bytes a
//! key.
//!
//! Equal hashes only point dedup at a bucket's database, which has the last word.

use std::hash::Hasher;

/// The hash the index keeps of a dedup key.
pub(super) fn key_hash(dedup_key: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(dedup_key);
    hasher.finish()
}

/// The value of a `d` record: when the delivery was accepted and the seqs it took, so that a
/// lookup by dedup key finds its events. Records written before the seqs were kept hold the
/// acceptance time alone (`seqs` is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupRecord {
    pub accepted_ms: u64,
    /// First seq and seq count; a delivery of no events (an empty array) has a count of 0.
    pub seqs: Option<(u64, u32)>,
}

impl DedupRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        if let Some((first, count)) = self.seqs {
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        out
    }

    /// `None` for bytes no version wrote.
    pub fn decode(bytes: &[u8]) -> Option<DedupRecord> {
        let accepted_ms = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let seqs = match bytes.len() {
            8 => None,
            20 => Some((
                u64::from_be_bytes(bytes[8..16].try_into().ok()?),
                u32::from_be_bytes(bytes[16..20].try_into().ok()?),
            )),
            _ => return None,
        };
        Some(DedupRecord { accepted_ms, seqs })
    }
}

#[derive(Default)]
pub(super) struct KeyIndex {
    /// Oldest buckets first.
    runs: Vec<Run>,
}

struct Run {
    /// Sorted by hash, then by bucket.
    hashes: Vec<u64>,
    /// For each hash, its bucket: an index into `buckets`.
    owners: Vec<u32>,
    /// The first seqs of the buckets it covers, ascending.
    buckets: Vec<u64>,
}

impl Run {
    /// `older` covers only buckets before `newer`'s.
    fn merge(older: Run, newer: Run) -> Run {
        let offset = older.buckets.len() as u32;
        let total = older.hashes.len() + newer.hashes.len();
        let mut hashes = Vec::with_capacity(total);
        let mut owners = Vec::with_capacity(total);
        let (mut i, mut j) = (0, 0);
        while i < older.hashes.len() || j < newer.hashes.len() {
            // On equal hashes the older bucket goes first, keeping (hash, bucket) order.
            let take_older = j == newer.hashes.len()
                || (i < older.hashes.len() && older.hashes[i] <= newer.hashes[j]);
            if take_older {
                hashes.push(older.hashes[i]);
                owners.push(older.owners[i]);
                i += 1;
            } else {
                hashes.push(newer.hashes[j]);
                owners.push(newer.owners[j] + offset);
                j += 1;
            }
        }
        let mut buckets = older.buckets;
        buckets.extend(newer.buckets);
        Run {
            hashes,
            owners,
            buckets,
        }
    }

    /// Drops the hashes of the buckets before `first_live`.
    fn forget_before(&mut self, first_live: u64) {
        let cut = self.buckets.partition_point(|&b| b < first_live);
        if cut == 0 {
            return;
        }
        let mut kept = 0;
        for i in 0..self.hashes.len() {
            if self.owners[i] as usize >= cut {
                self.hashes[kept] = self.hashes[i];
                self.owners[kept] = self.owners[i] - cut as u32;
                kept += 1;
            }
        }
        self.hashes.truncate(kept);
        self.owners.truncate(kept);
        self.hashes.shrink_to_fit();
        self.owners.shrink_to_fit();
        self.buckets.drain(..cut);
    }
}

impl KeyIndex {
    /// Adds the key hashes of the bucket starting at `bucket`, newer than every one added before.
    pub fn add(&mut self, bucket: u64, mut hashes: Vec<u64>) {
        if hashes.is_empty() {
            return;
        }
        hashes.sort_unstable();
        let owners = vec![0; hashes.len()];
        self.runs.push(Run {
            hashes,
            owners,
            buckets: vec![bucket],
        });
        while let [.., older, newer] = self.runs.as_slice() {
            if older.hashes.len() > 2 * newer.hashes.len() {
                break;
            }
            let newer = self.runs.pop().expect("two runs");
            let older = self.runs.pop().expect("two runs");
            self.runs.push(Run::merge(older, newer));
        }
    }

    /// The buckets that may hold a key with this hash, newest first.
    pub fn candidates(&self, hash: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for run in self.runs.iter().rev() {
            let start = run.hashes.partition_point(|&h| h < hash);
            let end = start + run.hashes[start..].partition_point(|&h| h == hash);
            // Sorted by bucket within equal hashes: newest last.
            out.extend(
                run.owners[start..end]
                    .iter()
                    .rev()
                    .map(|&o| run.buckets[o as usize]),
            );
        }
        out
    }

    /// Forgets the buckets before `first_live`: they have left the disk.
    pub fn forget_before(&mut self, first_live: u64) {
        self.runs
            .retain(|run| run.buckets.last().is_some_and(|&b| b >= first_live));
        if let Some(oldest) = self.runs.first_mut() {
            oldest.forget_before(first_live);
        }
    }

    /// How many key hashes it holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.hashes.len()).sum()
    }

    /// How many sorted runs they are in.
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_dedup_record_keeps_its_seqs_and_an_old_one_reads_as_a_time_alone() {
        let r = DedupRecord {
            accepted_ms: 7,
            seqs: Some((40, 3)),
        };
        assert_eq!(DedupRecord::decode(&r.encode()), Some(r));
        let old = 7u64.to_be_bytes();
        assert_eq!(
            DedupRecord::decode(&old),
            Some(DedupRecord {
                accepted_ms: 7,
                seqs: None
            })
        );
        // Dedup reads the acceptance time from the first eight bytes of either.
        assert_eq!(&r.encode()[..8], &old);
        assert_eq!(DedupRecord::decode(&[0; 12]), None);
    }

    #[test]
    fn finds_every_bucket_of_a_hash_newest_first_and_forgets_removed_ones() {
        let mut index = KeyIndex::default();
        index.add(1, vec![5, 9, 7]);
        index.add(10, vec![9, 2]);
        index.add(20, vec![]);
        index.add(30, vec![9, 4, 8, 6]);
        assert_eq!(index.candidates(9), vec![30, 10, 1]);
        assert_eq!(index.candidates(7), vec![1]);
        assert!(index.candidates(3).is_empty());
        assert_eq!(index.len(), 9);
        index.forget_before(10);
        assert_eq!(index.candidates(9), vec![30, 10]);
        assert!(index.candidates(7).is_empty());
        assert_eq!(index.len(), 6);
        index.forget_before(31);
        assert_eq!(index.len(), 0);
        assert!(index.candidates(9).is_empty());
    }

    #[test]
    fn many_buckets_stay_in_few_runs() {
        let mut index = KeyIndex::default();
        for bucket in 1..=2800u64 {
            index.add(bucket, (0..10).map(|i| bucket * 100 + i).collect());
        }
        assert!(index.runs() <= 24, "{} runs", index.runs());
        assert_eq!(index.candidates(1234 * 100 + 5), vec![1234]);
    }

    proptest! {
        /// Against a plain list of (bucket, hashes): the same candidates, in the same order.
        #[test]
        fn agrees_with_a_search_of_every_bucket(
            buckets in prop::collection::vec(prop::collection::vec(0u64..64, 0..20), 1..40),
            removed in 0usize..40,
        ) {
            let mut index = KeyIndex::default();
            for (i, hashes) in buckets.iter().enumerate() {
                index.add(i as u64 + 1, hashes.clone());
            }
            let first_live = removed.min(buckets.len()) as u64 + 1;
            index.forget_before(first_live);
            for hash in 0..64 {
                let mut expected = Vec::new();
                for (i, hashes) in buckets.iter().enumerate().rev() {
                    let bucket = i as u64 + 1;
                    if bucket >= first_live {
                        expected.extend(hashes.iter().filter(|&&h| h == hash).map(|_| bucket));
                    }
                }
                prop_assert_eq!(index.candidates(hash), expected);
            }
        }
    }
}
