//! A lookup's walk: the candidate seqs in the order asked for (from a key's deliveries, the
//! quarantine records, the accepted losses, or the segments' rows), read a batch at a time,
//! each event checked against the whole query, until the page is full, the candidates run
//! out, or a body search has used its time.

use std::collections::HashMap;
use std::time::Instant;

use super::engine::Lookup;
use super::index::SegmentRows;
use super::rows::tag;
use super::states::{quarantined, Marks, State};
use super::{Found, Page, Query, StateFilter};
use crate::entry::Entry;
use crate::store::error::StoreError;
use crate::store::outbox::Expand;

/// Candidates read at once: a page's worth is read in a few batches, and a body search looks
/// at its clock between them.
const BATCH: usize = 64;

/// A seq that may match, with what is known of it without reading it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    seq: u64,
    /// Its acceptance time, when a row or a dedup record gives it.
    ms: u64,
}

impl Lookup {
    /// The page of events `query` asks for.
    pub fn page(&self, query: &Query) -> Result<Page, StoreError> {
        let mut walk = Walk {
            lookup: self,
            query,
            marks: Marks::read(&self.meta)?,
            found: Vec::new(),
            examined: None,
            deadline: query
                .q
                .as_ref()
                .and(query.budget)
                .map(|b| Instant::now() + b),
            stop: None,
        };
        let (lo, hi) = walk.bounds();
        if let Some(key) = query.key.as_ref().or(query.webhook_id.as_ref()) {
            let mut seqs: Vec<Candidate> = Vec::new();
            for d in self.deliveries(key)? {
                let seqs_of = d.first..d.first + u64::from(d.count);
                seqs.extend(seqs_of.map(|seq| Candidate {
                    seq,
                    ms: d.accepted_ms,
                }));
            }
            seqs.retain(|c| (lo..=hi).contains(&c.seq));
            walk.feed_ordered(seqs)?;
        } else if query.state == Some(StateFilter::Quarantined) {
            let seqs = quarantined(&self.meta, lo, hi)?;
            walk.feed_ordered(
                seqs.into_iter()
                    .map(|seq| Candidate { seq, ms: 0 })
                    .collect(),
            )?;
        } else if query.state == Some(StateFilter::Lost) {
            walk.lost(lo, hi)?;
        } else {
            walk.segments(lo, hi)?;
        }
        Ok(walk.page())
    }

    /// The event at `seq`, if the store holds it (or lost it, with the loss accepted).
    pub fn one(&self, seq: u64) -> Result<Option<Found>, StoreError> {
        let marks = Marks::read(&self.meta)?;
        let mut entries = self.entries(&[seq])?;
        if let Some(entry) = entries.remove(&seq) {
            return Ok(Some(found(&self.meta, &marks, entry)?));
        }
        if !marks.is_lost(seq) {
            return Ok(None);
        }
        Ok(Some(Found {
            seq,
            accepted_ms: self.row_ms(seq)?.unwrap_or(0),
            dedup_key: None,
            entry: None,
            state: State::Lost,
        }))
    }

    /// The acceptance time the index keeps for `seq`.
    fn row_ms(&self, seq: u64) -> Result<Option<u64>, StoreError> {
        let segments = self.indexes.log().segments();
        let Some(s) = segments.iter().rev().find(|s| s.first_seq <= seq) else {
            return Ok(None);
        };
        let rows = self.indexes.rows(s, None, None)?;
        let i = (seq - s.first_seq) as usize;
        Ok(rows
            .filter(|r| i < r.len())
            .map(|r| r.get(i))
            .filter(|r| !r.is_none())
            .map(|r| r.ms))
    }

