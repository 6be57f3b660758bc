//! What the caller and the log hand each other: options, frames to append, checkpoints.

/// A segment takes no more events past this size (a bucket ends sooner when its time span is
/// over: the caller seals it).
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// A segment's sparse index has a point every this many bytes: a read finds a seq by reading
/// at most this much before it.
pub const INDEX_EVERY: u64 = 64 * 1024;
/// The largest frame body (dedup key and record) the log takes.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Written into every segment's header: a segment of another store is refused.
    pub store_id: [u8; 16],
    pub segment_bytes: u64,
    pub index_every: u64,
}

impl Options {
    pub fn new(store_id: [u8; 16]) -> Options {
        Options {
            store_id,
            segment_bytes: SEGMENT_BYTES,
            index_every: INDEX_EVERY,
        }
    }
}

/// One delivery to append.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub first_seq: u64,
    /// 1 for an entry; the element count for an array record.
    pub seq_count: u32,
    pub accepted_ms: u64,
    pub dedup_key: &'a [u8],
    /// The encoded entry or array record.
    pub record: &'a [u8],
}

/// Where a frame ended up: after an append, its last frame's. The caller records it as its
/// *applied* checkpoint once what it keeps beside the log (the dedup keys) is flushed, and
/// hands it back to [`EventLog::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The frame's last seq.
    pub seq: u64,
    /// Its segment's first seq.
    pub segment: u64,
    pub end_offset: u64,
    pub header_crc: u32,
}

impl Applied {
    /// Seq, segment, end offset (u64 BE each), header CRC (u32 BE): how the caller keeps it.
    pub fn to_bytes(self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.segment.to_be_bytes());
        out[16..24].copy_from_slice(&self.end_offset.to_be_bytes());
        out[24..].copy_from_slice(&self.header_crc.to_be_bytes());
        out
    }

    /// `None` unless `bytes` are what [`Applied::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Option<Applied> {
        let b: &[u8; 28] = bytes.try_into().ok()?;
        let word = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Applied {
            seq: word(0),
            segment: word(8),
            end_offset: word(16),
            header_crc: u32::from_be_bytes(b[24..].try_into().expect("4 bytes")),
        })
    }
}

/// What the caller knows of the log from elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known {
    /// Every seq from this one on must still be held (below it retention may have dropped
    /// them): the watermark's next seq, say.
    pub floor: u64,
    /// The last checkpoint recorded; `None` when there is none (every frame is then returned
    /// as unapplied).
    pub applied: Option<Applied>,
}

/// The seqs the log spans: `last_seq` is `first_seq - 1` when it holds none.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub first_seq: u64,
    pub last_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::Applied;

    #[test]
    fn a_checkpoint_reads_back_and_nothing_else_passes_for_one() {
        let a = Applied {
            seq: u64::MAX - 1,
            segment: 7,
            end_offset: 1 << 40,
            header_crc: 0xDEAD_BEEF,
        };
        assert_eq!(Applied::from_bytes(&a.to_bytes()), Some(a));
        let bytes = a.to_bytes();
        for len in [0, 8, 27, 29, 56] {
            let mut v = bytes.to_vec();
            v.resize(len, 0);
            assert_eq!(Applied::from_bytes(&v), None, "{len} bytes");
        }
    }
}
