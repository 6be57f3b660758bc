//! One segment: its file, what it holds, and its sparse index. Only the log's writer adds to
//! it; readers take a copy of its state and read below the length it names, which only ever
//! covers fsynced frames.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use super::error::LogError;
use super::format::{Point, Seal, SegmentHeader, SEGMENT_FILE, SEGMENT_HEADER_LEN};
use super::fs::{LogFs, SegmentFile};
use crate::store::layout::bucket_name;

pub struct Segment {
    pub first_seq: u64,
    /// The bucket's directory, which holds the segment file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub dir: PathBuf,
    pub created_ms: u64,
    pub file: Box<dyn SegmentFile>,
    state: RwLock<State>,
}

/// What a segment holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The bytes of its header and its frames (and seal) that are on disk for good: reads stop
    /// here, and the next frame goes here.
    pub len: u64,
    /// `first_seq - 1` while it holds none.
    pub last_seq: u64,
    /// Its frames, damaged ones included (a seal counts them).
    pub frames: u64,
    /// Acceptance times of its frames; `oldest_ms` is `u64::MAX` while it holds none.
    pub oldest_ms: u64,
    pub newest_ms: u64,
    pub points: Vec<Point>,
    pub sealed: bool,
}

impl State {
    pub fn empty(first_seq: u64) -> State {
        State {
            len: SEGMENT_HEADER_LEN as u64,
            last_seq: first_seq - 1,
            frames: 0,
            oldest_ms: u64::MAX,
            newest_ms: 0,
            points: Vec::new(),
            sealed: false,
        }
    }

    /// Takes a frame written at `offset`, adding an index point every `index_every` bytes.
    pub fn add(&mut self, first: u64, last: u64, accepted_ms: u64, offset: u64, index_every: u64) {
        let due = self
            .points
            .last()
            .is_none_or(|p| offset - p.offset >= index_every);
        if due {
            self.points.push(Point {
                seq: first,
                offset,
                newest_ms_before: self.newest_ms,
            });
        }
        self.last_seq = self.last_seq.max(last);
        self.frames += 1;
        self.oldest_ms = self.oldest_ms.min(accepted_ms);
        self.newest_ms = self.newest_ms.max(accepted_ms);
    }

    /// The index point to start from for a frame holding `seq`.
    pub fn point_for_seq(&self, seq: u64) -> Option<Point> {
        let i = self.points.partition_point(|p| p.seq <= seq);
        self.points.get(i.saturating_sub(1)).copied()
    }

    /// The index point to start from for frames accepted at `from_ms` or later: every frame
    /// before it is older.
    #[cfg(test)]
    pub fn point_for_time(&self, from_ms: u64) -> Option<Point> {
        let i = self
            .points
            .partition_point(|p| p.newest_ms_before < from_ms);
        self.points.get(i.saturating_sub(1)).copied()
    }

    pub fn holds_any(&self) -> bool {
        self.frames > 0
    }
}

/// A segment as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_seq: u64,
    /// `first_seq - 1` while it holds none.
    pub last_seq: u64,
    /// From its header: when it was started (the first frame's acceptance time).
    pub created_ms: u64,
    /// `None` while it holds no frame.
    pub oldest_ms: Option<u64>,
    pub newest_ms: Option<u64>,
    pub bytes: u64,
    pub sealed: bool,
}

impl Segment {
    pub fn new(
        first_seq: u64,
        dir: PathBuf,
        created_ms: u64,
        file: Box<dyn SegmentFile>,
        state: State,
    ) -> Segment {
        Segment {
            first_seq,
            dir,
            created_ms,
            file,
            state: RwLock::new(state),
        }
    }

    pub fn path(root: &Path, first_seq: u64) -> (PathBuf, PathBuf) {
        let dir = root.join(bucket_name(first_seq));
        let file = dir.join(SEGMENT_FILE);
        (dir, file)
    }

    /// A new segment for the seqs from `first_seq` on: its header and its directory entry are
    /// on disk before it takes a frame. A failed write leaves no file behind.
    pub fn create(fs: &dyn LogFs, root: &Path, header: SegmentHeader) -> Result<Segment, LogError> {
        let (dir, path) = Segment::path(root, header.first_seq);
        fs.create_dir(&dir)
            .map_err(|e| LogError::write("creating a segment's directory", e))?;
        fs.sync_dir(root)
            .map_err(|e| LogError::broken("syncing the segments' directory", e))?;
        let file = fs
            .create(&path)
            .map_err(|e| LogError::write("creating a segment", e))?;
        if let Err(e) = file.append(&header.encode()) {
            drop(file);
            let _ = fs.remove_file(&path);
            return Err(LogError::write("writing a segment's header", e));
        }
        file.sync_data()
            .map_err(|e| LogError::broken("syncing a new segment", e))?;
        fs.sync_dir(&dir)
            .map_err(|e| LogError::broken("syncing a new segment's directory", e))?;
        Ok(Segment::new(
            header.first_seq,
            dir,
            header.created_ms,
            file,
            State::empty(header.first_seq),
        ))
    }

    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("segment state")
    }

    pub fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.write().expect("segment state"));
    }

    /// The seal frame that ends it as it stands.
    pub fn seal_frame(&self, sealed_ms: u64) -> Vec<u8> {
        let s = self.state();
        Seal {
            last_seq: s.last_seq,
            frame_count: s.frames,
            length: s.len,
            oldest_ms: s.oldest_ms,
            newest_ms: s.newest_ms,
            points: s.points.clone(),
        }
        .frame(sealed_ms)
    }

    pub fn info(&self) -> SegmentInfo {
        let s = self.state();
        SegmentInfo {
            first_seq: self.first_seq,
            last_seq: s.last_seq,
            created_ms: self.created_ms,
            oldest_ms: s.holds_any().then_some(s.oldest_ms),
            newest_ms: s.holds_any().then_some(s.newest_ms),
            bytes: s.len,
            sealed: s.sealed,
        }
    }
}
