//! What operators see of the tokens, never a token: the tenants and their state, the INSTALLs
//! waiting, and the one write they make (a Private Integration Token). `hlgate tenants` reads
//! the same views from a stopped gateway's store.

use serde::Serialize;

use super::installs::{pending_installs, PendingInstall};
use super::service::TokenService;
use super::vault::{now_secs, rfc3339, TenantState, TokenRecord, Vault, VaultError};
use crate::highlevel::TenantKind;
use crate::secret::Secret;

/// What `/v1/tenants` shows of a record: never a token.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub tenant: String,
    /// `Location` or `Company`; empty when the record cannot be read.
    pub user_type: &'static str,
    pub state: &'static str,
    pub expires_at: Option<String>,
    pub location_id: Option<String>,
    pub company_id: Option<String>,
    pub scope: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: Option<String>,
}

/// Every tenant in `vault`, without tokens.
pub fn tenant_views(vault: &Vault) -> Result<Vec<TenantView>, VaultError> {
    Ok(vault
        .list()?
        .into_iter()
        .map(|r| match r {
            Ok(r) => TenantView {
                tenant: r.tenant,
                user_type: r.user_type.user_type(),
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
                user_type: "",
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

/// The views read the disk: call them off the async threads.
impl TokenService {
    /// Every tenant, without tokens.
    pub fn tenants(&self) -> Result<Vec<TenantView>, VaultError> {
        tenant_views(&self.vault)
    }

    pub fn pending_installs(&self) -> Vec<PendingInstall> {
        pending_installs(&self.installs)
    }

    /// Stores a Private Integration Token: served and attached as is, never refreshed.
    pub fn set_private(&self, tenant: &str, token: &str) -> Result<(), VaultError> {
        self.store_now(&TokenRecord {
            tenant: tenant.to_string(),
            user_type: TenantKind::Location,
            access_token: Secret::new(token),
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
}
