//! A bucket's summary (the `keys` file): its bounds and the sorted hashes of its dedup keys,
//! written when a bucket takes no more events, so that a start need not open its database.

use std::path::Path;

use super::keys::key_hash;
use super::layout::{seq_of, span, sync_dir, DEDUP, EVENT, SUMMARY};

/// The summary's format, first eight bytes of the file.
const SUMMARY_MAGIC: &[u8; 8] = b"hlgkeys1";

/// What a start needs of a bucket without opening its database: its bounds and the hashes of
/// its dedup keys. On disk (`keys`): the magic, then first seq, last seq, opened and newest
/// acceptance time and the number of hashes (u64 BE each), the hashes sorted (u64 BE), and a
/// CRC-32 of all that (u32 BE).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Summary {
    pub last_seq: u64,
    pub opened_ms: u64,
    pub newest_ms: u64,
    pub hashes: Vec<u64>,
}

impl Summary {
    /// Reads it from the database; an empty bucket counts as opened and written at `now_ms`.
    pub fn read(db: &sled::Db, first_seq: u64, now_ms: u64) -> sled::Result<Summary> {
        let entry_at = |item: Option<sled::Result<(sled::IVec, sled::IVec)>>| {
            item.transpose().map(|kv| {
                // Its last seq: an array record covers several.
                kv.and_then(|(k, v)| span(seq_of(&k), &v))
            })
        };
        let first = entry_at(db.scan_prefix([EVENT]).next())?;
        let last = entry_at(db.scan_prefix([EVENT]).next_back())?;
        let mut hashes = Vec::new();
        for item in db.scan_prefix([DEDUP]).keys() {
            hashes.push(key_hash(&item?[1..]));
        }
        hashes.sort_unstable();
        Ok(Summary {
            last_seq: last.map_or(first_seq - 1, |(last, _)| last),
            opened_ms: first.map_or(now_ms, |(_, ms)| ms),
            newest_ms: last.map_or(now_ms, |(_, ms)| ms),
            hashes,
        })
    }

    pub fn encode(&self, first_seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(SUMMARY_MAGIC.len() + 8 * (5 + self.hashes.len()) + 4);
        out.extend_from_slice(SUMMARY_MAGIC);
        let head = [
            first_seq,
            self.last_seq,
            self.opened_ms,
            self.newest_ms,
            self.hashes.len() as u64,
        ];
        for v in head.iter().chain(&self.hashes) {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// `None` unless `bytes` is a whole, intact summary of the bucket starting at `first_seq`.
    pub fn decode(bytes: &[u8], first_seq: u64) -> Option<Summary> {
        let (body, crc) = bytes.split_last_chunk::<4>()?;
        if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
            return None;
        }
        let words = body.strip_prefix(SUMMARY_MAGIC)?;
        if words.len() % 8 != 0 {
            return None;
        }
        let mut words = words
            .chunks_exact(8)
            .map(|w| u64::from_be_bytes(w.try_into().expect("8 bytes")));
        let mut next = || words.next();
        let (first, last_seq, opened_ms, newest_ms, count) =
            (next()?, next()?, next()?, next()?, next()?);
        let hashes: Vec<u64> = words.collect();
        (first == first_seq && last_seq >= first_seq && hashes.len() as u64 == count).then_some(
            Summary {
                last_seq,
                opened_ms,
                newest_ms,
                hashes,
            },
        )
    }

    /// The bucket's summary from its directory, if it has a whole and intact one.
    pub fn load(dir: &Path, first_seq: u64) -> Option<Summary> {
        let bytes = std::fs::read(dir.join(SUMMARY)).ok()?;
        let summary = Summary::decode(&bytes, first_seq);
        if summary.is_none() {
            let dir = dir.display();
            tracing::warn!(%dir, "a bucket summary does not check out; reading the bucket");
        }
        summary
    }

    /// Writes it next to the database: whole, flushed, then renamed into place.
    pub fn write(&self, dir: &Path, first_seq: u64) -> std::io::Result<()> {
        use std::io::Write;
        let partial = dir.join(format!("{SUMMARY}.partial"));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&self.encode(first_seq))?;
        file.sync_all()?;
        std::fs::rename(&partial, dir.join(SUMMARY))?;
        sync_dir(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::bucket::tests::{bucket_with_events, not_the_database};
    use crate::store::bucket::Bucket;

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v
    }

    #[test]
    fn a_summary_holds_what_the_database_holds_and_is_written_once_it_is_read() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        assert!(!dir.join(SUMMARY).exists());
        let expected = Summary {
            last_seq: 12,
            opened_ms: 100,
            newest_ms: 300,
            hashes: sorted(vec![key_hash(b"a"), key_hash(b"b")]),
        };
        // The first start reads the database and leaves the summary for the next.
        let opened = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        let (bucket, hashes) = &opened[0];
        assert_eq!(
            (bucket.last_seq(), bucket.opened_ms(), bucket.newest_ms()),
            (12, 100, 300)
        );
        assert_eq!(sorted(hashes.clone()), expected.hashes);
        assert_eq!(Summary::load(&dir, 10), Some(expected));
        assert!(!bucket.is_open());
        // Sealing again leaves it as it is.
        drop(opened);
        let before = std::fs::read(dir.join(SUMMARY)).unwrap();
        let again = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        again[0].0.seal(999).unwrap();
        assert_eq!(std::fs::read(dir.join(SUMMARY)).unwrap(), before);
    }

    #[test]
    fn a_damaged_or_foreign_summary_is_ignored_and_the_database_read() {
        let events = tempfile::tempdir().unwrap();
        let dir = bucket_with_events(events.path());
        let summary = not_the_database();
        let good = summary.encode(10);
        assert_eq!(Summary::decode(&good, 10).as_ref(), Some(&summary));
        // Any flipped byte, a cut, another bucket's, one that claims no events.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert_eq!(Summary::decode(&bad, 10), None, "byte {at} flipped");
        }
        for len in 0..good.len() {
            assert_eq!(Summary::decode(&good[..len], 10), None, "cut at {len}");
        }
        assert_eq!(Summary::decode(&good, 11), None);
        let empty = Summary {
            last_seq: 9,
            ..summary
        };
        assert_eq!(Summary::decode(&empty.encode(10), 10), None);

        let mut bad = good;
        bad[20] ^= 0x01;
        std::fs::write(dir.join(SUMMARY), &bad).unwrap();
        let opened = Bucket::open_all(events.path(), 999, &Arc::default())
            .unwrap()
            .0;
        assert_eq!(opened[0].0.last_seq(), 12);
        // And the start wrote a good one in its place.
        assert_eq!(Summary::load(&dir, 10).map(|s| s.last_seq), Some(12));
    }
}
