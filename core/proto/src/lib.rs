//! mHero's data model: the plain types that the broker, the client, the CLI
//! and the benches share. No I/O happens here.
//!
//! # Layout
//!
//! - [`ids`]: campaign, delivery and channel identifiers, with their stable
//!   text forms (a delivery id doubles as the idempotency key sent to
//!   gateways).
//! - [`lane`]: the four priority lanes, `emergency > high > normal > bulk`.
//! - [`status`]: the delivery status ladder and the rule that a status never
//!   goes backwards.
//! - [`wire`]: the QUIC API's frames (requests, answers, events).
//! - [`sms`]: GSM-7 or UCS-2, concatenated parts, segment counts.
//!
//! Data moves one way: an operator's campaign names a [`Lane`]; the broker
//! fans it out into deliveries, each identified by a [`DeliveryId`], whose
//! [`DeliveryStatus`] climbs the ladder as receipts arrive.

pub mod ids;
pub mod lane;
/// The SDK's own file (`sdk/src/sms.rs`), so the broker prices a text with
/// the code plugin authors split it with, and a plugin folder made by
/// `mhero plugin new` carries it without this crate.
#[path = "../../../sdk/src/sms.rs"]
pub mod sms;
pub mod status;
pub mod wire;

pub use ids::{CampaignId, ChannelId, DeliveryId, ParseIdError};
pub use lane::{Lane, ParseLaneError};
pub use status::{DeliveryStatus, ParseStatusError};
