//! The lookup index of every segment: the active segment's rows in memory as the writer
//! appends them, a sealed segment's in its `index` file (`sidecar`), read when a query needs
//! them and built again from the segment when that file is missing, stale or damaged.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::rows::{array_rows, ActiveRows, Row};
use super::sidecar::{self, Tags};
use crate::store::error::StoreError;
use crate::store::layout::{bucket_name, Stored};
use crate::store::log::{EventLog, SegmentInfo};

/// Sealed segments whose rows stay in memory after a query read them: a query pages through
/// the newest few.
const CACHED: usize = 8;
/// Frames one read of a segment takes while its rows are built.
const BUILD_READ: usize = 512;

/// The rows a query reads for one segment.
pub enum SegmentRows {
    Active(Arc<ActiveRows>),
    Sealed(Arc<Vec<Row>>),
    /// Its rows are not known (the active rows overflowed): read its frames.
    Unindexed,
}

impl SegmentRows {
    pub fn len(&self) -> usize {
        match self {
            SegmentRows::Active(a) => a.len(),
            SegmentRows::Sealed(r) => r.len(),
            SegmentRows::Unindexed => 0,
        }
    }

    pub fn get(&self, i: usize) -> Row {
        match self {
            SegmentRows::Active(a) => a.get(i),
            SegmentRows::Sealed(r) => r[i],
            SegmentRows::Unindexed => Row::NONE,
        }
    }
}

pub struct Indexes {
    events_dir: PathBuf,
    log: Arc<EventLog>,
    /// Whether built rows are written out (not by a read-only look at a stopped store).
    writes: bool,
    /// Swapped only when the writer starts a segment; readers clone the `Arc`.
    active: RwLock<Arc<ActiveRows>>,
    /// Tags of sealed segments, by first seq, as queries read them.
    tags: Mutex<HashMap<u64, Arc<Tags>>>,
    /// Rows of the sealed segments read last, newest use last.
    rows: Mutex<VecDeque<(u64, Arc<Vec<Row>>)>>,
    /// One build at a time: two queries wanting the same segment build it once.
    building: Mutex<()>,
}

impl Indexes {
    /// `next_seq` is the seq the writer's next frame takes: the start of the active rows.
    pub fn new(events_dir: PathBuf, log: Arc<EventLog>, writes: bool, next_seq: u64) -> Indexes {
        Indexes {
            events_dir,
            log,
            writes,
            active: RwLock::new(Arc::new(ActiveRows::new(next_seq))),
            tags: Mutex::new(HashMap::new()),
            rows: Mutex::new(VecDeque::new()),
            building: Mutex::new(()),
        }
    }

    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    /// The rows the writer appends to.
    pub fn active(&self) -> Arc<ActiveRows> {
        self.active.read().expect("active rows").clone()
    }

    /// The writer sealed the active segment and its next frame takes `next_seq`: the sealed
    /// rows go to their `index` file, and new rows begin.
    pub fn sealed(&self, next_seq: u64) -> Arc<ActiveRows> {
        let fresh = Arc::new(ActiveRows::new(next_seq));
        let old = std::mem::replace(
            &mut *self.active.write().expect("active rows"),
            fresh.clone(),
        );
        let segment = self
            .log
            .segments()
            .into_iter()
            .find(|s| s.first_seq == old.first_seq && s.sealed);
        if let Some(segment) = segment.filter(|_| old.complete() && old.len() > 0) {
            let rows = old.snapshot();
            if self.writes {
                sidecar::write(
                    &self.dir(old.first_seq),
                    old.first_seq,
                    segment.bytes,
                    &rows,
                );
            }
            self.keep(old.first_seq, Tags::of(&rows), Arc::new(rows));
        }
        fresh
    }

    fn dir(&self, first_seq: u64) -> PathBuf {
        self.events_dir.join(bucket_name(first_seq))
    }

    /// The rows of `segment` a query with these tags reads; `None` when it holds no row with
    /// them.
    pub fn rows(
        &self,
        segment: &SegmentInfo,
        tenant: Option<u32>,
        kind: Option<u32>,
    ) -> Result<Option<SegmentRows>, StoreError> {
        let active = self.active();
        if segment.first_seq == active.first_seq && !segment.sealed {
            return Ok(Some(if active.complete() {
                SegmentRows::Active(active)
            } else {
                SegmentRows::Unindexed
            }));
        }
        if tenant.is_some() || kind.is_some() {
            let tags = self.tags_of(segment)?;
            if !tags.may_hold(tenant, kind) {
                return Ok(None);
            }
        }
        Ok(Some(SegmentRows::Sealed(self.rows_of(segment)?)))
    }

