//! hlgate: a webhook ingestion and event-routing gateway for HighLevel Marketplace apps.
//!
//! Reading order: `config` (settings), `secret`, `verify` (signatures), `event` (type, tenant,
//! keys), `schema`, `entry` (the outbox entry), `store` (sled: dedup, outbox, archive), `ingest`
//! (the use case), `publish` (relay to RabbitMQ), `highlevel` (HighLevel's HTTP API), `oauth` (the
//! token module), `health` (delivery health and alerts), `http` (listeners), `metrics`,
//! `telemetry`, `traces` (OpenTelemetry spans, `traceparent`), `startup` (wiring), `cli`; the
//! small helpers `backoff`, `files` and `loglimit`.
//! ARCHITECTURE.md draws the arrows between them.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod entry;
pub mod event;
pub mod files;
pub mod health;
pub mod highlevel;
pub mod http;
pub mod ingest;
pub mod loglimit;
pub mod metrics;
pub mod oauth;
pub mod publish;
pub mod schema;
pub mod secret;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod traces;
pub mod verify;
