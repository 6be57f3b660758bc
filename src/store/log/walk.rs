//! Walking a segment's frames, for a start and for reads alike: what is a whole frame, what is
//! damage with frames after it, and what is a tail that nothing follows.

use std::io;

use super::format::{crc, FrameHeader, FRAME_HEADER_LEN, FRAME_MAGIC};
use super::fs::SegmentFile;

/// How much of a segment is read at once: many frames per read, and one buffer.
const CHUNK: usize = 256 * 1024;
const HEADER: u64 = FRAME_HEADER_LEN as u64;

/// The bytes of a segment file up to `end`, read a chunk at a time.
pub struct Window<'f> {
    file: &'f dyn SegmentFile,
    end: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'f> Window<'f> {
    pub fn new(file: &'f dyn SegmentFile, end: u64) -> Window<'f> {
        Window {
            file,
            end,
            start: 0,
            buf: Vec::new(),
        }
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    /// `len` bytes at `offset`; `None` if they run past the end.
    pub fn get(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let Some(stop) = offset.checked_add(len as u64).filter(|&s| s <= self.end) else {
            return Ok(None);
        };
        let held = self.start + self.buf.len() as u64;
        if offset < self.start || stop > held {
            let n = (self.end - offset).min(len.max(CHUNK) as u64) as usize;
            self.buf.resize(n, 0);
            self.start = offset;
            if let Err(e) = self.file.read_exact_at(&mut self.buf, offset) {
                self.buf.clear();
                return Err(e);
            }
        }
        let from = (offset - self.start) as usize;
        Ok(Some(&self.buf[from..from + len]))
    }
}

/// What the bytes at a position are.
pub enum Step<'a> {
    /// A frame whose header and body check.
    Frame {
        offset: u64,
        header: FrameHeader,
        body: &'a [u8],
    },
    /// A whole frame whose header checks and whose body does not: its seqs are known and lost.
    BadBody { offset: u64, header: FrameHeader },
    /// Bytes that hold no frame, up to a whole frame at `to`.
    Garbage { to: u64 },
    /// From `from` to the end no whole frame starts: an incomplete frame, zeros, garbage.
    Tail { from: u64 },
}

impl Step<'_> {
    /// Where the next step starts (none after a tail).
    pub fn next(&self) -> Option<u64> {
        match self {
            Step::Frame { offset, header, .. } | Step::BadBody { offset, header } => {
                Some(offset + header.frame_len())
            }
            Step::Garbage { to, .. } => Some(*to),
            Step::Tail { .. } => None,
        }
    }
}

/// What is at `pos`; `None` at the end.
pub fn step<'w>(w: &'w mut Window<'_>, pos: u64) -> io::Result<Option<Step<'w>>> {
    if pos >= w.end() {
        return Ok(None);
    }
    match whole_frame_at(w, pos)? {
        Some(header) => {
            let body = w
                .get(pos + HEADER, header.body_len as usize)?
                .expect("a whole frame is within the end");
            Ok(Some(if crc(body) == header.body_crc {
                Step::Frame {
                    offset: pos,
                    header,
                    body,
                }
            } else {
                Step::BadBody {
                    offset: pos,
                    header,
                }
            }))
        }
        None => Ok(Some(match resync(w, pos + 1)? {
            Some(to) => Step::Garbage { to },
            None => Step::Tail { from: pos },
        })),
    }
}

/// The header at `pos` if it checks and its frame ends within the end. A header that checks
/// over a frame running past the end is a torn write: its length is right (the CRC covers it),
/// so no other frame can start inside it.
fn whole_frame_at(w: &mut Window<'_>, pos: u64) -> io::Result<Option<FrameHeader>> {
    let end = w.end();
    Ok(w.get(pos, FRAME_HEADER_LEN)?
        .and_then(FrameHeader::decode)
        .filter(|h| pos + h.frame_len() <= end))
}

/// The first whole frame at or after `from`: a magic under a header that checks.
fn resync(w: &mut Window<'_>, from: u64) -> io::Result<Option<u64>> {
    let end = w.end();
    let mut p = from;
    while p + HEADER <= end {
        let n = (end - p).min(CHUNK as u64) as usize;
        let bytes = w.get(p, n)?.expect("within the end");
        let candidates: Vec<u64> = bytes
            .windows(FRAME_MAGIC.len())
            .enumerate()
            .filter(|(_, b)| *b == FRAME_MAGIC)
            .map(|(i, _)| p + i as u64)
            .collect();
        for c in candidates {
            if whole_frame_at(w, c)?.is_some() {
                return Ok(Some(c));
            }
        }
        // A magic across the chunk's end is looked at again from the next chunk.
        p += (n - (FRAME_MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}
