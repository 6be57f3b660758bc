//! Event lookup and single replay on the admin listener: `GET /v1/events` (a page of the
//! events a query matches), `GET /v1/events/{seq}` (one, with its body and the message it is
//! published as) and `POST /v1/events/{seq}/replay`. The answer's shape is [`event_json`],
//! which `hlgate events` prints too.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::auth::authorize;
use super::error::ApiError;
use super::state::AdminState;
use crate::publish::amqp::{message_view, rfc3339_ms};
use crate::store::{Found, Page, Query, State, StateFilter, StoreError};

/// Events a page holds unless asked for fewer (or more, up to [`LIMIT_MAX`]).
pub const LIMIT_DEFAULT: usize = 50;
pub const LIMIT_MAX: usize = 1000;
/// The widest window a body search (`q`) may read without a tenant or type to narrow it.
const SEARCH_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How long a body search reads before it answers what it found, with a cursor to go on.
const SEARCH_BUDGET: Duration = Duration::from_secs(2);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events", web::get().to(list))
        .route("/v1/events/{seq}", web::get().to(show))
        .route("/v1/events/{seq}/replay", web::post().to(replay));
}

fn lookup_error(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "an event lookup failed");
    ApiError::overloaded(format!("the lookup could not read the store: {e}"))
}

/// `GET /v1/events?…`: a page of the events that match.
async fn list(req: HttpRequest, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let query = parse_query(req.query_string(), now_ms())?;
    let lookup = state.store.lookup();
    let ascending = query.ascending;
    let page = web::block(move || lookup.page(&query))
        .await
        .map_err(|_| ApiError::overloaded("busy"))?
        .map_err(lookup_error)?;
    Ok(HttpResponse::Ok().json(page_json(&page, ascending)))
}

/// `GET /v1/events/{seq}`: one event, its body and the message it is published as.
async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let seq = parse_seq(&path)?;
    let lookup = state.store.lookup();
    let found = web::block(move || lookup.one(seq))
        .await
        .map_err(|_| ApiError::overloaded("busy"))?
        .map_err(lookup_error)?;
    match found {
        Some(found) => Ok(HttpResponse::Ok().json(event_json(&found, true))),
        None => Err(not_held(seq)),
    }
}

/// `POST /v1/events/{seq}/replay`: the event published once more, marked as a replay, to the
/// main exchange (for a quarantined one: the redrive).
async fn replay(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state.admin_token)?;
    let seq = parse_seq(&path)?;
    match state.store.replay_one(seq).await {
        Ok(true) => {
            tracing::info!(seq, "event replayed");
            Ok(HttpResponse::Ok().json(serde_json::json!({ "replayed": 1 })))
        }
        Ok(false) => Err(not_held(seq)),
        Err(e) => Err(ApiError::overloaded(format!(
            "the replay could not be queued: {e}"
        ))),
    }
}

fn not_held(seq: u64) -> ApiError {
    ApiError::not_found(format!(
        "no event at seq {seq}: never stored, or past the retention"
    ))
}

fn parse_seq(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| {
        ApiError::bad_request(format!("seq must be a positive whole number, got {text:?}"))
    })
}

fn now_ms() -> u64 {
    crate::entry::now_ms()
}

