//! A segment's lookup rows: one per seq, its acceptance time and the tags of its tenant and
//! type. The active segment's rows are appended by the writer while queries read them, with
//! no lock either side waits on: rows live in chunks of atomics that are only ever added to,
//! and a row is read only below the length the writer published after writing it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::entry::{ArrayRecord, Entry};
use crate::event::{element, for_each_element};

/// What a query matches a `tenant=` or `type=` against without reading the event: the
/// CRC-32 of the value. Equal tags only make an event a candidate; the event read decides.
pub fn tag(value: &str) -> u32 {
    crc32fast::hash(value.as_bytes())
}

/// One seq's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Acceptance time (unix ms); [`Row::NONE`]'s for a seq the segment cannot serve.
    pub ms: u64,
    pub tenant: u32,
    pub kind: u32,
}

impl Row {
    /// The row of a seq no frame holds (lost to damage): matches no tag and no window.
    pub const NONE: Row = Row {
        ms: u64::MAX,
        tenant: 0,
        kind: 0,
    };

    pub fn of(accepted_ms: u64, tenant: &str, event_type: &str) -> Row {
        Row {
            ms: accepted_ms,
            tenant: tag(tenant),
            kind: tag(event_type),
        }
    }

    pub fn of_entry(e: &Entry) -> Row {
        Row::of(e.accepted_ms, &e.tenant, &e.event_type)
    }

    pub fn is_none(&self) -> bool {
        self.ms == u64::MAX
    }

    fn words(&self) -> (u64, u64) {
        (
            self.ms,
            (u64::from(self.tenant) << 32) | u64::from(self.kind),
        )
    }

    fn from_words(ms: u64, tags: u64) -> Row {
        Row {
            ms,
            tenant: (tags >> 32) as u32,
            kind: tags as u32,
        }
    }
}

/// The rows of an array record's elements, in order (its acceptance time is set by then).
/// `None` for a body whose elements do not read back as its outcomes say.
pub fn array_rows(record: &ArrayRecord) -> Option<Vec<Row>> {
    let text = std::str::from_utf8(&record.body).ok()?;
    let mut rows = Vec::with_capacity(record.schema.len());
    for_each_element(text.as_bytes(), |raw| {
        let event = element(raw.get());
        rows.push(Row::of(
            record.accepted_ms,
            &event.tenant,
            &event.event_type,
        ));
    })?;
    (rows.len() == record.schema.len()).then_some(rows)
}

const CHUNK_ROWS: usize = 4096;
/// Room for 16 M rows: more seqs than a bucket's 32 MiB can hold but for arrays of bare
/// numbers; past it a segment's rows stop ([`ActiveRows::complete`]) and queries read its
/// frames instead.
const MAX_CHUNKS: usize = 4096;

/// The rows of the segment the writer appends to.
pub struct ActiveRows {
    /// The seq of row 0.
    pub first_seq: u64,
    /// Rows published to readers.
    len: AtomicUsize,
    /// Each chunk: `CHUNK_ROWS` pairs of words (time, tags).
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl ActiveRows {
    pub fn new(first_seq: u64) -> ActiveRows {
        ActiveRows {
            first_seq,
            len: AtomicUsize::new(0),
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Appends the rows of the seqs that follow the last one (the writer's alone). Returns
    /// false once the rows are full: the segment is then searched by reading it.
    pub fn push(&self, rows: &[Row]) -> bool {
        let mut at = self.len.load(Ordering::Relaxed);
        if at + rows.len() > CHUNK_ROWS * MAX_CHUNKS {
            // Full: no row past this is taken, so readers see a gap-free prefix.
            self.len.store(usize::MAX, Ordering::Release);
            return false;
        }
        if at == usize::MAX {
            return false;
        }
        for row in rows {
            let chunk = self.chunks[at / CHUNK_ROWS].get_or_init(|| {
                (0..2 * CHUNK_ROWS)
                    .map(|_| AtomicU64::new(0))
                    .collect::<Vec<_>>()
                    .into_boxed_slice()
            });
            let (ms, tags) = row.words();
            let i = 2 * (at % CHUNK_ROWS);
            chunk[i].store(ms, Ordering::Relaxed);
            chunk[i + 1].store(tags, Ordering::Relaxed);
            at += 1;
        }
        // Readers that see the new length see the rows written before it.
        self.len.store(at, Ordering::Release);
        true
    }

    /// Whether every row pushed was taken.
    pub fn complete(&self) -> bool {
        self.len.load(Ordering::Acquire) != usize::MAX
    }

    /// The rows readers may read (0 once it is not complete).
    pub fn len(&self) -> usize {
        match self.len.load(Ordering::Acquire) {
            usize::MAX => 0,
            n => n,
        }
    }

    /// Row `i`, below [`ActiveRows::len`].
    pub fn get(&self, i: usize) -> Row {
        let chunk = self.chunks[i / CHUNK_ROWS]
            .get()
            .expect("a row below the length has its chunk");
        let at = 2 * (i % CHUNK_ROWS);
        Row::from_words(
            chunk[at].load(Ordering::Relaxed),
            chunk[at + 1].load(Ordering::Relaxed),
        )
    }

    /// Its rows as they stand.
    pub fn snapshot(&self) -> Vec<Row> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_every_row_below_the_length_across_chunks() {
        let rows = ActiveRows::new(10);
        let made: Vec<Row> = (0..CHUNK_ROWS as u64 + 5)
            .map(|i| Row {
                ms: i,
                tenant: i as u32 * 3,
                kind: u32::MAX - i as u32,
            })
            .collect();
        assert!(rows.push(&made[..7]));
        assert_eq!(rows.len(), 7);
        assert!(rows.push(&made[7..]));
        assert_eq!(rows.snapshot(), made);
        assert!(rows.complete());
    }

    #[test]
    fn an_array_record_gives_a_row_per_element() {
        let record = crate::store::tests::kit::array("k");
        let rows = array_rows(&record).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[1].tenant, tag("L"));
        assert_eq!(rows[1].kind, tag("ContactCreate"));
    }
}
