//! The public listener's webhook: `POST /webhooks/highlevel`.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::body::{read_limited, BodyError};
use super::error::ApiError;
use super::state::PublicState;
use crate::config::format_duration;
use crate::health::Attempt;
use crate::ingest::{IngestError, Receipt};
use crate::loglimit::LogLimit;
use crate::metrics::WebhookOutcome;
use crate::store::StoreError;
use crate::traces::{Kind, Span};
use crate::verify::SignatureHeaders;

#[derive(Serialize)]
struct Answer<'a> {
    status: &'a str,
    id: &'a str,
}

/// Registers the webhook route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/highlevel", web::post().to(webhook));
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
    // HighLevel sends no traceparent; a proxy in front of hlgate may.
    let parent = ingest
        .tracer
        .incoming(|| header(&req, "traceparent").map(String::from));
    let span = ingest
        .tracer
        .span_since("webhook", Kind::Server, parent, started);

    let read = read_limited(&req, payload, state.max_body_bytes, &state.bodies);
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return Err(refuse_body(&state, e, started, span)),
        Err(_elapsed) => return Err(refuse_body(&state, BodyError::Timeout, started, span)),
    };
    let headers = SignatureHeaders {
        ghl: header(&req, "x-ghl-signature"),
        wh: header(&req, "x-wh-signature"),
    };

    let result = ingest.ingest(&body.bytes, headers, &span).await;
    let (attempt, answer) = match result {
        Ok(receipt) => {
            let (attempt, status) = if receipt.duplicate {
                (Attempt::Duplicate, "duplicate")
            } else {
                (Attempt::Accepted, "accepted")
            };
            metrics.ingest_seconds.observe(started.elapsed());
            let response = HttpResponse::Ok().json(Answer {
                status,
                id: &receipt.dedup_key,
            });
            metrics.webhook(attempt.outcome());
            state
                .tally
                .delivered(attempt, &receipt.tenant, &receipt.event_type);
            log(attempt.outcome(), Some(&receipt), started, 200, span);
            return Ok(response);
        }
        Err(IngestError::MissingSignature) => (
            Attempt::MissingSignature,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_signature",
                "no X-GHL-Signature (or accepted X-WH-Signature) header",
            ),
        ),
        Err(IngestError::InvalidSignature) => (
            Attempt::InvalidSignature,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "the signature does not match the body and the configured keys",
            ),
        ),
        Err(IngestError::StaleTimestamp) => (
            Attempt::StaleTimestamp,
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "stale_timestamp",
                "the event timestamp is older than the retention or too far in the future",
            ),
        ),
        Err(e @ (IngestError::OutboxFull(_) | IngestError::Store(_))) => {
            // Every delivery gets this while it lasts: a line per cause per interval.
            static REFUSING: LogLimit = LogLimit::new(Duration::from_secs(10));
            if let Some(held_back) = REFUSING.admit(&e.to_string()) {
                tracing::warn!(error = %e, held_back, "refusing events for now");
            }
            (
                refusal(&e),
                ApiError::overloaded("hlgate cannot store events right now; retry later"),
            )
        }
    };
    count(&state, attempt);
    log(
        attempt.outcome(),
        None,
        started,
        answer.status.as_u16(),
        span,
    );
    Err(answer)
}

/// The cause of a 429, for delivery health.
fn refusal(e: &IngestError) -> Attempt {
    match e {
        IngestError::OutboxFull(_) => Attempt::OutboxFull,
        IngestError::Store(StoreError::DiskLow { .. }) => Attempt::DiskFull,
        IngestError::Store(e) if e.is_no_space() => Attempt::DiskFull,
        IngestError::Store(StoreError::Busy | StoreError::Stalled(_)) => Attempt::StoreBusy,
        _ => Attempt::StoreError,
    }
}

/// Counted in `hlgate_webhooks_total` and in delivery health.
fn count(state: &PublicState, attempt: Attempt) {
    state.ingest.metrics.webhook(attempt.outcome());
    state.tally.count(attempt);
}

/// The answer to a body that could not be read; counted and logged like every webhook answer
/// (a broken connection too: HighLevel counts a delivery without an answer as failed).
fn refuse_body(state: &PublicState, error: BodyError, started: Instant, span: Span) -> ApiError {
    let (attempt, answer) = match error {
        BodyError::Read(e) => (
            Attempt::Unreadable,
            ApiError::bad_request(format!("the body could not be read: {e}")),
        ),
        BodyError::TooLarge => (
            Attempt::TooLarge,
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {} bytes", state.max_body_bytes),
            ),
        ),
        BodyError::NoRoom => (
            Attempt::TooManyBodies,
            ApiError::overloaded("hlgate holds too many unfinished bodies; retry later"),
        ),
        BodyError::Timeout => (
            Attempt::BodyTimeout,
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
    count(state, attempt);
    log(
        attempt.outcome(),
        None,
        started,
        answer.status.as_u16(),
        span,
    );
    answer
}

/// One line per request, and the end of its span; never a secret.
fn log(
    outcome: WebhookOutcome,
    receipt: Option<&Receipt>,
    started: Instant,
    status: u16,
    mut span: Span,
) {
    if span.is_recording() {
        span.set("http.request.method", "POST");
        span.set("http.route", "/webhooks/highlevel");
        span.set("http.response.status_code", i64::from(status));
        span.set("hlgate.outcome", outcome.as_str());
        if let Some(r) = receipt {
            span.set("hlgate.tenant", r.tenant.as_str());
            span.set("hlgate.event_type", r.event_type.as_str());
        }
        if status >= 400 {
            span.fail("refused");
        }
    }
    span.end();
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
