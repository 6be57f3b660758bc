//! Reads: frames from a seq on, or accepted within a time window, found through each segment's
//! sparse index and checked as they are read. Seqs a read should have met and did not come
//! back as losses, so that the caller can stop before them and report them.

use std::sync::Arc;

use super::error::LogError;
#[cfg(test)]
use super::format::SEGMENT_HEADER_LEN;
use super::format::{Kind, Point};
use super::loss::{tidy, Cause, Loss};
use super::segment::Segment;
use super::walk::{step, Step, Window};

/// One frame as it was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub first_seq: u64,
    pub seq_count: u32,
    pub accepted_ms: u64,
    body: Vec<u8>,
    key_len: usize,
}

impl Stored {
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.seq_count) - 1
    }

    pub fn dedup_key(&self) -> &[u8] {
        &self.body[..self.key_len]
    }

    /// The encoded entry or array record.
    pub fn record(&self) -> &[u8] {
        &self.body[self.key_len..]
    }
}

/// What a read found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Read {
    /// In seq order.
    pub frames: Vec<Stored>,
    /// Seqs within the read's reach that no frame served (sorted).
    pub lost: Vec<Loss>,
}

/// Frames holding `seq` or later, at most `max`.
pub fn from_seq(segments: &[Arc<Segment>], seq: u64, max: usize) -> Result<Read, LogError> {
    let mut read = Read::default();
    let start = segments
        .partition_point(|s| s.first_seq <= seq)
        .saturating_sub(1);
    // Below the oldest segment is the retention's doing, not a loss.
    let mut expected = segments.get(start).map_or(seq, |s| s.first_seq.max(seq));
    // The segment before: a gap is its end's (as a start reports it).
    let mut before = None;
    for segment in &segments[start..] {
        if read.frames.len() >= max {
            break;
        }
        let state = segment.state().clone();
        let owner = before
            .replace(segment.first_seq)
            .unwrap_or(segment.first_seq);
        if state.last_seq < seq {
            continue;
        }
        if segment.first_seq > expected {
            read.lost
                .push(loss(owner, expected, segment.first_seq - 1, Cause::Missing));
        }
        let Some(point) = state.point_for_seq(seq) else {
            expected = expected.max(state.last_seq + 1);
            continue;
        };
        walk(segment, point, state.len, &mut read.lost, |frame| {
            if frame.last_seq() >= seq {
                read.frames.push(frame);
            }
            read.frames.len() < max
        })?;
        expected = expected.max(state.last_seq + 1);
    }
    read.lost = clip(read.lost, seq);
    Ok(read)
}

#[cfg(test)]
/// Frames accepted at `from_ms` or later and before `to_ms`, above `after_seq`, at most `max`.
/// The clock may have stepped back, so a segment is read from where its index proves that
/// every frame before is older.
pub fn window(
    segments: &[Arc<Segment>],
    from_ms: u64,
    to_ms: u64,
    after_seq: u64,
    max: usize,
) -> Result<Read, LogError> {
    let mut read = Read::default();
    for segment in segments {
        if read.frames.len() >= max {
            break;
        }
        let state = segment.state().clone();
        let outside = state.newest_ms < from_ms || state.oldest_ms >= to_ms;
        if state.last_seq <= after_seq || outside {
            continue;
        }
        let by_time = state.point_for_time(from_ms);
        let by_seq = state.point_for_seq(after_seq + 1);
        let Some(point) = by_time.into_iter().chain(by_seq).max_by_key(|p| p.offset) else {
            continue;
        };
        walk(segment, point, state.len, &mut read.lost, |frame| {
            let inside = (from_ms..to_ms).contains(&frame.accepted_ms);
            if inside && frame.last_seq() > after_seq {
                read.frames.push(frame);
            }
            read.frames.len() < max
        })?;
    }
    read.lost = clip(read.lost, after_seq + 1);
    Ok(read)
}

