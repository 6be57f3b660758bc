//! Lookups over a stopped gateway's data dir (`hlgate events` when nothing answers on the
//! admin listener), taking no lock that a start needs and writing nothing into the data dir:
//! sled locks a database it opens, so the main database is read from a copy made in the
//! system's temporary directory, and the buckets' databases are not opened at all (a key is
//! found by reading the segments whose bucket summaries hold its hash). The segments are
//! opened read-only, rows are built in memory where an `index` file is missing.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::engine::{Keys, Lookup};
use super::index::Indexes;
use crate::store::error::StoreError;
use crate::store::layout::{meta_u64, APPLIED, EVENTS, MAIN_DB, STORE_ID, WATERMARK};
use crate::store::log::{store_id_of, Applied, EventLog, Known, Options, ReadOnlyFs};

/// A copy of the main database, removed when dropped.
pub(super) struct Copy(PathBuf);

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens `data_dir` for lookups without changing it or locking anything in it.
pub fn open_read_only(data_dir: &Path) -> Result<Lookup, StoreError> {
    let main = data_dir.join(MAIN_DB);
    if !main.is_dir() {
        return Err(StoreError::Damaged(format!(
            "{} holds no store (no {MAIN_DB}/)",
            data_dir.display()
        )));
    }
    let copy = Copy(unique_temp_dir()?);
    copy_dir(&main, &copy.0).map_err(|e| StoreError::io("cannot copy the main database", e))?;
    let db = sled::Config::new().path(&copy.0).open()?;
    let meta = db.open_tree("meta")?;
    let events_dir = data_dir.join(EVENTS);
    let store_id = match meta.get(STORE_ID)? {
        Some(v) => <[u8; 16]>::try_from(&*v).ok(),
        None => store_id_of(&events_dir),
    }
    .unwrap_or_default();
    let mut options = Options::new(store_id);
    options.segment_bytes = u64::MAX;
    let known = Known {
        floor: meta_u64(&meta, WATERMARK)? + 1,
        applied: meta.get(APPLIED)?.and_then(|v| Applied::from_bytes(&v)),
    };
    let (log, _) = EventLog::open(Arc::new(ReadOnlyFs), &events_dir, options, known)?;
    let log = Arc::new(log);
    let next = log.next_seq();
    let indexes = Arc::new(Indexes::new(events_dir.clone(), log, false, next));
    let mut lookup = Lookup::new(indexes, meta, Keys::Segments { events_dir });
    lookup.keep = Some(Box::new(copy));
    Ok(lookup)
}

/// A new directory of this user's alone under the system's temporary directory.
fn unique_temp_dir() -> Result<PathBuf, StoreError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("hlgate-lookup-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| StoreError::io("cannot make a temporary directory", e))?;
    Ok(dir)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        let target = to.join(item.file_name());
        if item.file_type()?.is_dir() {
            copy_dir(&item.path(), &target)?;
        } else {
            std::fs::copy(item.path(), target)?;
        }
    }
    Ok(())
}
