//! Stored values: compact binary (postcard), never JSON, each behind a
//! version byte.
//!
//! postcard is not self-describing: a field added to a struct changes how
//! every later byte reads. So every stored value is one byte, its type's
//! [`Versioned::VERSION`], then its postcard encoding; a release that
//! changes a stored type raises that type's version and keeps a reader for
//! each earlier one in [`Versioned::upgrade`], so it reads the data every
//! earlier release wrote. A value of a version newer than the build is
//! refused, never misread.

use mhero_proto::{ChannelId, DeliveryId, DeliveryStatus, Lane};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::engine::Cf;
use crate::error::{Error, Result};

/// A delivery waiting in a queue (ready, leased or delayed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Position in the campaign's audience; with the campaign, the delivery id.
    pub index: u32,
    /// The recipient's address on this channel (E.164 for SMS).
    pub recipient: String,
    /// Which entry of the campaign's channel preference list this is.
    pub route: u8,
    /// The recipient's language (BCP 47), for choosing the text.
    pub language: Option<String>,
    /// Attempts made so far on this channel.
    pub attempts: u16,
    /// When the delivery entered its current queue (ms since the epoch).
    pub enqueued_ms: u64,
    /// Why earlier attempts did not succeed, oldest first.
    pub history: Vec<AttemptNote>,
}

/// Most notes a delivery's history keeps: the first (why it first
/// failed) and the latest ones. Retries are bounded by the channel's
/// attempts, but reroutes and replays start them again.
pub const MAX_HISTORY: usize = 16;

impl Item {
    /// Adds a note to the history, dropping the oldest after the first
    /// beyond [`MAX_HISTORY`].
    pub fn note(&mut self, note: AttemptNote) {
        self.history.push(note);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(1);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptNote {
    pub at_ms: u64,
    pub channel: ChannelId,
    pub reason: String,
}

/// A queue's remembered positions: `low` is the first position that may
/// still hold a leased delivery, `head` the next to lease, `tail` the next
/// free slot. Leased: `[low, head)`; ready: `[head, tail)`, with gaps where
/// a rewind after a crash passed over settled positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMeta {
    pub low: u64,
    pub head: u64,
    pub tail: u64,
    /// Ready deliveries in `[head, tail)`: fewer than `tail - head` once a
    /// crash has rewound `head` over settled positions.
    pub ready: u64,
    /// Positions below this were leased before a crash and may have been
    /// sent; leasing them again counts as a redelivery.
    pub redeliver_below: u64,
}

/// What became of a delivery once it left the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub status: DeliveryStatus,
    pub channel: ChannelId,
    pub attempts: u16,
    /// When its status last changed (a receipt moves it on).
    pub updated_ms: u64,
    /// The gateway's id for the message, for matching receipts.
    pub external_id: Option<String>,
    pub reason: Option<String>,
    /// When it left the queue: handed to the gateway, or failed. Receipts
    /// leave it as it is, so with `updated_ms` it gives a FHIR
    /// `Communication` its `sent` and `received` times. (Layout 2; layout
    /// 1 records read it as `updated_ms`.)
    pub sent_ms: u64,
}

/// Layout 1 of [`StatusRecord`]: without `sent_ms`.
#[derive(Deserialize)]
struct StatusRecordV1 {
    status: DeliveryStatus,
    channel: ChannelId,
    attempts: u16,
    updated_ms: u64,
    external_id: Option<String>,
    reason: Option<String>,
}

impl Versioned for StatusRecord {
    const VERSION: u8 = 2;

    fn upgrade(version: u8, body: &[u8]) -> std::result::Result<Self, String> {
        match version {
            1 => {
                let v1: StatusRecordV1 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
                Ok(Self {
                    status: v1.status,
                    channel: v1.channel,
                    attempts: v1.attempts,
                    updated_ms: v1.updated_ms,
                    external_id: v1.external_id,
                    reason: v1.reason,
                    sent_ms: v1.updated_ms,
                })
            }
            v => Err(format!("no reader for layout version {v}")),
        }
    }
}

/// A message a health worker sent, as the channel's webhook brought it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRecord {
    pub channel: ChannelId,
    /// The sender's address on the channel (E.164 for SMS).
    pub from: String,
    pub text: String,
    /// The gateway's id, used to drop a webhook sent twice.
    pub external_id: Option<String>,
    /// When the gateway says it arrived (ms), if it says.
    pub received_ms: Option<u64>,
    /// When the broker stored it (ms).
    pub stored_ms: u64,
}

/// What was last handed over to an address on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRef {
    pub delivery: DeliveryId,
    pub at_ms: u64,
}

