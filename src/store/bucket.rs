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
//!
//! Closing such a bucket also writes its summary (`keys`): its bounds and the sorted hashes of
//! its dedup keys. A start reads the summaries and opens no database of a bucket that has one;
//! without one (a bucket that was still taking events, a torn or damaged file) it opens the
//! database, reads the same from it, and writes the summary for the next start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::event::for_each_element;

use super::damage::{Ledger, SetAside, SET_ASIDE};
use super::entry::{span, ArrayRecord, Stored};
use super::keys::key_hash;
use super::{key, seq_of, Entry, StoreError, DEDUP, EVENT};

/// Written into a bucket's directory once its database is set up: a directory without it was
/// being created during a crash, never took an event, and is removed on open.
const READY: &str = "ready";
/// The directory suffix of a bucket being removed.
const GONE: &str = "gone";
/// The summary of a bucket that takes no more events; see [`Summary`].
const SUMMARY: &str = "keys";
/// The summary's format, first eight bytes of the file.
const SUMMARY_MAGIC: &[u8; 8] = b"hlgkeys1";

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
    pub fn create(
        events_dir: &Path,
        first_seq: u64,
        now_ms: u64,
        ledger: &Arc<Ledger>,
    ) -> Result<Bucket, StoreError> {
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
            ledger: ledger.clone(),
            short: AtomicBool::new(false),
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
        std::fs::create_dir_all(events_dir).map_err(sled::Error::Io)?;
        let mut buckets = Vec::new();
        let mut set_aside = Vec::new();
        for item in std::fs::read_dir(events_dir).map_err(sled::Error::Io)? {
            let path = item.map_err(sled::Error::Io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name.parse::<u64>() {
                Ok(first_seq) if first_seq > 0 && path.join(READY).exists() => {
                    if let Some(summary) = Summary::load(&path, first_seq) {
                        let bucket = Bucket::new(path, first_seq, None, &summary, ledger);
                        buckets.push((bucket, summary.hashes));
                        continue;
                    }
                    let (bucket, summary) = Bucket::open(path, first_seq, now_ms, ledger)?;
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
                Ok(_) => std::fs::remove_dir_all(&path).map_err(sled::Error::Io)?,
                _ if name.ends_with(GONE) => {
                    std::fs::remove_dir_all(&path).map_err(sled::Error::Io)?
                }
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
        let last = Bucket::open(dir.clone(), first_seq, now_ms, &Arc::default())
            .map(|(b, _)| b.last_seq())
            .unwrap_or(first_seq);
        if last < first_seq {
            std::fs::remove_dir_all(&dir).map_err(sled::Error::Io)?;
            return Ok(None);
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let aside = SetAside {
            name: name.to_string(),
            first: first_seq,
            last,
            dedup_keys: Vec::new(),
        };
        std::fs::rename(&dir, dir.with_extension(SET_ASIDE)).map_err(sled::Error::Io)?;
        sync_dir(dir.parent().unwrap_or(&dir));
        Ok(Some(aside))
    }

    /// Opens a bucket from disk, reading its bounds and its keys' hashes.
    fn open(
        dir: PathBuf,
        first_seq: u64,
        now_ms: u64,
        ledger: &Arc<Ledger>,
    ) -> Result<(Bucket, Summary), StoreError> {
        let db = config(&dir).open()?;
        let summary = Summary::read(&db, first_seq, now_ms)?;
        let bucket = Bucket::new(dir, first_seq, Some(db), &summary, ledger);
        Ok((bucket, summary))
    }

    fn new(
        dir: PathBuf,
        first_seq: u64,
        db: Option<sled::Db>,
        summary: &Summary,
        ledger: &Arc<Ledger>,
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
        }
    }

    /// Writes the summary of a bucket that takes no more events, unless it is empty, has one,
    /// or holds less than its bounds claim.
    /// Only the store's writer adds to a bucket, and only to the newest: any other may be sealed.
    pub fn seal(&self, now_ms: u64) -> Result<(), StoreError> {
        if self.is_empty() || self.is_short() || self.dir.join(SUMMARY).exists() {
            return Ok(());
        }
        let summary = self.with_db(|db| Summary::read(db, self.first_seq, now_ms))?;
        summary
            .write(&self.dir, self.first_seq)
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))
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
            let opened = reopen(&self.dir)?;
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
        if last < first {
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
            match std::fs::remove_file(self.dir.join(SUMMARY)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    let bucket = self.first_seq;
                    tracing::warn!(error = %e, bucket, "could not remove a bucket summary");
                }
                _ => {}
            }
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

    /// A bucket's entries from `from` on, in seq order, one per seq: an array record is
    /// expanded into its elements' entries as the iterator reaches them (its body parsed once),
    /// from `from` on when it starts before.
    pub fn entries_from(
        db: &sled::Db,
        from: u64,
    ) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        // The value at or before `from`: a record starting there may cover it.
        let before = match from {
            0 => None,
            _ => db.range(key(EVENT, 0)..=key(EVENT, from)).next_back(),
        };
        let start = match before {
            Some(Ok((k, v))) if last_of(&k, &v) >= from => seq_of(&k),
            _ => from,
        };
        Expand {
            items: db.range(key(EVENT, start)..=key(EVENT, u64::MAX)),
            from,
            open: None,
        }
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

/// The last seq the value `v` under key `k` covers: its own seq, or an array record's last.
/// Broken bytes count as covering their own seq (the read that reaches them reports them).
fn last_of(k: &[u8], v: &[u8]) -> u64 {
    let seq = seq_of(k);
    span(seq, v).map_or(seq, |(last, _)| last)
}

/// [`Bucket::entries_from`]'s iterator.
struct Expand {
    items: sled::Iter,
    from: u64,
    /// The array record being expanded.
    open: Option<Open>,
}

/// An array record being read, with where each element lies in its body.
struct Open {
    record: ArrayRecord,
    text: String,
    /// Start and end of each element in `text`: 8 bytes an element, which takes at least two
    /// bytes of the body (itself and a comma).
    elements: Vec<(u32, u32)>,
    next: usize,
}

impl Open {
    fn new(mut record: ArrayRecord, from: u64) -> Option<Open> {
        let text = String::from_utf8(std::mem::take(&mut record.body)).ok()?;
        u32::try_from(text.len()).ok()?;
        let base = text.as_ptr() as usize;
        let mut elements = Vec::with_capacity(record.schema.len());
        for_each_element(text.as_bytes(), |raw| {
            let at = (raw.get().as_ptr() as usize - base) as u32;
            elements.push((at, at + raw.get().len() as u32));
        })?;
        if elements.len() as u64 != record.len() {
            return None;
        }
        let next = from.saturating_sub(record.first_seq) as usize;
        Some(Open {
            record,
            text,
            elements,
            next,
        })
    }

    fn next_entry(&mut self) -> Option<Entry> {
        let (a, b) = *self.elements.get(self.next)?;
        let entry = self
            .record
            .element(self.next, &self.text[a as usize..b as usize]);
        self.next += 1;
        Some(entry)
    }
}

impl Iterator for Expand {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(open) = &mut self.open {
                if let Some(entry) = open.next_entry() {
                    return Some(Ok(entry));
                }
                self.open = None;
            }
            let (k, v) = match self.items.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let seq = seq_of(&k);
            match Stored::decode(seq, &v) {
                Some(Stored::One(entry)) if seq >= self.from => return Some(Ok(entry)),
                Some(Stored::One(_)) => {}
                Some(Stored::Array(record)) => match Open::new(record, self.from) {
                    Some(open) => self.open = Some(open),
                    None => return Some(Err(StoreError::Corrupt(seq))),
                },
                None => return Some(Err(StoreError::Corrupt(seq))),
            }
        }
    }
}

/// The last seq the summary in `dir` claims, if it has a whole one.
#[cfg(test)]
pub(super) fn summary_last_seq(dir: &Path, first_seq: u64) -> Option<u64> {
    Summary::load(dir, first_seq).map(|s| s.last_seq)
}

/// The bucket directories under `events_dir`, by first seq: whether each is in use (has its
/// ready marker) or is set aside (renamed, or a start would set it aside).
pub(super) fn bucket_dirs(events_dir: &Path) -> Result<Vec<(u64, PathBuf, bool)>, StoreError> {
    let mut dirs = Vec::new();
    let Ok(items) = std::fs::read_dir(events_dir) else {
        return Ok(dirs);
    };
    for item in items {
        let path = item.map_err(sled::Error::Io)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (seq, suffix) = name.split_once('.').unwrap_or((name, ""));
        let Some(first_seq) = seq.parse::<u64>().ok().filter(|&s| s > 0) else {
            continue;
        };
        match suffix {
            "" => dirs.push((first_seq, path.clone(), path.join(READY).exists())),
            SET_ASIDE => dirs.push((first_seq, path, false)),
            _ => {}
        }
    }
    dirs.sort_by_key(|(seq, _, _)| *seq);
    Ok(dirs)
}

/// What a bucket's database holds, read in full (for `hlgate store check`).
pub(super) struct Contents {
    /// The runs of consecutive seqs it holds, in order.
    pub runs: Vec<(u64, u64)>,
    /// Acceptance time of its newest entry (0 when it holds none).
    pub newest_ms: u64,
    /// The last seq its summary claims, when it has one.
    pub claimed_last: Option<u64>,
    /// Its dedup keys, when asked for.
    pub dedup_keys: Vec<String>,
}

pub(super) fn read_contents(dir: &Path, with_keys: bool) -> Result<Contents, StoreError> {
    let db = config(dir).open()?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut newest_ms = 0;
    for item in db.scan_prefix([EVENT]) {
        let (k, v) = item?;
        let seq = seq_of(&k);
        let (last, ms) = span(seq, &v).unwrap_or((seq, newest_ms));
        newest_ms = ms;
        match runs.last_mut() {
            Some(run) if run.1 + 1 == seq => run.1 = last,
            _ => runs.push((seq, last)),
        }
    }
    let mut dedup_keys = Vec::new();
    if with_keys {
        for k in db.scan_prefix([DEDUP]).keys() {
            dedup_keys.push(String::from_utf8_lossy(&k?[1..]).into_owned());
        }
    }
    let first_seq = dir
        .file_name()
        .and_then(|n| n.to_str()?.split('.').next()?.parse().ok())
        .unwrap_or(0);
    Ok(Contents {
        runs,
        newest_ms,
        claimed_last: Summary::load(dir, first_seq).map(|s| s.last_seq),
        dedup_keys,
    })
}

/// What a start needs of a bucket without opening its database: its bounds and the hashes of
/// its dedup keys. On disk (`keys`): the magic, then first seq, last seq, opened and newest
/// acceptance time and the number of hashes (u64 BE each), the hashes sorted (u64 BE), and a
/// CRC-32 of all that (u32 BE).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    last_seq: u64,
    opened_ms: u64,
    newest_ms: u64,
    hashes: Vec<u64>,
}

