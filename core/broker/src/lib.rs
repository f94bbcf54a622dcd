//! The mHero broker: durable, rate-limited, retrying fan-out of messages to
//! health workers, and their replies back.
//!
//! # Layout
//!
//! - [`broker`]: the composition root, [`Broker::open`]: store, plugin
//!   host, channels, dispatcher, webhooks and metrics, wired once; the CLI,
//!   tests and benchmarks all start the broker through it.
//! - [`store`]: the durable queues (the `mhero-store` crate, which knows
//!   nothing of the broker). One embedded RocksDB (or an in-memory
//!   engine) behind a small [`store::Engine`] trait; the queue logic
//!   (enqueue, lease, settle, retry, dead letters, recovery) is written once
//!   on top of it. A group-commit writer thread turns many callers' batches
//!   into one synced `WriteBatch`.
//! - [`plugin`]: the WebAssembly plugin host (wasmtime): connectors, FHIR
//!   mappers and classifiers as sandboxed components, with deadlines,
//!   memory caps, warm per-thread instance pools and circuit breakers.
//! - [`channel`]: the channel runtime: async transports (real HTTP, and
//!   the sandbox gateway, a simulator inside the broker) and the webhook
//!   entry point that routes receipts and inbound messages to their sinks.
//! - [`dispatch`]: campaigns, lazy fan-out, per-channel schedulers (lanes,
//!   rate limits, in-flight windows, retries, fallback), statuses.
//! - [`api`]: the HTTP API (axum): REST under `/v1`, channel webhooks,
//!   `/metrics`, health checks, tokens with roles, the OpenAPI document.
//! - [`config`]: the TOML configuration, validated, unknown keys refused.
//! - [`metrics`]: the Prometheus registry.
//! - [`error`]: the crate's error type.
//!
//! Data moves one way: a campaign is stored once, its deliveries are
//! enqueued into a channel's lane, leased by the channel's sender, and
//! settled: wired to a gateway, retried later, rerouted to another channel,
//! or kept as a dead letter.

pub mod api;
pub mod audience;
pub mod broker;
pub mod channel;
pub mod config;
pub mod directory;
pub mod dispatch;
pub mod error;
pub mod inbound;
pub mod metrics;
pub mod phone;
pub mod plugin;
pub mod signature;
mod stop;
#[cfg(test)]
mod testkit;
pub mod workflows;
/// The durable queues: the `mhero-store` crate.
pub use mhero_store as store;

pub use broker::Broker;
pub use config::Config;
pub use error::{Error, Result};
