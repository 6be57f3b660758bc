//! The log's bytes on disk, little-endian throughout (ARCHITECTURE.md, "The event log's format").
//!
//! A segment is a [`SegmentHeader`] followed by frames. A frame is a fixed [`FrameHeader`] and a
//! body: for an events frame the dedup key and the encoded record, for the seal frame that ends
//! a segment its [`Seal`]. The header has a CRC of its own besides the body's, so that a torn
//! length never passes for a body that is only damaged, and zeros or garbage never parse.

/// Where a bucket's segment lives, inside the bucket's directory.
pub const SEGMENT_FILE: &str = "segment";

/// First bytes of a segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"HLGL";
pub const VERSION: u16 = 1;
/// Magic, version, flags, first seq, creation time, store id, CRC.
pub const SEGMENT_HEADER_LEN: usize = 4 + 2 + 2 + 8 + 8 + 16 + 4;

/// First bytes of every frame: not text, not zeros, so that neither starts a frame by chance.
pub const FRAME_MAGIC: [u8; 4] = [0xF7, 0x1A, 0x6C, 0x46];
/// Magic, kind, flags, key length, seq count, body length, first seq, acceptance time, body
/// CRC, header CRC.
pub const FRAME_HEADER_LEN: usize = 4 + 1 + 1 + 2 + 4 + 4 + 8 + 8 + 4 + 4;