#[cfg(test)]
/// Every frame of every segment checked, none kept (`hlgate store check`): a start reads a
/// sealed segment before the checkpoint at its ends only.
pub fn verify(segments: &[Arc<Segment>]) -> Result<Vec<Loss>, LogError> {
    let mut lost = Vec::new();
    let mut before: Option<(u64, u64)> = None;
    for segment in segments {
        let state = segment.state().clone();
        if let Some((owner, last)) = before.filter(|&(_, last)| segment.first_seq > last + 1) {
            lost.push(loss(owner, last + 1, segment.first_seq - 1, Cause::Missing));
        }
        before = Some((segment.first_seq, state.last_seq));
        let start = Point {
            seq: segment.first_seq,
            offset: SEGMENT_HEADER_LEN as u64,
            newest_ms_before: 0,
        };
        walk(segment, start, state.len, &mut lost, |_| true)?;
    }
    Ok(tidy(lost))
}

/// Walks one segment from an index point to `len`, handing each whole frame to `take` while
/// it asks for more; what it should have met and did not goes to `lost`.
fn walk(
    segment: &Segment,
    point: Point,
    len: u64,
    lost: &mut Vec<Loss>,
    mut take: impl FnMut(Stored) -> bool,
) -> Result<(), LogError> {
    let last_seq = segment.state().last_seq;
    let mut w = Window::new(&*segment.file, len);
    let mut pos = point.offset;
    let mut expected = point.seq;
    let mut garbage = false;
    let cause = |garbage| {
        if garbage {
            Cause::Unreadable
        } else {
            Cause::Missing
        }
    };
    while let Some(s) = step(&mut w, pos).map_err(|e| LogError::io("reading a segment", e))? {
        let next = s.next();
        match s {
            Step::Frame { header, .. } | Step::BadBody { header, .. }
                if header.kind == Kind::Seal =>
            {
                break;
            }
            Step::Frame { header, .. } | Step::BadBody { header, .. }
                if header.first_seq < expected =>
            {
                garbage = true;
            }
            Step::Frame { header, body, .. } => {
                if header.first_seq > expected {
                    lost.push(loss(
                        segment.first_seq,
                        expected,
                        header.first_seq - 1,
                        cause(garbage),
                    ));
                }
                expected = header.last_seq() + 1;
                garbage = false;
                let frame = Stored {
                    first_seq: header.first_seq,
                    seq_count: header.seq_count,
                    accepted_ms: header.accepted_ms,
                    body: body.to_vec(),
                    key_len: usize::from(header.key_len),
                };
                if !take(frame) {
                    return Ok(());
                }
            }
            Step::BadBody { header, .. } => {
                if header.first_seq > expected {
                    lost.push(loss(
                        segment.first_seq,
                        expected,
                        header.first_seq - 1,
                        cause(garbage),
                    ));
                }
                lost.push(loss(
                    segment.first_seq,
                    header.first_seq,
                    header.last_seq(),
                    Cause::BadBody,
                ));
                expected = header.last_seq() + 1;
                garbage = false;
            }
            Step::Garbage { .. } => garbage = true,
            Step::Tail { .. } => break,
        }
        match next {
            Some(next) => pos = next,
            None => break,
        }
    }
    if last_seq >= expected {
        // Below the segment's durable length nothing is torn: what is not there is lost.
        lost.push(loss(
            segment.first_seq,
            expected,
            last_seq,
            Cause::Unreadable,
        ));
    }
    Ok(())
}

fn loss(segment: u64, first: u64, last: u64, cause: Cause) -> Loss {
    Loss {
        segment,
        first,
        last,
        cause,
    }
}

/// The losses from `from` on. A read that stops at `max` frames stops looking there too.
fn clip(lost: Vec<Loss>, from: u64) -> Vec<Loss> {
    let lost = lost
        .into_iter()
        .filter(|l| l.last >= from)
        .map(|l| Loss {
            first: l.first.max(from),
            ..l
        })
        .collect();
    tidy(lost)
}
