//! Channel runtime: runs connector plugins against gateways.
//!
//! # Layout
//!
//! - [`sandbox`]: the sandbox gateway, a simulated SMS gateway inside the
//!   broker that answers the `sandbox:` URLs connectors build, with no
//!   network stack (a simulator: nothing reaches a phone).
//! - [`executor`]: performs a connector's request: `sandbox:` in-process;
//!   other schemes are refused until the HTTP executor arrives.

pub mod executor;
pub mod sandbox;

pub use executor::{ExecuteError, Executor};
pub use sandbox::{SandboxConfig, SandboxGateway, SandboxStats};