/// The CRC used everywhere in the log: CRC-32 (IEEE), as `crc32fast` computes it with the
/// CPU's carry-less multiply; already what the bucket summaries use.
pub fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One delivery: its dedup key and its encoded entry or array record.
    Events = 1,
    /// The last frame of a segment that takes no more events.
    Seal = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_seq: u64,
    pub created_ms: u64,
    pub store_id: [u8; 16],
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..4].copy_from_slice(&SEGMENT_MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        // 6..8: flags, none yet.
        out[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.created_ms.to_le_bytes());
        out[24..40].copy_from_slice(&self.store_id);
        let crc = crc(&out[..40]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` unless `bytes` starts with an intact header of this version.
    pub fn decode(bytes: &[u8]) -> Option<SegmentHeader> {
        let b = bytes.get(..SEGMENT_HEADER_LEN)?;
        if b[0..4] != SEGMENT_MAGIC || crc(&b[..40]) != le32(&b[40..44]) {
            return None;
        }
        if u16::from_le_bytes([b[4], b[5]]) != VERSION {
            return None;
        }
        Some(SegmentHeader {
            first_seq: le64(&b[8..16]),
            created_ms: le64(&b[16..24]),
            store_id: b[24..40].try_into().expect("16 bytes"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: Kind,
    pub key_len: u16,
    /// 1..n for an events frame; 0 for a seal.
    pub seq_count: u32,
    pub body_len: u32,
    /// An events frame's first seq; for a seal, the seq after the segment's last.
    pub first_seq: u64,
    pub accepted_ms: u64,
    pub body_crc: u32,
    /// The CRC of the header bytes before it; what a checkpoint names a frame by.
    pub header_crc: u32,
}

impl FrameHeader {
    pub fn events(
        first_seq: u64,
        seq_count: u32,
        accepted_ms: u64,
        key: &[u8],
        record: &[u8],
    ) -> Self {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(key);
        hasher.update(record);
        FrameHeader {
            kind: Kind::Events,
            key_len: key.len() as u16,
            seq_count,
            body_len: (key.len() + record.len()) as u32,
            first_seq,
            accepted_ms,
            body_crc: hasher.finalize(),
            header_crc: 0,
        }
    }

    /// Its bytes, with the header CRC computed (and kept in `self`).
    pub fn encode(&mut self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..4].copy_from_slice(&FRAME_MAGIC);
        out[4] = self.kind as u8;
        // 5: flags, none yet.
        out[6..8].copy_from_slice(&self.key_len.to_le_bytes());
        out[8..12].copy_from_slice(&self.seq_count.to_le_bytes());
        out[12..16].copy_from_slice(&self.body_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.accepted_ms.to_le_bytes());
        out[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        self.header_crc = crc(&out[..36]);
        out[36..40].copy_from_slice(&self.header_crc.to_le_bytes());
        out
    }

    /// `None` unless `bytes` starts with a header whose magic and CRC check and whose fields
    /// make sense together (an events frame covers a seq and holds its key).
    pub fn decode(bytes: &[u8]) -> Option<FrameHeader> {
        let b = bytes.get(..FRAME_HEADER_LEN)?;
        if b[0..4] != FRAME_MAGIC || crc(&b[..36]) != le32(&b[36..40]) {
            return None;
        }
        let kind = match b[4] {
            1 => Kind::Events,
            2 => Kind::Seal,
            _ => return None,
        };
        let h = FrameHeader {
            kind,
            key_len: u16::from_le_bytes([b[6], b[7]]),
            seq_count: le32(&b[8..12]),
            body_len: le32(&b[12..16]),
            first_seq: le64(&b[16..24]),
            accepted_ms: le64(&b[24..32]),
            body_crc: le32(&b[32..36]),
            header_crc: le32(&b[36..40]),
        };
        let sane = match kind {
            Kind::Events => {
                h.seq_count > 0
                    && u32::from(h.key_len) <= h.body_len
                    && h.first_seq.checked_add(u64::from(h.seq_count)).is_some()
            }
            Kind::Seal => h.seq_count == 0 && h.first_seq > 0,
        };
        sane.then_some(h)
    }

    /// The whole frame's length on disk.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// Its last seq (an events frame's).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.seq_count) - 1
    }
}

/// A point of a segment's sparse index: a frame's first seq and offset, and the newest
/// acceptance time of the frames before it (the clock may step back, so time reads skip only
/// what this bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub seq: u64,
    pub offset: u64,
    pub newest_ms_before: u64,
}

/// The seal's body: what a start needs of a sealed segment without reading its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub last_seq: u64,
    pub frame_count: u64,
    /// The seal frame's offset: the bytes of the header and the events frames.
    pub length: u64,
    pub oldest_ms: u64,
    pub newest_ms: u64,
    pub points: Vec<Point>,
}

/// last seq, frame count, length, oldest and newest time, point count; then the points; then
/// the seal frame's whole length, last, so that a start finds the seal from the file's end.
const SEAL_FIXED: usize = 8 * 5 + 4;

impl Seal {
    /// The whole seal frame, header included.
    pub fn frame(&self, sealed_ms: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(SEAL_FIXED + 24 * self.points.len() + 4);
        for v in [
            self.last_seq,
            self.frame_count,
            self.length,
            self.oldest_ms,
            self.newest_ms,
        ] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&(self.points.len() as u32).to_le_bytes());
        for p in &self.points {
            for v in [p.seq, p.offset, p.newest_ms_before] {
                body.extend_from_slice(&v.to_le_bytes());
            }
        }
        let frame_len = (FRAME_HEADER_LEN + body.len() + 4) as u32;
        body.extend_from_slice(&frame_len.to_le_bytes());
        let mut header = FrameHeader {
            kind: Kind::Seal,
            key_len: 0,
            seq_count: 0,
            body_len: body.len() as u32,
            first_seq: self.last_seq + 1,
            accepted_ms: sealed_ms,
            body_crc: crc(&body),
            header_crc: 0,
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// `None` unless `body` (already checked against its CRC) is a whole seal.
    pub fn decode(body: &[u8]) -> Option<Seal> {
        let fixed = body.get(..SEAL_FIXED)?;
        let word = |i: usize| le64(&fixed[8 * i..8 * i + 8]);
        let count = le32(&fixed[40..44]) as usize;
        let points = body.get(SEAL_FIXED..SEAL_FIXED.checked_add(count.checked_mul(24)?)?)?;
        if body.len() != SEAL_FIXED + 24 * count + 4 {
            return None;
        }
        Some(Seal {
            last_seq: word(0),
            frame_count: word(1),
            length: word(2),
            oldest_ms: word(3),
            newest_ms: word(4),
            points: points
                .chunks_exact(24)
                .map(|p| Point {
                    seq: le64(&p[0..8]),
                    offset: le64(&p[8..16]),
                    newest_ms_before: le64(&p[16..24]),
                })
                .collect(),
        })
    }

    /// The seal frame's length as its last four bytes say.
    pub fn trailing_len(tail: &[u8; 4]) -> u64 {
        u64::from(u32::from_le_bytes(*tail))
    }
}

pub fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

pub fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_and_any_flipped_bit_fails_them() {
        let seg = SegmentHeader {
            first_seq: 7,
            created_ms: 1_700_000_000_000,
            store_id: [3; 16],
        };
        let bytes = seg.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(seg));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(SegmentHeader::decode(&b), None, "bit {bit}");
        }
        let mut frame = FrameHeader::events(7, 3, 1_700_000_000_000, b"key", b"record");
        let bytes = frame.encode();
        assert_eq!(FrameHeader::decode(&bytes), Some(frame));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(FrameHeader::decode(&b), None, "bit {bit}");
        }
        assert_eq!(FrameHeader::decode(&[0; FRAME_HEADER_LEN]), None);
    }

    #[test]
    fn a_header_whose_seqs_run_past_the_last_one_is_no_frame() {
        // Only a header written on purpose checks; a start must not overflow on it.
        let mut frame = FrameHeader::events(u64::MAX, 2, 0, b"k", b"");
        assert_eq!(FrameHeader::decode(&frame.encode()), None);
        let mut frame = FrameHeader::events(u64::MAX - 1, 1, 0, b"k", b"");
        assert!(FrameHeader::decode(&frame.encode()).is_some());
    }

    #[test]
    fn a_seal_reads_back_and_names_its_own_length_last() {
        let seal = Seal {
            last_seq: 99,
            frame_count: 40,
            length: 12_345,
            oldest_ms: 5,
            newest_ms: 9,
            points: vec![Point {
                seq: 1,
                offset: 44,
                newest_ms_before: 0,
            }],
        };
        let frame = seal.frame(10);
        let header = FrameHeader::decode(&frame).unwrap();
        assert_eq!((header.kind, header.first_seq), (Kind::Seal, 100));
        assert_eq!(header.frame_len(), frame.len() as u64);
        let tail: [u8; 4] = frame[frame.len() - 4..].try_into().unwrap();
        assert_eq!(Seal::trailing_len(&tail), frame.len() as u64);
        assert_eq!(Seal::decode(&frame[FRAME_HEADER_LEN..]), Some(seal));
    }
}
