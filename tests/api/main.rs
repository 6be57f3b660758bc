//! One integration test binary: the real app, real sled in temp dirs, the real RabbitMQ.

mod admin;
mod amqp;
mod cli;
mod damage;
mod durability;
mod files;
mod forms;
mod helpers;
mod highlevel;
mod hlapi;
mod kill_loop;
mod nacks;
mod poison;
mod proxy;
mod proxy_guards;
mod refusals;
mod schema;
mod shapes;
mod stall;
mod stalled;
mod tenant_pages;
mod token_events;
mod token_key;
mod token_schedule;
mod tokens;
mod webhook;
