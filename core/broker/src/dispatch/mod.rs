//! Dispatch: rate-limited, retrying, prioritised fan-out.
//!
//! # Layout
//!
//! - [`campaign`]: what is sent (body with language variants, audience,
//!   lane, channel preference, expiry, start time) and the record kept.
//! - [`audience`]: the audience cursor: explicit stored lists and
//!   generated directories, read page by page.
//! - [`sender`]: each channel's sender (the transports it sends through
//!   are the `crate::channel` module's), a pipeline: lease (highest lane
//!   first, fair across campaigns) → rate (GCRA, SMS segments) → build
//!   (wasm, on a plugin thread) → transport (up to `window` in flight) →
//!   parse (wasm) → settle (wired / retry / fallback / dead).
//! - [`receipts`]: the sink for what webhooks bring: receipts up the
//!   status ladder (fallback when one says failed), inbound kept durably.
//! - [`ratelimit`], [`retry`]: the channel's rate (cut on throttling,
//!   recovered gradually; SMS segments from `mhero_proto::sms`), backoff
//!   with jitter.
//! - [`clock`]: tokio time, so tests run on a paused clock.
//! - [`metrics`]: deliveries, depths, waits, retries, receipts.
//!
//! Data moves: `submit` stores the campaign → the fan-out task expands
//! its audience a page at a time into the channel queues (cursor and
//! deliveries in one batch) while the campaign's queued deliveries stay
//! under `fanout_ahead` → channel tasks lease, send and settle → receipts
//! move settled deliveries up the status ladder.

pub mod audience;
pub mod campaign;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod poll;
pub mod probe;
pub mod ratelimit;
pub mod receipts;
pub mod retry;
pub mod sender;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mhero_proto::{CampaignId, ChannelId, DeliveryStatus, Lane};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use audience::{AudienceCursor, Member};
pub use campaign::{
    Attachment, AudienceSpec, Body, CampaignRecord, CampaignSpec, CampaignState, GeneratedAudience,
    Recipient,
};
pub use clock::TokioClock;
pub use metrics::DispatchMetrics;
pub use retry::RetryPolicy;

use crate::audience::AudienceSource;
use crate::error::{Error, Result};
use crate::plugin::PluginHost;
use crate::store::{NewDelivery, QueueKey, Store};
pub use config::{ChannelConfig, DispatchConfig};

/// A recipient the submission refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Submitted {
    pub id: CampaignId,
    /// Recipients accepted into the audience.
    pub accepted: u32,
    pub rejected: Vec<Rejected>,
    /// A repeat of a submission with the same idempotency key: this is
    /// what the first was answered, and nothing was accepted again.
    pub replayed: bool,
}

/// An idempotency key with a submission: a repeat of the same request (a
/// client retrying after a timeout) is answered what the first one was,
/// and nothing is sent again.
#[derive(Clone, Debug)]
pub struct Once {
    /// Whose keys these are (`api` for clients' `Idempotency-Key`s), so
    /// that keys of one kind never meet another's.
    pub scope: &'static str,
    /// What the client calls the key (`Idempotency-Key` over HTTP), as
    /// refusals name it.
    pub field: &'static str,
    /// The key: 1 to 255 visible ASCII characters.
    pub key: String,
    /// A digest of the request as the client sent it: the same key with
    /// another request is refused.
    pub request: [u8; 32],
}

/// What a submission with a key was answered, kept with its campaign
/// (and purged with it).
#[derive(serde::Serialize, serde::Deserialize)]
struct Answered {
    request: [u8; 32],
    campaign: u64,
    accepted: u32,
    rejected: Vec<(u64, String)>,
}

impl crate::store::Versioned for Answered {
    const VERSION: u8 = 1;
}

impl Answered {
    /// The record kept under the stored key `stored` (`scope:key`).
    fn decode(bytes: &[u8], stored: &str) -> Result<Self> {
        crate::store::decode_value(bytes).map_err(|message| Error::BadRecord {
            cf: "meta",
            key: format!("submission {stored:?}"),
            message,
        })
    }
}

/// A campaign's exact counts, readable while it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub id: String,
    pub name: String,
    pub lane: &'static str,
    pub state: &'static str,
    /// When it was accepted (ms since the Unix epoch).
    pub created_ms: u64,
    pub total: u64,
    /// Recipients expanded into queues so far.
    pub fanned_out: u64,
    /// Ready, leased or waiting for a retry.
    pub queued: u64,
    pub wired: u64,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub failed: u64,
    /// Dead letters (failed, kept with their history, replayable).
    pub dead: u64,
    /// Queued records that could not be read, moved to the store's
    /// quarantine (`mhero status` lists them); never sent.
    pub quarantined: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub retries: u64,
    pub rerouted: u64,
    pub redelivered: u64,
    /// Recipients whose delivery has ended (settled, dead, quarantined,
    /// or never sent because the campaign stopped).
    pub ended: u64,
    /// Every recipient has ended.
    pub done: bool,
}

/// An active campaign in memory.
pub(crate) struct Live {
    pub id: CampaignId,
    pub record: Mutex<CampaignRecord>,
    /// Held from encoding the record to handing its write to the store, so
    /// the store receives the campaign's writes in the order their
    /// contents were taken: a cancel's write can never be followed by an
    /// older copy of the record (a fan-out page encoded before it).
    persist: tokio::sync::Mutex<()>,
    pub stopped: AtomicBool,
    pub audience: Box<dyn AudienceCursor>,
    /// Channel ids in preference order (`None`: not configured here).
    pub routes: Vec<(String, Option<ChannelId>)>,
    pub lane: Lane,
    pub body: Body,
    /// The body's files as connectors take them; `None` without files.
    pub files: Option<Arc<[crate::plugin::bindings::connector_types::Attachment]>>,
    pub expires_at_ms: Option<u64>,
    pub start_at_ms: Option<u64>,
    pub fanned_out: AtomicBool,
}

impl Live {
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn stop_reason(&self, now_ms: u64) -> Option<DeliveryStatus> {
        if self.stopped.load(Ordering::Relaxed) {
            return Some(match self.record.lock().state {
                CampaignState::Expired => DeliveryStatus::Expired,
                _ => DeliveryStatus::Cancelled,
            });
        }
        match self.expires_at_ms {
            Some(t) if now_ms >= t => Some(DeliveryStatus::Expired),
            _ => None,
        }
    }
}

pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub clock: TokioClock,
    pub config: DispatchConfig,
    pub campaigns: RwLock<BTreeMap<CampaignId, Arc<Live>>>,
    /// The campaigns in memory not yet stamped ended: what the expiry
    /// check and the end stamping walk. Ended campaigns stay in memory an
    /// hour, and an integration that makes a campaign per lab result or
    /// reminder ends thousands a minute: a walk of them all on every
    /// pass grew with that hour's traffic.
    pub open: Mutex<BTreeMap<CampaignId, Arc<Live>>>,
    /// The campaigns with recipients left to fan out (and, until the
    /// fan-out's next pass drops them, those that just finished): what
    /// the fan-out walks on each pass.
    pub fanning: Mutex<BTreeMap<CampaignId, Arc<Live>>>,
    /// The ended campaigns in memory, in the order they were stamped: the
    /// oldest leave memory first (see [`evict_ended`]).
    pub resident: Mutex<std::collections::VecDeque<(u64, CampaignId)>>,
    /// Ended campaigns not yet purged, by when they ended: what the
    /// retention pass looks at instead of reading every stored record.
    /// Filled from the records at start, and as campaigns are stamped
    /// ended ([`Shared::note_ended`]); empty when nothing is ever purged.
    pub ended: Mutex<BTreeSet<(u64, CampaignId)>>,
    pub channels: BTreeMap<String, Arc<sender::Channel>>,
    /// Selector audiences (the directory), when the broker has one.
    pub audiences: Option<Arc<dyn AudienceSource>>,
    pub metrics: DispatchMetrics,
    /// New ready work: fan-out, promotions, replays.
    pub work: Notify,
    /// Queues drained: fan-out may expand more.
    pub fanout_wake: Notify,
    /// Idempotency keys whose submission is being accepted.
    pub submitting: Mutex<std::collections::HashSet<String>>,
    /// Inbound messages stored: the inbound pipeline has work.
    pub inbound_arrived: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// A campaign in memory, or brought back from the store: an ended
    /// campaign leaves memory, and is revived when work for it comes back
    /// (a late failed receipt's fallback, a replayed dead letter). That
    /// rare case reads the store where it is asked.
    pub fn campaign(&self, id: CampaignId) -> Option<Arc<Live>> {
        if let Some(live) = self.campaigns.read().get(&id).cloned() {
            return Some(live);
        }
        let bytes = self.store.campaign(id).ok()??;
        let mut record = CampaignRecord::decode(&bytes).ok()?;
        if record.state == CampaignState::Abandoned || record.state == CampaignState::Preparing {
            return None;
        }
        // Ended again once this work ends: stamped anew then.
        record.finished_ms = None;
        let live = live(self, id, record).ok()?;
        Some(self.admit(live))
    }

    /// Puts a campaign in memory (the one already there, if another
    /// thread brought it back first); one not yet ended is also open, and
    /// one with recipients left to fan out is also fanning.
    fn admit(&self, live: Arc<Live>) -> Arc<Live> {
        let live = Arc::clone(self.campaigns.write().entry(live.id).or_insert(live));
        if live.record.lock().finished_ms.is_none() {
            self.open
                .lock()
                .entry(live.id)
                .or_insert_with(|| Arc::clone(&live));
        }
        if !live.fanned_out.load(Ordering::Relaxed) {
            self.fanning
                .lock()
                .entry(live.id)
                .or_insert_with(|| Arc::clone(&live));
        }
        live
    }

    /// The open campaigns (not yet stamped ended) that `keep` selects.
    fn open_where(&self, keep: impl Fn(&Live) -> bool) -> Vec<Arc<Live>> {
        self.open
            .lock()
            .values()
            .filter(|l| keep(l))
            .cloned()
            .collect()
    }

    /// Notes that campaign `id` ended at `t`, for the retention pass; with
    /// `retention_days = 0` nothing is purged, so nothing is noted.
    fn note_ended(&self, t: u64, id: CampaignId) {
        if self.config.retention_days > 0 {
            self.ended.lock().insert((t, id));
        }
    }

    /// The name of the channel with store id `id` (a handful of
    /// channels: a scan).
    pub fn channel_name(&self, id: ChannelId) -> Option<&str> {
        self.channels
            .values()
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }

    /// Brings campaigns that left memory back from the store on a
    /// blocking thread: what async code does before [`Shared::campaign`],
    /// so that it never reads the store on a tokio worker.
    pub async fn revive(self: &Arc<Self>, ids: impl IntoIterator<Item = CampaignId>) {
        let missing: Vec<CampaignId> = {
            let live = self.campaigns.read();
            let mut m: Vec<CampaignId> = ids
                .into_iter()
                .filter(|id| !live.contains_key(id))
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return;
        }
        let shared = Arc::clone(self);
        let revived = tokio::task::spawn_blocking(move || {
            for id in missing {
                let _ = shared.campaign(id);
            }
        })
        .await;
        if let Err(e) = revived {
            tracing::error!(error = %e, "Reviving campaigns from the store failed.");
        }
    }
}

/// One delivery of a campaign, as [`Dispatcher::deliveries`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryView {
    /// Its position in the campaign's audience.
    pub index: u32,
    /// Who it is for; `None` when withheld.
    pub recipient: Option<Recipient>,
    /// Why it is not sent (the contact opted out or left the directory).
    pub withheld: Option<String>,
    /// `Queued` while it waits in a queue (or to be read into one).
    pub status: DeliveryStatus,
    /// Dead-lettered: `Failed`, and can be replayed.
    pub dead: bool,
    /// The channel it went out on (or last tried).
    pub channel: Option<String>,
    pub attempts: u16,
    /// When it left the queue (handed to the gateway, or failed).
    pub sent_ms: Option<u64>,
    /// When its status last changed.
    pub updated_ms: Option<u64>,
    pub reason: Option<String>,
}

/// The running dispatcher: a fan-out task, one task per channel, receipt
/// collection and housekeeping.
pub struct Dispatcher {
    shared: Arc<Shared>,
    sink: Arc<receipts::Sink>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts dispatching on `store` through `channels`, resuming every
    /// campaign the store holds. Must run inside a tokio runtime.
    pub fn start(
        store: Arc<Store>,
        plugins: &PluginHost,
        channels: &BTreeMap<String, ChannelConfig>,
        config: DispatchConfig,
        clock: TokioClock,
        metrics: DispatchMetrics,
        audiences: Option<Arc<dyn AudienceSource>>,
    ) -> Result<Self> {
        let (tx, rx) = watch::channel(false);
        let mut built = BTreeMap::new();
        for (name, c) in channels {
            let id = store.channel(name)?;
            let ch = sender::Channel::new(name, id, c, plugins, clock, &metrics)?;
            // An operator's hold outlives a restart.
            if store
                .engine()
                .get(
                    crate::store::Cf::Meta,
                    &crate::store::keys::channel_held(name),
                )?
                .is_some()
            {
                tracing::warn!(channel = %name, "Channel held by an operator: nothing is sent on it until it is resumed.");
                ch.hold(true);
            }
            built.insert(name.to_string(), Arc::new(ch));
        }
        let shared = Arc::new(Shared {
            store,
            clock,
            config,
            campaigns: RwLock::new(BTreeMap::new()),
            open: Mutex::new(BTreeMap::new()),
            fanning: Mutex::new(BTreeMap::new()),
            resident: Mutex::new(std::collections::VecDeque::new()),
            ended: Mutex::new(BTreeSet::new()),
            channels: built,
            audiences,
            metrics,
            work: Notify::new(),
            fanout_wake: Notify::new(),
            submitting: Mutex::new(std::collections::HashSet::new()),
            inbound_arrived: Arc::new(Notify::new()),
            shutdown: rx,
        });
        resume(&shared)?;
        let mut tasks = Vec::new();
        for ch in shared.channels.values() {
            for _ in 0..ch.workers() {
                tasks.push(tokio::spawn(sender::run(
                    Arc::clone(&shared),
                    Arc::clone(ch),
                )));
            }
        }
        let sink = Arc::new(receipts::Sink::new(Arc::clone(&shared)));
        tasks.push(tokio::spawn(receipts::applier_task(Arc::clone(&sink))));
        tasks.push(tokio::spawn(receipts::retry_held_task(
            Arc::clone(&sink),
            Duration::from_millis(shared.config.receipt_poll_ms),
        )));
        for ch in shared.channels.values() {
            if ch.plugin.answers_status_queries() && ch.config.status_poll_s > 0 {
                tasks.push(tokio::spawn(poll::task(
                    Arc::clone(&shared),
                    Arc::clone(ch),
                    Arc::clone(&sink),
                )));
            }
        }
        tasks.push(tokio::spawn(fan_out_task(Arc::clone(&shared))));
        tasks.push(tokio::spawn(housekeeping(Arc::clone(&shared))));
        Ok(Self {
            shared,
            sink,
            shutdown: tx,
            tasks,
        })
    }

    /// Where the webhook entry point sends receipts and inbound messages.
    /// The name of the channel with store id `id`.
    pub fn channel_name(&self, id: ChannelId) -> Option<&str> {
        self.shared.channel_name(id)
    }

