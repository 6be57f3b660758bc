//! The webhook use case, without HTTP: verify → parse → timestamp rule → dedup + outbox.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::event::{parse_delivery, parse_delivery_with_values, Delivery};
use crate::metrics::Metrics;
use crate::schema::{Outcome, Schemas};
use crate::store::{AcceptOutcome, Entry, Store, StoreError};
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
}

impl Ingest {
    /// Runs the contract's checks in order on the raw body and stores what passes.
    pub async fn ingest(
        &self,
        body: &[u8],
        headers: SignatureHeaders<'_>,
    ) -> Result<Receipt, IngestError> {
        let verified = self.verifier.verify(body, headers).map_err(|e| match e {
            VerifyError::Missing => IngestError::MissingSignature,
            VerifyError::Invalid => IngestError::InvalidSignature,
        })?;
        if verified.used_fallback() {
            self.metrics
                .signature_fallback
                .fetch_add(1, Ordering::Relaxed);
        }
        // With schemas to check, parse into JSON values once and read the fields from them;
        // without, read only the fields. Both from the form that verified.
        let (delivery, values) = if self.schemas.is_empty() {
            (parse_delivery(verified.signed_form()), Vec::new())
        } else {
            parse_delivery_with_values(verified.signed_form())
        };
        self.check_timestamps(&delivery, OffsetDateTime::now_utc())?;

        let first = &delivery.events[0];
        let receipt = Receipt {
            duplicate: false,
            dedup_key: delivery.dedup_key.clone(),
            event_type: first.event_type.clone(),
            tenant: first.tenant.clone(),
            webhook_id: first.webhook_id.clone(),
        };
        let entries = self.entries(&verified, delivery, &values);
        // The store answers a duplicate before it refuses for a full outbox or disk.
        let outcome = match self.store.accept(receipt.dedup_key.clone(), entries).await {
            Ok(outcome) => outcome,
            Err(StoreError::OutboxFull(depth)) => return Err(IngestError::OutboxFull(depth)),
            Err(e) => return Err(e.into()),
        };
        match outcome {
            AcceptOutcome::Accepted { .. } => Ok(receipt),
            AcceptOutcome::Duplicate => Ok(Receipt {
                duplicate: true,
                ..receipt
            }),
        }
    }

    /// Older than the retention or further ahead than the skew: refused. Unparseable: ignored.
    fn check_timestamps(&self, d: &Delivery, now: OffsetDateTime) -> Result<(), IngestError> {
        for ts in d.events.iter().filter_map(|e| e.timestamp) {
            if ts < now - self.retention || ts > now + self.max_future_skew {
                return Err(IngestError::StaleTimestamp);
            }
        }
        Ok(())
    }

    fn entries(
        &self,
        verified: &Verified<'_>,
        delivery: Delivery,
        values: &[serde_json::Value],
    ) -> Vec<Entry> {
        let is_array = delivery.is_array;
        delivery
            .events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let schema = match values.get(i) {
                    Some(value) => self.schemas.validate_value(&event.event_type, value),
                    None => Outcome::Unknown,
                };
                Entry {
                    seq: 0,
                    accepted_ms: 0,
                    replay: false,
                    scheme: verified.scheme(),
                    compact: verified.used_fallback(),
                    schema,
                    dedup_key: delivery.dedup_key.clone(),
                    index: is_array.then_some(i as u32),
                    event_type: event.event_type,
                    tenant: event.tenant,
                    location_id: event.location_id,
                    company_id: event.company_id,
                    webhook_id: event.webhook_id,
                    signature: verified.signature().to_string(),
                    body: published_body(verified, is_array, event.body),
                }
            })
            .collect()
    }
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
