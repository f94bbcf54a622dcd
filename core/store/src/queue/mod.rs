//! The delivery queues, written once against [`Engine`].
//!
//! A queue holds the deliveries of one campaign on one channel and lane,
//! at increasing positions (`qseq`). Positions `[head, tail)` are ready,
//! `[low, head)` leased or already settled. Leasing moves `head` (one small
//! meta write per queue, not one write per delivery); settling deletes the
//! delivery's key (a `delete_range` for each run of consecutive positions)
//! and writes where it went, in one batch. After a crash, whatever is still
//! present in `[low, head)` was leased and never settled: `head` goes back
//! to `low` and those deliveries are ready again, flagged as redeliveries.
//!
//! The in-memory state (positions, counts, the round-robin cursors) lives
//! behind one lock; batches are built and *submitted* under it, so they
//! commit in the order the state changed, and callers wait for the commit
//! outside it. The lock is held only for memory work: a lease reads its
//! queues outside it (under the channel's own lease lock, the only thing
//! that moves a queue's head), receipts read their records before taking
//! it, a promotion waits for earlier commits without it, and inbound
//! messages have a lock of their own. A reader sees only committed data: a
//! lease therefore takes the committed prefix of `[head, tail)` and never
//! skips over an enqueue that has not committed yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mhero_proto::{CampaignId, ChannelId, DeliveryId, DeliveryStatus, Lane};
use parking_lot::Mutex;

use super::engine::{Batch, Cf, Engine, Pending, Ticket};
use super::keys::{self, QueueKey};
use super::records::{
    self, AttemptNote, Counters, DeadLetter, Globals, InboundRecord, Item, Quarantined, QueueMeta,
    SentRef, StatusRecord, decode, encode,
};
use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;

mod campaigns;
mod dead;
mod delayed;
mod inbound;
mod lease;
mod quarantine;
mod recovery;
mod settle;
mod status;

pub use campaigns::Purged;
pub use lease::DEAL;
pub use settle::MIN_RANGE_DELETE;
pub use status::DeliveryPage;

/// Milliseconds since the Unix epoch, as the store stamps records.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A new delivery for [`Store::enqueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    pub index: u32,
    pub recipient: String,
    pub route: u8,
    pub language: Option<String>,
}

/// A leased delivery: the caller must [`Store::settle`] it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    pub queue: QueueKey,
    pub qseq: u64,
    pub item: Item,
    /// Leased before a crash and never settled: it may have been sent.
    pub redelivered: bool,
}

impl Leased {
    pub fn id(&self) -> DeliveryId {
        DeliveryId::new(self.queue.campaign, self.item.index)
    }
}

/// What became of a leased delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Left the queue with this status (wired, failed, expired, cancelled…).
    Done {
        status: DeliveryStatus,
        external_id: Option<String>,
        reason: Option<String>,
    },
    /// Try again on the same channel once `due_ms` has passed: an attempt
    /// failed (counted, kept in the history).
    Retry { due_ms: u64, reason: String },
    /// Not sent yet, and not for its own fault (recipient pacing, a paused
    /// channel): back once `due_ms` has passed, with no attempt counted
    /// and nothing added to its history.
    Defer { due_ms: u64 },
    /// No more attempts: keep it as a dead letter.
    Dead { reason: String },
    /// Move to another channel of the campaign (fallback).
    Reroute {
        channel: ChannelId,
        recipient: String,
        route: u8,
        reason: String,
    },
}

/// What [`Store::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Deliveries leased but never settled before the last stop, now ready.
    pub requeued: u64,
    pub queues: usize,
    pub campaigns: usize,
}

/// Ready and leased counts of one channel, by lane (highest first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelDepth {
    pub ready: [u64; 4],
    pub leased: [u64; 4],
}

#[derive(Default)]
struct QueueState {
    meta: QueueMeta,
    leased: BTreeSet<u64>,
}

impl QueueState {
    fn low(&self) -> u64 {
        self.leased.first().copied().unwrap_or(self.meta.head)
    }

    fn persisted(&self) -> QueueMeta {
        QueueMeta {
            low: self.low(),
            ..self.meta
        }
    }
}

