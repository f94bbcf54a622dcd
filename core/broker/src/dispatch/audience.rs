//! Audiences behind a cursor: the fan-out reads recipients page by page
//! from a position, so memory stays bounded whatever the audience size and
//! a restart resumes where the persisted cursor stands.

use std::sync::Arc;

use mhero_proto::CampaignId;

pub use crate::audience::{AudienceCursor, Member};

use super::campaign::{GeneratedAudience, Recipient};
use crate::error::{Error, Result};
use crate::store::Store;

/// An explicit list stored with the campaign (store column family
/// `audience`).
pub struct StoredAudience {
    pub store: Arc<Store>,
    pub campaign: CampaignId,
    pub count: u32,
    /// Checked again as it fans out: who opted out since the campaign was
    /// accepted is withheld (a scheduled campaign, accepted hours before).
    pub opt_outs: Option<Arc<dyn crate::audience::AudienceSource>>,
}

impl crate::store::Versioned for Recipient {
    const VERSION: u8 = 1;
}

pub fn encode(r: &Recipient) -> Vec<u8> {
    crate::store::encode(r)
}

impl AudienceCursor for StoredAudience {
    fn len(&self) -> u32 {
        self.count
    }

    fn page(&self, from: u32, max: u32) -> Result<Vec<(u32, Member)>> {
        let page: Vec<(u32, Recipient)> = self
            .store
            .audience(
                self.campaign,
                from,
                max.min(self.count.saturating_sub(from)),
            )?
            .into_iter()
            .map(|(i, bytes)| {
                crate::store::decode_value(&bytes)
                    .map(|r| (i, r))
                    .map_err(|message| Error::BadRecord {
                        cf: "audience",
                        key: format!("{}-{i}", self.campaign),
                        message,
                    })
            })
            .collect::<Result<_>>()?;
        let opted = match &self.opt_outs {
            Some(source) if source.any_opted_out() => {
                let recipients: Vec<Recipient> = page.iter().map(|(_, r)| r.clone()).collect();
                source.opted_out(&recipients)?
            }
            _ => vec![None; page.len()],
        };
        Ok(page
            .into_iter()
            .zip(opted)
            .map(|((i, r), why)| match why {
                Some(why) => (i, Member::Withheld(why)),
                None => (i, Member::Reach(r)),
            })
            .collect())
    }
}

impl AudienceCursor for GeneratedAudience {
    fn len(&self) -> u32 {
        self.count
    }

    fn page(&self, from: u32, max: u32) -> Result<Vec<(u32, Member)>> {
        let end = from.saturating_add(max).min(self.count);
        Ok((from..end)
            .map(|i| (i, Member::Reach(self.recipient(i))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_generated_recipients_page_in_bounded_memory() {
        let g = GeneratedAudience {
            count: 1_000_000,
            languages: vec!["en".into()],
            not_on_percent: Default::default(),
            prefix: "+2317".into(),
        };
        let mut cursor = 0;
        let mut seen = 0u64;
        while cursor < g.len() {
            let page = g.page(cursor, 5000).unwrap();
            assert!(page.len() <= 5000);
            assert_eq!(page.first().map(|(i, _)| *i), Some(cursor));
            seen += page.len() as u64;
            cursor += page.len() as u32;
        }
        assert_eq!(seen, 1_000_000);
        assert!(g.page(1_000_000, 10).unwrap().is_empty());
        assert_eq!(
            g.get(999_999).unwrap().unwrap().phone.as_deref(),
            Some("+231700999999")
        );
    }
}
