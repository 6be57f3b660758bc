//! The service: tokens valid for as long as asked (one refresh per tenant in flight), recovery
//! of lost ones (the Reconnect API and its pause), and the tracked tasks that do this work.
//!
//! Every record this process writes goes through [`TokenService::store_now`] or
//! [`TokenService::save`], which keep an in-memory copy: the relay reads tokens from it
//! without touching the disk or HighLevel.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::budget::{Limits, RateBudget};
use super::flights::Flights;
use super::kept::Kept;
use super::renewals::Renewals;
use super::vault::{now_secs, rfc3339, TenantState, TokenRecord, Vault, VaultError};
use crate::backoff::Backoff;
use crate::highlevel::{HighLevelClient, OAuthError, TenantKind, TokenResponse};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::KeyedTree;

/// Retries of an inactive location, a failing refresh or a waiting INSTALL: from 1 s, doubling,
/// at most 15 min apart.
pub(super) const RETRIES: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(900));
/// How long the Reconnect API is left alone once HighLevel said it was removed.
const RECONNECT_PAUSE_SECS: i64 = 3600;
/// `last_error` of a tenant that lost its refresh token while the Reconnect API is gone.
const RECONNECT_UNAVAILABLE: &str =
    "reconnect is unavailable at HighLevel (its Reconnect API has been removed)";

/// Unix seconds of the next retry after the `attempts`th failure.
pub(super) fn retry_at(attempts: u32) -> i64 {
    let delay = Backoff::new(RETRIES.0, RETRIES.1).delay(attempts);
    now_secs() + (delay.as_secs() as i64).max(1)
}

/// Why no token can be served.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no tokens are stored for this tenant")]
    Unknown,
    #[error("the install needs to be authorised again")]
    NeedsReauth,
    #[error("HighLevel says the location is not active")]
    Inactive,
    #[error("tokens cannot be refreshed right now: {0}")]
    Unavailable(String),
    /// No client credentials: only private tokens can be served.
    #[error("tokens cannot be refreshed: the token module is off (no client credentials)")]
    Off,
    #[error("{0}")]
    Vault(#[from] VaultError),
}

impl TokenError {
    /// A short reason for the `x-hl-token-error` header.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Unknown => "no_token",
            TokenError::NeedsReauth => "needs_reauth",
            TokenError::Inactive => "inactive",
            TokenError::Unavailable(_) | TokenError::Off => "refresh_failed",
            TokenError::Vault(_) => "vault_error",
        }
    }
}

/// A token as served to consumers.
#[derive(Debug, Clone, Serialize)]
pub struct ServedToken {
    pub tenant: String,
    pub access_token: Secret,
    pub expires_at: Option<String>,
    pub user_type: TenantKind,
    pub scope: Option<String>,
    #[serde(skip)]
    pub expires_at_unix: Option<i64>,
}

/// What a record allows right now, for a token that must stay valid for a while.
pub(super) enum Check {
    Ready,
    Refused(TokenError),
    /// A refresh (or a recovery) may give one.
    Due,
}

/// Whether `record` can serve a token valid for at least `need`.
pub(super) fn check(record: &TokenRecord, need: Duration) -> Check {
    let now = now_secs();
    match record.state {
        TenantState::Private => return Check::Ready,
        TenantState::NeedsReauth => return Check::Refused(TokenError::NeedsReauth),
        TenantState::Active if record.remaining_secs() >= need.as_secs() as i64 => {
            return Check::Ready
        }
        TenantState::Inactive if record.retry_at > now => {
            return Check::Refused(TokenError::Inactive)
        }
        _ => {}
    }
    match &record.last_error {
        Some(why) if record.retry_at > now => Check::Refused(TokenError::Unavailable(why.clone())),
        _ => Check::Due,
    }
}

/// The app's install URL parameters.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    pub marketplace_url: String,
    pub redirect_uri: Option<String>,
    pub scopes: Option<String>,
}

