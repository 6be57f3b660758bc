//! One segment read through, frame by frame, changing nothing: for `hlgate store check`, which
//! must not cut a torn tail or write a checkpoint while it looks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::LogError;
use super::format::{Kind, SegmentHeader, SEGMENT_FILE, SEGMENT_HEADER_LEN};
use super::fs::SegmentFile;
use super::walk::{step, Step, Window};

/// What a segment holds, read in full.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Runs of consecutive seqs whose frames read back whole, in order.
    pub runs: Vec<(u64, u64)>,
    /// Acceptance time of its newest whole frame (0 when none).
    pub newest_ms: u64,
    /// The dedup keys of its whole frames (replays have none).
    pub dedup_keys: Vec<String>,
}

/// Reads the segment in the bucket directory `dir`; `None` when it has none.
pub fn inspect(dir: &Path) -> Result<Option<Inspected>, LogError> {
    let file = match File::open(dir.join(SEGMENT_FILE)) {
        Ok(f) => ReadOnly(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("opening a segment", e)),
    };
    let len = file
        .0
        .metadata()
        .map_err(|e| LogError::io("reading a segment's length", e))?
        .len();
    let mut out = Inspected::default();
    let mut w = Window::new(&file, len);
    let mut pos = SEGMENT_HEADER_LEN as u64;
    while let Some(s) = step(&mut w, pos).map_err(|e| LogError::io("reading a segment", e))? {
        let next = s.next();
        if let Step::Frame { header, body, .. } = s {
            if header.kind == Kind::Seal {
                break;
            }
            let (first, last) = (header.first_seq, header.last_seq());
            match out.runs.last_mut() {
                Some(run) if run.1 + 1 == first => run.1 = last,
                Some(run) if run.1 >= first => {}
                _ => out.runs.push((first, last)),
            }
            out.newest_ms = header.accepted_ms;
            let key = &body[..usize::from(header.key_len)];
            if !key.is_empty() {
                out.dedup_keys
                    .push(String::from_utf8_lossy(key).into_owned());
            }
        }
        match next {
            Some(n) => pos = n,
            None => break,
        }
    }
    Ok(Some(out))
}

/// A segment file opened for reading only.
struct ReadOnly(File);

/// The log's file system for a look at a stopped store that changes nothing: what a start
/// would write (a directory, a cut tail, a removal) is left undone, and appends fail.
pub struct ReadOnlyFs;

impl super::fs::LogFs for ReadOnlyFs {
    fn create_dir(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        super::fs::RealFs.list(dir)
    }

    fn create(&self, _: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
        Err(std::io::Error::other("read only"))
    }

    fn open(&self, path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(ReadOnly(File::open(path)?)))
    }

    fn remove_file(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }

    #[cfg(test)]
    fn remove_dir(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

impl SegmentFile for ReadOnly {
    fn append(&self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("read only"))
    }

    fn set_len(&self, _: u64) -> std::io::Result<()> {
        // A torn tail a start would cut is only read past.
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// The store id in the header of the first intact segment under `events_dir`: what a main
/// database made anew (`hlgate store accept-loss`) takes on, so that the segments stay its own.
pub fn store_id_of(events_dir: &Path) -> Option<[u8; 16]> {
    let mut dirs: Vec<_> = std::fs::read_dir(events_dir)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    dirs.sort();
    dirs.iter().find_map(|dir| {
        let file = File::open(dir.join(SEGMENT_FILE)).ok()?;
        let mut bytes = [0u8; SEGMENT_HEADER_LEN];
        file.read_exact_at(&mut bytes, 0).ok()?;
        SegmentHeader::decode(&bytes).map(|h| h.store_id)
    })
}
