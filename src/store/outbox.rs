//! The outbox: every entry above the watermark, in seq order. The relay reads it
//! ([`Outbox::pending_after`]), from the last committed entries kept in memory while it keeps
//! up, else from the event log (and from the databases of buckets written before it); and records what the broker confirmed, moving the watermark
//! over the confirmed prefix ([`Outbox::mark_confirmed`]). Also the archive read that replays
//! take, a chunk at a time ([`Outbox::archived`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::entry::{now_ms, ArrayRecord, Entry};
use crate::event::for_each_element;

use super::bucket::Buckets;
use super::confirmed::Confirmed;
use super::damage::Ledger;
use super::error::StoreError;
use super::layout::{key, last_of, seq_of, Stored, CONFIRMED, EVENT, WATERMARK};
use super::log::EventLog;
use super::lookup::{quarantine, ConfirmTimes};

/// How many frames one read of the log takes at most.
const LOG_READ_FRAMES: usize = 512;

/// How many just-committed entries the store keeps in memory for the relay: while the relay
/// keeps up it never reads sled, whose reads keep what they page in (sled issue 1036).
pub(super) const RECENT: usize = 2048;

pub(super) struct Outbox {
    meta_db: sled::Db,
    meta: sled::Tree,
    buckets: Arc<Buckets>,
    log: Arc<EventLog>,
    /// Where a hole the reads find is reported.
    ledger: Arc<Ledger>,
    /// The highest seq written (0 when none).
    last_seq: AtomicU64,
    /// Every seq up to this one is confirmed by the broker.
    published: AtomicU64,
    /// What the broker confirmed above the watermark (behind an entry it refused).
    confirmed: Mutex<Confirmed>,
    /// How many seqs `confirmed` holds.
    confirmed_count: AtomicU64,
    /// When seqs were confirmed, for lookups (taken under `confirmed`'s lock).
    times: Mutex<ConfirmTimes>,
    /// The newest committed entries, consecutive seqs, exactly as they are on disk.
    pub(super) recent: Mutex<VecDeque<Entry>>,
    /// The outbox gained entries.
    appended: Notify,
    /// Above this many unpublished events, new deliveries are refused.
    limit: AtomicU64,
}

/// Where the outbox stands at start.
pub(super) struct Marks {
    /// The highest seq committed.
    pub last_seq: u64,
    /// The watermark.
    pub published: u64,
    /// What the broker confirmed above it.
    pub confirmed: Confirmed,
}

