//! A sealed segment's lookup rows on disk: the `index` file beside its `segment`, written once
//! when the segment is sealed, without an fsync: one that a crash tore or that damage changed
//! fails its CRCs and is built again from the segment (ARCHITECTURE.md, "The lookup index").
//!
//! Little-endian throughout, CRC-32 (IEEE) as in the event log:
//!
//! | bytes | |
//! | --- | --- |
//! | 0..4, 4..6, 6..8 | magic `HLGX`, version (1), flags (0) |
//! | 8..16, 16..24 | first seq, row count (one row per seq from the first) |
//! | 24..28, 28..32 | how many distinct tenant tags, distinct type tags |
//! | 32..40 | the segment's length when the rows were made: another length makes them stale |
//! | 40..44, 44..48 | CRC of the tag section, CRC of bytes 0..44 |
//!
//! Then the tag section (the distinct tenant tags, then the distinct type tags, sorted, u32
//! each), which a query reads alone to pass over a segment that holds neither; then the rows
//! (acceptance time u64, tenant tag u32, type tag u32; a time of `u64::MAX` for a seq the
//! segment cannot serve); then the CRC of the rows (u32).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::rows::Row;

/// The file's name in a bucket's directory.
pub const INDEX_FILE: &str = "index";
const MAGIC: [u8; 4] = *b"HLGX";
const VERSION: u16 = 1;
pub const HEAD_LEN: usize = 48;
const ROW_LEN: usize = 16;

/// The distinct tags a segment's rows hold, sorted: whether it can hold a match at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub tenants: Vec<u32>,
    pub kinds: Vec<u32>,
}

impl Tags {
    pub fn of(rows: &[Row]) -> Tags {
        let sorted = |mut v: Vec<u32>| {
            v.sort_unstable();
            v.dedup();
            v
        };
        let held = || rows.iter().filter(|r| !r.is_none());
        Tags {
            tenants: sorted(held().map(|r| r.tenant).collect()),
            kinds: sorted(held().map(|r| r.kind).collect()),
        }
    }

    /// Whether a row with these tags may be here (`None`: any).
    pub fn may_hold(&self, tenant: Option<u32>, kind: Option<u32>) -> bool {
        tenant.is_none_or(|t| self.tenants.binary_search(&t).is_ok())
            && kind.is_none_or(|k| self.kinds.binary_search(&k).is_ok())
    }
}

/// What the head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub first_seq: u64,
    pub rows: u64,
    tenants: u32,
    kinds: u32,
    pub segment_len: u64,
    tags_crc: u32,
}

impl Head {
    fn tags_len(&self) -> usize {
        4 * (self.tenants as usize + self.kinds as usize)
    }
}

pub fn path(bucket_dir: &Path) -> PathBuf {
    bucket_dir.join(INDEX_FILE)
}

/// The whole file for `rows` (row 0 is `first_seq`'s) of a segment `segment_len` long.
pub fn encode(first_seq: u64, segment_len: u64, rows: &[Row]) -> Vec<u8> {
    let tags = Tags::of(rows);
    let mut tag_bytes = Vec::with_capacity(4 * (tags.tenants.len() + tags.kinds.len()));
    for t in tags.tenants.iter().chain(&tags.kinds) {
        tag_bytes.extend_from_slice(&t.to_le_bytes());
    }
    let mut out = Vec::with_capacity(HEAD_LEN + tag_bytes.len() + ROW_LEN * rows.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    out.extend_from_slice(&(tags.tenants.len() as u32).to_le_bytes());
    out.extend_from_slice(&(tags.kinds.len() as u32).to_le_bytes());
    out.extend_from_slice(&segment_len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&tag_bytes).to_le_bytes());
    let head_crc = crc32fast::hash(&out[..44]);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&tag_bytes);
    let rows_at = out.len();
    for r in rows {
        out.extend_from_slice(&r.ms.to_le_bytes());
        out.extend_from_slice(&r.tenant.to_le_bytes());
        out.extend_from_slice(&r.kind.to_le_bytes());
    }
    let rows_crc = crc32fast::hash(&out[rows_at..]);
    out.extend_from_slice(&rows_crc.to_le_bytes());
    out
}

/// The head, if its magic, version and CRC check.
pub fn decode_head(bytes: &[u8]) -> Option<Head> {
    let b = bytes.get(..HEAD_LEN)?;
    let le32 = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let le64 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if b[..4] != MAGIC || crc32fast::hash(&b[..44]) != le32(44) {
        return None;
    }
    if u16::from_le_bytes([b[4], b[5]]) != VERSION {
        return None;
    }
    Some(Head {
        first_seq: le64(8),
        rows: le64(16),
        tenants: le32(24),
        kinds: le32(28),
        segment_len: le64(32),
        tags_crc: le32(40),
    })
}

/// The tag section that follows the head in `bytes`, if its CRC checks.
pub fn decode_tags(head: &Head, bytes: &[u8]) -> Option<Tags> {
    let section = bytes.get(HEAD_LEN..HEAD_LEN + head.tags_len())?;
    if crc32fast::hash(section) != head.tags_crc {
        return None;
    }
    let words: Vec<u32> = section
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
        .collect();
    let (tenants, kinds) = words.split_at(head.tenants as usize);
    Some(Tags {
        tenants: tenants.to_vec(),
        kinds: kinds.to_vec(),
    })
}

