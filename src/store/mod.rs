//! The only sled user: dedup keys, the outbox, the archive, and (for the token module) the
//! vault's trees.
//!
//! Events live in buckets (see [`bucket`]): each one a sled database of its own covering a span
//! of acceptance time (a quarter of the retention) or 32 MiB of events. A bucket holds
//! - `d<dedup key>`  → acceptance time (u64 BE, unix ms)
//! - `e<seq>`        → the encoded [`Entry`], kept for the retention window (archive, replay);
//!   or an [`ArrayRecord`]: a whole array delivery, covering one seq per element from `seq` on
//!
//! so a delivery's dedup key and its entries are written by one atomic batch. Seqs rise across
//! buckets: each bucket holds the seqs from its own first one up to the next bucket's first.
//!
//! The `meta` tree of the main database (`sled/`) holds `w`, the published watermark (u64 BE):
//! every seq up to it is confirmed; and what [`damage`] keeps: the last seq at a clean stop and
//! the losses an operator accepted. The outbox is every entry above it. The relay publishes in
//! seq order and moves the watermark over the confirmed prefix, so confirming a window is one
//! small write. The main database also holds the token vault's trees.
//!
//! All inserts go through one writer thread that batches concurrent requests and flushes once
//! per batch (group commit); under load a batch gathers for up to 2 ms, while requests keep
//! coming, before it commits. Sequence numbers are assigned there, so outbox order is commit order.
//! The same thread starts new buckets and removes expired ones: a bucket goes once its newest
//! event is past the retention and every event in it is confirmed. It also keeps the dedup key
//! hashes ([`keys`]) that let dedup open only the buckets that may hold a key; the sweeper
//! closes the buckets nothing reads ([`Store::close_idle`]).

mod bucket;
mod damage;
mod entry;
mod keys;
mod tokens;
mod writer;

pub use damage::{accept_loss, check, Acceptance, Damage, Lost, Report};
pub use entry::{ArrayRecord, Entry};
pub use tokens::KeyedTree;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use bucket::Bucket;
use damage::{Held, Ledger};
use keys::{key_hash, KeyIndex};
use writer::Writer;

const DEDUP: u8 = b'd';
const EVENT: u8 = b'e';
const WATERMARK: &[u8] = b"w";

/// How long a request waits for its commit before it is answered 429: a disk that stalls must
/// not hold webhooks (and HighLevel's connections) open. If the commit lands after all, the
/// redelivery is a duplicate.
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How many requests may wait for the writer before new ones are refused (429).
const QUEUE_DEPTH: usize = 16 * 1024;
/// New events are refused (429) while the data disk has less free space than this share of its
/// size, kept within [`RESERVE_MIN`, `RESERVE_MAX`]: sled needs room to finish what it writes,
/// and a fixed reserve would be all of a small volume.
const RESERVE_SHARE: u64 = 20;
const RESERVE_MIN: u64 = 2 * 1024 * 1024;
const RESERVE_MAX: u64 = 64 * 1024 * 1024;
/// How many just-committed entries the store keeps in memory for the relay (about 4 MB of
/// 1.5 KB events): while the relay keeps up it never reads sled, whose reads keep what they
/// page in (sled issue 1036).
const RECENT: usize = 2048;
/// How many buckets the retention window is cut into: expired events stay on disk at most
/// this fraction of the retention longer than it asks.
const BUCKETS_PER_RETENTION: u32 = 4;
/// A bucket takes new events until it holds this many encoded bytes (or its span is over):
/// what sled keeps in memory of an open bucket grows with it.
const BUCKET_BYTES: u64 = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("the store is busy")]
    Busy,
    #[error("the store writer has stopped")]
    Closed,
    #[error("broken entry at seq {0}")]
    Corrupt(u64),
    #[error("write failed: {0}")]
    Write(String),
    #[error("the outbox holds {0} unpublished events")]
    OutboxFull(u64),
    #[error("the data disk has {free} bytes free, under its reserve of {reserve} and what the batch needs")]
    DiskLow { free: u64, reserve: u64 },
    #[error("the store did not commit within {0:?}")]
    Stalled(Duration),
    #[error("the store is damaged: {0}")]
    Damaged(String),
}

/// The data disk's free space and the part of it new events must leave free.
#[derive(Clone, Copy)]
struct Disk {
    free: u64,
    reserve: u64,
}

impl Disk {
    /// Whether a batch writing `bytes` of entries leaves the reserve free. sled writes more than
    /// the entries (its log framing, at times a new segment), and it never finishes a flush
    /// after a write error: it must not run out of space, so it gets twice what it is given.
    fn takes(&self, bytes: u64) -> Result<(), StoreError> {
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

/// What an entry costs on disk beyond its body, at most (its header fields are bounded by the
/// request's size, not by this; it only needs to keep the estimate on the safe side for
/// typical events).
const ENTRY_OVERHEAD: u64 = 512;

fn entries_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            let fields = e.dedup_key.len() + e.event_type.len() + e.tenant.len();
            (e.body.len() + fields + e.signature.len()) as u64 + ENTRY_OVERHEAD
        })
        .sum()
}

fn disk_bytes(events: &Events) -> u64 {
    match events {
        Events::Entries(entries) => entries_bytes(entries),
        Events::Array(r) => {
            let fields = r.dedup_key.len() + r.signature.len() + r.schema.len();
            (r.body.len() + fields) as u64 + ENTRY_OVERHEAD
        }
    }
}

/// What a delivery stores: entries of their own, or one record for a whole array.
enum Events {
    Entries(Vec<Entry>),
    Array(ArrayRecord),
}

impl Events {
    fn count(&self) -> usize {
        match self {
            Events::Entries(entries) => entries.len(),
            Events::Array(record) => record.schema.len(),
        }
    }
}

/// A request of the current batch waiting for the flush.
enum Waiting {
    Accept(
        oneshot::Sender<Result<AcceptOutcome, StoreError>>,
        AcceptOutcome,
    ),
    Append(oneshot::Sender<Result<usize, StoreError>>, usize),
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Stored and flushed; the seqs of its entries.
    Accepted { first_seq: u64, count: usize },
    /// Its dedup key was accepted within the retention window.
    Duplicate,
}

