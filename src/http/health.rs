//! Delivery health on the admin listener: `GET /v1/health` and each tenant's last delivery,
//! `GET /v1/health/tenants`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::authorize;
use super::error::ApiError;
use super::state::AdminState;
use crate::health::Conditions;

/// Tenants a page holds when the caller does not say, and at most.
const PAGE_DEFAULT: usize = 500;
const PAGE_MAX: usize = 5000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/health", web::get().to(health))
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
