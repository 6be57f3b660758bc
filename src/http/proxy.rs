//! `ANY /v1/highlevel/{tenant}/{path…}` on the admin listener: HighLevel's API with the
//! tenant's token. This file is HTTP only (who may call, which headers pass, bodies streamed
//! both ways, errors as JSON); `oauth::Proxy` decides token, wait and retries.

use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::auth::authorize_proxy;
use super::error::ApiError;
use super::state::AdminState;
use crate::highlevel::ApiBody;
use crate::oauth::{retry_after_secs, BodyError, Forward, ProxyBody, ProxyError, TokenError};

const PREFIX: &str = "/v1/highlevel/";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/highlevel/{tenant}/{path:.*}", web::route().to(forward));
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never passed on in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header passes, given the names the `Connection` header lists.
fn passes(name: &str, listed: &[String], also_dropped: &[&str]) -> bool {
    let name = name.to_ascii_lowercase();
    !HOP_BY_HOP.contains(&name.as_str())
        && !also_dropped.contains(&name.as_str())
        && !listed.contains(&name)
}

fn connection_listed<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}

/// Headers that tell where a request came from through the hops before hlgate: the network
/// inside the app is none of HighLevel's business.
fn names_a_hop(name: &str) -> bool {
    name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
}

/// The caller's headers as HighLevel gets them: its credentials and the hops' own go.
fn request_headers(req: &HttpRequest) -> Vec<(String, Vec<u8>)> {
    let listed = connection_listed(req.headers().get_all("connection").map(|v| v.as_bytes()));
    req.headers()
        .iter()
        .filter(|(k, _)| passes(k.as_str(), &listed, &["authorization", "cookie", "host"]))
        .filter(|(k, _)| !names_a_hop(k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// The path below HLGATE_API_BASE_URL as HighLevel gets it, from the raw `path` after the
/// tenant: dot segments resolved (`.`, `..` and their percent-encoded forms, which URL parsers
/// resolve too) and a backslash read as the slash URL parsers take it for; the other segments
/// as the caller encoded them. `None` when the path climbs above the base, or hides a slash or
/// backslash in a percent-encoding, which a server further on may decode into one.
fn upstream_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split(['/', '\\']).collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let lower = segment.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return None;
        }
        let dots = lower.replace("%2e", ".");
        match dots.as_str() {
            "." => {}
            ".." => {
                kept.pop()?;
            }
            _ => kept.push(segment),
        }
        // A path ending in a dot segment names the directory it resolves to.
        if i + 1 == segments.len() && (dots == "." || dots == "..") {
            kept.push("");
        }
    }
    Some(format!("/{}", kept.join("/")))
}

fn bad_path() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_path",
        "the path climbs above HLGATE_API_BASE_URL's path, or hides a slash as %2F or %5C",
    )
}

/// The body's declared length: `Some(0)` when the request has none.
fn declared_length(req: &HttpRequest) -> Option<u64> {
    let headers = req.headers();
    match headers.get("content-length") {
        Some(v) => v.to_str().ok()?.parse().ok(),
        None if headers.contains_key("transfer-encoding") => None,
        None => Some(0),
    }
}

/// Streams the payload into `tx` as it comes, bounded by `max`, and hands the whole body to
/// `whole` at its end, for a retry. Reading goes on after HighLevel stopped reading (an early
/// answer), so that a retry has the whole body.
fn pump(mut payload: web::Payload, max: usize) -> ProxyBody {
    let (tx, rx) = mpsc::channel::<Result<web::Bytes, std::io::Error>>(8);
    let (whole_tx, whole_rx) = oneshot::channel();
    actix_web::rt::spawn(async move {
        let mut kept = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    let _ = whole_tx.send(Err(BodyError::Broken(e.to_string())));
                    return;
                }
            };
            if kept.len() + chunk.len() > max {
                let _ = tx.send(Err(std::io::Error::other("body too large"))).await;
                let _ = whole_tx.send(Err(BodyError::TooLarge));
                return;
            }
            kept.extend_from_slice(&chunk);
            // A receiver gone means HighLevel answered early: keep reading for a retry.
            let _ = tx.send(Ok(chunk)).await;
        }
        let _ = whole_tx.send(Ok(kept.freeze()));
    });
    ProxyBody {
        first: ApiBody::Chunks(rx),
        whole: Some(whole_rx),
    }
}

fn error_answer(e: &ProxyError) -> HttpResponse {
    let conflict = |code, message: &str| ApiError::new(StatusCode::CONFLICT, code, message);
    let api = match e {
        ProxyError::Token(TokenError::Unknown) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            "hlgate holds no tokens for this tenant",
        ),
        ProxyError::Token(TokenError::NeedsReauth) => conflict(
            "needs_reauth",
            "the tokens cannot be refreshed or recovered; the app must be installed again",
        ),
        ProxyError::Token(TokenError::Inactive) => conflict(
            "inactive",
            "HighLevel says the location is not active; hlgate keeps retrying",
        ),
        ProxyError::Token(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            e.to_string(),
        ),
        ProxyError::RateLimited(wait) => {
            let body = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "the tenant's HighLevel rate budget is spent; HighLevel was not called",
            );
            let mut answer = body.error_response();
            let secs = retry_after_secs(*wait).to_string();
            answer.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                secs.parse().expect("digits"),
            );
            return answer;
        }
        ProxyError::Upstream(why) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", why.clone())
        }
        ProxyError::TooLarge => too_large(),
        ProxyError::Body(why) => ApiError::bad_request(why.clone()),
    };
    api.error_response()
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "the request body is larger than HLGATE_API_MAX_BODY_BYTES",
    )
}

