//! The only actix-web user: the public listener (webhooks), the admin listener, and the one
//! mapping from errors to HTTP answers.

pub mod admin;
pub mod error;
pub mod oauth;
pub mod public;

pub use error::ApiError;
