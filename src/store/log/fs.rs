//! The few file operations the log uses, behind a seam so that tests can fail them on demand
//! (`faults`): a disk that fills up, a write cut short, an fsync that fails.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The directory side: segments are created, found, opened and removed through it.
pub trait LogFs: Send + Sync {
    /// Creates `dir` (and its parents) unless it exists.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// A new file at `path`, for reading and appending; an error if one is there.
    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// The existing file at `path`, for reading and appending.
    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    #[cfg(test)]
    /// Removes `dir` if it is empty.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (a creation, a removal) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open segment file. Every write goes at its end.
pub trait SegmentFile: Send + Sync {
    /// Appends all of `bytes`, or fails having appended any prefix of them.
    fn append(&self, bytes: &[u8]) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the data and the length it needs.
    fn sync_data(&self) -> io::Result<()>;
    /// Fills `buf` from `offset`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

/// The real file system.
pub struct RealFs;

impl LogFs for RealFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    #[cfg(test)]
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

struct RealFile(File);

impl SegmentFile for RealFile {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        // Opened for appending: every write lands at the end, also after a `set_len`.
        (&self.0).write_all(bytes)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
