//! The admin listener: health, readiness, metrics, replay (and the token API when the token
//! module is on). Everything but `/healthz` wants the admin bearer token when one is set.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::auth::authorize;
use super::error::ApiError;
use super::state::AdminState;
use crate::event::sanitize;
use crate::metrics::Gauges;
use crate::oauth::{parse_state, PageQuery, TokenError, VaultError, PAGE_MAX};
use crate::store::{ReplayError, Window};

/// Registers the admin routes (`/healthz` is the server's, on both listeners).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/v1/replay", web::post().to(replay))
        .route("/v1/tenants", web::get().to(tenants))
        .route(
            "/v1/tenants/{tenant}/private-token",
            web::put().to(private_token),
        )
        .route("/v1/tokens/{tenant}", web::get().to(token));
}

/// Runs store or vault work off the async threads; a pool that cannot take it now is busy.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ApiError> {
    web::block(work)
        .await
        .map_err(|_| ApiError::overloaded("busy"))
}

async fn readyz(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let store = state.store.clone();
    let (depth, oldest) = blocking(move || store.outbox_state()).await?;
    let writable = state.store.writable();
    let damaged = !state.store.damage().is_empty();
    let broker = state.metrics.broker();
    let ready = !damaged && writable && depth < state.outbox_max_events;
    let store = match (damaged, writable) {
        (true, _) => "damaged",
        (false, true) => "ok",
        // Only a restart recovers from a failed fsync.
        (false, false) if state.store.stopped() => "stopped",
        (false, false) => "unwritable",
    };
    let body = serde_json::json!({
        "store": store,
        "broker": broker.as_str(),
        "outbox_depth": depth,
        "oldest_pending_seconds": oldest,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(HttpResponse::build(status).json(body))
}

async fn metrics(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let store = state.store.clone();
    let (outbox_depth, outbox_oldest_seconds) = blocking(move || store.outbox_state()).await?;
    let (buckets_open, buckets_closed) = state.store.bucket_states();
    let gauges = Gauges {
        outbox_depth,
        outbox_oldest_seconds,
        buckets_open: buckets_open as u64,
        buckets_closed: buckets_closed as u64,
        store_damaged: !state.store.damage().is_empty(),
        store_stopped: state.store.stopped(),
        store_writable: state.store.writable(),
        last_accepted_seconds: state.health.last_accepted_ms().map(|ms| ms as f64 / 1000.0),
        tenants: state.tokens.state_counts(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&gauges)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    since: String,
    until: String,
    #[serde(rename = "type")]
    event_type: Option<String>,
    tenant: Option<String>,
    /// Count what would be replayed, publishing nothing.
    #[serde(default)]
    dry_run: bool,
}

fn unix_ms(field: &str, text: &str) -> Result<u64, ApiError> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::bad_request(format!("{field} must be an RFC 3339 time, got {text:?}"))
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

/// `POST /v1/replay`: republishes archived events of a window, marked `x-hl-replay: true`, one
/// replay at a time (409 while another runs).
async fn replay(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let request: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"since\",\"until\",\"type\"?,\"tenant\"?,\"dry_run\"?}}: {e}"
        ))
    })?;
    let since = unix_ms("since", &request.since)?;
    let until = unix_ms("until", &request.until)?;
    if since > until {
        return Err(ApiError::bad_request("since is after until"));
    }
    let (event_type, tenant) = (request.event_type.clone(), request.tenant.clone());
    let window = Window {
        since_ms: since,
        until_ms: until,
    };
    let keep = move |e: &crate::entry::Entry| {
        matches(&event_type, &e.event_type) && matches(&tenant, &e.tenant)
    };
    if request.dry_run {
        let count = state
            .store
            .count_replay(window, keep)
            .await
            .map_err(|e| ApiError::overloaded(format!("the archive could not be read: {e}")))?;
        return Ok(
            HttpResponse::Ok().json(serde_json::json!({ "replayed": count, "dry_run": true }))
        );
    }
    let replayed = state.store.replay(window, keep, &state.shutdown).await;
    let count = match replayed {
        Ok(count) => count,
        Err(ReplayError::Running) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "replay_running",
                "another replay is running; ask again once it has answered",
            ))
        }
        Err(e @ ReplayError::Stopped { .. }) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ))
        }
        Err(e @ ReplayError::Failed { .. }) => return Err(ApiError::overloaded(e.to_string())),
    };
    tracing::info!(count, "replay queued");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "replayed": count })))
}

