//! The only sled user: dedup keys, the outbox, the archive, and (for the token module) the
//! vault's tree.
//!
//! One tree holds the dedup keys and the events, so that a delivery's dedup key and its entries
//! are written by one atomic batch:
//! - `d<dedup key>`  → first seq (u64 BE) + acceptance time (u64 BE, unix ms)
//! - `e<seq>`        → the encoded [`Entry`], kept for the retention window (archive, replay)
//! - `w`             → the published watermark (u64 BE): every seq up to it is confirmed
//!
//! The outbox is every entry above the watermark. The relay publishes in seq order and moves the
//! watermark over the confirmed prefix, so confirming a window is one small write.
//!
//! All inserts go through one writer thread that batches concurrent requests and flushes once
//! per batch (group commit). Sequence numbers are assigned there, so outbox order is commit order.

mod entry;
mod tokens;

pub use entry::Entry;
pub use tokens::KeyedTree;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

const DEDUP: u8 = b'd';
const EVENT: u8 = b'e';
const WATERMARK: &[u8] = b"w";

/// How many requests the writer takes into one batch at most.
const MAX_BATCH: usize = 1024;
/// How many requests may wait for the writer before new ones are refused (429).
const QUEUE_DEPTH: usize = 16 * 1024;
/// How many archived entries one sweep step looks at.
const SWEEP_STEP: usize = 4096;
/// Below this much free disk space, new events are refused (429).
const DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

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
        entries: Vec<Entry>,
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

/// What one sweep step removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub events: usize,
    pub dedup_keys: usize,
    /// More expired entries remain.
    pub more: bool,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    retention_ms: u64,
    /// The highest seq written (0 when none).
    last_seq: AtomicU64,
    /// Every seq up to this one is confirmed by the broker.
    published: AtomicU64,
    /// The outbox gained entries.
    appended: Notify,
    /// Set by the disk check; refuses new events while true.
    disk_low: AtomicBool,
    /// Set when the last write failed; cleared by the next good one.
    write_failed: AtomicBool,
    /// fsync each group commit; only benchmarks turn it off.
    flush_on_commit: AtomicBool,
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
    /// Opens (or creates) the database in `dir` and starts the writer thread.
    pub fn open(dir: &Path, retention: Duration) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        let tree = db.open_tree("outbox")?;
        let last_event = tree
            .scan_prefix([EVENT])
            .keys()
            .next_back()
            .transpose()?
            .map(|k| seq_of(&k))
            .unwrap_or(0);
        let published = tree
            .get(WATERMARK)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        // Never hand out a seq at or below the watermark, even when the archive was swept empty.
        let last_seq = last_event.max(published);
        let next_seq = last_seq + 1;
        let shared = Arc::new(Shared {
            db,
            tree,
            retention_ms: retention.as_millis() as u64,
            last_seq: AtomicU64::new(last_seq),
            published: AtomicU64::new(published),
            appended: Notify::new(),
            disk_low: AtomicBool::new(false),
            write_failed: AtomicBool::new(false),
            flush_on_commit: AtomicBool::new(true),
        });
        let (sender, receiver) = mpsc::sync_channel(QUEUE_DEPTH);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("hlgate-store-writer".into())
            .spawn(move || Writer::new(writer_shared, next_seq).run(receiver))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let store = Store { shared, sender };
        store.check_disk(dir);
        Ok(store)
    }

    /// A tree of opaque values by key, for the token vault (`tokens`) and the INSTALLs waiting
    /// for a company token (`installs`).
    pub fn keyed_tree(&self, name: &str) -> Result<KeyedTree, StoreError> {
        KeyedTree::open(&self.shared.db, name)
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

    /// True while new events can be stored (disk has room, last write worked).
    pub fn writable(&self) -> bool {
        !self.shared.disk_low.load(Ordering::Relaxed)
            && !self.shared.write_failed.load(Ordering::Relaxed)
    }

    /// Re-reads the free space of the data dir.
    pub fn check_disk(&self, dir: &Path) {
        let low = fs2::available_space(dir)
            .map(|free| free < DISK_RESERVE_BYTES)
            .unwrap_or(false);
        self.shared.disk_low.store(low, Ordering::Relaxed);
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
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Records a delivery: dedup key and outbox entries in one batch, flushed before returning.
    pub async fn accept(
        &self,
        dedup_key: String,
        entries: Vec<Entry>,
    ) -> Result<AcceptOutcome, StoreError> {
        self.send(|reply| Command::Accept {
            dedup_key,
            entries,
            reply,
        })
        .await
    }

    /// Appends entries without a dedup key (replays); returns how many.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<usize, StoreError> {
        self.send(|reply| Command::Append { entries, reply }).await
    }

    /// Removes one step of expired archive entries and dedup keys.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        self.send(|reply| Command::Sweep { reply }).await
    }

    /// Up to `limit` outbox entries (above the watermark) after `after`, in seq order.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let from = after.max(self.published_through()) + 1;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self
            .shared
            .tree
            .range(key(EVENT, from)..=key(EVENT, u64::MAX))
            .take(limit)
        {
            let (k, v) = item?;
            let seq = seq_of(&k);
            out.push(Entry::decode(seq, &v).ok_or(StoreError::Corrupt(seq))?);
        }
        Ok(out)
    }

    /// Moves the watermark to `through` once every seq from `first` to `through` is confirmed.
    /// Only a prefix that continues the watermark moves it (after a nack the relay starts over
    /// from the oldest unconfirmed entry); returns whether it moved.
    pub fn mark_published(&self, first: u64, through: u64) -> Result<bool, StoreError> {
        let current = self.published_through();
        if first > current + 1 || through <= current {
            return Ok(false);
        }
        self.shared.tree.insert(WATERMARK, &through.to_be_bytes())?;
        self.shared.published.store(through, Ordering::Release);
        Ok(true)
    }

    /// The oldest unpublished entry's seq and acceptance time.
    pub fn oldest_pending(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let seq = self.published_through() + 1;
        Ok(self
            .shared
            .tree
            .get(key(EVENT, seq))?
            .and_then(|b| Entry::decode(seq, &b))
            .map(|e| (seq, e.accepted_ms)))
    }

    /// Archived original events (not replays) accepted in `[since_ms, until_ms]`, filtered.
    pub fn archived(
        &self,
        since_ms: u64,
        until_ms: u64,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for item in self.shared.tree.scan_prefix([EVENT]) {
            let (k, v) = item?;
            let seq = seq_of(&k);
            let entry = Entry::decode(seq, &v).ok_or(StoreError::Corrupt(seq))?;
            if entry.accepted_ms > until_ms {
                break;
            }
            if entry.accepted_ms >= since_ms && !entry.replay && keep(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Number of archived entries (events within retention).
    pub fn archived_count(&self) -> usize {
        self.shared.tree.scan_prefix([EVENT]).keys().count()
    }

    /// True when a dedup key is on record (whether or not it has expired).
    pub fn has_dedup_key(&self, dedup_key: &str) -> Result<bool, StoreError> {
        Ok(self.shared.tree.contains_key(dedup_db_key(dedup_key))?)
    }

    /// Flushes everything to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.shared.db.flush_async().await?;
        Ok(())
    }
}

struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
}

