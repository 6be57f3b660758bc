//! The only actix-web user: the public listener (webhooks, the install flow), the admin
//! listener, and the one mapping from errors to HTTP answers.
//!
//! `server` builds both listeners and assembles their routes; the handler files (`public`,
//! `oauth`, `admin`, `events`, `health`, `proxy`, `console` (the operator console's files), and
//! `holding` for a start that waits for disk space) share only `state`, `auth` and `error`, never each other.

pub mod admin;
mod auth;
mod body;
mod console;
mod error;
mod events;
mod health;
mod holding;
mod oauth;
mod proxy;
mod public;
mod server;
mod state;

pub use error::ApiError;
pub use events::{event_json, page_json, parse_query};
pub use holding::Holding;
pub use server::{hold, serve, BindError, Listeners, Servers, Serving};
pub use state::{AdminState, PublicState};
