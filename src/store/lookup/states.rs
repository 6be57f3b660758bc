//! What became of the events after they were stored, as lookups tell it: in the main
//! database's `meta` tree beside the watermark, written with it, and bounded by the retention
//! (the records of swept seqs go with their buckets).
//!
//! - `q` + seq (u64 BE) → when it was quarantined (unix ms, u64 BE), then why (UTF-8)
//! - `p` + first seq (u64 BE) → last seq, then when they were confirmed (unix ms), u64 BE
//!   each: seqs confirmed in order within a second share one record, so that a busy relay
//!   writes about one a second
//!
//! An event is `lost` when an operator accepted its loss, `quarantined` when a record says so,
//! `published` when the watermark or the confirmed ranges above it cover it, else `pending`.

use sled::Batch;

use crate::store::confirmed::Confirmed;
use crate::store::error::StoreError;
use crate::store::layout::{accepted, meta_u64, CONFIRMED, WATERMARK};

const QUARANTINED: u8 = b'q';
const CONFIRMED_AT: u8 = b'p';
/// Seqs confirmed in order within this long share a record.
const SHARE_MS: u64 = 1000;
/// A quarantine reason is kept to this many bytes.
const MAX_REASON: usize = 1024;

fn key(prefix: u8, seq: u64) -> [u8; 9] {
    crate::store::layout::key(prefix, seq)
}

fn be(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Where an event stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Pending,
    /// `at_ms`: when the broker confirmed it, within a second; `None` when it was confirmed
    /// before such records were kept.
    Published {
        at_ms: Option<u64>,
    },
    Quarantined {
        at_ms: u64,
        reason: String,
    },
    Lost,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Published { .. } => "published",
            State::Quarantined { .. } => "quarantined",
            State::Lost => "lost",
        }
    }
}

/// The marks one lookup reads once: the watermark, what is confirmed above it, and the
/// losses an operator accepted.
pub struct Marks {
    pub watermark: u64,
    confirmed: Confirmed,
    pub lost: Vec<(u64, u64)>,
}

impl Marks {
    pub fn read(meta: &sled::Tree) -> Result<Marks, StoreError> {
        Ok(Marks {
            watermark: meta_u64(meta, WATERMARK)?,
            confirmed: meta
                .get(CONFIRMED)?
                .and_then(|v| Confirmed::decode(&v))
                .unwrap_or_default(),
            lost: accepted(meta)?,
        })
    }

    pub fn is_lost(&self, seq: u64) -> bool {
        self.lost.iter().any(|&(a, b)| a <= seq && seq <= b)
    }

    /// Where `seq` stands.
    pub fn state(&self, meta: &sled::Tree, seq: u64) -> Result<State, StoreError> {
        if self.is_lost(seq) {
            return Ok(State::Lost);
        }
        if let Some(v) = meta.get(key(QUARANTINED, seq))? {
            let at_ms = be(&v, 0).unwrap_or(0);
            let reason = String::from_utf8_lossy(v.get(8..).unwrap_or_default()).into_owned();
            return Ok(State::Quarantined { at_ms, reason });
        }
        if seq <= self.watermark || self.confirmed.contains(seq) {
            return Ok(State::Published {
                at_ms: confirmed_at(meta, seq)?,
            });
        }
        Ok(State::Pending)
    }
}

/// When `seq` was confirmed, from the records (the newest few that start at or below it).
fn confirmed_at(meta: &sled::Tree, seq: u64) -> Result<Option<u64>, StoreError> {
    let range = key(CONFIRMED_AT, 0)..=key(CONFIRMED_AT, seq);
    for item in meta.range(range).rev().take(4) {
        let (_, v) = item?;
        if let (Some(last), Some(ms)) = (be(&v, 0), be(&v, 8)) {
            if last >= seq {
                return Ok(Some(ms));
            }
        }
    }
    Ok(None)
}

/// The quarantined seqs within `first..=last`, in seq order.
pub fn quarantined(meta: &sled::Tree, first: u64, last: u64) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for k in meta
        .range(key(QUARANTINED, first)..=key(QUARANTINED, last))
        .keys()
    {
        out.push(crate::store::layout::seq_of(&k?));
    }
    Ok(out)
}

/// Adds the record of a quarantined seq to `batch`.
pub fn quarantine(batch: &mut Batch, seq: u64, at_ms: u64, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = at_ms.to_be_bytes().to_vec();
    v.extend_from_slice(&reason.as_bytes()[..end]);
    batch.insert(&key(QUARANTINED, seq), v);
}