impl Outbox {
    pub fn new(
        meta_db: sled::Db,
        meta: sled::Tree,
        buckets: Arc<Buckets>,
        log: Arc<EventLog>,
        ledger: Arc<Ledger>,
        marks: Marks,
    ) -> Outbox {
        let Marks {
            last_seq,
            published,
            mut confirmed,
        } = marks;
        confirmed.advance(published);
        Outbox {
            meta_db,
            meta,
            buckets,
            log,
            ledger,
            last_seq: AtomicU64::new(last_seq),
            published: AtomicU64::new(published),
            confirmed_count: AtomicU64::new(confirmed.count()),
            confirmed: Mutex::new(confirmed),
            times: Mutex::new(ConfirmTimes::default()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            appended: Notify::new(),
            limit: AtomicU64::new(u64::MAX),
        }
    }

    /// The highest seq committed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Every seq up to this one is confirmed.
    pub fn published_through(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Unpublished events.
    pub fn depth(&self) -> u64 {
        self.unconfirmed(self.last_seq())
    }

    /// How many seqs up to `last` are not confirmed.
    fn unconfirmed(&self, last: u64) -> u64 {
        last.saturating_sub(self.published_through())
            .saturating_sub(self.confirmed_count.load(Ordering::Acquire))
    }

    /// New deliveries are refused while the outbox holds `max` unpublished events or more.
    pub fn limit(&self, max: u64) {
        self.limit.store(max, Ordering::Relaxed);
    }

    /// The unpublished events above which new deliveries are refused.
    pub fn max_events(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether a new delivery may follow `last`, the last seq taken so far (committed or in
    /// the batch being put together).
    pub fn has_room(&self, last: u64) -> Result<(), StoreError> {
        let depth = self.unconfirmed(last);
        if depth >= self.limit.load(Ordering::Relaxed) {
            return Err(StoreError::OutboxFull(depth));
        }
        Ok(())
    }

    /// Resolves when entries were appended since the last call.
    pub async fn appended(&self) {
        self.appended.notified().await
    }

    /// Seqs up to `last` are on disk: `written` are their entries, unless the commit held an
    /// array record, whose entries are made only as they are read (the relay then reads this
    /// commit from disk, since `recent` holds consecutive seqs).
    pub fn committed(&self, last: u64, written: Vec<Entry>, has_record: bool) {
        if has_record {
            self.recent.lock().expect("recent entries").clear();
        } else {
            self.remember(written);
        }
        self.last_seq.store(last, Ordering::Release);
        self.appended.notify_one();
    }

    /// Keeps the entries just written for the relay, dropping the oldest (and the confirmed).
    fn remember(&self, written: Vec<Entry>) {
        let published = self.published_through();
        let mut recent = self.recent.lock().expect("recent entries");
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

    /// Up to `limit` outbox entries (above the watermark, not confirmed) after `after`, in seq
    /// order: from memory when they were committed recently, else from disk. Seqs given up with
    /// `hlgate store accept-loss` are skipped; the read stops before any other seq that is
    /// missing (and reports it), so that the watermark never moves over a loss nobody accepted.
    pub fn pending_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let confirmed = self.confirmed.lock().expect("confirmed seqs");
        let from = after.max(self.published_through()) + 1;
        {
            let recent = self.recent.lock().expect("recent entries");
            if let Some(oldest) = recent.front().map(|e| e.seq).filter(|&s| s <= from) {
                let skip = (from - oldest) as usize;
                return Ok(recent
                    .iter()
                    .skip(skip)
                    .filter(|e| !confirmed.contains(e.seq))
                    .take(limit)
                    .cloned()
                    .collect());
            }
        }
        // Every seq up to this one is committed, so a read that ends below it met a loss.
        let committed = self.last_seq();
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut next = from;
        let mut stopped = false;
        self.each_from(from, limit, |entry| {
            if !self.continues(next, entry.seq) {
                stopped = true;
                return false;
            }
            next = entry.seq + 1;
            if !confirmed.contains(entry.seq) {
                out.push(entry);
                stopped = out.len() == limit;
            }
            !stopped
        })?;
        if !stopped {
            // Committed, yet in no bucket.
            self.continues(next, committed + 1);
        }
        Ok(out)
    }

    /// Hands `take` the entries from `from` on, in seq order, while it asks for more: from the
    /// database of each bucket written before the event log, then from the log. `frames` is how
    /// many frames a read of the log takes (entries the caller expects to need, say).
    fn each_from(
        &self,
        from: u64,
        frames: usize,
        mut take: impl FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        for bucket in self.buckets.from(from) {
            if bucket.is_logged() {
                return self.each_logged(from, frames, take);
            }
            let more = bucket.with_db(|db| {
                for entry in entries_from(db, from) {
                    if !take(entry?) {
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if !more {
                return Ok(());
            }
        }
        Ok(())
    }

    /// [`Outbox::each_from`] over the log. Seqs it cannot serve show as gaps in the seqs
    /// handed over, which the caller tells apart (`continues`).
    fn each_logged(
        &self,
        from: u64,
        frames: usize,
        mut take: impl FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        let mut next = from;
        loop {
            let read = self.log.read_from(next, frames.clamp(1, LOG_READ_FRAMES))?;
            let Some(last) = read.frames.last().map(|f| f.last_seq()) else {
                return Ok(());
            };
            let items = read.frames.iter().map(|f| Ok((f.first_seq, f.record())));
            for entry in Expand::new(items, from) {
                if !take(entry?) {
                    return Ok(());
                }
            }
            next = last + 1;
        }
    }

    /// Whether `seq` may follow `next` in the outbox: it is `next`, or every seq between them
    /// was given up. Otherwise the seqs between are reported lost.
    fn continues(&self, next: u64, seq: u64) -> bool {
        if seq <= next || self.ledger.is_accepted(next, seq - 1) {
            return true;
        }
        let bucket = self.buckets.from(next).first().map_or(0, |b| b.first_seq);
        self.ledger.found(bucket, next, seq - 1);
        false
    }

    /// Records the seqs of `ranges` as confirmed and moves the watermark over every confirmed
    /// seq that continues it, and over the accepted losses that follow, which nothing will
    /// confirm. The watermark and what stays confirmed above it are flushed together: a crash
    /// then publishes again only what was in flight. Returns whether the watermark moved.
    /// `quarantined` are the seqs among them that went to the quarantine queue, and why:
    /// lookups show them as such.
    pub fn mark_confirmed(
        &self,
        ranges: &[(u64, u64)],
        quarantined: &[(u64, &str)],
    ) -> Result<bool, StoreError> {
        let mut confirmed = self.confirmed.lock().expect("confirmed seqs");
        let current = self.published_through();
        let was_empty = confirmed.is_empty();
        let mut added = Vec::with_capacity(ranges.len());
        for &(first, last) in ranges {
            let first = first.max(current + 1);
            if first <= last {
                confirmed.insert(first, last);
                added.push((first, last));
            }
        }
        if added.is_empty() {
            return Ok(false);
        }
        let now = now_ms();
        let mut batch = sled::Batch::default();
        let mut times = self.times.lock().expect("confirm times");
        times.record(&mut batch, &added, now);
        for &(seq, why) in quarantined {
            quarantine(&mut batch, seq, now, why);
        }
        let mut through = current;
        loop {
            let next = self.ledger.past_accepted(confirmed.advance(through));
            if next == through {
                break;
            }
            through = next;
        }
        batch.insert(WATERMARK, &through.to_be_bytes());
        if !confirmed.is_empty() {
            batch.insert(CONFIRMED, confirmed.encode());
        } else if !was_empty {
            batch.remove(CONFIRMED);
        }
        self.meta.apply_batch(batch)?;
        // Flushed with every confirmed window: a crash then publishes again only what was in
        // flight, not every window confirmed since sled's last background flush.
        self.meta_db.flush()?;
        self.published.store(through, Ordering::Release);
        self.confirmed_count
            .store(confirmed.count(), Ordering::Release);
        Ok(through > current)
    }

    /// The oldest unpublished entry's seq and acceptance time.
    pub fn oldest_pending(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let seq = self.published_through() + 1;
        let mut first = None;
        self.each_from(seq, 1, |entry| {
            first = Some(entry);
            false
        })?;
        Ok(first.and_then(|e| (e.seq == seq).then_some((seq, e.accepted_ms))))
    }

    /// One chunk of the archived original events (not replays) of `window` up to seq
    /// `through`, kept by `keep`, from seq `from` on: it reads at most `chunk.entries` entries and keeps at most
    /// `chunk.bytes` of them (one at least), so that a read of any window holds a chunk in
    /// memory, and a bucket's lock no longer than a chunk's read (the sweeper may close what a
    /// replay has read).
    pub fn archived(
        &self,
        window: &Window,
        through: u64,
        from: u64,
        chunk: Chunk,
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<Archived, StoreError> {
        let mut out = Archived::default();
        let (mut read, mut bytes) = (0, 0);
        // Buckets wholly older than the window are passed over.
        let Some(start) = self
            .buckets
            .from(from)
            .iter()
            .find(|b| b.newest_ms() >= window.since_ms && !b.is_empty())
            .map(|b| b.first_seq.max(from))
        else {
            return Ok(out);
        };
        if start > through {
            return Ok(out);
        }
        self.each_from(start, chunk.entries, |entry| {
            if entry.seq > through || entry.accepted_ms > window.until_ms {
                return false;
            }
            if read >= chunk.entries || bytes >= chunk.bytes {
                out.next = Some(entry.seq);
                return false;
            }
            read += 1;
            if entry.accepted_ms >= window.since_ms && !entry.replay && keep(&entry) {
                bytes += entry.body.len() + entry.signature.len() + entry.dedup_key.len();
                out.entries.push(entry);
            }
            true
        })?;
        Ok(out)
    }

    /// The outbox's depth and the age of its oldest entry in seconds (0 when empty).
    pub fn state(&self) -> (u64, f64) {
        let oldest = self
            .oldest_pending()
            .ok()
            .flatten()
            .map(|(_, accepted)| now_ms().saturating_sub(accepted) as f64 / 1000.0)
            .unwrap_or(0.0);
        (self.depth(), oldest)
    }
}

/// The archive a replay asks for: events accepted in `[since_ms, until_ms]`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since_ms: u64,
    pub until_ms: u64,
}

/// How much one read of the archive takes at most.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    /// Entries read (kept or not).
    pub entries: usize,
    /// Bytes of the entries kept (bodies, signatures, dedup keys).
    pub bytes: usize,
}

/// One chunk of the archive, and the seq the next one starts at (`None`: the window is read).
#[derive(Debug, Default)]
pub struct Archived {
    pub entries: Vec<Entry>,
    pub next: Option<u64>,
}

/// A bucket's entries from `from` on, in seq order, one per seq: an array record is
/// expanded into its elements' entries as the iterator reaches them (its body parsed once),
/// from `from` on when it starts before.
pub(super) fn entries_from(
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
    let items = db
        .range(key(EVENT, start)..=key(EVENT, u64::MAX))
        .map(|item| item.map(|(k, v)| (seq_of(&k), v)).map_err(StoreError::from));
    Expand::new(items, from)
}

/// Entries one per seq from (seq, encoded entry or record) items in seq order.
pub(super) struct Expand<I> {
    items: I,
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

impl<I> Expand<I> {
    pub(super) fn new(items: I, from: u64) -> Expand<I> {
        Expand {
            items,
            from,
            open: None,
        }
    }
}

impl<I, B> Iterator for Expand<I>
where
    I: Iterator<Item = Result<(u64, B), StoreError>>,
    B: AsRef<[u8]>,
{
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(open) = &mut self.open {
                if let Some(entry) = open.next_entry() {
                    return Some(Ok(entry));
                }
                self.open = None;
            }
            let (seq, v) = match self.items.next()? {
                Ok(item) => item,
                Err(e) => return Some(Err(e)),
            };
            match Stored::decode(seq, v.as_ref()) {
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
