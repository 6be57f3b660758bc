//! What a start takes from the vault: every tenant indexed by due time, and the refreshes a
//! stopped process left in flight.
//!
//! A refresh is marked (tree `refreshing`, flushed) before HighLevel can spend the refresh
//! token, and unmarked once HighLevel's answer is stored. A mark found at start means HighLevel
//! may have rotated the token while the new pair never reached the vault. HighLevel answers a
//! spent refresh token presented again within 30 s with the same new pair (its concurrency
//! grace); after that the token is refused and the tenant is lost. So the refresher asks again
//! for these tenants first, before any other.

use tracing::warn;

use super::service::{TokenError, TokenService};
use super::vault::{now_secs, TenantState, VaultError};

impl TokenService {
    /// Indexes every record of the vault by due time and state, and takes note of the
    /// refreshes a stopped process left in flight; call it once, before the refresher starts.
    /// Blocking.
    pub fn index_vault(&self) -> Result<(), VaultError> {
        let records = self.vault.list()?;
        let unopened = records.iter().filter(|r| r.is_err()).count();
        if unopened > 0 {
            warn!(
                records = unopened,
                "token records the token key does not open (damaged, or sealed with another \
                 key): their tenants count as needs_reauth"
            );
        }
        self.kept.index_all(records);
        let marked: Vec<String> = self
            .refreshing
            .list()?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        if !marked.is_empty() {
            warn!(
                tenants = marked.len(),
                "token refreshes were in flight when hlgate stopped; asking HighLevel again \
                 first (it gives their new pair again only within 30 s)"
            );
        }
        *self.interrupted.lock().expect("interrupted") = marked;
        Ok(())
    }

    /// The tenants whose refresh a stopped process left in flight; empty after the first call.
    pub(super) fn take_interrupted(&self) -> Vec<String> {
        std::mem::take(&mut *self.interrupted.lock().expect("interrupted"))
    }

    /// Marks the tenant's refresh in flight, flushed, before its refresh token is presented.
    pub(super) async fn mark_refreshing(&self, tenant: &str) -> Result<(), VaultError> {
        let (tree, tenant) = (self.refreshing.clone(), tenant.to_string());
        let since = now_secs().to_be_bytes();
        tokio::task::spawn_blocking(move || tree.put(&tenant, &since))
            .await
            .map_err(|e| VaultError::Task(e.to_string()))??;
        Ok(())
    }

    /// Unmarks it once HighLevel's answer is stored. Not flushed: that answer was, and a mark
    /// that a crash keeps only makes the next start ask once more.
    pub(super) async fn unmark_refreshing(&self, tenant: &str) {
        let (tree, tenant) = (self.refreshing.clone(), tenant.to_string());
        let forgotten = tokio::task::spawn_blocking(move || tree.forget(&tenant)).await;
        if let Err(e) = forgotten
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            warn!(error = %e, "cannot unmark a refresh; the next start asks for it again");
        }
    }

    /// Refreshes a tenant whose refresh a stopped process left in flight, whatever its due
    /// time: its stored refresh token may be spent, and only now does HighLevel still answer it.
    pub(super) async fn resume(&self, tenant: &str) -> Result<(), TokenError> {
        let _flight = self.flight(tenant).await;
        // A refresh that came first (a served request) has stored its answer and unmarked it.
        let tree = self.refreshing.clone();
        let key = tenant.to_string();
        let marked = tokio::task::spawn_blocking(move || tree.get(&key))
            .await
            .map_err(|e| VaultError::Task(e.to_string()))?
            .map_err(VaultError::from)?;
        if marked.is_none() {
            return Ok(());
        }
        match self.load(tenant).await? {
            Some(record)
                if record.refresh_token.is_some()
                    && matches!(record.state, TenantState::Active | TenantState::Inactive) =>
            {
                self.refresh_record(record).await.map(drop)
            }
            // Uninstalled since, or nothing to present again.
            _ => {
                self.unmark_refreshing(tenant).await;
                Ok(())
            }
        }
    }
}
