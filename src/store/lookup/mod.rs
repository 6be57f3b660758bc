//! Event lookup: which stored events match a query, and where each one stands.
//!
//! Exact lookups by dedup key (or webhook id, which is the key when present) go through the
//! dedup records, which name a delivery's seqs; tenant and type go through each segment's
//! lookup index (`rows`, `sidecar`, `index`); a window through the index's acceptance times;
//! what is left to check (a body substring, the state) is checked on the events read. States
//! come from the records the relay leaves in `meta` (`states`). `offline` opens a stopped
//! store's data dir for the same lookups without taking any lock a start needs.

mod index;
mod offline;
mod query;
mod rows;
mod sidecar;
mod states;

pub use offline::open_read_only;
pub use states::State;

pub(super) use index::Indexes;
pub(super) use rows::{array_rows, ActiveRows, Row};
pub(super) use states::{forget_before, quarantine, ConfirmTimes};

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::entry::Entry;

use super::bucket::Buckets;
use super::dedup::DedupRecord;
use super::error::StoreError;
use super::keys::{key_hash, KeyIndex};
use super::layout::dedup_db_key;
use super::log::SegmentInfo;
use super::summary::Summary;

/// What `GET /v1/events` asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub key: Option<String>,
    pub webhook_id: Option<String>,
    pub tenant: Option<String>,
    pub event_type: Option<String>,
    /// Acceptance times, unix ms, both included.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub state: Option<StateFilter>,
    /// A substring of the body.
    pub q: Option<String>,
    pub limit: usize,
    /// Only seqs past this one (below it newest first, above it oldest first).
    pub after: Option<u64>,
    pub ascending: bool,
    /// How long a query with `q` reads bodies before it answers what it found, with a cursor.
    pub budget: Option<Duration>,
}

/// The states a query can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Pending,
    Published,
    Quarantined,
    Lost,
}

impl StateFilter {
    pub fn parse(text: &str) -> Option<StateFilter> {
        Some(match text {
            "pending" => StateFilter::Pending,
            "published" => StateFilter::Published,
            "quarantined" => StateFilter::Quarantined,
            "lost" => StateFilter::Lost,
            _ => return None,
        })
    }

    fn takes(self, state: &State) -> bool {
        matches!(
            (self, state),
            (StateFilter::Pending, State::Pending)
                | (StateFilter::Published, State::Published { .. })
                | (StateFilter::Quarantined, State::Quarantined { .. })
                | (StateFilter::Lost, State::Lost)
        )
    }
}

/// One event a lookup found.
#[derive(Debug, Clone)]
pub struct Found {
    pub seq: u64,
    /// 0 when a lost event's time is not known.
    pub accepted_ms: u64,
    pub dedup_key: Option<String>,
    /// The event as stored; `None` for a lost one whose frame cannot be read.
    pub entry: Option<Entry>,
    pub state: State,
}

/// A page of events, and the seq the next page goes on from.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<Found>,
    pub next: Option<u64>,
}

/// Where a lookup finds the deliveries of a dedup key.
pub(super) enum Keys {
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
struct Delivery {
    first: u64,
    count: u32,
    accepted_ms: u64,
}

/// Lookups over one store.
pub struct Lookup {
    indexes: Arc<Indexes>,
    meta: sled::Tree,
    keys: Keys,
    /// What a read-only lookup copied, removed when it is dropped.
    _copy: Option<offline::Copy>,
}

impl Lookup {
    pub(super) fn new(indexes: Arc<Indexes>, meta: sled::Tree, keys: Keys) -> Lookup {
        Lookup {
            indexes,
            meta,
            keys,
            _copy: None,
        }
    }

    /// The deliveries of `key`, oldest first.
    fn deliveries(&self, key: &str) -> Result<Vec<Delivery>, StoreError> {
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
                    let dir = events_dir.join(super::layout::bucket_name(s.first_seq));
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
