//! Delivery health on the admin listener: `GET /v1/health`, the counts in steps for charts
//! (`GET /v1/health/series`) and each tenant's last delivery, `GET /v1/health/tenants`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::authorize;
use super::error::ApiError;
use super::state::AdminState;
use crate::config::{format_duration, parse_duration};
use crate::health::{Conditions, MAX_SPAN_MINUTES, MAX_STEPS};

/// Tenants a page holds when the caller does not say, and at most.
const PAGE_DEFAULT: usize = 500;
const PAGE_MAX: usize = 5000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/health", web::get().to(health))
        .route("/v1/health/series", web::get().to(series))
        .route("/v1/health/tenants", web::get().to(tenants));
}

/// Reads the outbox, broker, store and tenant conditions off the async threads.
async fn conditions(state: &web::Data<AdminState>) -> Result<Conditions, ApiError> {
    let (store, metrics, tokens) = (
        state.store.clone(),
        state.metrics.clone(),
        state.tokens.clone(),
    );
    web::block(move || Conditions::read(&store, &metrics, &tokens))
        .await
        .map_err(|_| ApiError::overloaded("busy"))
}

/// `GET /v1/health`: the windows judged against HighLevel's pause rule, silence, the rest.
async fn health(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    if !req.query_string().is_empty() {
        return Err(ApiError::bad_request("GET /v1/health takes no parameters"));
    }
    let conditions = conditions(&state).await?;
    Ok(HttpResponse::Ok().json(state.health.report(conditions)))
}

/// `GET /v1/health/series?span=&step=`: the last `span` (default 72h) in steps of `step`
/// (default 1h), each with its attempts by outcome and success ratio.
async fn series(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let (span, step) = series_query(req.query_string())?;
    Ok(HttpResponse::Ok().json(state.health.series(span, step)))
}

/// Span and step in minutes: whole minutes, the step dividing the span, within the minutes
/// kept and at most [`MAX_STEPS`] steps; anything else refused by name.
fn series_query(text: &str) -> Result<(u64, u64), ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(text)
        .map_err(|e| ApiError::bad_request(format!("the query string cannot be read: {e}")))?;
    let (mut span, mut step) = (72 * 60, 60);
    for (name, value) in pairs.into_inner() {
        let minutes = || {
            parse_duration(&value)
                .ok()
                .filter(|d| d.as_secs() > 0 && d.as_secs() % 60 == 0 && d.subsec_nanos() == 0)
                .map(|d| d.as_secs() / 60)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name} must be a whole number of minutes such as 90m or 72h, got {value:?}"
                    ))
                })
        };
        match name.as_str() {
            "span" => span = minutes()?,
            "step" => step = minutes()?,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {name:?}: expected span or step"
                )))
            }
        }
    }
    let longest = std::time::Duration::from_secs(MAX_SPAN_MINUTES * 60);
    if span > MAX_SPAN_MINUTES {
        return Err(ApiError::bad_request(format!(
            "span must be at most {} (the minutes kept)",
            format_duration(longest)
        )));
    }
    if span % step != 0 {
        return Err(ApiError::bad_request("step must divide span"));
    }
    if span / step > MAX_STEPS {
        return Err(ApiError::bad_request(format!(
            "span over step makes more than {MAX_STEPS} steps: take a longer step"
        )));
    }
    Ok((span, step))
}

/// `GET /v1/health/tenants?limit=&after=`: tenants in tenant order with their last delivery.
async fn tenants(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("the query string cannot be read: {e}")))?;
    let (mut limit, mut after) = (PAGE_DEFAULT, None);
    for (name, value) in pairs.into_inner() {
        match name.as_str() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {PAGE_MAX}, got {value:?}"
                        ))
                    })?
            }
            "after" if !value.is_empty() => after = Some(value),
            "after" => return Err(ApiError::bad_request("after must be a tenant id, got \"\"")),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {name:?}: expected limit or after"
                )))
            }
        }
    }
    let (page, next) = state.health.tenants(after.as_deref(), limit);
    let tenants: Vec<_> = page
        .into_iter()
        .map(|(tenant, (ms, event_type))| {
            serde_json::json!({
                "tenant": tenant,
                "last_delivery_at": crate::health::rfc3339(ms),
                "event_type": event_type,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "tenants": tenants, "next": next })))
}
