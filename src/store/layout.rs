//! The store on disk: key prefixes, `meta` keys, bucket directory names, and the encoding of
//! what the store persists under `e<seq>` keys (an [`Entry`], or an [`ArrayRecord`]).
//!
//! In a bucket's database:
//! - `d<dedup key>` → acceptance time (u64 BE, unix ms), then the delivery's first seq (u64 BE)
//!   and seq count (u32 BE); older records hold the acceptance time alone (`dedup::DedupRecord`)
//! - `e<seq>` (u64 BE) → an encoded entry, or an array record covering one seq per element
//!
//! A bucket written by this version keeps only `d` records in its database: its events are
//! in its segment of the event log (`store::log`), and its ready marker says so ([`LOGGED`]).
//!
//! In the main database's `meta` tree: [`WATERMARK`], [`CONFIRMED`], [`STOPPED_AT`], [`ACCEPTED`],
//! [`STORE_ID`], [`APPLIED`].

use crate::entry::{ArrayRecord, Entry};
use crate::schema::Outcome;
use crate::verify::Scheme;

pub const DEDUP: u8 = b'd';
pub const EVENT: u8 = b'e';

/// `meta` key of the published watermark (u64 BE): every seq up to it is confirmed.
pub const WATERMARK: &[u8] = b"w";
/// `meta` key of the seqs confirmed above the watermark (behind an entry the broker refused):
/// (first, last) seq pairs, u64 BE each; absent when there are none.
pub const CONFIRMED: &[u8] = b"c";
/// `meta` key of the last seq committed when the store was last stopped cleanly (u64 BE): the
/// newest bucket has no summary, so only this tells that it was cut short.
pub const STOPPED_AT: &[u8] = b"last";
/// `meta` key of the losses an operator accepted: (first, last) seq pairs, u64 BE each.
pub const ACCEPTED: &[u8] = b"lost";

/// `meta` key of the store's id (16 bytes), written into every segment's header.
pub const STORE_ID: &[u8] = b"id";
/// `meta` key of the event log's *applied* checkpoint: the last frame whose dedup keys are
/// flushed to the buckets' databases (`log::Applied::to_bytes`).
pub const APPLIED: &[u8] = b"applied";

/// The main database's directory under the data dir.
pub const MAIN_DB: &str = "sled";
/// The directory of the event buckets under the data dir.
pub const EVENTS: &str = "events";
/// Written into a bucket's directory once its database is set up: a directory without it was
/// being created during a crash, never took an event, and is removed on open.
pub const READY: &str = "ready";
/// The content of the ready marker of a bucket whose events are in its log segment; an empty
/// marker is an older bucket's, whose events are in its database.
pub const LOGGED: &[u8] = b"log\n";
/// The directory suffix of a bucket being removed.
pub const GONE: &str = "gone";
/// The directory suffix of a bucket set aside: it holds events but is not part of the store.
pub const SET_ASIDE: &str = "damaged";
/// The summary of a bucket that takes no more events (`store::summary`).
pub const SUMMARY: &str = "keys";

/// A bucket's directory name: its first seq, 20 digits, so that names sort as seqs do.
pub fn bucket_name(first_seq: u64) -> String {
    format!("{first_seq:020}")
}

/// The first seq in a bucket directory's name (set aside or not), with what follows its dot.
pub fn parse_bucket_name(name: &str) -> Option<(u64, &str)> {
    let (seq, suffix) = name.split_once('.').unwrap_or((name, ""));
    let first_seq = seq.parse::<u64>().ok().filter(|&s| s > 0)?;
    Some((first_seq, suffix))
}

/// The key of `seq` under `prefix`.
pub fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn dedup_db_key(dedup_key: &str) -> Vec<u8> {
    dedup_db_key_bytes(dedup_key.as_bytes())
}

pub fn dedup_db_key_bytes(dedup_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + dedup_key.len());
    k.push(DEDUP);
    k.extend_from_slice(dedup_key);
    k
}