impl Summary {
    /// Reads it from the database; an empty bucket counts as opened and written at `now_ms`.
    fn read(db: &sled::Db, first_seq: u64, now_ms: u64) -> Result<Summary, StoreError> {
        let entry_at = |item: Option<sled::Result<(sled::IVec, sled::IVec)>>| {
            item.transpose().map(|kv| {
                // Its last seq: an array record covers several.
                kv.and_then(|(k, v)| span(seq_of(&k), &v))
            })
        };
        let first = entry_at(db.scan_prefix([EVENT]).next())?;
        let last = entry_at(db.scan_prefix([EVENT]).next_back())?;
        let mut hashes = Vec::new();
        for item in db.scan_prefix([DEDUP]).keys() {
            hashes.push(key_hash(&item?[1..]));
        }
        hashes.sort_unstable();
        Ok(Summary {
            last_seq: last.map_or(first_seq - 1, |(last, _)| last),
            opened_ms: first.map_or(now_ms, |(_, ms)| ms),
            newest_ms: last.map_or(now_ms, |(_, ms)| ms),
            hashes,
        })
    }

    fn encode(&self, first_seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(SUMMARY_MAGIC.len() + 8 * (5 + self.hashes.len()) + 4);
        out.extend_from_slice(SUMMARY_MAGIC);
        let head = [
            first_seq,
            self.last_seq,
            self.opened_ms,
            self.newest_ms,
            self.hashes.len() as u64,
        ];
        for v in head.iter().chain(&self.hashes) {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// `None` unless `bytes` is a whole, intact summary of the bucket starting at `first_seq`.
    fn decode(bytes: &[u8], first_seq: u64) -> Option<Summary> {
        let (body, crc) = bytes.split_last_chunk::<4>()?;
        if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
            return None;
        }
        let words = body.strip_prefix(SUMMARY_MAGIC)?;
        if words.len() % 8 != 0 {
            return None;
        }
        let mut words = words
            .chunks_exact(8)
            .map(|w| u64::from_be_bytes(w.try_into().expect("8 bytes")));
        let mut next = || words.next();
        let (first, last_seq, opened_ms, newest_ms, count) =
            (next()?, next()?, next()?, next()?, next()?);
        let hashes: Vec<u64> = words.collect();
        (first == first_seq && last_seq >= first_seq && hashes.len() as u64 == count).then_some(
            Summary {
                last_seq,
                opened_ms,
                newest_ms,
                hashes,
            },
        )
    }

    /// The bucket's summary from its directory, if it has a whole and intact one.
    fn load(dir: &Path, first_seq: u64) -> Option<Summary> {
        let bytes = std::fs::read(dir.join(SUMMARY)).ok()?;
        let summary = Summary::decode(&bytes, first_seq);
        if summary.is_none() {
            let dir = dir.display();
            tracing::warn!(%dir, "a bucket summary does not check out; reading the bucket");
        }
        summary
    }

    /// Writes it next to the database: whole, flushed, then renamed into place.
    fn write(&self, dir: &Path, first_seq: u64) -> std::io::Result<()> {
        use std::io::Write;
        let partial = dir.join(format!("{SUMMARY}.partial"));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&self.encode(first_seq))?;
        file.sync_all()?;
        std::fs::rename(&partial, dir.join(SUMMARY))?;
        sync_dir(dir);
        Ok(())
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

    /// A bucket at seq 10 whose database holds three events accepted at 100, 200, 300 ms and the
    /// dedup keys "a" and "b".
    fn bucket_with_events(events_dir: &Path) -> PathBuf {
        let bucket = Bucket::create(events_dir, 10, 1, &Arc::default()).unwrap();
        bucket
            .with_db(|db| {
                for (seq, ms) in [(10, 100), (11, 200), (12, 300)] {
                    let mut e = crate::store::tests::entry("a", "{}");
                    e.seq = seq;
                    e.accepted_ms = ms;
                    db.insert(key(EVENT, seq), e.encode())?;
                }
                for k in ["a", "b"] {
                    db.insert(super::super::dedup_db_key(k), &5u64.to_be_bytes())?;
                }
                Ok(db.flush()?)
            })
            .unwrap();
        let dir = bucket.dir.clone();
        drop(bucket);
        // sled lets go of its file lock a moment after the last handle is dropped.
        std::thread::sleep(Duration::from_millis(200));
        dir
    }

    /// A summary of the bucket at seq 10 that is not what its database holds.
    fn not_the_database() -> Summary {
        Summary {
            last_seq: 51,
            opened_ms: 7,
            newest_ms: 8,
            hashes: vec![1, 2, 3],
        }
    }

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v
    }

