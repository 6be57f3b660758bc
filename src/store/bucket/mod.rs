//! One slice of the store: a directory holding the events of a span of acceptance time (or of
//! a bounded size) in its segment of the event log (`store::log`), and a sled database of its
//! own with the dedup keys accepted with them. A bucket written before the event log holds its
//! events in its database too (it is *not logged*); such buckets are read until they expire.
//!
//! Expired data leaves the disk a whole bucket at a time: closing a database and removing its
//! directory gives every byte back at once, where deleting keys one by one from a big sled tree
//! pages each node back into memory and never shrinks the file.
//!
//! sled keeps in memory what it writes and what its reads page in until the database is closed
//! (sled issue 1036). So a bucket that takes no more events and that the relay is not reading
//! is closed: nothing of it stays in memory but the hashes of its dedup keys (in `dedup`),
//! which let dedup skip it for every key it never took. It opens again only to be read.
//!
//! Closing such a bucket also writes its summary ([`Summary`]). A start reads the summaries and
//! opens no database of a bucket that has one; without one (a bucket that was still taking
//! events, a torn or damaged file) it opens the database, reads the same from it, and writes
//! the summary for the next start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use super::damage::{Ledger, SetAside};
use super::error::{is_lock_error, StoreError};
use super::keys::key_hash;
use super::keys::DedupRecord;
use super::layout::{
    bucket_name, last_of, seq_of, sync_dir, EVENT, GONE, LOGGED, READY, SET_ASIDE, SUMMARY,
};
use super::summary::Summary;

/// A bucket and the hashes of its dedup keys, as a start reads them.
pub(super) type WithKeys = (Bucket, Vec<u64>);

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
    /// Where what its database lacks is reported.
    ledger: Arc<Ledger>,
    /// Its database was found holding less than its bounds claim: it gets no summary, so that
    /// every start reads the database and reports it.
    short: AtomicBool,
    /// Its events are in its log segment; its database holds only dedup keys.
    logged: bool,
}

pub(super) fn config(dir: &Path) -> sled::Config {
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
            Err(sled::Error::Io(e)) if waited < Duration::from_secs(1) && is_lock_error(&e) => {
                std::thread::sleep(Duration::from_millis(10));
                waited += Duration::from_millis(10);
            }
            result => return result,
        }
    }
}

/// How long opening a closed bucket's database may take: a damaged one can hang sled's open,
/// and the writer must not hang with it.
const OPEN_DEADLINE: Duration = Duration::from_secs(5);

/// [`reopen`] on a thread of its own, given up after `deadline` (the thread is left to finish
/// or hang; a database it opens late is dropped, and its lock with it).
fn open_within(dir: &Path, deadline: Duration) -> Result<sled::Db, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let path = dir.to_path_buf();
    std::thread::Builder::new()
        .name("hlgate-sled-open".into())
        .spawn(move || {
            let _ = tx.send(reopen(&path));
        })
        .map_err(|e| StoreError::io("cannot start a thread to open a bucket", e))?;
    match rx.recv_timeout(deadline) {
        Ok(opened) => Ok(opened?),
        Err(_) => Err(StoreError::io(
            "opening a bucket's database did not finish in time",
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        )),
    }
}

