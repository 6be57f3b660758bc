//! The HighLevel API proxy without HTTP: the tenant's token (refreshed once after a 401 it
//! was believed valid for, unless it was renewed just now), the tenant's rate governor (a FIFO
//! in front of its budget), and the one retry each failure allows. One tenant's queue never
//! holds another's requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::budget::{Limits, RateBudget};
use super::flights::Flights;
use super::service::{TokenError, TokenService};
use super::vault::{rfc3339, TenantState, TokenRecord, VaultError};
use crate::backoff::Backoff;
use crate::highlevel::RateLimitHeaders;
use crate::highlevel::{ApiBody, ApiCallError, ApiClient, ApiRequest, ApiResponse};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::traces::{Kind, Span, SpanContext, Tracer};

/// HighLevel's burst interval until its headers say otherwise.
const INTERVAL: Duration = Duration::from_secs(10);
/// The pause before the one retry of a failed call (jittered).
const RETRY_PAUSE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// What the proxy is allowed.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub burst: usize,
    pub daily: u64,
    pub max_wait: Duration,
}

/// Why the proxy answers itself instead of passing HighLevel's answer on.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The tenant's budget has no room within the wait allowed: HighLevel was not called.
    #[error("the tenant's HighLevel rate budget is spent")]
    RateLimited(Duration),
    #[error("HighLevel cannot be reached: {0}")]
    Upstream(String),
    #[error("the request body is larger than allowed")]
    TooLarge,
    #[error("the request body did not arrive: {0}")]
    Body(String),
}

/// Why the whole body cannot be had for a retry.
#[derive(Debug, Clone)]
pub enum BodyError {
    TooLarge,
    Broken(String),
}

/// A request's body: what goes out first, and the whole of it once received (for a retry;
/// `None` when `first` is already whole).
pub struct ProxyBody {
    pub first: ApiBody,
    pub whole: Option<oneshot::Receiver<Result<Bytes, BodyError>>>,
}

/// One request to forward.
pub struct Forward {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: ProxyBody,
}

/// Where the time of a request went, and what a 401 did: `refreshed` when the request was sent
/// again with a new token, `held` when HighLevel's 401 was passed on because the token was
/// renewed just now.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    pub wait: Duration,
    pub upstream: Duration,
    pub refreshed: bool,
    pub held: bool,
}

/// A tenant's budget as `GET /v1/tenants` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RateView {
    pub remaining: usize,
    pub daily_remaining: u64,
    /// When the burst window next has room; `None` while nothing is counted in it.
    pub reset_at: Option<String>,
}

impl RateView {
    /// The budget of a tenant the governor has not seen yet.
    pub fn starting(burst: usize, daily: u64) -> RateView {
        RateView {
            remaining: burst,
            daily_remaining: daily,
            reset_at: None,
        }
    }
}

pub struct Proxy {
    tokens: Arc<TokenService>,
    api: ApiClient,
    budget: RateBudget,
    /// One FIFO per budget key: a tokio mutex hands itself on in arrival order.
    queues: Flights,
    settings: ProxySettings,
    metrics: Arc<Metrics>,
    tracer: Tracer,
}

/// Methods whose repetition HighLevel documents as harmless.
fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "PUT" | "DELETE")
}

/// The budget a token spends: its location's or company's, whichever token it is.
fn budget_key(record: &TokenRecord) -> String {
    (record.location_id.as_ref())
        .or(record.company_id.as_ref())
        .unwrap_or(&record.tenant)
        .clone()
}

impl Proxy {
    pub fn new(
        tokens: Arc<TokenService>,
        api: ApiClient,
        settings: ProxySettings,
        metrics: Arc<Metrics>,
        tracer: Tracer,
    ) -> Proxy {
        let limits = Limits {
            burst: settings.burst,
            interval: INTERVAL,
            daily: settings.daily,
        };
        Proxy {
            tokens,
            api,
            budget: RateBudget::new(limits, false),
            queues: Flights::default(),
            settings,
            metrics,
            tracer,
        }
    }

    /// Where a proxied call's spans start.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The budget of a tenant with these ids, as the governor believes it now.
    pub fn rate(&self, tenant: &str, location: Option<&str>, company: Option<&str>) -> RateView {
        let key = location.or(company).unwrap_or(tenant);
        let (remaining, daily_remaining, reset) =
            self.budget
                .view(key)
                .unwrap_or((self.settings.burst, self.settings.daily, None));
        let reset_at = reset.and_then(|at| {
            let unix = super::vault::now_secs()
                + at.saturating_duration_since(Instant::now()).as_secs() as i64;
            rfc3339(unix)
        });
        RateView {
            remaining,
            daily_remaining,
            reset_at,
        }
    }