enum Command {
    Accept {
        dedup_key: String,
        events: Events,
        reply: oneshot::Sender<Result<AcceptOutcome, StoreError>>,
    },
    Append {
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Sweep {
        reply: oneshot::Sender<Result<SweepReport, StoreError>>,
    },
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Buckets removed from disk.
    pub buckets: usize,
    /// The events they held (with their dedup keys).
    pub events: u64,
}

struct Shared {
    /// The data dir, whose free space is checked before each batch.
    dir: PathBuf,
    meta_db: sled::Db,
    meta: sled::Tree,
    events_dir: PathBuf,
    /// Oldest first; the last one takes new events.
    buckets: RwLock<Vec<Arc<Bucket>>>,
    retention_ms: u64,
    /// A bucket takes events for this long, then the writer starts the next.
    span_ms: u64,
    /// The highest seq written (0 when none).
    last_seq: AtomicU64,
    /// Every seq up to this one is confirmed by the broker.
    published: AtomicU64,
    /// The newest committed entries, consecutive seqs, exactly as they are on disk.
    recent: Mutex<VecDeque<Entry>>,
    /// The outbox gained entries.
    appended: Notify,
    /// Above this many unpublished events, new deliveries are refused.
    outbox_limit: AtomicU64,
    /// What the last disk check found; for readiness (the writer checks before each batch).
    disk_low: AtomicBool,
    /// Set when the last write failed; cleared by the next good one. For readiness only: every
    /// batch is tried, so that the store takes events again as soon as the disk lets it.
    write_failed: AtomicBool,
    /// When the commit being written began (unix ms), 0 between commits.
    writing_since: AtomicU64,
    /// fsync each group commit; only benchmarks turn it off.
    flush_on_commit: AtomicBool,
    /// What is lost: accepted by an operator, found at start, found since.
    ledger: Arc<Ledger>,
}

impl Shared {
    /// The data disk's free space and reserve, recorded for readiness. `None` when it cannot
    /// be read: the write itself then tells.
    fn check_disk(&self) -> Option<Disk> {
        let disk = fs2::statvfs(&self.dir).ok().map(|stats| Disk {
            free: stats.available_space(),
            reserve: (stats.total_space() / RESERVE_SHARE).clamp(RESERVE_MIN, RESERVE_MAX),
        });
        let low = disk.is_some_and(|d| d.free < d.reserve);
        self.disk_low.store(low, Ordering::Relaxed);
        disk
    }

    fn buckets(&self) -> Vec<Arc<Bucket>> {
        self.buckets.read().expect("bucket list").clone()
    }

    /// The bucket that takes new events.
    fn current(&self) -> Arc<Bucket> {
        let all = self.buckets.read().expect("bucket list");
        all.last().cloned().expect("the store always has a bucket")
    }

    /// The buckets that may hold seqs from `from` on, oldest first.
    fn buckets_from(&self, from: u64) -> Vec<Arc<Bucket>> {
        let all = self.buckets.read().expect("bucket list");
        let start = all.iter().rposition(|b| b.first_seq <= from).unwrap_or(0);
        all[start..].to_vec()
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    sender: SyncSender<Command>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("depth", &self.depth())
            .finish()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn dedup_db_key(dedup_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + dedup_key.len());
    k.push(DEDUP);
    k.extend_from_slice(dedup_key.as_bytes());
    k
}

fn seq_of(k: &[u8]) -> u64 {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts the writer thread.
    pub fn open(dir: &Path, retention: Duration) -> Result<Store, StoreError> {
        // A data dir made by an older version or by hand may be open to others.
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(sled::Error::Io)?;
        damage::refuse_without_main_db(dir)?;
        let meta_db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(4 * 1024 * 1024)
            .open()?;
        let meta = meta_db.open_tree("meta")?;
        let ledger = Arc::new(Ledger::new(damage::accepted(&meta)?));
        let published = ledger.past_accepted(damage::meta_u64(&meta, WATERMARK)?);
        let stopped_at = damage::meta_u64(&meta, damage::STOPPED_AT)?;
        let now = now_ms();
        let events_dir = dir.join("events");
        let mut index = KeyIndex::default();
        let mut buckets = Vec::new();
        let (opened, set_aside) = Bucket::open_all(&events_dir, now, &ledger)?;
        for (bucket, hashes) in opened {
            index.add(bucket.first_seq, hashes);
            buckets.push(bucket);
        }
        let through = published.max(stopped_at);
        ledger.started(damage_at_start(
            &buckets, &set_aside, published, through, &ledger, retention, now,
        ));
        // Never hand out a seq at or below the watermark, even when every bucket was removed,
        // nor one a bucket set aside holds, nor one a bucket cut short lost.
        let last_seq = buckets
            .last()
            .map_or(0, |b| b.last_seq())
            .max(through)
            .max(set_aside.iter().map(|a| a.last).max().unwrap_or(0));
        // New events go to a new bucket: one opened from disk takes none.
        if buckets
            .last()
            .is_none_or(|b| !b.is_empty() || b.first_seq != last_seq + 1)
        {
            buckets.push(Bucket::create(&events_dir, last_seq + 1, now, &ledger)?);
        }
        let buckets: Vec<Arc<Bucket>> = buckets.into_iter().map(Arc::new).collect();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            meta_db,
            meta,
            events_dir,
            buckets: RwLock::new(buckets),
            retention_ms: retention.as_millis() as u64,
            span_ms: (retention / BUCKETS_PER_RETENTION).as_millis().max(1) as u64,
            last_seq: AtomicU64::new(last_seq),
            published: AtomicU64::new(published),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            appended: Notify::new(),
            outbox_limit: AtomicU64::new(u64::MAX),
            disk_low: AtomicBool::new(false),
            write_failed: AtomicBool::new(false),
            writing_since: AtomicU64::new(0),
            flush_on_commit: AtomicBool::new(true),
            ledger,
        });
        let (sender, receiver) = mpsc::sync_channel(QUEUE_DEPTH);
        let writer = Writer::new(shared.clone(), last_seq + 1, index);
        std::thread::Builder::new()
            .name("hlgate-store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let store = Store { shared, sender };
        store.check_disk();
        Ok(store)
    }