/// What the inbound pipeline made of one inbound message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundResult {
    /// The sender's directory number; `None`: an unknown sender, kept.
    pub contact: Option<u32>,
    /// The earlier message (seq) this one repeats within the window.
    pub duplicate_of: Option<u64>,
    /// What it answers: the delivery last handed over to this sender on
    /// this channel.
    pub reply_to: Option<SentRef>,
    /// The classifier chain's verdict: label (`unknown` when none was
    /// sure), confidence, extracted fields, and which plugin said it.
    pub label: String,
    pub confidence: f32,
    pub fields: Vec<(String, String)>,
    pub classifier: Option<String>,
    /// BCP 47, when a classifier detected it.
    pub language: Option<String>,
    /// Where it went: `inbox`, `duplicate`, or a keyword trigger's action
    /// (`opt_out`, `opt_in`, `help`, `report`…).
    pub route: String,
    /// The trigger word that routed it, if any.
    pub keyword: Option<String>,
    /// Why a step could not run (a classifier that failed), if any.
    pub problems: Vec<String>,
    pub processed_ms: u64,
}

/// Inbound messages a subscriber never took, after every attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undelivered {
    /// The messages (seqs) the refused call carried.
    pub seqs: Vec<u64>,
    pub attempts: u32,
    pub reason: String,
    pub at_ms: u64,
}

/// A delivery that will not be retried: why, and what was tried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: DeliveryId,
    pub channel: ChannelId,
    pub lane: Lane,
    pub item: Item,
    pub reason: String,
    pub dead_ms: u64,
}

/// Exact per-campaign counts, written in the same batch as the changes they
/// count. `enqueued` equals ready + leased + `delayed` + `dead` + settled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub enqueued: u64,
    pub delayed: u64,
    pub dead: u64,
    /// Deliveries whose queued record could not be read: moved to the
    /// quarantine, never sent.
    pub quarantined: u64,
    /// Settled deliveries by current status, indexed by status code.
    pub statuses: [u64; 8],
    pub retries: u64,
    pub rerouted: u64,
    pub redelivered: u64,
}

impl Counters {
    pub fn status(&self, status: DeliveryStatus) -> u64 {
        self.statuses[status.code() as usize]
    }

    pub fn settled(&self) -> u64 {
        self.statuses.iter().sum()
    }

    /// Deliveries still in a queue: ready, leased or delayed.
    pub fn queued(&self) -> u64 {
        self.enqueued
            .saturating_sub(self.settled() + self.dead + self.quarantined)
    }
}

/// Store-wide values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Globals {
    pub delayed: u64,
    pub dead: u64,
    /// Every delayed delivery is due at or after this time; the delayed scan
    /// starts here instead of crawling what it already consumed.
    pub delayed_floor: u64,
}

/// A type stored in the engine, with the version of its layout.
pub trait Versioned: Serialize + DeserializeOwned {
    /// Raised whenever the type's fields change.
    const VERSION: u8;

    /// Reads a value an earlier release wrote: `body` is the postcard
    /// encoding of layout `version` (< [`Self::VERSION`]).
    fn upgrade(version: u8, body: &[u8]) -> std::result::Result<Self, String> {
        let _ = body;
        Err(format!("no reader for layout version {version}"))
    }
}

macro_rules! first_version {
    ($($t:ty),* $(,)?) => { $( impl Versioned for $t { const VERSION: u8 = 1; } )* };
}

first_version!(
    Item,
    QueueMeta,
    InboundRecord,
    SentRef,
    InboundResult,
    Undelivered,
    DeadLetter,
    Counters,
    Globals,
    Quarantined,
    u32,
    u64,
);

pub fn encode<T: Versioned>(value: &T) -> Vec<u8> {
    // Room for a status record, a queued item or a counter set at once:
    // growing from one byte reallocated four or five times per record, on
    // every write of the send path.
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.push(T::VERSION);
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_extend(value, out).expect("postcard encodes plain structs")
}

/// Bytes reserved for an encoded value: the common records fit.
const ENCODE_CAPACITY: usize = 128;

/// Reads a versioned value; the error says what is wrong with it.
pub fn decode_value<T: Versioned>(value: &[u8]) -> std::result::Result<T, String> {
    let Some((&version, body)) = value.split_first() else {
        return Err("empty value".into());
    };
    match version.cmp(&T::VERSION) {
        std::cmp::Ordering::Equal => postcard::from_bytes(body).map_err(|e| e.to_string()),
        std::cmp::Ordering::Less if version > 0 => T::upgrade(version, body),
        std::cmp::Ordering::Less => Err("layout version 0 does not exist".into()),
        std::cmp::Ordering::Greater => Err(format!(
            "layout version {version} was written by a newer release (this build reads up to {})",
            T::VERSION
        )),
    }
}