    /// Forwards `request` for `tenant`: HighLevel's answer, or why there is none. Its `proxy`
    /// span continues the caller's trace (`parent`) when it sent one.
    pub async fn forward(
        &self,
        tenant: &str,
        mut request: Forward,
        parent: Option<SpanContext>,
    ) -> (Result<ApiResponse, ProxyError>, Timing) {
        let mut timing = Timing::default();
        let mut span = self.tracer.span("proxy", Kind::Server, parent);
        let result = (self.attempts(tenant, &mut request, &mut timing, &span)).await;
        self.metrics.api_wait_seconds.observe(timing.wait);
        if !timing.upstream.is_zero() {
            self.metrics.api_upstream_seconds.observe(timing.upstream);
        }
        if timing.refreshed {
            self.metrics.api_request("refreshed_401");
        }
        if timing.held {
            self.metrics.api_request("held_401");
        }
        let outcome = match &result {
            Ok(r) if r.status < 400 => "ok",
            Ok(r) if r.status == 429 => "upstream_rate_limited",
            Ok(r) if r.status < 500 => "client_error",
            Ok(_) | Err(ProxyError::Upstream(_)) => "upstream_error",
            Err(ProxyError::RateLimited(_)) => "rate_limited",
            Err(ProxyError::Token(_)) => "token_error",
            Err(ProxyError::TooLarge | ProxyError::Body(_)) => "client_error",
        };
        self.metrics.api_request(outcome);
        if span.is_recording() {
            span.set("http.request.method", request.method.as_str());
            span.set("hlgate.tenant", tenant);
            span.set("hlgate.outcome", outcome);
            if let Ok(r) = &result {
                span.set("http.response.status_code", i64::from(r.status));
            }
            if !matches!(outcome, "ok" | "client_error") {
                span.fail("not answered by HighLevel as asked");
            }
        }
        span.end();
        (result, timing)
    }