async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    // Refusals before the use case is reached are counted here, as it counts the rest.
    if let Err(e) = authorize_proxy(&req, &state.admin_token, &state.proxy_tokens) {
        state.metrics.api_request("unauthorized");
        return Err(e);
    }
    // The raw path, as the caller encoded it: HighLevel gets it so, its dot segments resolved.
    let rest = req.uri().path().strip_prefix(PREFIX).unwrap_or_default();
    let (tenant, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(upstream_path) = upstream_path(path) else {
        state.metrics.api_request("client_error");
        return Err(bad_path());
    };
    let tenant = tenant.to_string();
    let mut path_and_query = upstream_path.clone();
    if let Some(query) = req.uri().query() {
        path_and_query = format!("{path_and_query}?{query}");
    }
    let max = state.proxy_max_body_bytes;
    let body = match declared_length(&req) {
        Some(n) if n > max as u64 => {
            state.metrics.api_request("client_error");
            return Err(too_large());
        }
        Some(0) => ProxyBody {
            first: ApiBody::Whole(web::Bytes::new()),
            whole: None,
        },
        _ => pump(payload, max),
    };
    let method = req.method().as_str().to_string();
    let request = Forward {
        method: method.clone(),
        path_and_query,
        headers: request_headers(&req),
        body,
    };
    let parent = (state.proxy.tracer()).incoming(|| {
        let value = req.headers().get("traceparent")?;
        value.to_str().ok().map(String::from)
    });
    let (result, timing) = state.proxy.forward(&tenant, request, parent).await;
    let answer = match result {
        Ok(response) => {
            let mut answer = HttpResponse::build(
                StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY),
            );
            let listed = connection_listed(
                (response.headers.iter())
                    .filter(|(k, _)| k == "connection")
                    .map(|(_, v)| v.as_slice()),
            );
            let mut length = None;
            for (name, value) in &response.headers {
                if name == "content-length" {
                    length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                } else if passes(name, &listed, &[]) {
                    answer.append_header((name.as_str(), value.as_slice()));
                }
            }
            match length {
                Some(n) => answer.body(SizedStream::new(n, response.body)),
                None => answer.streaming(response.body),
            }
        }
        Err(e) => error_answer(&e),
    };
    // Never the query: it may carry what the caller considers private.
    tracing::info!(
        tenant = %tenant,
        method = %method,
        path = %upstream_path,
        status = answer.status().as_u16(),
        wait_ms = timing.wait.as_millis() as u64,
        upstream_ms = timing.upstream.as_millis() as u64,
        refreshed = timing.refreshed,
        held = timing.held,
        "proxied"
    );
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_the_hops_headers_stay_behind() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer caller"))
            .insert_header(("Cookie", "a=b"))
            .insert_header(("Connection", "keep-alive, x-hop"))
            .insert_header(("X-Hop", "1"))
            .insert_header(("Accept", "application/json"))
            .insert_header(("Forwarded", "for=10.0.0.7"))
            .insert_header(("X-Forwarded-For", "10.0.0.7"))
            .insert_header(("X-Forwarded-Host", "internal.example"))
            .insert_header(("X-Real-IP", "10.0.0.7"))
            .to_http_request();
        let names: Vec<String> = request_headers(&req).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["accept".to_string()]);
    }

    #[test]
    fn dot_segments_are_resolved_and_none_climbs_above_the_base() {
        let inside = [
            ("", "/"),
            ("contacts/c1", "/contacts/c1"),
            ("contacts/./c1", "/contacts/c1"),
            ("x/%2E%2e/contacts/c%20d", "/contacts/c%20d"),
            ("contacts\\c1", "/contacts/c1"),
            ("contacts/c1/..", "/contacts/"),
            ("contacts//../c1", "/contacts/c1"),
            ("..a/.b/%2e%2e%2e", "/..a/.b/%2e%2e%2e"),
        ];
        for (path, expected) in inside {
            assert_eq!(upstream_path(path).as_deref(), Some(expected), "{path}");
        }
        let outside = [
            "..",
            "%2e%2e/x",
            "loc1/%2e%2e/%2e%2e/x",
            "a/%2E%2e/.%2E/x",
            "a/../..",
            "..\\x",
            "a%2f..%2f..%2fx",
            "a%5C..",
        ];
        for path in outside {
            assert_eq!(upstream_path(path), None, "{path}");
        }
    }
}
