//! A local stand-in for HighLevel's OAuth endpoints that behaves like the real ones:
//! form-encoded `/oauth/token` with single-use rotating refresh tokens (and, when asked, the
//! 30-second grace in which a spent one gets the same answer again) and HighLevel's real 400
//! messages, `/oauth/locationToken` wanting the `Version` header and an agency token, and
//! `/oauth/reconnect` (working, failing, or removed as HighLevel did in September 2026).

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

pub const CLIENT_ID: &str = "68a32958b5154ca8bbdc4d40-meh5chaj";
pub const CLIENT_SECRET: &str = "stand-in-client-s3cret";

#[derive(Clone, Debug)]
struct Grant {
    tenant: String,
    user_type: String,
    company_id: Option<String>,
}

#[derive(Default)]
pub struct State {
    codes: HashMap<String, Grant>,
    refresh_tokens: HashMap<String, (Grant, bool)>,
    access_tokens: HashMap<String, Grant>,
    inactive: HashSet<String>,
    pub expires_in: i64,
    pub camel_case: bool,
    pub reconnect_fails: bool,
    /// Answer `/oauth/reconnect` as HighLevel has since it removed the endpoint.
    pub reconnect_removed: bool,
    /// Answer every `/oauth/token` call with this status (a HighLevel outage).
    pub outage: Option<u16>,
    /// Answer refreshes only after this long (a slow HighLevel).
    pub refresh_delay: Option<std::time::Duration>,
    /// Refreshes asked for, counted on arrival (before any delay).
    pub refreshes_begun: usize,
    /// Refreshes arrived and not yet answered, and the most there ever were at once.
    pub refreshes_in_flight: usize,
    pub max_refreshes_in_flight: usize,
    /// Refresh tokens presented again after they were spent (a double use), outside the grace.
    pub reused_refresh_tokens: usize,
    /// HighLevel's concurrency grace: a spent refresh token presented again within this long
    /// gets the answer it got the first time. `None`: refused like any spent token.
    pub grace: Option<std::time::Duration>,
    /// Refreshes answered again within the grace.
    pub grace_answers: usize,
    /// The answer to each spent refresh token, and when it was given (with a grace only).
    answers: HashMap<String, (std::time::Instant, serde_json::Value)>,
    /// Answer refreshes only this long after the token is spent and the new pair issued (an
    /// answer lost on its way back when the gateway dies meanwhile).
    pub answer_delay: Option<std::time::Duration>,
    /// Bytes added to every issued token, for tokens as long as HighLevel's JWTs.
    pub pad: usize,
    pub refresh_calls: usize,
    pub code_calls: usize,
    pub location_token_calls: Vec<Option<String>>,
    pub reconnect_calls: usize,
    /// Every refresh token presented, in order (accepted or not).
    pub refresh_tokens_seen: Vec<String>,
    /// Every token ever issued, to look for them where they must not be.
    pub issued: Vec<String>,
    /// Each tenant's current access token: the API stand-in accepts no other.
    pub current: HashMap<String, String>,
    pub api: crate::hlapi::ApiState,
    counter: usize,
}

#[derive(Clone)]
pub struct StandIn {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

fn error(status: u16, message: &str) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status).unwrap();
    HttpResponse::build(code).json(json!({"statusCode": status, "message": message}))
}

impl State {
    fn issue(&mut self, grant: &Grant) -> serde_json::Value {
        self.counter += 1;
        let n = self.counter;
        let pad = "x".repeat(self.pad);
        let access = format!("eyJ.at-{n}-{}{pad}", grant.tenant);
        let refresh = format!("eyJ.rt-{n}-{}{pad}", grant.tenant);
        self.issued.push(access.clone());
        self.issued.push(refresh.clone());
        self.access_tokens.insert(access.clone(), grant.clone());
        self.current.insert(grant.tenant.clone(), access.clone());
        self.refresh_tokens
            .insert(refresh.clone(), (grant.clone(), false));
        let (location, company) = if grant.user_type == "Company" {
            (None, Some(grant.tenant.clone()))
        } else {
            (Some(grant.tenant.clone()), grant.company_id.clone())
        };
        if self.camel_case {
            json!({"accessToken": access, "tokenType": "Bearer", "expiresIn": self.expires_in,
                   "refreshToken": refresh, "scope": "contacts.readonly", "userType": grant.user_type,
                   "locationId": location, "companyId": company, "userId": "u1"})
        } else {
            json!({"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in,
                   "refresh_token": refresh, "scope": "contacts.readonly", "userType": grant.user_type,
                   "locationId": location, "companyId": company, "userId": "u1"})
        }
    }
}

