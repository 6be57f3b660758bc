//! The writer thread: every insert goes through it. It takes the requests that wait into one
//! batch (group commit), answers duplicates, refuses what the disk or the outbox has no room
//! for, assigns seqs in commit order, appends the batch's frames to the event log (one write,
//! one fdatasync), records their dedup keys in the bucket's database without a flush (the
//! checkpoint flushes them), and only then answers. It also starts new buckets (rotation,
//! which seals the log's segment) and takes expired ones off the list (`sweep`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::entry::{now_ms, ArrayRecord, Entry};

use super::bucket::{Bucket, Buckets};
use super::checkpoint::Checkpoint;
use super::damage::Ledger;
use super::dedup::{BucketKeys, DedupKeys};
use super::disk::{Disk, Health};
use super::error::StoreError;
use super::keys::DedupRecord;
use super::layout::Encoded;
use super::log::{EventLog, Frame, LogError};
use super::lookup::{self, ActiveRows, Indexes, Row};
use super::outbox::Outbox;
use super::sweep::{fate_of_oldest, Fate, Graveyard, SweepReport};

/// How many requests the writer takes into one batch at most.
const MAX_BATCH: usize = 1024;
/// A commit that carried at least this many requests means requests are arriving faster than
/// commits complete: the next batch then waits up to [`GATHER`] for more before it commits.
const BUSY_BATCH: usize = 4;
/// How long a batch gathers under load at most (PostgreSQL's `commit_delay` idea): fewer
/// flushes, and the CPU and disk time they took go to the relay and RabbitMQ; a lone request
/// never waits.
const GATHER: Duration = Duration::from_millis(2);
/// A gathering batch sleeps in slices of this length and takes whatever came meanwhile; it
/// commits after a slice that brought nothing: when every client is already waiting in the
/// batch, nothing more will come. Longer than the gap between requests while both HTTP workers
/// are busy, shorter than one flush. Sleeping rather than waiting on the channel means a
/// request that joins a gathering batch wakes no thread (BENCHMARKS.md, "Gathering and the
/// relay window").
const GATHER_IDLE: Duration = Duration::from_micros(100);
/// How many buckets the retention window is cut into: expired events stay on disk at most
/// this fraction of the retention longer than it asks.
const BUCKETS_PER_RETENTION: u32 = 4;
/// A bucket takes new events until it holds this many encoded bytes (or its span is over):
/// its segment, and the dedup keys sled keeps in memory of an open bucket, grow with it.
pub(super) const BUCKET_BYTES: u64 = 32 * 1024 * 1024;
/// What an entry costs on disk beyond its body, at most (its header fields are bounded by the
/// request's size, not by this; it only needs to keep the estimate on the safe side for
/// typical events).
const ENTRY_OVERHEAD: u64 = 512;

/// What a delivery stores: entries of their own, or one record for a whole array.
pub(super) enum Events {
    Entries(Vec<Entry>),
    /// With its elements' lookup rows, made by the caller (their times are set here).
    Array(ArrayRecord, Vec<Row>),
}

impl Events {
    fn count(&self) -> usize {
        match self {
            Events::Entries(entries) => entries.len(),
            Events::Array(record, _) => record.schema.len(),
        }
    }

    /// What it takes on disk, at most (for the disk check).
    fn disk_bytes(&self) -> u64 {
        match self {
            Events::Entries(entries) => entries_bytes(entries),
            Events::Array(r, _) => {
                let fields = r.dedup_key.len() + r.signature.len() + r.schema.len();
                (r.body.len() + fields) as u64 + ENTRY_OVERHEAD
            }
        }
    }
}

fn entries_bytes(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            let fields = e.dedup_key.len() + e.event_type.len() + e.tenant.len();
            (e.body.len() + fields + e.signature.len()) as u64 + ENTRY_OVERHEAD
        })
        .sum()
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Stored and flushed; the seqs of its entries.
    Accepted { first_seq: u64, count: usize },
    /// Its dedup key was accepted within the retention window.
    Duplicate,
}

