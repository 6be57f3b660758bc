//! The token module: every install's OAuth tokens kept fresh, recoverable, and attached for
//! callbacks. The only reqwest user besides the CLI's `sign --post`.
//!
//! - `client`: HighLevel's `/oauth/token`, `/oauth/locationToken` and `/oauth/reconnect`.
//! - `vault`: token records encrypted at rest.
//! - `refresher`: the background schedule and the per-tenant request budget.
//! - this file: [`TokenService`], which serves fresh tokens (one refresh per tenant in flight),
//!   recovers lost ones, and reacts to INSTALL and UNINSTALL events.

pub mod client;
pub mod refresher;
pub mod vault;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::{info, warn};

pub use client::{HighLevelClient, OAuthError, TenantKind, TokenResponse};
pub use refresher::RateBudget;
pub use vault::{TenantState, TokenRecord, Vault, VaultError};

use crate::entry::Entry;
use crate::metrics::Metrics;
use crate::publish::{Attached, TokenHooks};
use crate::store::KeyedTree;

/// First retry delay after a failure; doubles per attempt.
const RETRY_BASE_SECS: i64 = 1;
/// Longest delay between retries of an inactive location or a failing refresh.
const RETRY_MAX_SECS: i64 = 900;
/// How long the Reconnect API is left alone once HighLevel said it was removed.
const RECONNECT_PAUSE_SECS: i64 = 3600;
/// `last_error` of a tenant that lost its refresh token while the Reconnect API is gone.
const RECONNECT_UNAVAILABLE: &str =
    "reconnect is unavailable at HighLevel (its Reconnect API has been removed)";

pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Jittered exponential delay for the `attempts`th failure.
fn retry_delay(attempts: u32) -> i64 {
    let base = RETRY_BASE_SECS
        .saturating_mul(1i64 << attempts.min(20))
        .min(RETRY_MAX_SECS);
    (base / 2 + (fastrand::f64() * (base / 2 + 1) as f64) as i64).max(1)
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
            TokenError::Unavailable(_) => "refresh_failed",
            TokenError::Vault(_) => "vault_error",
        }
    }
}

/// Why a callback's code was not exchanged.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The app-wide request budget is spent: anyone can call `/oauth/callback`, so a flood of
    /// made-up codes must not spend the app's credentials (or the refreshes' budget) at will.
    #[error("too many install attempts at once; try again in {} s", retry_after_secs(*.0))]
    Busy(Duration),
    #[error(transparent)]
    OAuth(#[from] OAuthError),
}

/// Whole seconds to wait, rounded up, at least one (for `Retry-After`).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis() as u64).div_ceil(1000).max(1)
}

/// A token as served to consumers.
#[derive(Clone, Serialize)]
pub struct ServedToken {
    pub tenant: String,
    pub access_token: String,
    pub expires_at: Option<String>,
    pub user_type: String,
    pub scope: Option<String>,
    #[serde(skip)]
    pub expires_at_unix: Option<i64>,
}

impl std::fmt::Debug for ServedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedToken")
            .field("tenant", &self.tenant)
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What `/v1/tenants` shows of a record: never a token.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub tenant: String,
    pub user_type: String,
    pub state: &'static str,
    pub expires_at: Option<String>,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub scope: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: Option<String>,
}

/// An INSTALL that waits for its agency's company token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingInstall {
    pub location_id: String,
    pub company_id: String,
    pub attempts: u32,
    pub retry_at: i64,
}

fn rfc3339(unix: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// The app's install URL parameters.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    pub marketplace_url: String,
    pub redirect_uri: Option<String>,
    pub scopes: Option<String>,
}

pub struct TokenService {
    vault: Vault,
    installs: KeyedTree,
    /// `None` without Marketplace credentials: only private tokens can be served then.
    client: Option<HighLevelClient>,
    install: InstallSettings,
    refresh_before: Duration,
    min_ttl: Duration,
    attach_tokens: bool,
    metrics: Arc<Metrics>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    budget: RateBudget,
    /// Unix seconds before which the Reconnect API is not called, for any tenant: HighLevel
    /// answered that it was removed.
    reconnect_paused_until: AtomicI64,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("client", &self.client)
            .finish()
    }
}