async fn token(
    form: web::Form<HashMap<String, String>>,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let delay = {
        let mut s = state.lock().unwrap();
        let refresh = form.get("grant_type").map(String::as_str) == Some("refresh_token");
        s.refreshes_begun += usize::from(refresh);
        s.refreshes_in_flight += usize::from(refresh);
        s.max_refreshes_in_flight = s.max_refreshes_in_flight.max(s.refreshes_in_flight);
        (refresh, s.refresh_delay.filter(|_| refresh))
    };
    if let Some(delay) = delay.1 {
        tokio::time::sleep(delay).await;
    }
    let mut hold = None;
    let response = {
        let mut s = state.lock().unwrap();
        s.refreshes_in_flight -= usize::from(delay.0);
        answer(&mut s, form.into_inner(), &mut hold)
    };
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    response
}

/// What `/oauth/token` answers, decided under the lock; `hold`: how long to wait before it is
/// sent.
fn answer(
    s: &mut State,
    f: HashMap<String, String>,
    hold: &mut Option<std::time::Duration>,
) -> HttpResponse {
    if let Some(status) = s.outage {
        s.refresh_calls += 1;
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .body("upstream unavailable");
    }
    let Some(client_id) = f.get("client_id") else {
        return error(400, "Missing parameter: clientId");
    };
    if client_id != CLIENT_ID || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET) {
        return error(401, "Invalid client: client credentials are invalid");
    }
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            s.code_calls += 1;
            let code = f.get("code").cloned().unwrap_or_default();
            match s.codes.remove(&code) {
                Some(grant) => HttpResponse::Ok().json(s.issue(&grant)),
                None => error(400, "Invalid grant: authorization code is invalid"),
            }
        }
        Some("refresh_token") => {
            s.refresh_calls += 1;
            let presented = f.get("refresh_token").cloned().unwrap_or_default();
            s.refresh_tokens_seen.push(presented.clone());
            let Some((grant, used)) = s.refresh_tokens.get(&presented).cloned() else {
                return error(400, "Invalid grant: refresh token is invalid");
            };
            if used {
                let grace = s.grace.unwrap_or_default();
                let again = s
                    .answers
                    .get(&presented)
                    .filter(|(at, _)| at.elapsed() < grace);
                if let Some((_, answer)) = again.cloned() {
                    s.grace_answers += 1;
                    return HttpResponse::Ok().json(answer);
                }
                s.reused_refresh_tokens += 1;
                return error(400, "Invalid grant: refresh token is invalid");
            }
            if s.inactive.contains(&grant.tenant) {
                // The same refresh token keeps working once the location is active again.
                return error(400, "Location is not active");
            }
            s.refresh_tokens
                .insert(presented.clone(), (grant.clone(), true));
            let answer = s.issue(&grant);
            if s.grace.is_some() {
                let at = std::time::Instant::now();
                s.answers.insert(presented, (at, answer.clone()));
            }
            *hold = s.answer_delay;
            HttpResponse::Ok().json(answer)
        }
        _ => error(400, "Invalid parameter: grantType"),
    }
}

