//! The outbox entry and its compact binary encoding on disk.

use crate::schema::Outcome;
use crate::verify::Scheme;

const VERSION: u8 = 1;
const FLAG_REPLAY: u8 = 1;
/// Entries written before this flag have it clear: they verified over their raw bytes.
const FLAG_COMPACT: u8 = 2;
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

    pub fn decode(seq: u64, bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        let head = r.take(4)?;
        if head[0] != VERSION {
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
