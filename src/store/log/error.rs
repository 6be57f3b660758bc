//! What the log answers when it cannot do what was asked.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The disk is full, or a write was cut short: the segment was cut back to where the batch
    /// began, so nothing of it is kept. The caller refuses the events (429) and tries again
    /// later: the log takes events again once there is room.
    #[error("{what}: no room on the disk: {source}")]
    NoRoom {
        what: &'static str,
        source: io::Error,
    },
    /// Another write error; the segment was cut back as for [`LogError::NoRoom`].
    #[error("{what}: {source}")]
    Write {
        what: &'static str,
        source: io::Error,
    },
    /// An fsync failed (or a failed write could not be cut back). What the kernel dropped is
    /// unknown, and an fsync is never retried, so the log takes nothing more until it is
    /// opened again, which recovers from what is on disk.
    #[error("{what}: {source}; the event log takes no more events until it is reopened")]
    Broken {
        what: &'static str,
        source: io::Error,
    },
    /// A [`LogError::Broken`] happened earlier.
    #[error(
        "the event log stopped after a failed fsync; it takes no more events until it is reopened"
    )]
    Stopped,
    /// Reading, listing, opening or removing failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// A segment whose intact header names another store: a data dir mixed with another.
    #[error("segment {segment} belongs to another store")]
    Foreign { segment: u64 },
    /// The caller's seqs do not continue the log's.
    #[error("a batch must continue at seq {expected}, not {got}")]
    OutOfOrder { expected: u64, got: u64 },
    /// An empty batch, a frame of no seqs, a key or a record too long for a frame.
    #[error("not a frame the log can hold: {0}")]
    Invalid(&'static str),
}

impl LogError {
    /// A failed write, told apart: ENOSPC and a short write mean the disk is full.
    pub fn write(what: &'static str, source: io::Error) -> LogError {
        let full = source.kind() == io::ErrorKind::WriteZero
            || source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(28);
        if full {
            LogError::NoRoom { what, source }
        } else {
            LogError::Write { what, source }
        }
    }

    pub fn io(what: &'static str, source: io::Error) -> LogError {
        LogError::Io { what, source }
    }

    pub fn broken(what: &'static str, source: io::Error) -> LogError {
        LogError::Broken { what, source }
    }
}