    #[test]
    fn a_summary_holds_what_the_database_holds_and_is_written_once_it_is_read() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        assert!(!dir.join(SUMMARY).exists());
        let expected = Summary {
            last_seq: 12,
            opened_ms: 100,
            newest_ms: 300,
            hashes: sorted(vec![key_hash(b"a"), key_hash(b"b")]),
        };
        // The first start reads the database and leaves the summary for the next.
        let opened = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        let (bucket, hashes) = &opened[0];
        assert_eq!(
            (bucket.last_seq(), bucket.opened_ms(), bucket.newest_ms()),
            (12, 100, 300)
        );
        assert_eq!(sorted(hashes.clone()), expected.hashes);
        assert_eq!(Summary::load(&dir, 10), Some(expected));
        assert!(!bucket.is_open());
        // Sealing again leaves it as it is.
        drop(opened);
        let before = std::fs::read(dir.join(SUMMARY)).unwrap();
        let again = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        again[0].0.seal(999).unwrap();
        assert_eq!(std::fs::read(dir.join(SUMMARY)).unwrap(), before);
    }

    #[test]
    fn a_start_takes_a_bucket_from_its_summary_without_opening_its_database() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        // A summary that differs from the database shows which of the two a start read.
        let summary = not_the_database();
        summary.write(&dir, 10).unwrap();
        let opened = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        let (bucket, hashes) = &opened[0];
        assert_eq!(
            (bucket.last_seq(), bucket.opened_ms(), bucket.newest_ms()),
            (51, 7, 8)
        );
        assert_eq!(hashes, &vec![1, 2, 3]);
        assert!(!bucket.is_open());
        // Its database opens when it is read.
        let read = bucket
            .with_db(|db| Ok(Bucket::entries_from(db, 0).count()))
            .unwrap();
        assert_eq!(read, 3);
    }

    fn lost_seqs(ledger: &Ledger) -> Vec<(u64, u64)> {
        ledger
            .damage(0)
            .lost
            .iter()
            .map(|l| (l.first, l.last))
            .collect()
    }

    #[test]
    fn a_database_holding_less_than_its_summary_is_reported_when_it_opens() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        // The summary claims seqs 10..51; the database holds 10..12.
        not_the_database().write(&dir, 10).unwrap();
        let ledger = Arc::new(Ledger::default());
        let opened = Bucket::open_all(events.path(), 999, &ledger).unwrap().0;
        let bucket = &opened[0].0;
        assert_eq!(lost_seqs(&ledger), []);
        bucket.with_db(|_| Ok(())).unwrap();
        assert_eq!(lost_seqs(&ledger), [(13, 51)]);
        // The next start reads the database instead, and no seal writes the summary again.
        assert!(!dir.join(SUMMARY).exists());
        bucket.close();
        bucket.seal(999).unwrap();
        assert!(!dir.join(SUMMARY).exists());
        bucket.with_db(|_| Ok(())).unwrap();
        assert_eq!(lost_seqs(&ledger), [(13, 51)]);
    }

    #[test]
    fn a_database_without_its_first_seqs_is_reported_at_start_and_gets_no_summary() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        {
            let db = config(&dir).open().unwrap();
            db.remove(key(EVENT, 10)).unwrap();
            db.flush().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let ledger = Arc::new(Ledger::default());
        let opened = Bucket::open_all(events.path(), 999, &ledger).unwrap().0;
        assert_eq!(opened[0].0.last_seq(), 12);
        assert_eq!(lost_seqs(&ledger), [(10, 10)]);
        assert!(!dir.join(SUMMARY).exists());
    }

    #[test]
    fn a_damaged_or_foreign_summary_is_ignored_and_the_database_read() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        let summary = not_the_database();
        let good = summary.encode(10);
        assert_eq!(Summary::decode(&good, 10).as_ref(), Some(&summary));
        // Any flipped byte, a cut, another bucket's, one that claims no events.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert_eq!(Summary::decode(&bad, 10), None, "byte {at} flipped");
        }
        for len in 0..good.len() {
            assert_eq!(Summary::decode(&good[..len], 10), None, "cut at {len}");
        }
        assert_eq!(Summary::decode(&good, 11), None);
        let empty = Summary {
            last_seq: 9,
            ..summary
        };
        assert_eq!(Summary::decode(&empty.encode(10), 10), None);

        let mut bad = good;
        bad[20] ^= 0x01;
        std::fs::write(dir.join(SUMMARY), &bad).unwrap();
        let opened = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        assert_eq!(opened[0].0.last_seq(), 12);
        // And the start wrote a good one in its place.
        assert_eq!(Summary::load(&dir, 10).map(|s| s.last_seq), Some(12));
    }

    #[test]
    fn an_empty_bucket_gets_no_summary() {
        let events = tempfile::tempdir().unwrap();
        let bucket = Bucket::create(events.path(), 10, 1, &Arc::default()).unwrap();
        bucket.seal(5).unwrap();
        assert!(!bucket.dir.join(SUMMARY).exists());
        drop(bucket);
        let opened = Bucket::open_all(events.path(), 5, &Arc::default())
            .unwrap()
            .0;
        assert!(opened[0].0.is_empty());
        assert!(!opened[0].0.dir.join(SUMMARY).exists());
    }

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
