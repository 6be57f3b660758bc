//! One integration test binary: the real app, real sled in temp dirs, the real RabbitMQ.

mod admin;
mod amqp;
mod cli;
mod durability;
mod helpers;
mod highlevel;
mod schema;
mod shapes;
mod tokens;
mod webhook;
