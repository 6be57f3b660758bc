//! Who may call the admin listener: bearer tokens compared in constant time.

use actix_web::HttpRequest;

use super::error::ApiError;
use crate::config::Secret;

/// The bearer token of `req`, empty when there is none.
fn bearer(req: &HttpRequest) -> &str {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Whether `given` is `expected`, in time that does not depend on where they differ.
fn same(given: &str, expected: &Secret) -> bool {
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let (a, b) = (digest(given), digest(expected.expose()));
    // Equal digests of equal length; compared without early exit.
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0 && !given.is_empty()
}

/// Checks `Authorization: Bearer …` against the admin token, in constant time.
pub fn authorize(req: &HttpRequest, token: &Option<Secret>) -> Result<(), ApiError> {
    match token {
        None => Ok(()),
        Some(expected) if same(bearer(req), expected) => Ok(()),
        Some(_) => Err(ApiError::unauthorized()),
    }
}

/// The proxy opens to the admin token or any proxy token; with neither configured, to anyone
/// who reaches the (then loopback) admin listener. Every token is compared, so that the time
/// taken does not tell which one matched.
pub fn authorize_proxy(
    req: &HttpRequest,
    admin: &Option<Secret>,
    proxy: &[Secret],
) -> Result<(), ApiError> {
    if admin.is_none() && proxy.is_empty() {
        return Ok(());
    }
    let given = bearer(req);
    let matched = admin
        .iter()
        .chain(proxy)
        .fold(false, |ok, expected| same(given, expected) | ok);
    if matched {
        Ok(())
    } else {
        Err(ApiError::new(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin or proxy bearer token is required",
        ))
    }
}
