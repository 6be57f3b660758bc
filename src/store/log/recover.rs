//! A start: the segments found, each checked, the chain of their seqs, the caller's checkpoint
//! against what is on disk, and a torn tail cut. Everything lost is reported.
//!
//! A sealed segment before the checkpoint's is read at its two ends only (header and seal); the
//! others are scanned whole, frame by frame, since the frames past the checkpoint are needed
//! and the newest may end in a torn write.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::error::LogError;
use super::format::{
    crc, FrameHeader, Kind, Seal, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::fs::{LogFs, SegmentFile};
use super::loss::{tidy, Cause, Loss, Recovered, Written};
use super::segment::{Segment, State};
use super::terms::{Applied, Known, Options};
use super::walk::{step, Step, Window};
use crate::store::layout::parse_bucket_name;

const HEADER_LEN: u64 = SEGMENT_HEADER_LEN as u64;

pub struct Opened {
    pub segments: Vec<Arc<Segment>>,
    /// The newest segment, unless it is sealed.
    pub active: Option<Arc<Segment>>,
    pub next_seq: u64,
    pub recovered: Recovered,
}

pub fn open(
    fs: &dyn LogFs,
    root: &Path,
    options: &Options,
    known: Known,
) -> Result<Opened, LogError> {
    let io = |what| move |e| LogError::io(what, e);
    fs.create_dir(root)
        .map_err(io("creating the log's directory"))?;
    let mut firsts: Vec<u64> = fs
        .list(root)
        .map_err(io("listing the segments"))?
        .iter()
        .filter_map(|name| match parse_bucket_name(name) {
            Some((first, "")) => Some(first),
            _ => None,
        })
        .collect();
    firsts.sort_unstable();
    // A directory whose segment is gone still says that seqs from its name on were handed out.
    let newest_dir = firsts.last().copied().unwrap_or(0);
    let mut files = Vec::new();
    for first in firsts {
        let (_, path) = Segment::path(root, first);
        match fs.open(&path) {
            Ok(file) => files.push((first, file)),
            // Left by a removal or a creation, or damage: the chain of seqs tells.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("opening a segment", e)),
        }
    }

    let mut report = Recovered::default();
    let mut lost = Vec::new();
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    let mut checkpoint_seen = false;
    let count = files.len();
    for (i, (first, file)) in files.into_iter().enumerate() {
        let newest = i + 1 == count;
        let (dir, path) = Segment::path(root, first);
        let len = file.len().map_err(io("reading a segment's length"))?;
        let created_ms = match read_header(&*file, len)? {
            Some(h) if h.store_id != options.store_id => {
                return Err(LogError::Foreign { segment: first })
            }
            Some(h) if h.first_seq == first => h.created_ms,
            _ if newest && len <= HEADER_LEN => {
                // A creation cut short: its header was never synced, so nothing followed it.
                drop(file);
                fs.remove_file(&path)
                    .map_err(io("removing a segment left unfinished"))?;
                fs.sync_dir(&dir)
                    .map_err(io("syncing a segment's directory"))?;
                continue;
            }
            _ => {
                report.bad_headers.push(first);
                0
            }
        };
        let before_checkpoint = known.applied.is_some_and(|a| first < a.segment);
        let sealed = if before_checkpoint && !newest {
            sealed_state(&*file, first, len)?
        } else {
            None
        };
        let state = match sealed {
            Some(state) => state,
            None => {
                let scan = scan(&*file, first, len, options.index_every, known.applied)?;
                lost.extend(scan.lost);
                report.unapplied.extend(scan.unapplied);
                checkpoint_seen |= scan.checkpoint_seen;
                if let Some(tail) = scan.tail.filter(|_| newest && !scan.state.sealed) {
                    file.set_len(tail).map_err(io("cutting a torn tail"))?;
                    file.sync_data().map_err(|e| {
                        LogError::broken("syncing a segment after cutting its tail", e)
                    })?;
                    report.cut_bytes += len - tail;
                }
                scan.state
            }
        };
        segments.push(Arc::new(Segment::new(first, dir, created_ms, file, state)));
    }

    let floor = known.floor.max(1);
    if let Some(oldest) = segments.first().filter(|s| s.first_seq > floor) {
        lost.push(missing(
            oldest.first_seq,
            floor,
            oldest.first_seq - 1,
            Cause::Missing,
        ));
    }
    for pair in segments.windows(2) {
        let last = pair[0].state().last_seq;
        if pair[1].first_seq > last + 1 {
            lost.push(missing(
                pair[0].first_seq,
                last + 1,
                pair[1].first_seq - 1,
                Cause::Missing,
            ));
        }
    }
    let high = segments.last().map_or(0, |s| s.state().last_seq);
    if let Some(a) = known.applied {
        let from = (high + 1).max(floor);
        if a.seq >= from {
            lost.push(missing(a.segment, from, a.seq, Cause::Truncated));
        } else if !checkpoint_seen && a.seq >= floor {
            // Reported unless a loss found above already covers it.
            lost.push(missing(a.segment, a.seq, a.seq, Cause::Replaced));
        }
    }
    report.lost = tidy(lost);
    let applied_seq = known.applied.map_or(0, |a| a.seq);
    let next_seq = high
        .max(applied_seq)
        .max(floor - 1)
        .max(newest_dir.saturating_sub(1))
        + 1;
    let active = segments.last().filter(|s| !s.state().sealed).cloned();
    Ok(Opened {
        segments,
        active,
        next_seq,
        recovered: report,
    })
}

fn missing(segment: u64, first: u64, last: u64, cause: Cause) -> Loss {
    Loss {
        segment,
        first,
        last,
        cause,
    }
}

fn read_header(file: &dyn SegmentFile, len: u64) -> Result<Option<SegmentHeader>, LogError> {
    if len < HEADER_LEN {
        return Ok(None);
    }
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| LogError::io("reading a segment's header", e))?;
    Ok(SegmentHeader::decode(&bytes))
}

