//! Key codecs. Every key is big-endian and fixed-width where it matters, so
//! byte order is the order the queues need: lanes by priority, queue
//! positions and due times ascending.

use mhero_proto::{CampaignId, ChannelId, DeliveryId, Lane};

/// The meta key holding the schema marker.
pub const SCHEMA: &[u8] = b"schema";
const SCHEMA_MAGIC: &[u8] = b"mhero-store";
/// The store's layout: its column families and key formats. Version 2:
/// every value carries its own layout version (see `records`), so value
/// types change without changing this; it changes only with the keys.
pub const SCHEMA_VERSION: u32 = 2;

pub fn schema_value() -> Vec<u8> {
    let mut v = SCHEMA_MAGIC.to_vec();
    v.extend_from_slice(&SCHEMA_VERSION.to_be_bytes());
    v
}

/// Checks a schema marker; the error says what was found instead.
pub fn check_schema(value: &[u8]) -> Result<(), String> {
    let Some(version) = value.strip_prefix(SCHEMA_MAGIC) else {
        return Err("its schema marker is not mHero's".into());
    };
    let version = <[u8; 4]>::try_from(version)
        .map(u32::from_be_bytes)
        .map_err(|_| "its schema marker is malformed".to_string())?;
    if version == 1 {
        return Err(
            "it has store schema version 1, from a development build before stored values carried versions; this build cannot read it (move the folder aside and start a new store)"
                .into(),
        );
    }
    if version != SCHEMA_VERSION {
        return Err(format!(
            "it has store schema version {version}; this build reads version {SCHEMA_VERSION}"
        ));
    }
    Ok(())
}

// Meta key prefixes.
const META_CHANNEL: u8 = b'C';
const META_QUEUE: u8 = b'Q';
const META_COUNTERS: u8 = b'K';
const META_SECRET: u8 = b'S';
const META_QUARANTINE: u8 = b'X';
const META_TOKEN: u8 = b'T';
const META_CAP_ALERT: u8 = b'A';
const META_CHANNEL_HELD: u8 = b'H';
const META_SUBMISSION: u8 = b'I';
const META_SUBMISSION_OF: u8 = b'J';
/// Next campaign id.
pub const NEXT_CAMPAIGN: &[u8] = b"Ncampaign";
/// Store-wide counts (delayed, dead) and the delayed-scan floor.
pub const GLOBALS: &[u8] = b"Gglobals";

