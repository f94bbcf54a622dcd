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
    StatusRecord, decode, encode,
};
use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;

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

/// What [`Store::purge_campaign`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub statuses: u64,
    pub dead: u64,
    pub receipts: u64,
}

/// A delayed entry as the promotion scan read it: the delivery, or its
/// raw value and why it cannot be read.
type DelayedEntry = std::result::Result<Item, (Vec<u8>, String)>;

/// A queued record that could not be read.
struct Unreadable {
    qseq: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    reason: String,
}

/// Most delayed deliveries one [`Store::promote_due`] call moves.
const PROMOTE_LIMIT: usize = 20_000;

impl Store {
    /// Opens the queues on `engine`, recovering from an earlier stop.
    pub fn open(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
    ) -> Result<(Self, Recovery)> {
        Self::open_inner(engine, clock, metrics, true)
    }

    /// Opens the queues to look at them: what a recovery would find is
    /// reported, nothing is written (use it on a read-only engine).
    pub fn open_read_only(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
    ) -> Result<(Self, Recovery)> {
        Self::open_inner(engine, clock, metrics, false)
    }

    fn open_inner(
        engine: Arc<dyn Engine>,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
        recover: bool,
    ) -> Result<(Self, Recovery)> {
        let mut state = State {
            channels: HashMap::new(),
            queues: BTreeMap::new(),
            counters: HashMap::new(),
            globals: Globals::default(),
            next_campaign: 1,
            next_due: None,
            retry_floor: 0,
            committed: Arc::new(Mutex::new(Committed::default())),
            quarantined: 0,
            next_quarantine: 1,
        };
        let (lo, hi) = keys::quarantine_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, _| {
            if let Some(seq) = keys::quarantine_from(k) {
                state.quarantined += 1;
                state.next_quarantine = state.next_quarantine.max(seq + 1);
            }
            Ok(true)
        })?;
        let next_inbound = match engine.get(Cf::Inbound, keys::NEXT_INBOUND)? {
            Some(v) => decode(Cf::Inbound, keys::NEXT_INBOUND, &v)?,
            None => 1u64,
        };
        if let Some(v) = engine.get(Cf::Meta, keys::NEXT_CAMPAIGN)? {
            state.next_campaign = decode(Cf::Meta, keys::NEXT_CAMPAIGN, &v)?;
        }
        if let Some(v) = engine.get(Cf::Meta, keys::GLOBALS)? {
            state.globals = decode(Cf::Meta, keys::GLOBALS, &v)?;
        }
        let (lo, hi) = keys::channel_names_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            if let Some(name) = keys::channel_name_from(k) {
                state
                    .channels
                    .insert(name.to_owned(), ChannelId(decode(Cf::Meta, k, v)?));
            }
            Ok(true)
        })?;
        let (lo, hi) = keys::counters_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            if let Some(c) = keys::counters_from(k) {
                state.counters.insert(c, decode(Cf::Meta, k, v)?);
            }
            Ok(true)
        })?;

        let mut metas = Vec::new();
        let (lo, hi) = keys::queue_meta_range();
        engine.scan(Cf::Meta, &lo, &hi, &mut |k, v| {
            if let Some(q) = keys::queue_meta_from(k) {
                metas.push((q, decode::<QueueMeta>(Cf::Meta, k, v)?));
            }
            Ok(true)
        })?;
        let mut recovery = Recovery {
            queues: metas.len(),
            ..Recovery::default()
        };
        recovery.campaigns = state.counters.len();
        let mut reset = Batch::new();
        for (q, meta) in metas {
            // Whatever is still present below head was leased, never settled.
            let mut requeued = 0u64;
            let mut first = None;
            engine.scan(
                Cf::Ready,
                &keys::ready(q, meta.low),
                &keys::ready(q, meta.head),
                &mut |k, _| {
                    if first.is_none() {
                        first = keys::ready_from(k).map(|(_, s)| s);
                    }
                    requeued += 1;
                    Ok(true)
                },
            )?;
            let head = first.unwrap_or(meta.head);
            let ready = meta.ready + requeued;
            let restored = QueueMeta {
                low: head,
                head,
                tail: meta.tail,
                ready,
                redeliver_below: meta
                    .redeliver_below
                    .max(if requeued > 0 { meta.head } else { 0 }),
            };
            if restored != meta {
                // Persist the rewind so a second crash does not count these
                // deliveries again, and keeps them flagged as redeliveries.
                reset.put(Cf::Meta, keys::queue_meta(q), encode(&restored));
            }
            let lane = state.lane(q.channel, q.lane);
            lane.ready += ready;
            if ready > 0 {
                lane.active.insert(q.campaign);
            }
            lane.queues.insert(
                q.campaign,
                QueueState {
                    meta: restored,
                    leased: BTreeSet::new(),
                },
            );
            recovery.requeued += requeued;
        }
        // The floor comes from the wall clock: after a run with the clock
        // ahead, it would hold every new retry until that date. Every
        // delayed entry is at or above the floor, so bringing it back to
        // now loses nothing.
        let now = clock.now_ms();
        if recover && state.globals.delayed_floor > now {
            tracing::warn!(
                floor_ms = state.globals.delayed_floor,
                now_ms = now,
                "The delayed queue's floor is in the future (the clock went back); it is brought back to now."
            );
            state.globals.delayed_floor = now;
            reset.put(Cf::Meta, keys::GLOBALS.to_vec(), encode(&state.globals));
        }
        if recover && !reset.is_empty() {
            engine.write(reset)?;
        }
        if state.globals.delayed > 0 {
            state.next_due = Some(state.globals.delayed_floor);
        }
        *state.committed.lock() = Committed {
            counters: state.counters.clone(),
            globals: state.globals.clone(),
        };
        if recover {
            metrics.recovered.inc_by(recovery.requeued);
        }
        if recover && recovery.requeued > 0 {
            tracing::warn!(
                deliveries = recovery.requeued,
                "Deliveries leased before the last stop were never settled; they are ready again and will be re-sent."
            );
        }
        let committed = Arc::clone(&state.committed);
        let store = Self {
            engine,
            state: Mutex::new(state),
            leasing: Mutex::new(HashMap::new()),
            promoting: Mutex::new(()),
            next_inbound: Mutex::new(next_inbound),
            committed,
            clock,
            metrics,
        };
        Ok((store, recovery))
    }

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

    /// Stores a campaign body once and allocates its id.
    pub fn create_campaign(&self, body: Vec<u8>) -> Pending<CampaignId> {
        let mut state = self.state.lock();
        let id = CampaignId(state.next_campaign);
        state.next_campaign += 1;
        let mut batch = Batch::new();
        batch.put(Cf::Campaigns, keys::campaign(id), body);
        batch.put(
            Cf::Meta,
            keys::NEXT_CAMPAIGN.to_vec(),
            encode(&state.next_campaign),
        );
        batch.put(Cf::Meta, keys::counters(id), encode(state.counters(id)));
        Pending::new(id, self.engine.submit(batch))
    }

    /// A 32-byte secret of this store, generated (from the operating
    /// system's random source) and committed the first time it is asked
    /// for; the same bytes afterwards. It keys what the broker must trust
    /// later, such as its compiled-component cache.
    pub fn secret(&self, name: &str) -> Result<[u8; 32]> {
        let key = keys::secret(name);
        let _order = self.state.lock();
        if let Some(v) = self.engine.get(Cf::Meta, &key)? {
            return <[u8; 32]>::try_from(v.as_slice()).map_err(|_| Error::BadRecord {
                cf: Cf::Meta.name(),
                key: format!("secret {name}"),
                message: format!("{} bytes, not 32", v.len()),
            });
        }
        let mut secret = [0u8; 32];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut secret)
            .map_err(|e| Error::Internal(format!("no random source for secret {name}: {e}")))?;
        let mut batch = Batch::new();
        batch.put(Cf::Meta, key, secret.to_vec());
        self.engine.submit(batch).wait()?;
        Ok(secret)
    }

    /// Replaces a campaign's body (its state changed: cancelled, expired…).
    pub fn update_campaign(&self, id: CampaignId, body: Vec<u8>) -> Ticket {
        let _order = self.state.lock();
        let mut batch = Batch::new();
        batch.put(Cf::Campaigns, keys::campaign(id), body);
        self.engine.submit(batch)
    }

    pub fn campaign(&self, id: CampaignId) -> Result<Option<Vec<u8>>> {
        self.engine.get(Cf::Campaigns, &keys::campaign(id))
    }

    /// Every stored campaign id and body, oldest first.
    pub fn campaigns(&self) -> Result<Vec<(CampaignId, Vec<u8>)>> {
        let mut all = Vec::new();
        let (lo, hi) = keys::campaigns_range();
        self.engine.scan(Cf::Campaigns, &lo, &hi, &mut |k, v| {
            if let Ok(raw) = <[u8; 8]>::try_from(k) {
                all.push((CampaignId(u64::from_be_bytes(raw)), v.to_vec()));
            }
            Ok(true)
        })?;
        Ok(all)
    }

    /// Appends deliveries to the tail of their queue.
    pub fn enqueue(&self, queue: QueueKey, deliveries: Vec<NewDelivery>) -> Pending<()> {
        if deliveries.is_empty() {
            return Pending::ready(());
        }
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        state.add_new(&mut batch, queue, deliveries, now);
        let mut touched = Touched::default();
        touched.queues.insert(queue);
        touched.campaigns.insert(queue.campaign);
        touched.write(&mut state, &mut batch);
        Pending::new((), self.engine.submit(batch))
    }

    /// Leases up to `max` ready deliveries of `channel`: the highest lane
    /// first, round-robin across the campaigns of a lane, oldest first
    /// within a campaign. Send nothing before the returned value is
    /// committed.
    ///
    /// The queues are read from the engine outside the store's lock (under
    /// the channel's own lease lock, so the heads it read from cannot
    /// move): one channel's reads never hold up another channel.
    pub fn lease(&self, channel: ChannelId, max: usize) -> Result<Pending<Vec<Leased>>> {
        let lease_lock = Arc::clone(self.leasing.lock().entry(channel).or_default());
        let _leasing = lease_lock.lock();
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let mut touched = Touched::default();
        let mut quarantine = Batch::new();
        for lane in Lane::ALL {
            let remaining = max - out.len();
            if remaining == 0 {
                break;
            }
            // Plan: which queues, from which heads, how many.
            let plan: Vec<(QueueKey, u64, u64, u64, u64)> = {
                let mut state = self.state.lock();
                let Some(ch) = state.queues.get_mut(&channel) else {
                    break;
                };
                let ls = &mut ch.lanes[lane.code() as usize];
                if ls.ready == 0 {
                    continue;
                }
                round_robin(ls, remaining)
                    .into_iter()
                    .filter_map(|(campaign, want)| {
                        let qs = ls.queues.get(&campaign)?;
                        Some((
                            QueueKey {
                                channel,
                                lane,
                                campaign,
                            },
                            qs.meta.head,
                            qs.meta.tail,
                            qs.meta.redeliver_below,
                            want,
                        ))
                    })
                    .collect()
            };
            // Read, without the store's lock.
            let mut taken: Vec<Vec<Leased>> = Vec::with_capacity(plan.len());
            let mut unreadable: Vec<(QueueKey, Vec<Unreadable>)> = Vec::new();
            for &(q, head, tail, redeliver_below, want) in &plan {
                let (got, bad) = self.read_ready(q, head, tail, redeliver_below, want)?;
                taken.push(got);
                if !bad.is_empty() {
                    unreadable.push((q, bad));
                }
            }
            // Apply.
            let mut state = self.state.lock();
            // Unreadable records are moved aside, never handed out: the
            // queue goes on past them.
            for (q, bad) in unreadable {
                for u in bad {
                    state.quarantine(&mut quarantine, Cf::Ready, &u.key, &u.value, u.reason, now);
                    let qs = state.queue(q);
                    if qs.leased.contains(&u.qseq) {
                        continue;
                    }
                    qs.meta.head = qs.meta.head.max(u.qseq + 1);
                    qs.meta.ready = qs.meta.ready.saturating_sub(1);
                    let emptied = qs.meta.ready == 0;
                    let ls = state.lane(q.channel, q.lane);
                    ls.ready = ls.ready.saturating_sub(1);
                    if emptied {
                        ls.active.remove(&q.campaign);
                    }
                    state.counters(q.campaign).quarantined += 1;
                    touched.queues.insert(q);
                    touched.campaigns.insert(q.campaign);
                }
            }
            let Some(ch) = state.queues.get_mut(&channel) else {
                break;
            };
            let ls = &mut ch.lanes[lane.code() as usize];
            for got in &taken {
                let Some(last) = got.last() else {
                    continue;
                };
                let q = last.queue;
                let qs = ls
                    .queues
                    .get_mut(&q.campaign)
                    .expect("queues are never removed while the store is open");
                qs.meta.head = qs.meta.head.max(last.qseq + 1);
                qs.meta.ready -= got.len() as u64;
                qs.leased.extend(got.iter().map(|l| l.qseq));
                ls.ready -= got.len() as u64;
                ls.leased += got.len() as u64;
                if qs.meta.ready == 0 {
                    ls.active.remove(&q.campaign);
                }
                touched.queues.insert(q);
            }
            // Hand them out in the order the round-robin dealt them.
            let mut iters: Vec<_> = taken.into_iter().map(Vec::into_iter).collect();
            loop {
                let before = out.len();
                for it in &mut iters {
                    if let Some(l) = it.next() {
                        ls.cursor = Some(l.queue.campaign);
                        out.push(l);
                    }
                }
                if out.len() == before {
                    break;
                }
            }
        }
        if out.is_empty() && quarantine.is_empty() {
            return Ok(Pending::ready(out));
        }
        let mut state = self.state.lock();
        for l in out.iter().filter(|l| l.redelivered) {
            state.counters(l.queue.campaign).redelivered += 1;
            touched.campaigns.insert(l.queue.campaign);
        }
        let mut batch = quarantine;
        touched.write(&mut state, &mut batch);
        Ok(Pending::new(out, self.engine.submit(batch)))
    }

    /// Up to `want` readable deliveries of `q` from `head`, and the
    /// records on the way that cannot be read.
    fn read_ready(
        &self,
        q: QueueKey,
        head: u64,
        tail: u64,
        redeliver_below: u64,
        want: u64,
    ) -> Result<(Vec<Leased>, Vec<Unreadable>)> {
        let mut got = Vec::with_capacity(want as usize);
        let mut bad = Vec::new();
        let lower = keys::ready(q, head);
        let upper = keys::ready(q, tail);
        self.engine.scan(Cf::Ready, &lower, &upper, &mut |k, v| {
            let Some((_, qseq)) = keys::ready_from(k) else {
                // Inside this queue's key range, so it has its prefix:
                // only its length can be wrong. Nothing to lease there.
                return Ok(true);
            };
            match decode::<Item>(Cf::Ready, k, v) {
                Ok(item) => got.push(Leased {
                    queue: q,
                    qseq,
                    item,
                    redelivered: qseq < redeliver_below,
                }),
                Err(e) => bad.push(Unreadable {
                    qseq,
                    key: k.to_vec(),
                    value: v.to_vec(),
                    reason: e.to_string(),
                }),
            }
            Ok((got.len() as u64) < want)
        })?;
        Ok((got, bad))
    }

    /// Settles leased deliveries, each in its own atomic state change; all
    /// of them commit in one batch. Refuses the whole call, writing
    /// nothing, if any delivery is not currently leased.
    pub fn settle(&self, settled: Vec<(Leased, Outcome)>) -> Result<Pending<()>> {
        if settled.is_empty() {
            return Ok(Pending::ready(()));
        }
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut seen = BTreeSet::new();
        for (l, _) in &settled {
            let qs = state.queue(l.queue);
            if !qs.leased.contains(&l.qseq) || !seen.insert((l.queue, l.qseq)) {
                return Err(Error::NotLeased(l.id()));
            }
        }
        let mut batch = Batch::new();
        let mut touched = Touched::default();
        let mut removed: BTreeMap<QueueKey, Vec<u64>> = BTreeMap::new();
        for (l, outcome) in settled {
            let id = l.id();
            let campaign = l.queue.campaign;
            {
                let qs = state.queue(l.queue);
                qs.leased.remove(&l.qseq);
            }
            state.lane(l.queue.channel, l.queue.lane).leased -= 1;
            removed.entry(l.queue).or_default().push(l.qseq);
            touched.queues.insert(l.queue);
            touched.campaigns.insert(campaign);
            let mut item = l.item;
            match outcome {
                Outcome::Done {
                    status,
                    external_id,
                    reason,
                } => {
                    if let Some(ext) = &external_id {
                        batch.put(
                            Cf::External,
                            keys::external(l.queue.channel, ext),
                            keys::delivery(id),
                        );
                    }
                    let record = StatusRecord {
                        status,
                        channel: l.queue.channel,
                        attempts: item.attempts + 1,
                        updated_ms: now,
                        external_id,
                        reason,
                    };
                    batch.put(Cf::Status, keys::delivery(id), encode(&record));
                    state.counters(campaign).statuses[status.code() as usize] += 1;
                }
                Outcome::Retry { .. } | Outcome::Defer { .. } => {
                    let due_ms = match outcome {
                        Outcome::Retry { due_ms, reason } => {
                            item.attempts += 1;
                            item.note(AttemptNote {
                                at_ms: now,
                                channel: l.queue.channel,
                                reason,
                            });
                            state.counters(campaign).retries += 1;
                            due_ms
                        }
                        Outcome::Defer { due_ms } => due_ms,
                        _ => unreachable!("matched above"),
                    };
                    let due = due_ms
                        .max(state.globals.delayed_floor)
                        .max(state.retry_floor);
                    batch.put(
                        Cf::Delayed,
                        keys::delayed(due, l.queue, item.index),
                        encode(&item),
                    );
                    state.globals.delayed += 1;
                    state.next_due = Some(state.next_due.map_or(due, |d| d.min(due)));
                    touched.globals = true;
                    state.counters(campaign).delayed += 1;
                }
                Outcome::Dead { reason } => {
                    item.attempts += 1;
                    let dead = DeadLetter {
                        id,
                        channel: l.queue.channel,
                        lane: l.queue.lane,
                        item,
                        reason,
                        dead_ms: now,
                    };
                    batch.put(Cf::Dead, keys::delivery(id), encode(&dead));
                    state.globals.dead += 1;
                    touched.globals = true;
                    state.counters(campaign).dead += 1;
                }
                Outcome::Reroute {
                    channel,
                    recipient,
                    route,
                    reason,
                } => {
                    let to = QueueKey { channel, ..l.queue };
                    item.note(AttemptNote {
                        at_ms: now,
                        channel: l.queue.channel,
                        reason,
                    });
                    item.recipient = recipient;
                    item.route = route;
                    item.attempts = 0;
                    item.enqueued_ms = now;
                    let qseq = state.push_ready(to, 1);
                    batch.put(Cf::Ready, keys::ready(to, qseq), encode(&item));
                    touched.queues.insert(to);
                    state.counters(campaign).rerouted += 1;
                }
            }
        }
        for (q, mut positions) in removed {
            positions.sort_unstable();
            delete_runs(&mut batch, q, &positions);
        }
        touched.write(&mut state, &mut batch);
        Ok(Pending::new((), self.engine.submit(batch)))
    }

    /// One step of a campaign's fan-out, atomically: deliveries enqueued
    /// into their queues, recipients that cannot be reached on any channel
    /// settled as failed at once, and the campaign's record (its cursor)
    /// replaced. A crash leaves either all of it or none.
    pub fn fan_out(
        &self,
        campaign: CampaignId,
        record: Vec<u8>,
        queues: Vec<(QueueKey, Vec<NewDelivery>)>,
        unreachable: Vec<(u32, String)>,
    ) -> Pending<()> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        let mut touched = Touched::default();
        touched.campaigns.insert(campaign);
        for (queue, deliveries) in queues {
            if deliveries.is_empty() {
                continue;
            }
            debug_assert_eq!(queue.campaign, campaign);
            state.add_new(&mut batch, queue, deliveries, now);
            touched.queues.insert(queue);
        }
        for (index, reason) in unreachable {
            let record = StatusRecord {
                status: DeliveryStatus::Failed,
                channel: ChannelId(0),
                attempts: 0,
                updated_ms: now,
                external_id: None,
                reason: Some(reason),
            };
            batch.put(
                Cf::Status,
                keys::delivery(DeliveryId::new(campaign, index)),
                encode(&record),
            );
            let c = state.counters(campaign);
            c.enqueued += 1;
            c.statuses[DeliveryStatus::Failed.code() as usize] += 1;
        }
        batch.put(Cf::Campaigns, keys::campaign(campaign), record);
        touched.write(&mut state, &mut batch);
        Pending::new((), self.engine.submit(batch))
    }

    /// Applies status reports (receipts) to settled deliveries: a status
    /// only ever moves forward ([`DeliveryStatus::advance`]). Returns how
    /// many changed. Reports for deliveries without a status record are
    /// skipped and counted in the second value. Callers apply one batch at
    /// a time and wait for it, so each reads what the last one wrote.
    pub fn update_statuses(
        &self,
        reports: &[(DeliveryId, DeliveryStatus, Option<String>)],
    ) -> Result<Pending<(usize, usize)>> {
        let now = self.clock.now_ms();
        // The records are read before taking the lock: reads never hold up
        // other channels, and receipts are applied by one caller at a time.
        let mut current: HashMap<DeliveryId, Option<StatusRecord>> = HashMap::new();
        for (id, _, _) in reports {
            if current.contains_key(id) {
                continue;
            }
            let key = keys::delivery(*id);
            let record = self
                .engine
                .get(Cf::Status, &key)?
                .map(|v| decode::<StatusRecord>(Cf::Status, &key, &v))
                .transpose()?;
            current.insert(*id, record);
        }
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        let mut touched = Touched::default();
        let mut changed = 0;
        let mut unknown = 0;
        for (id, next, reason) in reports {
            let Some(Some(record)) = current.get_mut(id) else {
                unknown += 1;
                continue;
            };
            let advanced = record.status.advance(*next);
            if advanced != record.status {
                let c = state.counters(id.campaign);
                c.statuses[record.status.code() as usize] -= 1;
                c.statuses[advanced.code() as usize] += 1;
                touched.campaigns.insert(id.campaign);
                record.status = advanced;
                record.updated_ms = now;
                if reason.is_some() {
                    record.reason.clone_from(reason);
                }
                batch.put(Cf::Status, keys::delivery(*id), encode(&*record));
                changed += 1;
            }
        }
        if batch.is_empty() {
            return Ok(Pending::ready((0, unknown)));
        }
        touched.write(&mut state, &mut batch);
        Ok(Pending::new((changed, unknown), self.engine.submit(batch)))
    }

    /// Stores part of an explicit audience: recipient `first + i` is
    /// `recipients[i]` (opaque bytes the dispatcher encodes).
    pub fn put_audience(
        &self,
        campaign: CampaignId,
        first: u32,
        recipients: Vec<Vec<u8>>,
    ) -> Pending<()> {
        let mut batch = Batch::new();
        for (i, r) in recipients.into_iter().enumerate() {
            batch.put(
                Cf::Audience,
                keys::delivery(DeliveryId::new(campaign, first + i as u32)),
                r,
            );
        }
        let _order = self.state.lock();
        Pending::new((), self.engine.submit(batch))
    }

    /// Audience entries `[from, from + max)` of a campaign, in order.
    pub fn audience(
        &self,
        campaign: CampaignId,
        from: u32,
        max: u32,
    ) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::with_capacity(max as usize);
        let lower = keys::delivery(DeliveryId::new(campaign, from));
        let (_, upper) = keys::campaign_deliveries(campaign);
        self.engine
            .scan(Cf::Audience, &lower, &upper, &mut |k, v| {
                if let Some(id) = keys::delivery_from(k) {
                    out.push((id.index, v.to_vec()));
                }
                Ok((out.len() as u32) < max)
            })?;
        Ok(out)
    }

    /// Whether a delayed delivery may be due now (a cheap check before
    /// [`Self::promote_due`], which reads the store).
    pub fn has_due(&self) -> bool {
        let now = self.clock.now_ms();
        let state = self.state.lock();
        state.globals.delayed > 0 && state.next_due.is_some_and(|d| d <= now)
    }

    /// Moves delayed deliveries that are due into the tail of their queues
    /// (unreadable ones to the quarantine). Returns how many moved.
    ///
    /// The store's lock is not held while waiting for earlier commits or
    /// scanning: first the floor for new retries moves past `now` (so none
    /// can land in the range about to be deleted), then a barrier makes
    /// every earlier retry visible, then the range is read and promoted.
    pub fn promote_due(&self) -> Result<usize> {
        let _one = self.promoting.lock();
        let now = self.clock.now_ms();
        let floor = {
            let mut state = self.state.lock();
            match state.next_due {
                Some(due) if due <= now && state.globals.delayed > 0 => {}
                _ => return Ok(0),
            }
            state.retry_floor = state.retry_floor.max(now.saturating_add(1));
            // Retries settled from here on set the hint themselves.
            state.next_due = None;
            state.globals.delayed_floor
        };
        self.engine.barrier()?;
        let lower = keys::delayed_floor(floor);
        let upper = keys::delayed_floor(now.saturating_add(1));
        // Unreadable entries are moved aside as the scan meets them; the
        // rest are promoted.
        let mut due: Vec<(Vec<u8>, DelayedEntry)> = Vec::new();
        self.engine.scan(Cf::Delayed, &lower, &upper, &mut |k, v| {
            let item = decode::<Item>(Cf::Delayed, k, v).map_err(|e| (v.to_vec(), e.to_string()));
            due.push((k.to_vec(), item));
            Ok(due.len() < PROMOTE_LIMIT)
        })?;
        let full = due.len() == PROMOTE_LIMIT;
        let mut later = None;
        if !full {
            self.engine
                .scan(Cf::Delayed, &upper, &keys::delayed_end(), &mut |k, _| {
                    later = keys::delayed_from(k).map(|(d, _, _)| d);
                    Ok(false)
                })?;
        }
        let mut batch = Batch::new();
        let mut touched = Touched {
            globals: true,
            ..Touched::default()
        };
        let mut state = self.state.lock();
        let mut last_due = floor;
        let mut quarantined = 0;
        for (k, item) in &due {
            let parsed = keys::delayed_from(k);
            let item = match (parsed, item) {
                (Some(_), Ok(item)) => item,
                (_, Err((value, reason))) => {
                    state.quarantine(&mut batch, Cf::Delayed, k, value, reason.clone(), now);
                    quarantined += 1;
                    if let Some((d, q, _)) = parsed {
                        last_due = d;
                        let c = state.counters(q.campaign);
                        c.delayed = c.delayed.saturating_sub(1);
                        c.quarantined += 1;
                        touched.campaigns.insert(q.campaign);
                    }
                    continue;
                }
                (None, Ok(_)) => {
                    // Inside the delayed range but not a delayed key: only
                    // its length can be wrong.
                    state.quarantine(&mut batch, Cf::Delayed, k, &[], "malformed key".into(), now);
                    quarantined += 1;
                    continue;
                }
            };
            let Some((d, q, _)) = parsed else { continue };
            last_due = d;
            let qseq = state.push_ready(q, 1);
            batch.put(Cf::Ready, keys::ready(q, qseq), encode(item));
            touched.queues.insert(q);
            touched.campaigns.insert(q.campaign);
            state.counters(q.campaign).delayed -= 1;
        }
        if let Some((last, _)) = due.last() {
            let mut end = last.clone();
            end.push(0);
            batch.delete_range(Cf::Delayed, lower, end);
        }
        state.globals.delayed -= due.len() as u64;
        state.globals.delayed_floor = if full { last_due } else { now + 1 };
        let found = if full { Some(last_due) } else { later };
        state.next_due = if state.globals.delayed == 0 {
            None
        } else {
            // What the scan found, or what a retry settled meanwhile set;
            // a retry committed before the barrier but due later was found.
            match (found, state.next_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => Some(a.or(b).unwrap_or(now + 1)),
            }
        };
        touched.write(&mut state, &mut batch);
        let ticket = self.engine.submit(batch);
        drop(state);
        ticket.wait()?;
        Ok(due.len() - quarantined)
    }

    /// Dead letters in delivery order, starting after `after`.
    pub fn dead_letters(&self, after: Option<DeliveryId>, limit: usize) -> Result<Vec<DeadLetter>> {
        let lower = match after {
            Some(id) => {
                let mut k = keys::delivery(id);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.engine
            .scan(Cf::Dead, &lower, &keys::deliveries_end(), &mut |k, v| {
                out.push(decode(Cf::Dead, k, v)?);
                Ok(out.len() < limit)
            })?;
        Ok(out)
    }

    /// Puts dead letters back at the tail of their queues with a fresh
    /// attempt count; their history is kept. Refuses the whole call if any
    /// id has no dead letter.
    pub fn replay_dead(&self, ids: &[DeliveryId]) -> Result<Pending<usize>> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut letters = Vec::with_capacity(ids.len());
        let mut seen = BTreeSet::new();
        for &id in ids {
            let key = keys::delivery(id);
            let found = self.engine.get(Cf::Dead, &key)?;
            match found {
                Some(v) if seen.insert(id) => {
                    letters.push(decode::<DeadLetter>(Cf::Dead, &key, &v)?)
                }
                _ => return Err(Error::NoDeadLetter(id)),
            }
        }
        let mut batch = Batch::new();
        let mut touched = Touched {
            globals: true,
            ..Touched::default()
        };
        for dead in &letters {
            let q = QueueKey {
                channel: dead.channel,
                lane: dead.lane,
                campaign: dead.id.campaign,
            };
            let mut item = dead.item.clone();
            item.note(AttemptNote {
                at_ms: now,
                channel: dead.channel,
                reason: format!("replayed after: {}", dead.reason),
            });
            item.attempts = 0;
            item.enqueued_ms = now;
            let qseq = state.push_ready(q, 1);
            batch.delete(Cf::Dead, keys::delivery(dead.id));
            batch.put(Cf::Ready, keys::ready(q, qseq), encode(&item));
            state.counters(q.campaign).dead -= 1;
            touched.queues.insert(q);
            touched.campaigns.insert(q.campaign);
        }
        state.globals.dead -= letters.len() as u64;
        touched.write(&mut state, &mut batch);
        Ok(Pending::new(letters.len(), self.engine.submit(batch)))
    }

    /// Keeps inbound messages of `channel`, in arrival order, dropping any
    /// whose external id this channel already brought. Returns how many
    /// were new. Reads the index: call it from a blocking thread.
    pub fn put_inbound(
        &self,
        channel: ChannelId,
        messages: Vec<InboundRecord>,
    ) -> Result<Pending<usize>> {
        // Inbound records have their own lock: they share nothing with the
        // queues. Held across the index reads so a webhook sent twice at
        // once is still stored once.
        let mut next = self.next_inbound.lock();
        let mut batch = Batch::new();
        let mut seen = BTreeSet::new();
        let mut stored = 0;
        for m in messages {
            if let Some(ext) = &m.external_id {
                let index = keys::inbound_index(channel, ext);
                if !seen.insert(index.clone()) || self.engine.get(Cf::Inbound, &index)?.is_some() {
                    continue;
                }
                batch.put(Cf::Inbound, index, next.to_be_bytes().to_vec());
            }
            batch.put(Cf::Inbound, keys::inbound(*next), encode(&m));
            *next += 1;
            stored += 1;
        }
        if stored == 0 {
            return Ok(Pending::ready(0));
        }
        batch.put(Cf::Inbound, keys::NEXT_INBOUND.to_vec(), encode(&*next));
        Ok(Pending::new(stored, self.engine.submit(batch)))
    }

    /// Inbound messages after sequence number `after`, oldest first.
    pub fn inbound(&self, after: u64, limit: usize) -> Result<Vec<(u64, InboundRecord)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let (_, hi) = keys::inbound_range();
        self.engine.scan(
            Cf::Inbound,
            &keys::inbound(after.saturating_add(1)),
            &hi,
            &mut |k, v| {
                if let Some(seq) = keys::inbound_from(k) {
                    out.push((seq, decode(Cf::Inbound, k, v)?));
                }
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// Moves a delivery whose receipt said it failed back into a queue: the
    /// campaign's next channel (fallback after wiring), which `next` picks
    /// from its status record. Its status record and receipt index go, its
    /// history keeps the failure. Returns false, writing nothing, unless
    /// its status is `failed` and `next` names a queue. Reads the status:
    /// call it from a blocking thread.
    pub fn reroute_failed(
        &self,
        id: DeliveryId,
        reason: String,
        next: impl FnOnce(&StatusRecord) -> Result<Option<(QueueKey, NewDelivery)>>,
    ) -> Result<Pending<bool>> {
        let now = self.clock.now_ms();
        let key = keys::delivery(id);
        let Some(record) = self
            .engine
            .get(Cf::Status, &key)?
            .map(|v| decode::<StatusRecord>(Cf::Status, &key, &v))
            .transpose()?
        else {
            return Ok(Pending::ready(false));
        };
        if record.status != DeliveryStatus::Failed {
            return Ok(Pending::ready(false));
        }
        let Some((to, delivery)) = next(&record)? else {
            return Ok(Pending::ready(false));
        };
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        batch.delete(Cf::Status, key);
        if let Some(ext) = &record.external_id {
            batch.delete(Cf::External, keys::external(record.channel, ext));
        }
        let item = Item {
            index: id.index,
            recipient: delivery.recipient,
            route: delivery.route,
            language: delivery.language,
            attempts: 0,
            enqueued_ms: now,
            history: vec![AttemptNote {
                at_ms: now,
                channel: record.channel,
                reason,
            }],
        };
        let qseq = state.push_ready(to, 1);
        batch.put(Cf::Ready, keys::ready(to, qseq), encode(&item));
        let c = state.counters(id.campaign);
        c.statuses[DeliveryStatus::Failed.code() as usize] -= 1;
        c.rerouted += 1;
        let mut touched = Touched::default();
        touched.queues.insert(to);
        touched.campaigns.insert(id.campaign);
        touched.write(&mut state, &mut batch);
        Ok(Pending::new(true, self.engine.submit(batch)))
    }

    /// The status record of a delivery that left the queue.
    pub fn status(&self, id: DeliveryId) -> Result<Option<StatusRecord>> {
        let key = keys::delivery(id);
        self.engine
            .get(Cf::Status, &key)?
            .map(|v| decode(Cf::Status, &key, &v))
            .transpose()
    }

    /// Visits the status records of one campaign in delivery order.
    pub fn scan_statuses(
        &self,
        campaign: CampaignId,
        visit: &mut dyn FnMut(DeliveryId, StatusRecord) -> Result<bool>,
    ) -> Result<()> {
        let (lo, hi) = keys::campaign_deliveries(campaign);
        self.engine.scan(Cf::Status, &lo, &hi, &mut |k, v| {
            let id = keys::delivery_from(k).ok_or_else(|| Error::BadRecord {
                cf: "status",
                key: format!("{k:02x?}"),
                message: "malformed key".into(),
            })?;
            visit(id, decode(Cf::Status, k, v)?)
        })
    }

    /// Visits the dead letters of one campaign in delivery order.
    pub fn scan_dead(
        &self,
        campaign: CampaignId,
        visit: &mut dyn FnMut(DeadLetter) -> Result<bool>,
    ) -> Result<()> {
        let (lo, hi) = keys::campaign_deliveries(campaign);
        self.engine.scan(Cf::Dead, &lo, &hi, &mut |k, v| {
            visit(decode(Cf::Dead, k, v)?)
        })
    }

    /// The delivery a gateway's message id belongs to.
    pub fn by_external_id(
        &self,
        channel: ChannelId,
        external_id: &str,
    ) -> Result<Option<DeliveryId>> {
        Ok(self
            .engine
            .get(Cf::External, &keys::external(channel, external_id))?
            .and_then(|v| keys::delivery_from(&v)))
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

    /// Records moved to the quarantine since the store was created.
    pub fn quarantined_count(&self) -> u64 {
        self.state.lock().quarantined
    }

    /// Quarantined records, oldest first, after number `after`.
    pub fn quarantined(&self, after: u64, limit: usize) -> Result<Vec<(u64, Quarantined)>> {
        let (_, hi) = keys::quarantine_range();
        let mut out = Vec::new();
        self.engine.scan(
            Cf::Meta,
            &keys::quarantine(after.saturating_add(1)),
            &hi,
            &mut |k, v| {
                if let Some(seq) = keys::quarantine_from(k) {
                    out.push((seq, decode(Cf::Meta, k, v)?));
                }
                Ok(out.len() < limit)
            },
        )?;
        Ok(out)
    }

    /// Moves an unreadable campaign record to the quarantine (its queued
    /// deliveries then settle as dead letters: nothing says what to send).
    pub fn quarantine_campaign(&self, id: CampaignId, value: &[u8], reason: String) -> Ticket {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        state.quarantine(
            &mut batch,
            Cf::Campaigns,
            &keys::campaign(id),
            value,
            reason,
            now,
        );
        self.engine.submit(batch)
    }

    /// Removes everything the store holds for a campaign that has ended:
    /// its record, counters, queue positions, status records, dead letters,
    /// stored audience and receipt index entries. Keyed by campaign, most
    /// of it goes as one range delete per keyspace (cheap for compaction);
    /// the receipt index, keyed by channel, is scanned. Refused while any
    /// of its deliveries is still queued. Returns how many status records,
    /// dead letters and receipt entries went. Reads the store: call it
    /// from a blocking thread.
    pub fn purge_campaign(&self, id: CampaignId) -> Result<Purged> {
        if self.counters(id).queued() > 0 || self.campaign_depth(id) != (0, 0) {
            return Err(Error::Invalid(format!(
                "campaign {id} still has queued deliveries; only an ended campaign is purged"
            )));
        }
        let (lo, hi) = keys::campaign_deliveries(id);
        let mut purged = Purged::default();
        self.engine.scan(Cf::Status, &lo, &hi, &mut |_, _| {
            purged.statuses += 1;
            Ok(true)
        })?;
        self.engine.scan(Cf::Dead, &lo, &hi, &mut |_, _| {
            purged.dead += 1;
            Ok(true)
        })?;
        let mut external = Vec::new();
        let (elo, ehi) = keys::external_range();
        self.engine.scan(Cf::External, &elo, &ehi, &mut |k, v| {
            if keys::delivery_from(v).is_some_and(|d| d.campaign == id) {
                external.push(k.to_vec());
            }
            Ok(true)
        })?;
        purged.receipts = external.len() as u64;
        let mut state = self.state.lock();
        let mut batch = Batch::new();
        for cf in [Cf::Status, Cf::Dead, Cf::Audience] {
            batch.delete_range(cf, lo.clone(), hi.clone());
        }
        for k in external {
            batch.delete(Cf::External, k);
        }
        batch.delete(Cf::Campaigns, keys::campaign(id));
        batch.delete(Cf::Meta, keys::counters(id));
        let mut queues = Vec::new();
        for (channel, ch) in &mut state.queues {
            for (code, lane) in ch.lanes.iter_mut().enumerate() {
                if lane.queues.remove(&id).is_some() {
                    lane.active.remove(&id);
                    if lane.cursor == Some(id) {
                        lane.cursor = None;
                    }
                    if let Some(l) = Lane::from_code(code as u8) {
                        queues.push(QueueKey {
                            channel: *channel,
                            lane: l,
                            campaign: id,
                        });
                    }
                }
            }
        }
        for q in queues {
            batch.delete(Cf::Meta, keys::queue_meta(q));
        }
        state.counters.remove(&id);
        state.globals.dead = state.globals.dead.saturating_sub(purged.dead);
        let touched = Touched {
            globals: true,
            ..Touched::default()
        };
        touched.write(&mut state, &mut batch);
        let committed = Arc::clone(&state.committed);
        batch.on_commit(move || {
            committed.lock().counters.remove(&id);
        });
        let ticket = self.engine.submit(batch);
        drop(state);
        ticket.wait()?;
        Ok(purged)
    }

    /// Store-wide counts as committed.
    pub fn globals(&self) -> Globals {
        self.committed.lock().globals.clone()
    }

    /// When the oldest ready delivery of `channel` was enqueued.
    pub fn oldest_ready_ms(&self, channel: ChannelId) -> Result<Option<u64>> {
        let heads: Vec<(QueueKey, u64, u64)> = {
            let state = self.state.lock();
            let Some(ch) = state.queues.get(&channel) else {
                return Ok(None);
            };
            ch.lanes
                .iter()
                .enumerate()
                .flat_map(|(i, lane)| {
                    lane.active.iter().filter_map(move |c| {
                        let qs = lane.queues.get(c)?;
                        let lane = Lane::from_code(i as u8)?;
                        Some((
                            QueueKey {
                                channel,
                                lane,
                                campaign: *c,
                            },
                            qs.meta.head,
                            qs.meta.tail,
                        ))
                    })
                })
                .collect()
        };
        let mut oldest: Option<u64> = None;
        for (q, head, tail) in heads {
            self.engine.scan(
                Cf::Ready,
                &keys::ready(q, head),
                &keys::ready(q, tail),
                &mut |k, v| {
                    // An unreadable head is quarantined by the next lease.
                    let Ok(item) = decode::<Item>(Cf::Ready, k, v) else {
                        return Ok(true);
                    };
                    oldest = Some(oldest.map_or(item.enqueued_ms, |o| o.min(item.enqueued_ms)));
                    Ok(false)
                },
            )?;
        }
        Ok(oldest)
    }
}

/// Deals `want` leases round-robin, one at a time, across the lane's active
/// campaigns, starting after the cursor. Returns (campaign, share) in
/// dealing order.
fn round_robin(lane: &LaneState, want: usize) -> Vec<(CampaignId, u64)> {
    let order: Vec<CampaignId> = match lane.cursor {
        Some(c) => lane
            .active
            .range((Bound::Excluded(c), Bound::Unbounded))
            .chain(lane.active.range(..=c))
            .copied()
            .collect(),
        None => lane.active.iter().copied().collect(),
    };
    let avail: Vec<u64> = order
        .iter()
        .map(|c| lane.queues.get(c).map_or(0, |q| q.meta.ready))
        .collect();
    let mut shares = vec![0u64; order.len()];
    let mut left = want as u64;
    // Whole rounds first, then one more for the first campaigns in order.
    while left > 0 {
        let open: Vec<usize> = (0..order.len()).filter(|&i| shares[i] < avail[i]).collect();
        if open.is_empty() {
            break;
        }
        let n = open.len() as u64;
        let room = open
            .iter()
            .map(|&i| avail[i] - shares[i])
            .min()
            .unwrap_or(0);
        let rounds = (left / n).min(room);
        if rounds > 0 {
            for &i in &open {
                shares[i] += rounds;
            }
            left -= rounds * n;
        } else {
            for &i in open.iter().take(left as usize) {
                shares[i] += 1;
            }
            left = 0;
        }
    }
    order
        .into_iter()
        .zip(shares)
        .filter(|(_, s)| *s > 0)
        .collect()
}

/// Runs shorter than this are deleted key by key: every range tombstone in
/// the memtable is fragmented again by each new iterator, so thousands of
/// small ones would slow every lease.
const MIN_RANGE_DELETE: u64 = 128;

/// Deletes settled positions: one range per long run of consecutive
/// positions, point deletes for the rest.
fn delete_runs(batch: &mut Batch, q: QueueKey, positions: &[u64]) {
    let mut i = 0;
    while i < positions.len() {
        let start = positions[i];
        let mut end = start + 1;
        while i + 1 < positions.len() && positions[i + 1] == end {
            end += 1;
            i += 1;
        }
        if end - start < MIN_RANGE_DELETE {
            for qseq in start..end {
                batch.delete(Cf::Ready, keys::ready(q, qseq));
            }
        } else {
            batch.delete_range(Cf::Ready, keys::ready(q, start), keys::ready(q, end));
        }
        i += 1;
    }
}