    fn tags_of(&self, segment: &SegmentInfo) -> Result<Arc<Tags>, StoreError> {
        let first = segment.first_seq;
        if let Some(tags) = self.tags.lock().expect("index tags").get(&first) {
            return Ok(tags.clone());
        }
        if let Some((_, tags)) = sidecar::read_tags(&self.dir(first), first, segment.bytes) {
            let tags = Arc::new(tags);
            self.tags
                .lock()
                .expect("index tags")
                .insert(first, tags.clone());
            return Ok(tags);
        }
        let rows = self.rows_of(segment)?;
        Ok(Arc::new(Tags::of(&rows)))
    }

    fn rows_of(&self, segment: &SegmentInfo) -> Result<Arc<Vec<Row>>, StoreError> {
        let first = segment.first_seq;
        if let Some(rows) = self.cached(first) {
            return Ok(rows);
        }
        let _one = self.building.lock().expect("index builds");
        if let Some(rows) = self.cached(first) {
            return Ok(rows);
        }
        let rows = match sidecar::read_rows(&self.dir(first), first, segment.bytes) {
            Some(rows) => rows,
            None => {
                let rows = build(&self.log, segment)?;
                if self.writes && segment.sealed {
                    sidecar::write(&self.dir(first), first, segment.bytes, &rows);
                }
                rows
            }
        };
        let rows = Arc::new(rows);
        self.keep(first, Tags::of(&rows), rows.clone());
        Ok(rows)
    }

    fn cached(&self, first: u64) -> Option<Arc<Vec<Row>>> {
        let mut cache = self.rows.lock().expect("index rows");
        let at = cache.iter().position(|(f, _)| *f == first)?;
        let hit = cache.remove(at)?;
        cache.push_back(hit.clone());
        Some(hit.1)
    }

    fn keep(&self, first: u64, tags: Tags, rows: Arc<Vec<Row>>) {
        self.tags
            .lock()
            .expect("index tags")
            .insert(first, Arc::new(tags));
        let mut cache = self.rows.lock().expect("index rows");
        cache.retain(|(f, _)| *f != first);
        cache.push_back((first, rows));
        while cache.len() > CACHED {
            cache.pop_front();
        }
    }

    /// Builds, in the background, the `index` files the sealed segments lack (the newest
    /// first, up to `newest` of them): after a crash the segment that was active has none.
    pub fn warm(self: &Arc<Self>, newest: usize) {
        let indexes = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hlgate-store-index".into())
            .spawn(move || {
                let segments = indexes.log.segments();
                for s in segments.iter().rev().filter(|s| s.sealed).take(newest) {
                    let known = sidecar::read_tags(&indexes.dir(s.first_seq), s.first_seq, s.bytes);
                    if known.is_none() {
                        if let Err(e) = indexes.rows_of(s) {
                            tracing::warn!(error = %e, segment = s.first_seq, "could not build a segment's lookup index");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start building the lookup indexes");
        }
    }

    /// Forgets the segments before `seq`: they left with their buckets.
    pub fn forget_before(&self, seq: u64) {
        self.tags
            .lock()
            .expect("index tags")
            .retain(|&f, _| f >= seq);
        self.rows
            .lock()
            .expect("index rows")
            .retain(|(f, _)| *f >= seq);
    }
}

/// The rows of `segment`, read from its frames: a seq no frame serves gets [`Row::NONE`].
pub fn build(log: &EventLog, segment: &SegmentInfo) -> Result<Vec<Row>, StoreError> {
    let (first, last) = (segment.first_seq, segment.last_seq);
    let mut rows = vec![Row::NONE; (last + 1).saturating_sub(first) as usize];
    let mut put = |seq: u64, row: Row| {
        if let Some(slot) = seq
            .checked_sub(first)
            .and_then(|i| rows.get_mut(i as usize))
        {
            *slot = row;
        }
    };
    let mut next = first;
    while next <= last {
        let read = log.read_from(next, BUILD_READ)?;
        let Some(end) = read.frames.last().map(|f| f.last_seq()) else {
            break;
        };
        for frame in read.frames.iter().filter(|f| f.first_seq <= last) {
            match Stored::decode(frame.first_seq, frame.record()) {
                Some(Stored::One(e)) => put(frame.first_seq, Row::of_entry(&e)),
                Some(Stored::Array(r)) => {
                    for (i, row) in array_rows(&r).into_iter().flatten().enumerate() {
                        put(frame.first_seq + i as u64, row);
                    }
                }
                None => {}
            }
        }
        next = end + 1;
    }
    Ok(rows)
}