/// A record moved aside because it could not be read: `seq` in the order
/// they were found.
pub fn quarantine(seq: u64) -> Vec<u8> {
    let mut k = vec![META_QUARANTINE];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn quarantine_range() -> (Vec<u8>, Vec<u8>) {
    (vec![META_QUARANTINE], vec![META_QUARANTINE + 1])
}

pub fn quarantine_from(key: &[u8]) -> Option<u64> {
    match key {
        [META_QUARANTINE, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// A secret the broker generated for itself (`name`: what it keys).
pub fn secret(name: &str) -> Vec<u8> {
    let mut k = vec![META_SECRET];
    k.extend_from_slice(name.as_bytes());
    k
}

/// An API token, by the SHA-256 of its secret (the secret is never kept).
pub fn token(hash: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(33);
    k.push(META_TOKEN);
    k.extend_from_slice(hash);
    k
}

pub fn tokens_range() -> (Vec<u8>, Vec<u8>) {
    (vec![META_TOKEN], vec![META_TOKEN + 1])
}

pub fn token_from(key: &[u8]) -> Option<[u8; 32]> {
    key.strip_prefix(&[META_TOKEN])?.try_into().ok()
}

/// The campaign a CAP alert became: `sender \0 identifier`.
pub fn cap_alert(sender: &str, identifier: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + sender.len() + identifier.len());
    k.push(META_CAP_ALERT);
    k.extend_from_slice(sender.as_bytes());
    k.push(0);
    k.extend_from_slice(identifier.as_bytes());
    k
}

/// What a submission with the idempotency key `key` was answered.
pub fn submission(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(META_SUBMISSION);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The idempotency key `campaign` was submitted with.
pub fn submission_of(campaign: CampaignId) -> Vec<u8> {
    let mut k = vec![META_SUBMISSION_OF];
    k.extend_from_slice(&campaign.0.to_be_bytes());
    k
}

/// Present while an operator holds (pauses) the channel `name`.
pub fn channel_held(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META_CHANNEL_HELD);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn channel_name(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META_CHANNEL);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn channel_names_range() -> (Vec<u8>, Vec<u8>) {
    (vec![META_CHANNEL], vec![META_CHANNEL + 1])
}

pub fn channel_name_from(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(&[META_CHANNEL])?).ok()
}

/// One queue: the deliveries of one campaign on one channel and lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub channel: ChannelId,
    pub lane: Lane,
    pub campaign: CampaignId,
}

const QUEUE_LEN: usize = 4 + 1 + 8;

fn put_queue(k: &mut Vec<u8>, q: QueueKey) {
    k.extend_from_slice(&q.channel.0.to_be_bytes());
    k.push(q.lane.code());
    k.extend_from_slice(&q.campaign.0.to_be_bytes());
}

fn read_queue(b: &[u8]) -> Option<QueueKey> {
    Some(QueueKey {
        channel: ChannelId(u32::from_be_bytes(b.get(0..4)?.try_into().ok()?)),
        lane: Lane::from_code(*b.get(4)?)?,
        campaign: CampaignId(u64::from_be_bytes(b.get(5..13)?.try_into().ok()?)),
    })
}

pub fn queue_meta(q: QueueKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + QUEUE_LEN);
    k.push(META_QUEUE);
    put_queue(&mut k, q);
    k
}

pub fn queue_meta_range() -> (Vec<u8>, Vec<u8>) {
    (vec![META_QUEUE], vec![META_QUEUE + 1])
}

pub fn queue_meta_from(key: &[u8]) -> Option<QueueKey> {
    match key {
        [META_QUEUE, rest @ ..] if rest.len() == QUEUE_LEN => read_queue(rest),
        _ => None,
    }
}

pub fn counters(campaign: CampaignId) -> Vec<u8> {
    let mut k = vec![META_COUNTERS];
    k.extend_from_slice(&campaign.0.to_be_bytes());
    k
}

pub fn counters_range() -> (Vec<u8>, Vec<u8>) {
    (vec![META_COUNTERS], vec![META_COUNTERS + 1])
}

pub fn counters_from(key: &[u8]) -> Option<CampaignId> {
    match key {
        [META_COUNTERS, rest @ ..] => Some(CampaignId(u64::from_be_bytes(rest.try_into().ok()?))),
        _ => None,
    }
}

pub fn campaign(id: CampaignId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

/// `channel | lane | campaign | qseq`.
pub fn ready(q: QueueKey, qseq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(QUEUE_LEN + 8);
    put_queue(&mut k, q);
    k.extend_from_slice(&qseq.to_be_bytes());
    k
}

pub fn ready_from(key: &[u8]) -> Option<(QueueKey, u64)> {
    if key.len() != QUEUE_LEN + 8 {
        return None;
    }
    Some((
        read_queue(key)?,
        u64::from_be_bytes(key[QUEUE_LEN..].try_into().ok()?),
    ))
}

/// `due_ms | channel | lane | campaign | index`.
pub fn delayed(due_ms: u64, q: QueueKey, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + QUEUE_LEN + 4);
    k.extend_from_slice(&due_ms.to_be_bytes());
    put_queue(&mut k, q);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Past every delayed key (due times are below `u64::MAX`).
pub fn delayed_end() -> Vec<u8> {
    u64::MAX.to_be_bytes().to_vec()
}

/// Every campaign record key (ids are below `u64::MAX`).
pub fn campaigns_range() -> (Vec<u8>, Vec<u8>) {
    (Vec::new(), u64::MAX.to_be_bytes().to_vec())
}

/// Past every delivery key (`campaign | index`, campaign ids below
/// `u64::MAX`): status records, dead letters, audiences.
pub fn deliveries_end() -> Vec<u8> {
    u64::MAX.to_be_bytes().to_vec()
}

/// The first delayed key due at `due_ms` or later.
pub fn delayed_floor(due_ms: u64) -> Vec<u8> {
    due_ms.to_be_bytes().to_vec()
}

pub fn delayed_from(key: &[u8]) -> Option<(u64, QueueKey, u32)> {
    if key.len() != 8 + QUEUE_LEN + 4 {
        return None;
    }
    Some((
        u64::from_be_bytes(key[..8].try_into().ok()?),
        read_queue(&key[8..])?,
        u32::from_be_bytes(key[8 + QUEUE_LEN..].try_into().ok()?),
    ))
}

/// `campaign | index`: dead letters and status records.
pub fn delivery(id: DeliveryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&id.campaign.0.to_be_bytes());
    k.extend_from_slice(&id.index.to_be_bytes());
    k
}

pub fn delivery_from(key: &[u8]) -> Option<DeliveryId> {
    if key.len() != 12 {
        return None;
    }
    Some(DeliveryId::new(
        CampaignId(u64::from_be_bytes(key[..8].try_into().ok()?)),
        u32::from_be_bytes(key[8..].try_into().ok()?),
    ))
}

/// All delivery keys of one campaign.
pub fn campaign_deliveries(campaign: CampaignId) -> (Vec<u8>, Vec<u8>) {
    (
        campaign.0.to_be_bytes().to_vec(),
        end_of_prefix(&campaign.0.to_be_bytes()),
    )
}

/// `channel | external id`: the receipt index.
pub fn external(channel: ChannelId, external_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + external_id.len());
    k.extend_from_slice(&channel.0.to_be_bytes());
    k.extend_from_slice(external_id.as_bytes());
    k
}

