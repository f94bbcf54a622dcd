//! Campaigns: what an operator sends, to whom, how urgently, over which
//! channels, until when; and the record the broker keeps of each.

use std::collections::BTreeMap;

use mhero_proto::Lane;

pub use crate::audience::Recipient;
use serde::{Deserialize, Serialize};

/// A campaign as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    pub name: String,
    #[serde(default = "normal")]
    pub lane: Lane,
    pub body: Body,
    /// Channel names, in preference order: a recipient unreachable on one
    /// (or without an address there) falls back to the next.
    pub channels: Vec<String>,
    pub audience: AudienceSpec,
    /// Nothing is sent after this time (ms since the Unix epoch).
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Nothing is sent before this time.
    #[serde(default)]
    pub start_at_ms: Option<u64>,
}

impl CampaignSpec {
    /// One text to a generated directory of `count` workers (numbers
    /// `+2317…`), sent now, never expiring: what benchmarks and tests send.
    pub fn generated(name: &str, lane: Lane, text: &str, count: u32, channels: &[&str]) -> Self {
        Self {
            name: name.into(),
            lane,
            body: Body::text(text),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            audience: AudienceSpec::Generated(GeneratedAudience::plain(count)),
            expires_at_ms: None,
            start_at_ms: None,
        }
    }
}

fn normal() -> Lane {
    Lane::Normal
}

/// The text, with per-language variants, and the files sent with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// Used when no variant matches the recipient's language. With
    /// attachments it is their caption, and may be empty.
    pub default: String,
    /// BCP 47 language → text (`fr`, `pt-BR`, `sw`).
    #[serde(default)]
    pub variants: BTreeMap<String, String>,
    /// Files sent with the text (an image, a voice note, a video, a
    /// document), fetched by the gateway from their URLs. Only channels
    /// whose connector carries media send them; on the others the
    /// delivery fails ("cannot carry media") and falls back to the
    /// campaign's next channel.
    /// (No `skip_serializing_if`: the record's postcard layout has every
    /// field.)
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// A file sent with a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Where the gateway fetches it: an `https` URL it can reach.
    pub url: String,
    /// MIME type: `image/jpeg`, `audio/ogg`, `video/mp4`, `application/pdf`…
    pub content_type: String,
    /// The file name shown with a document.
    #[serde(default)]
    pub filename: Option<String>,
}

impl Body {
    pub fn text(default: &str) -> Self {
        Self {
            default: default.to_string(),
            variants: BTreeMap::new(),
            attachments: Vec::new(),
        }
    }

    /// The text for a recipient's language: an exact variant, else the
    /// variant of its primary language (`fr` for `fr-LR`), else the default.
    pub fn for_language(&self, language: Option<&str>) -> (&str, Option<&str>) {
        let Some(lang) = language else {
            return (&self.default, None);
        };
        // Language tags match regardless of case (BCP 47): `pt-BR` finds
        // `pt-br`, then its primary language `pt`.
        let find = |tag: &str| {
            self.variants
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(tag))
                .map(|(k, t)| (t.as_str(), Some(k.as_str())))
        };
        let primary = lang.split(['-', '_']).next().unwrap_or(lang);
        find(lang)
            .or_else(|| find(primary))
            .unwrap_or((&self.default, None))
    }
}

/// Who receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AudienceSpec {
    /// An explicit list, stored with the campaign.
    Recipients(Vec<Recipient>),
    /// A generated directory (demo, benchmarks): recipient `i` is derived
    /// from `i`, nothing is stored.
    Generated(GeneratedAudience),
    /// An explicit list already stored (what the campaign record keeps).
    Stored { count: u32 },
    /// Directory contacts a selector names (`role:nurse AND
    /// location:Location/bong`), evaluated at submit.
    Selector(String),
    /// A selector's result as it was frozen at submit (what the campaign
    /// record keeps).
    Frozen { selector: String, count: u32 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedAudience {
    pub count: u32,
    /// Languages, assigned round-robin.
    #[serde(default)]
    pub languages: Vec<String>,
    /// Share (percent) of recipients not on each named channel.
    #[serde(default)]
    pub not_on_percent: BTreeMap<String, f64>,
    /// Country calling code and leading digits of the numbers.
    #[serde(default = "liberia")]
    pub prefix: String,
}

fn liberia() -> String {
    "+2317".into()
}

impl GeneratedAudience {
    /// `count` workers, no language, on every channel.
    pub fn plain(count: u32) -> Self {
        Self {
            count,
            languages: Vec::new(),
            not_on_percent: BTreeMap::new(),
            prefix: liberia(),
        }
    }

    pub fn recipient(&self, i: u32) -> Recipient {
        let language = (!self.languages.is_empty())
            .then(|| self.languages[i as usize % self.languages.len()].clone());
        let not_on = self
            .not_on_percent
            .iter()
            .filter(|(channel, pct)| {
                // A fixed property of recipient `i` (and the channel).
                let h =
                    (u64::from(i) ^ channel.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
                (h % 10_000) as f64 / 100.0 < **pct
            })
            .map(|(c, _)| c.clone())
            .collect();
        Recipient {
            phone: Some(format!("{}{i:08}", self.prefix)),
            addresses: BTreeMap::new(),
            not_on,
            language,
        }
    }
}

/// Where a campaign stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    /// Being stored; not yet accepted.
    Preparing,
    /// Its submission never completed (the broker stopped meanwhile).
    Abandoned,
    /// Waiting for `start_at_ms`.
    Scheduled,
    /// Fanning out and sending.
    Sending,
    /// Cancelled by an operator: nothing more is sent.
    Cancelled,
    /// Past `expires_at_ms`: nothing more is sent.
    Expired,
}

impl CampaignState {
    pub fn stops_sending(self) -> bool {
        matches!(self, CampaignState::Cancelled | CampaignState::Expired)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            CampaignState::Preparing => "preparing",
            CampaignState::Abandoned => "abandoned",
            CampaignState::Scheduled => "scheduled",
            CampaignState::Sending => "sending",
            CampaignState::Cancelled => "cancelled",
            CampaignState::Expired => "expired",
        }
    }
}

