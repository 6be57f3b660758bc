//! One slice of the event log: a sled database of its own holding the events of a span of
//! acceptance time (or of a bounded size) and the dedup keys accepted with them.
//!
//! Expired data leaves the disk a whole bucket at a time: closing a database and removing its
//! directory gives every byte back at once, where deleting keys one by one from a big sled tree
//! pages each node back into memory and never shrinks the file.
//!
//! sled keeps in memory what it writes and what its reads page in until the database is closed
//! (sled issue 1036). So a bucket that takes no more events and that the relay is not reading
//! is closed: nothing of it stays in memory but the hashes of its dedup keys (in the store's
//! [`KeyIndex`](super::keys::KeyIndex)), which let dedup skip it for every key it never took.
//! It opens again only to be read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use super::keys::key_hash;
use super::{key, seq_of, Entry, StoreError, DEDUP, EVENT};

/// Written into a bucket's directory once its database is set up: a directory without it was
/// being created during a crash, never took an event, and is removed on open.
const READY: &str = "ready";
/// The directory suffix of a bucket being removed.
const GONE: &str = "gone";

pub(super) struct Bucket {
    /// The first seq this bucket holds (or would hold); also its directory name.
    pub first_seq: u64,
    dir: PathBuf,
    /// `None` while closed.
    db: RwLock<Option<sled::Db>>,
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

/// Opens a bucket's database again after it was closed. sled lets go of its file lock only
/// when its I/O threads have dropped their last handle, which can be a moment after the close
/// returned: a reopen that finds the lock still held waits for it, up to a second.
fn reopen(dir: &Path) -> sled::Result<sled::Db> {
    let mut waited = Duration::ZERO;
    loop {
        match config(dir).open() {
            Err(sled::Error::Io(e))
                if waited < Duration::from_secs(1)
                    && e.to_string().contains("could not acquire lock") =>
            {
                std::thread::sleep(Duration::from_millis(10));
                waited += Duration::from_millis(10);
            }
            result => return result,
        }
    }
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
            dir,
            db: RwLock::new(Some(db)),
            last_seq: AtomicU64::new(first_seq - 1),
            newest_ms: AtomicU64::new(now_ms),
            opened_ms: AtomicU64::new(now_ms),
        })
    }

    /// Opens every bucket under `events_dir`, oldest first, with its dedup key hashes, and
    /// removes what a crash left of buckets being created or removed. Each is left closed once
    /// its bounds and key hashes are read: the relay opens the ones it has to publish as it
    /// reaches them, one after the other.
    pub fn open_all(events_dir: &Path, now_ms: u64) -> Result<Vec<(Bucket, Vec<u64>)>, StoreError> {
        std::fs::create_dir_all(events_dir).map_err(sled::Error::Io)?;
        let mut buckets = Vec::new();
        for item in std::fs::read_dir(events_dir).map_err(sled::Error::Io)? {
            let path = item.map_err(sled::Error::Io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name.parse::<u64>() {
                Ok(first_seq) if first_seq > 0 && path.join(READY).exists() => {
                    let (bucket, hashes) = Bucket::open(path.clone(), first_seq, now_ms)?;
                    bucket.close();
                    buckets.push((bucket, hashes));
                }
                Ok(_) => std::fs::remove_dir_all(&path).map_err(sled::Error::Io)?,
                _ if name.ends_with(GONE) => {
                    std::fs::remove_dir_all(&path).map_err(sled::Error::Io)?
                }
                _ => tracing::warn!(path = %path.display(), "not a bucket, left alone"),
            }
        }
        buckets.sort_by_key(|(b, _)| b.first_seq);
        Ok(buckets)
    }

    /// Opens a bucket from disk, reading its bounds and its keys' hashes.
    fn open(dir: PathBuf, first_seq: u64, now_ms: u64) -> Result<(Bucket, Vec<u64>), StoreError> {
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
        let mut hashes = Vec::new();
        for item in db.scan_prefix([DEDUP]).keys() {
            hashes.push(key_hash(&item?[1..]));
        }
        let bucket = Bucket {
            first_seq,
            dir,
            db: RwLock::new(Some(db)),
            last_seq: AtomicU64::new(last.map_or(first_seq - 1, |(seq, _)| seq)),
            newest_ms: AtomicU64::new(last.map_or(now_ms, |(_, ms)| ms)),
            opened_ms: AtomicU64::new(first.map_or(now_ms, |(_, ms)| ms)),
        };
        Ok((bucket, hashes))
    }

    /// Runs `f` on the database, opening it first if it is closed.
    pub fn with_db<T>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let db = self.db.read().expect("bucket database");
            if let Some(db) = db.as_ref() {
                return f(db);
            }
        }
        let mut db = self.db.write().expect("bucket database");
        if db.is_none() {
            *db = Some(reopen(&self.dir)?);
        }
        f(db.as_ref().expect("opened above"))
    }

    /// Closes the database, giving back the memory it holds; returns whether it was open.
    /// Waits for its readers; the next read opens it again.
    pub fn close(&self) -> bool {
        // Dropping the last handle flushes and closes; nothing else holds one.
        self.db.write().expect("bucket database").take().is_some()
    }

    pub fn is_open(&self) -> bool {
        self.db.read().expect("bucket database").is_some()
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

    /// A bucket's entries from `from` on, in seq order.
    pub fn entries_from(
        db: &sled::Db,
        from: u64,
    ) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        db.range(key(EVENT, from)..=key(EVENT, u64::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopen_waits_for_a_lock_still_held_by_a_closing_database() {
        let dir = tempfile::tempdir().unwrap();
        let closing = config(dir.path()).open().unwrap();
        closing.insert(b"k", b"v").unwrap();
        closing.flush().unwrap();
        let release = std::thread::spawn(move || {
            // Well inside the second a reopen waits, however slow the machine.
            std::thread::sleep(Duration::from_millis(20));
            drop(closing);
        });
        let db = reopen(dir.path()).unwrap();
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        release.join().unwrap();
    }

    #[test]
    fn a_reopen_gives_up_on_a_lock_that_stays_held() {
        let dir = tempfile::tempdir().unwrap();
        let _held = config(dir.path()).open().unwrap();
        let e = reopen(dir.path()).unwrap_err();
        assert!(e.to_string().contains("could not acquire lock"), "{e}");
    }
}