/// Every key of the receipt index (channel ids stop below `u32::MAX`).
pub fn external_range() -> (Vec<u8>, Vec<u8>) {
    (Vec::new(), u32::MAX.to_be_bytes().to_vec())
}

/// Next inbound message sequence number.
pub const NEXT_INBOUND: &[u8] = b"Ninbound";

const INBOUND_MESSAGE: u8 = b'm';
const INBOUND_INDEX: u8 = b'x';

/// An inbound message, in arrival order.
pub fn inbound(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(INBOUND_MESSAGE);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn inbound_from(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.strip_prefix(&[INBOUND_MESSAGE])?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub fn inbound_range() -> (Vec<u8>, Vec<u8>) {
    (vec![INBOUND_MESSAGE], vec![INBOUND_MESSAGE + 1])
}

/// The de-duplication index of inbound messages: `channel | external id`.
pub fn inbound_index(channel: ChannelId, external_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + external_id.len());
    k.push(INBOUND_INDEX);
    k.extend_from_slice(&channel.0.to_be_bytes());
    k.extend_from_slice(external_id.as_bytes());
    k
}

const INBOUND_RESULT: u8 = b'r';
const INBOUND_RECENT: u8 = b'h';
const INBOUND_RECENT_BY_TIME: u8 = b't';
const INBOUND_SUBSCRIBER: u8 = b's';
const INBOUND_UNDELIVERED: u8 = b'u';

/// How far the inbound pipeline has processed.
pub const INBOUND_PROCESSED: &[u8] = b"Pprocessed";

/// The last message of the page the inbound pipeline is answering.
pub const INBOUND_PAGE: &[u8] = b"Ppage";

/// What the inbound pipeline made of message `seq`.
pub fn inbound_result(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(INBOUND_RESULT);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The recent-text index: `sender and text digest` → (seq, ms) of the
/// latest message with that text from that sender.
pub fn inbound_recent(digest: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(INBOUND_RECENT);
    k.extend_from_slice(&digest.to_be_bytes());
    k
}

/// The recent-text index by time, so old entries are pruned in order:
/// `ms | digest`.
pub fn inbound_recent_by_time(ms: u64, digest: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(INBOUND_RECENT_BY_TIME);
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(&digest.to_be_bytes());
    k
}

pub fn inbound_recent_by_time_from(key: &[u8]) -> Option<(u64, u64)> {
    let rest = key.strip_prefix(&[INBOUND_RECENT_BY_TIME])?;
    if rest.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(rest[..8].try_into().ok()?),
        u64::from_be_bytes(rest[8..].try_into().ok()?),
    ))
}

