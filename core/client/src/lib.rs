//! Client library for integrators (surveillance, lab and HR systems) that
//! talk to an mHero broker.
//!
//! # Layout
//!
//! - this file: the crate root. The QUIC client (batched submission,
//!   delivery-status and inbound-message subscriptions) arrives with the
//!   QUIC interface; until then integrators use the HTTP API.
//!
//! The client shares its data model with the broker through
//! [`mhero_proto`], so ids, lanes and statuses mean the same on both sides.

pub use mhero_proto::{CampaignId, DeliveryId, DeliveryStatus, Lane};