    /// The stored entries of `seqs` that the log can serve, by seq.
    fn entries(&self, seqs: &[u64]) -> Result<HashMap<u64, Entry>, StoreError> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = HashMap::with_capacity(sorted.len());
        let mut i = 0;
        while i < sorted.len() {
            let first = sorted[i];
            let mut last = first;
            while sorted.get(i + 1) == Some(&(last + 1)) {
                i += 1;
                last += 1;
            }
            i += 1;
            let read = self
                .indexes
                .log()
                .read_from(first, (last - first + 1) as usize)?;
            let items = read.frames.iter().map(|f| Ok((f.first_seq, f.record())));
            // A frame that does not decode is left out, as a lost one is.
            for entry in Expand::new(items, first).flatten() {
                if entry.seq > last {
                    break;
                }
                out.insert(entry.seq, entry);
            }
        }
        Ok(out)
    }
}

/// A found event with its state.
fn found(meta: &sled::Tree, marks: &Marks, entry: Entry) -> Result<Found, StoreError> {
    Ok(Found {
        seq: entry.seq,
        accepted_ms: entry.accepted_ms,
        dedup_key: Some(entry.dedup_key.clone()),
        state: marks.state(meta, entry.seq)?,
        entry: Some(entry),
    })
}

struct Walk<'a> {
    lookup: &'a Lookup,
    query: &'a Query,
    marks: Marks,
    found: Vec<Found>,
    /// The last candidate looked at.
    examined: Option<u64>,
    deadline: Option<Instant>,
    /// Why the walk ended before its candidates did: the page is full, or its time is up.
    stop: Option<Stop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Full,
    OutOfTime,
}

