//! The only lapin user: the relay from the outbox to RabbitMQ, and the AMQP message format.

pub mod amqp;
mod poison;
pub mod relay;

pub use amqp::Attached;
pub use relay::{Relay, RelayConfig, TokenHooks};
