//! Replays: archived events queued again, marked `replay`, for the relay to publish. The
//! archive is read a chunk at a time and each chunk queued before the next is read, so that a
//! replay holds one chunk in memory whatever its window; it queues only while the outbox has
//! room to spare (webhooks keep theirs, and the relay takes the replayed entries from memory
//! while it keeps up); and one runs at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::entry::Entry;

use super::error::StoreError;
use super::outbox::{Chunk, Outbox, Window};

/// What one read of the archive takes at most: far less than a wide window (an hour of a busy
/// install's events can be hundreds of MB), enough that one read per chunk costs little.
pub(super) const CHUNK: Chunk = Chunk {
    entries: 1000,
    bytes: 4 * 1024 * 1024,
};
/// A replay queues events only while the outbox holds fewer than this many (or than half its
/// limit): twice a chunk, so that the relay, which takes the last 2 048 committed entries from
/// memory, finds the replayed ones there.
const AHEAD: u64 = 2 * CHUNK.entries as u64;
/// How often a replay that waits for room looks again.
const ROOM_POLL: Duration = Duration::from_millis(20);

/// Why a replay did not queue its whole window.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("another replay is running")]
    Running,
    #[error("the replay stopped after queueing {queued} events: {source}")]
    Failed { queued: usize, source: StoreError },
    #[error("the replay stopped at shutdown after queueing {queued} events")]
    Stopped { queued: usize },
}

/// Which archived events a replay takes; shared with each chunk's read.
pub(super) type Keep = Arc<dyn Fn(&Entry) -> bool + Send + Sync>;

/// How many archived original events of `window` `keep` keeps, read as a replay reads them
/// (a dry run): nothing is queued.
pub(super) async fn count(
    outbox: Arc<Outbox>,
    window: Window,
    keep: Keep,
) -> Result<usize, StoreError> {
    let read = move || {
        let through = outbox.last_seq();
        let (mut count, mut from) = (0, 0);
        loop {
            let chunk = outbox.archived(&window, through, from, CHUNK, &*keep)?;
            count += chunk.entries.len();
            match chunk.next {
                Some(next) => from = next,
                None => return Ok(count),
            }
        }
    };
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| StoreError::io("the archive read stopped", std::io::Error::other(e)))?
}

/// Runs replays, one at a time.
pub(super) struct Replays {
    outbox: Arc<Outbox>,
    running: tokio::sync::Mutex<()>,
}

impl Replays {
    pub fn new(outbox: Arc<Outbox>) -> Replays {
        Replays {
            outbox,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Queues, with `append`, the archived original events of `window` that `keep` keeps, in
    /// seq order and `chunk` by chunk; returns how many. Events accepted once it began are not
    /// part of it. `stop` ends it between two chunks and while it waits for room.
    pub async fn run<F>(
        &self,
        window: Window,
        keep: Keep,
        stop: &CancellationToken,
        chunk: Chunk,
        append: impl Fn(Vec<Entry>) -> F,
    ) -> Result<usize, ReplayError>
    where
        F: Future<Output = Result<usize, StoreError>>,
    {
        assert!(chunk.entries > 0, "a chunk reads at least one entry");
        let _only = self.running.try_lock().map_err(|_| ReplayError::Running)?;
        let through = self.outbox.last_seq();
        let mut queued = 0;
        let mut from = 0;
        loop {
            if stop.is_cancelled() {
                return Err(ReplayError::Stopped { queued });
            }
            let (outbox, keep) = (self.outbox.clone(), keep.clone());
            let read = move || outbox.archived(&window, through, from, chunk, &*keep);
            let read = match tokio::task::spawn_blocking(read).await {
                Ok(read) => read,
                Err(e) => Err(StoreError::io(
                    "the archive read stopped",
                    std::io::Error::other(e),
                )),
            }
            .map_err(|source| ReplayError::Failed { queued, source })?;
            let mut entries = read.entries;
            while !entries.is_empty() {
                let room = self.room(stop, queued).await?;
                let rest = entries.split_off(room.min(entries.len()));
                queued += append(entries)
                    .await
                    .map_err(|source| ReplayError::Failed { queued, source })?;
                entries = rest;
            }
            match read.next {
                Some(next) => from = next,
                None => return Ok(queued),
            }
        }
    }

    /// How many entries a replay may queue now: it waits while the outbox holds [`AHEAD`]
    /// events or half its limit (whichever is fewer), so that the relay drains it first.
    async fn room(&self, stop: &CancellationToken, queued: usize) -> Result<usize, ReplayError> {
        let ahead = AHEAD.min(self.outbox.max_events() / 2).max(1);
        loop {
            let room = ahead.saturating_sub(self.outbox.depth());
            if room > 0 {
                return Ok(room as usize);
            }
            tokio::select! {
                () = tokio::time::sleep(ROOM_POLL) => {}
                () = stop.cancelled() => return Err(ReplayError::Stopped { queued }),
            }
        }
    }
}