/// A delivery's outcome, and when its dedup lookup answered when that was asked (a traced
/// webhook's `dedup` span ends there and its `commit` span starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub outcome: AcceptOutcome,
    pub deduped: Option<Instant>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the handle asks of the writer.
pub(super) enum Command {
    Accept {
        dedup_key: String,
        events: Events,
        stamp: bool,
        reply: Reply<Answered>,
    },
    Append {
        entries: Vec<Entry>,
        reply: Reply<usize>,
    },
    Sweep {
        reply: Reply<SweepReport>,
    },
}

/// A request of the current batch waiting for the flush.
enum Waiting {
    Accept(Reply<Answered>, Answered),
    Append(Reply<usize>, usize),
}

/// What the writer shares with the store's handle, and where it makes buckets.
pub(super) struct Parts {
    pub buckets: Arc<Buckets>,
    pub outbox: Arc<Outbox>,
    pub health: Arc<Health>,
    pub ledger: Arc<Ledger>,
    pub log: Arc<EventLog>,
    pub checkpoint: Arc<Checkpoint>,
    pub indexes: Arc<Indexes>,
    /// The main database's `meta` tree, where the lookup records of swept seqs are removed.
    pub meta: sled::Tree,
    pub events_dir: PathBuf,
    pub retention: Duration,
}

/// One delivery's (or replay's) frame of a commit.
struct Framed {
    first_seq: u64,
    seq_count: u32,
    /// Empty for all but the last frame of a delivery: a torn commit that kept only some of a
    /// delivery's frames never recorded its key, so its redelivery is taken again.
    dedup_key: Vec<u8>,
    record: Vec<u8>,
    /// Its lookup rows, one per seq.
    rows: Vec<Row>,
}

/// One group commit being put together.
#[derive(Default)]
struct Commit {
    frames: Vec<Framed>,
    /// The seq of its first entry.
    start_seq: u64,
    written: Vec<Entry>,
    /// It holds an array record: its entries are not in `written`, and the relay reads this
    /// commit from disk.
    has_record: bool,
    /// Encoded bytes of what it writes.
    bytes: u64,
    /// The dedup keys it records, with the first seq and seq count of their deliveries.
    keys: HashMap<String, (u64, u32)>,
    waiting: Vec<Waiting>,
}

pub(super) struct Writer {
    parts: Parts,
    /// A bucket takes events for this long, then the writer starts the next.
    span_ms: u64,
    retention_ms: u64,
    next_seq: u64,
    dedup: BucketKeys,
    /// Removed from the list, waiting for the last reader to let go before leaving the disk.
    graveyard: Graveyard,
    /// Encoded bytes of the entries written to the current bucket since it was created.
    current_bytes: u64,
    /// The lookup rows of the segment being written.
    rows: Arc<ActiveRows>,
}

impl Writer {
    pub fn new(parts: Parts, next_seq: u64, dedup: BucketKeys) -> Self {
        Self {
            span_ms: (parts.retention / BUCKETS_PER_RETENTION).as_millis().max(1) as u64,
            retention_ms: parts.retention.as_millis() as u64,
            rows: parts.indexes.active(),
            parts,
            next_seq,
            dedup,
            graveyard: Graveyard::default(),
            current_bytes: 0,
        }
    }

