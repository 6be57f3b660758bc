//! The outbox entry and its compact binary encoding on disk.

use crate::schema::Outcome;
use crate::verify::Scheme;

const VERSION: u8 = 1;
const FLAG_REPLAY: u8 = 1;
/// Entries written before this flag have it clear: they verified over their raw bytes.
const FLAG_COMPACT: u8 = 2;
/// An [`ArrayRecord`]: a whole array delivery under the seq of its first element. Entries
/// written before this flag have it clear.
const FLAG_ARRAY: u8 = 4;
const NO_INDEX: u32 = u32::MAX;
const NONE: u32 = u32::MAX;

/// One event as stored: in the archive for the retention window, and in the outbox until its
/// publish is confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Outbox sequence number: the order of acceptance.
    pub seq: u64,
    /// Acceptance time, unix milliseconds.
    pub accepted_ms: u64,
    /// A republished copy made by `/v1/replay`.
    pub replay: bool,
    pub scheme: Scheme,
    /// The signature verified only over the body's compact form, not the bytes as received.
    pub compact: bool,
    pub schema: Outcome,
    pub dedup_key: String,
    /// Position in a top-level array delivery.
    pub index: Option<u32>,
    pub event_type: String,
    pub tenant: String,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub webhook_id: Option<String>,
    /// The signature header value as received.
    pub signature: String,
    pub body: Vec<u8>,
}

impl Entry {
    /// The AMQP `message_id`: the dedup key, `<key>/<index>` for array elements.
    pub fn message_id(&self) -> String {
        match self.index {
            Some(i) => format!("{}/{i}", self.dedup_key),
            None => self.dedup_key.clone(),
        }
    }

    pub fn routing_key(&self) -> String {
        crate::event::routing_key(&self.event_type, &self.tenant)
    }

    pub fn encode(&self) -> Vec<u8> {
        let strings = [
            Some(&self.dedup_key),
            Some(&self.event_type),
            Some(&self.tenant),
            self.location_id.as_ref(),
            self.company_id.as_ref(),
            self.webhook_id.as_ref(),
            Some(&self.signature),
        ];
        let size = 20 + strings.iter().flatten().map(|s| 4 + s.len()).sum::<usize>() + 28;
        let mut out = Vec::with_capacity(size + self.body.len());
        let mut flags = 0;
        if self.replay {
            flags |= FLAG_REPLAY;
        }
        if self.compact {
            flags |= FLAG_COMPACT;
        }
        out.extend_from_slice(&[VERSION, flags, self.scheme.to_u8(), self.schema.to_u8()]);
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        out.extend_from_slice(&self.index.unwrap_or(NO_INDEX).to_be_bytes());
        for s in strings {
            match s {
                Some(s) => {
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                None => out.extend_from_slice(&NONE.to_be_bytes()),
            }
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// `None` for broken bytes, and for an [`ArrayRecord`] (see [`Stored::decode`]).
    pub fn decode(seq: u64, bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        let head = r.take(4)?;
        if head[0] != VERSION || head[1] & FLAG_ARRAY != 0 {
            return None;
        }
        let (flags, scheme, schema) = (head[1], head[2], head[3]);
        let accepted_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let index = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let dedup_key = r.string()??;
        let event_type = r.string()??;
        let tenant = r.string()??;
        let location_id = r.string()?;
        let company_id = r.string()?;
        let webhook_id = r.string()?;
        let signature = r.string()??;
        Some(Entry {
            seq,
            accepted_ms,
            replay: flags & FLAG_REPLAY != 0,
            scheme: Scheme::from_u8(scheme),
            compact: flags & FLAG_COMPACT != 0,
            schema: Outcome::from_u8(schema),
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

/// A top-level array delivery of several events, stored as one value under the seq of its
/// first element: it covers the seqs `first_seq ..= first_seq + len - 1`, and reads expand it
/// into one [`Entry`] per element (`Bucket::entries_from`). What the entries share is kept
/// once; what differs (body, type, tenant, ids) is read from the element, except the schema
/// outcome, one byte per element.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayRecord {
    pub first_seq: u64,
    pub accepted_ms: u64,
    pub replay: bool,
    pub scheme: Scheme,
    pub compact: bool,
    pub dedup_key: String,
    pub signature: String,
    /// One [`Outcome::to_u8`] per element, in order: its length is the number of elements.
    pub schema: Vec<u8>,
    /// The verified body the elements are cut from (the form that verified).
    pub body: Vec<u8>,
}

impl ArrayRecord {
    pub fn len(&self) -> u64 {
        self.schema.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.schema.is_empty()
    }

    /// Same header as an [`Entry`] (the element count where an entry has its index), then the
    /// dedup key and the signature, the outcome bytes, and the body.
    pub fn encode(&self) -> Vec<u8> {
        let strings = [&self.dedup_key, &self.signature];
        let size = 16 + strings.iter().map(|s| 4 + s.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size + self.schema.len() + self.body.len());
        let mut flags = FLAG_ARRAY;
        if self.replay {
            flags |= FLAG_REPLAY;
        }
        if self.compact {
            flags |= FLAG_COMPACT;
        }
        out.extend_from_slice(&[VERSION, flags, self.scheme.to_u8(), 0]);
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        out.extend_from_slice(&(self.schema.len() as u32).to_be_bytes());
        for s in strings {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.schema);
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
        let accepted_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
        let len = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let dedup_key = r.string()??;
        let signature = r.string()??;
        let schema = r.take(len as usize)?.to_vec();
        Some(ArrayRecord {
            first_seq,
            accepted_ms,
            replay: flags & FLAG_REPLAY != 0,
            scheme: Scheme::from_u8(head[2]),
            compact: flags & FLAG_COMPACT != 0,
            dedup_key,
            signature,
            schema,
            body: r.0.to_vec(),
        })
    }

    /// Element `i`'s entry, from `text`, that element's slice of the body.
    pub fn element(&self, i: usize, text: &str) -> Entry {
        let event = crate::event::element(text);
        Entry {
            seq: self.first_seq + i as u64,
            accepted_ms: self.accepted_ms,
            replay: self.replay,
            scheme: self.scheme,
            compact: self.compact,
            schema: Outcome::from_u8(self.schema[i]),
            dedup_key: self.dedup_key.clone(),
            index: Some(i as u32),
            event_type: event.event_type,
            tenant: event.tenant,
            location_id: event.location_id,
            company_id: event.company_id,
            webhook_id: event.webhook_id,
            signature: self.signature.clone(),
            body: event.body,
        }
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
    let accepted_ms = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    if head[1] & FLAG_ARRAY == 0 {
        return Some((seq, accepted_ms));
    }
    let len = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
    Some((seq + u64::from(len).max(1) - 1, accepted_ms))
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

    /// `Some(None)` for an absent string, `None` for broken bytes.
    fn string(&mut self) -> Option<Option<String>> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        if len == NONE {
            return Some(None);
        }
        let bytes = self.take(len as usize)?;
        Some(Some(String::from_utf8(bytes.to_vec()).ok()?))
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
            schema: vec![Outcome::Valid.to_u8(), Outcome::Invalid.to_u8(), 0],
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
    fn an_entry_written_before_the_compact_flag_is_not_compact() {
        let e = Entry {
            seq: 1,
            accepted_ms: 0,
            replay: true,
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