    /// Notified whenever inbound messages have been stored.
    pub fn inbound_arrived(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.inbound_arrived)
    }

    pub fn sink(&self) -> Arc<receipts::Sink> {
        Arc::clone(&self.sink)
    }

    /// The running channels, by name.
    pub fn channels(&self) -> &BTreeMap<String, Arc<sender::Channel>> {
        &self.shared.channels
    }

    /// A watch that turns true when the dispatcher shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shared.shutdown.clone()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// The simulated gateway behind a channel, if it has one.
    pub fn sandbox(&self, channel: &str) -> Option<Arc<crate::channel::SandboxGateway>> {
        self.shared
            .channels
            .get(channel)
            .and_then(|c| c.sandbox.clone())
    }

    /// Accepts a campaign: checks it, stores it, and starts sending at once
    /// (or at its start time). Recipients with invalid numbers, and
    /// recipients named outright whose worker opted out, are left out and
    /// listed, with the reason.
    pub async fn submit(&self, spec: CampaignSpec) -> Result<Submitted> {
        submit(&self.shared, spec, OptOuts::Honour, None).await
    }

    /// [`Self::submit`] under an idempotency key: the first submission
    /// with `once.key` is accepted as usual and its answer kept with the
    /// campaign; a repeat of the same request is answered the same
    /// (`replayed`) and sends nothing; the key with another request is
    /// refused, and so is a repeat while the first is still being
    /// accepted (a conflict: retry it).
    pub async fn submit_once(&self, spec: CampaignSpec, once: Once) -> Result<Submitted> {
        submit_once(&self.shared, spec, once, OptOuts::Honour).await
    }

    /// The campaign a submission under `scope`'s `key` became, while that
    /// campaign is kept (reads the store: call it off the async workers).
    pub fn submitted_as(&self, scope: &str, key: &str) -> Result<Option<CampaignId>> {
        let stored = format!("{scope}:{key}");
        let Some(bytes) = self.shared.store.submission(&stored)? else {
            return Ok(None);
        };
        Ok(Some(CampaignId(
            Answered::decode(&bytes, &stored)?.campaign,
        )))
    }

    /// A handle that submits campaigns, for tasks that outlive a borrow of
    /// the dispatcher (the inbound pipeline's answers).
    pub fn submitter(&self) -> Submitter {
        Submitter(Arc::clone(&self.shared))
    }

    /// Stops a campaign: nothing more of it is sent (within one lease round
    /// of each channel); what is queued settles as cancelled.
    pub async fn cancel(&self, id: CampaignId) -> Result<()> {
        self.stop(id, CampaignState::Cancelled).await
    }

    async fn stop(&self, id: CampaignId, state: CampaignState) -> Result<()> {
        // An ended campaign is read back off the async workers first.
        self.shared.revive([id]).await;
        stop_campaign(&self.shared, id, state).await
    }

    /// The dispatcher's clock (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        crate::store::Clock::now_ms(&self.shared.clock)
    }

    pub fn progress(&self, id: CampaignId) -> Option<Progress> {
        progress(&self.shared, id)
    }

    /// Progress of a campaign in memory (active, or ended within the
    /// hour); never reads the store.
    pub fn live_progress(&self, id: CampaignId) -> Option<Progress> {
        let live = self.shared.campaigns.read().get(&id).cloned()?;
        Some(progress_of(&self.shared, &live))
    }

    /// Progress of every campaign the dispatcher knows.
    pub fn all_progress(&self) -> Vec<Progress> {
        let ids: Vec<CampaignId> = self.shared.campaigns.read().keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| progress(&self.shared, id))
            .collect()
    }

    /// Progress of every stored campaign, newest first, at most `limit`
    /// (reads the store: call it off the async workers).
    pub fn list_progress(&self, limit: usize) -> Result<Vec<Progress>> {
        Ok(self
            .shared
            .store
            .newest_campaigns(limit)?
            .into_iter()
            .filter_map(|id| progress(&self.shared, id))
            .collect())
    }

    /// Deliveries `[from, from + max)` of a campaign: who each is for and
    /// what became of it; `None` for an unknown campaign. Reads the store
    /// (audience, status records, dead letters): call it off the async
    /// workers.
    pub fn deliveries(
        &self,
        id: CampaignId,
        from: u32,
        max: u32,
    ) -> Result<Option<(u32, Vec<DeliveryView>)>> {
        let shared = &self.shared;
        let live = shared.campaigns.read().get(&id).cloned();
        let stored;
        let (total, fanned, state, audience): (u32, u32, CampaignState, &dyn AudienceCursor) =
            match &live {
                Some(l) => {
                    let r = l.record.lock();
                    (r.total, r.cursor, r.state, &*l.audience)
                }
                None => {
                    let Some(bytes) = shared.store.campaign(id)? else {
                        return Ok(None);
                    };
                    let record = CampaignRecord::decode(&bytes)
                        .map_err(|e| Error::Internal(format!("campaign {id}: {e}")))?;
                    if record.state == CampaignState::Preparing {
                        return Ok(None);
                    }
                    stored = cursor(shared, id, &record)?;
                    (record.total, record.cursor, record.state, &*stored)
                }
            };
        let max = max.min(total.saturating_sub(from));
        if max == 0 {
            return Ok(Some((total, Vec::new())));
        }
        let members = audience.page(from, max)?;
        let page = shared.store.delivery_page(id, from, max)?;
        let mut statuses: HashMap<u32, crate::store::StatusRecord> =
            page.statuses.into_iter().collect();
        let mut dead: HashMap<u32, crate::store::DeadLetter> =
            page.dead.into_iter().map(|d| (d.id.index, d)).collect();
        let name = |c: ChannelId| shared.channel_name(c).map(str::to_string);
        let mut out = Vec::with_capacity(members.len());
        for (index, member) in members {
            let (recipient, withheld) = match member {
                Member::Reach(r) => (Some(r), None),
                Member::Withheld(why) => (None, Some(why)),
            };
            let mut view = DeliveryView {
                index,
                recipient,
                withheld,
                status: DeliveryStatus::Queued,
                dead: false,
                channel: None,
                attempts: 0,
                sent_ms: None,
                updated_ms: None,
                reason: None,
            };
            if let Some(s) = statuses.remove(&index) {
                view.status = s.status;
                view.channel = name(s.channel);
                view.attempts = s.attempts;
                view.sent_ms = Some(s.sent_ms);
                view.updated_ms = Some(s.updated_ms);
                view.reason = s.reason;
            } else if let Some(d) = dead.remove(&index) {
                view.status = DeliveryStatus::Failed;
                view.dead = true;
                view.channel = name(d.channel);
                view.attempts = d.item.attempts;
                view.updated_ms = Some(d.dead_ms);
                view.reason = Some(d.reason);
            } else if index >= fanned && state.stops_sending() {
                // Never read from the audience into a queue: stopped first.
                view.status = match state {
                    CampaignState::Expired => DeliveryStatus::Expired,
                    _ => DeliveryStatus::Cancelled,
                };
            }
            out.push(view);
        }
        Ok(Some((total, out)))
    }

    /// Holds a channel (an operator's pause: nothing more is leased on it,
    /// what is on the wire finishes, queued deliveries wait) or resumes
    /// it. Kept in the store, so a restart keeps it held.
    pub async fn hold_channel(&self, name: &str, on: bool) -> Result<()> {
        let ch = self
            .shared
            .channels
            .get(name)
            .ok_or_else(|| Error::NotFound {
                what: "channel",
                id: name.to_string(),
            })?;
        let engine = Arc::clone(self.shared.store.engine());
        let key = crate::store::keys::channel_held(name);
        tokio::task::spawn_blocking(move || {
            let mut batch = crate::store::Batch::new();
            if on {
                batch.put(crate::store::Cf::Meta, key, vec![1]);
            } else {
                batch.delete(crate::store::Cf::Meta, key);
            }
            engine.write(batch)
        })
        .await
        .map_err(|e| Error::Internal(format!("channel hold write failed: {e}")))??;
        ch.hold(on);
        if !on {
            self.shared.work.notify_waiters();
        }
        tracing::info!(channel = %name, held = on, "Channel {}.", if on { "held" } else { "resumed" });
        Ok(())
    }

    /// Puts dead letters back at the tail of their queues with a fresh
    /// attempt count, and wakes the channels; how many went back.
    pub async fn replay_dead(&self, ids: Vec<mhero_proto::DeliveryId>) -> Result<usize> {
        let store = Arc::clone(&self.shared.store);
        let pending = tokio::task::spawn_blocking(move || store.replay_dead(&ids))
            .await
            .map_err(|e| Error::Internal(format!("replaying dead letters failed: {e}")))??;
        let n = pending.await?;
        if n > 0 {
            self.shared.work.notify_waiters();
        }
        Ok(n)
    }

    /// Waits until every listed campaign is done, or the timeout passes.
    pub async fn wait_done(&self, ids: &[CampaignId], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if ids
                .iter()
                .all(|id| self.progress(*id).is_some_and(|p| p.done))
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every task after its current round and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.shared.work.notify_waiters();
        self.shared.fanout_wake.notify_waiters();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// Longest campaign name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest message text, in characters (WhatsApp's limit; an SMS of this
/// length is already 27 segments).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most language variants of one body.
pub const MAX_VARIANTS: usize = 64;
/// Most channels in a campaign's preference order.
pub const MAX_CHANNELS: usize = 8;
/// Most recipients listed explicitly in one submission.
pub const MAX_RECIPIENTS: usize = 1_000_000;

fn validate(shared: &Shared, spec: &CampaignSpec) -> Result<()> {
    let known: Vec<ChannelLimits<'_>> = shared
        .channels
        .iter()
        .map(|(name, ch)| ChannelLimits {
            name,
            max_text_chars: ch.plugin.manifest().capabilities.max_text_chars,
            media: ch.plugin.carries_media(),
        })
        .collect();
    validate_spec(spec, &known)
}

/// What a submitted campaign is checked against for one configured channel.
#[derive(Clone, Copy, Debug)]
pub struct ChannelLimits<'a> {
    pub name: &'a str,
    /// Longest text the channel's connector accepts (characters).
    pub max_text_chars: Option<u32>,
    /// Whether its connector sends files.
    pub media: bool,
}

/// Most files one message carries.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest attachment URL.
pub const MAX_URL_BYTES: usize = 2048;

