//! The only lapin user: the relay from the outbox to RabbitMQ, and the AMQP message format.

pub mod amqp;
mod poison;
mod refused;
pub mod relay;
mod window;

pub use amqp::Attached;
pub use relay::{Relay, RelayConfig};
pub use window::TokenHooks;