pub fn seq_of(k: &[u8]) -> u64 {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A `meta` value that is a u64 (BE), 0 when absent.
pub fn meta_u64(meta: &sled::Tree, key: &[u8]) -> sled::Result<u64> {
    Ok(meta
        .get(key)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

/// The losses an operator accepted ([`ACCEPTED`]).
pub fn accepted(meta: &sled::Tree) -> sled::Result<Vec<(u64, u64)>> {
    let bytes = meta.get(ACCEPTED)?.unwrap_or_default();
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|w| u64::from_be_bytes(w.try_into().expect("8 bytes")))
        .collect();
    Ok(words.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// Makes a rename in `dir` durable (best effort: not every filesystem lets a directory be
/// opened for this).
pub fn sync_dir(dir: &std::path::Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

const VERSION: u8 = 1;
const FLAG_REPLAY: u8 = 1;
/// Entries written before this flag have it clear: they verified over their raw bytes.
const FLAG_COMPACT: u8 = 2;
/// An [`ArrayRecord`]: a whole array delivery under the seq of its first element. Entries
/// written before this flag have it clear.
const FLAG_ARRAY: u8 = 4;
/// A single event an operator replayed (`Entry::redrive`). Entries written before it have it
/// clear.
const FLAG_REDRIVE: u8 = 8;
const NO_INDEX: u32 = u32::MAX;
const NONE: u32 = u32::MAX;

/// What is written under an `e<seq>` key.
pub trait Encoded: Sized {
    fn encode(&self) -> Vec<u8>;
    /// `None` for broken bytes (a scheme or outcome byte no version wrote among them), and
    /// for a value of the other kind.
    fn decode(seq: u64, bytes: &[u8]) -> Option<Self>;
}

fn flags(replay: bool, compact: bool) -> u8 {
    let mut flags = 0;
    if replay {
        flags |= FLAG_REPLAY;
    }
    if compact {
        flags |= FLAG_COMPACT;
    }
    flags
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&String>) {
    match s {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(&NONE.to_be_bytes()),
    }
}

impl Encoded for Entry {
    fn encode(&self) -> Vec<u8> {
        let strings = [
            &self.dedup_key,
            &self.event_type,
            &self.tenant,
            &self.signature,
        ];
        let ids = [&self.location_id, &self.company_id, &self.webhook_id];
        let size = 16
            + strings.iter().map(|s| 4 + s.len()).sum::<usize>()
            + ids
                .iter()
                .map(|s| 4 + s.as_ref().map_or(0, |s| s.len()))
                .sum::<usize>();
        let mut out = Vec::with_capacity(size + self.body.len());
        let mut flags = flags(self.replay, self.compact);
        if self.redrive {
            flags |= FLAG_REDRIVE;
        }
        out.extend_from_slice(&[VERSION, flags, self.scheme.to_u8(), self.schema.to_u8()]);
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        out.extend_from_slice(&self.index.unwrap_or(NO_INDEX).to_be_bytes());
        put_str(&mut out, &self.dedup_key);
        put_str(&mut out, &self.event_type);
        put_str(&mut out, &self.tenant);
        for id in ids {
            put_opt(&mut out, id.as_ref());
        }
        put_str(&mut out, &self.signature);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(seq: u64, bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        let head = r.take(4)?;
        if head[0] != VERSION || head[1] & FLAG_ARRAY != 0 {
            return None;
        }
        let flags = head[1];
        let scheme = Scheme::from_u8(head[2])?;
        let schema = Outcome::from_u8(head[3])?;
        let accepted_ms = r.u64()?;
        let index = r.u32()?;
        let dedup_key = r.string()?;
        let event_type = r.string()?;
        let tenant = r.string()?;
        let location_id = r.optional()?;
        let company_id = r.optional()?;
        let webhook_id = r.optional()?;
        let signature = r.string()?;
        Some(Entry {
            seq,
            accepted_ms,
            replay: flags & FLAG_REPLAY != 0,
            redrive: flags & FLAG_REDRIVE != 0,
            trace: None,
            scheme,
            compact: flags & FLAG_COMPACT != 0,
            schema,
            dedup_key,
            index: (index != NO_INDEX).then_some(index),
            event_type,
            tenant,
            location_id,
            company_id,
            webhook_id,
            signature,
            body: r.0.to_vec(),
        })
    }
}

/// Same header as an [`Entry`] (the element count where an entry has its index), then the
/// dedup key and the signature, one outcome byte per element, and the body.
impl Encoded for ArrayRecord {
    fn encode(&self) -> Vec<u8> {
        let size = 16 + 8 + self.dedup_key.len() + self.signature.len();
        let mut out = Vec::with_capacity(size + self.schema.len() + self.body.len());
        let flags = FLAG_ARRAY | flags(self.replay, self.compact);
        out.extend_from_slice(&[VERSION, flags, self.scheme.to_u8(), 0]);
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        out.extend_from_slice(&(self.schema.len() as u32).to_be_bytes());
        put_str(&mut out, &self.dedup_key);
        put_str(&mut out, &self.signature);
        out.extend(self.schema.iter().map(|o| o.to_u8()));
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(first_seq: u64, bytes: &[u8]) -> Option<ArrayRecord> {
        let mut r = Reader(bytes);
        let head = r.take(4)?;
        let flags = head[1];
        if head[0] != VERSION || flags & FLAG_ARRAY == 0 {
            return None;
        }
        let scheme = Scheme::from_u8(head[2])?;
        let accepted_ms = r.u64()?;
        let len = r.u32()?;
        let dedup_key = r.string()?;
        let signature = r.string()?;
        let schema = r
            .take(len as usize)?
            .iter()
            .map(|&b| Outcome::from_u8(b))
            .collect::<Option<Vec<Outcome>>>()?;
        Some(ArrayRecord {
            first_seq,
            accepted_ms,
            replay: flags & FLAG_REPLAY != 0,
            scheme,
            compact: flags & FLAG_COMPACT != 0,
            dedup_key,
            signature,
            schema,
            body: r.0.to_vec(),
        })
    }
}

/// A value under an `e<seq>` key: one entry, or an array record.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    One(Entry),
    Array(ArrayRecord),
}

impl Stored {
    pub fn decode(seq: u64, bytes: &[u8]) -> Option<Stored> {
        match bytes.get(1) {
            Some(flags) if flags & FLAG_ARRAY != 0 => {
                ArrayRecord::decode(seq, bytes).map(Stored::Array)
            }
            _ => Entry::decode(seq, bytes).map(Stored::One),
        }
    }
}

/// The last seq a value stored under `seq` covers and its acceptance time, from its header
/// alone (no copy of its body); `None` for broken bytes.
pub fn span(seq: u64, bytes: &[u8]) -> Option<(u64, u64)> {
    let mut r = Reader(bytes);
    let head = r.take(4)?;
    if head[0] != VERSION {
        return None;
    }
    let accepted_ms = r.u64()?;
    if head[1] & FLAG_ARRAY == 0 {
        return Some((seq, accepted_ms));
    }
    let len = r.u32()?;
    Some((seq + u64::from(len).max(1) - 1, accepted_ms))
}

/// The last seq the value `v` under key `k` covers: its own seq, or an array record's last.
/// Broken bytes count as covering their own seq (the read that reaches them reports them).
pub fn last_of(k: &[u8], v: &[u8]) -> u64 {
    let seq = seq_of(k);
    span(seq, v).map_or(seq, |(last, _)| last)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// `Some(None)` for an absent string, `None` for broken bytes.
    fn optional(&mut self) -> Option<Option<String>> {
        let len = self.u32()?;
        if len == NONE {
            return Some(None);
        }
        let bytes = self.take(len as usize)?;
        Some(Some(String::from_utf8(bytes.to_vec()).ok()?))
    }

    /// A string that is always there: an absent one is broken bytes.
    fn string(&mut self) -> Option<String> {
        self.optional()?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Entry {
            seq: 9,
            accepted_ms: 1_700_000_000_123,
            replay: true,
            redrive: true,
            trace: None,
            scheme: Scheme::RsaSha256,
            compact: true,
            schema: Outcome::Invalid,
            dedup_key: "k".into(),
            index: Some(3),
            event_type: "ContactCreate".into(),
            tenant: "loc".into(),
            location_id: Some("loc".into()),
            company_id: None,
            webhook_id: Some("w".into()),
            signature: "sig==".into(),
            body: b"{\"a\":1}".to_vec(),
        };
        assert_eq!(Entry::decode(9, &e.encode()), Some(e.clone()));
        assert_eq!(e.message_id(), "k/3");
        assert_eq!(Entry::decode(9, &e.encode()[..10]), None);
    }

    #[test]
    fn an_array_record_round_trips_and_is_no_entry() {
        let r = ArrayRecord {
            first_seq: 7,
            accepted_ms: 1_700_000_000_123,
            replay: false,
            scheme: Scheme::Ed25519,
            compact: true,
            dedup_key: "k".into(),
            signature: "sig==".into(),
            schema: vec![Outcome::Valid, Outcome::Invalid, Outcome::Unknown],
            body: b"[1,2,3]".to_vec(),
        };
        let bytes = r.encode();
        assert_eq!(Stored::decode(7, &bytes), Some(Stored::Array(r.clone())));
        assert_eq!(span(7, &bytes), Some((9, r.accepted_ms)));
        assert_eq!(Entry::decode(7, &bytes), None);
        assert_eq!(Stored::decode(7, &bytes[..20]), None);
        // An ordinary entry still decodes as one, and covers its own seq.
        let e = Entry::decode(1, &old_entry()).unwrap();
        assert_eq!(Stored::decode(1, &e.encode()), Some(Stored::One(e.clone())));
        assert_eq!(span(1, &e.encode()), Some((1, 0)));
    }

    /// An entry as the first version wrote it: flags 1 (replay), no index.
    fn old_entry() -> Vec<u8> {
        let mut out = vec![1, FLAG_REPLAY, 1, 0];
        out.extend_from_slice(&0u64.to_be_bytes());
        out.extend_from_slice(&NO_INDEX.to_be_bytes());
        for s in [
            Some("k"),
            Some("T"),
            Some("none"),
            None,
            None,
            None,
            Some("sig"),
        ] {
            match s {
                Some(s) => {
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                None => out.extend_from_slice(&NONE.to_be_bytes()),
            }
        }
        out.extend_from_slice(b"{}");
        out
    }

    #[test]
    fn an_unknown_scheme_or_outcome_byte_is_broken_bytes() {
        let good = old_entry();
        assert!(Entry::decode(1, &good).is_some());
        for (at, byte) in [(2, 2), (2, 0xff), (3, 3), (3, 0xff)] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert_eq!(Stored::decode(1, &bad), None, "byte {at} = {byte}");
        }
        let r = ArrayRecord {
            first_seq: 1,
            accepted_ms: 0,
            replay: false,
            scheme: Scheme::Ed25519,
            compact: false,
            dedup_key: "k".into(),
            signature: "s".into(),
            schema: vec![Outcome::Valid, Outcome::Unknown],
            body: b"[1,2]".to_vec(),
        };
        let mut bad = r.encode();
        bad[2] = 7;
        assert_eq!(Stored::decode(1, &bad), None);
        let mut bad = r.encode();
        let outcomes = 16 + 8 + r.dedup_key.len() + r.signature.len();
        bad[outcomes + 1] = 3;
        assert_eq!(Stored::decode(1, &bad), None);
    }

    #[test]
    fn a_redriven_entry_keeps_its_flag_and_an_older_one_has_it_clear() {
        let mut e = Entry::decode(1, &old_entry()).unwrap();
        assert!(!e.redrive);
        e.redrive = true;
        assert!(Entry::decode(1, &e.encode()).unwrap().redrive);
    }

    #[test]
    fn an_entry_written_before_the_compact_flag_is_not_compact() {
        let e = Entry {
            seq: 1,
            accepted_ms: 0,
            replay: true,
            redrive: false,
            trace: None,
            scheme: Scheme::Ed25519,
            compact: true,
            schema: Outcome::Unknown,
            dedup_key: "k".into(),
            index: None,
            event_type: "T".into(),
            tenant: "none".into(),
            location_id: None,
            company_id: None,
            webhook_id: None,
            signature: "sig".into(),
            body: b"{}".to_vec(),
        };
        let mut old = e.encode();
        assert_eq!(old[1], FLAG_REPLAY | FLAG_COMPACT);
        // The only flag an older hlgate wrote.
        old[1] = FLAG_REPLAY;
        let decoded = Entry::decode(1, &old).unwrap();
        assert!(decoded.replay && !decoded.compact);
    }
}
