//! The webhook use case, without HTTP: verify → parse → timestamp rule → dedup + outbox.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::entry::{ArrayRecord, Entry};
use crate::event::{
    parse_delivery, parse_delivery_checked, walk_array, Delivery, Event, NO_TENANT, UNKNOWN,
};
use crate::metrics::Metrics;
use crate::schema::{Outcome, Schemas};
use crate::store::{AcceptOutcome, Store, StoreError};
use crate::traces::{Kind, Span, Tracer};
use crate::verify::{SignatureHeaders, Verified, Verifier, VerifyError};

/// What a caller learns about an accepted or absorbed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub duplicate: bool,
    pub dedup_key: String,
    pub event_type: String,
    pub tenant: String,
    pub webhook_id: Option<String>,
}

impl Receipt {
    /// Named after the delivery's first event. An empty array has none: its dedup key is
    /// still recorded, so it reads as a delivery of no event of no tenant.
    fn of(delivery: &Delivery) -> Receipt {
        Receipt::named(&delivery.dedup_key, delivery.events.first())
    }

    fn named(dedup_key: &str, first: Option<&Event>) -> Receipt {
        Receipt {
            duplicate: false,
            dedup_key: dedup_key.to_string(),
            event_type: first.map_or(UNKNOWN, |e| e.event_type.as_str()).to_string(),
            tenant: first.map_or(NO_TENANT, |e| e.tenant.as_str()).to_string(),
            webhook_id: first.and_then(|e| e.webhook_id.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no usable signature header")]
    MissingSignature,
    #[error("the signature does not verify")]
    InvalidSignature,
    #[error("the event timestamp is outside the accepted window")]
    StaleTimestamp,
    #[error("the outbox holds {0} unpublished events")]
    OutboxFull(u64),
    #[error("the store cannot take events: {0}")]
    Store(#[from] StoreError),
}

/// The ingest pipeline with its configuration.
pub struct Ingest {
    pub verifier: Verifier,
    pub store: Store,
    pub schemas: Arc<Schemas>,
    pub metrics: Arc<Metrics>,
    pub retention: Duration,
    pub max_future_skew: Duration,
    /// Where the webhook's spans start ([`Tracer::off`] without an endpoint).
    pub tracer: Tracer,
}

impl Ingest {
    /// Runs the contract's checks in order on the raw body and stores what passes; the
    /// `verify`, `dedup` and `commit` spans are children of `trace` (the webhook's).
    pub async fn ingest(
        &self,
        body: &[u8],
        headers: SignatureHeaders<'_>,
        trace: &Span,
    ) -> Result<Receipt, IngestError> {
        let mut verifying = trace.child("verify", Kind::Internal);
        let verified = match self.verifier.verify_gathered(body, headers).await {
            Ok(verified) => verified,
            Err(e) => {
                verifying.fail(match e {
                    VerifyError::Missing => "missing signature",
                    VerifyError::Invalid => "invalid signature",
                });
                return Err(match e {
                    VerifyError::Missing => IngestError::MissingSignature,
                    VerifyError::Invalid => IngestError::InvalidSignature,
                });
            }
        };
        if verifying.is_recording() {
            verifying.set("hlgate.signature_scheme", verified.scheme().as_str());
            verifying.set("hlgate.signature_compact", verified.used_fallback());
        }
        verifying.end();
        if verified.used_fallback() {
            self.metrics
                .signature_fallback
                .fetch_add(1, Ordering::Relaxed);
        }
        let now = OffsetDateTime::now_utc();
        // Fields and the dedup key come from the form that verified.
        let (receipt, stored) = match self.walk(&verified, now) {
            Some(walked) => walked?,
            None => {
                let (delivery, schema) = parse(verified.signed_form(), &self.schemas);
                self.check_timestamps(&delivery, now)?;
                let receipt = Receipt::of(&delivery);
                (
                    receipt,
                    Stored::Entries(entries(&verified, delivery, schema)),
                )
            }
        };
        let key = receipt.dedup_key.clone();
        let (stamp, handed) = (trace.is_recording(), Instant::now());
        // The store answers a duplicate before it refuses for a full outbox or disk.
        let accepted = match stored {
            Stored::Entries(mut entries) => {
                // Its publish continues this trace, while the relay takes it from memory.
                if let Some(context) = trace.context() {
                    entries.iter_mut().for_each(|e| e.trace = Some(context));
                }
                self.store.accept_stamped(key, entries, stamp).await
            }
            Stored::Array(record) => self.store.accept_array_stamped(key, record, stamp).await,
        };
        let answered = match accepted {
            Ok(answered) => answered,
            Err(StoreError::OutboxFull(depth)) => return Err(IngestError::OutboxFull(depth)),
            Err(e) => return Err(e.into()),
        };
        if let Some(deduped) = answered.deduped {
            trace.child_between("dedup", handed, deduped);
            if answered.outcome != AcceptOutcome::Duplicate {
                trace.child_between("commit", deduped, Instant::now());
            }
        }
        match answered.outcome {
            AcceptOutcome::Accepted { .. } => Ok(receipt),
            AcceptOutcome::Duplicate => Ok(Receipt {
                duplicate: true,
                ..receipt
            }),
        }
    }

    /// Older than the retention or further ahead than the skew: refused. Unparseable: ignored.
    fn check_timestamps(&self, d: &Delivery, now: OffsetDateTime) -> Result<(), IngestError> {
        if d.events.iter().any(|e| self.is_stale(e, now)) {
            return Err(IngestError::StaleTimestamp);
        }
        Ok(())
    }

    fn is_stale(&self, event: &Event, now: OffsetDateTime) -> bool {
        event
            .timestamp
            .is_some_and(|ts| ts < now - self.retention || ts > now + self.max_future_skew)
    }

    /// A top-level array, walked once without keeping its events: the timestamp rule, one
    /// schema outcome per element, and what the receipt names. Several elements make one
    /// record (the store cuts their entries from its body when they are read); one makes an
    /// ordinary entry, none only the dedup key. `None` when the body is not an array.
    fn walk(
        &self,
        verified: &Verified<'_>,
        now: OffsetDateTime,
    ) -> Option<Result<(Receipt, Stored), IngestError>> {
        let body = verified.signed_form();
        let (mut stale, mut first, mut schema) = (false, None, Vec::new());
        let dedup_key = walk_array(body, |event, value| {
            stale |= self.is_stale(&event, now);
            let outcome = match value {
                Some(value) if !self.schemas.is_empty() => {
                    self.schemas.validate_value(&event.event_type, value)
                }
                _ => Outcome::Unknown,
            };
            schema.push(outcome);
            if first.is_none() {
                first = Some(event);
            }
        })?;
        if stale {
            return Some(Err(IngestError::StaleTimestamp));
        }
        let receipt = Receipt::named(&dedup_key, first.as_ref());
        let stored = match (schema.len(), first) {
            (1, Some(event)) => {
                let delivery = Delivery {
                    dedup_key,
                    is_array: true,
                    events: vec![event],
                };
                Stored::Entries(entries(verified, delivery, schema))
            }
            (0, _) => Stored::Entries(Vec::new()),
            _ => Stored::Array(ArrayRecord {
                first_seq: 0,
                accepted_ms: 0,
                replay: false,
                scheme: verified.scheme(),
                compact: verified.used_fallback(),
                dedup_key,
                signature: verified.signature().to_string(),
                schema,
                body: body.to_vec(),
            }),
        };
        Some(Ok((receipt, stored)))
    }
}

/// What a delivery hands the store.
enum Stored {
    Entries(Vec<Entry>),
    Array(ArrayRecord),
}

/// Parses a verified body once. With schemas to check, each event is validated while its
/// parsed JSON is at hand (one outcome per event); without, only the fields are read and the
/// outcomes are left empty (`unknown`).
pub fn parse(body: &[u8], schemas: &Schemas) -> (Delivery, Vec<Outcome>) {
    if schemas.is_empty() {
        return (parse_delivery(body), Vec::new());
    }
    parse_delivery_checked(body, |event, value| match value {
        Some(value) => schemas.validate_value(&event.event_type, value),
        None => Outcome::Unknown,
    })
}

/// The outbox entries of a verified delivery, one per event, with the outcomes of [`parse`].
pub fn entries(verified: &Verified<'_>, delivery: Delivery, schema: Vec<Outcome>) -> Vec<Entry> {
    let Delivery {
        dedup_key,
        is_array,
        events,
    } = delivery;
    let mut schema = schema.into_iter();
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Entry {
            seq: 0,
            accepted_ms: 0,
            replay: false,
            redrive: false,
            trace: None,
            scheme: verified.scheme(),
            compact: verified.used_fallback(),
            schema: schema.next().unwrap_or(Outcome::Unknown),
            dedup_key: dedup_key.clone(),
            index: is_array.then_some(i as u32),
            event_type: event.event_type,
            tenant: event.tenant,
            location_id: event.location_id,
            company_id: event.company_id,
            webhook_id: event.webhook_id,
            signature: verified.signature().to_string(),
            body: published_body(verified, is_array, event.body),
        })
        .collect()
}

/// The bytes to publish: as received even when the event was read from its compact form; an
/// array element's own compact JSON.
fn published_body(verified: &Verified<'_>, is_array: bool, parsed: Vec<u8>) -> Vec<u8> {
    if verified.used_fallback() && !is_array {
        verified.body().to_vec()
    } else {
        parsed
    }
}