/// Where an inbound subscriber (an integrator's webhook) has got to.
pub fn inbound_subscriber(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(INBOUND_SUBSCRIBER);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Messages a subscriber never took: `name \0 seq`.
pub fn inbound_undelivered(name: &str, seq: u64) -> Vec<u8> {
    let mut k = inbound_undelivered_prefix(name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn inbound_undelivered_prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + name.len());
    k.push(INBOUND_UNDELIVERED);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// `channel | address`: what was last handed over to that address.
pub fn last_sent(channel: ChannelId, address: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + address.len());
    k.extend_from_slice(&channel.0.to_be_bytes());
    k.extend_from_slice(address.as_bytes());
    k
}

/// The smallest key greater than every key starting with `prefix`.
pub fn end_of_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only for an all-0xff prefix: no finite key bounds it; callers never
    // build one, and an empty bound would mean "everything".
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lane() -> impl Strategy<Value = Lane> {
        (0u8..4).prop_map(|c| Lane::from_code(c).expect("valid code"))
    }

    fn queue() -> impl Strategy<Value = QueueKey> {
        (any::<u32>(), lane(), any::<u64>()).prop_map(|(c, lane, k)| QueueKey {
            channel: ChannelId(c),
            lane,
            campaign: CampaignId(k),
        })
    }

    proptest! {
        #[test]
        fn ready_keys_round_trip_and_sort_like_tuples(a in queue(), s in any::<u64>(), b in queue(), t in any::<u64>()) {
            prop_assert_eq!(ready_from(&ready(a, s)), Some((a, s)));
            prop_assert_eq!(ready(a, s).cmp(&ready(b, t)), (a, s).cmp(&(b, t)));
        }

        #[test]
        fn delayed_keys_sort_by_due_time_first(d in any::<u64>(), a in queue(), i in any::<u32>(), e in any::<u64>(), b in queue(), j in any::<u32>()) {
            prop_assert_eq!(delayed_from(&delayed(d, a, i)), Some((d, a, i)));
            prop_assert_eq!(delayed(d, a, i).cmp(&delayed(e, b, j)), (d, a, i).cmp(&(e, b, j)));
            prop_assert!(delayed_floor(d) <= delayed(d, a, i));
            prop_assert!(delayed_floor(d.saturating_add(1)) > delayed(d, a, i) || d == u64::MAX);
        }

        #[test]
        fn delivery_keys_round_trip(c in any::<u64>(), i in any::<u32>()) {
            let id = DeliveryId::new(CampaignId(c), i);
            prop_assert_eq!(delivery_from(&delivery(id)), Some(id));
            let (lo, hi) = campaign_deliveries(id.campaign);
            prop_assert!(lo <= delivery(id) && delivery(id) < hi);
        }

        #[test]
        fn meta_keys_round_trip(q in queue(), c in any::<u64>(), name in "[a-z0-9_-]{1,20}") {
            prop_assert_eq!(queue_meta_from(&queue_meta(q)), Some(q));
            prop_assert_eq!(counters_from(&counters(CampaignId(c))), Some(CampaignId(c)));
            let key = channel_name(&name);
            prop_assert_eq!(channel_name_from(&key), Some(name.as_str()));
        }
    }

    #[test]
    fn lanes_sort_by_priority_within_a_channel() {
        let q = |lane| QueueKey {
            channel: ChannelId(1),
            lane,
            campaign: CampaignId(9),
        };
        assert!(ready(q(Lane::Emergency), u64::MAX) < ready(q(Lane::Bulk), 0));
    }

    #[test]
    fn schema_marker_checks() {
        assert_eq!(check_schema(&schema_value()), Ok(()));
        assert!(check_schema(b"other").unwrap_err().contains("not mHero"));
        let mut v = SCHEMA_MAGIC.to_vec();
        v.extend_from_slice(&99u32.to_be_bytes());
        assert!(check_schema(&v).unwrap_err().contains("version 99"));
    }

    #[test]
    fn end_of_prefix_bounds_the_prefix() {
        assert_eq!(end_of_prefix(&[1, 2]), vec![1, 3]);
        assert_eq!(end_of_prefix(&[1, 0xff]), vec![2]);
    }
}
