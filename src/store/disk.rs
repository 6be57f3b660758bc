//! What readiness reads of the writer: the data disk's free space against the reserve new
//! events must leave, whether the last write worked, and how long the commit under way has
//! taken.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::entry::now_ms;

use super::error::StoreError;

/// New events are refused (429) while the data disk has less free space than this share of its
/// size, kept within [`RESERVE_MIN`, `RESERVE_MAX`]: sled needs room to finish what it writes
/// (the dedup keys, the checkpoint, the token vault), and a fixed reserve would be all of a
/// small volume.
const RESERVE_SHARE: u64 = 20;
const RESERVE_MIN: u64 = 2 * 1024 * 1024;
const RESERVE_MAX: u64 = 64 * 1024 * 1024;
/// The data disk's free space and the part of it new events must leave free.
#[derive(Clone, Copy)]
pub(super) struct Disk {
    free: u64,
    reserve: u64,
}

impl Disk {
    /// Whether a batch writing `bytes` of entries leaves the reserve free. sled writes more than
    /// the entries (its log framing, at times a new segment), and it never finishes a flush
    /// after a write error: it must not run out of space, so it gets twice what it is given.
    pub(super) fn takes(&self, bytes: u64) -> Result<(), StoreError> {
        if self.free >= self.reserve.saturating_add(bytes.saturating_mul(2)) {
            Ok(())
        } else {
            Err(StoreError::DiskLow {
                free: self.free,
                reserve: self.reserve,
            })
        }
    }
}

/// What readiness reads of the writer: the disk, the last write, the commit under way.
pub(super) struct Health {
    /// The data dir, whose free space is checked before each batch.
    dir: PathBuf,
    /// What the last disk check found (the writer checks before each batch).
    pub(super) disk_low: AtomicBool,
    /// Set when the last write failed; cleared by the next good one. For readiness only: every
    /// batch is tried, so that the store takes events again as soon as the disk lets it.
    pub(super) write_failed: AtomicBool,
    /// When the commit being written began (unix ms), 0 between commits.
    pub(super) writing_since: AtomicU64,
    /// An fsync of the log failed: nothing more is stored until a restart.
    pub(super) stopped: AtomicBool,
}

impl Health {
    pub fn new(dir: PathBuf) -> Health {
        Health {
            dir,
            disk_low: AtomicBool::new(false),
            write_failed: AtomicBool::new(false),
            writing_since: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// A failed fsync stopped the event log: the store takes no event until it is restarted.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The data disk's free space and reserve, recorded for readiness. `None` when it cannot
    /// be read: the write itself then tells.
    pub fn check_disk(&self) -> Option<Disk> {
        let disk = fs2::statvfs(&self.dir).ok().map(|stats| Disk {
            free: stats.available_space(),
            reserve: (stats.total_space() / RESERVE_SHARE).clamp(RESERVE_MIN, RESERVE_MAX),
        });
        let low = disk.is_some_and(|d| d.free < d.reserve);
        self.disk_low.store(low, Ordering::Relaxed);
        disk
    }

    /// The disk had room and the last write worked, as of the last batch or disk check.
    pub fn wrote_fine(&self) -> bool {
        !self.disk_low.load(Ordering::Relaxed)
            && !self.write_failed.load(Ordering::Relaxed)
            && !self.is_stopped()
    }

    /// How long the commit being written has taken so far; zero between commits.
    pub fn stuck_for(&self) -> Duration {
        match self.writing_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(now_ms().saturating_sub(since)),
        }
    }
}
