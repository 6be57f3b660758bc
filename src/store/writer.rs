//! The writer thread: every insert goes through it. It takes the requests that wait into one
//! batch (group commit), answers duplicates, refuses what the disk or the outbox has no room
//! for, assigns seqs in commit order, applies and flushes the batch, and only then answers. It
//! also starts new buckets and removes expired ones.

use super::*;

/// How many requests the writer takes into one batch at most.
const MAX_BATCH: usize = 1024;
/// A commit that carried at least this many requests means requests are arriving faster than
/// commits complete: the next batch then waits up to [`GATHER`] for more before it commits.
const BUSY_BATCH: usize = 4;
/// How long a batch gathers under load at most (PostgreSQL's `commit_delay` idea). At ~9 k
/// events/s this cuts the flushes from ~900/s to ~350/s, and the CPU and disk time they
/// took go to the relay and RabbitMQ; a lone request never waits.
const GATHER: Duration = Duration::from_millis(2);
/// A gathering batch sleeps in slices of this length and takes whatever came meanwhile; it
/// commits after a slice that brought nothing: when every client is already waiting in the
/// batch, nothing more will come. Longer than the gap between requests while both HTTP workers
/// are busy (~30-40 us), shorter than one flush. Sleeping rather than waiting on the channel
/// means a request that joins a gathering batch wakes no thread (BENCHMARKS.md, "Gathering
/// without wake-ups").
const GATHER_IDLE: Duration = Duration::from_micros(100);

/// One group commit being put together.
#[derive(Default)]
struct Commit {
    batch: sled::Batch,
    /// The seq of its first entry.
    start_seq: u64,
    written: Vec<Entry>,
    /// It holds an array record: its entries are not in `written`, and the relay reads this
    /// commit from disk.
    has_record: bool,
    /// Encoded bytes of what it writes.
    bytes: u64,
    /// Hashes of the dedup keys it records.
    key_hashes: Vec<u64>,
    waiting: Vec<Waiting>,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    next_seq: u64,
    /// Removed from the list, waiting for the last reader to let go before leaving the disk.
    graveyard: Vec<Arc<Bucket>>,
    /// The dedup key hashes of every bucket but the current one.
    index: KeyIndex,
    /// The dedup key hashes of the current bucket, for the index once it is full.
    current_keys: HashSet<u64>,
    /// Encoded bytes of the entries written to the current bucket since it was created.
    current_bytes: u64,
}

impl Writer {
    pub(super) fn new(shared: Arc<Shared>, next_seq: u64, index: KeyIndex) -> Self {
        Self {
            shared,
            next_seq,
            graveyard: Vec::new(),
            index,
            current_keys: HashSet::new(),
            current_bytes: 0,
        }
    }

    pub(super) fn run(mut self, receiver: Receiver<Command>) {
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
        let _ = self.shared.meta_db.flush();
        let _ = self.shared.current().with_db(|db| Ok(db.flush()?));
    }

    fn current(&self) -> Arc<Bucket> {
        self.shared.current()
    }

    /// Starts a new bucket for the seqs from `first_seq` on.
    fn rotate(&mut self, first_seq: u64, now: u64) -> Result<Arc<Bucket>, StoreError> {
        let bucket = Arc::new(Bucket::create(
            &self.shared.events_dir,
            first_seq,
            now,
            &self.shared.ledger,
        )?);
        let previous = {
            let mut all = self.shared.buckets.write().expect("bucket list");
            let previous = all.last().cloned();
            all.push(bucket.clone());
            previous
        };
        if let Some(previous) = previous {
            let keys = std::mem::take(&mut self.current_keys);
            self.index
                .add(previous.first_seq, keys.into_iter().collect());
        }
        self.current_bytes = 0;
        Ok(bucket)
    }