/// The confirm-time record being extended (the relay's alone, under the outbox's lock).
#[derive(Debug, Default)]
pub struct ConfirmTimes {
    /// First and last seq of the newest record, and when it began.
    open: Option<(u64, u64, u64)>,
}

impl ConfirmTimes {
    /// Adds to `batch` the records of `ranges` confirmed at `now_ms`.
    pub fn record(&mut self, batch: &mut Batch, ranges: &[(u64, u64)], now_ms: u64) {
        for &(first, last) in ranges {
            let (start, began) = match self.open {
                Some((f, l, began))
                    if l + 1 == first && now_ms.saturating_sub(began) < SHARE_MS =>
                {
                    (f, began)
                }
                _ => (first, now_ms),
            };
            self.open = Some((start, last, began));
            let mut v = last.to_be_bytes().to_vec();
            v.extend_from_slice(&now_ms.to_be_bytes());
            batch.insert(&key(CONFIRMED_AT, start), v);
        }
    }
}

/// Removes the records of the seqs before `seq` (swept with their buckets).
pub fn forget_before(meta: &sled::Tree, seq: u64) -> Result<(), StoreError> {
    let mut batch = Batch::default();
    for k in meta
        .range(key(QUARANTINED, 0)..key(QUARANTINED, seq))
        .keys()
    {
        batch.remove(k?);
    }
    for item in meta.range(key(CONFIRMED_AT, 0)..key(CONFIRMED_AT, seq)) {
        let (k, v) = item?;
        if be(&v, 0).is_some_and(|last| last < seq) {
            batch.remove(k);
        }
    }
    meta.apply_batch(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("meta").unwrap()
    }

    #[test]
    fn each_state_is_told_from_the_records_and_the_marks() {
        let meta = meta();
        let mut batch = Batch::default();
        let mut times = ConfirmTimes::default();
        times.record(&mut batch, &[(1, 3)], 1_000);
        times.record(&mut batch, &[(4, 5)], 1_500);
        times.record(&mut batch, &[(7, 7)], 1_600);
        quarantine(&mut batch, 6, 1_700, "nacked");
        batch.insert(WATERMARK, &7u64.to_be_bytes());
        batch.insert(
            crate::store::layout::ACCEPTED,
            [2u64, 2].map(u64::to_be_bytes).concat(),
        );
        meta.apply_batch(batch).unwrap();
        let marks = Marks::read(&meta).unwrap();
        let state = |seq| marks.state(&meta, seq).unwrap();
        // 1..=5 share a record, written last at 1.5 s.
        assert_eq!(state(1), State::Published { at_ms: Some(1_500) });
        assert_eq!(state(2), State::Lost);
        assert_eq!(state(5), State::Published { at_ms: Some(1_500) });
        let reason = "nacked".to_string();
        assert_eq!(
            state(6),
            State::Quarantined {
                at_ms: 1_700,
                reason
            }
        );
        assert_eq!(state(7), State::Published { at_ms: Some(1_600) });
        assert_eq!(state(8), State::Pending);
        assert_eq!(quarantined(&meta, 1, 100).unwrap(), [6]);
        forget_before(&meta, 7).unwrap();
        assert!(quarantined(&meta, 1, 100).unwrap().is_empty());
        assert_eq!(confirmed_at(&meta, 5).unwrap(), None);
        assert_eq!(confirmed_at(&meta, 7).unwrap(), Some(1_600));
    }

    #[test]
    fn records_a_second_apart_or_out_of_order_stay_apart() {
        let meta = meta();
        let mut batch = Batch::default();
        let mut times = ConfirmTimes::default();
        times.record(&mut batch, &[(1, 1)], 1_000);
        times.record(&mut batch, &[(2, 2)], 2_000);
        times.record(&mut batch, &[(9, 9), (4, 4)], 2_100);
        meta.apply_batch(batch).unwrap();
        assert_eq!(confirmed_at(&meta, 1).unwrap(), Some(1_000));
        assert_eq!(confirmed_at(&meta, 2).unwrap(), Some(2_000));
        assert_eq!(confirmed_at(&meta, 4).unwrap(), Some(2_100));
        assert_eq!(confirmed_at(&meta, 3).unwrap(), None);
    }
}