impl Bucket {
    /// Creates an empty bucket whose first seq will be `first_seq`.
    pub fn create(
        events_dir: &Path,
        first_seq: u64,
        now_ms: u64,
        ledger: &Arc<Ledger>,
    ) -> Result<Bucket, StoreError> {
        let dir = events_dir.join(bucket_name(first_seq));
        if dir.exists() && !dir.join(READY).exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| StoreError::io("cannot clear a half-made bucket", e))?;
        }
        let db = config(&dir).open()?;
        db.flush()?;
        std::fs::write(dir.join(READY), LOGGED)
            .and_then(|()| std::fs::File::open(dir.join(READY))?.sync_all())
            .map_err(|e| StoreError::io("cannot mark a new bucket ready", e))?;
        sync_dir(&dir);
        sync_dir(events_dir);
        Ok(Bucket {
            first_seq,
            dir,
            db: RwLock::new(Some(db)),
            last_seq: AtomicU64::new(first_seq - 1),
            newest_ms: AtomicU64::new(now_ms),
            opened_ms: AtomicU64::new(now_ms),
            ledger: ledger.clone(),
            short: AtomicBool::new(false),
            logged: true,
        })
    }

    /// Opens every bucket under `events_dir`, oldest first, with its dedup key hashes, and
    /// removes what a crash left of buckets being created or removed. Each is left closed once
    /// its bounds and key hashes are read (from its summary where it has one): the relay opens
    /// the ones it has to publish as it reaches them, one after the other. A directory without
    /// its ready marker whose database holds events is not a crash's leftover: it is set aside
    /// (renamed, never deleted) and returned as such.
    pub fn open_all(
        events_dir: &Path,
        now_ms: u64,
        ledger: &Arc<Ledger>,
    ) -> Result<(Vec<WithKeys>, Vec<SetAside>), StoreError> {
        let listing = |e| StoreError::io("cannot list the buckets", e);
        let removal = |e| StoreError::io("cannot remove what a crash left of a bucket", e);
        std::fs::create_dir_all(events_dir).map_err(listing)?;
        let mut buckets = Vec::new();
        let mut set_aside = Vec::new();
        for item in std::fs::read_dir(events_dir).map_err(listing)? {
            let path = item.map_err(listing)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name.parse::<u64>() {
                Ok(first_seq) if first_seq > 0 && path.join(READY).exists() => {
                    let logged = marked_logged(&path);
                    if let Some(summary) = Summary::load(&path, first_seq) {
                        let bucket = Bucket::new(path, first_seq, None, &summary, ledger, logged);
                        buckets.push((bucket, summary.hashes));
                        continue;
                    }
                    if logged {
                        // Its bounds come from its segment once the log is open, its keys from
                        // the segment too: a start never needs its database, which a crash may
                        // have left short.
                        let summary = Summary {
                            last_seq: first_seq - 1,
                            opened_ms: now_ms,
                            newest_ms: now_ms,
                            hashes: segment_key_hashes(&path),
                        };
                        let bucket = Bucket::new(path, first_seq, None, &summary, ledger, true);
                        buckets.push((bucket, summary.hashes));
                        continue;
                    }
                    let (bucket, summary) = Bucket::open(path, first_seq, now_ms, ledger, logged)?;
                    // Its bounds come from the database itself: only its head can be missing.
                    bucket.with_db(|db| bucket.check_ends(db))?;
                    bucket.close();
                    // It takes no more events: the next start need not open it.
                    if !bucket.is_empty() && !bucket.is_short() {
                        if let Err(e) = summary.write(&bucket.dir, first_seq) {
                            let bucket = first_seq;
                            tracing::warn!(error = %e, bucket, "could not write a bucket summary");
                        }
                    }
                    buckets.push((bucket, summary.hashes));
                }
                Ok(first_seq) if first_seq > 0 => {
                    set_aside.extend(Bucket::set_aside_unless_empty(path, first_seq, now_ms)?)
                }
                Ok(_) => std::fs::remove_dir_all(&path).map_err(removal)?,
                _ if name.ends_with(GONE) => std::fs::remove_dir_all(&path).map_err(removal)?,
                // Reported by `hlgate store check`, left for the operator.
                _ if name.ends_with(SET_ASIDE) => {}
                _ => tracing::warn!(path = %path.display(), "not a bucket, left alone"),
            }
        }
        buckets.sort_by_key(|(b, _)| b.first_seq);
        Ok((buckets, set_aside))
    }

    /// A bucket directory without its ready marker: deleted when its database holds no event
    /// (a crash during its creation), else renamed `<name>.damaged`, bytes untouched.
    fn set_aside_unless_empty(
        dir: PathBuf,
        first_seq: u64,
        now_ms: u64,
    ) -> Result<Option<SetAside>, StoreError> {
        // One that cannot even be read is set aside too: nothing tells that it held nothing.
        // Read for its bounds only: all of it counts as lost, so it reports to a ledger of its own.
        let last = Bucket::open(dir.clone(), first_seq, now_ms, &Arc::default(), false)
            .map(|(b, _)| b.last_seq())
            .unwrap_or(first_seq);
        // A segment file is never a crash's leftover of a creation: the log writes one only
        // into a bucket marked ready.
        let in_segment = super::log::inspect(&dir)
            .ok()
            .flatten()
            .map(|i| i.runs.last().map_or(first_seq, |r| r.1));
        let last = last.max(in_segment.unwrap_or(0));
        if last < first_seq && in_segment.is_none() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| StoreError::io("cannot remove a half-made bucket", e))?;
            return Ok(None);
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let aside = SetAside {
            name: name.to_string(),
            first: first_seq,
            last,
            dedup_keys: Vec::new(),
        };
        std::fs::rename(&dir, dir.with_extension(SET_ASIDE))
            .map_err(|e| StoreError::io("cannot set a damaged bucket aside", e))?;
        sync_dir(dir.parent().unwrap_or(&dir));
        Ok(Some(aside))
    }

    /// Opens a bucket from disk, reading its bounds and its keys' hashes.
    fn open(
        dir: PathBuf,
        first_seq: u64,
        now_ms: u64,
        ledger: &Arc<Ledger>,
        logged: bool,
    ) -> Result<(Bucket, Summary), StoreError> {
        let db = config(&dir).open()?;
        let summary = Summary::read(&db, first_seq, now_ms)?;
        let bucket = Bucket::new(dir, first_seq, Some(db), &summary, ledger, logged);
        Ok((bucket, summary))
    }

    fn new(
        dir: PathBuf,
        first_seq: u64,
        db: Option<sled::Db>,
        summary: &Summary,
        ledger: &Arc<Ledger>,
        logged: bool,
    ) -> Bucket {
        Bucket {
            first_seq,
            dir,
            db: RwLock::new(db),
            last_seq: AtomicU64::new(summary.last_seq),
            newest_ms: AtomicU64::new(summary.newest_ms),
            opened_ms: AtomicU64::new(summary.opened_ms),
            ledger: ledger.clone(),
            short: AtomicBool::new(false),
            logged,
        }
    }

    /// Whether its events are in its log segment (else in its database).
    pub fn is_logged(&self) -> bool {
        self.logged
    }

    /// Takes a logged bucket's bounds from its log segment (the log is their authority).
    pub fn set_bounds(&self, last_seq: u64, opened_ms: u64, newest_ms: u64) {
        self.last_seq.store(last_seq, Ordering::Release);
        self.opened_ms.store(opened_ms, Ordering::Release);
        self.newest_ms.store(newest_ms, Ordering::Release);
    }

    /// Records dedup keys with their acceptance time and seqs, without a flush (the log holds
    /// them durably; the checkpoint flushes; a start records again what it did not reach).
    pub fn record_keys(&self, keys: &[(Vec<u8>, DedupRecord)]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, record) in keys {
            batch.insert(super::layout::dedup_db_key_bytes(k), record.encode());
        }
        self.with_db(|db| Ok(db.apply_batch(batch)?))
    }

    /// Flushes its database if it is open (a close flushes it anyway).
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(db) = self.db.read().expect("bucket database").as_ref() {
            db.flush()?;
        }
        Ok(())
    }

    /// Writes the summary of a logged bucket from disk (it takes no more events) with the key
    /// hashes a start read from its segment, unless it is empty or has one.
    pub fn write_summary(&self, hashes: &[u64]) {
        if self.is_empty() || self.dir.join(SUMMARY).exists() {
            return;
        }
        let summary = Summary {
            last_seq: self.last_seq(),
            opened_ms: self.opened_ms(),
            newest_ms: self.newest_ms(),
            hashes: hashes.to_vec(),
        };
        if let Err(e) = summary.write(&self.dir, self.first_seq) {
            let bucket = self.first_seq;
            tracing::warn!(error = %e, bucket, "could not write a bucket summary");
        }
    }

    /// Drops its summary (its database gained keys the summary lacks).
    pub fn forget_summary(&self) {
        match std::fs::remove_file(self.dir.join(SUMMARY)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                let bucket = self.first_seq;
                tracing::warn!(error = %e, bucket, "could not remove a bucket summary");
            }
            _ => {}
        }
    }

    /// Writes the summary of a bucket that takes no more events, unless it is empty, has one,
    /// or holds less than its bounds claim.
    /// Only the store's writer adds to a bucket, and only to the newest: any other may be sealed.
    pub fn seal(&self, now_ms: u64) -> Result<(), StoreError> {
        if self.is_empty() || self.is_short() || self.dir.join(SUMMARY).exists() {
            return Ok(());
        }
        let mut summary = self.with_db(|db| Ok(Summary::read(db, self.first_seq, now_ms)?))?;
        if self.logged {
            summary.last_seq = self.last_seq();
            summary.opened_ms = self.opened_ms();
            summary.newest_ms = self.newest_ms();
        }
        summary
            .write(&self.dir, self.first_seq)
            .map_err(|e| StoreError::io("cannot write a bucket summary", e))
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
            let opened = open_within(&self.dir, OPEN_DEADLINE)?;
            self.check_ends(&opened)?;
            *db = Some(opened);
        }
        f(db.as_ref().expect("opened above"))
    }

    /// Reports the seqs its bounds (from its summary, or from what was written) claim and its
    /// database lacks at either end: two seeks, where counting would read every key. A hole
    /// in the middle is found by the read that reaches it (`Store::pending_after`). The summary
    /// goes, so that the next start reads the database and reports the loss too.
    fn check_ends(&self, db: &sled::Db) -> Result<(), StoreError> {
        let (first, last) = (self.first_seq, self.last_seq());
        // A logged bucket's events are the log's to check.
        if last < first || self.logged {
            return Ok(());
        }
        let held_first = db.scan_prefix([EVENT]).keys().next().transpose()?;
        let held_last = db.scan_prefix([EVENT]).next_back().transpose()?;
        let missing = match (held_first, held_last) {
            (Some(a), Some((b, v))) => vec![(first, seq_of(&a) - 1), (last_of(&b, &v) + 1, last)],
            _ => vec![(first, last)],
        };
        for (a, b) in missing.into_iter().filter(|(a, b)| a <= b) {
            self.short.store(true, Ordering::Release);
            self.ledger.found(self.first_seq, a, b);
        }
        if self.is_short() {
            self.forget_summary();
        }
        Ok(())
    }

    fn is_short(&self) -> bool {
        self.short.load(Ordering::Acquire)
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

    /// Closes the database and deletes its directory. The directory is renamed first, so a
    /// crash half-way leaves nothing that looks like a bucket.
    pub fn remove(self) -> std::io::Result<()> {
        let Bucket { db, dir, .. } = self;
        drop(db);
        let gone = dir.with_extension(GONE);
        std::fs::rename(&dir, &gone)?;
        sync_dir(dir.parent().unwrap_or(&dir));
        std::fs::remove_dir_all(&gone)
    }
}

