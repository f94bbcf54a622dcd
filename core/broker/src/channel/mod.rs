//! Channel runtime: how connector requests reach gateways, and how
//! gateways' webhooks come back.
//!
//! # Layout
//!
//! - [`transport`]: the async [`Transport`] trait, the hosts a connector
//!   may reach, and [`ChannelTransport`], which routes a request to the
//!   simulator or to real HTTP.
//! - [`http`]: the HTTP transport (rustls, timeouts, response cap) and
//!   `pool`, its keep-alive connections (HTTP/1.1, HTTP/2 where offered).
//! - [`sandbox`]: the sandbox gateway, a simulated SMS gateway inside the
//!   broker (nothing reaches a phone), its transport, and the task that
//!   pushes its receipts and replies to the webhook entry point.
//! - [`webhooks`]: [`Webhooks::handle`], the one entry point for webhooks:
//!   the connector parses, events go to sinks (receipts to dispatch,
//!   inbound messages to their durable record).
//!
//! A delivery's way out: dispatch builds the request with the connector
//! (wasm, on a plugin thread) → [`Transport::send`] → dispatch parses the
//! answer with the connector. The way back: gateway → [`Webhooks::handle`]
//! → connector `handle-webhook` → [`EventSink`].

pub mod http;
mod pool;
pub mod sandbox;
pub mod transport;
pub mod webhooks;

#[cfg(test)]
mod tests;

pub use http::{HttpConfig, HttpTransport};
pub use sandbox::{SandboxConfig, SandboxGateway, SandboxStats, SandboxTransport};
pub use transport::{AllowedHosts, ChannelTransport, Transport, TransportError};
pub use webhooks::{EventSink, WebhookMetrics, Webhooks};
