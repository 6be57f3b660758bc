//! Single flight per tenant: at most one refresh (or mint) of a tenant's tokens at a time, in
//! this process, since a refresh token is single-use. A tenant's lock lives only while someone
//! holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub struct Flights {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// The right to work on one tenant's tokens, until dropped.
pub struct Flight<'a> {
    flights: &'a Flights,
    tenant: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Flights {
    /// Waits for the tenant's flight in progress, if any, then starts one.
    pub async fn start(&self, tenant: &str) -> Flight<'_> {
        let lock = self
            .locks
            .lock()
            .expect("flights lock")
            .entry(tenant.to_string())
            .or_default()
            .clone();
        Flight {
            flights: self,
            tenant: tenant.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Tenants with a flight held or awaited.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.locks.lock().expect("flights lock").len()
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut locks = self.flights.locks.lock().expect("flights lock");
        drop(self.guard.take());
        // Waiters hold a clone of the lock, taken under the map's lock: one left means nobody.
        if locks
            .get(&self.tenant)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_flight_per_tenant_and_none_kept_when_unused() {
        let flights = Arc::new(Flights::default());
        let first = flights.start("a").await;
        let other = flights.start("b").await;
        let waiting = {
            let flights = flights.clone();
            tokio::spawn(async move {
                let _second = flights.start("a").await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a second flight of a ran alongside the first"
        );
        drop(first);
        waiting.await.unwrap();
        drop(other);
        assert_eq!(flights.in_flight(), 0);
    }
}