impl Writer {
    fn new(shared: Arc<Shared>, next_seq: u64) -> Self {
        Self { shared, next_seq }
    }

    fn run(mut self, receiver: Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = receiver.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.commit(std::mem::take(&mut batch));
        }
        let _ = self.shared.db.flush();
    }

    fn entry_into(&mut self, batch: &mut sled::Batch, mut entry: Entry, now: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        entry.seq = seq;
        entry.accepted_ms = now;
        batch.insert(&key(EVENT, seq), entry.encode());
        seq
    }

    /// One group commit: every accept and append in `commands`, one batch, one flush.
    fn commit(&mut self, commands: Vec<Command>) {
        let now = now_ms();
        let start_seq = self.next_seq;
        let mut batch = sled::Batch::default();
        let mut seen = HashSet::new();
        let mut added = 0u64;
        let mut waiting = Vec::new();

        for command in commands {
            match command {
                Command::Accept {
                    dedup_key,
                    entries,
                    reply,
                } => {
                    // A key taken earlier in this batch needs no lookup.
                    let duplicate = seen.contains(&dedup_key)
                        || match self.is_recent_duplicate(&dedup_key, now) {
                            Ok(d) => d,
                            Err(e) => {
                                let _ = reply.send(Err(e));
                                continue;
                            }
                        };
                    if duplicate {
                        // Its first copy is on disk already, or in this very batch.
                        waiting.push(Waiting::Accept(reply, AcceptOutcome::Duplicate));
                        continue;
                    }
                    let count = entries.len();
                    let mut first_seq = 0;
                    for (i, mut entry) in entries.into_iter().enumerate() {
                        entry.dedup_owner = i == 0;
                        let seq = self.entry_into(&mut batch, entry, now);
                        if i == 0 {
                            first_seq = seq;
                        }
                    }
                    let mut value = [0u8; 16];
                    value[..8].copy_from_slice(&first_seq.to_be_bytes());
                    value[8..].copy_from_slice(&now.to_be_bytes());
                    batch.insert(dedup_db_key(&dedup_key), &value[..]);
                    seen.insert(dedup_key);
                    added += count as u64;
                    waiting.push(Waiting::Accept(
                        reply,
                        AcceptOutcome::Accepted { first_seq, count },
                    ));
                }
                Command::Append { entries, reply } => {
                    let count = entries.len();
                    for mut entry in entries {
                        entry.replay = true;
                        entry.dedup_owner = false;
                        self.entry_into(&mut batch, entry, now);
                    }
                    added += count as u64;
                    waiting.push(Waiting::Append(reply, count));
                }
                Command::Sweep { reply } => {
                    let _ = reply.send(self.sweep(now));
                }
            }
        }

        if waiting.is_empty() {
            return;
        }
        let result = self.shared.tree.apply_batch(batch).and_then(|()| {
            if self.shared.flush_on_commit.load(Ordering::Relaxed) {
                self.shared.db.flush()?;
            }
            Ok(())
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
            self.shared.write_failed.store(true, Ordering::Relaxed);
            // Nothing of this batch is on record: hand its seqs out again.
            self.next_seq = start_seq;
        } else {
            self.shared.write_failed.store(false, Ordering::Relaxed);
            if added > 0 {
                self.shared
                    .last_seq
                    .store(self.next_seq - 1, Ordering::Release);
                self.shared.appended.notify_one();
            }
        }
        for w in waiting {
            let failed = |e: &sled::Error| StoreError::Write(e.to_string());
            match w {
                Waiting::Accept(reply, outcome) => {
                    let _ = reply.send(result.as_ref().map(|_| outcome).map_err(failed));
                }
                Waiting::Append(reply, count) => {
                    let _ = reply.send(result.as_ref().map(|_| count).map_err(failed));
                }
            }
        }
    }

    fn is_recent_duplicate(&self, dedup_key: &str, now: u64) -> Result<bool, StoreError> {
        Ok(match self.shared.tree.get(dedup_db_key(dedup_key))? {
            Some(v) if v.len() == 16 => {
                let accepted = u64::from_be_bytes(v[8..16].try_into().expect("8 bytes"));
                now.saturating_sub(accepted) < self.shared.retention_ms
            }
            Some(_) => true,
            None => false,
        })
    }

    /// Removes archived entries older than the retention (unless still unpublished) and the
    /// dedup keys they own.
    fn sweep(&mut self, now: u64) -> Result<SweepReport, StoreError> {
        let tree = &self.shared.tree;
        let cutoff = now.saturating_sub(self.shared.retention_ms);
        let mut report = SweepReport::default();
        let mut batch = sled::Batch::default();
        let mut looked = 0;
        for item in tree.scan_prefix([EVENT]) {
            let (k, v) = item?;
            let seq = seq_of(&k);
            let Some(entry) = Entry::decode(seq, &v) else {
                batch.remove(k);
                continue;
            };
            if entry.accepted_ms >= cutoff {
                break;
            }
            looked += 1;
            if looked > SWEEP_STEP {
                report.more = true;
                break;
            }
            if seq > self.shared.published.load(Ordering::Acquire) {
                // Unpublished events are never swept, however old; nor is anything after them.
                break;
            }
            batch.remove(k);
            report.events += 1;
            if entry.dedup_owner {
                let dk = dedup_db_key(&entry.dedup_key);
                if let Some(v) = tree.get(&dk)? {
                    if v.len() == 16 && u64::from_be_bytes(v[..8].try_into().expect("8")) == seq {
                        batch.remove(dk);
                        report.dedup_keys += 1;
                    }
                }
            }
        }
        tree.apply_batch(batch)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Outcome;
    use crate::verify::Scheme;

    pub fn entry(key: &str, body: &str) -> Entry {
        Entry {
            seq: 0,
            accepted_ms: 0,
            replay: false,
            dedup_owner: false,
            scheme: Scheme::Ed25519,
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

    #[tokio::test]
    async fn accept_dedup_publish_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Duration::from_secs(60)).unwrap();
            let a = store
                .accept("a".into(), vec![entry("a", "1")])
                .await
                .unwrap();
            assert_eq!(
                a,
                AcceptOutcome::Accepted {
                    first_seq: 1,
                    count: 1
                }
            );
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
            assert!(pending[1].dedup_owner && !pending[2].dedup_owner);
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
        assert_eq!(
            c,
            AcceptOutcome::Accepted {
                first_seq: 4,
                count: 1
            }
        );
    }

    #[tokio::test]
    async fn sweep_removes_expired_published_entries_and_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Duration::from_millis(50)).unwrap();
        store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        store
            .accept("b".into(), vec![entry("b", "2")])
            .await
            .unwrap();
        assert!(store.mark_published(1, 1).unwrap());
        tokio::time::sleep(Duration::from_millis(80)).await;
        let report = store.sweep().await.unwrap();
        // "b" is still unpublished, so it stays.
        assert_eq!(report.events, 1);
        assert_eq!(report.dedup_keys, 1);
        assert!(!store.has_dedup_key("a").unwrap());
        assert!(store.has_dedup_key("b").unwrap());
        assert_eq!(store.archived_count(), 1);
        // An expired key is accepted again.
        let again = store
            .accept("a".into(), vec![entry("a", "1")])
            .await
            .unwrap();
        assert!(matches!(again, AcceptOutcome::Accepted { .. }));
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
        assert_eq!(
            b,
            AcceptOutcome::Accepted {
                first_seq: 2,
                count: 1
            }
        );
        assert_eq!(store.depth(), 1);
        assert_eq!(store.pending_after(0, 10).unwrap()[0].seq, 2);
    }
}