/// What a sealed segment holds, from its seal alone; `None` unless the seal is intact and ends
/// the file.
fn sealed_state(file: &dyn SegmentFile, first: u64, len: u64) -> Result<Option<State>, LogError> {
    let read = |buf: &mut [u8], at| {
        file.read_exact_at(buf, at)
            .map_err(|e| LogError::io("reading a segment's seal", e))
    };
    if len < HEADER_LEN + FRAME_HEADER_LEN as u64 + 4 {
        return Ok(None);
    }
    let mut tail = [0u8; 4];
    read(&mut tail, len - 4)?;
    let size = Seal::trailing_len(&tail);
    if size < FRAME_HEADER_LEN as u64 + 4 || size > len - HEADER_LEN {
        return Ok(None);
    }
    let mut bytes = vec![0u8; size as usize];
    read(&mut bytes, len - size)?;
    let Some(header) = FrameHeader::decode(&bytes) else {
        return Ok(None);
    };
    let body = &bytes[FRAME_HEADER_LEN..];
    if header.kind != Kind::Seal || header.frame_len() != size || crc(body) != header.body_crc {
        return Ok(None);
    }
    let Some(seal) = Seal::decode(body) else {
        return Ok(None);
    };
    let follows = seal.last_seq.checked_add(1) == Some(header.first_seq);
    if seal.length != len - size || !follows || header.first_seq < first {
        return Ok(None);
    }
    Ok(Some(State {
        len,
        last_seq: seal.last_seq,
        frames: seal.frame_count,
        oldest_ms: seal.oldest_ms,
        newest_ms: seal.newest_ms,
        points: seal.points,
        sealed: true,
    }))
}

struct Scan {
    state: State,
    lost: Vec<Loss>,
    unapplied: Vec<Written>,
    /// Where the bytes that hold no whole frame begin, when nothing valid follows them.
    tail: Option<u64>,
    /// The checkpoint's frame was found where it was written.
    checkpoint_seen: bool,
}

/// Reads a segment frame by frame.
fn scan(
    file: &dyn SegmentFile,
    first: u64,
    len: u64,
    index_every: u64,
    applied: Option<Applied>,
) -> Result<Scan, LogError> {
    let mut out = Scan {
        state: State::empty(first),
        lost: Vec::new(),
        unapplied: Vec::new(),
        tail: None,
        checkpoint_seen: false,
    };
    let applied_seq = applied.map_or(0, |a| a.seq);
    let mut w = Window::new(file, len);
    let mut pos = HEADER_LEN;
    let mut expected = first;
    // Whether unreadable bytes came since the last frame: a gap after them is their doing.
    let mut garbage = false;
    let gap = |lost: &mut Vec<Loss>, expected: u64, upto: u64, garbage: bool| {
        if upto > expected {
            let cause = if garbage {
                Cause::Unreadable
            } else {
                Cause::Missing
            };
            lost.push(missing(first, expected, upto - 1, cause));
        }
    };
    while let Some(s) = step(&mut w, pos).map_err(|e| LogError::io("reading a segment", e))? {
        let next = s.next();
        let (offset, header, body) = match s {
            Step::Frame {
                offset,
                header,
                body,
            } => (offset, header, Some(body)),
            Step::BadBody { offset, header } => (offset, header, None),
            Step::Garbage { to } => {
                garbage = true;
                pos = to;
                continue;
            }
            Step::Tail { from } => {
                out.tail = Some(from);
                break;
            }
        };
        let end = offset + header.frame_len();
        if header.kind == Kind::Seal {
            // Its header names the seq after the segment's last, whether its body reads or not.
            gap(&mut out.lost, expected, header.first_seq, garbage);
            out.state.last_seq = out.state.last_seq.max(header.first_seq - 1);
            out.state.sealed = true;
            out.state.len = end;
            break;
        }
        if header.first_seq < expected {
            // A frame of seqs already held: not part of this segment's chain.
            garbage = true;
            pos = end;
            continue;
        }
        gap(&mut out.lost, expected, header.first_seq, garbage);
        let (first_seq, last_seq) = (header.first_seq, header.last_seq());
        match body {
            Some(body) => {
                out.state
                    .add(first_seq, last_seq, header.accepted_ms, offset, index_every);
                if last_seq > applied_seq {
                    out.unapplied.push(Written {
                        first_seq,
                        seq_count: header.seq_count,
                        accepted_ms: header.accepted_ms,
                        dedup_key: body[..usize::from(header.key_len)].to_vec(),
                    });
                }
            }
            None => {
                out.lost
                    .push(missing(first, first_seq, last_seq, Cause::BadBody));
                out.state.frames += 1;
                out.state.last_seq = last_seq;
            }
        }
        out.checkpoint_seen |= applied.is_some_and(|a| {
            a.segment == first
                && a.end_offset == end
                && a.header_crc == header.header_crc
                && a.seq == last_seq
        });
        expected = last_seq + 1;
        garbage = false;
        out.state.len = end;
        pos = next.expect("a frame has an end");
    }
    Ok(out)
}