/// A query string as `GET /v1/events` reads it; `now_ms` ends a window given only its start.
/// Every parameter that is unknown, given twice, empty or out of range is refused by name.
pub fn parse_query(text: &str, now_ms: u64) -> Result<Query, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(text)
        .map_err(|e| ApiError::bad_request(format!("the query string cannot be read: {e}")))?;
    let mut query = Query {
        limit: LIMIT_DEFAULT,
        ..Query::default()
    };
    let mut seen: Vec<String> = Vec::new();
    let mut cursor = None;
    for (name, value) in pairs.into_inner() {
        if seen.contains(&name) {
            return Err(ApiError::bad_request(format!("{name} is given twice")));
        }
        seen.push(name.clone());
        if value.is_empty() {
            return Err(ApiError::bad_request(format!("{name} is empty")));
        }
        match name.as_str() {
            "key" => query.key = Some(value),
            "webhook_id" => query.webhook_id = Some(value),
            "tenant" => query.tenant = Some(value),
            "type" => query.event_type = Some(value),
            "q" => query.q = Some(value),
            "since" => query.since_ms = Some(time_ms("since", &value)?),
            "until" => query.until_ms = Some(time_ms("until", &value)?),
            "state" => {
                query.state = Some(StateFilter::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "state must be pending, published, quarantined or lost, got {value:?}"
                    ))
                })?)
            }
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIMIT_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a whole number from 1 to {LIMIT_MAX}, got {value:?}"
                        ))
                    })?
            }
            "order" => {
                query.ascending = match value.as_str() {
                    "asc" => true,
                    "desc" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "order must be asc or desc, got {value:?}"
                        )))
                    }
                }
            }
            "after" => cursor = Some(value),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {name:?}: expected key, webhook_id, tenant, type, since, \
                     until, state, q, limit, after or order"
                )))
            }
        }
    }
    // Read once `order` is known, whichever came first.
    if let Some(cursor) = cursor {
        query.after = Some(decode_cursor(&cursor, query.ascending)?);
    }
    if let (Some(since), Some(until)) = (query.since_ms, query.until_ms) {
        if since > until {
            return Err(ApiError::bad_request("since is after until"));
        }
    }
    if query.q.is_some() && query.tenant.is_none() && query.event_type.is_none() {
        let window = query
            .since_ms
            .map(|since| query.until_ms.unwrap_or(now_ms).saturating_sub(since));
        if window.is_none_or(|w| w > SEARCH_WINDOW_MS) {
            return Err(ApiError::bad_request(
                "q reads event bodies: give it a window (since, and until) of at most 24 h, or a \
                 tenant or type",
            ));
        }
    }
    if query.q.is_some() {
        query.budget = Some(SEARCH_BUDGET);
    }
    Ok(query)
}

fn time_ms(field: &str, text: &str) -> Result<u64, ApiError> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::bad_request(format!("{field} must be an RFC 3339 time, got {text:?}"))
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

const CURSOR: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The cursor of the page after the one that ended at `seq`: opaque to the caller, and bound
/// to the order it was made for.
fn encode_cursor(seq: u64, ascending: bool) -> String {
    let order = if ascending { 'a' } else { 'd' };
    CURSOR.encode(format!("{order}{seq}"))
}

fn decode_cursor(text: &str, ascending: bool) -> Result<u64, ApiError> {
    let bad =
        || ApiError::bad_request(format!("after is not a cursor this listing gave: {text:?}"));
    let bytes = CURSOR.decode(text).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let order = if ascending { "a" } else { "d" };
    let seq = text.strip_prefix(order).ok_or_else(|| {
        ApiError::bad_request("after was made for the other order: ask again with the same order")
    })?;
    seq.parse().map_err(|_| bad())
}

/// A page as `GET /v1/events` answers it.
pub fn page_json(page: &Page, ascending: bool) -> serde_json::Value {
    let events: Vec<serde_json::Value> = page.events.iter().map(|f| event_json(f, false)).collect();
    serde_json::json!({
        "events": events,
        "next": page.next.map(|seq| encode_cursor(seq, ascending)),
    })
}

/// One event as the admin API shows it; with `detail`, its body and the message it is (or
/// was) published as, never with a token.
pub fn event_json(found: &Found, detail: bool) -> serde_json::Value {
    let e = found.entry.as_ref();
    let time = |ms: u64| (ms > 0).then(|| rfc3339_ms(ms));
    let mut v = serde_json::json!({
        "seq": found.seq,
        "key": found.dedup_key,
        "type": e.map(|e| &e.event_type),
        "tenant": e.map(|e| &e.tenant),
        "webhook_id": e.and_then(|e| e.webhook_id.as_ref()),
        "received_at": time(found.accepted_ms),
        "signature_scheme": e.map(|e| e.scheme.as_str()),
        "signature_form": e.map(|e| if e.compact { "compact" } else { "raw" }),
        "schema": e.map(|e| e.schema.as_str()),
        "size": e.map(|e| e.body.len()),
        "replay": e.is_some_and(|e| e.replay),
        "state": found.state.name(),
    });
    let map = v.as_object_mut().expect("an object");
    match &found.state {
        State::Published { at_ms: Some(at) } => {
            map.insert("published_at".into(), rfc3339_ms(*at).into());
        }
        State::Quarantined { at_ms, reason } => {
            map.insert("quarantined_at".into(), rfc3339_ms(*at_ms).into());
            map.insert("quarantine_reason".into(), reason.clone().into());
        }
        _ => {}
    }
    if let (true, Some(e)) = (detail, e) {
        match serde_json::from_slice::<serde_json::Value>(&e.body) {
            Ok(body) => map.insert("body".into(), body),
            Err(_) => map.insert(
                "body_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&e.body)
                    .into(),
            ),
        };
        if let serde_json::Value::Object(message) = message_view(e) {
            map.extend(message);
        }
    }
    v
}
