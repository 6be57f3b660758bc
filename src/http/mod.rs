//! The only actix-web user: the public listener (webhooks, the install flow), the admin
//! listener, and the one mapping from errors to HTTP answers.
//!
//! `server` builds both listeners and assembles their routes; the handler files (`public`,
//! `oauth`, `admin`, `proxy`) share only `state`, `auth` and `error`, never each other.

pub mod admin;
mod auth;
mod body;
mod error;
mod oauth;
mod proxy;
mod public;
mod server;
mod state;

pub use error::ApiError;
pub use server::{serve, BindError, Servers, Serving};
pub use state::{AdminState, PublicState};