/// The sorted, distinct hashes of the dedup keys in the log segment in `dir`.
fn segment_key_hashes(dir: &Path) -> Vec<u64> {
    let keys = match super::log::inspect(dir) {
        Ok(found) => found.map(|i| i.dedup_keys).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "could not read a segment's keys");
            Vec::new()
        }
    };
    let mut hashes: Vec<u64> = keys.iter().map(|k| key_hash(k.as_bytes())).collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// Whether the bucket in `dir` keeps its events in its log segment: its ready marker says so.
pub(super) fn marked_logged(dir: &Path) -> bool {
    std::fs::read(dir.join(READY)).is_ok_and(|m| m == LOGGED)
}

/// The store's buckets, oldest first; the last one takes new events. Never empty.
pub(super) struct Buckets(RwLock<Vec<Arc<Bucket>>>);

impl Buckets {
    pub fn new(list: Vec<Arc<Bucket>>) -> Buckets {
        assert!(!list.is_empty(), "the store always has a bucket");
        Buckets(RwLock::new(list))
    }

    /// The list as it is now, for a lookup that must see one state of it.
    pub fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<Bucket>>> {
        self.0.read().expect("bucket list")
    }

    pub fn all(&self) -> Vec<Arc<Bucket>> {
        self.read().clone()
    }

