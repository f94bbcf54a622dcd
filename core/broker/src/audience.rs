//! Who a campaign reaches, as both the directory (which selects contacts)
//! and dispatch (which sends to them) see it, without either depending on
//! the other: a [`Recipient`], an [`AudienceCursor`] that reads an audience
//! page by page from a position, and an [`AudienceSource`] that freezes a
//! selector's result with a campaign at submit.

use std::collections::BTreeMap;

use mhero_proto::CampaignId;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One recipient.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// Phone number; normalised to E.164 with the default country.
    #[serde(default)]
    pub phone: Option<String>,
    /// Addresses per channel name, where they differ from the phone
    /// number (a WhatsApp id, a Telegram chat id).
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
    /// Channels this recipient is known not to be on.
    #[serde(default)]
    pub not_on: Vec<String>,
    #[serde(default)]
    pub language: Option<String>,
}

impl Recipient {
    /// The recipient's address on a channel, if any.
    pub fn address(&self, channel: &str) -> Option<&str> {
        if self.not_on.iter().any(|c| c == channel) {
            return None;
        }
        self.addresses
            .get(channel)
            .map(String::as_str)
            .or(self.phone.as_deref())
    }
}

/// One position of an audience.
#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    /// Send to this recipient.
    Reach(Recipient),
    /// Selected when the campaign was submitted, but not to be sent to any
    /// more (the contact opted out, or left the directory): why.
    Withheld(String),
}

/// A campaign's audience, read from a position.
pub trait AudienceCursor: Send + Sync {
    /// Recipients in the audience.
    fn len(&self) -> u32;

    /// Up to `max` members from position `from`, with their positions.
    fn page(&self, from: u32, max: u32) -> Result<Vec<(u32, Member)>>;

    /// One recipient (for falling back to another channel); `None` when
    /// the position is past the end or its member is withheld.
    fn get(&self, index: u32) -> Result<Option<Recipient>> {
        Ok(self
            .page(index, 1)?
            .into_iter()
            .next()
            .filter(|(i, _)| *i == index)
            .and_then(|(_, m)| match m {
                Member::Reach(r) => Some(r),
                Member::Withheld(_) => None,
            }))
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where selector audiences come from (the directory): evaluated once at
/// submit and kept with the campaign, so the audience does not shift while
/// it is sent and a restart resumes at the same position.
pub trait AudienceSource: Send + Sync {
    /// Whether `selector` is well formed (before anything is stored).
    fn check(&self, selector: &str) -> Result<()>;

    /// Evaluates `selector` and stores its result with `campaign`, durably
    /// before returning; the number of recipients. Blocks (store writes).
    fn freeze(&self, campaign: CampaignId, selector: &str) -> Result<u32>;

    /// The audience frozen for `campaign`. Blocks (store reads).
    fn frozen(&self, campaign: CampaignId) -> Result<Box<dyn AudienceCursor>>;

    /// Whether any contact has opted out (in memory; never blocks).
    fn any_opted_out(&self) -> bool;

    /// For recipients named outright rather than selected (a lab result,
    /// a survey question), why each may not be sent to: a contact with
    /// its phone number or channel address opted out. Blocks (store
    /// reads) when someone has opted out.
    fn opted_out(&self, recipients: &[Recipient]) -> Result<Vec<Option<String>>>;
}
