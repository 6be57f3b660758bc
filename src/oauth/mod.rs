//! The token module: every install's OAuth tokens kept fresh, recoverable, and attached for
//! callbacks. HighLevel itself is reached through `crate::highlevel`.
//!
//! - `service`: [`TokenService`], tokens valid for as long as asked (one refresh per tenant in
//!   flight, see `flights`), recovery of lost ones, the tracked tasks.
//! - `installs`: the install URL, the callback's code exchange, INSTALL and UNINSTALL events.
//! - `views`: what operators see (tenants, states, waiting INSTALLs) and private tokens.
//! - `hooks`: the relay's view (tokens per window, lifecycle events after a publish).
//! - `kept`: what the service keeps in memory: records, and every tenant by due time and state.
//! - `refresher`: the background schedule: due tenants, soonest first, a bounded number at once.
//! - `budget`: the request budget per resource, fed by HighLevel's rate-limit headers.
//! - `proxy`: the HighLevel API proxy without HTTP: token, rate governor, retries.
//! - `renewals`: tenants renewed just now, for whom a 401 forces no refresh (the hold-down).
//! - `vault`: token records encrypted at rest.
//! - `key`: the key they are sealed with, and the check that a start has the right one.
//! - `resume`: the mark of a refresh in flight, and the retry first at start of those a crash
//!   cut short.

pub mod budget;
mod flights;
mod hooks;
mod installs;
mod kept;
pub mod key;
mod proxy;
pub mod refresher;
mod renewals;
mod resume;
mod service;
pub mod vault;
mod views;

pub use budget::{retry_after_secs, Limits, RateBudget};
pub use hooks::{Hooks, ATTACH_WAIT};
pub use installs::{encode, pending_installs, InstallError, PendingInstall};
pub use proxy::{
    BodyError, Forward, Proxy, ProxyBody, ProxyError, ProxySettings, RateView, Timing,
};
pub use service::{InstallSettings, ServedToken, TokenError, TokenService, TokenServiceParts};
pub use vault::{TenantState, TokenRecord, Vault, VaultError};
pub use views::{
    parse_state, tenant_page, PageQuery, TenantPage, TenantView, PAGE_DEFAULT, PAGE_MAX,
};