fn validate_attachments(attachments: &[Attachment]) -> Result<()> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(Error::field_invalid(
            "body.attachments",
            format!("{} files; at most {MAX_ATTACHMENTS}", attachments.len()),
        ));
    }
    for (i, a) in attachments.iter().enumerate() {
        let field = |f: &str| format!("body.attachments[{i}].{f}");
        let url = a.url.trim();
        let scheme_ok = url
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "https" | "http") && !rest.is_empty());
        if !scheme_ok || url.len() > MAX_URL_BYTES || url.chars().any(char::is_whitespace) {
            return Err(Error::field_invalid(
                field("url"),
                format!(
                    "{:?} is not an http(s) URL of at most {MAX_URL_BYTES} bytes the gateway can fetch",
                    a.url.chars().take(80).collect::<String>()
                ),
            ));
        }
        let mime_ok = a.content_type.split_once('/').is_some_and(|(t, sub)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.len() <= 127
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            token(t) && token(sub.split(';').next().unwrap_or(sub).trim())
        });
        if !mime_ok {
            return Err(Error::field_invalid(
                field("content_type"),
                format!(
                    "{:?} is not a MIME type (like \"image/jpeg\")",
                    a.content_type
                ),
            ));
        }
        if let Some(name) = &a.filename
            && (name.trim().is_empty() || name.chars().count() > 255 || name.contains(['/', '\\']))
        {
            return Err(Error::field_invalid(
                field("filename"),
                "must be a file name of 1 to 255 characters, without a path",
            ));
        }
    }
    Ok(())
}

/// Submits campaigns: what [`Dispatcher::submit`] does, from a handle
/// that can be cloned into tasks.
#[derive(Clone)]
pub struct Submitter(Arc<Shared>);

impl Submitter {
    pub async fn submit(&self, spec: CampaignSpec) -> Result<Submitted> {
        submit(&self.0, spec, OptOuts::Honour, None).await
    }

    /// A direct answer to a worker's own message (a keyword's reply): sent
    /// even to a worker who opted out, as the confirmation of that opt-out
    /// (and an answer to HELP) must be.
    pub async fn answer(&self, spec: CampaignSpec) -> Result<Submitted> {
        submit(&self.0, spec, OptOuts::Answering, None).await
    }

    /// [`Submitter::answer`] under an idempotency key, as
    /// [`Dispatcher::submit_once`] takes one.
    pub async fn answer_once(&self, spec: CampaignSpec, once: Once) -> Result<Submitted> {
        submit_once(&self.0, spec, once, OptOuts::Answering).await
    }

    /// [`Dispatcher::submit_once`].
    pub async fn submit_once(&self, spec: CampaignSpec, once: Once) -> Result<Submitted> {
        submit_once(&self.0, spec, once, OptOuts::Honour).await
    }
}

/// Whether a submission leaves out recipients who opted out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OptOuts {
    /// Every campaign: a worker who opted out gets nothing more…
    Honour,
    /// …except the answer to their own message.
    Answering,
}

/// `ok` (what `normalize` kept of `submitted` recipients) without the
/// recipients whose worker opted out, who join `rejected` (kept in the
/// order of the submission). The directory is read off the runtime, and
/// only when someone has opted out.
async fn without_opted_out(
    shared: &Shared,
    submitted: usize,
    ok: Vec<Recipient>,
    mut rejected: Vec<Rejected>,
) -> Result<(Vec<Recipient>, Vec<Rejected>)> {
    let Some(source) = shared.audiences.clone().filter(|s| s.any_opted_out()) else {
        return Ok((ok, rejected));
    };
    let (ok, opted) = tokio::task::spawn_blocking(move || {
        let opted = source.opted_out(&ok);
        (ok, opted)
    })
    .await
    .map_err(|e| Error::Internal(format!("opt-out check failed: {e}")))?;
    let opted = opted?;
    // Where each kept recipient stood in the submission.
    let mut refused = rejected.iter().map(|r| r.index).peekable();
    let positions = (0..submitted).filter(|i| {
        if refused.peek() == Some(i) {
            refused.next();
            false
        } else {
            true
        }
    });
    let mut kept = Vec::with_capacity(ok.len());
    let mut withheld = Vec::new();
    for ((recipient, why), index) in ok.into_iter().zip(opted).zip(positions) {
        match why {
            Some(reason) => withheld.push(Rejected { index, reason }),
            None => kept.push(recipient),
        }
    }
    if !withheld.is_empty() {
        rejected.extend(withheld);
        rejected.sort_by_key(|r| r.index);
    }
    Ok((kept, rejected))
}

/// An idempotency key (as stored: `scope:key`) being accepted; released
/// when dropped.
struct KeyClaim<'a> {
    shared: &'a Shared,
    stored: String,
}

