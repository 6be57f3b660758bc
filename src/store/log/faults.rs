//! A file system that fails on demand, over the real one: the disk fills up after so many
//! bytes, the next append is cut short, every fsync fails.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::fs::{LogFs, RealFs, SegmentFile};

/// ENOSPC, as the kernel says it.
const NO_SPACE: i32 = 28;
/// EIO.
const IO_ERROR: i32 = 5;

/// What goes wrong, shared by the file system and every file it opened.
#[derive(Default)]
pub struct Faults {
    /// Appends fail with ENOSPC after this many more bytes (`None`: the disk has room).
    space: Mutex<Option<u64>>,
    /// The next append writes half its bytes and stops.
    short_write: AtomicBool,
    /// Every `sync_data` and directory sync fails.
    fail_sync: AtomicBool,
    /// `sync_data` calls that went through.
    pub syncs: AtomicU64,
}

impl Faults {
    pub fn space_left(&self, bytes: Option<u64>) {
        *self.space.lock().expect("faults") = bytes;
    }

    pub fn short_write(&self) {
        self.short_write.store(true, Ordering::SeqCst);
    }

    pub fn fail_sync(&self, fail: bool) {
        self.fail_sync.store(fail, Ordering::SeqCst);
    }

    fn sync(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(IO_ERROR));
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub struct FaultyFs {
    pub faults: Arc<Faults>,
}

impl FaultyFs {
    pub fn new() -> (Arc<FaultyFs>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let fs = Arc::new(FaultyFs {
            faults: faults.clone(),
        });
        (fs, faults)
    }
}

impl LogFs for FaultyFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let inner = RealFs.create(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let inner = RealFs.open(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }

    #[cfg(test)]
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.remove_dir(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.sync()?;
        RealFs.sync_dir(dir)
    }
}

struct FaultyFile {
    inner: Box<dyn SegmentFile>,
    faults: Arc<Faults>,
}

impl SegmentFile for FaultyFile {
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        if self.faults.short_write.swap(false, Ordering::SeqCst) {
            self.inner.append(&bytes[..bytes.len() / 2])?;
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut space = self.faults.space.lock().expect("faults");
        match *space {
            Some(left) if left < bytes.len() as u64 => {
                self.inner.append(&bytes[..left as usize])?;
                *space = Some(0);
                Err(io::Error::from_raw_os_error(NO_SPACE))
            }
            Some(left) => {
                *space = Some(left - bytes.len() as u64);
                self.inner.append(bytes)
            }
            None => self.inner.append(bytes),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.sync()?;
        self.inner.sync_data()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}
