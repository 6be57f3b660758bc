//! The public listener: `POST /webhooks/highlevel`, `GET /healthz`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::error::PayloadError;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;

use super::ApiError;
use crate::config::format_duration;
use crate::ingest::{Ingest, IngestError, Receipt};
use crate::metrics::WebhookOutcome;
use crate::verify::SignatureHeaders;

/// What the public handlers share.
pub struct PublicState {
    pub ingest: Arc<Ingest>,
    pub max_body_bytes: usize,
    /// A body not received in full within this time gets 408.
    pub body_timeout: Duration,
    /// What the bodies being received may hold together.
    pub bodies: BodyBudget,
    /// The token module, for the install flow.
    pub tokens: Option<Arc<crate::oauth::TokenService>>,
}

/// The bound on the memory all webhook bodies hold together, from their first byte until their
/// request is answered.
///
/// When a body would go over it, that request gets 429 `overloaded` (HighLevel retries it)
/// rather than waiting for room: a wait could outlast the body timeout and end in 408, and
/// dropping older bodies to make room would let a flood of new connections starve real slow
/// uploads. Stalled bodies give their room back within the body timeout, so the bound recovers
/// by itself.
pub struct BodyBudget {
    held: AtomicUsize,
    limit: usize,
}

/// 64 bodies of the default maximum size, thousands of HighLevel's usual few-KB events.
const BODY_BUDGET_BYTES: usize = 64 << 20;

impl BodyBudget {
    /// Room for at least one body of `max_body_bytes`, so that every allowed body can arrive.
    pub fn for_max_body(max_body_bytes: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit: BODY_BUDGET_BYTES.max(max_body_bytes),
        }
    }

    // A counter that orders no other memory: relaxed is enough.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A body's bytes, with the room they took from the budget until it is dropped.
struct Body<'a> {
    bytes: Vec<u8>,
    taken: usize,
    budget: &'a BodyBudget,
}

/// Why a body could not be read.
#[derive(Debug)]
enum BodyError {
    /// Declared or grown past the maximum body size.
    TooLarge,
    /// The budget of all bodies has no room for this one now.
    NoRoom,
    /// Not received in full within the body timeout.
    Timeout,
    /// The connection broke or sent a malformed body.
    Read(PayloadError),
}

/// A body's first allocation is its declared length up to this: a usual event takes one
/// allocation of its size, and a client declaring a large body it does not send holds little.
const FIRST_CAPACITY: usize = 16 * 1024;

impl<'a> Body<'a> {
    fn new(budget: &'a BodyBudget, capacity: usize) -> Result<Self, BodyError> {
        if !budget.take(capacity) {
            return Err(BodyError::NoRoom);
        }
        Ok(Self {
            bytes: Vec::with_capacity(capacity),
            taken: capacity,
            budget,
        })
    }

    /// Appends `chunk` (`len + chunk.len()` is within `limit`), doubling the capacity up to
    /// `limit` when it must grow, with the room taken from the budget first.
    fn extend(&mut self, chunk: &[u8], limit: usize) -> Result<(), BodyError> {
        let needed = self.bytes.len() + chunk.len();
        if needed > self.taken {
            let capacity = needed.max(self.taken * 2).min(limit);
            if !self.budget.take(capacity - self.taken) {
                return Err(BodyError::NoRoom);
            }
            self.bytes.reserve_exact(capacity - self.bytes.len());
            self.taken = capacity;
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }
}

impl Drop for Body<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    status: &'a str,
    id: &'a str,
}

