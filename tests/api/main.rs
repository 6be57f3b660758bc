//! One integration test binary: the real app, real sled in temp dirs, the real RabbitMQ.

mod admin;
mod amqp;
mod cli;
mod damage;
mod durability;
mod helpers;
mod highlevel;
mod schema;
mod tokens;
mod webhook;
