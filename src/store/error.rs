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
}

impl StoreError {
    /// `what` failed with `source`.
    pub fn io(what: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io { what, source }
    }
}