/// What the broker keeps of a campaign (the store's campaign body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignRecord {
    pub spec: CampaignSpec,
    pub state: CampaignState,
    /// Recipients in the audience.
    pub total: u32,
    /// The fan-out cursor: recipients before it are enqueued (or settled).
    pub cursor: u32,
    pub created_ms: u64,
    /// When it stopped sending (cancelled or expired).
    pub stopped_ms: Option<u64>,
    /// When every recipient had ended (sent, failed, dead, never sent):
    /// retention counts from here.
    pub finished_ms: Option<u64>,
    /// An answer to a worker's own message (a keyword's reply): it reaches
    /// a worker who opted out, as the confirmation of the opt-out must.
    /// Every other campaign withholds, as it fans out, whoever opted out
    /// since it was accepted.
    pub answers: bool,
}

impl crate::store::Versioned for CampaignRecord {
    /// 2: the body gained `attachments`; 3: the record gained `answers`.
    const VERSION: u8 = 3;

    fn upgrade(version: u8, body: &[u8]) -> Result<Self, String> {
        let read = match version {
            1 => postcard::from_bytes::<Before3<v1::CampaignSpec>>(body).map(Into::into),
            2 => postcard::from_bytes::<Before3<CampaignSpec>>(body).map(Into::into),
            v => return Err(format!("no reader for layout version {v}")),
        };
        read.map_err(|e| e.to_string())
    }
}

/// The record in layouts 1 and 2, before `answers`, with the spec as each
/// wrote it (postcard is not self-describing: each layout needs its own
/// reader). A campaign kept before layout 3 reads as no answer: one still
/// fanning out is checked for opt-outs from then on (an answer goes to one
/// worker, and is fanned out as soon as it is accepted).
#[derive(Serialize, Deserialize)]
struct Before3<S> {
    spec: S,
    state: CampaignState,
    total: u32,
    cursor: u32,
    created_ms: u64,
    stopped_ms: Option<u64>,
    finished_ms: Option<u64>,
}

impl<S: Into<CampaignSpec>> From<Before3<S>> for CampaignRecord {
    fn from(r: Before3<S>) -> Self {
        Self {
            spec: r.spec.into(),
            state: r.state,
            total: r.total,
            cursor: r.cursor,
            created_ms: r.created_ms,
            stopped_ms: r.stopped_ms,
            finished_ms: r.finished_ms,
            answers: false,
        }
    }
}

/// `r` as layout `version` (1 or 2) wrote it, its spec written as `spec`.
#[cfg(test)]
fn encode_before_3<S: Serialize>(r: &CampaignRecord, spec: S, version: u8) -> Vec<u8> {
    let rec = Before3 {
        spec,
        state: r.state,
        total: r.total,
        cursor: r.cursor,
        created_ms: r.created_ms,
        stopped_ms: r.stopped_ms,
        finished_ms: r.finished_ms,
    };
    postcard::to_extend(&rec, vec![version]).expect("postcard encodes plain structs")
}

/// Layout 1's spec, as releases before attachments wrote it.
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    pub struct CampaignSpec {
        name: String,
        lane: Lane,
        body: Body,
        channels: Vec<String>,
        audience: AudienceSpec,
        expires_at_ms: Option<u64>,
        start_at_ms: Option<u64>,
    }

    #[derive(Deserialize)]
    struct Body {
        default: String,
        variants: BTreeMap<String, String>,
    }

    impl From<CampaignSpec> for super::CampaignSpec {
        fn from(s: CampaignSpec) -> Self {
            Self {
                name: s.name,
                lane: s.lane,
                body: super::Body {
                    default: s.body.default,
                    variants: s.body.variants,
                    attachments: Vec::new(),
                },
                channels: s.channels,
                audience: s.audience,
                expires_at_ms: s.expires_at_ms,
                start_at_ms: s.start_at_ms,
            }
        }
    }

    #[cfg(test)]
    pub fn encode(r: &super::CampaignRecord) -> Vec<u8> {
        #[derive(Serialize)]
        struct Spec<'a> {
            name: &'a str,
            lane: Lane,
            body: (&'a str, &'a BTreeMap<String, String>),
            channels: &'a [String],
            audience: &'a AudienceSpec,
            expires_at_ms: Option<u64>,
            start_at_ms: Option<u64>,
        }
        let s = &r.spec;
        let spec = Spec {
            name: &s.name,
            lane: s.lane,
            body: (&s.body.default, &s.body.variants),
            channels: &s.channels,
            audience: &s.audience,
            expires_at_ms: s.expires_at_ms,
            start_at_ms: s.start_at_ms,
        };
        super::encode_before_3(r, spec, 1)
    }
}

