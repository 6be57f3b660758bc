//! The background schedule: refresh what falls due, retry inactive tenants and waiting
//! INSTALLs, and stop between tenants when asked, never inside a refresh.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::service::TokenService;
use super::vault::{now_secs, TenantState};

/// Runs the schedule until `stop`: every `every`, one [`pass`]. Spawn it on
/// [`TokenService::tasks`] so that shutdown waits for the refresh it is doing.
pub async fn run(service: Arc<TokenService>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => break,
        }
        let attempted = pass(&service, &stop).await;
        if attempted > 0 {
            info!(attempted, "token refresh pass");
        }
    }
}

/// One pass of the schedule: refresh what is due, retry inactive tenants and pending INSTALLs.
/// Returns how many refreshes were attempted.
pub async fn pass(service: &TokenService, stop: &CancellationToken) -> usize {
    let now = now_secs();
    let before = service.refresh_before.as_secs() as i64;
    let records = service
        .blocking(|vault, _| vault.list().unwrap_or_default())
        .await
        .unwrap_or_default();
    let due: Vec<String> = records
        .into_iter()
        .filter_map(Result::ok)
        .filter(|r| match r.state {
            TenantState::Active => r.remaining_secs() <= before && r.retry_at <= now,
            TenantState::Inactive => r.retry_at <= now,
            _ => false,
        })
        .map(|r| r.tenant)
        .collect();
    let mut attempted = 0;
    for tenant in due {
        if stop.is_cancelled() {
            return attempted;
        }
        // `fresh` re-checks under the tenant's flight; a served request may have refreshed it.
        let need = service.refresh_before + Duration::from_secs(1);
        let _ = service.fresh(&tenant, need).await;
        attempted += 1;
    }
    if !stop.is_cancelled() {
        service.retry_pending_installs(None).await;
    }
    attempted
}
