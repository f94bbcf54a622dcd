//! Identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A campaign: one message body sent to one audience. Allocated by the
/// broker, increasing, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CampaignId(pub u64);

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl FromStr for CampaignId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('c').unwrap_or(s);
        digits.parse().map(CampaignId).map_err(|_| ParseIdError {
            kind: "campaign",
            input: s.to_owned(),
        })
    }
}

/// One recipient of one campaign: the campaign and the recipient's position
/// in the campaign's audience. Stable across retries, channel fallbacks and
/// restarts, so it serves as the idempotency key sent to gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeliveryId {
    pub campaign: CampaignId,
    pub index: u32,
}

impl DeliveryId {
    pub const fn new(campaign: CampaignId, index: u32) -> Self {
        Self { campaign, index }
    }
}

/// `c<campaign>-<index>`, e.g. `c12-40017`.
impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.campaign, self.index)
    }
}

impl FromStr for DeliveryId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError {
            kind: "delivery",
            input: s.to_owned(),
        };
        let (campaign, index) = s.split_once('-').ok_or_else(err)?;
        Ok(DeliveryId {
            campaign: campaign.parse().map_err(|_| err())?,
            index: index.parse().map_err(|_| err())?,
        })
    }
}

/// A channel as the store knows it: a small number the broker assigns to a
/// configured channel name the first time it sees it, and keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(pub u32);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ch{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {input:?}")]
pub struct ParseIdError {
    pub kind: &'static str,
    pub input: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delivery_id_text_round_trips(c in any::<u64>(), i in any::<u32>()) {
            let id = DeliveryId::new(CampaignId(c), i);
            prop_assert_eq!(id.to_string().parse::<DeliveryId>(), Ok(id));
        }
    }

    #[test]
    fn bad_ids_are_refused_with_the_input() {
        let err = "c12".parse::<DeliveryId>().unwrap_err();
        assert_eq!(err.to_string(), "invalid delivery id \"c12\"");
        assert!("c-1-2".parse::<DeliveryId>().is_err());
        assert!("cx".parse::<CampaignId>().is_err());
        assert_eq!("c7".parse::<CampaignId>(), Ok(CampaignId(7)));
    }
}
