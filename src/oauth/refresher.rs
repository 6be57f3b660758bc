//! The background schedule: first the refreshes a stopped process left in flight (`resume`),
//! then refresh what falls due, soonest first and a bounded number at a time, retry inactive
//! tenants and waiting INSTALLs, and stop taking tenants when asked, never cutting a refresh
//! short.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::service::TokenService;
use super::vault::now_secs;

/// Runs the schedule until `stop`: every `every`, one [`pass`] with at most `concurrency`
/// refreshes in flight. Spawn it on [`TokenService::tasks`] so that shutdown waits for the
/// refreshes it started.
pub async fn run(
    service: Arc<TokenService>,
    every: Duration,
    concurrency: usize,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    // At once, before anything else: HighLevel answers them only within 30 s of the first ask.
    let resumed = resume(&service, &slots, &stop).await;
    if resumed > 0 {
        info!(
            resumed,
            "token refreshes in flight at the last stop asked again"
        );
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => break,
        }
        let attempted = pass(&service, &slots, &stop).await;
        if attempted > 0 {
            info!(attempted, "token refresh pass");
        }
    }
}

/// Refreshes every tenant whose refresh a stopped process left in flight, at most
/// `slots` at once; returns how many.
async fn resume(
    service: &Arc<TokenService>,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> usize {
    let mut started = Vec::new();
    for tenant in service.take_interrupted() {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = stop.cancelled() => break,
        };
        let this = service.clone();
        started.push(service.spawn(async move {
            let _ = this.resume(&tenant).await;
            drop(slot);
        }));
    }
    let resumed = started.len();
    for task in started {
        let _ = task.await;
    }
    resumed
}

/// One pass of the schedule: refresh every tenant that is due, each at most once, then retry
/// pending INSTALLs. The next tenant is chosen from the index when a slot frees up, so one
/// that fell due meanwhile with an earlier due time goes ahead of the rest. Returns how many
/// refreshes were attempted.
pub async fn pass(
    service: &Arc<TokenService>,
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> usize {
    let mut taken: HashSet<String> = HashSet::new();
    let mut started = Vec::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = stop.cancelled() => break,
        };
        let Some(tenant) = service.kept.next_due(now_secs(), |t| taken.contains(t)) else {
            break;
        };
        taken.insert(tenant.clone());
        let this = service.clone();
        // A tracked task: shutdown waits for it to store the pair HighLevel gave.
        started.push(service.spawn(async move {
            // `fresh` re-checks under the tenant's flight; a served request may have refreshed it.
            let need = this.refresh_before + Duration::from_secs(1);
            let _ = this.fresh(&tenant, need).await;
            drop(slot);
        }));
    }
    for task in started {
        let _ = task.await;
    }
    if !stop.is_cancelled() {
        service.retry_pending_installs(None).await;
    }
    taken.len()
}