/// Everything the service needs.
pub struct TokenServiceParts {
    pub vault: Vault,
    pub installs: KeyedTree,
    pub client: Option<HighLevelClient>,
    pub install: InstallSettings,
    pub refresh_before: Duration,
    pub min_ttl: Duration,
    pub attach_tokens: bool,
    pub metrics: Arc<Metrics>,
}

impl TokenService {
    pub fn new(p: TokenServiceParts) -> TokenService {
        TokenService {
            vault: p.vault,
            installs: p.installs,
            client: p.client,
            install: p.install,
            refresh_before: p.refresh_before,
            min_ttl: p.min_ttl,
            attach_tokens: p.attach_tokens,
            metrics: p.metrics,
            locks: Mutex::new(HashMap::new()),
            budget: RateBudget::new(100, Duration::from_secs(10)),
            reconnect_paused_until: AtomicI64::new(0),
        }
    }

    /// The Marketplace client; `None` when no credentials are configured.
    pub fn client(&self) -> Option<&HighLevelClient> {
        self.client.as_ref()
    }

    fn oauth(&self) -> Result<&HighLevelClient, TokenError> {
        self.client.as_ref().ok_or_else(|| {
            TokenError::Unavailable("the token module is off (no client credentials)".into())
        })
    }

    /// `HLGATE_MARKETPLACE_URL/v2/oauth/chooselocation?response_type=code&…`; `None` when the
    /// token module is off.
    pub fn install_url(&self) -> Option<String> {
        let client = self.client.as_ref()?;
        let mut url = format!(
            "{}/v2/oauth/chooselocation?response_type=code&client_id={}",
            self.install.marketplace_url,
            encode(client.client_id())
        );
        if let Some(uri) = &self.install.redirect_uri {
            url.push_str(&format!("&redirect_uri={}", encode(uri)));
        }
        if let Some(scopes) = &self.install.scopes {
            url.push_str(&format!("&scope={}", encode(scopes)));
        }
        Some(url)
    }

    fn lock_for(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock map")
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }

    fn record_from(
        &self,
        tenant: &str,
        response: TokenResponse,
        fallback_kind: TenantKind,
    ) -> TokenRecord {
        let now = now_secs();
        let kind = response
            .user_type
            .as_deref()
            .map(TenantKind::from_user_type)
            .unwrap_or(fallback_kind);
        TokenRecord {
            tenant: tenant.to_string(),
            user_type: kind.user_type().to_string(),
            access_token: response.access_token,
            refresh_token: response.refresh_token,
            expires_at: Some(now + response.expires_in.unwrap_or(86_399)),
            scope: response.scope,
            location_id: response.location_id,
            company_id: response.company_id,
            state: TenantState::Active,
            last_error: None,
            attempts: 0,
            retry_at: 0,
            updated_at: now,
        }
    }

