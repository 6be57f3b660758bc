//! The only sled user: dedup keys, the store's small meta, and (for the token module) the
//! vault's trees; and the event log, which holds the events: encoded
//! [`Entry`](crate::entry::Entry) values and array records.
//!
//! The rooms: `writer` (the writer thread: group commit, refusals, rotation), `log` (the
//! event log: segments of checksummed frames), `checkpoint` (the dedup keys flushed, and how
//! far), `recover` (a start's work on the log), `dedup` (the dedup lookup behind a small
//! seam, over the key hashes of `keys`), `outbox` (the recent entries, reads after the
//! watermark, the archive), `replay` (the archive queued again, a chunk at a time, one replay
//! at a time), `layout` (key prefixes, `meta` keys, directory names, the entry encoding),
//! `bucket` (one bucket's directory and database, and the list of them), `summary` (a closed
//! bucket's `keys` file), `sweep` (expiry, closing idle buckets), `damage` (what is lost, and
//! the ledger of it), `check` (`hlgate store check` and `accept-loss`), `tokens` (the token
//! module's trees).
//!
//! Events live in buckets, each a directory covering a span of acceptance time (a quarter of
//! the retention) or a bounded size, holding its segment of the event log and a sled database
//! of its dedup keys, so that expired data leaves the disk a whole bucket at a time. Seqs rise
//! across buckets. The `meta` tree of the main database holds the published watermark: the
//! outbox is every entry above it.

mod attempts;
mod bucket;
mod check;
mod checkpoint;
mod confirmed;
mod damage;
mod dedup;
mod disk;
mod error;
mod keys;
mod layout;
mod log;
mod lookup;
mod outbox;
mod recover;
mod replay;
mod summary;
mod sweep;
mod tokens;
mod writer;

#[cfg(test)]
mod tests;

pub use attempts::{Attempts, Changes, LastDelivery, MinuteCounts, Recorded};
pub use check::{accept_loss, check, check_with_vault, Acceptance, Report};
pub use damage::{Damage, Lost};
pub use error::StoreError;
pub use layout::Encoded;
pub use lookup::{open_read_only, Found, Lookup, Page, Query, State, StateFilter};
pub use outbox::Window;
pub use replay::ReplayError;
pub use sweep::SweepReport;
pub use tokens::{KeyedTree, OfflineTrees};
pub use writer::{AcceptOutcome, Answered};

use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::entry::{now_ms, ArrayRecord, Entry};

use bucket::{Bucket, Buckets};
use checkpoint::Checkpoint;
use confirmed::Confirmed;
use damage::{Held, Ledger};
use dedup::BucketKeys;
use disk::Health;
use keys::KeyIndex;
use layout::{accepted, meta_u64, CONFIRMED, EVENTS, MAIN_DB, STOPPED_AT, WATERMARK};
use outbox::{Marks, Outbox};
use replay::{Keep, Replays};
use writer::{Command, Events, Parts, Writer};

