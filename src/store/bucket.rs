//! One slice of the event log: a sled database of its own holding the events of a span of
//! acceptance time and the dedup keys accepted with them.
//!
//! Expired data leaves the disk a whole bucket at a time: closing a database and removing its
//! directory gives every byte back at once, where deleting keys one by one from a big sled tree
//! pages each node back into memory and never shrinks the file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{key, seq_of, Entry, StoreError, EVENT};

/// Written into a bucket's directory once its database is set up: a directory without it was
/// being created during a crash, never took an event, and is removed on open.
const READY: &str = "ready";
/// The directory suffix of a bucket being removed.
const GONE: &str = "gone";

pub(super) struct Bucket {
    /// The first seq this bucket holds (or would hold); also its directory name.
    pub first_seq: u64,
    pub db: sled::Db,
    dir: PathBuf,
    /// The highest seq written here; `first_seq - 1` while empty.
    last_seq: AtomicU64,
    /// Acceptance time of the newest entry; the creation time while empty.
    newest_ms: AtomicU64,
    /// When this bucket took its first events (its creation while empty): rotation starts a
    /// new one a span later.
    opened_ms: AtomicU64,
}

fn config(dir: &Path) -> sled::Config {
    // Each commit flushes explicitly; no background flusher thread per bucket.
    sled::Config::new()
        .path(dir)
        .cache_capacity(4 * 1024 * 1024)
        .flush_every_ms(None)
}

impl Bucket {
    /// Creates an empty bucket whose first seq will be `first_seq`.
    pub fn create(events_dir: &Path, first_seq: u64, now_ms: u64) -> Result<Bucket, StoreError> {
        let dir = events_dir.join(format!("{first_seq:020}"));
        if dir.exists() && !dir.join(READY).exists() {
            std::fs::remove_dir_all(&dir).map_err(sled::Error::Io)?;
        }
        let db = config(&dir).open()?;
        db.flush()?;
        std::fs::File::create(dir.join(READY))
            .and_then(|f| f.sync_all())
            .map_err(sled::Error::Io)?;
        sync_dir(&dir);
        sync_dir(events_dir);
        Ok(Bucket {
            first_seq,
            db,
            dir,
            last_seq: AtomicU64::new(first_seq - 1),
            newest_ms: AtomicU64::new(now_ms),
            opened_ms: AtomicU64::new(now_ms),
        })
    }

    /// Opens every bucket under `events_dir`, oldest first, and removes what a crash left of
    /// buckets being created or removed.
    pub fn open_all(events_dir: &Path, now_ms: u64) -> Result<Vec<Bucket>, StoreError> {
        std::fs::create_dir_all(events_dir).map_err(sled::Error::Io)?;
        let mut buckets = Vec::new();
        for item in std::fs::read_dir(events_dir).map_err(sled::Error::Io)? {
            let path = item.map_err(sled::Error::Io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name.parse::<u64>() {
                Ok(first_seq) if first_seq > 0 && path.join(READY).exists() => {
                    buckets.push(Bucket::open(path.clone(), first_seq, now_ms)?)
                }
                Ok(_) => std::fs::remove_dir_all(&path).map_err(sled::Error::Io)?,
                _ if name.ends_with(GONE) => {
                    std::fs::remove_dir_all(&path).map_err(sled::Error::Io)?
                }
                _ => tracing::warn!(path = %path.display(), "not a bucket, left alone"),
            }
        }
        buckets.sort_by_key(|b| b.first_seq);
        Ok(buckets)
    }

    fn open(dir: PathBuf, first_seq: u64, now_ms: u64) -> Result<Bucket, StoreError> {
        let db = config(&dir).open()?;
        let entry_at = |item: Option<sled::Result<(sled::IVec, sled::IVec)>>| {
            item.transpose().map(|kv| {
                kv.and_then(|(k, v)| {
                    let seq = seq_of(&k);
                    Entry::decode(seq, &v).map(|e| (seq, e.accepted_ms))
                })
            })
        };
        let first = entry_at(db.scan_prefix([EVENT]).next())?;
        let last = entry_at(db.scan_prefix([EVENT]).next_back())?;
        Ok(Bucket {
            first_seq,
            db,
            dir,
            last_seq: AtomicU64::new(last.map_or(first_seq - 1, |(seq, _)| seq)),
            newest_ms: AtomicU64::new(last.map_or(now_ms, |(_, ms)| ms)),
            opened_ms: AtomicU64::new(first.map_or(now_ms, |(_, ms)| ms)),
        })
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    pub fn opened_ms(&self) -> u64 {
        self.opened_ms.load(Ordering::Acquire)
    }

    pub fn newest_ms(&self) -> u64 {
        self.newest_ms.load(Ordering::Acquire)
    }

    /// How many events it holds.
    pub fn len(&self) -> u64 {
        (self.last_seq() + 1).saturating_sub(self.first_seq)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that seqs up to `last_seq`, accepted at `accepted_ms`, are on disk here.
    pub fn written(&self, last_seq: u64, accepted_ms: u64) {
        if self.is_empty() {
            self.opened_ms.store(accepted_ms, Ordering::Release);
        }
        self.newest_ms.store(accepted_ms, Ordering::Release);
        self.last_seq.store(last_seq, Ordering::Release);
    }

    /// Its entries from `from` on, in seq order.
    pub fn entries_from(&self, from: u64) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        self.db
            .range(key(EVENT, from)..=key(EVENT, u64::MAX))
            .map(|item| {
                let (k, v) = item?;
                let seq = seq_of(&k);
                Entry::decode(seq, &v).ok_or(StoreError::Corrupt(seq))
            })
    }

    /// Closes the database and deletes its directory. The directory is renamed first, so a
    /// crash half-way leaves nothing that looks like a bucket.
    pub fn remove(self) -> std::io::Result<()> {
        let Bucket { db, dir, .. } = self;
        drop(db);
        let gone = dir.with_extension(GONE);
        std::fs::rename(&dir, &gone)?;
        std::fs::remove_dir_all(&gone)
    }
}

/// Makes a rename in `dir` durable (best effort: not every filesystem lets a directory be
/// opened for this).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