/// The rows of a whole file, if they and their CRC are all there.
pub fn decode_rows(head: &Head, bytes: &[u8]) -> Option<Vec<Row>> {
    let at = HEAD_LEN + head.tags_len();
    let len = usize::try_from(head.rows).ok()?.checked_mul(ROW_LEN)?;
    let rows = bytes.get(at..at.checked_add(len)?)?;
    let crc = bytes.get(at + len..)?;
    if crc.len() != 4 || crc32fast::hash(rows) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    Some(
        rows.chunks_exact(ROW_LEN)
            .map(|r| Row {
                ms: u64::from_le_bytes(r[..8].try_into().expect("8 bytes")),
                tenant: u32::from_le_bytes(r[8..12].try_into().expect("4 bytes")),
                kind: u32::from_le_bytes(r[12..16].try_into().expect("4 bytes")),
            })
            .collect(),
    )
}

/// The head and tags of the file in `bucket_dir`, read without its rows; `None` when it is
/// missing, damaged, or not for `first_seq` and a segment `segment_len` long.
pub fn read_tags(bucket_dir: &Path, first_seq: u64, segment_len: u64) -> Option<(Head, Tags)> {
    let mut file = std::fs::File::open(path(bucket_dir)).ok()?;
    let mut head = [0u8; HEAD_LEN];
    file.read_exact(&mut head).ok()?;
    let h = decode_head(&head).filter(|h| h.first_seq == first_seq)?;
    if h.segment_len != segment_len {
        return None;
    }
    let mut bytes = head.to_vec();
    bytes.resize(HEAD_LEN + h.tags_len(), 0);
    file.read_exact(&mut bytes[HEAD_LEN..]).ok()?;
    Some((h, decode_tags(&h, &bytes)?))
}

/// The rows of the file in `bucket_dir`, under the same conditions as [`read_tags`].
pub fn read_rows(bucket_dir: &Path, first_seq: u64, segment_len: u64) -> Option<Vec<Row>> {
    let bytes = std::fs::read(path(bucket_dir)).ok()?;
    let h = decode_head(&bytes).filter(|h| h.first_seq == first_seq)?;
    if h.segment_len != segment_len {
        return None;
    }
    decode_tags(&h, &bytes)?;
    decode_rows(&h, &bytes)
}

/// Writes the file, replacing any: through a temporary name and a rename, so that a reader
/// never meets half of one. No fsync: what a crash loses is built again.
pub fn write(bucket_dir: &Path, first_seq: u64, segment_len: u64, rows: &[Row]) {
    let tmp = bucket_dir.join(format!("{INDEX_FILE}.tmp"));
    let bytes = encode(first_seq, segment_len, rows);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path(bucket_dir)));
    if let Err(e) = result {
        tracing::warn!(error = %e, segment = first_seq, "could not write a segment's lookup index; it is built again when needed");
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row::of(5, "loc1", "ContactCreate"),
            Row::NONE,
            Row::of(7, "loc2", "ContactCreate"),
            Row::of(6, "loc1", "NoteCreate"),
        ]
    }

    #[test]
    fn rows_and_tags_read_back() {
        let bytes = encode(40, 1234, &rows());
        let head = decode_head(&bytes).unwrap();
        assert_eq!((head.first_seq, head.rows, head.segment_len), (40, 4, 1234));
        let tags = decode_tags(&head, &bytes).unwrap();
        assert_eq!(tags, Tags::of(&rows()));
        assert_eq!(tags.tenants.len(), 2);
        assert!(tags.may_hold(Some(super::super::rows::tag("loc2")), None));
        assert!(!tags.may_hold(Some(super::super::rows::tag("loc3")), None));
        assert_eq!(decode_rows(&head, &bytes).unwrap(), rows());
    }

    #[test]
    fn any_flipped_bit_or_cut_fails_the_file() {
        let bytes = encode(40, 1234, &rows());
        let reads = |b: &[u8]| {
            decode_head(b).and_then(|h| Some((decode_tags(&h, b)?, decode_rows(&h, b)?)))
        };
        assert!(reads(&bytes).is_some());
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(reads(&b), None, "bit {bit}");
        }
        for len in 0..bytes.len() {
            assert_eq!(reads(&bytes[..len]), None, "cut at {len}");
        }
    }

    #[test]
    fn a_file_of_another_segment_or_length_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 40, 1234, &rows());
        assert!(read_tags(dir.path(), 40, 1234).is_some());
        assert_eq!(read_rows(dir.path(), 40, 1234), Some(rows()));
        assert!(read_tags(dir.path(), 41, 1234).is_none());
        assert!(read_rows(dir.path(), 40, 1000).is_none());
        std::fs::write(path(dir.path()), b"HLGX").unwrap();
        assert!(read_tags(dir.path(), 40, 1234).is_none());
    }
}