/// Registers the public routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/highlevel", web::post().to(webhook))
        .route("/healthz", web::get().to(healthz))
        .configure(super::oauth::routes);
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Reads the body up to the limit, within the budget of all bodies.
async fn read_limited<'a>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    budget: &'a BodyBudget,
) -> Result<Body<'a>, BodyError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Body::new(budget, declared.unwrap_or(4096).min(FIRST_CAPACITY))?;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if body.bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend(&chunk, limit)?;
    }
    Ok(body)
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/highlevel`: the contract's checks in order, then 200.
pub async fn webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<PublicState>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let ingest = &state.ingest;
    let metrics = &ingest.metrics;

    let read = read_limited(&req, payload, state.max_body_bytes, &state.bodies);
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Err(refuse_body(&state, e, started)),
        Err(_elapsed) => return Err(refuse_body(&state, BodyError::Timeout, started)),
    };
    let headers = SignatureHeaders {
        ghl: header(&req, "x-ghl-signature"),
        wh: header(&req, "x-wh-signature"),
    };

    let result = ingest.ingest(&body.bytes, headers).await;
    let (outcome, answer) = match result {
        Ok(receipt) => {
            let (outcome, status) = if receipt.duplicate {
                (WebhookOutcome::Duplicate, "duplicate")
            } else {
                (WebhookOutcome::Accepted, "accepted")
            };
            metrics.ingest_seconds.observe(started.elapsed());
            let response = HttpResponse::Ok().json(Answer {
                status,
                id: &receipt.dedup_key,
            });
            metrics.webhook(outcome);
            log(outcome, Some(&receipt), started, 200);
            return Ok(response);
        }
        Err(IngestError::MissingSignature) => (
            WebhookOutcome::MissingSignature,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_signature",
                "no X-GHL-Signature (or accepted X-WH-Signature) header",
            ),
        ),
        Err(IngestError::InvalidSignature) => (
            WebhookOutcome::InvalidSignature,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "the signature does not match the body and the configured keys",
            ),
        ),
        Err(IngestError::StaleTimestamp) => (
            WebhookOutcome::StaleTimestamp,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "stale_timestamp",
                "the event timestamp is older than the retention or too far in the future",
            ),
        ),
        Err(e @ (IngestError::OutboxFull(_) | IngestError::Store(_))) => {
            tracing::warn!(error = %e, "refusing an event for now");
            (
                WebhookOutcome::Overloaded,
                ApiError::overloaded("hlgate cannot store events right now; retry later"),
            )
        }
    };
    metrics.webhook(outcome);
    log(outcome, None, started, answer.status.as_u16());
    Err(answer)
}

/// The answer to a body that could not be read; counted and logged like every webhook answer
/// (but a broken connection, which nobody hears).
fn refuse_body(state: &PublicState, error: BodyError, started: Instant) -> ApiError {
    let (outcome, answer) = match error {
        BodyError::Read(e) => {
            return ApiError::bad_request(format!("the body could not be read: {e}"));
        }
        BodyError::TooLarge => (
            WebhookOutcome::TooLarge,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {} bytes", state.max_body_bytes),
            ),
        ),
        BodyError::NoRoom => (
            WebhookOutcome::Overloaded,
            ApiError::overloaded("hlgate holds too many unfinished bodies; retry later"),
        ),
        BodyError::Timeout => (
            WebhookOutcome::BodyTimeout,
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {}",
                    format_duration(state.body_timeout)
                ),
            ),
        ),
    };
    state.ingest.metrics.webhook(outcome);
    log(outcome, None, started, answer.status.as_u16());
    answer
}

/// One line per request; never a secret.
fn log(outcome: WebhookOutcome, receipt: Option<&Receipt>, started: Instant, status: u16) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match receipt {
        Some(r) => tracing::info!(
            outcome = outcome.as_str(),
            status,
            id = %r.dedup_key,
            webhook_id = r.webhook_id.as_deref().unwrap_or(""),
            tenant = %r.tenant,
            event_type = %r.event_type,
            latency_ms,
            "webhook"
        ),
        None => tracing::info!(outcome = outcome.as_str(), status, latency_ms, "webhook"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_grows_by_doubling_within_its_limit_and_gives_its_room_back() {
        let budget = BodyBudget::for_max_body(0);
        let limit = 100_000;
        let mut body = Body::new(&budget, 1_000).unwrap();
        body.extend(&[1; 1_500], limit).unwrap();
        assert_eq!(body.taken, 2_000);
        body.extend(&[2; 90_000], limit).unwrap();
        assert_eq!(body.taken, 91_500);
        body.extend(&[3; 8_500], limit).unwrap();
        assert_eq!(body.taken, limit);
        assert_eq!(budget.held.load(Ordering::Relaxed), limit);
        drop(body);
        assert_eq!(budget.held.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_body_gets_room_past_the_budget() {
        let budget = BodyBudget::for_max_body(0);
        let full = Body::new(&budget, BODY_BUDGET_BYTES).unwrap();
        assert!(matches!(Body::new(&budget, 1), Err(BodyError::NoRoom)));
        drop(full);
        let _most = Body::new(&budget, BODY_BUDGET_BYTES - 100).unwrap();
        let mut body = Body::new(&budget, 80).unwrap();
        // Growing past the budget fails and leaves what the body took as it was.
        assert!(matches!(
            body.extend(&[0; 90], usize::MAX),
            Err(BodyError::NoRoom)
        ));
        assert_eq!(body.taken, 80);
        assert_eq!(budget.held.load(Ordering::Relaxed), BODY_BUDGET_BYTES - 20);
    }
}