    /// `/oauth/callback`: exchanges the code (within the app-wide budget, without waiting for
    /// it), stores the pair under its tenant, and retries the INSTALLs that were waiting for this
    /// agency's token.
    pub async fn complete_install(
        self: &Arc<Self>,
        code: &str,
        kind: TenantKind,
    ) -> Result<TokenRecord, InstallError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| OAuthError::Unexpected("the token module is off".into()))?;
        self.budget.try_acquire_app().map_err(InstallError::Busy)?;
        let response = client.exchange_code(code, kind).await?;
        let tenant = match (
            &response.location_id,
            &response.company_id,
            &response.user_type,
        ) {
            (Some(l), _, ut)
                if ut.as_deref().map(TenantKind::from_user_type) != Some(TenantKind::Company) =>
            {
                l.clone()
            }
            (_, Some(c), _) => c.clone(),
            (Some(l), None, _) => l.clone(),
            (None, None, _) => {
                return Err(OAuthError::Unexpected(
                    "the token answer names neither a location nor a company".into(),
                )
                .into())
            }
        };
        let record = self.record_from(&tenant, response, kind);
        self.vault
            .put(&record)
            .map_err(|e| OAuthError::Unexpected(format!("cannot store the tokens: {e}")))?;
        self.metrics.token_refresh("installed");
        info!(tenant = %record.tenant, user_type = %record.user_type, "install connected");
        if record.user_type == "Company" {
            let this = self.clone();
            let company = record.tenant.clone();
            tokio::spawn(async move { this.retry_pending_installs(Some(&company)).await });
        }
        Ok(record)
    }

    /// A token valid for at least `HLGATE_TOKEN_MIN_TTL`, refreshing first when needed.
    pub async fn token(&self, tenant: &str) -> Result<ServedToken, TokenError> {
        let record = self.fresh(tenant, self.min_ttl).await?;
        Ok(ServedToken {
            tenant: record.tenant.clone(),
            access_token: record.access_token.clone(),
            expires_at: record.expires_at.and_then(rfc3339),
            expires_at_unix: record.expires_at,
            user_type: record.user_type.clone(),
            scope: record.scope.clone(),
        })
    }

    /// The record, refreshed when it is valid for less than `need`. One refresh per tenant is
    /// in flight at a time; waiters re-read the vault and use its result.
    async fn fresh(&self, tenant: &str, need: Duration) -> Result<TokenRecord, TokenError> {
        let lock = self.lock_for(tenant);
        let _guard = lock.lock().await;
        let record = self.vault.get(tenant)?.ok_or(TokenError::Unknown)?;
        match record.state {
            TenantState::Private => return Ok(record),
            TenantState::NeedsReauth => return Err(TokenError::NeedsReauth),
            TenantState::Active if remaining(&record) >= need.as_secs() as i64 => {
                return Ok(record)
            }
            TenantState::Inactive if record.retry_at > now_secs() => {
                return Err(TokenError::Inactive)
            }
            _ => {}
        }
        if record.retry_at > now_secs() && record.last_error.is_some() {
            return Err(TokenError::Unavailable(
                record.last_error.unwrap_or_default(),
            ));
        }
        self.refresh_record(record).await
    }

    /// Spends the refresh token; the new pair is stored before it is returned.
    async fn refresh_record(&self, mut record: TokenRecord) -> Result<TokenRecord, TokenError> {
        let kind = TenantKind::from_user_type(&record.user_type);
        let Some(refresh_token) = record.refresh_token.clone() else {
            return self.recover(record).await;
        };
        let client = self.oauth()?;
        self.budget.acquire(&record.tenant).await;
        match client.refresh(&refresh_token, kind).await {
            Ok(response) => {
                let mut fresh = self.record_from(&record.tenant, response, kind);
                fresh.location_id = fresh.location_id.or(record.location_id);
                fresh.company_id = fresh.company_id.or(record.company_id);
                fresh.scope = fresh.scope.or(record.scope);
                self.vault.put(&fresh)?;
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
                self.failed(&mut record, "location is not active")?;
                self.metrics.token_refresh("inactive");
                warn!(tenant = %record.tenant, "location is not active; keeping its refresh token");
                Err(TokenError::Inactive)
            }
            Err(e) if e.is_transient() => {
                self.failed(&mut record, &e.to_string())?;
                self.metrics.token_refresh("error");
                warn!(tenant = %record.tenant, error = %e, "token refresh failed; will retry");
                Err(TokenError::Unavailable(e.to_string()))
            }
            Err(e) => {
                self.metrics.token_refresh("rejected");
                warn!(tenant = %record.tenant, error = %e, "token refresh rejected; trying the Reconnect API");
                self.recover(record).await
            }
        }
    }

    fn failed(&self, record: &mut TokenRecord, why: &str) -> Result<(), VaultError> {
        record.attempts = record.attempts.saturating_add(1);
        record.retry_at = now_secs() + retry_delay(record.attempts);
        record.last_error = Some(why.to_string());
        record.updated_at = now_secs();
        self.vault.put(record)
    }

    /// Tokens lost: a location under a stored agency gets a new location token; otherwise the
    /// Reconnect API gives a code to exchange. What cannot be recovered is `needs_reauth`.
    async fn recover(&self, record: TokenRecord) -> Result<TokenRecord, TokenError> {
        let kind = TenantKind::from_user_type(&record.user_type);
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
            return self.needs_reauth(record, why);
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
                return self.needs_reauth(record, RECONNECT_UNAVAILABLE.into());
            }
            Err(e) => return self.recovery_failed(record, e),
        };
        match client.exchange_code(&code, kind).await {
            Ok(response) => {
                let mut fresh = self.record_from(&record.tenant, response, kind);
                fresh.location_id = fresh.location_id.or(record.location_id);
                fresh.company_id = fresh.company_id.or(record.company_id);
                self.vault.put(&fresh)?;
                self.metrics.token_refresh("reconnected");
                info!(tenant = %fresh.tenant, "tokens recovered through the Reconnect API");
                Ok(fresh)
            }
            Err(e) => self.recovery_failed(record, e),
        }
    }

    /// A reconnect or its code exchange failed: retry later when that may help, else
    /// `needs_reauth`.
    fn recovery_failed(
        &self,
        mut record: TokenRecord,
        e: OAuthError,
    ) -> Result<TokenRecord, TokenError> {
        if e.is_transient() {
            self.failed(&mut record, &e.to_string())?;
            self.metrics.token_refresh("error");
            return Err(TokenError::Unavailable(e.to_string()));
        }
        self.needs_reauth(record, format!("reconnect failed: {e}"))
    }

    /// Nothing more can be done for the tenant: someone must install the app again.
    fn needs_reauth(
        &self,
        mut record: TokenRecord,
        why: String,
    ) -> Result<TokenRecord, TokenError> {
        warn!(tenant = %record.tenant, reason = %why, "tokens cannot be recovered; the app must be installed again");
        record.state = TenantState::NeedsReauth;
        record.last_error = Some(why);
        record.updated_at = now_secs();
        self.vault.put(&record)?;
        self.metrics.token_refresh("needs_reauth");
        Err(TokenError::NeedsReauth)
    }

    /// Mints and stores a location token with the agency's company token.
    async fn mint_location(
        &self,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenRecord, TokenError> {
        // Boxed: a company's refresh may itself recover through a location (never the reverse).
        let company = Box::pin(self.fresh(company_id, Duration::from_secs(60))).await?;
        if company.user_type != "Company" {
            return Err(TokenError::Unknown);
        }
        let client = self.oauth()?;
        self.budget.acquire(company_id).await;
        let response = client
            .location_token(&company.access_token, company_id, location_id)
            .await
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let mut record = self.record_from(location_id, response, TenantKind::Location);
        record.user_type = "Location".into();
        record
            .company_id
            .get_or_insert_with(|| company_id.to_string());
        record
            .location_id
            .get_or_insert_with(|| location_id.to_string());
        self.vault.put(&record)?;
        info!(tenant = %location_id, company = %company_id, "location token minted");
        Ok(record)
    }

    /// An INSTALL for a location under an agency: mint its token, or wait for the company
    /// token (INSTALL can race the code exchange).
    pub async fn on_install(&self, location_id: &str, company_id: &str) {
        if let Ok(Some(existing)) = self.vault.get(location_id) {
            if existing.state != TenantState::NeedsReauth {
                // Already connected (or minted just before a crash): nothing is waiting.
                let _ = self.installs.delete(location_id);
                return;
            }
        }
        let lock = self.lock_for(location_id);
        let _guard = lock.lock().await;
        match self.mint_location(company_id, location_id).await {
            Ok(_) => {
                let _ = self.installs.delete(location_id);
                self.metrics.token_refresh("minted");
            }
            Err(e) => {
                let attempts = self
                    .installs
                    .get(location_id)
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<PendingInstall>(&b).ok())
                    .map_or(0, |p| p.attempts)
                    .saturating_add(1);
                let pending = PendingInstall {
                    location_id: location_id.to_string(),
                    company_id: company_id.to_string(),
                    attempts,
                    retry_at: now_secs() + retry_delay(attempts),
                };
                let _ = self.installs.put(
                    location_id,
                    &serde_json::to_vec(&pending).expect("serialises"),
                );
                info!(tenant = %location_id, company = %company_id, reason = %e, "location token not minted yet; will retry");
            }
        }
    }

    /// INSTALLs waiting for a company token: all due ones, or all of one company right away.
    pub async fn retry_pending_installs(&self, company: Option<&str>) {
        let now = now_secs();
        for pending in self.pending_installs() {
            let due = match company {
                Some(c) => pending.company_id == c,
                None => pending.retry_at <= now,
            };
            if due {
                self.on_install(&pending.location_id, &pending.company_id)
                    .await;
            }
        }
    }

    pub fn pending_installs(&self) -> Vec<PendingInstall> {
        pending_installs(&self.installs)
    }

    /// An UNINSTALL: the tenant's tokens are deleted.
    pub fn on_uninstall(&self, tenant: &str) {
        let _ = self.installs.delete(tenant);
        match self.vault.delete(tenant) {
            Ok(true) => info!(tenant = %tenant, "uninstalled; tokens deleted"),
            Ok(false) => {}
            Err(e) => warn!(tenant = %tenant, error = %e, "cannot delete tokens"),
        }
    }

    /// Stores a Private Integration Token: served and attached as is, never refreshed.
    pub fn set_private(&self, tenant: &str, token: &str) -> Result<(), VaultError> {
        self.vault.put(&TokenRecord {
            tenant: tenant.to_string(),
            user_type: "Location".into(),
            access_token: token.to_string(),
            refresh_token: None,
            expires_at: None,
            scope: None,
            location_id: Some(tenant.to_string()),
            company_id: None,
            state: TenantState::Private,
            last_error: None,
            attempts: 0,
            retry_at: 0,
            updated_at: now_secs(),
        })
    }

    /// Every tenant, without tokens.
    pub fn tenants(&self) -> Result<Vec<TenantView>, VaultError> {
        tenant_views(&self.vault)
    }

    /// Tenants by state, for `hlgate_tenants{state}`.
    pub fn state_counts(&self) -> Vec<(&'static str, u64)> {
        let views = self.tenants().unwrap_or_default();
        TenantState::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    views.iter().filter(|v| v.state == s.as_str()).count() as u64,
                )
            })
            .collect()
    }

    /// One pass of the schedule: refresh what is due, retry inactive tenants and pending
    /// INSTALLs. Returns how many refreshes were attempted.
    pub async fn refresh_due(&self) -> usize {
        let now = now_secs();
        let before = self.refresh_before.as_secs() as i64;
        let due: Vec<String> = self
            .vault
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(Result::ok)
            .filter(|r| match r.state {
                TenantState::Active => remaining(r) <= before && r.retry_at <= now,
                TenantState::Inactive => r.retry_at <= now,
                _ => false,
            })
            .map(|r| r.tenant)
            .collect();
        let count = due.len();
        for tenant in due {
            // `fresh` re-checks under the tenant's lock; a served request may have refreshed it.
            let need = self.refresh_before + Duration::from_secs(1);
            let _ = self.fresh(&tenant, need).await;
        }
        self.retry_pending_installs(None).await;
        count
    }
}