    pub fn run(mut self, receiver: Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut busy = false;
        while let Ok(first) = receiver.recv() {
            let gather_until = busy.then(|| Instant::now() + GATHER);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let Some(until) = gather_until else { break };
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::sleep(left.min(GATHER_IDLE));
                        match receiver.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                }
            }
            busy = batch.len() >= BUSY_BATCH;
            self.commit(std::mem::take(&mut batch));
        }
        if let Err(e) = self.parts.checkpoint.flush() {
            tracing::warn!(error = %e, "could not record the event log's checkpoint at the stop");
        }
    }

    fn current(&self) -> Arc<Bucket> {
        self.parts.buckets.current()
    }

    /// Starts a new bucket for the seqs from `first_seq` on; the log's active segment ends,
    /// so that the next frame starts the new bucket's segment.
    fn rotate(&mut self, first_seq: u64, now: u64) -> Result<Arc<Bucket>, StoreError> {
        let parts = &self.parts;
        let bucket = Bucket::create(&parts.events_dir, first_seq, now, &parts.ledger)?;
        if let Err(e) = parts.log.seal(now) {
            // The log goes on in the current segment: the new bucket must not take events.
            if let Err(removal) = bucket.remove() {
                tracing::warn!(error = %removal, "could not remove an unused bucket");
            }
            return Err(e.into());
        }
        self.rows = parts.indexes.sealed(first_seq);
        let bucket = Arc::new(bucket);
        let previous = parts.buckets.push(bucket.clone());
        self.dedup.rotated(previous.first_seq);
        self.current_bytes = 0;
        Ok(bucket)
    }

    /// The bucket a commit of the seqs from `first_seq` on writes to: a new one once the
    /// current one's span is over or it is full.
    fn bucket_for_commit(&mut self, first_seq: u64, now: u64) -> Arc<Bucket> {
        let current = self.current();
        let span_over = now.saturating_sub(current.opened_ms()) >= self.span_ms;
        if current.is_empty() || !(span_over || self.current_bytes >= BUCKET_BYTES) {
            return current;
        }
        match self.rotate(first_seq, now) {
            Ok(next) => next,
            Err(e) => {
                // Events are as safe in the old bucket; it only leaves the disk later.
                tracing::warn!(error = %e, "could not start a new bucket");
                current
            }
        }
    }

    fn entry_into(
        &mut self,
        commit: &mut Commit,
        mut entry: Entry,
        now: u64,
        dedup_key: &[u8],
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        entry.seq = seq;
        entry.accepted_ms = now;
        let encoded = entry.encode();
        commit.bytes += encoded.len() as u64;
        commit.frames.push(Framed {
            first_seq: seq,
            seq_count: 1,
            dedup_key: dedup_key.to_vec(),
            record: encoded,
            rows: vec![Row::of_entry(&entry)],
        });
        commit.written.push(entry);
        seq
    }

    /// Writes an array record, taking the seqs of all its elements; returns the first.
    fn record_into(
        &mut self,
        commit: &mut Commit,
        mut record: ArrayRecord,
        mut rows: Vec<Row>,
        now: u64,
        dedup_key: &[u8],
    ) -> u64 {
        let seq = self.next_seq;
        let count = record.len();
        self.next_seq += count;
        record.first_seq = seq;
        record.accepted_ms = now;
        let encoded = record.encode();
        commit.bytes += encoded.len() as u64;
        rows.resize(count as usize, Row::NONE);
        for row in rows.iter_mut().filter(|r| !r.is_none()) {
            row.ms = now;
        }
        commit.frames.push(Framed {
            first_seq: seq,
            seq_count: u32::try_from(count).unwrap_or(u32::MAX),
            dedup_key: dedup_key.to_vec(),
            record: encoded,
            rows,
        });
        commit.has_record = true;
        seq
    }

    /// One group commit: every accept and append in `commands`, one batch, one flush.
    fn commit(&mut self, commands: Vec<Command>) {
        let now = now_ms();
        let mut commit = Commit {
            start_seq: self.next_seq,
            ..Commit::default()
        };
        let mut sweeps = Vec::new();
        let stores = commands.iter().any(|c| !matches!(c, Command::Sweep { .. }));
        let disk = stores.then(|| self.parts.health.check_disk()).flatten();

        for command in commands {
            match command {
                Command::Accept {
                    dedup_key,
                    events,
                    stamp,
                    reply,
                } => {
                    // A key taken earlier in this batch needs no lookup.
                    let duplicate = commit.keys.contains_key(&dedup_key)
                        || match self.dedup.lookup(&dedup_key, now) {
                            Ok(d) => d,
                            Err(e) => {
                                let _ = reply.send(Err(e));
                                continue;
                            }
                        };
                    let deduped = stamp.then(Instant::now);
                    if duplicate {
                        // Its first copy is on disk already, or in this very batch.
                        let outcome = AcceptOutcome::Duplicate;
                        let answer = Answered { outcome, deduped };
                        commit.waiting.push(Waiting::Accept(reply, answer));
                        continue;
                    }
                    // Only after dedup: a redelivery of what is stored is a duplicate even
                    // while new deliveries are refused.
                    if let Err(e) = self.room(disk, &commit, events.disk_bytes()) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let count = events.count();
                    let mut first_seq = 0;
                    let key = dedup_key.as_bytes();
                    match events {
                        Events::Entries(entries) => {
                            let last = entries.len().saturating_sub(1);
                            for (i, entry) in entries.into_iter().enumerate() {
                                let k = if i == last { key } else { &[] };
                                let seq = self.entry_into(&mut commit, entry, now, k);
                                if i == 0 {
                                    first_seq = seq;
                                }
                            }
                        }
                        Events::Array(record, rows) if !record.is_empty() => {
                            first_seq = self.record_into(&mut commit, record, rows, now, key);
                        }
                        Events::Array(..) => {}
                    }
                    let seqs = (first_seq, u32::try_from(count).unwrap_or(u32::MAX));
                    commit.keys.insert(dedup_key, seqs);
                    let outcome = AcceptOutcome::Accepted { first_seq, count };
                    let answer = Answered { outcome, deduped };
                    commit.waiting.push(Waiting::Accept(reply, answer));
                }
                Command::Append { entries, reply } => {
                    if let Err(e) = self.room(disk, &commit, entries_bytes(&entries)) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let count = entries.len();
                    for mut entry in entries {
                        entry.replay = true;
                        self.entry_into(&mut commit, entry, now, &[]);
                    }
                    commit.waiting.push(Waiting::Append(reply, count));
                }
                Command::Sweep { reply } => sweeps.push(reply),
            }
        }

        if !commit.waiting.is_empty() {
            self.write(commit, now);
        }
        // After the write, so that a bucket started by the sweep begins at the next free seq.
        for reply in sweeps {
            let _ = reply.send(self.sweep(now));
        }
    }

    /// Whether what takes `bytes` on disk may join `commit`: the disk has room for the batch
    /// with it, and the outbox (with what this batch added so far) is under its limit.
    fn room(&self, disk: Option<Disk>, commit: &Commit, bytes: u64) -> Result<(), StoreError> {
        if let Some(disk) = disk {
            disk.takes(commit.bytes + bytes)?;
        }
        self.parts.outbox.has_room(self.next_seq - 1)
    }

    /// Appends one commit's frames to the log (one write, one fdatasync), records its dedup
    /// keys, then answers its requests.
    fn write(&mut self, commit: Commit, now: u64) {
        let Commit {
            frames,
            start_seq,
            written,
            has_record,
            bytes,
            keys,
            waiting,
        } = commit;
        let wrote = !frames.is_empty();
        let bucket = if wrote {
            self.bucket_for_commit(start_seq, now)
        } else {
            self.current()
        };
        let health = &self.parts.health;
        health.writing_since.store(now.max(1), Ordering::Relaxed);
        let result = self.append(&frames, &keys, &bucket, now);
        health.writing_since.store(0, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
            health.write_failed.store(true, Ordering::Relaxed);
            // Nothing of this batch is on record: hand its seqs out again.
            self.next_seq = start_seq;
        } else {
            health.write_failed.store(false, Ordering::Relaxed);
            for k in keys.keys() {
                self.dedup.record(k, now);
            }
            if wrote {
                let rows: Vec<Row> = frames.iter().flat_map(|f| f.rows.iter().copied()).collect();
                self.rows.push(&rows);
            }
            self.current_bytes += bytes;
            if wrote {
                bucket.written(self.next_seq - 1, now);
                self.parts
                    .outbox
                    .committed(self.next_seq - 1, written, has_record);
            }
        }
        for w in waiting {
            let failed = |e: &StoreError| StoreError::Write(e.to_string());
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

    /// The log append of a commit, then its dedup keys into `bucket`'s database. Once the
    /// append returns, the events are on disk: a failure to record the keys is logged, and
    /// the next start records them from the log (the checkpoint does not pass them). A
    /// delivery of no events (an empty array) has only its key, kept from the next checkpoint
    /// on: a redelivery taken again before that publishes nothing.
    fn append(
        &self,
        frames: &[Framed],
        keys: &HashMap<String, (u64, u32)>,
        bucket: &Arc<Bucket>,
        now: u64,
    ) -> Result<(), StoreError> {
        let keys: Vec<(Vec<u8>, DedupRecord)> = keys
            .iter()
            .map(|(k, &seqs)| {
                let record = DedupRecord {
                    accepted_ms: now,
                    seqs: Some(seqs),
                };
                (k.as_bytes().to_vec(), record)
            })
            .collect();
        if frames.is_empty() {
            if let Err(e) = bucket.record_keys(&keys) {
                tracing::error!(error = %e, "could not record dedup keys");
            }
            self.parts.checkpoint.touched(bucket);
            return Ok(());
        }
        let log_frames: Vec<Frame<'_>> = frames
            .iter()
            .map(|f| Frame {
                first_seq: f.first_seq,
                seq_count: f.seq_count,
                accepted_ms: now,
                dedup_key: &f.dedup_key,
                record: &f.record,
            })
            .collect();
        let applied = match self.parts.log.append(&log_frames) {
            Ok(applied) => applied,
            Err(e) => {
                if matches!(e, LogError::Broken { .. } | LogError::Stopped) {
                    self.parts.health.stopped.store(true, Ordering::Relaxed);
                }
                return Err(e.into());
            }
        };
        match bucket.record_keys(&keys) {
            Ok(()) => self.parts.checkpoint.advance(applied, bucket),
            Err(e) => tracing::error!(
                error = %e,
                "could not record dedup keys; the events are stored, and the next start records the keys"
            ),
        }
        Ok(())
    }

    /// Removes, oldest first, the buckets whose newest event is past the retention and whose
    /// events are all confirmed. An unpublished event is never removed, however old: neither
    /// is anything after it.
    fn sweep(&mut self, now: u64) -> Result<SweepReport, StoreError> {
        let cutoff = now.saturating_sub(self.retention_ms);
        let published = self.parts.outbox.published_through();
        let mut report = SweepReport::default();
        loop {
            match fate_of_oldest(&self.parts.buckets, cutoff, published) {
                Fate::Stays => break,
                Fate::Goes => {}
                // Idle since it expired: the next events go to a new bucket.
                Fate::GoesAfterRotation => {
                    self.rotate(self.next_seq, now)?;
                }
            }
            let oldest = self.parts.buckets.remove_oldest();
            report.buckets += 1;
            report.events += oldest.len();
            self.graveyard.add(oldest);
        }
        if report.buckets > 0 {
            let oldest_left = self.parts.buckets.oldest().first_seq;
            self.dedup.forget_before(oldest_left);
            // Their segments leave the disk with their buckets' directories.
            self.parts.log.forget_before(oldest_left);
            self.parts.indexes.forget_before(oldest_left);
            if let Err(e) = lookup::forget_before(&self.parts.meta, oldest_left) {
                tracing::warn!(error = %e, "could not remove the lookup records of swept events");
            }
        }
        self.graveyard.bury();
        Ok(report)
    }
}
