//! What both listeners answer while the store cannot open for want of disk space: webhooks 429
//! (HighLevel retries them, as it does any refusal), `/readyz` 503 saying why, the rest 503.
//! Meanwhile the start keeps trying to open the store, and hands the listeners on once it has.

use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use std::sync::Arc;

use super::auth::authorize;
use super::error::ApiError;
use crate::config::Secret;
use crate::health::{Attempt, Tally};

const WHY: &str = "the data disk is full: the store cannot open until there is space again";

/// What the holding servers share.
#[derive(Clone)]
pub struct Holding {
    pub admin_token: Option<Secret>,
    /// Each 429 counts in delivery health: HighLevel counts it as a failure.
    pub tally: Arc<Tally>,
}

/// Every answer closes its connection: the next request then reaches the servers that follow.
fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    response
}

pub(super) fn public(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks/highlevel", web::post().to(webhook))
        .default_service(web::to(unavailable));
}

pub(super) fn admin(cfg: &mut web::ServiceConfig) {
    cfg.route("/readyz", web::get().to(readyz))
        .default_service(web::to(authorized_unavailable));
}

/// Nothing is read or stored: the body waits at HighLevel, which delivers it again.
async fn webhook(state: web::Data<Holding>) -> HttpResponse {
    state.tally.count(Attempt::DiskFull);
    closing(ApiError::overloaded(WHY).error_response())
}

async fn unavailable() -> HttpResponse {
    let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", WHY);
    closing(error.error_response())
}

async fn authorized_unavailable(req: HttpRequest, state: web::Data<Holding>) -> HttpResponse {
    match authorize(&req, &state.admin_token) {
        Ok(()) => unavailable().await,
        Err(e) => closing(e.error_response()),
    }
}

async fn readyz(req: HttpRequest, state: web::Data<Holding>) -> HttpResponse {
    if let Err(e) = authorize(&req, &state.admin_token) {
        return closing(e.error_response());
    }
    closing(HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "store": "disk_full",
        "broker": "disconnected",
        "message": WHY,
    })))
}