    /// The bucket a commit of the seqs from `first_seq` on writes to: a new one once the
    /// current one's span is over or it is full.
    fn bucket_for_commit(&mut self, first_seq: u64, now: u64) -> Arc<Bucket> {
        let current = self.current();
        let span_over = now.saturating_sub(current.opened_ms()) >= self.shared.span_ms;
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

    fn entry_into(&mut self, commit: &mut Commit, mut entry: Entry, now: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        entry.seq = seq;
        entry.accepted_ms = now;
        let encoded = entry.encode();
        commit.bytes += encoded.len() as u64;
        commit.batch.insert(&key(EVENT, seq), encoded);
        commit.written.push(entry);
        seq
    }

    /// Writes an array record, taking the seqs of all its elements; returns the first.
    fn record_into(&mut self, commit: &mut Commit, mut record: ArrayRecord, now: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += record.len();
        record.first_seq = seq;
        record.accepted_ms = now;
        let encoded = record.encode();
        commit.bytes += encoded.len() as u64;
        commit.batch.insert(&key(EVENT, seq), encoded);
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
        let mut seen = HashSet::new();
        let mut sweeps = Vec::new();
        let stores = commands.iter().any(|c| !matches!(c, Command::Sweep { .. }));
        let disk = stores.then(|| self.shared.check_disk()).flatten();

        for command in commands {
            match command {
                Command::Accept {
                    dedup_key,
                    events,
                    reply,
                } => {
                    let hash = key_hash(dedup_key.as_bytes());
                    // A key taken earlier in this batch needs no lookup.
                    let duplicate = seen.contains(&dedup_key)
                        || match self.is_recent_duplicate(&dedup_key, hash, now) {
                            Ok(d) => d,
                            Err(e) => {
                                let _ = reply.send(Err(e));
                                continue;
                            }
                        };
                    if duplicate {
                        // Its first copy is on disk already, or in this very batch.
                        commit
                            .waiting
                            .push(Waiting::Accept(reply, AcceptOutcome::Duplicate));
                        continue;
                    }
                    // Only after dedup: a redelivery of what is stored is a duplicate even
                    // while new deliveries are refused.
                    if let Err(e) = self.room(disk, &commit, disk_bytes(&events)) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let count = events.count();
                    let mut first_seq = 0;
                    match events {
                        Events::Entries(entries) => {
                            for (i, entry) in entries.into_iter().enumerate() {
                                let seq = self.entry_into(&mut commit, entry, now);
                                if i == 0 {
                                    first_seq = seq;
                                }
                            }
                        }
                        Events::Array(record) if !record.is_empty() => {
                            first_seq = self.record_into(&mut commit, record, now);
                        }
                        Events::Array(_) => {}
                    }
                    commit
                        .batch
                        .insert(dedup_db_key(&dedup_key), &now.to_be_bytes());
                    commit.key_hashes.push(hash);
                    seen.insert(dedup_key);
                    commit.waiting.push(Waiting::Accept(
                        reply,
                        AcceptOutcome::Accepted { first_seq, count },
                    ));
                }
                Command::Append { entries, reply } => {
                    if let Err(e) = self.room(disk, &commit, entries_bytes(&entries)) {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    let count = entries.len();
                    for mut entry in entries {
                        entry.replay = true;
                        self.entry_into(&mut commit, entry, now);
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

    /// Whether what takes `bytes` on disk may join `commit`: the disk has room for the batch with it, and the
    /// outbox (with what this batch added so far) is under its limit.
    fn room(&self, disk: Option<Disk>, commit: &Commit, bytes: u64) -> Result<(), StoreError> {
        if let Some(disk) = disk {
            disk.takes(commit.bytes + bytes)?;
        }
        let published = self.shared.published.load(Ordering::Acquire);
        let depth = (self.next_seq - 1).saturating_sub(published);
        if depth >= self.shared.outbox_limit.load(Ordering::Relaxed) {
            return Err(StoreError::OutboxFull(depth));
        }
        Ok(())
    }

    /// Applies and flushes one commit's batch, then answers its requests.
    fn write(&mut self, commit: Commit, now: u64) {
        let Commit {
            batch,
            start_seq,
            written,
            has_record,
            bytes,
            key_hashes,
            waiting,
        } = commit;
        let wrote = self.next_seq > start_seq;
        let bucket = if wrote {
            self.bucket_for_commit(start_seq, now)
        } else {
            self.current()
        };
        let flush = self.shared.flush_on_commit.load(Ordering::Relaxed);
        self.shared
            .writing_since
            .store(now.max(1), Ordering::Relaxed);
        let result = bucket.with_db(|db| {
            db.apply_batch(batch)?;
            if flush {
                db.flush()?;
            }
            Ok(())
        });
        self.shared.writing_since.store(0, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
            self.shared.write_failed.store(true, Ordering::Relaxed);
            // Nothing of this batch is on record: hand its seqs out again.
            self.next_seq = start_seq;
            // sled refuses every later operation of a database that saw an I/O error; the
            // next write opens it afresh, so a disk that has room again takes events again.
            bucket.close();
        } else {
            self.shared.write_failed.store(false, Ordering::Relaxed);
            self.current_keys.extend(key_hashes);
            self.current_bytes += bytes;
            if wrote {
                bucket.written(self.next_seq - 1, now);
                if has_record {
                    // The relay reads this commit from disk: `recent` holds consecutive seqs,
                    // and a record's entries are made only as they are read.
                    self.shared.recent.lock().expect("recent entries").clear();
                } else {
                    self.remember(written);
                }
                self.shared
                    .last_seq
                    .store(self.next_seq - 1, Ordering::Release);
                self.shared.appended.notify_one();
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

    /// Keeps the entries just written for the relay, dropping the oldest (and the confirmed).
    fn remember(&self, written: Vec<Entry>) {
        let published = self.shared.published.load(Ordering::Acquire);
        let mut recent = self.shared.recent.lock().expect("recent entries");
        // A large array delivery keeps only its newest entries, and never grows the buffer
        // past its size (a deque does not give memory back); the seqs in it stay consecutive.
        let skip = written.len().saturating_sub(RECENT);
        if skip > 0 {
            recent.clear();
        }
        recent.extend(written.into_iter().skip(skip));
        while recent
            .front()
            .is_some_and(|e| recent.len() > RECENT || e.seq <= published)
        {
            recent.pop_front();
        }
    }

    /// The newest record of a key decides: accepted within the retention means duplicate.
    /// Only the buckets that took a key with this `hash` are looked in.
    fn is_recent_duplicate(
        &self,
        dedup_key: &str,
        hash: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let k = dedup_db_key(dedup_key);
        let buckets = self.shared.buckets.read().expect("bucket list");
        let current = buckets.last().expect("the store always has a bucket");
        let current = self
            .current_keys
            .contains(&hash)
            .then_some(current.first_seq);
        for first_seq in current.into_iter().chain(self.index.candidates(hash)) {
            let Ok(at) = buckets.binary_search_by_key(&first_seq, |b| b.first_seq) else {
                continue;
            };
            if let Some(v) = buckets[at].with_db(|db| Ok(db.get(&k)?))? {
                let accepted = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                return Ok(accepted.is_none_or(|accepted| {
                    now.saturating_sub(accepted) < self.shared.retention_ms
                }));
            }
        }
        Ok(false)
    }

    /// Removes, oldest first, the buckets whose newest event is past the retention and whose
    /// events are all confirmed. An unpublished event is never removed, however old: neither
    /// is anything after it.
    fn sweep(&mut self, now: u64) -> Result<SweepReport, StoreError> {
        let cutoff = now.saturating_sub(self.shared.retention_ms);
        let published = self.shared.published.load(Ordering::Acquire);
        let mut report = SweepReport::default();
        loop {
            let oldest = self.shared.buckets()[0].clone();
            let is_current = Arc::ptr_eq(&oldest, &self.current());
            if oldest.is_empty() {
                if is_current {
                    break;
                }
            } else if oldest.newest_ms() >= cutoff || oldest.last_seq() > published {
                break;
            } else if is_current {
                // Idle since it expired: the next events go to a new bucket.
                self.rotate(self.next_seq, now)?;
            }
            self.shared.buckets.write().expect("bucket list").remove(0);
            report.buckets += 1;
            report.events += oldest.len();
            self.graveyard.push(oldest);
        }
        if report.buckets > 0 {
            let oldest_left = self.shared.buckets()[0].first_seq;
            self.index.forget_before(oldest_left);
        }
        self.bury();
        Ok(report)
    }

    /// Deletes the removed buckets nothing reads any more.
    fn bury(&mut self) {
        let mut keep = Vec::new();
        for bucket in self.graveyard.drain(..) {
            match Arc::try_unwrap(bucket) {
                Ok(bucket) => {
                    if let Err(e) = bucket.remove() {
                        tracing::warn!(error = %e, "could not delete an expired bucket");
                    }
                }
                Err(still_read) => keep.push(still_read),
            }
        }
        self.graveyard = keep;
    }
}
