//! The *applied* checkpoint: the last log frame whose dedup keys are flushed to the buckets'
//! databases. A commit fsyncs its frames and records their keys in sled without a flush; about
//! once a second (and at a clean stop) this flushes the databases that took keys, then records
//! the checkpoint in `meta`. A start re-records the keys of every frame past it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::bucket::Bucket;
use super::error::StoreError;
use super::layout::APPLIED;
use super::log::Applied;

/// How often the checkpoint moves while events come in.
const EVERY: Duration = Duration::from_secs(1);

pub(super) struct Checkpoint {
    meta_db: sled::Db,
    meta: sled::Tree,
    pending: Mutex<Pending>,
    /// One flush at a time, so that the recorded checkpoint only moves forward.
    flushing: Mutex<()>,
    /// Tests stop it to leave the disk as a crash would.
    #[cfg(test)]
    pub frozen: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Pending {
    /// The newest frame whose keys are recorded (not yet flushed).
    applied: Option<Applied>,
    /// The buckets that took keys since the last flush.
    dirty: Vec<Arc<Bucket>>,
}

impl Checkpoint {
    pub fn new(meta_db: sled::Db, meta: sled::Tree) -> Arc<Checkpoint> {
        Arc::new(Checkpoint {
            meta_db,
            meta,
            pending: Mutex::new(Pending::default()),
            flushing: Mutex::new(()),
            #[cfg(test)]
            frozen: Default::default(),
        })
    }

    /// Flushes about once a second on a thread of its own, until the store is dropped.
    pub fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let weak: Weak<Checkpoint> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("hlgate-store-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(EVERY);
                let Some(checkpoint) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = checkpoint.flush() {
                    tracing::warn!(error = %e, "could not record the event log's checkpoint");
                }
            })
            .map(drop)
            .map_err(|e| StoreError::io("cannot start the store's checkpoint thread", e))
    }

    /// The keys of the frames up to `applied` are recorded in `bucket`'s database.
    pub fn advance(&self, applied: Applied, bucket: &Arc<Bucket>) {
        self.pending.lock().expect("checkpoint").applied = Some(applied);
        self.touched(bucket);
    }

    /// `bucket` took keys of deliveries without events (no frame, so no checkpoint).
    pub fn touched(&self, bucket: &Arc<Bucket>) {
        let mut p = self.pending.lock().expect("checkpoint");
        if !p.dirty.iter().any(|b| Arc::ptr_eq(b, bucket)) {
            p.dirty.push(bucket.clone());
        }
    }

    /// Flushes the databases that took keys, then records the checkpoint.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _one = self.flushing.lock().expect("checkpoint flush");
        #[cfg(test)]
        if self.frozen.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let taken = std::mem::take(&mut *self.pending.lock().expect("checkpoint"));
        let Pending { applied, dirty } = taken;
        if let Err(e) = dirty.iter().try_for_each(|b| b.flush()) {
            // Tried again with the next one: the keys stay recorded in memory.
            let mut p = self.pending.lock().expect("checkpoint");
            if p.applied.is_none() {
                p.applied = applied;
            }
            for b in dirty {
                if !p.dirty.iter().any(|d| Arc::ptr_eq(d, &b)) {
                    p.dirty.push(b);
                }
            }
            return Err(e);
        }
        if let Some(applied) = applied {
            self.meta.insert(APPLIED, &applied.to_bytes())?;
            self.meta_db.flush()?;
        }
        Ok(())
    }
}
