//! A start's work on the event log: open it against the checkpoint, take the buckets' bounds
//! from their segments, record again the dedup keys of the frames past the checkpoint, and
//! report what the log lost.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;

use super::bucket::WithKeys;
use super::damage::Ledger;
use super::error::StoreError;
use super::keys::key_hash;
use super::keys::DedupRecord;
use super::layout::{APPLIED, STORE_ID};
use super::log::{store_id_of, Applied, EventLog, Known, LogFs, Options, Recovered};

/// Opens the log in `events_dir`. `opened` are the buckets a start found (oldest first): the
/// logged ones take their bounds from their segments, and gain the keys of the frames past the
/// checkpoint. `published` is the watermark.
pub(super) fn open_log(
    fs: Arc<dyn LogFs>,
    meta: &sled::Tree,
    events_dir: &Path,
    opened: &mut [WithKeys],
    published: u64,
) -> Result<(Arc<EventLog>, Recovered), StoreError> {
    let applied = meta.get(APPLIED)?.and_then(|v| Applied::from_bytes(&v));
    // The seqs of buckets written before the log are not the log's to hold.
    let older = opened
        .iter()
        .filter(|(b, _)| !b.is_logged())
        .map(|(b, _)| b.last_seq())
        .max()
        .unwrap_or(0);
    let known = Known {
        floor: (published + 1).max(older + 1),
        applied,
    };
    let mut options = Options::new(store_id(meta, events_dir)?);
    // A bucket ends its segment (rotation), not the log: a segment per bucket.
    options.segment_bytes = u64::MAX;
    let (log, recovered) = EventLog::open(fs, events_dir, options, known)?;
    let segments = log.segments();
    for (bucket, _) in opened.iter().filter(|(b, _)| b.is_logged()) {
        if let Some(s) = segments.iter().find(|s| s.first_seq == bucket.first_seq) {
            let opened_ms = s.oldest_ms.unwrap_or(s.created_ms);
            bucket.set_bounds(s.last_seq, opened_ms, s.newest_ms.unwrap_or(opened_ms));
        }
    }
    record_unapplied(opened, &recovered)?;
    // A bucket from disk takes no more events: the next start reads its summary.
    for (bucket, hashes) in opened.iter_mut().filter(|(b, _)| b.is_logged()) {
        hashes.sort_unstable();
        hashes.dedup();
        bucket.write_summary(hashes);
    }
    if recovered.cut_bytes > 0 {
        tracing::info!(
            bytes = recovered.cut_bytes,
            "cut a torn write from the end of the event log (never acknowledged)"
        );
    }
    for segment in &recovered.bad_headers {
        tracing::warn!(
            segment,
            "a log segment's header is damaged; its frames are still read"
        );
    }
    Ok((Arc::new(log), recovered))
}

/// Records in the buckets' databases the dedup keys of the frames written after the last
/// checkpoint: they were fsynced, so they may have been acknowledged.
fn record_unapplied(opened: &mut [WithKeys], recovered: &Recovered) -> Result<(), StoreError> {
    let mut at = 0;
    let mut keys: Vec<(Vec<u8>, DedupRecord)> = Vec::new();
    let flush = |(bucket, hashes): &mut WithKeys, keys: &mut Vec<(Vec<u8>, DedupRecord)>| {
        if keys.is_empty() {
            return Ok::<(), StoreError>(());
        }
        bucket.record_keys(keys)?;
        bucket.flush()?;
        bucket.close();
        hashes.extend(keys.drain(..).map(|(k, _)| key_hash(&k)));
        Ok(())
    };
    for w in recovered
        .unapplied
        .iter()
        .filter(|w| !w.dedup_key.is_empty())
    {
        let owner = opened
            .iter()
            .rposition(|(b, _)| b.first_seq <= w.first_seq)
            .unwrap_or(0);
        if owner != at {
            if let Some(bucket) = opened.get_mut(at) {
                flush(bucket, &mut keys)?;
            }
            at = owner;
        }
        // A delivery of several frames carries its key on its last: its seqs are that frame's.
        let record = DedupRecord {
            accepted_ms: w.accepted_ms,
            seqs: Some((w.first_seq, w.seq_count)),
        };
        keys.push((w.dedup_key.clone(), record));
    }
    if let Some(bucket) = opened.get_mut(at) {
        flush(bucket, &mut keys)?;
    }
    Ok(())
}

/// Reports what the log cannot serve to the ledger, after the start's own report: loss is
/// never silent.
pub(super) fn report(recovered: &Recovered, ledger: &Ledger) {
    for loss in &recovered.lost {
        tracing::error!(%loss, "the event log cannot serve accepted events");
        ledger.found(loss.segment, loss.first, loss.last);
    }
}

/// The store's id, written into every segment's header: made once, kept in `meta`. A main
/// database without one (new, or made anew after it was lost) takes the segments' id.
fn store_id(meta: &sled::Tree, events_dir: &Path) -> Result<[u8; 16], StoreError> {
    let kept = meta.get(STORE_ID)?;
    if let Some(id) = kept.and_then(|v| <[u8; 16]>::try_from(&*v).ok()) {
        return Ok(id);
    }
    let id = store_id_of(events_dir).unwrap_or_else(new_id);
    meta.insert(STORE_ID, &id)?;
    // Durable before any segment carries it.
    meta.flush()?;
    Ok(id)
}

/// Unique, not secret: two hashes seeded by the process's random keys, over the time and pid.
fn new_id() -> [u8; 16] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&RandomState::new().hash_one(now).to_le_bytes());
    let pid = RandomState::new().hash_one(std::process::id());
    id[8..].copy_from_slice(&pid.to_le_bytes());
    id
}