/// Every tenant in `vault`, without tokens (also read by `hlgate tenants` from a stopped
/// gateway's store).
pub fn tenant_views(vault: &Vault) -> Result<Vec<TenantView>, VaultError> {
    Ok(vault
        .list()?
        .into_iter()
        .map(|r| match r {
            Ok(r) => TenantView {
                tenant: r.tenant,
                user_type: r.user_type,
                state: r.state.as_str(),
                expires_at: r.expires_at.and_then(rfc3339),
                location_id: r.location_id,
                company_id: r.company_id,
                scope: r.scope,
                last_error: r.last_error,
                updated_at: rfc3339(r.updated_at),
            },
            Err(tenant) => TenantView {
                tenant,
                user_type: String::new(),
                state: TenantState::NeedsReauth.as_str(),
                expires_at: None,
                location_id: None,
                company_id: None,
                scope: None,
                last_error: Some("the record cannot be decrypted".into()),
                updated_at: None,
            },
        })
        .collect())
}

/// The INSTALLs in `installs` still waiting for their agency's token.
pub fn pending_installs(installs: &KeyedTree) -> Vec<PendingInstall> {
    installs
        .list()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect()
}

/// Seconds an access token is still valid for.
fn remaining(record: &TokenRecord) -> i64 {
    record.expires_at.map_or(i64::MAX, |e| e - now_secs())
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The relay's view of the token module.
pub struct Hooks(pub Arc<TokenService>);

impl TokenHooks for Hooks {
    fn attach<'a>(
        &'a self,
        entry: &'a Entry,
    ) -> Pin<Box<dyn Future<Output = Attached> + Send + 'a>> {
        Box::pin(async move {
            if !self.0.attach_tokens {
                return Attached::Off;
            }
            if entry.tenant == crate::event::NO_TENANT {
                return Attached::Error("no_tenant".into());
            }
            match self.0.token(&entry.tenant).await {
                Ok(t) => match t.expires_at_unix {
                    Some(unix) => Attached::Token {
                        access_token: t.access_token,
                        expires_at: OffsetDateTime::from_unix_timestamp(unix)
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    },
                    // Private tokens do not expire; say so with a far date.
                    None => Attached::Token {
                        access_token: t.access_token,
                        expires_at: OffsetDateTime::from_unix_timestamp(253_402_300_799)
                            .expect("year 9999"),
                    },
                },
                Err(e) => Attached::Error(e.code().into()),
            }
        })
    }

    fn published<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match entry.event_type.as_str() {
                "INSTALL" if self.0.client().is_some() => {
                    if let (Some(location), Some(company)) = (&entry.location_id, &entry.company_id)
                    {
                        let (service, location, company) =
                            (self.0.clone(), location.clone(), company.clone());
                        tokio::spawn(async move { service.on_install(&location, &company).await });
                    }
                }
                "UNINSTALL" => {
                    if let Some(tenant) = entry.location_id.as_ref().or(entry.company_id.as_ref()) {
                        self.0.on_uninstall(tenant);
                    }
                }
                _ => {}
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_cap() {
        assert!(retry_delay(1) >= 1);
        assert!(retry_delay(30) <= RETRY_MAX_SECS);
        assert!(retry_delay(30) >= RETRY_MAX_SECS / 2);
    }

    #[test]
    fn debug_output_never_shows_a_token_or_secret() {
        let record = vault::tests::record("loc");
        let served = ServedToken {
            tenant: "loc".into(),
            access_token: "access-s3cret".into(),
            expires_at: None,
            user_type: "Location".into(),
            scope: None,
            expires_at_unix: None,
        };
        let client = HighLevelClient::new(
            "http://127.0.0.1:1",
            "client-id",
            crate::config::Secret::new("client-s3cret"),
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

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode("contacts.readonly locations.write"),
            "contacts.readonly%20locations.write"
        );
        assert_eq!(
            encode("https://x.io/cb?a=1"),
            "https%3A%2F%2Fx.io%2Fcb%3Fa%3D1"
        );
    }
}