impl<'a> KeyClaim<'a> {
    fn take(shared: &'a Shared, once: &Once) -> Result<Self> {
        let key = &once.key;
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::field_invalid(
                once.field,
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        let stored = format!("{}:{key}", once.scope);
        if !shared.submitting.lock().insert(stored.clone()) {
            return Err(Error::Conflict(format!(
                "a submission with {} {key:?} is being accepted; retry it in a moment",
                once.field
            )));
        }
        Ok(Self { shared, stored })
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        self.shared.submitting.lock().remove(&self.stored);
    }
}

async fn submit_once(
    shared: &Arc<Shared>,
    spec: CampaignSpec,
    once: Once,
    opt_outs: OptOuts,
) -> Result<Submitted> {
    let claim = KeyClaim::take(shared, &once)?;
    let store = Arc::clone(&shared.store);
    let key = claim.stored.clone();
    let earlier = tokio::task::spawn_blocking(move || store.submission(&key))
        .await
        .map_err(|e| Error::Internal(format!("idempotency key read failed: {e}")))??;
    let Some(bytes) = earlier else {
        return submit(shared, spec, opt_outs, Some((&claim.stored, once.request))).await;
    };
    let answered = Answered::decode(&bytes, &claim.stored)?;
    let id = CampaignId(answered.campaign);
    if answered.request != once.request {
        return Err(Error::field_invalid(
            once.field,
            format!(
                "already used for another request (campaign {id}); a new campaign needs a new key"
            ),
        ));
    }
    Ok(Submitted {
        id,
        accepted: answered.accepted,
        rejected: answered
            .rejected
            .into_iter()
            .map(|(index, reason)| Rejected {
                index: index as usize,
                reason,
            })
            .collect(),
        replayed: true,
    })
}

async fn submit(
    shared: &Arc<Shared>,
    mut spec: CampaignSpec,
    opt_outs: OptOuts,
    once: Option<(&str, [u8; 32])>,
) -> Result<Submitted> {
    // A channel named twice is tried once, at its first place.
    let mut seen = std::collections::BTreeSet::new();
    spec.channels.retain(|c| seen.insert(c.clone()));
    validate(shared, &spec)?;
    let now = crate::store::Clock::now_ms(&shared.clock);
    let (audience_spec, recipients, rejected) = match &spec.audience {
        AudienceSpec::Recipients(list) => {
            let (ok, rejected) = normalize(list, &shared.config.default_country);
            let (ok, rejected) = match opt_outs {
                OptOuts::Honour => without_opted_out(shared, list.len(), ok, rejected).await?,
                OptOuts::Answering => (ok, rejected),
            };
            if ok.is_empty() {
                return Err(Error::field_invalid(
                    "audience",
                    format!(
                        "no valid recipient among {} (first problem: {})",
                        list.len(),
                        rejected
                            .first()
                            .map_or("the list is empty".to_string(), |r| format!(
                                "#{}: {}",
                                r.index, r.reason
                            ))
                    ),
                ));
            }
            (
                AudienceSpec::Stored {
                    count: ok.len() as u32,
                },
                ok,
                rejected,
            )
        }
        AudienceSpec::Generated(g) => (AudienceSpec::Generated(g.clone()), Vec::new(), Vec::new()),
        AudienceSpec::Selector(selector) => {
            let Some(source) = &shared.audiences else {
                return Err(Error::field_invalid(
                    "audience.selector",
                    "this broker has no directory to select from",
                ));
            };
            source.check(selector)?;
            // Counted when it is frozen, below.
            (
                AudienceSpec::Frozen {
                    selector: selector.clone(),
                    count: 0,
                },
                Vec::new(),
                Vec::new(),
            )
        }
        AudienceSpec::Stored { .. } | AudienceSpec::Frozen { .. } => {
            return Err(Error::field_invalid(
                "audience",
                "give recipients, a selector or a generated audience",
            ));
        }
    };
    let total = match &audience_spec {
        AudienceSpec::Stored { count } | AudienceSpec::Frozen { count, .. } => *count,
        AudienceSpec::Generated(g) => g.count,
        AudienceSpec::Recipients(_) | AudienceSpec::Selector(_) => {
            unreachable!("replaced above")
        }
    };
    let mut stored_spec = spec.clone();
    stored_spec.audience = audience_spec;
    let mut record = CampaignRecord {
        spec: stored_spec,
        state: CampaignState::Preparing,
        total,
        cursor: 0,
        created_ms: now,
        stopped_ms: None,
        finished_ms: None,
        answers: opt_outs == OptOuts::Answering,
    };
    // The record (`preparing`), its audience, then the record again
    // (`sending`) are submitted in order and only the last commit is
    // waited for: it implies the others, and a small campaign (one lab
    // result, a survey's next question) costs one commit round, not
    // three. A crash before the last leaves a `preparing` campaign,
    // never sent.
    let (id, _created) = shared.store.create_campaign(record.encode()).split();
    for (chunk_no, chunk) in recipients.chunks(10_000).enumerate() {
        let encoded = chunk.iter().map(audience::encode).collect();
        let written = shared
            .store
            .put_audience(id, (chunk_no * 10_000) as u32, encoded);
        // Past the first chunk, wait: a big audience is not held in the
        // writer's queue all at once.
        if chunk_no > 0 {
            written.await?;
        }
    }
    if let (AudienceSpec::Frozen { selector, .. }, Some(source)) =
        (&record.spec.audience, &shared.audiences)
    {
        // Evaluated and written on a blocking thread; the campaign
        // stays `preparing` (never sent, abandoned after a crash)
        // until its audience is kept. One that selects nobody is
        // removed there too (the purge reads the store and waits for
        // its commit).
        let source = Arc::clone(source);
        let store = Arc::clone(&shared.store);
        let selector = selector.clone();
        let count = tokio::task::spawn_blocking(move || {
            let count = source.freeze(id, &selector)?;
            if count == 0 {
                store.purge_campaign(id)?;
            }
            Ok::<_, Error>(count)
        })
        .await
        .map_err(|e| Error::Internal(format!("freezing the audience failed: {e}")))??;
        if count == 0 {
            return Err(Error::field_invalid(
                "audience.selector",
                "it selects no contact (opted-out and inactive contacts are never selected)",
            ));
        }
        record.total = count;
        if let AudienceSpec::Frozen { count: c, .. } = &mut record.spec.audience {
            *c = count;
        }
    }
    let total = record.total;
    record.state = if spec.start_at_ms.is_some_and(|t| t > now) {
        CampaignState::Scheduled
    } else {
        CampaignState::Sending
    };
    match once {
        Some((key, request)) => {
            let answer = crate::store::encode(&Answered {
                request,
                campaign: id.0,
                accepted: total,
                rejected: rejected
                    .iter()
                    .map(|r| (r.index as u64, r.reason.clone()))
                    .collect(),
            });
            shared
                .store
                .accept_submission(id, record.encode(), key, answer)
                .await?;
        }
        None => shared.store.update_campaign(id, record.encode()).await?,
    }
    shared.admit(live(shared, id, record)?);
    shared.fanout_wake.notify_one();
    tracing::info!(campaign = %id, lane = %spec.lane, recipients = total, rejected = rejected.len(), "Campaign accepted.");
    Ok(Submitted {
        id,
        accepted: total,
        rejected,
        replayed: false,
    })
}

/// Checks a submitted campaign against the limits and the configured
/// channels; the error names the field.
pub fn validate_spec(spec: &CampaignSpec, channels: &[ChannelLimits<'_>]) -> Result<()> {
    if spec.name.trim().is_empty() {
        return Err(Error::field_invalid("name", "must not be empty"));
    }
    if spec.name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::field_invalid(
            "name",
            format!("longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    validate_attachments(&spec.body.attachments)?;
    // With files, the text is their caption and may be empty.
    let captions = !spec.body.attachments.is_empty();
    let text = |key: &str, t: &str| {
        if t.trim().is_empty() && !captions {
            return Err(Error::field_invalid(key, "must not be empty"));
        }
        if t.chars().count() > MAX_TEXT_CHARS {
            return Err(Error::field_invalid(
                key,
                format!("longer than {MAX_TEXT_CHARS} characters"),
            ));
        }
        Ok(())
    };
    text("body.default", &spec.body.default)?;
    if spec.body.variants.len() > MAX_VARIANTS {
        return Err(Error::field_invalid(
            "body.variants",
            format!(
                "{} languages; at most {MAX_VARIANTS}",
                spec.body.variants.len()
            ),
        ));
    }
    for (lang, t) in &spec.body.variants {
        let tag_ok = !lang.is_empty()
            && lang.len() <= 35
            && lang.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !tag_ok {
            return Err(Error::field_invalid(
                "body.variants",
                format!("{lang:?} is not a language tag (like \"fr\" or \"pt-BR\")"),
            ));
        }
        text(&format!("body.variants.{lang}"), t)?;
    }
    if spec.channels.is_empty() {
        return Err(Error::field_invalid(
            "channels",
            "must name at least one channel",
        ));
    }
    if spec.channels.len() > MAX_CHANNELS {
        return Err(Error::field_invalid(
            "channels",
            format!("{} channels; at most {MAX_CHANNELS}", spec.channels.len()),
        ));
    }
    if let AudienceSpec::Recipients(list) = &spec.audience
        && list.len() > MAX_RECIPIENTS
    {
        return Err(Error::field_invalid(
            "audience",
            format!(
                "{} recipients; at most {MAX_RECIPIENTS} in one submission",
                list.len()
            ),
        ));
    }
    let mut media = false;
    for c in &spec.channels {
        let Some(limits) = channels.iter().find(|l| l.name == c) else {
            let names: Vec<&str> = channels.iter().map(|l| l.name).collect();
            return Err(Error::field_invalid(
                "channels",
                format!("unknown channel {c:?} (configured: {})", names.join(", ")),
            ));
        };
        media |= limits.media;
        // A text the channel's gateway cannot take fails on every attempt:
        // refused now, naming the text and the channel.
        if let Some(max) = limits.max_text_chars {
            let texts = std::iter::once(("body.default".to_string(), &spec.body.default)).chain(
                spec.body
                    .variants
                    .iter()
                    .map(|(lang, t)| (format!("body.variants.{lang}"), t)),
            );
            for (field, text) in texts {
                let n = text.chars().count();
                if n > max as usize {
                    return Err(Error::field_invalid(
                        field,
                        format!("{n} characters; channel {c} accepts at most {max}"),
                    ));
                }
            }
        }
    }
    // Files no channel can carry would fail for every recipient.
    if captions && !media {
        return Err(Error::field_invalid(
            "body.attachments",
            format!(
                "none of the channels {} carries media (WhatsApp, Telegram and Twilio connectors do)",
                spec.channels.join(", ")
            ),
        ));
    }
    if let (Some(start), Some(end)) = (spec.start_at_ms, spec.expires_at_ms)
        && end <= start
    {
        return Err(Error::field_invalid(
            "expires_at_ms",
            "must be after start_at_ms",
        ));
    }
    if let AudienceSpec::Generated(g) = &spec.audience
        && g.count == 0
    {
        return Err(Error::field_invalid(
            "audience.generated.count",
            "must be > 0",
        ));
    }
    Ok(())
}

/// Builds the phone-number metadata `normalize` uses, which is otherwise
/// built by the first number it parses.
pub fn load_number_metadata() {
    let _ = phonenumber::parse(None, "+231770000000");
}

/// E.164-normalises phone numbers with the default country; refuses what
/// does not parse or has no address at all.
pub fn normalize(list: &[Recipient], country: &str) -> (Vec<Recipient>, Vec<Rejected>) {
    let region = country.parse::<phonenumber::country::Id>().ok();
    let mut ok = Vec::with_capacity(list.len());
    let mut rejected = Vec::new();
    for (index, r) in list.iter().enumerate() {
        let mut r = r.clone();
        if let Some(raw) = &r.phone {
            match crate::phone::e164(raw, region) {
                Ok(number) => r.phone = Some(number),
                Err(reason) => {
                    rejected.push(Rejected { index, reason });
                    continue;
                }
            }
        } else if r.addresses.is_empty() {
            rejected.push(Rejected {
                index,
                reason: "no phone number and no channel address".into(),
            });
            continue;
        }
        match normalize_addresses(&mut r.addresses, region) {
            Ok(()) => ok.push(r),
            Err(reason) => rejected.push(Rejected { index, reason }),
        }
    }
    (ok, rejected)
}

/// Longest channel address accepted (bytes).
const MAX_ADDRESS_BYTES: usize = 256;

/// Checks a recipient's per-channel addresses: an address written as an
/// international number (`+…`) is validated and normalised like a phone
/// number; any other (a Telegram chat id, a Messenger page-scoped id) is
/// an opaque id: not empty, not over 256 bytes, no control characters.
fn normalize_addresses(
    addresses: &mut BTreeMap<String, String>,
    region: Option<phonenumber::country::Id>,
) -> std::result::Result<(), String> {
    for (channel, address) in addresses.iter_mut() {
        let trimmed = address.trim();
        if trimmed.is_empty() {
            return Err(format!("the address for {channel} is empty"));
        }
        if trimmed.len() > MAX_ADDRESS_BYTES {
            return Err(format!(
                "the address for {channel} is longer than {MAX_ADDRESS_BYTES} bytes"
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(format!(
                "the address for {channel} contains control characters"
            ));
        }
        if trimmed.starts_with('+') {
            *address = crate::phone::e164(trimmed, region).map_err(|_| {
                format!("the address for {channel}, {trimmed:?}, is not a valid phone number")
            })?;
            continue;
        }
        *address = trimmed.to_string();
    }
    Ok(())
}

/// The cursor over a stored campaign's audience.
fn cursor(
    shared: &Shared,
    id: CampaignId,
    record: &CampaignRecord,
) -> Result<Box<dyn AudienceCursor>> {
    Ok(match &record.spec.audience {
        AudienceSpec::Stored { count } => Box::new(audience::StoredAudience {
            store: Arc::clone(&shared.store),
            campaign: id,
            count: *count,
            // Named recipients are checked when the campaign is accepted,
            // and again as they fan out: a list fans out only so far ahead
            // of what its channels send, so a big one behind a rate limit
            // takes hours. Answers reach a worker who opted out.
            opt_outs: if record.answers {
                None
            } else {
                shared.audiences.clone()
            },
        }),
        AudienceSpec::Generated(g) => Box::new(g.clone()),
        AudienceSpec::Frozen { .. } => match &shared.audiences {
            Some(source) => source.frozen(id)?,
            None => {
                return Err(Error::Invalid(format!(
                    "campaign {id}: its audience is a directory selection, and this broker has no directory"
                )));
            }
        },
        AudienceSpec::Recipients(_) | AudienceSpec::Selector(_) => {
            return Err(Error::Invalid(format!(
                "campaign {id}: its record holds an unstored audience"
            )));
        }
    })
}

fn live(shared: &Shared, id: CampaignId, record: CampaignRecord) -> Result<Arc<Live>> {
    let audience = cursor(shared, id, &record)?;
    let spec = &record.spec;
    let routes = spec
        .channels
        .iter()
        .map(|c| (c.clone(), shared.channels.get(c).map(|ch| ch.id)))
        .collect();
    let stopped = record.state.stops_sending();
    let fanned_out = record.cursor >= record.total;
    Ok(Arc::new(Live {
        id,
        persist: tokio::sync::Mutex::new(()),
        lane: spec.lane,
        body: spec.body.clone(),
        files: (!spec.body.attachments.is_empty()).then(|| {
            spec.body
                .attachments
                .iter()
                .map(|a| crate::plugin::bindings::connector_types::Attachment {
                    url: a.url.trim().to_string(),
                    content_type: a.content_type.clone(),
                    filename: a.filename.clone(),
                })
                .collect()
        }),
        expires_at_ms: spec.expires_at_ms,
        start_at_ms: spec.start_at_ms,
        routes,
        audience,
        stopped: AtomicBool::new(stopped),
        fanned_out: AtomicBool::new(fanned_out || stopped),
        record: Mutex::new(record),
    }))
}

/// Loads every campaign the store holds.
fn resume(shared: &Shared) -> Result<()> {
    let mut resumed = 0;
    let mut ended = Vec::new();
    for (id, bytes) in shared.store.campaigns()? {
        // An unreadable record stops nothing but itself: it is moved to the
        // quarantine, and what was queued for it settles as dead letters.
        let mut record = match CampaignRecord::decode(&bytes) {
            Ok(r) => r,
            Err(reason) => {
                shared
                    .store
                    .quarantine_campaign(id, &bytes, reason)
                    .wait()?;
                continue;
            }
        };
        if record.state == CampaignState::Preparing {
            // Its submission never completed, so nobody was told it was
            // accepted: it is dropped, not sent.
            tracing::warn!(campaign = %id, "Campaign submission did not complete before the last stop; it is abandoned.");
            record.state = CampaignState::Abandoned;
            shared.store.update_campaign(id, record.encode()).wait()?;
        }
        if let Some(t) = ended_at(&record) {
            shared.note_ended(t, id);
        }
        if record.state == CampaignState::Abandoned {
            continue;
        }
        // Long ended: read from the store when asked, not kept in memory.
        let now = crate::store::Clock::now_ms(&shared.clock);
        if ended_at(&record).is_some_and(|t| now.saturating_sub(t) >= EVICT_AFTER_MS) {
            continue;
        }
        let live = match live(shared, id, record) {
            Ok(live) => live,
            Err(e) => {
                shared
                    .store
                    .quarantine_campaign(id, &bytes, e.to_string())
                    .wait()?;
                continue;
            }
        };
        if !done(shared, &live) {
            resumed += 1;
        }
        if let Some(t) = live.record.lock().finished_ms {
            ended.push((t, id));
        }
        shared.admit(live);
    }
    if resumed > 0 {
        tracing::info!(campaigns = resumed, "Resuming campaigns.");
    }
    ended.sort_unstable();
    shared.resident.lock().extend(ended);
    evict_ended(shared, crate::store::Clock::now_ms(&shared.clock));
    Ok(())
}

async fn stop_campaign(shared: &Shared, id: CampaignId, state: CampaignState) -> Result<()> {
    let Some(live) = shared.campaign(id) else {
        return Err(Error::NotFound {
            what: "campaign",
            id: id.to_string(),
        });
    };
    {
        // In memory at once: channels stop sending it from their next round.
        let mut record = live.record.lock();
        if record.state.stops_sending() {
            return Ok(());
        }
        record.state = state;
        record.stopped_ms = Some(crate::store::Clock::now_ms(&shared.clock));
        live.stopped.store(true, Ordering::Relaxed);
        live.fanned_out.store(true, Ordering::Relaxed);
    }
    // On disk after any fan-out page already encoded: that page's copy of
    // the record goes to the store first, this one last.
    let written = {
        let _order = live.persist.lock().await;
        let bytes = live.record.lock().encode();
        shared.store.update_campaign(id, bytes)
    };
    written.await?;
    tracing::info!(campaign = %id, state = ?state, "Campaign stopped.");
    shared.work.notify_waiters();
    Ok(())
}

/// A campaign's progress: from memory while it is active, else from its
/// stored record (an ended campaign leaves memory an hour after it ended,
/// or sooner when many more ended since: see [`evict_ended`]).
fn progress(shared: &Shared, id: CampaignId) -> Option<Progress> {
    let in_memory = shared.campaigns.read().get(&id).cloned();
    if let Some(live) = in_memory {
        return Some(progress_of(shared, &live));
    }
    let bytes = shared.store.campaign(id).ok()??;
    let record = CampaignRecord::decode(&bytes).ok()?;
    Some(progress_from(
        id,
        record.spec.lane,
        &record,
        &shared.store.counters(id),
    ))
}

fn progress_of(shared: &Shared, live: &Live) -> Progress {
    let k = shared.store.counters(live.id);
    let record = live.record.lock();
    progress_from(live.id, live.lane, &record, &k)
}

fn progress_from(
    id: CampaignId,
    lane: Lane,
    record: &CampaignRecord,
    k: &crate::store::Counters,
) -> Progress {
    let unsent = u64::from(record.unsent());
    let cancelled_unsent = if record.state == CampaignState::Cancelled {
        unsent
    } else {
        0
    };
    let expired_unsent = if record.state == CampaignState::Expired {
        unsent
    } else {
        0
    };
    let s = |st| k.status(st);
    let p = Progress {
        id: id.to_string(),
        name: record.spec.name.clone(),
        lane: lane.as_str(),
        state: record.state.as_str(),
        created_ms: record.created_ms,
        total: u64::from(record.total),
        fanned_out: u64::from(record.cursor),
        queued: k.queued(),
        wired: s(DeliveryStatus::Wired),
        sent: s(DeliveryStatus::Sent),
        delivered: s(DeliveryStatus::Delivered),
        read: s(DeliveryStatus::Read),
        failed: s(DeliveryStatus::Failed),
        dead: k.dead,
        quarantined: k.quarantined,
        expired: s(DeliveryStatus::Expired) + expired_unsent,
        cancelled: s(DeliveryStatus::Cancelled) + cancelled_unsent,
        retries: k.retries,
        rerouted: k.rerouted,
        redelivered: k.redelivered,
        ended: 0,
        done: false,
    };
    let ended = ended_count(record, k);
    Progress {
        ended,
        done: is_done(record, k),
        ..p
    }
}

/// Recipients that ended: settled, dead, quarantined, or never to be sent
/// (a stopped campaign's unsent).
fn ended_count(record: &CampaignRecord, k: &crate::store::Counters) -> u64 {
    k.settled() + k.dead + k.quarantined + u64::from(record.unsent())
}

fn is_done(record: &CampaignRecord, k: &crate::store::Counters) -> bool {
    ended_count(record, k) >= u64::from(record.total) && k.queued() == 0
}

/// [`Progress::done`] of a campaign in memory, without building the rest
/// of its progress: what the passes over many campaigns ask.
fn done(shared: &Shared, live: &Live) -> bool {
    let k = shared.store.counters(live.id);
    is_done(&live.record.lock(), &k)
}

/// Expands audiences into channel queues, a page at a time, while each
/// campaign's queued deliveries stay under `fanout_ahead`.
async fn fan_out_task(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        if crate::stop::stopping(&shutdown) {
            return;
        }
        let active: Vec<Arc<Live>> = {
            let mut fanning = shared.fanning.lock();
            fanning.retain(|_, l| !l.fanned_out.load(Ordering::Relaxed));
            fanning.values().cloned().collect()
        };
        // Campaigns' pages are read a page's worth of recipients at a time
        // (many small campaigns in one trip to a blocking thread, a big
        // one's page alone), submitted one after another, and their
        // commits waited for together: many small campaigns (survey
        // questions, lab results, answers) share a read and a commit round
        // instead of waiting one each, and big ones still go a page at a
        // time.
        let page = u64::from(shared.config.fanout_page);
        let mut pass = FanOutPass::default();
        let mut due: Vec<Due<'_>> = Vec::new();
        let mut planned = 0u64;
        for live in &active {
            match fan_out_due(&shared, live).await {
                Ok(Some(d)) => {
                    let n = u64::from(d.total - d.cursor).min(page);
                    if !due.is_empty() && planned + n > page {
                        pass.step(&shared, std::mem::take(&mut due)).await;
                        planned = 0;
                    }
                    planned += n;
                    due.push(d);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(campaign = %live.id, error = %e, "Fan-out failed; retrying shortly.");
                }
            }
        }
        pass.step(&shared, due).await;
        committed(pass.written).await;
        if pass.progressed {
            shared.work.notify_waiters();
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = shared.fanout_wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(shared.config.tick_ms)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// One pass of the fan-out over the active campaigns: the pages written
/// and not yet waited for.
#[derive(Default)]
struct FanOutPass {
    written: Vec<(Arc<Live>, crate::store::Pending<()>, bool)>,
    in_flight: u64,
    progressed: bool,
}

impl FanOutPass {
    /// Reads the pages of `due` in one trip to a blocking thread (a stored
    /// audience is read from the store) and submits each campaign's write;
    /// waits for the commits once [`FANOUT_WINDOW`] recipients are in
    /// flight.
    async fn step(&mut self, shared: &Shared, due: Vec<Due<'_>>) {
        if due.is_empty() {
            return;
        }
        let size = shared.config.fanout_page;
        let reads: Vec<(Arc<Live>, u32)> =
            due.iter().map(|d| (Arc::clone(d.live), d.cursor)).collect();
        let pages = tokio::task::spawn_blocking(move || {
            reads
                .into_iter()
                .map(|(live, cursor)| live.audience.page(cursor, size))
                .collect::<Vec<_>>()
        })
        .await;
        let pages = match pages {
            Ok(pages) => pages,
            Err(e) => {
                for d in &due {
                    tracing::error!(campaign = %d.live.id, error = %e, "Fan-out read failed; retrying shortly.");
                }
                return;
            }
        };
        for (d, page) in due.into_iter().zip(pages) {
            let live = Arc::clone(d.live);
            match page {
                Ok(page) => {
                    let (pending, last, n) = fan_out_write(shared, d, page);
                    self.progressed = true;
                    self.written.push((live, pending, last));
                    self.in_flight += n;
                }
                Err(e) => {
                    tracing::error!(campaign = %live.id, error = %e, "Fan-out failed; retrying shortly.");
                }
            }
            if self.in_flight >= FANOUT_WINDOW {
                committed(std::mem::take(&mut self.written)).await;
                self.in_flight = 0;
            }
        }
    }
}

/// Recipients whose fan-out commits are waited for together: small
/// campaigns share a commit round; a campaign of a few hundred or more
/// waits for its own, which measured faster for them (the sender drains
/// one campaign's queue while the next is written).
const FANOUT_WINDOW: u64 = 200;

/// Waits for fan-out pages' commits; a campaign whose last page is
/// committed is fanned out.
async fn committed(written: Vec<(Arc<Live>, crate::store::Pending<()>, bool)>) {
    for (live, pending, last) in written {
        match pending.await {
            Ok(()) if last => live.fanned_out.store(true, Ordering::Relaxed),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(campaign = %live.id, error = %e, "Fan-out failed; retrying shortly.");
            }
        }
    }
}

/// A campaign whose next fan-out page is due: its write order held (see
/// `Live::persist`) until the page's write is with the store.
struct Due<'a> {
    live: &'a Arc<Live>,
    order: tokio::sync::MutexGuard<'a, ()>,
    cursor: u32,
    total: u32,
}

/// Whether `live` has a fan-out page due now (not stopped, started, not
/// expired, not too far ahead of its sending); `None` when not.
async fn fan_out_due<'a>(shared: &Shared, live: &'a Arc<Live>) -> Result<Option<Due<'a>>> {
    let now = crate::store::Clock::now_ms(&shared.clock);
    // Held until the page's write is with the store (see `Live::persist`).
    let order = live.persist.lock().await;
    if live.stopped.load(Ordering::Relaxed) {
        return Ok(None);
    }
    if live.start_at_ms.is_some_and(|t| now < t) {
        return Ok(None);
    }
    if live.expires_at_ms.is_some_and(|t| now >= t) {
        drop(order);
        stop_campaign(shared, live.id, CampaignState::Expired).await?;
        return Ok(None);
    }
    let k = shared.store.counters(live.id);
    if k.queued() >= shared.config.fanout_ahead {
        return Ok(None);
    }
    let (cursor, total) = {
        let r = live.record.lock();
        (r.cursor, r.total)
    };
    if cursor >= total {
        live.fanned_out.store(true, Ordering::Relaxed);
        return Ok(None);
    }
    Ok(Some(Due {
        live,
        order,
        cursor,
        total,
    }))
}

/// Submits one campaign's page: its write, whether it was the last page,
/// and how many recipients it took.
fn fan_out_write(
    shared: &Shared,
    due: Due<'_>,
    page: Vec<(u32, Member)>,
) -> (crate::store::Pending<()>, bool, u64) {
    let Due {
        live, order, total, ..
    } = due;
    let next = page.last().map_or(total, |(i, _)| i + 1);
    let taken = page.len() as u64;
    let mut queues: HashMap<ChannelId, Vec<NewDelivery>> = HashMap::new();
    let mut unreachable = Vec::new();
    for (index, member) in page {
        let recipient = match member {
            Member::Reach(recipient) => recipient,
            Member::Withheld(why) => {
                unreachable.push((index, why));
                continue;
            }
        };
        match route(live, &recipient, 0) {
            Some((channel, route_no, address)) => {
                queues.entry(channel).or_default().push(NewDelivery {
                    index,
                    recipient: address,
                    route: route_no,
                    language: recipient.language.clone(),
                })
            }
            None => unreachable.push((index, no_route_reason(live))),
        }
    }
    let bytes = {
        let mut r = live.record.lock();
        r.cursor = next;
        if r.state == CampaignState::Scheduled {
            r.state = CampaignState::Sending;
        }
        r.encode()
    };
    let queues = queues
        .into_iter()
        .map(|(channel, items)| {
            (
                QueueKey {
                    channel,
                    lane: live.lane,
                    campaign: live.id,
                },
                items,
            )
        })
        .collect();
    let written = shared.store.fan_out(live.id, bytes, queues, unreachable);
    drop(order);
    (written, next >= total, taken)
}

/// The first channel from preference position `from` on which the
/// recipient has an address: (channel, position, address).
pub(crate) fn route(
    live: &Live,
    recipient: &Recipient,
    from: usize,
) -> Option<(ChannelId, u8, String)> {
    live.routes
        .iter()
        .enumerate()
        .skip(from)
        .find_map(|(i, (name, id))| {
            let id = (*id)?;
            recipient
                .address(name)
                .map(|a| (id, i as u8, a.to_string()))
        })
}

fn no_route_reason(live: &Live) -> String {
    let names: Vec<&str> = live.routes.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "no address on any of the campaign's channels ({})",
        names.join(", ")
    )
}

/// Due retries, expiry, gauges.
async fn housekeeping(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut last_gauges = tokio::time::Instant::now();
    let mut last_retention = tokio::time::Instant::now();
    // A retention pass reads the records of the campaigns it purges and
    // may scan the receipt index: it runs beside this loop, so retries
    // and expiry are not held up behind it, and one at a time.
    let mut purging: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if !crate::stop::tick(&mut shutdown, Duration::from_millis(shared.config.tick_ms)).await {
            if let Some(pass) = purging
                && let Err(e) = pass.await
            {
                tracing::error!(error = %e, "Purge task failed.");
            }
            return;
        }
        // A promotion scans the delayed queue and waits for a commit: on a
        // blocking thread, and only when something is due.
        if shared.store.has_due() {
            let store = Arc::clone(&shared.store);
            match tokio::task::spawn_blocking(move || store.promote_due()).await {
                Ok(Ok(n)) if n > 0 => shared.work.notify_waiters(),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "Promoting due retries failed."),
                Err(e) => tracing::error!(error = %e, "Promotion task failed."),
            }
        }
        let now = crate::store::Clock::now_ms(&shared.clock);
        // A campaign that ended (every recipient settled) has nothing left
        // to expire; its state stays as it ended.
        let expiring = shared.open_where(|l| {
            !l.stopped.load(Ordering::Relaxed) && l.expires_at_ms.is_some_and(|t| now >= t)
        });
        for live in expiring {
            let id = live.id;
            if let Err(e) = stop_campaign(&shared, id, CampaignState::Expired).await {
                tracing::error!(campaign = %id, error = %e, "Cannot expire campaign.");
            }
            shared.work.notify_waiters();
        }
        if last_gauges.elapsed() >= Duration::from_secs(1) {
            last_gauges = tokio::time::Instant::now();
            // The oldest-ready scan reads the store.
            let s = Arc::clone(&shared);
            let _ = tokio::task::spawn_blocking(move || update_gauges(&s, now)).await;
            mark_finished(&shared, now).await;
            evict_ended(&shared, now);
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            last_retention = tokio::time::Instant::now();
            if let Some(pass) = purging.take_if(|p| p.is_finished())
                && let Err(e) = pass.await
            {
                tracing::error!(error = %e, "Purge task failed.");
            }
            if purging.is_none() {
                let s = Arc::clone(&shared);
                purging = Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = purge_expired(&s, now) {
                        tracing::error!(error = %e, "Purging ended campaigns failed.");
                    }
                }));
            }
        }
    }
}

