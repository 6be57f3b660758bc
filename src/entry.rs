//! The outbox entry: one accepted event with what publishing it needs (routing key, message id,
//! signature, schema outcome), and the array record a whole array delivery is kept as. The
//! store persists them encoded (`store::layout`); this module knows nothing of how.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::{element, message_id, routing_key};
use crate::schema::Outcome;
use crate::traces::SpanContext;
use crate::verify::Scheme;

/// The clock of acceptance times: unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One event as stored: in the archive for the retention window, and in the outbox until its
/// publish is confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Outbox sequence number: the order of acceptance.
    pub seq: u64,
    /// Acceptance time, unix milliseconds.
    pub accepted_ms: u64,
    /// A republished copy made by `/v1/replay` or `/v1/events/{seq}/replay`.
    pub replay: bool,
    /// A single event replayed by an operator (`/v1/events/{seq}/replay`): it goes to the main
    /// exchange whatever its schema outcome, so that a quarantined event can be redriven.
    pub redrive: bool,
    /// The webhook's trace, which its publish span continues. In memory only, never stored:
    /// an entry read back from disk (after a restart, a backlog, an array delivery, a replay)
    /// starts a trace of its own.
    pub trace: Option<SpanContext>,
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
        message_id(&self.dedup_key, self.index.map(|i| i as usize))
    }

    pub fn routing_key(&self) -> String {
        routing_key(&self.event_type, &self.tenant)
    }
}

/// A top-level array delivery of several events, kept as one record under the seq of its
/// first element: it covers the seqs `first_seq ..= first_seq + len - 1`, and reads expand it
/// into one [`Entry`] per element ([`ArrayRecord::element`]). What the entries share is kept
/// once; what differs (body, type, tenant, ids) is read from the element, except the schema
/// outcome, one per element.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayRecord {
    pub first_seq: u64,
    pub accepted_ms: u64,
    pub replay: bool,
    pub scheme: Scheme,
    pub compact: bool,
    pub dedup_key: String,
    pub signature: String,
    /// One outcome per element, in order: its length is the number of elements.
    pub schema: Vec<Outcome>,
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

    /// Element `i`'s entry, from `text`, that element's slice of the body.
    pub fn element(&self, i: usize, text: &str) -> Entry {
        let event = element(text);
        Entry {
            seq: self.first_seq + i as u64,
            accepted_ms: self.accepted_ms,
            replay: self.replay,
            redrive: false,
            trace: None,
            scheme: self.scheme,
            compact: self.compact,
            schema: self.schema[i],
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