#[derive(Default)]
struct LaneState {
    queues: BTreeMap<CampaignId, QueueState>,
    /// Campaigns with ready deliveries, in round-robin order.
    active: BTreeSet<CampaignId>,
    /// The campaign served last; the next lease starts after it.
    cursor: Option<CampaignId>,
    ready: u64,
    leased: u64,
}

#[derive(Default)]
struct ChannelState {
    lanes: [LaneState; 4],
}

/// The counters as committed: what readers see. A change reaches it only
/// once the batch that wrote it is durable.
#[derive(Default)]
struct Committed {
    counters: HashMap<CampaignId, Counters>,
    globals: Globals,
}

struct State {
    channels: HashMap<String, ChannelId>,
    queues: BTreeMap<ChannelId, ChannelState>,
    counters: HashMap<CampaignId, Counters>,
    globals: Globals,
    next_campaign: u64,
    /// No delayed delivery is due before this (a hint; `None`: none known).
    next_due: Option<u64>,
    /// New retries are due no earlier than this: a promotion in progress
    /// moved it past the range it is about to delete.
    retry_floor: u64,
    committed: Arc<Mutex<Committed>>,
    /// Records moved aside so far, and the next one's number.
    quarantined: u64,
    next_quarantine: u64,
}

impl State {
    /// Moves an unreadable record aside in `batch`: deleted where it was,
    /// kept whole under the quarantine, counted.
    fn quarantine(
        &mut self,
        batch: &mut Batch,
        cf: Cf,
        key: &[u8],
        value: &[u8],
        reason: String,
        now_ms: u64,
    ) {
        tracing::error!(cf = cf.name(), key = %records::hex(key), reason = %reason, "Unreadable record moved to the quarantine.");
        batch.delete(cf, key.to_vec());
        batch.put(
            Cf::Meta,
            keys::quarantine(self.next_quarantine),
            encode(&Quarantined {
                cf: cf.name().to_string(),
                key: key.to_vec(),
                value: value.to_vec(),
                reason,
                at_ms: now_ms,
            }),
        );
        self.next_quarantine += 1;
        self.quarantined += 1;
    }

    fn queue(&mut self, q: QueueKey) -> &mut QueueState {
        self.queues.entry(q.channel).or_default().lanes[q.lane.code() as usize]
            .queues
            .entry(q.campaign)
            .or_default()
    }

    fn lane(&mut self, channel: ChannelId, lane: Lane) -> &mut LaneState {
        &mut self.queues.entry(channel).or_default().lanes[lane.code() as usize]
    }

    /// Adds `n` ready deliveries at the tail of `q`, returning the first
    /// position.
    fn push_ready(&mut self, q: QueueKey, n: u64) -> u64 {
        let lane = self.lane(q.channel, q.lane);
        lane.ready += n;
        if n > 0 {
            lane.active.insert(q.campaign);
        }
        let qs = lane.queues.entry(q.campaign).or_default();
        let first = qs.meta.tail;
        qs.meta.tail += n;
        qs.meta.ready += n;
        first
    }

    fn counters(&mut self, campaign: CampaignId) -> &mut Counters {
        self.counters.entry(campaign).or_default()
    }

    /// Puts new deliveries at the tail of `queue` and counts them.
    fn add_new(
        &mut self,
        batch: &mut Batch,
        queue: QueueKey,
        deliveries: Vec<NewDelivery>,
        now: u64,
    ) {
        let n = deliveries.len() as u64;
        let first = self.push_ready(queue, n);
        for (i, d) in deliveries.into_iter().enumerate() {
            let item = Item {
                index: d.index,
                recipient: d.recipient,
                route: d.route,
                language: d.language,
                attempts: 0,
                enqueued_ms: now,
                history: Vec::new(),
            };
            batch.put(
                Cf::Ready,
                keys::ready(queue, first + i as u64),
                encode(&item),
            );
        }
        self.counters(queue.campaign).enqueued += n;
    }
}

/// Tracks which queues and campaigns a batch touched so their meta and
/// counters are written once, at the end.
#[derive(Default)]
struct Touched {
    queues: BTreeSet<QueueKey>,
    campaigns: BTreeSet<CampaignId>,
    globals: bool,
}