impl Walk<'_> {
    /// The seqs the query may reach, both included.
    fn bounds(&self) -> (u64, u64) {
        let mut lo = 1;
        let mut hi = u64::MAX;
        if self.query.state == Some(StateFilter::Pending) {
            lo = self.marks.watermark + 1;
        }
        match (self.query.after, self.query.ascending) {
            (Some(after), true) => lo = lo.max(after.saturating_add(1)),
            (Some(after), false) => hi = after.saturating_sub(1),
            (None, _) => {}
        }
        (lo, hi)
    }

    fn page(self) -> Page {
        let next = match self.stop {
            Some(Stop::Full) => self.found.last().map(|f| f.seq),
            Some(Stop::OutOfTime) => self.examined,
            None => None,
        };
        Page {
            events: self.found,
            next,
        }
    }

    /// Candidates in seq order, taken in the query's order.
    fn feed_ordered(&mut self, mut seqs: Vec<Candidate>) -> Result<(), StoreError> {
        seqs.sort_by_key(|c| c.seq);
        if !self.query.ascending {
            seqs.reverse();
        }
        for batch in seqs.chunks(BATCH) {
            if !self.take(batch)? {
                break;
            }
        }
        Ok(())
    }

    /// The seqs of the accepted losses within `lo..=hi`, in order.
    fn lost(&mut self, lo: u64, hi: u64) -> Result<(), StoreError> {
        let mut ranges: Vec<(u64, u64)> = self
            .marks
            .lost
            .iter()
            .map(|&(a, b)| (a.max(lo), b.min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        ranges.sort_unstable();
        if !self.query.ascending {
            ranges.reverse();
        }
        let mut batch = Vec::with_capacity(BATCH);
        for (a, b) in ranges {
            let seqs: Box<dyn Iterator<Item = u64>> = if self.query.ascending {
                Box::new(a..=b)
            } else {
                Box::new((a..=b).rev())
            };
            for seq in seqs {
                batch.push(Candidate { seq, ms: 0 });
                if batch.len() == BATCH {
                    if !self.take(&batch)? {
                        return Ok(());
                    }
                    batch.clear();
                }
            }
        }
        if !batch.is_empty() {
            self.take(&batch)?;
        }
        Ok(())
    }

    /// The segments' rows within `lo..=hi`, in order: only the rows whose tags and time fit.
    fn segments(&mut self, lo: u64, hi: u64) -> Result<(), StoreError> {
        let query = self.query;
        let tenant = query.tenant.as_deref().map(tag);
        let kind = query.event_type.as_deref().map(tag);
        let (since, until) = (
            query.since_ms.unwrap_or(0),
            query.until_ms.unwrap_or(u64::MAX),
        );
        let mut segments = self.lookup.indexes.log().segments();
        if !query.ascending {
            segments.reverse();
        }
        for s in segments {
            if s.last_seq < s.first_seq || s.last_seq < lo || s.first_seq > hi {
                continue;
            }
            let (Some(oldest), Some(newest)) = (s.oldest_ms, s.newest_ms) else {
                continue;
            };
            if newest < since || oldest > until {
                continue;
            }
            let Some(rows) = self.lookup.indexes.rows(&s, tenant, kind)? else {
                continue;
            };
            let (a, b) = (s.first_seq.max(lo), s.last_seq.min(hi));
            let seqs: Box<dyn Iterator<Item = u64>> = if query.ascending {
                Box::new(a..=b)
            } else {
                Box::new((a..=b).rev())
            };
            let unindexed = matches!(rows, SegmentRows::Unindexed);
            let mut batch = Vec::with_capacity(BATCH);
            for seq in seqs {
                let i = (seq - s.first_seq) as usize;
                let candidate = if unindexed {
                    Some(Candidate { seq, ms: 0 })
                } else if i >= rows.len() {
                    // Written, its row not yet added: it shows in a moment.
                    None
                } else {
                    let row = rows.get(i);
                    let fits = !row.is_none()
                        && tenant.is_none_or(|t| t == row.tenant)
                        && kind.is_none_or(|k| k == row.kind)
                        && (since..=until).contains(&row.ms);
                    fits.then_some(Candidate { seq, ms: row.ms })
                };
                if let Some(c) = candidate {
                    batch.push(c);
                }
                if batch.len() == BATCH {
                    if !self.take(&batch)? {
                        return Ok(());
                    }
                    batch.clear();
                }
            }
            if !batch.is_empty() && !self.take(&batch)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Reads and checks a batch; false once the walk is over.
    fn take(&mut self, batch: &[Candidate]) -> Result<bool, StoreError> {
        let seqs: Vec<u64> = batch.iter().map(|c| c.seq).collect();
        let mut entries = self.lookup.entries(&seqs)?;
        for c in batch {
            let found = match entries.remove(&c.seq) {
                Some(entry) => Some(found(&self.lookup.meta, &self.marks, entry)?),
                None if self.marks.is_lost(c.seq) => Some(Found {
                    seq: c.seq,
                    accepted_ms: c.ms,
                    dedup_key: self.query.key.clone(),
                    entry: None,
                    state: State::Lost,
                }),
                None => None,
            };
            self.examined = Some(c.seq);
            if let Some(f) = found.filter(|f| self.matches(f)) {
                self.found.push(f);
                if self.found.len() >= self.query.limit {
                    self.stop = Some(Stop::Full);
                    return Ok(false);
                }
            }
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stop = Some(Stop::OutOfTime);
            return Ok(false);
        }
        Ok(true)
    }

    fn matches(&self, f: &Found) -> bool {
        let q = self.query;
        if q.state.is_some_and(|s| !s.takes(&f.state)) {
            return false;
        }
        let (since, until) = (q.since_ms.unwrap_or(0), q.until_ms.unwrap_or(u64::MAX));
        let Some(e) = &f.entry else {
            // Lost: only what the lookup knew before reading it can be checked.
            let timed = q.since_ms.is_some() || q.until_ms.is_some();
            let in_window = (since..=until).contains(&f.accepted_ms);
            return q.tenant.is_none()
                && q.event_type.is_none()
                && q.q.is_none()
                && (!timed || in_window);
        };
        let eq =
            |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        eq(&q.key, &e.dedup_key)
            && q.webhook_id
                .as_deref()
                .is_none_or(|w| e.webhook_id.as_deref() == Some(w))
            && eq(&q.tenant, &e.tenant)
            && eq(&q.event_type, &e.event_type)
            && (since..=until).contains(&e.accepted_ms)
            && q.q
                .as_deref()
                .is_none_or(|s| contains(&e.body, s.as_bytes()))
    }
}

/// Whether `needle` occurs in `haystack` (an empty one does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
