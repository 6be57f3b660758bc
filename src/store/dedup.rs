//! Dedup: was a dedup key accepted within the retention? [`DedupKeys`] is the seam where a
//! second backend (a dedup store shared by several replicas) plugs in; [`BucketKeys`] answers
//! from this store's buckets.
//!
//! The `d<dedup key>` records themselves are written by the writer in the batch that holds the
//! delivery's entries, so that one atomic commit covers both. What stays in memory are the
//! 64-bit hashes of the keys: the current bucket's in a set, every other bucket's in the
//! [`KeyIndex`], so that a lookup opens only the buckets that took a key with the same hash.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::loglimit::LogLimit;

use super::bucket::Buckets;
use super::error::StoreError;
use super::keys::{key_hash, KeyIndex};
use super::layout::dedup_db_key;

/// Where the writer asks whether a delivery is a redelivery, and tells which keys it took.
pub(super) trait DedupKeys {
    /// Whether `dedup_key` was accepted less than the retention before `now_ms`.
    fn lookup(&self, dedup_key: &str, now_ms: u64) -> Result<bool, StoreError>;
    /// Records a key the writer has just made durable, accepted at `accepted_ms`.
    fn record(&mut self, dedup_key: &str, accepted_ms: u64);
}

/// Dedup from the buckets' own `d` records, found through the key hashes.
pub(super) struct BucketKeys {
    buckets: Arc<Buckets>,
    retention_ms: u64,
    /// The dedup key hashes of every bucket but the current one. Lookups by key read it too;
    /// the writer takes it for writing only when a bucket ends or leaves.
    index: Arc<RwLock<KeyIndex>>,
    /// The dedup key hashes of the current bucket, for the index once it is full.
    current: HashSet<u64>,
}

impl BucketKeys {
    pub fn new(buckets: Arc<Buckets>, retention_ms: u64, index: KeyIndex) -> BucketKeys {
        BucketKeys {
            buckets,
            retention_ms,
            index: Arc::new(RwLock::new(index)),
            current: HashSet::new(),
        }
    }

    /// Whether a key accepted at `accepted_ms` is still within the retention.
    fn live(&self, accepted_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(accepted_ms) < self.retention_ms
    }

    /// The key hashes of the buckets that take no more events, for lookups by key.
    pub fn index(&self) -> Arc<RwLock<KeyIndex>> {
        self.index.clone()
    }

    /// A new bucket took over from the one starting at `previous`: its keys go to the index.
    pub fn rotated(&mut self, previous: u64) {
        let keys = std::mem::take(&mut self.current);
        let mut index = self.index.write().expect("key index");
        index.add(previous, keys.into_iter().collect());
    }

    /// Forgets the buckets before `first_live`: they have left the disk.
    pub fn forget_before(&mut self, first_live: u64) {
        self.index
            .write()
            .expect("key index")
            .forget_before(first_live);
    }
}

impl DedupKeys for BucketKeys {
    /// The newest record of a key decides: accepted within the retention means duplicate.
    /// Only the buckets that took a key with its hash are looked in.
    fn lookup(&self, dedup_key: &str, now_ms: u64) -> Result<bool, StoreError> {
        let hash = key_hash(dedup_key.as_bytes());
        let k = dedup_db_key(dedup_key);
        let buckets = self.buckets.read();
        let current = buckets.last().expect("the store always has a bucket");
        let current = self.current.contains(&hash).then_some(current.first_seq);
        let candidates = self.index.read().expect("key index").candidates(hash);
        for first_seq in current.into_iter().chain(candidates) {
            let Ok(at) = buckets.binary_search_by_key(&first_seq, |b| b.first_seq) else {
                continue;
            };
            let bucket = &buckets[at];
            let record = match bucket.with_db(|db| Ok(db.get(&k)?)) {
                Ok(record) => record,
                // Its events are in its segment, which took this key's hash: the record is
                // only the acceptance time.
                Err(e) if bucket.is_logged() => {
                    // Every lookup that reaches it meets this: a line per minute.
                    static UNREADABLE: LogLimit = LogLimit::new(Duration::from_secs(60));
                    if let Some(held_back) = UNREADABLE.admit(&e.to_string()) {
                        tracing::error!(
                            error = %e,
                            bucket = first_seq,
                            held_back,
                            "a bucket's dedup database cannot be read; dedup answers from its key hashes"
                        );
                    }
                    return Ok(self.live(bucket.newest_ms(), now_ms));
                }
                Err(e) => return Err(e),
            };
            match record {
                Some(v) => {
                    let accepted = v
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes);
                    return Ok(accepted.is_none_or(|a| self.live(a, now_ms)));
                }
                // A logged bucket took a key with this hash and its database lost the record
                // (cut short by damage): a 64-bit hash does not collide by chance, so this is a
                // redelivery, and taking it again would publish it twice.
                None if bucket.is_logged() => return Ok(self.live(bucket.newest_ms(), now_ms)),
                None => {}
            }
        }
        Ok(false)
    }

    /// The `d` record is in the commit already; only its hash is kept, for the next lookups.
    fn record(&mut self, dedup_key: &str, _accepted_ms: u64) {
        self.current.insert(key_hash(dedup_key.as_bytes()));
    }
}
