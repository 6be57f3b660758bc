//! Appending: a commit's frames in one write and one fdatasync, a new segment made durable
//! before it takes a frame, a full disk cut back, a failed fsync the end of writing.

use std::sync::Arc;

use super::error::LogError;
use super::format::{FrameHeader, SegmentHeader};
use super::segment::Segment;
use super::terms::{Applied, Frame, MAX_BODY};
use super::{EventLog, Writer};

impl EventLog {
    /// Appends one commit's frames, which continue the log's seqs, with one write and one
    /// fdatasync: when it returns `Ok` they are on disk. A new segment (the first, or after
    /// the active one reached `Options::segment_bytes`) is on disk, header and directory
    /// entry, before any frame goes into it.
    pub fn append(&self, frames: &[Frame<'_>]) -> Result<Applied, LogError> {
        let mut w = self.writer();
        if w.stopped {
            return Err(LogError::Stopped);
        }
        let first = frames.first().ok_or(LogError::Invalid("an empty batch"))?;
        let mut expected = w.next_seq;
        for f in frames {
            if f.first_seq != expected {
                return Err(LogError::OutOfOrder {
                    expected,
                    got: f.first_seq,
                });
            }
            check(f)?;
            expected = f.first_seq + u64::from(f.seq_count);
        }
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        // (first seq, last seq, acceptance time, offset in the batch) of each frame.
        let mut placed = Vec::with_capacity(frames.len());
        let mut last_crc = 0;
        for f in frames {
            let mut header = FrameHeader::events(
                f.first_seq,
                f.seq_count,
                f.accepted_ms,
                f.dedup_key,
                f.record,
            );
            placed.push((
                f.first_seq,
                header.last_seq(),
                f.accepted_ms,
                buf.len() as u64,
            ));
            buf.extend_from_slice(&header.encode());
            buf.extend_from_slice(f.dedup_key);
            buf.extend_from_slice(f.record);
            last_crc = header.header_crc;
        }
        let result = self.write_batch(&mut w, &buf, first, &placed);
        w.buf = buf;
        let (segment, end) = result?;
        w.next_seq = expected;
        Ok(Applied {
            seq: expected - 1,
            segment,
            end_offset: end,
            header_crc: last_crc,
        })
    }

    fn write_batch(
        &self,
        w: &mut Writer,
        buf: &[u8],
        first: &Frame<'_>,
        placed: &[(u64, u64, u64, u64)],
    ) -> Result<(u64, u64), LogError> {
        let segment = self.segment_for(w, buf.len() as u64, first)?;
        let start = segment.state().len;
        write_synced(w, &segment, buf, "appending events")?;
        let index_every = self.options.index_every;
        segment.update(|s| {
            for &(first, last, ms, at) in placed {
                s.add(first, last, ms, start + at, index_every);
            }
            s.len = start + buf.len() as u64;
        });
        Ok((segment.first_seq, start + buf.len() as u64))
    }

    /// The segment a batch of `bytes` starting with `first` goes into.
    fn segment_for(
        &self,
        w: &mut Writer,
        bytes: u64,
        first: &Frame<'_>,
    ) -> Result<Arc<Segment>, LogError> {
        if let Some(active) = &w.active {
            let state = active.state();
            let full = state.holds_any() && state.len + bytes > self.options.segment_bytes;
            if !full {
                return Ok(active.clone());
            }
            drop(state);
            self.seal_active(w, first.accepted_ms)?;
        }
        let header = SegmentHeader {
            first_seq: first.first_seq,
            created_ms: first.accepted_ms,
            store_id: self.options.store_id,
        };
        let segment = match Segment::create(&*self.fs, &self.dir, header) {
            Ok(segment) => Arc::new(segment),
            Err(e) => {
                w.stopped |= matches!(e, LogError::Broken { .. });
                return Err(e);
            }
        };
        self.segments
            .write()
            .expect("log segments")
            .push(segment.clone());
        w.active = Some(segment.clone());
        Ok(segment)
    }

    /// Ends the active segment (if it holds frames): the next append starts a new one. The
    /// caller seals when its bucket's time span is over.
    pub fn seal(&self, now_ms: u64) -> Result<(), LogError> {
        let mut w = self.writer();
        if w.stopped {
            return Err(LogError::Stopped);
        }
        if w.active.as_ref().is_some_and(|a| a.state().holds_any()) {
            self.seal_active(&mut w, now_ms)?;
        }
        Ok(())
    }

    fn seal_active(&self, w: &mut Writer, now_ms: u64) -> Result<(), LogError> {
        let Some(active) = w.active.clone() else {
            return Ok(());
        };
        let frame = active.seal_frame(now_ms);
        write_synced(w, &active, &frame, "sealing a segment")?;
        active.update(|s| {
            s.len += frame.len() as u64;
            s.sealed = true;
        });
        w.active = None;
        Ok(())
    }
}

fn check(f: &Frame<'_>) -> Result<(), LogError> {
    if f.seq_count == 0 {
        return Err(LogError::Invalid("a frame of no seqs"));
    }
    if f.dedup_key.len() > usize::from(u16::MAX) {
        return Err(LogError::Invalid("a dedup key over 64 KiB"));
    }
    if f.dedup_key.len() + f.record.len() > MAX_BODY {
        return Err(LogError::Invalid("a frame over 64 MiB"));
    }
    Ok(())
}

/// Appends `bytes` to `segment` and fdatasyncs it. A failed write is cut back to where it
/// began (the log goes on); a failed fsync, or a cut that fails, stops the log for good: the
/// page cache may have dropped what it failed to write, so a retry could pass over a hole.
fn write_synced(
    w: &mut Writer,
    segment: &Segment,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), LogError> {
    let start = segment.state().len;
    if let Err(e) = segment.file.append(bytes) {
        if let Err(cut) = segment.file.set_len(start) {
            w.stopped = true;
            return Err(LogError::broken("cutting a failed write back", cut));
        }
        return Err(LogError::write(what, e));
    }
    if let Err(e) = segment.file.sync_data() {
        w.stopped = true;
        return Err(LogError::broken("fdatasync of a segment", e));
    }
    Ok(())
}