pub struct TokenService {
    pub(super) vault: Vault,
    pub(super) installs: KeyedTree,
    /// The tenants whose refresh is in flight (`resume`).
    pub(super) refreshing: KeyedTree,
    /// Those a stopped process left marked, until the refresher takes them.
    pub(super) interrupted: std::sync::Mutex<Vec<String>>,
    /// `None` without Marketplace credentials: only private tokens can be served then.
    pub(super) client: Option<HighLevelClient>,
    pub(super) install: InstallSettings,
    pub(super) refresh_before: Duration,
    pub(super) min_ttl: Duration,
    pub(super) attach_tokens: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) budget: RateBudget,
    flights: Flights,
    /// Tenants renewed just now: the proxy forces no refresh for them after a 401.
    pub(super) renewals: Renewals,
    pub(super) kept: Kept,
    /// Unix seconds before which the Reconnect API is not called, for any tenant: HighLevel
    /// answered that it was removed.
    reconnect_paused_until: AtomicI64,
    tasks: TaskTracker,
    /// Where the tasks run: the gateway's runtime, not that of the HTTP worker whose request
    /// started one (a worker's runtime, and the connections made on it, end with the server).
    runtime: Handle,
}

/// Everything the service needs.
pub struct TokenServiceParts {
    pub vault: Vault,
    pub installs: KeyedTree,
    /// Where a refresh is marked while HighLevel may have spent the refresh token.
    pub refreshing: KeyedTree,
    pub client: Option<HighLevelClient>,
    pub install: InstallSettings,
    pub refresh_before: Duration,
    pub min_ttl: Duration,
    pub attach_tokens: bool,
    pub metrics: Arc<Metrics>,
    /// Whether refreshes also count against one app-wide burst window (HighLevel counts per
    /// resource only).
    pub app_wide_budget: bool,
    /// Where the module's tasks are tracked, so that shutdown waits for them.
    pub tasks: TaskTracker,
}

impl TokenService {
    /// Call it on the runtime the token module's tasks are to run on.
    pub fn new(p: TokenServiceParts) -> TokenService {
        TokenService {
            vault: p.vault,
            installs: p.installs,
            refreshing: p.refreshing,
            interrupted: Default::default(),
            client: p.client,
            install: p.install,
            refresh_before: p.refresh_before,
            min_ttl: p.min_ttl,
            attach_tokens: p.attach_tokens,
            metrics: p.metrics,
            budget: RateBudget::new(Limits::default(), p.app_wide_budget),
            flights: Flights::default(),
            renewals: Renewals::default(),
            kept: Kept::new(p.refresh_before.as_secs() as i64),
            reconnect_paused_until: AtomicI64::new(0),
            tasks: p.tasks,
            runtime: Handle::current(),
        }
    }

