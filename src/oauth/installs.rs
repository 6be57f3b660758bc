//! Installs: the install URL, the callback's code exchange, INSTALL events (a location token
//! minted with its agency's token, or waiting for it) and UNINSTALL events.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::budget::retry_after_secs;
use super::service::{retry_at, TokenService};
use super::vault::{now_secs, TenantState, TokenRecord, VaultError};
use crate::highlevel::{OAuthError, TenantKind};
use crate::store::KeyedTree;

/// Why a callback's code was not exchanged.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The app-wide request budget is spent: anyone can call `/oauth/callback`, so a flood of
    /// made-up codes must not spend the app's credentials (or the refreshes' budget) at will.
    #[error("too many install attempts at once; try again in {} s", retry_after_secs(*.0))]
    Busy(Duration),
    /// No client credentials are configured.
    #[error("the token module is off (no client credentials)")]
    Off,
    #[error(transparent)]
    OAuth(#[from] OAuthError),
    /// The exchange worked but its pair could not be stored: a server fault.
    #[error("cannot store the tokens: {0}")]
    Vault(#[from] VaultError),
}

/// An INSTALL that waits for its agency's company token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingInstall {
    pub location_id: String,
    pub company_id: String,
    pub attempts: u32,
    pub retry_at: i64,
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

/// Which tenant a token answer is for.
fn tenant_of(response: &crate::highlevel::TokenResponse) -> Result<String, OAuthError> {
    let is_company = response
        .user_type
        .as_deref()
        .map(TenantKind::from_user_type)
        == Some(TenantKind::Company);
    match (&response.location_id, &response.company_id) {
        (Some(l), _) if !is_company => Ok(l.clone()),
        (_, Some(c)) => Ok(c.clone()),
        (Some(l), None) => Ok(l.clone()),
        (None, None) => Err(OAuthError::Unexpected(
            "the token answer names neither a location nor a company".into(),
        )),
    }
}

impl TokenService {
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

    /// `/oauth/callback`: exchanges the code (within the app-wide budget, without waiting for
    /// it), stores the pair under its tenant, and retries the INSTALLs that were waiting for this
    /// agency's token. The exchange runs as a tracked task: a code spent at HighLevel gets its
    /// pair stored even when the browser goes away.
    pub async fn complete_install(
        self: &Arc<Self>,
        code: &str,
        kind: TenantKind,
    ) -> Result<TokenRecord, InstallError> {
        if self.client.is_none() {
            return Err(InstallError::Off);
        }
        self.budget.try_acquire_app().map_err(InstallError::Busy)?;
        let (this, code) = (self.clone(), code.to_string());
        self.spawn(async move { this.exchange(&code, kind).await })
            .await
            .map_err(|e| InstallError::Vault(VaultError::Task(e.to_string())))?
    }

    async fn exchange(
        self: Arc<Self>,
        code: &str,
        kind: TenantKind,
    ) -> Result<TokenRecord, InstallError> {
        let client = self.client.as_ref().ok_or(InstallError::Off)?;
        let response = client.exchange_code(code, kind).await?;
        let tenant = tenant_of(&response)?;
        let record = TokenRecord::from_response(&tenant, response, kind, now_secs());
        let record = self.save(record).await?;
        self.metrics.token_refresh("installed");
        info!(tenant = %record.tenant, user_type = ?record.user_type, "install connected");
        if record.user_type == TenantKind::Company {
            let (this, company) = (self.clone(), record.tenant.clone());
            self.spawn(async move { this.retry_pending_installs(Some(&company)).await });
        }
        Ok(record)
    }

    /// An INSTALL for a location under an agency: mint its token, or wait for the company
    /// token (INSTALL can race the code exchange).
    pub async fn on_install(&self, location_id: &str, company_id: &str) {
        if let Ok(Some(existing)) = self.load(location_id).await {
            if existing.state != TenantState::NeedsReauth {
                // Already connected (or minted just before a crash): nothing is waiting.
                self.no_longer_waiting(location_id).await;
                return;
            }
        }
        let _flight = self.flight(location_id).await;
        match self.mint_location(company_id, location_id).await {
            Ok(_) => {
                self.no_longer_waiting(location_id).await;
                self.metrics.token_refresh("minted");
            }
            Err(e) => {
                let (location, company) = (location_id.to_string(), company_id.to_string());
                let _ = self
                    .blocking(move |_, installs| wait_for_company(installs, location, company))
                    .await;
                info!(tenant = %location_id, company = %company_id, reason = %e, "location token not minted yet; will retry");
            }
        }
    }

    async fn no_longer_waiting(&self, location_id: &str) {
        let location = location_id.to_string();
        let _ = self
            .blocking(move |_, installs| installs.delete(&location))
            .await;
    }

    /// INSTALLs waiting for a company token: all due ones, or all of one company right away.
    pub async fn retry_pending_installs(&self, company: Option<&str>) {
        let now = super::vault::now_secs();
        let pending = self
            .blocking(|_, installs| pending_installs(installs))
            .await
            .unwrap_or_default();
        for pending in pending {
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

    /// An UNINSTALL: the tenant's tokens are deleted. Blocking: call it off the async threads.
    pub fn on_uninstall(&self, tenant: &str) {
        let _ = self.installs.delete(tenant);
        match self.delete_now(tenant) {
            Ok(true) => info!(tenant = %tenant, "uninstalled; tokens deleted"),
            Ok(false) => {}
            Err(e) => warn!(tenant = %tenant, error = %e, "cannot delete tokens"),
        }
    }
}

/// Records (again) that `location` waits for `company`'s token, with its next retry.
fn wait_for_company(installs: &KeyedTree, location: String, company: String) {
    let attempts = installs
        .get(&location)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<PendingInstall>(&b).ok())
        .map_or(0, |p| p.attempts)
        .saturating_add(1);
    let pending = PendingInstall {
        retry_at: retry_at(attempts),
        location_id: location,
        company_id: company,
        attempts,
    };
    let _ = installs.put(
        &pending.location_id,
        &serde_json::to_vec(&pending).expect("serialises"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