impl Touched {
    /// Writes the touched queue heads and counters, and makes the counters
    /// visible to readers once the batch commits.
    fn write(self, state: &mut State, batch: &mut Batch) {
        for q in self.queues {
            let meta = state.queue(q).persisted();
            batch.put(Cf::Meta, keys::queue_meta(q), encode(&meta));
        }
        let mut counters = Vec::with_capacity(self.campaigns.len());
        for c in self.campaigns {
            let k = state.counters(c).clone();
            batch.put(Cf::Meta, keys::counters(c), encode(&k));
            counters.push((c, k));
        }
        let globals = self.globals.then(|| state.globals.clone());
        if let Some(g) = &globals {
            batch.put(Cf::Meta, keys::GLOBALS.to_vec(), encode(g));
        }
        if counters.is_empty() && globals.is_none() {
            return;
        }
        // Batches commit in the order they were built, so each snapshot
        // replaces an older one.
        let committed = Arc::clone(&state.committed);
        batch.on_commit(move || {
            let mut view = committed.lock();
            view.counters.extend(counters);
            if let Some(g) = globals {
                view.globals = g;
            }
        });
    }
}

/// The durable delivery queues of every channel.
pub struct Store {
    engine: Arc<dyn Engine>,
    state: Mutex<State>,
    /// One lease at a time per channel; leases of different channels run
    /// side by side.
    leasing: Mutex<HashMap<ChannelId, Arc<Mutex<()>>>>,
    /// One promotion at a time.
    promoting: Mutex<()>,
    /// The next inbound message's sequence number.
    next_inbound: Mutex<u64>,
    /// The counters as committed (shared with the state, which updates it
    /// from commit hooks).
    committed: Arc<Mutex<Committed>>,
    clock: Arc<dyn Clock>,
    metrics: StoreMetrics,
}

impl Store {
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The id of a channel name, assigned on first use and kept forever.
    pub fn channel(&self, name: &str) -> Result<ChannelId> {
        let mut state = self.state.lock();
        if let Some(id) = state.channels.get(name) {
            return Ok(*id);
        }
        let id = ChannelId(state.channels.values().map(|c| c.0 + 1).max().unwrap_or(1));
        let mut batch = Batch::new();
        batch.put(Cf::Meta, keys::channel_name(name), encode(&id.0));
        self.engine.write(batch)?;
        state.channels.insert(name.to_owned(), id);
        Ok(id)
    }

    pub fn channels(&self) -> Vec<(String, ChannelId)> {
        let mut all: Vec<_> = self
            .state
            .lock()
            .channels
            .iter()
            .map(|(n, c)| (n.clone(), *c))
            .collect();
        all.sort_by_key(|(_, c)| *c);
        all
    }

    /// A campaign's counts as committed: a change shows once its batch is
    /// durable, never before.
    pub fn counters(&self, campaign: CampaignId) -> Counters {
        let view = self.committed.lock();
        view.counters.get(&campaign).cloned().unwrap_or_default()
    }

    /// Ready and leased deliveries of one campaign across all channels.
    pub fn campaign_depth(&self, campaign: CampaignId) -> (u64, u64) {
        let state = self.state.lock();
        let mut ready = 0;
        let mut leased = 0;
        for ch in state.queues.values() {
            for lane in &ch.lanes {
                if let Some(qs) = lane.queues.get(&campaign) {
                    ready += qs.meta.ready;
                    leased += qs.leased.len() as u64;
                }
            }
        }
        (ready, leased)
    }

    pub fn depth(&self, channel: ChannelId) -> ChannelDepth {
        let state = self.state.lock();
        let mut depth = ChannelDepth::default();
        if let Some(ch) = state.queues.get(&channel) {
            for (i, lane) in ch.lanes.iter().enumerate() {
                depth.ready[i] = lane.ready;
                depth.leased[i] = lane.leased;
            }
        }
        depth
    }

    /// Store-wide counts as committed.
    pub fn globals(&self) -> Globals {
        self.committed.lock().globals.clone()
    }
}