impl CampaignRecord {
    pub fn encode(&self) -> Vec<u8> {
        crate::store::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        crate::store::decode_value(bytes).map_err(|e| format!("unreadable campaign record: {e}"))
    }

    /// Recipients never fanned out because the campaign stopped.
    pub fn unsent(&self) -> u32 {
        if self.state.stops_sending() {
            self.total - self.cursor
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_layouts_read_with_no_attachments_and_as_no_answer() {
        let mut spec = CampaignSpec::generated("old", Lane::High, "Réunion lundi", 5, &["sms"]);
        spec.body
            .variants
            .insert("fr".into(), "Réunion lundi".into());
        let record = CampaignRecord {
            spec,
            state: CampaignState::Sending,
            total: 5,
            cursor: 3,
            created_ms: 7,
            stopped_ms: None,
            finished_ms: Some(9),
            answers: false,
        };
        let old = v1::encode(&record);
        assert_eq!(old[0], 1);
        assert_eq!(CampaignRecord::decode(&old).unwrap(), record);
        let mut with_file = record.clone();
        with_file.spec.body.attachments.push(Attachment {
            url: "https://moh.example/poster.jpg".into(),
            content_type: "image/jpeg".into(),
            filename: None,
        });
        let layout_2 = encode_before_3(&with_file, &with_file.spec, 2);
        assert_eq!(layout_2[0], 2);
        assert_eq!(CampaignRecord::decode(&layout_2).unwrap(), with_file);
        let mut answer = with_file.clone();
        answer.answers = true;
        let new = answer.encode();
        assert_eq!(new[0], 3);
        assert_eq!(CampaignRecord::decode(&new).unwrap(), answer);
    }

    #[test]
    fn language_variants_fall_back_to_the_primary_language_then_the_default() {
        let mut body = Body::text("Measles campaign Monday.");
        body.variants
            .insert("fr".into(), "Campagne rougeole lundi.".into());
        assert_eq!(body.for_language(Some("fr")).0, "Campagne rougeole lundi.");
        assert_eq!(
            body.for_language(Some("fr-LR")),
            ("Campagne rougeole lundi.", Some("fr"))
        );
        assert_eq!(body.for_language(Some("sw")).0, "Measles campaign Monday.");
        assert_eq!(body.for_language(None).0, "Measles campaign Monday.");
        // Case does not matter; the region falls back to the language.
        body.variants
            .insert("pt".into(), "Campanha de sarampo.".into());
        body.variants
            .insert("pt-BR".into(), "Campanha de sarampo (Brasil).".into());
        assert_eq!(
            body.for_language(Some("pt-br")).0,
            "Campanha de sarampo (Brasil)."
        );
        assert_eq!(
            body.for_language(Some("PT-AO")),
            ("Campanha de sarampo.", Some("pt"))
        );
        assert_eq!(body.for_language(Some("FR")).0, "Campagne rougeole lundi.");
    }

    #[test]
    fn addresses_per_channel() {
        let r = Recipient {
            phone: Some("+231770000001".into()),
            addresses: [("telegram".to_string(), "chat-9".to_string())].into(),
            not_on: vec!["whatsapp".into()],
            language: None,
        };
        assert_eq!(r.address("sms"), Some("+231770000001"));
        assert_eq!(r.address("telegram"), Some("chat-9"));
        assert_eq!(r.address("whatsapp"), None);
    }

    #[test]
    fn generated_audiences_are_deterministic_with_the_asked_shares() {
        let g = GeneratedAudience {
            count: 10_000,
            languages: vec!["en".into(), "fr".into()],
            not_on_percent: [("whatsapp".to_string(), 30.0)].into(),
            prefix: "+2317".into(),
        };
        assert_eq!(g.recipient(42), g.recipient(42));
        assert_eq!(g.recipient(3).language.as_deref(), Some("fr"));
        assert_eq!(g.recipient(7).phone.as_deref(), Some("+231700000007"));
        let off = (0..10_000)
            .filter(|i| !g.recipient(*i).not_on.is_empty())
            .count();
        assert!((2700..3300).contains(&off), "{off}");
    }

    #[test]
    fn specs_refuse_unknown_keys() {
        let err = serde_json::from_str::<CampaignSpec>(
            r#"{"name":"x","body":{"default":"hi"},"channels":["sms"],"audience":{"generated":{"count":1}},"priority":"high"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("priority"), "{err}");
    }
}