/// Whether a replay's `type` or `tenant` filter takes `value` (as received, or as the routing
/// key has it).
fn matches(wanted: &Option<String>, value: &str) -> bool {
    match wanted {
        None => true,
        Some(w) => w == value || *w == sanitize(value),
    }
}

/// A vault that cannot be read or written is a server fault, not a reason to retry soon.
fn vault_error(what: &str, e: VaultError) -> ApiError {
    tracing::error!(error = %e, "the token vault cannot be {what}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "vault_error",
        format!("the token vault cannot be {what}: {e}"),
    )
}

/// `GET /v1/tenants?limit&after&state`: a page of installs with their token state and expiry,
/// never a token.
async fn tenants(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let query = page_query(req.query_string())?;
    let tokens = state.tokens.clone();
    let mut page = blocking(move || tokens.tenant_page(&query))
        .await?
        .map_err(|e| vault_error("read", e))?;
    for view in &mut page.tenants {
        let (location, company) = (view.location_id.as_deref(), view.company_id.as_deref());
        view.rate = Some(state.proxy.rate(&view.tenant, location, company));
    }
    Ok(HttpResponse::Ok().json(page))
}

/// The page `GET /v1/tenants` asks for; a parameter that is unknown or out of range is refused
/// by name, so that a typo does not silently list from the start.
fn page_query(text: &str) -> Result<PageQuery, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(text)
        .map_err(|e| ApiError::bad_request(format!("the query string cannot be read: {e}")))?;
    let mut query = PageQuery::default();
    for (name, value) in pairs.into_inner() {
        match name.as_str() {
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {PAGE_MAX}, got {value:?}"
                        ))
                    })?
            }
            "after" if value.is_empty() => {
                return Err(ApiError::bad_request("after must be a tenant id, got \"\""))
            }
            "after" => query.after = Some(value),
            "state" => {
                query.state = Some(parse_state(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state must be active, inactive, needs_reauth or private, got {value:?}"
                    ))
                })?)
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {name:?}: expected limit, after or state"
                )))
            }
        }
    }
    Ok(query)
}

/// `GET /v1/tokens/{tenant}`: a token valid at least `HLGATE_TOKEN_MIN_TTL`.
async fn token(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let tenant = path.into_inner();
    match state.tokens.token(&tenant).await {
        Ok(served) => Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(served)),
        Err(TokenError::Unknown) => Err(ApiError::not_found(format!(
            "no tokens for tenant {tenant}"
        ))),
        Err(TokenError::NeedsReauth) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "needs_reauth",
            "the tokens cannot be refreshed or recovered; the app must be installed again",
        )),
        Err(TokenError::Inactive) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "inactive",
            "HighLevel says the location is not active; hlgate keeps retrying",
        )),
        Err(e @ (TokenError::Unavailable(_) | TokenError::Off | TokenError::Vault(_))) => {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                e.to_string(),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateToken {
    token: String,
}

/// `PUT /v1/tenants/{tenant}/private-token`: stores a Private Integration Token.
async fn private_token(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let tenant = path.into_inner();
    let request: PrivateToken = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("expected {\"token\": \"…\"}"))?;
    if request.token.trim().is_empty() {
        return Err(ApiError::bad_request("the token is empty"));
    }
    let tokens = state.tokens.clone();
    blocking(move || tokens.set_private(&tenant, request.token.trim()))
        .await?
        .map_err(|e| vault_error("written", e))?;
    Ok(HttpResponse::NoContent().finish())
}