async fn location_token(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let mut s = state.lock().unwrap();
    let version = req
        .headers()
        .get("version")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    s.location_token_calls.push(version.clone());
    if version.is_none() {
        return error(401, "version header was not found.");
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(company) = s.access_tokens.get(bearer).cloned() else {
        return error(401, "Invalid JWT");
    };
    let f = form.into_inner();
    let (Some(company_id), Some(location_id)) = (f.get("companyId"), f.get("locationId")) else {
        return error(422, "Unprocessable Entity");
    };
    if company.user_type != "Company" || &company.tenant != company_id {
        return error(401, "Invalid token: access token is invalid");
    }
    let grant = Grant {
        tenant: location_id.clone(),
        user_type: "Location".into(),
        company_id: Some(company_id.clone()),
    };
    HttpResponse::Ok().json(s.issue(&grant))
}

async fn reconnect(
    body: web::Json<serde_json::Value>,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.reconnect_calls += 1;
    if s.reconnect_removed {
        return HttpResponse::BadRequest()
            .content_type("application/json")
            .body(r#"{"message":"API endpoint has been removed","statusCode":400}"#);
    }
    if body["clientKey"] != CLIENT_ID || body["clientSecret"] != CLIENT_SECRET {
        return error(401, "Invalid client: client credentials are invalid");
    }
    if s.reconnect_fails {
        return error(400, "App is not installed for this location");
    }
    let (tenant, user_type) = match (body["locationId"].as_str(), body["companyId"].as_str()) {
        (Some(l), _) => (l.to_string(), "Location"),
        (None, Some(c)) => (c.to_string(), "Company"),
        _ => return error(422, "Unprocessable Entity"),
    };
    s.counter += 1;
    let code = format!("reconnect-code-{}", s.counter);
    s.codes.insert(
        code.clone(),
        Grant {
            tenant,
            user_type: user_type.into(),
            company_id: None,
        },
    );
    HttpResponse::Ok().json(json!({"authorizationCode": code, "expiresAt": "2030-01-01T00:00:00.000Z", "traceId": "t-1"}))
}

impl StandIn {
    pub async fn start() -> StandIn {
        let state = Arc::new(Mutex::new(State {
            expires_in: 86_399,
            api: crate::hlapi::ApiState::new(),
            ..State::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/oauth/token", web::post().to(token))
                .route("/oauth/locationToken", web::post().to(location_token))
                .route("/oauth/reconnect", web::post().to(reconnect))
                .configure(crate::hlapi::routes)
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        StandIn { url, state }
    }

    /// An authorization code as HighLevel's chooselocation page would hand out.
    pub fn code_for(&self, tenant: &str, user_type: &str) -> String {
        let mut s = self.state.lock().unwrap();
        s.counter += 1;
        let code = format!("code-{}-{tenant}", s.counter);
        s.codes.insert(
            code.clone(),
            Grant {
                tenant: tenant.into(),
                user_type: user_type.into(),
                company_id: None,
            },
        );
        code
    }

    /// A token pair for `tenant` as an earlier install would have left it: `(access, refresh)`.
    pub fn grant(&self, tenant: &str, user_type: &str) -> (String, String) {
        let mut s = self.state.lock().unwrap();
        let grant = Grant {
            tenant: tenant.into(),
            user_type: user_type.into(),
            company_id: None,
        };
        let pair = s.issue(&grant);
        let field = |k: &str| pair[k].as_str().unwrap().to_string();
        (field("access_token"), field("refresh_token"))
    }

    /// The refresh tokens of `tenant` stop working (spent elsewhere, revoked).
    pub fn lose_refresh_tokens(&self, tenant: &str) {
        let mut s = self.state.lock().unwrap();
        for (grant, used) in s.refresh_tokens.values_mut() {
            if grant.tenant == tenant {
                *used = true;
            }
        }
    }

    /// HighLevel stops accepting `tenant`'s access token (revoked, or expired early).
    pub fn revoke(&self, tenant: &str) {
        self.with(|s| s.current.insert(tenant.into(), "revoked".into()));
    }

    pub fn set_inactive(&self, tenant: &str, inactive: bool) {
        let mut s = self.state.lock().unwrap();
        if inactive {
            s.inactive.insert(tenant.into());
        } else {
            s.inactive.remove(tenant);
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// The app settings that point hlgate at this stand-in.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HLGATE_CLIENT_ID", CLIENT_ID.to_string()),
            ("HLGATE_CLIENT_SECRET", CLIENT_SECRET.to_string()),
            ("HLGATE_OAUTH_BASE_URL", self.url.clone()),
            (
                "HLGATE_REDIRECT_URI",
                "https://gw.example.com/oauth/callback".to_string(),
            ),
            (
                "HLGATE_SCOPES",
                "contacts.readonly locations.readonly".to_string(),
            ),
            (
                "HLGATE_MARKETPLACE_URL",
                "https://marketplace.example.com".to_string(),
            ),
        ]
    }
}