    /// What the start, or a read since, found lost and not yet accepted (`hlgate store
    /// accept-loss`); empty when the store accounts for every event.
    pub fn damage(&self) -> Damage {
        self.shared.ledger.damage(self.published_through())
    }

    /// A tree of opaque values by key, for the token vault (`tokens`) and the INSTALLs waiting
    /// for a company token (`installs`).
    pub fn keyed_tree(&self, name: &str) -> Result<KeyedTree, StoreError> {
        KeyedTree::open(&self.shared.meta_db, name)
    }

    /// Turns the fsync of each group commit off or on. Without it a 2xx no longer means
    /// durable: this exists only so benchmarks can show what the flush costs.
    pub fn set_flush_on_commit(&self, on: bool) {
        self.shared.flush_on_commit.store(on, Ordering::Relaxed);
    }

    /// Unpublished events.
    pub fn depth(&self) -> u64 {
        let last = self.shared.last_seq.load(Ordering::Acquire);
        last.saturating_sub(self.shared.published.load(Ordering::Acquire))
    }

    /// Every seq up to this one is confirmed.
    pub fn published_through(&self) -> u64 {
        self.shared.published.load(Ordering::Acquire)
    }

    /// New deliveries are refused while the outbox holds `max` unpublished events or more
    /// (duplicates are still answered as such).
    pub fn limit_outbox(&self, max: u64) {
        self.shared.outbox_limit.store(max, Ordering::Relaxed);
    }

    /// True while new events can be stored (disk has room, last write worked), as of the last
    /// batch or disk check.
    pub fn writable(&self) -> bool {
        !self.shared.disk_low.load(Ordering::Relaxed)
            && !self.shared.write_failed.load(Ordering::Relaxed)
            && self.stuck_for() < COMMIT_WAIT
    }

    /// How long the commit being written has taken so far; zero between commits.
    pub fn stuck_for(&self) -> Duration {
        match self.shared.writing_since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(now_ms().saturating_sub(since)),
        }
    }

    /// Re-reads the free space of the data dir, for readiness while no events come.
    pub fn check_disk(&self) {
        self.shared.check_disk();
    }