    async fn attempts(
        &self,
        tenant: &str,
        request: &mut Forward,
        timing: &mut Timing,
        trace: &Span,
    ) -> Result<ApiResponse, ProxyError> {
        let started = Instant::now();
        let record = self.tokens.proxy_record(tenant).await?;
        let key = budget_key(&record);
        let mut token = record.access_token;
        let mut first = Some(std::mem::replace(
            &mut request.body.first,
            ApiBody::Whole(Bytes::new()),
        ));
        let mut whole: Option<Bytes> = None;
        let (mut refreshed, mut retried, mut waited_429) = (false, false, false);
        let retriable = idempotent(&request.method);
        let mut backoff = Backoff::new(RETRY_PAUSE.0, RETRY_PAUSE.1);
        loop {
            let admitted = Instant::now();
            let mut waiting = trace.child("governor_wait", Kind::Internal);
            let sent = self.admit(&key, started).await;
            timing.wait += admitted.elapsed();
            if sent.is_err() {
                waiting.fail("no budget within HLGATE_API_MAX_WAIT");
            }
            waiting.end();
            let sent = sent?;
            let body = match first.take() {
                Some(body) => body,
                None => ApiBody::Whole(self.whole(&mut request.body, &mut whole).await?),
            };
            let call = ApiRequest {
                method: &request.method,
                path_and_query: &request.path_and_query,
                headers: &request.headers,
                body,
            };
            let t0 = Instant::now();
            let mut upstream = trace.child("upstream", Kind::Client);
            let answer = self.api.send(call, &token).await;
            timing.upstream += t0.elapsed();
            match &answer {
                Ok(r) => upstream.set("http.response.status_code", i64::from(r.status)),
                Err(_) => upstream.fail("HighLevel could not be reached"),
            }
            upstream.end();
            self.budget.settle(&key, sent);
            let response = match answer {
                Ok(response) => response,
                Err(e) => {
                    if let Some(Err(BodyError::TooLarge)) =
                        self.peek_whole(&mut request.body, &mut whole).await
                    {
                        return Err(ProxyError::TooLarge);
                    }
                    // A request that cannot be built fails the same way again.
                    let invalid = matches!(e, ApiCallError::Invalid(_));
                    if retriable && !retried && !invalid {
                        retried = true;
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    return Err(match e {
                        ApiCallError::Invalid(why) => ProxyError::Body(why),
                        other => ProxyError::Upstream(other.to_string()),
                    });
                }
            };
            self.budget.observe(&key, &response.rate);
            match response.status {
                // A 401 for the token this request was sent again with stands: another
                // refresh would give another token to the same refusal.
                401 if !refreshed => {
                    refreshed = true;
                    match self.tokens.force_refresh(tenant, &token).await? {
                        Forced::Fresh(fresh) => {
                            timing.refreshed = true;
                            token = fresh;
                        }
                        Forced::Private => return Ok(response),
                        Forced::Held => {
                            timing.held = true;
                            return Ok(response);
                        }
                    }
                }
                429 => {
                    let pause = response.rate.interval.unwrap_or(INTERVAL);
                    if waited_429 || started.elapsed() + pause > self.settings.max_wait {
                        return Ok(with_retry_after(response, pause));
                    }
                    waited_429 = true;
                    // HighLevel's window is full whatever the budget believed.
                    let full = RateLimitHeaders {
                        remaining: Some(0),
                        ..RateLimitHeaders::default()
                    };
                    self.budget.observe(&key, &full);
                }
                502..=504 if retriable && !retried => {
                    retried = true;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                502..=504 => {
                    return Err(ProxyError::Upstream(format!(
                        "HighLevel answered {}",
                        response.status
                    )))
                }
                _ => return Ok(response),
            }
        }
    }

    /// Waits in `key`'s FIFO, then for room in its budget, within the wait allowed from
    /// `started`; `Ok` says when the request was counted.
    async fn admit(&self, key: &str, started: Instant) -> Result<Instant, ProxyError> {
        let deadline = started + self.settings.max_wait;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.queues.start(key)).await else {
            let wait = self.budget.try_peek(key);
            return Err(ProxyError::RateLimited(wait.max(Duration::from_secs(1))));
        };
        loop {
            match self.budget.try_take(key) {
                Ok(sent) => return Ok(sent),
                Err(wait) if Instant::now() + wait > deadline => {
                    return Err(ProxyError::RateLimited(wait))
                }
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// The whole body, for a retry: waits for the rest of it to arrive.
    async fn whole(
        &self,
        body: &mut ProxyBody,
        whole: &mut Option<Bytes>,
    ) -> Result<Bytes, ProxyError> {
        match self.peek_whole(body, whole).await {
            None => Ok(whole.clone().unwrap_or_default()),
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(BodyError::TooLarge)) => Err(ProxyError::TooLarge),
            Some(Err(BodyError::Broken(why))) => Err(ProxyError::Body(why)),
        }
    }

    /// Receives the whole body once and keeps it; `None` when the body was whole from the start.
    async fn peek_whole(
        &self,
        body: &mut ProxyBody,
        whole: &mut Option<Bytes>,
    ) -> Option<Result<Bytes, BodyError>> {
        if let Some(bytes) = whole {
            return Some(Ok(bytes.clone()));
        }
        let rx = body.whole.take()?;
        let got = rx
            .await
            .unwrap_or_else(|_| Err(BodyError::Broken("the body was cut short".into())));
        if let Ok(bytes) = &got {
            *whole = Some(bytes.clone());
        }
        Some(got)
    }
}

/// What a 401 gets the request.
pub(super) enum Forced {
    /// A token newer than the refused one: send the request again with it.
    Fresh(Secret),
    /// A private token cannot be refreshed: HighLevel's answer stands.
    Private,
    /// The tenant was renewed just now: HighLevel's answer stands.
    Held,
}

/// HighLevel's 429 with a `Retry-After` (when it sent none) from its interval.
fn with_retry_after(mut response: ApiResponse, pause: Duration) -> ApiResponse {
    if !response
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
    {
        let secs = super::budget::retry_after_secs(pause).to_string();
        response
            .headers
            .push(("retry-after".into(), secs.into_bytes()));
    }
    response
}

impl TokenService {
    /// The tenant's record with a token valid at least `HLGATE_TOKEN_MIN_TTL`.
    pub(super) async fn proxy_record(
        self: &Arc<Self>,
        tenant: &str,
    ) -> Result<TokenRecord, TokenError> {
        self.spawn_fresh(tenant, self.min_ttl)
            .await
            .map_err(|e| TokenError::Vault(VaultError::Task(e.to_string())))?
    }

    /// HighLevel refused `stale`: a new token, refreshed once however many requests were
    /// refused with it (the first refreshes, the others find its result). No refresh for a
    /// private token, nor within the hold-down of the tenant's last renewal or forced refresh:
    /// so a 401 that no new token cures (a missing scope) costs the tenant at most one
    /// refresh per hold-down, however often it is asked for.
    pub(super) async fn force_refresh(
        self: &Arc<Self>,
        tenant: &str,
        stale: &Secret,
    ) -> Result<Forced, TokenError> {
        let (this, tenant, stale) = (self.clone(), tenant.to_string(), stale.clone());
        let task = self.spawn(async move {
            let _flight = this.flight(&tenant).await;
            let record = this.load(&tenant).await?.ok_or(TokenError::Unknown)?;
            if record.access_token != stale {
                return Ok(Forced::Fresh(record.access_token));
            }
            if record.state == TenantState::Private {
                return Ok(Forced::Private);
            }
            if this.renewals.holds(&tenant) {
                return Ok(Forced::Held);
            }
            // Marked before the refresh: a failed one holds too, or each call would try again.
            this.renewals.mark(&tenant);
            let fresh = this.refresh_record(record).await?;
            Ok(Forced::Fresh(fresh.access_token))
        });
        task.await
            .map_err(|e| TokenError::Vault(VaultError::Task(e.to_string())))?
    }
}
