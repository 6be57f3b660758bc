//! Expiry and memory: which buckets leave the store (expired and confirmed, oldest first),
//! deleting them once nothing reads them, and closing the buckets nothing reads
//! ([`close_idle`]) so that sled gives back the memory it holds for them.
//!
//! Expired data leaves the disk a whole bucket at a time, at most a quarter of the retention
//! late. The writer takes buckets off the list (between commits, so that a bucket it starts
//! begins at the next free seq); the sweeper task asks it to every second.

use std::sync::Arc;

use crate::entry::now_ms;

use super::bucket::{Bucket, Buckets};

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Buckets removed from disk.
    pub buckets: usize,
    /// The events they held (with their dedup keys).
    pub events: u64,
}

/// What becomes of the oldest bucket in a sweep.
pub(super) enum Fate {
    Stays,
    Goes,
    /// It is the current one, expired and idle: a new bucket must take over first.
    GoesAfterRotation,
}

/// The oldest bucket goes when it is empty (and not the current one), or when its newest event
/// is older than `cutoff` and every event in it is confirmed (at or below `published`).
pub(super) fn fate_of_oldest(buckets: &Buckets, cutoff: u64, published: u64) -> Fate {
    let oldest = buckets.oldest();
    let is_current = Arc::ptr_eq(&oldest, &buckets.current());
    if oldest.is_empty() {
        if is_current {
            Fate::Stays
        } else {
            Fate::Goes
        }
    } else if oldest.newest_ms() >= cutoff || oldest.last_seq() > published {
        Fate::Stays
    } else if is_current {
        Fate::GoesAfterRotation
    } else {
        Fate::Goes
    }
}

/// Buckets taken off the list, waiting for the last reader to let go before leaving the disk.
#[derive(Default)]
pub(super) struct Graveyard(Vec<Arc<Bucket>>);

impl Graveyard {
    pub fn add(&mut self, bucket: Arc<Bucket>) {
        self.0.push(bucket);
    }

    /// Deletes the removed buckets nothing reads any more.
    pub fn bury(&mut self) {
        let mut keep = Vec::new();
        for bucket in self.0.drain(..) {
            match Arc::try_unwrap(bucket) {
                Ok(bucket) => {
                    if let Err(e) = bucket.remove() {
                        tracing::warn!(error = %e, "could not delete an expired bucket");
                    }
                }
                Err(still_read) => keep.push(still_read),
            }
        }
        self.0 = keep;
    }
}

/// Closes every bucket that takes no more events and that the relay is not reading: all but
/// the current one and those holding the seqs the relay publishes next, from `next` to
/// `relay_ahead` past it. That gives back the memory sled holds for them; a later read opens
/// them again. A bucket closed for the first time gets its summary first (`Bucket::seal`), so
/// that the next start need not open it. Returns how many it closed; blocks while such a
/// bucket is being read.
pub(super) fn close_idle(buckets: &Buckets, next: u64, relay_ahead: u64) -> usize {
    let all = buckets.all();
    let Some((_current, rest)) = all.split_last() else {
        return 0;
    };
    let relay_reads = |b: &Bucket| b.last_seq() >= next && b.first_seq <= next + relay_ahead;
    let now = now_ms();
    rest.iter()
        .filter(|b| !relay_reads(b) && b.is_open())
        .filter(|b| {
            if let Err(e) = b.seal(now) {
                let bucket = b.first_seq;
                tracing::warn!(error = %e, bucket, "could not write a bucket summary");
            }
            b.close()
        })
        .count()
}
