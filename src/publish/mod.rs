//! The only lapin user: the relay from the outbox to RabbitMQ, the AMQP message format, and the
//! queue `hlgate listen` consumes.

pub mod amqp;
pub mod listen;
mod poison;
mod refused;
pub mod relay;
mod window;

pub use amqp::Attached;
pub use relay::{Relay, RelayConfig};
pub use window::TokenHooks;