/// How long a request waits for its commit before it is answered 429: a disk that stalls must
/// not hold webhooks (and HighLevel's connections) open. If the commit lands after all, the
/// redelivery is a duplicate.
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How many requests may wait for the writer before new ones are refused (429).
const QUEUE_DEPTH: usize = 16 * 1024;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    sender: SyncSender<Command>,
    meta_db: sled::Db,
    meta: sled::Tree,
    buckets: Arc<Buckets>,
    outbox: Arc<Outbox>,
    health: Arc<Health>,
    /// What is lost: accepted by an operator, found at start, found since.
    ledger: Arc<Ledger>,
    replays: Arc<Replays>,
    checkpoint: Arc<Checkpoint>,
    lookup: Arc<Lookup>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("depth", &self.depth())
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts the writer thread.
    pub fn open(dir: &Path, retention: Duration) -> Result<Store, StoreError> {
        Store::open_on(dir, retention, Arc::new(log::RealFs))
    }

    /// [`Store::open`] with the event log's file operations going through `fs` (tests fail
    /// them on purpose).
    fn open_on(
        dir: &Path,
        retention: Duration,
        fs: Arc<dyn log::LogFs>,
    ) -> Result<Store, StoreError> {
        // A data dir made by an older version or by hand may be open to others.
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(|e| StoreError::io("cannot make the data dir, for its user only", e))?;
        check::refuse_without_main_db(dir)?;
        let meta_db = sled::Config::new()
            .path(dir.join(MAIN_DB))
            .cache_capacity(4 * 1024 * 1024)
            .open()?;
        let meta = meta_db.open_tree("meta")?;
        let ledger = Arc::new(Ledger::new(accepted(&meta)?));
        let published = ledger.past_accepted(meta_u64(&meta, WATERMARK)?);
        // Written only with the watermark: ranges that do not decode are a damaged meta tree,
        // and forgetting them only publishes those entries again.
        let confirmed = meta
            .get(CONFIRMED)?
            .and_then(|v| Confirmed::decode(&v))
            .unwrap_or_default();
        let stopped_at = meta_u64(&meta, STOPPED_AT)?;
        let now = now_ms();
        let events_dir = dir.join(EVENTS);
        let mut index = KeyIndex::default();
        let mut buckets = Vec::new();
        let (mut opened, set_aside) = Bucket::open_all(&events_dir, now, &ledger)?;
        let (log, recovered) = recover::open_log(fs, &meta, &events_dir, &mut opened, published)?;
        for (bucket, hashes) in opened {
            index.add(bucket.first_seq, hashes);
            buckets.push(bucket);
        }
        let through = published.max(stopped_at);
        ledger.started(damage_at_start(
            &buckets, &set_aside, published, through, &ledger, retention, now,
        ));
        recover::report(&recovered, &ledger);
        // Never hand out a seq at or below the watermark, even when every bucket was removed,
        // nor one a bucket set aside holds, nor one a bucket cut short lost, nor one the log
        // was handed (its checkpoint's, say).
        let last_seq = buckets
            .last()
            .map_or(0, |b| b.last_seq())
            .max(through)
            .max(set_aside.iter().map(|a| a.last).max().unwrap_or(0))
            .max(log.next_seq() - 1);
        // New events go to a new bucket (and segment): one opened from disk takes none.
        if buckets
            .last()
            .is_none_or(|b| !b.is_empty() || b.first_seq != last_seq + 1)
        {
            log.seal(now)?;
            buckets.push(Bucket::create(&events_dir, last_seq + 1, now, &ledger)?);
        }
        if !log.continue_at(last_seq + 1) {
            return Err(StoreError::Damaged(format!(
                "the event log cannot continue at seq {}: it is at {}",
                last_seq + 1,
                log.next_seq()
            )));
        }
        let buckets = Arc::new(Buckets::new(buckets.into_iter().map(Arc::new).collect()));
        let outbox = Arc::new(Outbox::new(
            meta_db.clone(),
            meta.clone(),
            buckets.clone(),
            log.clone(),
            ledger.clone(),
            Marks {
                last_seq,
                published,
                confirmed,
            },
        ));
        let health = Arc::new(Health::new(dir.to_path_buf()));
        let (sender, receiver) = mpsc::sync_channel(QUEUE_DEPTH);
        let dedup = BucketKeys::new(buckets.clone(), retention.as_millis() as u64, index);
        let indexes = Arc::new(lookup::Indexes::new(
            events_dir.clone(),
            log.clone(),
            true,
            last_seq + 1,
        ));
        // The segment that was being written when the store last stopped has no index file.
        indexes.warm(2);
        let keys = lookup::Keys::Records {
            buckets: buckets.clone(),
            index: dedup.index(),
        };
        let lookup = Arc::new(Lookup::new(indexes.clone(), meta.clone(), keys));
        let checkpoint = Checkpoint::new(meta_db.clone(), meta.clone());
        checkpoint.start()?;
        let parts = Parts {
            buckets: buckets.clone(),
            outbox: outbox.clone(),
            health: health.clone(),
            ledger: ledger.clone(),
            log,
            checkpoint: checkpoint.clone(),
            indexes,
            meta: meta.clone(),
            events_dir,
            retention,
        };
        let writer = Writer::new(parts, last_seq + 1, dedup);
        std::thread::Builder::new()
            .name("hlgate-store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::io("cannot start the store's writer thread", e))?;
        let store = Store {
            sender,
            meta_db,
            meta,
            buckets,
            health,
            ledger,
            replays: Arc::new(Replays::new(outbox.clone())),
            outbox,
            checkpoint,
            lookup,
        };
        store.check_disk();
        Ok(store)
    }

    /// What the start, or a read since, found lost and not yet accepted (`hlgate store
    /// accept-loss`); empty when the store accounts for every event.
    pub fn damage(&self) -> Damage {
        self.ledger.damage(self.published_through())
    }

    /// A tree of opaque values by key, for the token vault (`tokens`) and the INSTALLs waiting
    /// for a company token (`installs`).
    pub fn keyed_tree(&self, name: &str) -> Result<KeyedTree, StoreError> {
        KeyedTree::open(&self.meta_db, name)
    }

    /// Delivery health's minute counts and last deliveries per tenant, in the main database.
    pub fn attempts(&self) -> Result<Attempts, StoreError> {
        Attempts::open(&self.meta_db)
    }

    /// Unpublished events.
    pub fn depth(&self) -> u64 {
        self.outbox.depth()
    }

    /// Every seq up to this one is confirmed.
    pub fn published_through(&self) -> u64 {
        self.outbox.published_through()
    }

    /// The outbox's depth and the age of its oldest entry in seconds (0 when it is empty).
    pub fn outbox_state(&self) -> (u64, f64) {
        self.outbox.state()
    }

    /// New deliveries are refused while the outbox holds `max` unpublished events or more
    /// (duplicates are still answered as such).
    pub fn limit_outbox(&self, max: u64) {
        self.outbox.limit(max);
    }

    /// True while new events can be stored (disk has room, last write worked), as of the last
    /// batch or disk check.
    pub fn writable(&self) -> bool {
        self.health.wrote_fine() && self.stuck_for() < COMMIT_WAIT
    }

    /// How long the commit being written has taken so far; zero between commits.
    pub fn stuck_for(&self) -> Duration {
        self.health.stuck_for()
    }

    /// A failed fsync stopped the event log: nothing more is stored until a restart, which
    /// recovers from what is on disk.
    pub fn stopped(&self) -> bool {
        self.health.is_stopped()
    }

    /// Re-reads the free space of the data dir, for readiness while no events come.
    pub fn check_disk(&self) {
        self.health.check_disk();
    }

    /// Resolves when entries were appended since the last call.
    pub async fn appended(&self) {
        self.outbox.appended().await
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
        let answered = self.accept_stamped(dedup_key, entries, false).await;
        answered.map(|a| a.outcome)
    }

    /// [`Store::accept`], with the instant the dedup lookup answered when `stamp`.
    pub async fn accept_stamped(
        &self,
        dedup_key: String,
        entries: Vec<Entry>,
        stamp: bool,
    ) -> Result<Answered, StoreError> {
        self.send(|reply| Command::Accept {
            dedup_key,
            events: Events::Entries(entries),
            stamp,
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
        let answered = self.accept_array_stamped(dedup_key, record, false).await;
        answered.map(|a| a.outcome)
    }

    /// [`Store::accept_array`], with the instant the dedup lookup answered when `stamp`.
    pub async fn accept_array_stamped(
        &self,
        dedup_key: String,
        record: ArrayRecord,
        stamp: bool,
    ) -> Result<Answered, StoreError> {
        // The elements' lookup rows are read here, off the writer's thread.
        let rows = lookup::array_rows(&record).unwrap_or_default();
        self.send(|reply| Command::Accept {
            dedup_key,
            events: Events::Array(record, rows),
            stamp,
            reply,
        })
        .await
    }

    /// Appends entries without a dedup key (replays); returns how many.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<usize, StoreError> {
        self.send(|reply| Command::Append { entries, reply }).await
    }

    /// Queues again, marked `replay`, the archived original events of `window` that `keep`
    /// keeps, in seq order; returns how many. The archive is read a chunk at a time, each
    /// queued only while the outbox holds fewer than 2 000 events (or half its limit), so that
    /// memory and the outbox stay bounded whatever the window; `stop` ends it early. One runs
    /// at a time: another one meanwhile is refused ([`ReplayError::Running`]).
    pub async fn replay(
        &self,
        window: Window,
        keep: impl Fn(&Entry) -> bool + Send + Sync + 'static,
        stop: &CancellationToken,
    ) -> Result<usize, ReplayError> {
        self.replay_in(window, Arc::new(keep), stop, replay::CHUNK)
            .await
    }

    /// [`Store::replay`] in chunks of `chunk` (tests read small ones).
    async fn replay_in(
        &self,
        window: Window,
        keep: Keep,
        stop: &CancellationToken,
        chunk: outbox::Chunk,
    ) -> Result<usize, ReplayError> {
        let append = |entries| self.append(entries);
        self.replays.run(window, keep, stop, chunk, append).await
    }

    /// Removes the buckets whose events are all past the retention and confirmed.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        self.send(|reply| Command::Sweep { reply }).await
    }

    /// Up to `limit` outbox entries (above the watermark) after `after`, in seq order (see
    /// [`Outbox::pending_after`](outbox::Outbox::pending_after)).
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.outbox.pending_after(after, limit)
    }

    /// Records `first..=through` as confirmed; returns whether the watermark moved (see
    /// [`Outbox::mark_confirmed`](outbox::Outbox::mark_confirmed)).
    pub fn mark_published(&self, first: u64, through: u64) -> Result<bool, StoreError> {
        self.outbox.mark_confirmed(&[(first, through)], &[])
    }

    /// Records the seqs of `ranges` as confirmed, in one flush; returns whether the watermark
    /// moved. `quarantined` are those of them the quarantine queue took, and why.
    pub fn mark_confirmed(
        &self,
        ranges: &[(u64, u64)],
        quarantined: &[(u64, &str)],
    ) -> Result<bool, StoreError> {
        self.outbox.mark_confirmed(ranges, quarantined)
    }

    /// Lookups over the stored events (`GET /v1/events`).
    pub fn lookup(&self) -> Arc<Lookup> {
        self.lookup.clone()
    }

    /// Queues the event at `seq` again, marked `replay` and to go to the main exchange
    /// whatever its schema outcome: the redrive of a quarantined event (if the broker refuses
    /// it again, the relay quarantines the copy). `false` when the store does not hold it.
    pub async fn replay_one(&self, seq: u64) -> Result<bool, StoreError> {
        let lookup = self.lookup.clone();
        let found = tokio::task::spawn_blocking(move || lookup.one(seq))
            .await
            .map_err(|e| StoreError::io("the lookup stopped", std::io::Error::other(e)))??;
        let Some(mut entry) = found.and_then(|f| f.entry) else {
            return Ok(false);
        };
        entry.replay = true;
        entry.redrive = true;
        self.append(vec![entry]).await?;
        Ok(true)
    }

    /// How many events [`Store::replay`] would queue for `window` and `keep`, queueing none.
    pub async fn count_replay(
        &self,
        window: Window,
        keep: impl Fn(&Entry) -> bool + Send + Sync + 'static,
    ) -> Result<usize, StoreError> {
        replay::count(self.outbox.clone(), window, Arc::new(keep)).await
    }

    /// The oldest unpublished entry's seq and acceptance time.
    pub fn oldest_pending(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.outbox.oldest_pending()
    }

    /// How many buckets hold the archive: with their database open, and closed.
    pub fn bucket_states(&self) -> (usize, usize) {
        self.buckets.states()
    }

    /// Closes the buckets nothing reads, but those holding the seqs from the watermark to
    /// `relay_ahead` past it; returns how many (see [`sweep::close_idle`]).
    pub fn close_idle(&self, relay_ahead: u64) -> usize {
        sweep::close_idle(&self.buckets, self.published_through() + 1, relay_ahead)
    }

    /// Flushes everything to disk, and records the last committed seq (after the events, so
    /// that it never claims more than they hold): a start compares it with the newest bucket.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let checkpoint = self.checkpoint.clone();
        tokio::task::spawn_blocking(move || checkpoint.flush())
            .await
            .map_err(|e| StoreError::io("the flush did not finish", std::io::Error::other(e)))??;
        let last = self.outbox.last_seq();
        self.meta.insert(STOPPED_AT, &last.to_be_bytes())?;
        self.meta_db.flush_async().await?;
        Ok(())
    }
}

/// The writer's lookup-index work for `entries` in commits of `commit` events (each event's
/// row made, a commit's rows appended), timed: what the index adds to an accepted event, for
/// `examples/lookup.rs`.
#[doc(hidden)]
pub fn index_work(entries: &[Entry], commit: usize) -> Duration {
    let rows = lookup::ActiveRows::new(1);
    let started = std::time::Instant::now();
    for batch in entries.chunks(commit.max(1)) {
        let framed: Vec<Vec<lookup::Row>> = batch
            .iter()
            .map(|e| vec![lookup::Row::of_entry(e)])
            .collect();
        let made: Vec<lookup::Row> = framed.iter().flatten().copied().collect();
        rows.push(&made);
    }
    started.elapsed()
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