/// How often ended campaigns are evicted from memory and purged.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// An ended campaign leaves memory this long after it ended (its progress
/// is then read from the store).
const EVICT_AFTER_MS: u64 = 3_600_000;

/// Stamps campaigns whose every recipient has ended: retention counts
/// from then.
async fn mark_finished(shared: &Shared, now: u64) {
    // Every stamp is handed to the store, then all are waited for: they
    // share commit rounds (a server taking thousands of campaigns a
    // second ends thousands a second).
    let mut stamps = Vec::new();
    for live in shared.open_where(|_| true) {
        if !done(shared, &live) {
            continue;
        }
        let written = {
            let _order = live.persist.lock().await;
            let bytes = {
                let mut record = live.record.lock();
                record.finished_ms = Some(now);
                record.encode()
            };
            shared.store.update_campaign(live.id, bytes)
        };
        stamps.push((live, written));
    }
    for (live, written) in stamps {
        match written.await {
            Ok(()) => {
                shared.open.lock().remove(&live.id);
                shared.resident.lock().push_back((now, live.id));
                shared.note_ended(now, live.id);
            }
            Err(e) => {
                // Stamped again at the next pass.
                live.record.lock().finished_ms = None;
                tracing::error!(campaign = %live.id, error = %e, "Cannot record that the campaign ended.")
            }
        }
    }
}

