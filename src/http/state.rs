//! What the handlers of each listener share, built once by startup.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::body::BodyBudget;
use crate::config::{HttpSettings, Secret};
use crate::health::{Health, Tally};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::oauth::{Proxy, TokenService};
use crate::store::Store;

/// What the public handlers share.
pub struct PublicState {
    pub ingest: Arc<Ingest>,
    pub max_body_bytes: usize,
    /// A body not received in full within this time gets 408.
    pub body_timeout: Duration,
    /// What the bodies being received may hold together.
    pub bodies: BodyBudget,
    /// The token module, for the install flow.
    pub tokens: Arc<TokenService>,
    /// Every webhook answer, counted for delivery health.
    pub tally: Arc<Tally>,
}

impl PublicState {
    pub fn new(
        ingest: Arc<Ingest>,
        http: &HttpSettings,
        tokens: Arc<TokenService>,
        tally: Arc<Tally>,
    ) -> Self {
        Self {
            ingest,
            max_body_bytes: http.max_body_bytes,
            body_timeout: http.body_timeout,
            bodies: BodyBudget::for_max_body(http.max_body_bytes),
            tokens,
            tally,
        }
    }
}

/// What the admin handlers share.
pub struct AdminState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub admin_token: Option<Secret>,
    pub outbox_max_events: u64,
    /// The token vault and refresher; also counts tenants by state for `hlgate_tenants`.
    pub tokens: Arc<TokenService>,
    /// The HighLevel API proxy.
    pub proxy: Arc<Proxy>,
    /// Tokens that open the proxy and nothing else.
    pub proxy_tokens: Vec<Secret>,
    /// Larger proxied request bodies get 413 (bytes).
    pub proxy_max_body_bytes: usize,
    /// Cancelled at shutdown: a replay stops early rather than hold the stop.
    pub shutdown: CancellationToken,
    /// Delivery health, for `/v1/health`.
    pub health: Arc<Health>,
}