pub fn decode<T: Versioned>(cf: Cf, key: &[u8], value: &[u8]) -> Result<T> {
    decode_value(value).map_err(|message| Error::BadRecord {
        cf: cf.name(),
        key: hex(key),
        message,
    })
}

/// A stored record that could not be read, moved aside as it was: which
/// column family and key it had, its bytes, why it was unreadable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub cf: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub reason: String,
    pub at_ms: u64,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a later release does to a stored type, for the tests.
#[cfg(test)]
pub(crate) mod later {
    use super::*;

    /// A later release's `Counters` with a field added at the end: what it
    /// must do to read what this release wrote. (postcard lays a nested
    /// struct out field by field, so `counters` reads as today's fields.)
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct CountersWithRegion {
        pub counters: Counters,
        pub region: Option<String>,
    }

    impl Versioned for CountersWithRegion {
        const VERSION: u8 = 2;

        fn upgrade(version: u8, body: &[u8]) -> std::result::Result<Self, String> {
            match version {
                1 => Ok(Self {
                    counters: postcard::from_bytes(body).map_err(|e| e.to_string())?,
                    region: None,
                }),
                v => Err(format!("no reader for layout version {v}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::later::CountersWithRegion;
    use super::*;
    use mhero_proto::CampaignId;

    #[test]
    fn values_round_trip_compactly() {
        let item = Item {
            index: 40017,
            recipient: "+231770123456".into(),
            route: 0,
            language: Some("en".into()),
            attempts: 1,
            enqueued_ms: 1_764_000_000_000,
            history: vec![AttemptNote {
                at_ms: 1,
                channel: ChannelId(2),
                reason: "timeout".into(),
            }],
        };
        let bytes = encode(&item);
        assert!(bytes.len() < 48, "{} bytes", bytes.len());
        assert_eq!(decode::<Item>(Cf::Ready, b"k", &bytes).unwrap(), item);
        let dead = DeadLetter {
            id: DeliveryId::new(CampaignId(3), 4),
            channel: ChannelId(1),
            lane: Lane::High,
            item,
            reason: "invalid number".into(),
            dead_ms: 9,
        };
        assert_eq!(
            decode::<DeadLetter>(Cf::Dead, b"k", &encode(&dead)).unwrap(),
            dead
        );
    }

    #[test]
    fn a_field_added_later_still_reads_what_this_release_wrote() {
        let today = Counters {
            enqueued: 10,
            dead: 1,
            statuses: [0, 2, 3, 0, 0, 0, 0, 0],
            ..Counters::default()
        };
        let bytes = encode(&today);
        // Without the version byte, postcard would read the new field from
        // whatever follows (nothing here): an error, or garbage.
        assert!(postcard::from_bytes::<CountersWithRegion>(&bytes[1..]).is_err());
        let later: CountersWithRegion = decode(Cf::Meta, b"k", &bytes).unwrap();
        assert_eq!(later.counters, today);
        assert_eq!(later.region, None);
        // And the later release's own values are not misread by this one.
        let newer = encode(&later);
        let err = decode::<Counters>(Cf::Meta, b"k", &newer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer release"), "{err}");
    }

    #[test]
    fn status_records_of_layout_1_read_with_their_sent_time() {
        #[derive(Serialize)]
        struct V1<'a> {
            status: DeliveryStatus,
            channel: ChannelId,
            attempts: u16,
            updated_ms: u64,
            external_id: Option<&'a str>,
            reason: Option<&'a str>,
        }
        let old = postcard::to_extend(
            &V1 {
                status: DeliveryStatus::Delivered,
                channel: ChannelId(3),
                attempts: 2,
                updated_ms: 1_764_000_000_500,
                external_id: Some("gw-1"),
                reason: None,
            },
            vec![1],
        )
        .unwrap();
        let read: StatusRecord = decode(Cf::Status, b"k", &old).unwrap();
        assert_eq!(read.status, DeliveryStatus::Delivered);
        assert_eq!(read.channel, ChannelId(3));
        assert_eq!(read.attempts, 2);
        assert_eq!(read.external_id.as_deref(), Some("gw-1"));
        assert_eq!(read.sent_ms, 1_764_000_000_500);
        let now = StatusRecord { sent_ms: 7, ..read };
        assert_eq!(
            decode::<StatusRecord>(Cf::Status, b"k", &encode(&now)).unwrap(),
            now
        );
    }

    #[test]
    fn garbage_is_a_clear_error_naming_the_key() {
        let err = decode::<Item>(Cf::Ready, &[0xab, 0x01], &[0xff; 3]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ready") && text.contains("ab01"), "{text}");
    }
}