/// Drops ended campaigns from memory, oldest first, once more than
/// `ended_in_memory` are there or an hour after they ended (unless work
/// for them came back since): memory stays bounded however many
/// campaigns a day brings (a campaign per lab result or reminder).
fn evict_ended(shared: &Shared, now: u64) {
    let max = shared.config.ended_in_memory;
    let mut gone = Vec::new();
    let mut busy = Vec::new();
    let mut resident = shared.resident.lock();
    while let Some(&(t, id)) = resident.front() {
        // Those with work again still count against the bound.
        if resident.len() + busy.len() <= max && now.saturating_sub(t) < EVICT_AFTER_MS {
            break;
        }
        resident.pop_front();
        let Some(live) = shared.campaigns.read().get(&id).cloned() else {
            continue;
        };
        // Stamped anew since (brought back for work, ended again): that
        // stamp has its own place in the line.
        if live.record.lock().finished_ms != Some(t) {
            continue;
        }
        if done(shared, &live) {
            gone.push(id);
        } else {
            // Work came back for it (a late failure's fallback): it stays
            // until that work ends.
            busy.push((t, id));
        }
    }
    resident.extend(busy);
    drop(resident);
    let mut campaigns = shared.campaigns.write();
    for id in gone {
        campaigns.remove(&id);
    }
}