    /// Resolves when entries were appended since the last call.
    pub async fn appended(&self) {
        self.shared.appended.notified().await
    }

    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        match self.sender.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        match tokio::time::timeout(COMMIT_WAIT, rx).await {
            Ok(answer) => answer.map_err(|_| StoreError::Closed)?,
            Err(_) => Err(StoreError::Stalled(COMMIT_WAIT)),
        }
    }

    /// Records a delivery: dedup key and outbox entries in one batch, flushed before returning.
    pub async fn accept(
        &self,
        dedup_key: String,
        entries: Vec<Entry>,
    ) -> Result<AcceptOutcome, StoreError> {
        self.send(|reply| Command::Accept {
            dedup_key,
            events: Events::Entries(entries),
            reply,
        })
        .await
    }

    /// Records an array delivery of several events as one record under the seq of its first
    /// element (its `first_seq` and `accepted_ms` are set here), flushed before returning. Its
    /// events are read back one entry per seq, as if each had been stored on its own.
    pub async fn accept_array(
        &self,
        dedup_key: String,
        record: ArrayRecord,
    ) -> Result<AcceptOutcome, StoreError> {
        self.send(|reply| Command::Accept {
            dedup_key,
            events: Events::Array(record),
            reply,
        })
        .await
    }

    /// Appends entries without a dedup key (replays); returns how many.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<usize, StoreError> {
        self.send(|reply| Command::Append { entries, reply }).await
    }

    /// Removes the buckets whose events are all past the retention and confirmed.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        self.send(|reply| Command::Sweep { reply }).await
    }

    /// Up to `limit` outbox entries (above the watermark) after `after`, in seq order: from
    /// memory when they were committed recently, else from disk. Seqs given up with `hlgate
    /// store accept-loss` are skipped; the read stops before any other seq that is missing
    /// (and reports it), so that the watermark never moves over a loss nobody accepted.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let from = after.max(self.published_through()) + 1;
        {
            let recent = self.shared.recent.lock().expect("recent entries");
            if let Some(oldest) = recent.front().map(|e| e.seq).filter(|&s| s <= from) {
                let skip = (from - oldest) as usize;
                return Ok(recent.iter().skip(skip).take(limit).cloned().collect());
            }
        }
        // Every seq up to this one is committed, so a read that ends below it met a loss.
        let committed = self.shared.last_seq.load(Ordering::Acquire);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut next = from;
        for bucket in self.shared.buckets_from(from) {
            let stopped = bucket.with_db(|db| {
                for entry in Bucket::entries_from(db, from).take(limit - out.len()) {
                    let entry = entry?;
                    if !self.continues(next, entry.seq) {
                        return Ok(true);
                    }
                    next = entry.seq + 1;
                    out.push(entry);
                }
                Ok(false)
            })?;
            if stopped || out.len() == limit {
                return Ok(out);
            }
        }
        // Committed, yet in no bucket.
        self.continues(next, committed + 1);
        Ok(out)
    }

    /// Whether `seq` may follow `next` in the outbox: it is `next`, or every seq between them
    /// was given up. Otherwise the seqs between are reported lost.
    fn continues(&self, next: u64, seq: u64) -> bool {
        if seq <= next || self.shared.ledger.is_accepted(next, seq - 1) {
            return true;
        }
        let bucket = self
            .shared
            .buckets_from(next)
            .first()
            .map_or(0, |b| b.first_seq);
        self.shared.ledger.found(bucket, next, seq - 1);
        false
    }

    /// Moves the watermark to `through` once every seq from `first` to `through` is confirmed,
    /// and flushes it; on over the accepted losses that follow, which nothing will confirm.
    /// Only a prefix that continues the watermark moves it (after a nack the relay starts over
    /// from the oldest unconfirmed entry); returns whether it moved.
    pub fn mark_published(&self, first: u64, through: u64) -> Result<bool, StoreError> {
        let current = self.published_through();
        if first > current + 1 || through <= current {
            return Ok(false);
        }
        let through = self.shared.ledger.past_accepted(through);
        self.shared.meta.insert(WATERMARK, &through.to_be_bytes())?;
        // Flushed with every confirmed window: a crash then publishes again only what was in
        // flight, not every window confirmed since sled's last background flush.
        self.shared.meta_db.flush()?;
        self.shared.published.store(through, Ordering::Release);
        Ok(true)
    }

    /// The oldest unpublished entry's seq and acceptance time.
    pub fn oldest_pending(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let seq = self.published_through() + 1;
        for bucket in self.shared.buckets_from(seq) {
            let first = bucket.with_db(|db| Bucket::entries_from(db, seq).next().transpose())?;
            if let Some(entry) = first {
                return Ok((entry.seq == seq).then_some((seq, entry.accepted_ms)));
            }
        }
        Ok(None)
    }

    /// Archived original events (not replays) accepted in `[since_ms, until_ms]`, filtered.
    pub fn archived(
        &self,
        since_ms: u64,
        until_ms: u64,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for bucket in self.shared.buckets() {
            if bucket.newest_ms() < since_ms || bucket.is_empty() {
                continue;
            }
            let past_until = bucket.with_db(|db| {
                for entry in Bucket::entries_from(db, bucket.first_seq) {
                    let entry = entry?;
                    if entry.accepted_ms > until_ms {
                        return Ok(true);
                    }
                    if entry.accepted_ms >= since_ms && !entry.replay && keep(&entry) {
                        out.push(entry);
                    }
                }
                Ok(false)
            })?;
            if past_until {
                break;
            }
        }
        Ok(out)
    }

    /// How many buckets hold the archive: with their database open, and closed.
    pub fn bucket_states(&self) -> (usize, usize) {
        let all = self.shared.buckets.read().expect("bucket list");
        let open = all.iter().filter(|b| b.is_open()).count();
        (open, all.len() - open)
    }

    /// Number of archived entries (events within retention).
    #[cfg(test)]
    fn archived_count(&self) -> u64 {
        self.shared.buckets().iter().map(|b| b.len()).sum()
    }

    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        let (open, closed) = self.bucket_states();
        open + closed
    }

    #[cfg(test)]
    fn open_bucket_count(&self) -> usize {
        self.bucket_states().0
    }

    /// True when a dedup key is on record (whether or not it has expired). Opens every bucket.
    #[cfg(test)]
    fn has_dedup_key(&self, dedup_key: &str) -> Result<bool, StoreError> {
        let k = dedup_db_key(dedup_key);
        for bucket in self.shared.buckets() {
            if bucket.with_db(|db| Ok(db.contains_key(&k)?))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Closes every bucket that takes no more events and that the relay is not reading: all
    /// but the current one and those holding the seqs the relay publishes next, from the
    /// watermark to `relay_ahead` past it. That gives back the memory sled holds for them; a
    /// later read opens them again. A bucket closed for the first time gets its summary first
    /// (`Bucket::seal`), so that the next start need not open it. Returns how many it closed;
    /// blocks while such a bucket is being read.
    pub fn close_idle(&self, relay_ahead: u64) -> usize {
        let next = self.published_through() + 1;
        let all = self.shared.buckets();
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

    /// Flushes everything to disk, and records the last committed seq (after the events, so
    /// that it never claims more than they hold): a start compares it with the newest bucket.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let current = self.shared.current();
        tokio::task::spawn_blocking(move || current.with_db(|db| Ok(db.flush()?)))
            .await
            .map_err(|e| StoreError::Write(e.to_string()))??;
        let last = self.shared.last_seq.load(Ordering::Acquire);
        self.shared
            .meta
            .insert(damage::STOPPED_AT, &last.to_be_bytes())?;
        self.shared.meta_db.flush_async().await?;
        Ok(())
    }
}

/// What the buckets' bounds, read at start, say is lost; `through` is the last seq known
/// committed.
fn damage_at_start(
    buckets: &[Bucket],
    set_aside: &[damage::SetAside],
    watermark: u64,
    through: u64,
    ledger: &Ledger,
    retention: Duration,
    now: u64,
) -> Damage {
    let expired_before = now.saturating_sub(retention.as_millis() as u64);
    let held = buckets
        .iter()
        .map(|b| Held {
            first: b.first_seq,
            last: b.last_seq(),
            expired: b.newest_ms() < expired_before,
        })
        .collect();
    damage::at_start(held, set_aside, watermark, through, ledger.accepted())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Outcome;
    use crate::verify::Scheme;

    /// What `accept` answers for a delivery stored at `first_seq` with `count` entries.
    fn accepted(first_seq: u64, count: usize) -> AcceptOutcome {
        AcceptOutcome::Accepted { first_seq, count }
    }

    pub fn entry(key: &str, body: &str) -> Entry {
        Entry {
            seq: 0,
            accepted_ms: 0,
            replay: false,
            scheme: Scheme::Ed25519,
            compact: false,
            schema: Outcome::Unknown,
            dedup_key: key.into(),
            index: None,
            event_type: "ContactCreate".into(),
            tenant: "loc".into(),
            location_id: Some("loc".into()),
            company_id: None,
            webhook_id: Some(key.into()),
            signature: "sig".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The body of the array record below: five elements, one a real event, spaced out.
    const ARRAY: &str =
        r#"[ 1, {"type":"ContactCreate", "locationId":"L", "webhookId":"w"}, [2,3], "x", {} ]"#;
    /// Each element's compact JSON, in order.
    const ELEMENTS: [&str; 5] = [
        "1",
        r#"{"type":"ContactCreate","locationId":"L","webhookId":"w"}"#,
        "[2,3]",
        r#""x""#,
        "{}",
    ];

    fn array(key: &str) -> ArrayRecord {
        let outcomes = [Outcome::Unknown, Outcome::Valid, Outcome::Invalid];
        ArrayRecord {
            first_seq: 0,
            accepted_ms: 0,
            replay: false,
            scheme: Scheme::RsaSha256,
            compact: true,
            dedup_key: key.into(),
            signature: "sig".into(),
            schema: (0..5).map(|i| outcomes[i % 3].to_u8()).collect(),
            body: ARRAY.as_bytes().to_vec(),
        }
    }

    /// Checks that `entries` are the elements of `array("arr")` at seqs `first..`, from `from`.
    fn assert_elements(entries: &[Entry], first: u64, from: u64) {
        let skip = (from - first) as usize;
        assert_eq!(entries.len(), 5 - skip);
        for (e, i) in entries.iter().zip(skip..) {
            assert_eq!(e.seq, first + i as u64);
            assert_eq!(e.index, Some(i as u32));
            assert_eq!(e.message_id(), format!("arr/{i}"));
            assert_eq!(e.body, ELEMENTS[i].as_bytes(), "element {i}");
            assert_eq!(e.schema, Outcome::from_u8(array("arr").schema[i]));
            assert_eq!(
                (e.scheme, e.compact, e.signature.as_str()),
                (Scheme::RsaSha256, true, "sig")
            );
        }
        if skip <= 1 {
            let e = &entries[1 - skip];
            assert_eq!(e.routing_key(), "ContactCreate.L");
            assert_eq!(e.webhook_id.as_deref(), Some("w"));
            assert_eq!(e.location_id.as_deref(), Some("L"));
        }
        for e in entries.iter().filter(|e| e.index != Some(1)) {
            assert_eq!(e.routing_key(), "unknown.none");
        }
    }

    /// One event, an array record of five (seqs 2..=6), one event.
    async fn with_a_record(store: &Store) {
        store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        let arr = store
            .accept_array("arr".into(), array("arr"))
            .await
            .unwrap();
        assert_eq!(arr, accepted(2, 5));
        // Nothing of it is in memory for the relay.
        assert!(store.shared.recent.lock().unwrap().is_empty());
        store
            .accept("c".into(), vec![entry("c", "7")])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_array_record_reads_as_one_entry_per_seq_from_anywhere_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        with_a_record(&store).await;
        assert_eq!(store.depth(), 7);
        let all = store.pending_after(0, 100).unwrap();
        assert_eq!(seqs(&all), (1..=7).collect::<Vec<_>>());
        assert_elements(&all[1..6], 2, 2);
        assert_eq!(all[6].body, b"7");
        // From its middle, and windows that end and begin inside it.
        for from in 2..=6 {
            assert_elements(
                &store
                    .pending_after(from - 1, 5 - (from - 2) as usize)
                    .unwrap(),
                2,
                from,
            );
        }
        let mut windows = Vec::new();
        let mut after = 0;
        loop {
            let window = store.pending_after(after, 2).unwrap();
            let Some(last) = window.last() else { break };
            after = last.seq;
            windows.push(seqs(&window));
        }
        assert_eq!(windows, [vec![1, 2], vec![3, 4], vec![5, 6], vec![7]]);
        assert!(store.mark_published(1, 3).unwrap());
        assert_eq!(store.oldest_pending().unwrap().map(|p| p.0), Some(4));
        assert_elements(&store.pending_after(0, 3).unwrap(), 2, 4);
        assert!(store.mark_published(4, 6).unwrap());
        assert_eq!(seqs(&store.pending_after(0, 10).unwrap()), [7]);
        // A duplicate of the array is answered as one.
        let dup = store
            .accept_array("arr".into(), array("arr"))
            .await
            .unwrap();
        assert_eq!(dup, AcceptOutcome::Duplicate);
    }

    #[tokio::test]
    async fn an_array_record_survives_reopening_and_bounds_its_bucket() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
            store
                .accept("a".into(), vec![entry("a", "1")])
                .await
                .unwrap();
            // The bucket ends in the record.
            store
                .accept_array("arr".into(), array("arr"))
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        for start in ["reads the database", "reads the summary"] {
            let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
            assert!(store.damage().is_empty(), "{start}");
            assert_eq!(store.depth(), 6, "{start}");
            let all = store.pending_after(0, 100).unwrap();
            assert_eq!(seqs(&all), (1..=6).collect::<Vec<_>>(), "{start}");
            assert_elements(&all[1..], 2, 2);
            assert_elements(&store.pending_after(3, 100).unwrap(), 2, 4);
            drop(store);
            std::thread::sleep(Duration::from_millis(200));
            let summary = dir.path().join(format!("events/{:020}", 1));
            assert_eq!(bucket::summary_last_seq(&summary, 1), Some(6), "{start}");
        }
        let report = check(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(report.lost.is_empty());
        // New seqs follow the record's last.
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        let next = store
            .accept("n".into(), vec![entry("n", "8")])
            .await
            .unwrap();
        assert_eq!(next, accepted(7, 1));
    }

    #[tokio::test]
    async fn an_array_record_is_archived_and_replayed_element_by_element() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        with_a_record(&store).await;
        let archived = store
            .archived(0, u64::MAX, |e| e.dedup_key == "arr")
            .unwrap();
        assert_elements(&archived, 2, 2);
        let some: Vec<Entry> = archived
            .into_iter()
            .filter(|e| e.index >= Some(3))
            .collect();
        assert_eq!(store.append(some).await.unwrap(), 2);
        let replayed = store.pending_after(7, 10).unwrap();
        assert_eq!(seqs(&replayed), [8, 9]);
        for (e, i) in replayed.iter().zip(3..) {
            assert!(e.replay);
            assert_eq!(e.message_id(), format!("arr/{i}"));
            assert_eq!(e.body, ELEMENTS[i].as_bytes());
        }
        // Replays are not archived originals.
        assert_eq!(store.archived(0, u64::MAX, |_| true).unwrap().len(), 7);
    }

    #[tokio::test]
    async fn a_large_delivery_keeps_only_its_newest_entries_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        let count = 4 * RECENT + 500;
        let many: Vec<Entry> = (0..count).map(|_| entry("big", "2")).collect();
        store.accept("big".into(), many).await.unwrap();
        let capacity = store.shared.recent.lock().unwrap().capacity();
        assert!(
            capacity <= 2 * RECENT,
            "room for {capacity} entries kept in memory"
        );
        // Reads are whole and in order, from memory or from disk.
        let all = store.pending_after(0, 100_000).unwrap();
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=count as u64 + 1).collect::<Vec<_>>());
        let tail = store.pending_after(count as u64 - 10, 100_000).unwrap();
        assert_eq!(tail.first().map(|e| e.seq), Some(count as u64 - 9));
        assert_eq!(tail.len(), 11);
    }

    #[tokio::test]
    async fn accept_dedup_publish_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
            let a = store
                .accept("a".into(), vec![entry("a", "1")])
                .await
                .unwrap();
            assert_eq!(a, accepted(1, 1));
            let dup = store
                .accept("a".into(), vec![entry("a", "1")])
                .await
                .unwrap();
            assert_eq!(dup, AcceptOutcome::Duplicate);
            store
                .accept("b".into(), vec![entry("b", "2"), entry("b", "3")])
                .await
                .unwrap();
            assert_eq!(store.depth(), 3);
            let pending = store.pending_after(0, 10).unwrap();
            assert_eq!(
                pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            assert!(store.mark_published(1, 1).unwrap());
            // A prefix that skips an unconfirmed seq does not move the watermark.
            assert!(!store.mark_published(3, 3).unwrap());
            assert_eq!(store.depth(), 2);
        }
        // Give the old writer thread a moment to drop the database lock.
        std::thread::sleep(Duration::from_millis(200));
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(store.depth(), 2);
        assert_eq!(store.pending_after(0, 10).unwrap()[0].seq, 2);
        let c = store
            .accept("c".into(), vec![entry("c", "4")])
            .await
            .unwrap();
        assert_eq!(c, accepted(4, 1));
    }

    /// A store in `dir` with `n` events (seqs 1..=n, one bucket), stopped cleanly.
    async fn stopped_with_events(dir: &Path, n: usize) {
        let store = Store::open(dir, Duration::from_secs(60)).unwrap();
        for i in 0..n {
            let k = format!("k{i}");
            store.accept(k.clone(), vec![entry(&k, "1")]).await.unwrap();
        }
        store.flush().await.unwrap();
        drop(store);
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Deletes the events `seqs` from the first bucket's database, behind the store's back.
    fn delete_events(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
        let db = sled::open(dir.join(format!("events/{:020}", 1))).unwrap();
        for seq in seqs {
            db.remove(key(EVENT, seq)).unwrap();
        }
        db.flush().unwrap();
        drop(db);
        std::thread::sleep(Duration::from_millis(200));
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    fn lost_seqs(store: &Store) -> Vec<(u64, u64)> {
        let damage = store.damage();
        damage.lost.iter().map(|l| (l.first, l.last)).collect()
    }

    #[tokio::test]
    async fn the_outbox_stops_before_a_hole_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        stopped_with_events(dir.path(), 10).await;
        // Its bounds are intact: only the read that reaches the hole can tell.
        delete_events(dir.path(), 5..=6);
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(store.damage().is_empty());
        assert_eq!(seqs(&store.pending_after(0, 100).unwrap()), [1, 2, 3, 4]);
        assert_eq!(lost_seqs(&store), [(5, 6)]);
        assert!(store.mark_published(1, 4).unwrap());
        assert!(store.pending_after(0, 100).unwrap().is_empty());
        assert_eq!(store.depth(), 6);
        // Not confirmed, never passed.
        assert!(!store.mark_published(7, 10).unwrap());
        assert_eq!(store.published_through(), 4);
    }

    #[tokio::test]
    async fn the_outbox_stops_where_a_bucket_holds_less_than_its_summary_claims() {
        let dir = tempfile::tempdir().unwrap();
        stopped_with_events(dir.path(), 10).await;
        // This start writes the bucket's summary; the next one reads only that.
        drop(Store::open(dir.path(), Duration::from_secs(60)).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        delete_events(dir.path(), 8..=10);
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(store.damage().is_empty());
        assert_eq!(
            seqs(&store.pending_after(0, 100).unwrap()),
            [1, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!(lost_seqs(&store), [(8, 10)]);
    }

    #[tokio::test]
    async fn the_watermark_moves_over_an_accepted_hole_when_the_relay_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        stopped_with_events(dir.path(), 10).await;
        delete_events(dir.path(), 5..=6);
        let given_up = accept_loss(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(given_up.given_up.len(), 1);
        // It read the bucket: sled lets go of its lock a moment after.
        std::thread::sleep(Duration::from_millis(200));
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(store.damage().is_empty());
        // Two windows, the second one past the hole, confirmed in order.
        assert_eq!(seqs(&store.pending_after(0, 4).unwrap()), [1, 2, 3, 4]);
        assert_eq!(seqs(&store.pending_after(4, 4).unwrap()), [7, 8, 9, 10]);
        assert!(store.mark_published(1, 4).unwrap());
        assert_eq!(store.published_through(), 6);
        assert!(store.mark_published(7, 10).unwrap());
        assert_eq!(store.depth(), 0);
        assert!(store.damage().is_empty());
    }

    #[tokio::test]
    async fn a_newest_bucket_cut_short_after_a_clean_stop_is_reported_and_its_seqs_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        stopped_with_events(dir.path(), 10).await;
        delete_events(dir.path(), 8..=10);
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(lost_seqs(&store), [(8, 10)]);
        let new = store.accept("new".into(), vec![entry("new", "1")]).await;
        assert_eq!(new.unwrap(), accepted(11, 1));
        // `store check` names them too, so that they can be accepted.
        drop(store);
        std::thread::sleep(Duration::from_millis(200));
        let report = check(dir.path(), Duration::from_secs(60)).unwrap();
        let lost: Vec<(u64, u64)> = report.lost.iter().map(|l| (l.first, l.last)).collect();
        assert_eq!(lost, [(8, 10)]);
    }

    fn files_under(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    files_under(&e.path())
                } else {
                    e.metadata().unwrap().len()
                }
            })
            .sum()
    }

    fn bucket_dirs(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("events"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn sweep_removes_expired_confirmed_buckets_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        // Buckets of 300 ms; the margins below are at least 150 ms.
        let store = Store::open(dir.path(), Duration::from_millis(1200)).unwrap();
        let body = "x".repeat(40_000);
        // All at once, so that they share a commit or a few, well within one bucket's span.
        let accepts = (0..50).map(|i| {
            let k = format!("a{i}");
            store.accept(k.clone(), vec![entry(&k, &body)])
        });
        for outcome in futures_util::future::join_all(accepts).await {
            assert!(matches!(outcome.unwrap(), AcceptOutcome::Accepted { .. }));
        }
        let full = files_under(&dir.path().join("events"));
        assert_eq!(store.bucket_count(), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        store
            .accept("b".into(), vec![entry("b", "2")])
            .await
            .unwrap();
        assert_eq!(store.bucket_count(), 2);
        assert!(store.mark_published(1, 50).unwrap());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        // The first bucket is past the retention and confirmed; "b"'s is neither.
        let report = store.sweep().await.unwrap();
        assert_eq!(
            report,
            SweepReport {
                buckets: 1,
                events: 50
            }
        );
        assert!(!store.has_dedup_key("a0").unwrap());
        assert!(store.has_dedup_key("b").unwrap());
        assert_eq!(store.archived_count(), 1);
        // Its directory is gone from the disk.
        assert_eq!(bucket_dirs(dir.path()), vec![format!("{:020}", 51)]);
        assert!(files_under(&dir.path().join("events")) < full);
        tokio::time::sleep(Duration::from_millis(450)).await;
        // "b" is past the retention too, but unpublished: it stays, however old.
        assert_eq!(store.sweep().await.unwrap(), SweepReport::default());
        assert_eq!(store.pending_after(0, 10).unwrap()[0].seq, 51);
        // Once confirmed, its bucket goes although it still takes events; a new one takes over.
        assert!(store.mark_published(51, 51).unwrap());
        assert_eq!(store.sweep().await.unwrap().events, 1);
        assert_eq!(store.archived_count(), 0);
        // An expired key is accepted again, with the next seq.
        let again = store
            .accept("a0".into(), vec![entry("a0", "1")])
            .await
            .unwrap();
        assert_eq!(again, accepted(52, 1));
    }

    #[tokio::test]
    async fn a_key_past_the_retention_is_new_again_before_its_bucket_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_millis(300)).unwrap();
        store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Unpublished, so still on disk, but its dedup key has expired.
        assert!(store.has_dedup_key("a").unwrap());
        let again = store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        assert!(matches!(
            again,
            AcceptOutcome::Accepted { first_seq: 2, .. }
        ));
        // The newest record of the key decides.
        let dup = store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        assert_eq!(dup, AcceptOutcome::Duplicate);
    }

    #[tokio::test]
    async fn the_outbox_reads_across_buckets_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Duration::from_millis(40)).unwrap();
            for i in 0..3 {
                let k = format!("k{i}");
                store.accept(k.clone(), vec![entry(&k, "1")]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            assert_eq!(store.bucket_count(), 3);
            let seqs: Vec<u64> = store
                .pending_after(0, 10)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(seqs, vec![1, 2, 3]);
            assert_eq!(store.pending_after(1, 1).unwrap()[0].seq, 2);
            assert!(store.mark_published(1, 1).unwrap());
            assert_eq!(store.oldest_pending().unwrap().map(|p| p.0), Some(2));
            store.flush().await.unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        // A crash while a bucket was made or removed leaves a directory that is not one.
        let half_made = dir.path().join(format!("events/{:020}", 9));
        let half_gone = dir.path().join(format!("events/{:020}.gone", 1));
        std::fs::create_dir_all(half_made.join("blobs")).unwrap();
        std::fs::create_dir_all(&half_gone).unwrap();
        let store = Store::open(dir.path(), Duration::from_millis(40)).unwrap();
        assert!(!half_made.exists() && !half_gone.exists());
        assert_eq!(store.depth(), 2);
        let seqs: Vec<u64> = store
            .pending_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(store.archived(0, u64::MAX, |_| true).unwrap().len(), 3);
        assert!(store.has_dedup_key("k0").unwrap());
    }

    #[tokio::test]
    async fn the_outbox_reads_the_same_from_memory_and_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
        let total = RECENT as u64 + 100;
        for i in 0..total {
            let k = format!("k{i}");
            store.accept(k.clone(), vec![entry(&k, &k)]).await.unwrap();
        }
        let seqs = |from: u64, limit: usize| -> Vec<u64> {
            let entries = store.pending_after(from, limit).unwrap();
            for e in &entries {
                // The entry is the one committed with that seq, whichever way it was read.
                assert_eq!(e.body, format!("k{}", e.seq - 1).into_bytes());
            }
            entries.iter().map(|e| e.seq).collect()
        };
        // The oldest entries are no longer in memory: read from disk, across into memory.
        assert_eq!(seqs(0, usize::MAX), (1..=total).collect::<Vec<_>>());
        // Recent ones come from memory.
        assert_eq!(
            seqs(total - 10, 5),
            (total - 9..=total - 5).collect::<Vec<_>>()
        );
        assert!(seqs(total, 5).is_empty());
        // Confirmed entries are not handed out again, wherever they are.
        assert!(store.mark_published(1, total - 3).unwrap());
        assert_eq!(seqs(0, 10), vec![total - 2, total - 1, total]);
    }

    /// What the relay reads past the watermark, in these tests.
    const RELAY_AHEAD: u64 = 4000;

    #[tokio::test]
    async fn full_buckets_rotate_and_done_ones_close_yet_still_answer() {
        let dir = tempfile::tempdir().unwrap();
        let megabyte = "m".repeat(1024 * 1024);
        // Each entry is a little over a megabyte: this many fill a bucket.
        let per_bucket = (BUCKET_BYTES / (1024 * 1024)) as usize;
        {
            let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
            for i in 0..per_bucket {
                let k = format!("k{i}");
                store
                    .accept(k.clone(), vec![entry(&k, &megabyte)])
                    .await
                    .unwrap();
            }
            assert_eq!(store.bucket_count(), 1);
            // Full: the next commit starts a new bucket, long before the span is over.
            store
                .accept("x".into(), vec![entry("x", "1")])
                .await
                .unwrap();
            assert_eq!(store.bucket_count(), 2);
            assert_eq!(store.open_bucket_count(), 2);
            // Not confirmed yet: it stays open for the relay.
            assert_eq!(store.close_idle(RELAY_AHEAD), 0);
            let last = per_bucket as u64;
            let summary = dir.path().join(format!("events/{:020}/keys", 1));
            assert!(!summary.exists());
            assert!(store.mark_published(1, last).unwrap());
            assert_eq!(store.close_idle(RELAY_AHEAD), 1);
            assert_eq!(store.open_bucket_count(), 1);
            // Closed for good, it has a summary for the next start.
            assert!(summary.exists());
            assert_eq!(store.close_idle(RELAY_AHEAD), 0);
            // Closed, it still knows its keys: dedup opens it to read the key's time.
            let dup = store.accept("k5".into(), vec![entry("k5", "1")]).await;
            assert_eq!(dup.unwrap(), AcceptOutcome::Duplicate);
            assert_eq!(store.open_bucket_count(), 2);
            assert_eq!(store.close_idle(RELAY_AHEAD), 1);
            // And the archive reads it.
            let archived = store.archived(0, u64::MAX, |_| true).unwrap();
            assert_eq!(archived.len(), per_bucket + 1);
            assert_eq!(archived[3].body, megabyte.as_bytes());
            // The current bucket is never closed, confirmed or not.
            assert!(store.mark_published(last + 1, last + 1).unwrap());
            assert_eq!(store.close_idle(RELAY_AHEAD), 1);
            assert_eq!(store.open_bucket_count(), 1);
            // One more event, not published before the stop.
            store
                .accept("y".into(), vec![entry("y", "2")])
                .await
                .unwrap();
            store.flush().await.unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
        // Every bucket from disk starts closed; new events go to a new bucket.
        assert_eq!(store.bucket_count(), 3);
        assert_eq!(store.open_bucket_count(), 1);
        let last = per_bucket as u64 + 2;
        // The relay's read opens the bucket it needs, and it stays open until confirmed.
        let pending = store.pending_after(0, 10).unwrap();
        assert_eq!(pending.iter().map(|e| e.seq).collect::<Vec<_>>(), [last]);
        assert_eq!(store.open_bucket_count(), 2);
        assert_eq!(store.close_idle(RELAY_AHEAD), 0);
        assert!(store.mark_published(last, last).unwrap());
        assert_eq!(store.close_idle(RELAY_AHEAD), 1);
        for k in ["k0", "k7", "x", "y"] {
            let dup = store.accept(k.into(), vec![entry(k, "1")]).await.unwrap();
            assert_eq!(dup, AcceptOutcome::Duplicate, "{k}");
        }
        let new = store.accept("new".into(), vec![entry("new", "1")]).await;
        assert_eq!(new.unwrap(), accepted(last + 1, 1));
    }

    #[tokio::test]
    async fn buckets_far_ahead_of_the_relay_are_closed_too() {
        let dir = tempfile::tempdir().unwrap();
        let ahead = RELAY_AHEAD as usize + 100;
        // Every start begins a new bucket: one event, then `ahead` events, then one more.
        for (round, count) in [1, ahead, 1].into_iter().enumerate() {
            let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
            let accepts = (0..count).map(|i| {
                let k = format!("r{round}-{i}");
                store.accept(k.clone(), vec![entry(&k, "1")])
            });
            for outcome in futures_util::future::join_all(accepts).await {
                assert!(matches!(outcome.unwrap(), AcceptOutcome::Accepted { .. }));
            }
            store.flush().await.unwrap();
            drop(store);
            std::thread::sleep(Duration::from_millis(200));
        }
        let store = Store::open(dir.path(), Duration::from_secs(600)).unwrap();
        assert_eq!(store.bucket_count(), 4);
        // Reading the archive opens them all.
        assert_eq!(
            store.archived(0, u64::MAX, |_| true).unwrap().len(),
            ahead + 2
        );
        assert_eq!(store.open_bucket_count(), 4);
        // Nothing is confirmed. The relay reads seq 1 on: its bucket and the next stay open;
        // the third, past what the relay reads ahead, is closed although unpublished.
        assert_eq!(store.close_idle(RELAY_AHEAD), 1);
        assert_eq!(store.open_bucket_count(), 3);
        // Its events are still there for the relay.
        let all = store.pending_after(0, usize::MAX).unwrap();
        assert_eq!(all.len(), ahead + 2);
        assert_eq!(store.open_bucket_count(), 4);
        // Once the relay has moved on, the buckets behind it close.
        let last = (ahead + 1) as u64;
        assert!(store.mark_published(1, last).unwrap());
        assert_eq!(store.close_idle(RELAY_AHEAD), 2);
        assert_eq!(store.open_bucket_count(), 2);
    }

    #[tokio::test]
    async fn seqs_never_go_back_below_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Duration::from_millis(10)).unwrap();
            store
                .accept("a".into(), vec![entry("a", "1")])
                .await
                .unwrap();
            assert!(store.mark_published(1, 1).unwrap());
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(store.sweep().await.unwrap().events, 1);
            assert_eq!(store.archived_count(), 0);
            store.flush().await.unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        // The archive is empty, but seq 1 was published: a new event must not reuse it.
        let store = Store::open(dir.path(), Duration::from_millis(10)).unwrap();
        assert_eq!(store.depth(), 0);
        let b = store
            .accept("b".into(), vec![entry("b", "2")])
            .await
            .unwrap();
        assert_eq!(b, accepted(2, 1));
        assert_eq!(store.depth(), 1);
        assert_eq!(store.pending_after(0, 10).unwrap()[0].seq, 2);
    }
}
