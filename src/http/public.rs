//! The public listener: `POST /webhooks/highlevel`, `GET /healthz`.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;

use super::ApiError;
use crate::ingest::{Ingest, IngestError, Receipt};
use crate::metrics::WebhookOutcome;
use crate::verify::SignatureHeaders;

/// What the public handlers share.
pub struct PublicState {
    pub ingest: Arc<Ingest>,
    pub max_body_bytes: usize,
    /// The token module, for the install flow.
    pub tokens: Option<Arc<crate::oauth::TokenService>>,
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

/// Reads the body up to the limit; `None` when it is larger.
async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Option<web::BytesMut>, actix_web::Error> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
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

    let body = match read_limited(&req, payload, state.max_body_bytes).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            metrics.webhook(WebhookOutcome::TooLarge);
            log(WebhookOutcome::TooLarge, None, started, 413);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {} bytes", state.max_body_bytes),
            ));
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "the body could not be read: {e}"
            )))
        }
    };
    let headers = SignatureHeaders {
        ghl: header(&req, "x-ghl-signature"),
        wh: header(&req, "x-wh-signature"),
    };

    let result = ingest.ingest(&body, headers).await;
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
