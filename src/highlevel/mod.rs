//! HighLevel's HTTP API as hlgate calls it: with the CLI, the only reqwest user. The token
//! module builds on it; nothing here knows about tenants at rest.
//!
//! - `oauth`: `/oauth/token`, `/oauth/locationToken` and `/oauth/reconnect`, their errors.
//! - `api`: one proxied call to HighLevel's API, bodies streamed both ways.
//! - `rate`: the `X-RateLimit-*` answer headers, for a request budget to follow.

mod api;
mod oauth;
mod rate;

pub use api::{ApiBody, ApiCallError, ApiClient, ApiRequest, ApiResponse};
pub use oauth::{classify, HighLevelClient, OAuthError, TenantKind, TokenResponse, API_VERSION};
pub use rate::RateLimitHeaders;
