//! The event log: event bodies in append-only segments, one per bucket, that the store writes
//! itself (ARCHITECTURE.md, "The event log's format").
//!
//! A delivery is one frame (its dedup key and its encoded entry or array record, covering its
//! 1..n seqs), so it is on disk whole or not at all. An append writes all of a commit's frames
//! with one `write` and one `fdatasync`. A full disk cuts the segment back and refuses the
//! batch; a failed fsync stops the log until it is reopened. A start checks every segment,
//! compares the caller's checkpoint with what is on disk, cuts a torn tail and reports
//! every seq it cannot serve ([`Loss`]). Frames are opaque here: the caller encodes them.
//!
//! The rooms: `format` (the bytes), `fs` (the file system seam; `faults` fails it in tests),
//! `walk` (telling frames from damage), `segment` (one segment and its sparse index), `terms`
//! (what the caller and the log hand each other), `append`, `recover` (a start), `read`, `loss`
//! (what is reported), `error`.

mod append;
mod error;
#[cfg(test)]
pub(in crate::store) mod faults;
mod format;
mod fs;
mod inspect;
mod loss;
mod read;
mod recover;
mod segment;
mod terms;
mod walk;

#[cfg(test)]
pub(in crate::store) mod tests;

pub use error::LogError;
pub use format::SEGMENT_FILE;
pub use fs::{LogFs, RealFs};
pub use inspect::{inspect, store_id_of, ReadOnlyFs};
pub use loss::Recovered;
pub use read::Read;
pub use segment::SegmentInfo;
pub use terms::{Applied, Frame, Known, Options};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use segment::Segment;
#[cfg(test)]
use {loss::Loss, terms::Bounds};

pub struct EventLog {
    fs: Arc<dyn LogFs>,
    dir: PathBuf,
    options: Options,
    /// Oldest first; the newest is the active one unless it is sealed.
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
}

struct Writer {
    next_seq: u64,
    active: Option<Arc<Segment>>,
    /// An fsync failed: nothing more is written until the log is reopened.
    stopped: bool,
    /// The batch being written, kept for its capacity.
    buf: Vec<u8>,
}

impl EventLog {
    /// Opens the log in `dir` (the events directory: a segment lives in its bucket's
    /// directory), checking what is there against what the caller `known`s.
    pub fn open(
        fs: Arc<dyn LogFs>,
        dir: &Path,
        options: Options,
        known: Known,
    ) -> Result<(EventLog, Recovered), LogError> {
        let opened = recover::open(&*fs, dir, &options, known)?;
        let log = EventLog {
            fs,
            dir: dir.to_path_buf(),
            options,
            segments: RwLock::new(opened.segments),
            writer: Mutex::new(Writer {
                next_seq: opened.next_seq,
                active: opened.active,
                stopped: false,
                buf: Vec::new(),
            }),
        };
        Ok((log, opened.recovered))
    }

    /// The seq the next frame must start at.
    pub fn next_seq(&self) -> u64 {
        self.writer().next_seq
    }

    /// Makes the next frame start at `seq` (above the log's own last seq: the caller handed
    /// out seqs the log never held, lost ones say). Only between segments, so that a segment's
    /// seqs stay without a gap: `false` while one is active.
    pub fn continue_at(&self, seq: u64) -> bool {
        let mut w = self.writer();
        if w.active.is_some() || seq < w.next_seq {
            return seq == w.next_seq;
        }
        w.next_seq = seq;
        true
    }

    /// Frames holding `seq` or later, at most `max`, in seq order.
    pub fn read_from(&self, seq: u64, max: usize) -> Result<Read, LogError> {
        read::from_seq(&self.snapshot(), seq, max)
    }

    // Event lookups by time take it up; tests read with it now.
    #[cfg(test)]
    /// Frames accepted in `from_ms..to_ms` whose last seq is above `after_seq` (for paging), at
    /// most `max`, in seq order.
    pub fn read_window(
        &self,
        from_ms: u64,
        to_ms: u64,
        after_seq: u64,
        max: usize,
    ) -> Result<Read, LogError> {
        read::window(&self.snapshot(), from_ms, to_ms, after_seq, max)
    }

    #[cfg(test)]
    /// Reads every frame of every segment and reports what it cannot serve.
    pub fn verify(&self) -> Result<Vec<Loss>, LogError> {
        read::verify(&self.snapshot())
    }

    #[cfg(test)]
    pub fn bounds(&self) -> Bounds {
        let next_seq = self.next_seq();
        let first_seq = self
            .segments
            .read()
            .expect("log segments")
            .first()
            .map_or(next_seq, |s| s.first_seq);
        Bounds {
            first_seq,
            last_seq: next_seq - 1,
        }
    }

    /// Every segment, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.snapshot().iter().map(|s| s.info()).collect()
    }

    // The store's retention removes segments with their buckets (`forget_before`).
    #[cfg(test)]
    /// Removes the oldest segment unless it is the active one (retention: the caller decides
    /// that its events are expired and confirmed), then syncs the directory. Readers that
    /// hold it finish with it.
    pub fn drop_oldest(&self) -> Result<Option<SegmentInfo>, LogError> {
        let w = self.writer();
        let Some(oldest) = self.snapshot().first().cloned() else {
            return Ok(None);
        };
        if w.active.as_ref().is_some_and(|a| Arc::ptr_eq(a, &oldest)) {
            return Ok(None);
        }
        let io = |what| move |e| LogError::io(what, e);
        self.fs
            .remove_file(&oldest.dir.join(SEGMENT_FILE))
            .map_err(io("removing a segment"))?;
        self.fs
            .sync_dir(&oldest.dir)
            .map_err(io("syncing a removed segment's directory"))?;
        self.segments.write().expect("log segments").remove(0);
        // Its directory goes too once nothing else of the bucket is in it.
        if self.fs.remove_dir(&oldest.dir).is_ok() {
            self.fs
                .sync_dir(&self.dir)
                .map_err(io("syncing the segments' directory"))?;
        }
        Ok(Some(oldest.info()))
    }

    /// Takes the segments before `seq` off the list, leaving their files to the caller, who
    /// removes them with their buckets' directories (retention). Never the active one.
    pub fn forget_before(&self, seq: u64) {
        let w = self.writer();
        let mut segments = self.segments.write().expect("log segments");
        let active = |s: &Arc<Segment>| w.active.as_ref().is_some_and(|a| Arc::ptr_eq(a, s));
        segments.retain(|s| s.first_seq >= seq || active(s));
    }

    fn snapshot(&self) -> Vec<Arc<Segment>> {
        self.segments.read().expect("log segments").clone()
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().expect("log writer")
    }
}