    pub fn oldest(&self) -> Arc<Bucket> {
        self.read()[0].clone()
    }

    /// The bucket that takes new events.
    pub fn current(&self) -> Arc<Bucket> {
        self.read()
            .last()
            .cloned()
            .expect("the store always has a bucket")
    }

    /// The buckets that may hold seqs from `from` on, oldest first.
    pub fn from(&self, from: u64) -> Vec<Arc<Bucket>> {
        let all = self.read();
        let start = all.iter().rposition(|b| b.first_seq <= from).unwrap_or(0);
        all[start..].to_vec()
    }

    /// Makes `bucket` the current one; returns the one it takes over from.
    pub fn push(&self, bucket: Arc<Bucket>) -> Arc<Bucket> {
        let mut all = self.0.write().expect("bucket list");
        let previous = all.last().cloned().expect("the store always has a bucket");
        all.push(bucket);
        previous
    }

    /// Takes the oldest bucket off the list; the caller keeps one behind it.
    pub fn remove_oldest(&self) -> Arc<Bucket> {
        let mut all = self.0.write().expect("bucket list");
        assert!(all.len() > 1, "the store always has a bucket");
        all.remove(0)
    }

    /// How many hold the archive: with their database open, and closed.
    pub fn states(&self) -> (usize, usize) {
        let all = self.read();
        let open = all.iter().filter(|b| b.is_open()).count();
        (open, all.len() - open)
    }
}

#[cfg(test)]
pub(super) mod tests;
