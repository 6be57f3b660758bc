//! The lookups over one store, and how a dedup key's deliveries are found: from the dedup
//! records of a running store, or from the segments of a stopped one.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::index::Indexes;
use crate::store::bucket::Buckets;
use crate::store::error::StoreError;
use crate::store::keys::{key_hash, DedupRecord, KeyIndex};
use crate::store::layout::dedup_db_key;
use crate::store::log::SegmentInfo;
use crate::store::summary::Summary;

/// Where a lookup finds the deliveries of a dedup key.
pub(in crate::store) enum Keys {
    /// The buckets' dedup records, found through the key hashes dedup keeps.
    Records {
        buckets: Arc<Buckets>,
        index: Arc<RwLock<KeyIndex>>,
    },
    /// A stopped store read without opening its databases: the segments of the buckets whose
    /// summaries hold the key's hash (and of those without one), read for the key.
    Segments { events_dir: PathBuf },
}

/// One delivery of a dedup key: its seqs and when it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delivery {
    pub first: u64,
    pub count: u32,
    pub accepted_ms: u64,
}

/// Lookups over one store.
pub struct Lookup {
    pub(super) indexes: Arc<Indexes>,
    pub(super) meta: sled::Tree,
    keys: Keys,
    /// What a read-only lookup keeps until it is dropped (a copy of the main database).
    pub(super) keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Lookup {
    pub(in crate::store) fn new(indexes: Arc<Indexes>, meta: sled::Tree, keys: Keys) -> Lookup {
        Lookup {
            indexes,
            meta,
            keys,
            keep: None,
        }
    }

    /// The deliveries of `key`, oldest first.
    pub(super) fn deliveries(&self, key: &str) -> Result<Vec<Delivery>, StoreError> {
        let segments = self.indexes.log().segments();
        let mut out = Vec::new();
        match &self.keys {
            Keys::Records { buckets, index } => {
                let list = buckets.all();
                let mut firsts = index
                    .read()
                    .expect("key index")
                    .candidates(key_hash(key.as_bytes()));
                // The bucket taking events is not in the index yet.
                firsts.extend(list.last().map(|b| b.first_seq));
                firsts.sort_unstable();
                firsts.dedup();
                let k = dedup_db_key(key);
                for first in firsts {
                    let Ok(at) = list.binary_search_by_key(&first, |b| b.first_seq) else {
                        continue;
                    };
                    let value = list[at].with_db(|db| Ok(db.get(&k)?))?;
                    match value.as_deref().and_then(DedupRecord::decode) {
                        Some(DedupRecord {
                            accepted_ms,
                            seqs: Some((first, count)),
                        }) => out.push(Delivery {
                            first,
                            count,
                            accepted_ms,
                        }),
                        // Written before records kept their seqs: the segment says.
                        Some(_) => out.extend(self.scan_for_key(&segments, first, key)?),
                        None => {}
                    }
                }
            }
            Keys::Segments { events_dir } => {
                let hash = key_hash(key.as_bytes());
                for s in &segments {
                    let dir = events_dir.join(crate::store::layout::bucket_name(s.first_seq));
                    let summary = Summary::load(&dir, s.first_seq);
                    if summary.is_none_or(|sum| sum.hashes.binary_search(&hash).is_ok()) {
                        out.extend(self.scan_for_key(&segments, s.first_seq, key)?);
                    }
                }
            }
        }
        out.sort_by_key(|d| d.first);
        out.dedup();
        Ok(out)
    }

    /// The frames of the segment starting at `first` that carry `key`.
    fn scan_for_key(
        &self,
        segments: &[SegmentInfo],
        first: u64,
        key: &str,
    ) -> Result<Vec<Delivery>, StoreError> {
        let Some(segment) = segments.iter().find(|s| s.first_seq == first) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut next = first;
        while next <= segment.last_seq {
            let read = self.indexes.log().read_from(next, 512)?;
            let Some(end) = read.frames.last().map(|f| f.last_seq()) else {
                break;
            };
            for f in read
                .frames
                .iter()
                .filter(|f| f.first_seq <= segment.last_seq)
            {
                if f.dedup_key() == key.as_bytes() {
                    out.push(Delivery {
                        first: f.first_seq,
                        count: f.seq_count,
                        accepted_ms: f.accepted_ms,
                    });
                }
            }
            next = end + 1;
        }
        Ok(out)
    }
}
