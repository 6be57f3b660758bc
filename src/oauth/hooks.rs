//! The relay's view of the token module: tokens for a window of entries, resolved per tenant
//! from the service's in-memory records, and the INSTALL/UNINSTALL reactions after a publish.
//! Refreshes run in tracked background tasks; the relay never waits on HighLevel for longer
//! than [`ATTACH_WAIT`] per window.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::warn;

use super::service::{check, Check, TokenService};
use super::vault::TokenRecord;
use crate::entry::Entry;
use crate::publish::{Attached, TokenHooks};
use crate::secret::Secret;

/// The longest a window waits for the refreshes it started; after that its entries say
/// `refresh_pending` and the refreshes finish in the background for the next windows.
pub const ATTACH_WAIT: Duration = Duration::from_secs(1);

/// The `x-hl-token-error` of an entry whose tenant's refresh did not finish within the wait.
const PENDING: &str = "refresh_pending";

/// What a window attaches for one tenant.
#[derive(Clone)]
enum Resolved {
    Token(Secret, OffsetDateTime),
    Error(&'static str),
}

impl Resolved {
    fn of(record: &TokenRecord) -> Resolved {
        // Private tokens do not expire; say so with a far date.
        let expires_at = record.expires_at.map_or(253_402_300_799, |e| e);
        Resolved::Token(
            record.access_token.clone(),
            OffsetDateTime::from_unix_timestamp(expires_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }

    fn attached(&self) -> Attached {
        match self {
            Resolved::Token(token, expires_at) => Attached::Token {
                access_token: token.clone(),
                expires_at: *expires_at,
            },
            Resolved::Error(code) => Attached::Error(code.to_string()),
        }
    }
}

pub struct Hooks(pub Arc<TokenService>);

impl Hooks {
    /// One answer per distinct tenant of the window.
    async fn resolve(&self, tenants: Vec<&str>) -> HashMap<String, Resolved> {
        let service = &self.0;
        let need = service.min_ttl;
        let mut resolved = HashMap::with_capacity(tenants.len());
        let mut due = Vec::new();
        let mut misses = Vec::new();
        let mut errors: Vec<(String, &'static str)> = Vec::new();
        let mut decide = |tenant: String, record: &TokenRecord, due: &mut Vec<String>| {
            match check(record, need) {
                Check::Ready => resolved.insert(tenant, Resolved::of(record)),
                Check::Refused(e) => resolved.insert(tenant, Resolved::Error(e.code())),
                Check::Due => {
                    due.push(tenant);
                    None
                }
            };
        };
        for tenant in tenants {
            if tenant == crate::event::NO_TENANT {
                errors.push((tenant.to_string(), "no_tenant"));
                continue;
            }
            match service.cached(tenant) {
                Some(record) => decide(tenant.to_string(), &record, &mut due),
                None => misses.push(tenant.to_string()),
            }
        }
        if !misses.is_empty() {
            match service.load_many(misses.clone()).await {
                Ok(read) => {
                    for (tenant, record) in read {
                        match record {
                            Ok(Some(record)) => decide(tenant, &record, &mut due),
                            Ok(None) => errors.push((tenant, "no_token")),
                            Err(_) => errors.push((tenant, "vault_error")),
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot read tokens to attach");
                    errors.extend(misses.into_iter().map(|t| (t, "vault_error")));
                }
            }
        }
        let started: Vec<_> = due
            .into_iter()
            .map(|tenant| {
                let task = service.spawn_fresh(&tenant, need);
                (tenant, task)
            })
            .collect();
        let deadline = tokio::time::Instant::now() + ATTACH_WAIT;
        for (tenant, task) in started {
            let answer = match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(record))) => Resolved::of(&record),
                Ok(Ok(Err(e))) => Resolved::Error(e.code()),
                Ok(Err(_)) => Resolved::Error("refresh_failed"),
                // The refresh goes on; a later window finds its result.
                Err(_) => Resolved::Error(PENDING),
            };
            resolved.insert(tenant, answer);
        }
        for (tenant, code) in errors {
            resolved.insert(tenant, Resolved::Error(code));
        }
        resolved
    }
}

impl TokenHooks for Hooks {
    fn attach_many<'a>(
        &'a self,
        entries: &'a [Entry],
    ) -> Pin<Box<dyn Future<Output = Vec<Attached>> + Send + 'a>> {
        Box::pin(async move {
            if !self.0.attach_tokens {
                return Vec::new();
            }
            let mut tenants: Vec<&str> = entries.iter().map(|e| e.tenant.as_str()).collect();
            tenants.sort_unstable();
            tenants.dedup();
            let resolved = self.resolve(tenants).await;
            entries
                .iter()
                .map(|e| {
                    resolved
                        .get(&e.tenant)
                        .map_or(Attached::Off, Resolved::attached)
                })
                .collect()
        })
    }

    fn published<'a>(&'a self, entry: &'a Entry) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let service = &self.0;
            match entry.event_type.as_str() {
                "INSTALL" if service.client().is_some() => {
                    if let (Some(location), Some(company)) = (&entry.location_id, &entry.company_id)
                    {
                        let (this, location, company) =
                            (service.clone(), location.clone(), company.clone());
                        service.spawn(async move { this.on_install(&location, &company).await });
                    }
                }
                "UNINSTALL" => {
                    if let Some(tenant) = entry.location_id.as_ref().or(entry.company_id.as_ref()) {
                        let (this, tenant) = (service.clone(), tenant.clone());
                        let _ =
                            tokio::task::spawn_blocking(move || this.on_uninstall(&tenant)).await;
                    }
                }
                _ => {}
            }
        })
    }
}
