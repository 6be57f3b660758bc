//! What the store answers when it cannot do what was asked.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// File system work outside sled: the data dir, bucket directories, summaries, threads.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the store is busy")]
    Busy,
    #[error("the store writer has stopped")]
    Closed,
    #[error("broken entry at seq {0}")]
    Corrupt(u64),
    #[error("write failed: {0}")]
    Write(String),
    #[error("the outbox holds {0} unpublished events")]
    OutboxFull(u64),
    #[error("the data disk has {free} bytes free, under its reserve of {reserve} and what the batch needs")]
    DiskLow { free: u64, reserve: u64 },
    #[error("the store did not commit within {0:?}")]
    Stalled(Duration),
    #[error("the store is damaged: {0}")]
    Damaged(String),
    #[error("event log: {0}")]
    Log(#[from] super::log::LogError),
}

impl StoreError {
    /// `what` failed with `source`.
    pub fn io(what: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io { what, source }
    }

    /// The file system had no room (or quota) left for a write.
    pub fn is_no_space(&self) -> bool {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        matches!(self, StoreError::Log(super::log::LogError::NoRoom { .. }))
            || self
                .io_error()
                .is_some_and(|e| matches!(e.kind(), StorageFull | QuotaExceeded))
    }

    /// sled could not take a database's file lock: another handle, perhaps one being closed,
    /// still holds it.
    pub fn is_locked(&self) -> bool {
        self.io_error().is_some_and(is_lock_error)
    }

    fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Sled(sled::Error::Io(e)) | StoreError::Io { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// sled's answer when a database's file lock is held.
pub(super) fn is_lock_error(e: &std::io::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}
