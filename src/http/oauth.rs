//! The install flow on the public listener: `GET /oauth/install` and `GET /oauth/callback`.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{ApiError, PublicState};
use crate::highlevel::TenantKind;
use crate::oauth::{retry_after_secs, InstallError, TokenService};

/// Registers the install routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/oauth/install", web::get().to(install))
        .route("/oauth/callback", web::get().to(callback));
}

fn service(tokens: &Arc<TokenService>) -> Result<&Arc<TokenService>, ApiError> {
    match tokens.client() {
        Some(_) => Ok(tokens),
        None => Err(ApiError::not_found(
            "the token module is off: set HLGATE_CLIENT_ID and HLGATE_CLIENT_SECRET",
        )),
    }
}

async fn install(state: web::Data<PublicState>) -> Result<HttpResponse, ApiError> {
    let url = service(&state.tokens)?
        .install_url()
        .expect("the client is configured");
    Ok(HttpResponse::Found()
        .insert_header(("Location", url))
        .finish())
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    /// `Company` for agency installs; HighLevel's own flow sends only `code`.
    user_type: Option<String>,
    error: Option<String>,
}

fn page(status: StatusCode, title: &str, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><h1>{t}</h1><p>{x}</p></body></html>",
            t = escape(title),
            x = escape(text)
        ))
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn callback(
    query: web::Query<CallbackQuery>,
    state: web::Data<PublicState>,
) -> Result<HttpResponse, ApiError> {
    let service = service(&state.tokens)?;
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        let why = match &query.error {
            Some(e) => format!("HighLevel did not authorise the install: {e}"),
            None => "the callback has no code parameter".into(),
        };
        return Ok(page(StatusCode::BAD_REQUEST, "Install failed", &why));
    };
    let kind = TenantKind::from_user_type(query.user_type.as_deref().unwrap_or("Location"));
    match service.complete_install(code, kind).await {
        Ok(record) => {
            let what = if record.user_type == TenantKind::Company {
                format!("Agency (company) {} is connected.", record.tenant)
            } else {
                format!("Location {} is connected.", record.tenant)
            };
            Ok(page(StatusCode::OK, "Connected", &what))
        }
        Err(InstallError::Busy(wait)) => {
            tracing::warn!("install callback refused: the app's request budget is spent");
            let mut response = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Try again shortly",
                &format!(
                    "Too many installs are being completed right now. \
                     Please go back and try again in {} seconds.",
                    retry_after_secs(wait)
                ),
            );
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                retry_after_secs(wait).into(),
            );
            Ok(response)
        }
        Err(e @ (InstallError::Vault(_) | InstallError::Off)) => {
            tracing::error!(error = %e, "install not completed");
            Ok(page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Install failed",
                "hlgate could not store the install's tokens. Please try installing again later.",
            ))
        }
        Err(InstallError::OAuth(e)) => {
            tracing::warn!(error = %e, "code exchange failed");
            Ok(page(
                StatusCode::BAD_REQUEST,
                "Install failed",
                &format!("The authorization code could not be exchanged: {e}"),
            ))
        }
    }
}