    /// Runs `task` as one of the token module's tracked tasks.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn_on(task, &self.runtime)
    }

    /// The Marketplace client; `None` when no credentials are configured.
    pub fn client(&self) -> Option<&HighLevelClient> {
        self.client.as_ref()
    }

    /// Every task the token module runs ([`TokenService::spawn`]): close and wait on it at shutdown, after the relay has
    /// stopped, so that no refresh spent at HighLevel is lost before its pair is stored.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub(super) fn oauth(&self) -> Result<&HighLevelClient, TokenError> {
        self.client.as_ref().ok_or(TokenError::Off)
    }

    /// Runs vault and installs-tree I/O (sled, fsync, AES) off the async threads.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Vault, &KeyedTree) -> T + Send + 'static,
    ) -> Result<T, VaultError> {
        let (vault, installs) = (self.vault.clone(), self.installs.clone());
        tokio::task::spawn_blocking(move || work(&vault, &installs))
            .await
            .map_err(|e| VaultError::Task(e.to_string()))
    }

    /// The tenant's record as this process last saw it, without any I/O.
    pub(super) fn cached(&self, tenant: &str) -> Option<TokenRecord> {
        self.kept.cached(tenant)
    }

    /// Reads the tenants' records from the vault (one blocking task) and keeps what was read.
    pub(super) async fn load_many(
        &self,
        tenants: Vec<String>,
    ) -> Result<Vec<(String, Result<Option<TokenRecord>, VaultError>)>, VaultError> {
        let seen = self.kept.writes();
        let read = self
            .blocking(move |vault, _| {
                let records = tenants.iter().map(|t| vault.get(t));
                tenants.iter().cloned().zip(records).collect::<Vec<_>>()
            })
            .await?;
        let found = read.iter().filter_map(|(_, r)| r.as_ref().ok()?.as_ref());
        self.kept.read(seen, found);
        Ok(read)
    }

    /// The tenant's record: the kept copy, else the vault's.
    pub(super) async fn load(&self, tenant: &str) -> Result<Option<TokenRecord>, VaultError> {
        if let Some(record) = self.cached(tenant) {
            return Ok(Some(record));
        }
        let mut read = self.load_many(vec![tenant.to_string()]).await?;
        read.pop().map_or(Ok(None), |(_, record)| record)
    }

    /// Tenants by state, for `hlgate_tenants{state}`, from the index: no disk, no decryption.
    pub fn state_counts(&self) -> Vec<(&'static str, u64)> {
        self.kept.state_counts()
    }

    /// Stores a record, on the calling thread (for callers already off the async threads).
    pub(super) fn store_now(&self, record: &TokenRecord) -> Result<(), VaultError> {
        let stored = self.vault.put(record);
        // A failed write may have half happened: the next read goes to the disk.
        self.kept
            .stored(&record.tenant, stored.is_ok().then_some(record));
        stored
    }

    /// Deletes a tenant's record, on the calling thread; true when there was one.
    pub(super) fn delete_now(&self, tenant: &str) -> Result<bool, VaultError> {
        let deleted = self.vault.delete(tenant);
        match deleted {
            Ok(_) => self.kept.deleted(tenant),
            Err(_) => self.kept.stored(tenant, None),
        }
        deleted
    }

    /// Stores a record off the async threads; it is stored before it is used.
    pub(super) async fn save(&self, record: TokenRecord) -> Result<TokenRecord, VaultError> {
        let tenant = record.tenant.clone();
        let (stored, record) = self
            .blocking(move |vault, _| (vault.put(&record), record))
            .await?;
        self.kept.stored(&tenant, stored.is_ok().then_some(&record));
        stored.map(|()| record)
    }

    /// A token valid for at least `HLGATE_TOKEN_MIN_TTL`, refreshing first when needed.
    pub async fn token(self: &Arc<Self>, tenant: &str) -> Result<ServedToken, TokenError> {
        let record = self
            .spawn_fresh(tenant, self.min_ttl)
            .await
            .map_err(|e| TokenError::Vault(VaultError::Task(e.to_string())))??;
        Ok(ServedToken {
            tenant: record.tenant,
            access_token: record.access_token,
            expires_at: record.expires_at.and_then(rfc3339),
            expires_at_unix: record.expires_at,
            user_type: record.user_type,
            scope: record.scope,
        })
    }

    /// [`TokenService::fresh`] as a tracked task: a caller that goes away (a closed request, a
    /// relay that stops waiting) does not cut a refresh short between HighLevel's answer and
    /// the store.
    pub(super) fn spawn_fresh(
        self: &Arc<Self>,
        tenant: &str,
        need: Duration,
    ) -> JoinHandle<Result<TokenRecord, TokenError>> {
        let (this, tenant) = (self.clone(), tenant.to_string());
        self.spawn(async move { this.fresh(&tenant, need).await })
    }

    /// The record, refreshed when it is valid for less than `need`. One refresh per tenant is
    /// in flight at a time; waiters re-read the record and use its result.
    pub(super) async fn fresh(
        &self,
        tenant: &str,
        need: Duration,
    ) -> Result<TokenRecord, TokenError> {
        let _flight = self.flights.start(tenant).await;
        let record = self.load(tenant).await?.ok_or(TokenError::Unknown)?;
        match check(&record, need) {
            Check::Ready => Ok(record),
            Check::Refused(e) => Err(e),
            Check::Due => {
                let fresh = self.refresh_record(record).await?;
                self.renewals.mark(tenant);
                Ok(fresh)
            }
        }
    }

    /// Spends the refresh token; the new pair is stored before it is returned. The tenant is
    /// marked before HighLevel can spend the token, and unmarked once its answer is known and
    /// stored: a crash in between leaves the mark for the next start (`resume`).
    pub(super) async fn refresh_record(
        &self,
        record: TokenRecord,
    ) -> Result<TokenRecord, TokenError> {
        let Some(refresh_token) = record.refresh_token.clone() else {
            return self.recover(record).await;
        };
        let client = self.oauth()?;
        self.budget.acquire(&record.tenant).await;
        let tenant = record.tenant.clone();
        self.mark_refreshing(&tenant).await?;
        let answer = client
            .refresh(refresh_token.expose(), record.user_type)
            .await;
        // A network error or a 5xx may come after HighLevel spent the token: still unknown.
        let known = !matches!(&answer, Err(e) if e.is_transient());
        let outcome = self.refreshed(record, answer).await;
        if known && !matches!(outcome, Err(TokenError::Vault(_))) {
            self.unmark_refreshing(&tenant).await;
        }
        outcome
    }

    /// Stores what HighLevel answered to a refresh.
    async fn refreshed(
        &self,
        mut record: TokenRecord,
        answer: Result<TokenResponse, OAuthError>,
    ) -> Result<TokenRecord, TokenError> {
        match answer {
            Ok(response) => {
                let scope = record.scope.clone();
                let mut fresh = record.renewed(response, now_secs());
                fresh.scope = fresh.scope.or(scope);
                let fresh = self.save(fresh).await?;
                self.metrics.token_refresh("ok");
                info!(tenant = %fresh.tenant, "token refreshed");
                Ok(fresh)
            }
            Err(OAuthError::InvalidGrant(message)) => {
                warn!(tenant = %record.tenant, reason = %message, "refresh token refused; trying the Reconnect API");
                self.metrics.token_refresh("invalid_grant");
                self.recover(record).await
            }
            Err(OAuthError::LocationInactive) => {
                record.state = TenantState::Inactive;
                let tenant = record.tenant.clone();
                self.failed(record, "location is not active").await?;
                self.metrics.token_refresh("inactive");
                warn!(tenant = %tenant, "location is not active; keeping its refresh token");
                Err(TokenError::Inactive)
            }
            Err(e) if e.is_transient() => self.failed_transiently(record, e).await,
            Err(e) => {
                self.metrics.token_refresh("rejected");
                warn!(tenant = %record.tenant, error = %e, "token refresh rejected; trying the Reconnect API");
                self.recover(record).await
            }
        }
    }

    /// Records a failure and when to retry, keeping the refresh token.
    async fn failed(&self, mut record: TokenRecord, why: &str) -> Result<(), VaultError> {
        record.attempts = record.attempts.saturating_add(1);
        record.retry_at = retry_at(record.attempts);
        record.last_error = Some(why.to_string());
        record.updated_at = now_secs();
        self.save(record).await.map(drop)
    }

    /// Network trouble or a 5xx: retry later with the same refresh token.
    async fn failed_transiently(
        &self,
        record: TokenRecord,
        e: OAuthError,
    ) -> Result<TokenRecord, TokenError> {
        warn!(tenant = %record.tenant, error = %e, "token refresh failed; will retry");
        self.failed(record, &e.to_string()).await?;
        self.metrics.token_refresh("error");
        Err(TokenError::Unavailable(e.to_string()))
    }

    /// Tokens lost: a location under a stored agency gets a new location token; otherwise the
    /// Reconnect API gives a code to exchange. What cannot be recovered is `needs_reauth`.
    async fn recover(&self, record: TokenRecord) -> Result<TokenRecord, TokenError> {
        let kind = record.user_type;
        if kind == TenantKind::Location {
            if let Some(company_id) = record.company_id.clone() {
                if let Ok(minted) = self.mint_location(&company_id, &record.tenant).await {
                    self.metrics.token_refresh("reminted");
                    return Ok(minted);
                }
            }
        }
        let client = self.oauth()?;
        let paused_until = self.reconnect_paused_until.load(Ordering::Relaxed);
        if paused_until > now_secs() {
            let until = rfc3339(paused_until).unwrap_or_default();
            let why = format!("{RECONNECT_UNAVAILABLE}; not asked again before {until}");
            return self.needs_reauth(record, why).await;
        }
        self.budget.acquire(&record.tenant).await;
        let code = match client.reconnect(&record.tenant, kind).await {
            Ok(code) => code,
            Err(OAuthError::EndpointRemoved) => {
                let until = now_secs() + RECONNECT_PAUSE_SECS;
                self.reconnect_paused_until.store(until, Ordering::Relaxed);
                warn!(
                    until = rfc3339(until),
                    "HighLevel has removed the Reconnect API; not calling it again within the hour"
                );
                return self
                    .needs_reauth(record, RECONNECT_UNAVAILABLE.into())
                    .await;
            }
            Err(e) => return self.recovery_failed(record, e).await,
        };
        match client.exchange_code(&code, kind).await {
            Ok(response) => {
                let fresh = self.save(record.renewed(response, now_secs())).await?;
                self.metrics.token_refresh("reconnected");
                info!(tenant = %fresh.tenant, "tokens recovered through the Reconnect API");
                Ok(fresh)
            }
            Err(e) => self.recovery_failed(record, e).await,
        }
    }

    /// A reconnect or its code exchange failed: retry later when that may help, else
    /// `needs_reauth`.
    async fn recovery_failed(
        &self,
        record: TokenRecord,
        e: OAuthError,
    ) -> Result<TokenRecord, TokenError> {
        if e.is_transient() {
            return self.failed_transiently(record, e).await;
        }
        self.needs_reauth(record, format!("reconnect failed: {e}"))
            .await
    }

    /// Nothing more can be done for the tenant: someone must install the app again.
    async fn needs_reauth(
        &self,
        mut record: TokenRecord,
        why: String,
    ) -> Result<TokenRecord, TokenError> {
        warn!(tenant = %record.tenant, reason = %why, "tokens cannot be recovered; the app must be installed again");
        record.state = TenantState::NeedsReauth;
        record.last_error = Some(why);
        record.updated_at = now_secs();
        self.save(record).await?;
        self.metrics.token_refresh("needs_reauth");
        Err(TokenError::NeedsReauth)
    }

    /// Mints and stores a location token with the agency's company token.
    pub(super) async fn mint_location(
        &self,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenRecord, TokenError> {
        // Boxed: a company's refresh may itself recover through a location (never the reverse).
        let company = Box::pin(self.fresh(company_id, Duration::from_secs(60))).await?;
        if company.user_type != TenantKind::Company {
            return Err(TokenError::Unknown);
        }
        let client = self.oauth()?;
        self.budget.acquire(company_id).await;
        let response = client
            .location_token(company.access_token.expose(), company_id, location_id)
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let mut record =
            TokenRecord::from_response(location_id, response, TenantKind::Location, now_secs());
        record.user_type = TenantKind::Location;
        record
            .company_id
            .get_or_insert_with(|| company_id.to_string());
        record
            .location_id
            .get_or_insert_with(|| location_id.to_string());
        let record = self.save(record).await?;
        info!(tenant = %location_id, company = %company_id, "location token minted");
        Ok(record)
    }

    /// Waits for the tenant's refresh in flight, if any, then holds the tenant until dropped.
    pub(super) async fn flight(&self, tenant: &str) -> super::flights::Flight<'_> {
        self.flights.start(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_cap() {
        let delay = |attempts| retry_at(attempts) - now_secs();
        let max = RETRIES.1.as_secs() as i64;
        assert!(delay(1) >= 1);
        assert!(delay(30) <= max);
        assert!(delay(30) >= max / 2);
    }

    #[test]
    fn debug_output_never_shows_a_token_or_secret() {
        let record = super::super::vault::tests::record("loc");
        let served = ServedToken {
            tenant: "loc".into(),
            access_token: Secret::new("access-s3cret"),
            expires_at: None,
            user_type: TenantKind::Location,
            scope: None,
            expires_at_unix: None,
        };
        let client = HighLevelClient::new(
            "http://127.0.0.1:1",
            "client-id",
            Secret::new("client-s3cret"),
            None,
        );
        let text = format!("{record:?} {served:?} {client:?}");
        for secret in [
            "access-plain",
            "refresh-plain",
            "access-s3cret",
            "client-s3cret",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("[redacted]"));
    }
}