/// When a stored campaign ended, if it did (an abandoned submission ended
/// when it was made).
fn ended_at(record: &CampaignRecord) -> Option<u64> {
    match record.state {
        CampaignState::Abandoned => Some(record.created_ms),
        _ => record.finished_ms,
    }
}

/// Purges campaigns that ended more than `retention_days` ago (on a
/// blocking thread: it reads the store). They are found in
/// [`Shared::ended`], so a pass reads only their records, however many
/// campaigns the store keeps. Campaigns go in groups, each
/// removed in one commit of up to [`PURGE_GROUP`] deliveries (a bigger
/// campaign alone): many small campaigns take few commits, and one commit
/// stays bounded.
fn purge_expired(shared: &Shared, now: u64) -> Result<()> {
    let days = shared.config.retention_days;
    if days == 0 {
        return Ok(());
    }
    let Some(cutoff) = now.checked_sub(u64::from(days) * 86_400_000) else {
        return Ok(());
    };
    // Those that ended at or before the cutoff leave the index; each is
    // checked against its stored record (work that came back for it
    // since, a later end) before it is purged.
    let due: Vec<(u64, CampaignId)> = {
        let mut ended = shared.ended.lock();
        let later = ended.split_off(&(cutoff + 1, CampaignId(0)));
        std::mem::replace(&mut *ended, later).into_iter().collect()
    };
    let mut groups: Vec<(Vec<(CampaignId, u64)>, u64)> = Vec::new();
    for (i, &(_, id)) in due.iter().enumerate() {
        let bytes = match shared.store.campaign(id) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => {
                // Tried again at the next pass.
                shared.ended.lock().extend(due[i..].iter().copied());
                return Err(e.into());
            }
        };
        let Ok(record) = CampaignRecord::decode(&bytes) else {
            continue;
        };
        // Brought back to memory for work that came back (a replayed dead
        // letter, a late receipt's fallback): it is stamped anew when it
        // ends again.
        let working = shared
            .campaigns
            .read()
            .get(&id)
            .is_some_and(|l| l.record.lock().finished_ms.is_none());
        let Some(t) = ended_at(&record).filter(|_| !working) else {
            continue;
        };
        if t > cutoff {
            shared.ended.lock().insert((t, id));
            continue;
        }
        let size = shared.store.counters(id).enqueued;
        match groups.last_mut() {
            Some((ids, total)) if *total + size <= PURGE_GROUP => {
                ids.push((id, t));
                *total += size;
            }
            _ => groups.push((vec![(id, t)], size)),
        }
    }
    let mut failed = None;
    for (group, _) in &groups {
        let ids: Vec<CampaignId> = group.iter().map(|&(id, _)| id).collect();
        let purged = match shared.store.purge_campaigns(&ids) {
            Ok(p) => p,
            Err(e) => {
                // Tried again at the next pass; the other groups go on.
                shared
                    .ended
                    .lock()
                    .extend(group.iter().map(|&(id, t)| (t, id)));
                failed.get_or_insert(e);
                continue;
            }
        };
        let mut live = shared.campaigns.write();
        for id in &ids {
            live.remove(id);
        }
        drop(live);
        for index in [&shared.open, &shared.fanning] {
            let mut index = index.lock();
            for id in &ids {
                index.remove(id);
            }
        }
        for (id, p) in ids.iter().zip(purged) {
            tracing::info!(campaign = %id, statuses = p.statuses, dead = p.dead, receipts = p.receipts, "Ended campaign purged after {days} days.");
        }
    }
    failed.map_or(Ok(()), |e| Err(e.into()))
}

/// Deliveries whose records one retention commit removes, at most (unless
/// one campaign alone has more).
const PURGE_GROUP: u64 = 1_000_000;

fn update_gauges(shared: &Shared, now_ms: u64) {
    let m = &shared.metrics;
    for (name, ch) in &shared.channels {
        let depth = shared.store.depth(ch.id);
        for lane in Lane::ALL {
            let i = lane.code() as usize;
            for (state, v) in [("ready", depth.ready[i]), ("leased", depth.leased[i])] {
                m.depth
                    .get_or_create(&metrics::DepthLabels {
                        channel: name.clone(),
                        lane: lane.as_str(),
                        state,
                    })
                    .set(v as i64);
            }
        }
        let age = match shared.store.oldest_ready_ms(ch.id) {
            Ok(Some(t)) => now_ms.saturating_sub(t) as f64 / 1000.0,
            _ => 0.0,
        };
        m.oldest_ready_age
            .get_or_create(&metrics::ChannelLabel {
                channel: name.clone(),
            })
            .set(age);
    }
    let g = shared.store.globals();
    m.delayed.set(g.delayed as i64);
    m.dead_letters.set(g.dead as i64);
}
