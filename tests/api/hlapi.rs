//! A stand-in for HighLevel's API, served by the OAuth stand-in's server: it accepts only a
//! tenant's current access token and a request with a `Version` (answering HighLevel's 401s
//! otherwise), counts requests per token against a burst window and a daily limit as
//! HighLevel does (answering `X-RateLimit-*` and 429 over the limit), and offers a few
//! endpoints: a contact, an echo, one the tokens lack the scope for, and failures on demand.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use crate::highlevel::State;

pub struct ApiState {
    pub burst: usize,
    pub interval: Duration,
    pub daily: u64,
    /// Arrivals per token within the last interval, and requests per token today.
    sent: HashMap<String, VecDeque<Instant>>,
    used_today: HashMap<String, u64>,
    /// The most requests of one token seen within one interval.
    pub max_in_window: usize,
    /// Requests answered 429 for being over the limit.
    pub limited: usize,
    /// Requests refused for their token or for a missing `Version`.
    pub unauthorized: usize,
    /// Requests that passed the token and rate checks, per path.
    pub calls: HashMap<String, usize>,
    /// Statuses `/fail` answers, in order, before it answers 200.
    pub failures: VecDeque<u16>,
    /// The method of every request that passed the checks, in order.
    pub methods: Vec<String>,
    /// The raw path of every request that arrived, checked or not, in order.
    pub paths: Vec<String>,
}

impl ApiState {
    pub fn new() -> ApiState {
        ApiState {
            burst: 100,
            interval: Duration::from_secs(10),
            daily: 200_000,
            sent: HashMap::new(),
            used_today: HashMap::new(),
            max_in_window: 0,
            limited: 0,
            methods: Vec::new(),
            paths: Vec::new(),
            unauthorized: 0,
            calls: HashMap::new(),
            failures: VecDeque::new(),
        }
    }

    pub fn calls(&self, path: &str) -> usize {
        self.calls.get(path).copied().unwrap_or(0)
    }
}

impl Default for ApiState {
    fn default() -> Self {
        ApiState::new()
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(64 << 20))
        .default_service(web::to(api));
}

fn error(status: u16, message: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap())
        .json(json!({"statusCode": status, "message": message}))
}

/// Answer headers, by name.
type Headers = Vec<(String, String)>;

/// Counts the request against the token's windows: `Err` when over a limit, else the
/// rate-limit headers to answer with.
fn count(api: &mut ApiState, token: &str) -> Result<Headers, Headers> {
    let now = Instant::now();
    let sent = api.sent.entry(token.to_string()).or_default();
    while sent.front().is_some_and(|t| now - *t >= api.interval) {
        sent.pop_front();
    }
    let used = api.used_today.entry(token.to_string()).or_default();
    let over = sent.len() >= api.burst || *used >= api.daily;
    if !over {
        sent.push_back(now);
        *used += 1;
    }
    api.max_in_window = api.max_in_window.max(sent.len());
    let headers = vec![
        ("X-RateLimit-Max".into(), api.burst.to_string()),
        (
            "X-RateLimit-Remaining".into(),
            api.burst.saturating_sub(sent.len()).to_string(),
        ),
        (
            "X-RateLimit-Interval-Milliseconds".into(),
            api.interval.as_millis().to_string(),
        ),
        ("X-RateLimit-Limit-Daily".into(), api.daily.to_string()),
        (
            "X-RateLimit-Daily-Remaining".into(),
            api.daily.saturating_sub(*used).to_string(),
        ),
    ];
    if over {
        api.limited += 1;
        Err(headers)
    } else {
        Ok(headers)
    }
}

async fn api(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let path = req.path().to_string();
    let versioned = req
        .headers()
        .get("version")
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty());
    let (headers, failure) = {
        let mut s = state.lock().unwrap();
        s.api.paths.push(path.clone());
        let current = s.current.values().any(|t| *t == bearer);
        if !current {
            s.api.unauthorized += 1;
            return error(401, "Invalid JWT");
        }
        if !versioned {
            s.api.unauthorized += 1;
            return error(401, "version header was not found.");
        }
        let headers = match count(&mut s.api, &bearer) {
            Ok(h) => h,
            Err(h) => {
                let mut answer = error(429, "Too many requests");
                for (k, v) in h {
                    answer
                        .headers_mut()
                        .insert(k.parse().unwrap(), v.parse().unwrap());
                }
                return answer;
            }
        };
        *s.api.calls.entry(path.clone()).or_default() += 1;
        s.api.methods.push(req.method().to_string());
        let failure = (path == "/fail")
            .then(|| s.api.failures.pop_front())
            .flatten();
        (headers, failure)
    };
    let mut answer = match (path.as_str(), failure) {
        (_, Some(status)) => error(status, "Bad gateway"),
        // No token of the app has the scope: a new one would not either.
        ("/out-of-scope", None) => error(401, "The token is not authorized for this scope."),
        (p, None) if p.starts_with("/contacts/") => {
            let id = p.trim_start_matches("/contacts/");
            let version = req.headers().get("version").and_then(|v| v.to_str().ok());
            let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
            HttpResponse::Ok().json(json!({
                "contact": {"id": id},
                "version": version,
                "query": req.query_string(),
                "headers": names,
            }))
        }
        ("/echo", None) => {
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                body.extend_from_slice(&chunk.unwrap());
            }
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(body.freeze())
        }
        _ => HttpResponse::Ok().json(json!({"ok": true})),
    };
    for (k, v) in headers {
        answer
            .headers_mut()
            .insert(k.parse().unwrap(), v.parse().unwrap());
    }
    answer
}
