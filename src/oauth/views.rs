//! What operators see of the tokens, never a token: the tenants and their state, the INSTALLs
//! waiting, and the one write they make (a Private Integration Token). `hlgate tenants` reads
//! the same views from a stopped gateway's store.

use serde::Serialize;

use super::installs::{pending_installs, PendingInstall};
use super::proxy::RateView;
use super::service::TokenService;
use super::vault::{now_secs, rfc3339, TenantState, TokenRecord, Vault, VaultError};
use crate::highlevel::TenantKind;
use crate::secret::Secret;
use crate::store::KeyedTree;

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
    /// The proxy's rate budget for the tenant; only a serving gateway knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateView>,
}

/// Tenants a page holds when the caller does not say.
pub const PAGE_DEFAULT: usize = 500;
/// The most a page holds: a page is read, decrypted and answered in one go.
pub const PAGE_MAX: usize = 5000;

/// Which tenants a page holds: those after `after` in tenant-id order, at most `limit` (at
/// least one), only those in `state` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: usize,
    pub state: Option<TenantState>,
}

impl Default for PageQuery {
    fn default() -> Self {
        PageQuery {
            after: None,
            limit: PAGE_DEFAULT,
            state: None,
        }
    }
}

/// A state by its name in the views (`needs_reauth`).
pub fn parse_state(text: &str) -> Option<TenantState> {
    TenantState::ALL.into_iter().find(|s| s.as_str() == text)
}

/// One page of `GET /v1/tenants`. `next` is the cursor for the following page, `None` when no
/// tenant follows. The INSTALLs waiting are the first page's only (they are not tenants yet).
#[derive(Debug, Clone, Serialize)]
pub struct TenantPage {
    pub tenants: Vec<TenantView>,
    pub pending_installs: Vec<PendingInstall>,
    pub next: Option<String>,
}

fn view(record: Result<TokenRecord, String>) -> TenantView {
    match record {
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
            rate: None,
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
            rate: None,
        },
    }
}

/// One page of tenants, without tokens: reads and decrypts what it returns and, with a state
/// filter, what it skips, plus the record after a full page (to know whether one follows).
pub fn tenant_page(
    vault: &Vault,
    installs: &KeyedTree,
    query: &PageQuery,
) -> Result<TenantPage, VaultError> {
    let limit = query.limit.max(1);
    let wanted = |v: &TenantView| query.state.is_none_or(|s| v.state == s.as_str());
    let mut records = vault.after(query.after.as_deref());
    let mut tenants = Vec::new();
    for record in records.by_ref() {
        let view = view(record?);
        if wanted(&view) {
            tenants.push(view);
            if tenants.len() == limit {
                break;
            }
        }
    }
    // With a filter the tenants that follow may all be skipped: that last page is empty.
    let next = match tenants.last() {
        Some(last) if tenants.len() == limit && records.next().is_some() => {
            Some(last.tenant.clone())
        }
        _ => None,
    };
    let pending_installs = match query.after {
        None => pending_installs(installs),
        Some(_) => Vec::new(),
    };
    Ok(TenantPage {
        tenants,
        pending_installs,
        next,
    })
}

/// The views read the disk: call them off the async threads.
impl TokenService {
    /// One page of tenants, without tokens.
    pub fn tenant_page(&self, query: &PageQuery) -> Result<TenantPage, VaultError> {
        tenant_page(&self.vault, &self.installs, query)
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
