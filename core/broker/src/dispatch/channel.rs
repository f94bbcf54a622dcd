//! One task per channel: lease, rate-limit, send through the connector,
//! settle. And receipt collection for simulated gateways.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mhero_proto::{ChannelId, DeliveryId, DeliveryStatus, Lane};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;

use super::metrics::{outcome, reason};
use super::ratelimit::ChannelRate;
use super::{Live, Shared, TokioClock, route, segments};
use crate::channel::{Executor, SandboxGateway};
use crate::config::ChannelConfig;
use crate::error::Result;
use crate::plugin::bindings::connector_types::{
    self as ct, ConnectorInfo, OutboundMessage, SendOutcome,
};
use crate::plugin::bindings::{HttpRequest, PluginError};
use crate::plugin::{CallError, Kind, Plugin, PluginHost};
use crate::store::{Clock, Leased, Outcome, Pending, Store};

/// How long a lease round may take at the channel's rate: bounds how long
/// higher-lane work can wait behind what was already leased.
const ROUND: Duration = Duration::from_millis(10);
/// Below this rate one worker keeps a channel busy; more would only put a
/// second round between a new emergency and the gateway.
const MULTI_WORKER_RATE: f64 = 10_000.0;
/// How long a channel pauses when the gateway refuses its credentials.
const UNAUTHORIZED_PAUSE_MS: u64 = 30_000;
/// Settle commits kept in flight before the next lease waits for the oldest.
const SETTLE_PIPELINE: usize = 4;

pub struct Channel {
    pub name: String,
    pub id: ChannelId,
    pub plugin: Arc<Plugin>,
    pub info: ConnectorInfo,
    pub executor: Executor,
    pub sandbox: Option<Arc<SandboxGateway>>,
    pub config: ChannelConfig,
    counts_segments: bool,
    batch: usize,
    rate: Mutex<ChannelRate>,
    window: Arc<Semaphore>,
    paused_until_ms: AtomicU64,
    /// Per-recipient pacing: address → last send (ms).
    last_sent: Mutex<HashMap<String, u64>>,
    sent_this_second: AtomicU64,
    second_started_ms: AtomicU64,
    sent_last_second: AtomicU64,
}

impl Channel {
    pub fn new(
        name: &str,
        config: &ChannelConfig,
        store: &Store,
        plugins: &PluginHost,
        clock: TokioClock,
    ) -> Result<Self> {
        let plugin = plugins.require(&config.connector, Kind::Connector)?;
        let info = plugin
            .connector_info()
            .map_err(|e| crate::Error::PluginLoad {
                plugin: config.connector.clone(),
                message: format!("describe() failed for channel {name}: {e}"),
            })?;
        let allowed = &plugin.manifest().capabilities.allowed_hosts;
        let sandbox = allowed
            .iter()
            .any(|h| h.starts_with("sandbox:"))
            .then(|| Arc::new(SandboxGateway::new(config.sandbox.clone())));
        let executor = Executor::new(&config.connector, allowed, sandbox.clone());
        let batch = if info.max_batch > 1 {
            config.batch.min(info.max_batch as usize).max(1)
        } else {
            1
        };
        Ok(Self {
            name: name.to_string(),
            id: store.channel(name)?,
            counts_segments: config.count_segments.unwrap_or(info.counts_segments),
            plugin,
            info,
            executor,
            sandbox,
            batch,
            rate: Mutex::new(ChannelRate::new(clock, config.rate, config.burst)),
            window: Arc::new(Semaphore::new(config.window)),
            paused_until_ms: AtomicU64::new(0),
            last_sent: Mutex::new(HashMap::new()),
            sent_this_second: AtomicU64::new(0),
            second_started_ms: AtomicU64::new(0),
            sent_last_second: AtomicU64::new(0),
            config: config.clone(),
        })
    }

    /// How many workers run the channel's loop.
    pub fn workers(&self) -> usize {
        if self.config.rate > 0.0 && self.config.rate < MULTI_WORKER_RATE {
            1
        } else {
            self.config.workers
        }
    }

    /// How many to lease for one round.
    fn round_budget(&self, lease_max: usize) -> usize {
        // Requests of a round run concurrently only when the gateway answers
        // later; an in-process answer is immediate and the round sequential.
        let concurrent = self.sandbox.as_ref().is_none_or(|g| g.delay_ms() > 0);
        let by_window = if concurrent {
            self.window.available_permits() * self.batch
        } else {
            usize::MAX
        };
        let by_rate = match self.rate.lock().current() {
            Some(per_s) => ((per_s * ROUND.as_secs_f64()).ceil() as usize).max(1),
            None => usize::MAX,
        };
        lease_max.min(by_window).min(by_rate)
    }

    fn count_sent(&self, n: u64, now_ms: u64) {
        let started = self.second_started_ms.load(Ordering::Relaxed);
        if now_ms >= started + 1000 {
            self.sent_last_second.store(
                self.sent_this_second.swap(0, Ordering::Relaxed),
                Ordering::Relaxed,
            );
            self.second_started_ms.store(now_ms, Ordering::Relaxed);
        }
        self.sent_this_second.fetch_add(n, Ordering::Relaxed);
    }
}

/// A message ready to go, with what it costs against the rate.
struct Ready {
    leased: Leased,
    message: OutboundMessage,
    cost: u32,
}

fn lane(l: Lane) -> ct::Lane {
    match l {
        Lane::Emergency => ct::Lane::Emergency,
        Lane::High => ct::Lane::High,
        Lane::Normal => ct::Lane::Normal,
        Lane::Bulk => ct::Lane::Bulk,
    }
}

/// The channel's loop: lease a round, send it, settle it.
/// Several workers run this loop for one channel, so one round is sent
/// while the next one's lease commits; they share the rate, the window
/// and the pacing.
pub(crate) async fn run(shared: Arc<Shared>, ch: Arc<Channel>, worker: usize) {
    let mut shutdown = shared.shutdown.clone();
    let mut settling: VecDeque<Pending<()>> = VecDeque::new();
    let mut rng = SmallRng::seed_from_u64(u64::from(ch.id.0) << 16 | worker as u64);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = shared.clock.now_ms();
        let paused = ch.paused_until_ms.load(Ordering::Relaxed);
        if paused > now {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(paused - now)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let budget = ch.round_budget(shared.config.lease_max);
        if budget == 0 {
            // The window is full: wait for a request to finish.
            if let Ok(p) = ch.window.acquire().await {
                drop(p);
            }
            continue;
        }
        let leased = match shared.store.lease(ch.id, budget) {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        let leased = match leased {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(channel = %ch.name, error = %e, "Lease failed; retrying shortly.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if leased.is_empty() {
            shared.fanout_wake.notify_one();
            tokio::select! {
                () = shared.work.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(shared.config.tick_ms)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        shared.fanout_wake.notify_one();
        let settled = send_round(&shared, &ch, leased, &mut rng).await;
        match shared.store.settle(settled) {
            Ok(p) => settling.push_back(p),
            Err(e) => {
                tracing::error!(channel = %ch.name, error = %e, "Settling failed; the deliveries return after a restart.")
            }
        }
        while settling.len() > SETTLE_PIPELINE {
            if let Some(p) = settling.pop_front()
                && let Err(e) = p.await
            {
                tracing::error!(channel = %ch.name, error = %e, "Settle commit failed.");
            }
        }
    }
    for p in settling {
        if let Err(e) = p.await {
            tracing::error!(channel = %ch.name, error = %e, "Settle commit failed.");
        }
    }
}

/// Sends one leased round; returns how each delivery settles.
async fn send_round(
    shared: &Shared,
    ch: &Channel,
    leased: Vec<Leased>,
    rng: &mut SmallRng,
) -> Vec<(Leased, Outcome)> {
    let now = shared.clock.now_ms();
    let mut settled = Vec::with_capacity(leased.len());
    let mut ready = Vec::with_capacity(leased.len());
    let mut redelivered = 0;
    let mut stopped: HashMap<(Lane, &'static str), u64> = HashMap::new();
    let mut campaigns: HashMap<mhero_proto::CampaignId, Option<Arc<Live>>> = HashMap::new();
    for l in leased {
        if l.redelivered {
            redelivered += 1;
        }
        let live = campaigns
            .entry(l.queue.campaign)
            .or_insert_with(|| shared.campaign(l.queue.campaign))
            .clone();
        let Some(live) = live else {
            settled.push((
                l,
                Outcome::Dead {
                    reason: "its campaign record is missing".into(),
                },
            ));
            continue;
        };
        if let Some(status) = live.stop_reason(now) {
            let label = if status == DeliveryStatus::Expired {
                outcome::EXPIRED
            } else {
                outcome::CANCELLED
            };
            *stopped.entry((l.queue.lane, label)).or_default() += 1;
            settled.push((
                l,
                Outcome::Done {
                    status,
                    external_id: None,
                    reason: None,
                },
            ));
            continue;
        }
        let (text, language) = live.body.for_language(l.item.language.as_deref());
        let cost = if ch.counts_segments {
            segments::count(text).count
        } else {
            1
        };
        let message = OutboundMessage {
            id: l.id().to_string(),
            to: l.item.recipient.clone(),
            text: text.to_string(),
            language: language
                .map(str::to_string)
                .or_else(|| l.item.language.clone()),
            lane: lane(l.queue.lane),
            expires_at_ms: live.expires_at_ms,
            attempt: u32::from(l.item.attempts) + 1,
        };
        ready.push(Ready {
            leased: l,
            message,
            cost,
        });
    }
    if redelivered > 0 {
        shared
            .metrics
            .redelivered
            .get_or_create(&super::metrics::ChannelLabel {
                channel: ch.name.clone(),
            })
            .inc_by(redelivered);
    }
    for ((lane, label), n) in stopped {
        shared.metrics.delivery(&ch.name, lane, label, n);
    }

    // Per-recipient pacing: who cannot receive again yet waits its turn.
    if ch.config.recipient_interval_ms > 0 {
        let mut last = ch.last_sent.lock();
        let mut kept = Vec::with_capacity(ready.len());
        for r in ready {
            let next_ok = last
                .get(&r.message.to)
                .map_or(0, |t| t + ch.config.recipient_interval_ms);
            if next_ok > now {
                settled.push((
                    r.leased,
                    Outcome::Retry {
                        due_ms: next_ok,
                        reason: "recipient pacing".into(),
                    },
                ));
            } else {
                last.insert(r.message.to.clone(), now);
                kept.push(r);
            }
        }
        ready = kept;
        if last.len() > 100_000 {
            let horizon = now.saturating_sub(ch.config.recipient_interval_ms);
            last.retain(|_, t| *t > horizon);
        }
    }

    let mut chunks: Vec<Vec<Ready>> = Vec::new();
    let mut it = ready.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(ch.batch).collect());
    }
    let mut tally = Tally::default();
    let delay = ch.sandbox.as_ref().map_or(0, |s| s.delay_ms());
    let mut in_flight = tokio::task::JoinSet::new();
    for chunk in chunks {
        let cost: u32 = chunk.iter().map(|r| r.cost).sum();
        wait_for_rate(shared, ch, cost).await;
        let Ok(permit) = Arc::clone(&ch.window).acquire_owned().await else {
            break;
        };
        let now = shared.clock.now_ms();
        ch.count_sent(chunk.len() as u64, now);
        let answers = exchange(ch, &chunk, now);
        if delay == 0 {
            drop(permit);
            for (r, answer) in chunk.into_iter().zip(answers) {
                let o = decide(shared, ch, r, answer, now, rng, &mut tally);
                settled.push(o);
            }
        } else {
            // The simulated gateway answers after its latency; the window
            // bounds how many such requests are outstanding.
            in_flight.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                drop(permit);
                chunk.into_iter().zip(answers).collect::<Vec<_>>()
            });
        }
    }
    while let Some(done) = in_flight.join_next().await {
        if let Ok(pairs) = done {
            let now = shared.clock.now_ms();
            for (r, answer) in pairs {
                settled.push(decide(shared, ch, r, answer, now, rng, &mut tally));
            }
        }
    }
    tally.record(shared, ch);
    settled
}

async fn wait_for_rate(shared: &Shared, ch: &Channel, cost: u32) {
    let mut left = cost.max(1);
    let mut waited = Duration::ZERO;
    while left > 0 {
        let piece = left.min(ch.config.burst);
        let wait = ch.rate.lock().reserve(piece);
        if wait.is_zero() {
            left -= piece;
        } else {
            waited += wait;
            tokio::time::sleep(wait).await;
        }
    }
    if !waited.is_zero() {
        shared.metrics.waited(&ch.name, waited);
    }
}

/// What the gateway said about one message.
enum Answer {
    Outcome(SendOutcome),
    Error(CallError),
    Refused(String),
}

/// Builds the request(s), performs them, reads the answers.
fn exchange(ch: &Channel, chunk: &[Ready], now: u64) -> Vec<Answer> {
    let all = |a: &dyn Fn() -> Answer| (0..chunk.len()).map(|_| a()).collect::<Vec<_>>();
    if let [one] = chunk {
        let m = &one.message;
        let request = match ch.plugin.build_send(m) {
            Ok(r) => r,
            Err(e) => return vec![Answer::Error(e)],
        };
        return match perform(ch, &request, now) {
            Ok(response) => vec![match ch.plugin.parse_send_response(&response) {
                Ok(o) => Answer::Outcome(o),
                Err(e) => Answer::Error(e),
            }],
            Err(reason) => vec![Answer::Refused(reason)],
        };
    }
    let messages: Vec<OutboundMessage> = chunk.iter().map(|r| r.message.clone()).collect();
    let request = match ch.plugin.build_send_batch(&messages) {
        Ok(r) => r,
        Err(e) => return all(&|| Answer::Error(e.clone())),
    };
    let response = match perform(ch, &request, now) {
        Ok(r) => r,
        Err(reason) => return all(&|| Answer::Refused(reason.clone())),
    };
    match ch.plugin.parse_batch_response(&messages, &response) {
        Ok(outcomes) => {
            let mut by_id: HashMap<String, SendOutcome> =
                outcomes.into_iter().map(|o| (o.id, o.outcome)).collect();
            messages
                .iter()
                .map(|m| match by_id.remove(&m.id) {
                    Some(o) => Answer::Outcome(o),
                    None => Answer::Outcome(SendOutcome::Retry(ct::RetryInfo {
                        after_ms: None,
                        reason: "no result in the batch answer".into(),
                    })),
                })
                .collect()
        }
        Err(e) => all(&|| Answer::Error(e.clone())),
    }
}

fn perform(
    ch: &Channel,
    request: &HttpRequest,
    now: u64,
) -> std::result::Result<crate::plugin::bindings::HttpResponse, String> {
    ch.executor
        .execute(request, now)
        .map(|(r, _)| r)
        .map_err(|e| e.to_string())
}

/// Counts of one round, recorded once.
#[derive(Default)]
struct Tally {
    by: HashMap<(Lane, &'static str), u64>,
    retries: HashMap<&'static str, u64>,
}

impl Tally {
    fn record(self, shared: &Shared, ch: &Channel) {
        for ((lane, label), n) in self.by {
            shared.metrics.delivery(&ch.name, lane, label, n);
        }
        for (reason, n) in self.retries {
            shared
                .metrics
                .retries
                .get_or_create(&super::metrics::ReasonLabels {
                    channel: ch.name.clone(),
                    reason,
                })
                .inc_by(n);
        }
    }
}

/// Turns an answer into how the delivery settles.
fn decide(
    shared: &Shared,
    ch: &Channel,
    r: Ready,
    answer: Answer,
    now: u64,
    rng: &mut SmallRng,
    tally: &mut Tally,
) -> (Leased, Outcome) {
    let l = r.leased;
    let lane = l.queue.lane;
    let mut count = |label: &'static str| *tally.by.entry((lane, label)).or_default() += 1;
    let mut retry = |l: Leased,
                     floor: Option<u64>,
                     why: String,
                     reason_label: &'static str,
                     tally_retries: &mut HashMap<&'static str, u64>| {
        let attempts = l.item.attempts + 1;
        match ch.config.retry.next_wait(attempts, floor, rng) {
            Some(wait) => {
                *tally_retries.entry(reason_label).or_default() += 1;
                (
                    l,
                    Outcome::Retry {
                        due_ms: now + wait,
                        reason: why,
                    },
                    outcome::RETRIED,
                )
            }
            None => (
                l,
                Outcome::Dead {
                    reason: format!("gave up after {attempts} attempts: {why}"),
                },
                outcome::DEAD,
            ),
        }
    };
    let (l, o, label) = match answer {
        Answer::Outcome(SendOutcome::Accepted(external)) => (
            l,
            Outcome::Done {
                status: DeliveryStatus::Wired,
                external_id: Some(external),
                reason: None,
            },
            outcome::WIRED,
        ),
        Answer::Outcome(SendOutcome::Retry(info)) => {
            let label = if info.after_ms.is_some() {
                // The gateway says when: the whole channel waits, and slows.
                let until = now + info.after_ms.unwrap_or(0);
                ch.paused_until_ms.fetch_max(until, Ordering::Relaxed);
                let measured = ch.sent_last_second.load(Ordering::Relaxed) as f64;
                ch.rate.lock().throttled(measured);
                reason::THROTTLED
            } else {
                reason::TRANSIENT
            };
            retry(l, info.after_ms, info.reason, label, &mut tally.retries)
        }
        Answer::Outcome(SendOutcome::Failed(f)) if f.unreachable => fallback(shared, l, f.reason),
        Answer::Outcome(SendOutcome::Failed(f)) => {
            (l, Outcome::Dead { reason: f.reason }, outcome::DEAD)
        }
        Answer::Error(CallError::Plugin { error, .. }) => match error {
            PluginError::Transient(t) => retry(
                l,
                t.retry_after_ms,
                t.message,
                reason::TRANSIENT,
                &mut tally.retries,
            ),
            PluginError::Unauthorized(m) => {
                let until = now + UNAUTHORIZED_PAUSE_MS;
                if ch.paused_until_ms.fetch_max(until, Ordering::Relaxed) < now {
                    tracing::error!(channel = %ch.name, error = %m, "Gateway refused the channel's credentials; channel paused for 30 s. Fix its configuration.");
                }
                *tally.retries.entry(reason::UNAUTHORIZED).or_default() += 1;
                (
                    l,
                    Outcome::Retry {
                        due_ms: until,
                        reason: format!("unauthorized: {m}"),
                    },
                    outcome::RETRIED,
                )
            }
            PluginError::Permanent(m) => fallback(shared, l, m),
            PluginError::InvalidInput(m) => (
                l,
                Outcome::Dead {
                    reason: format!("connector refused the message: {m}"),
                },
                outcome::DEAD,
            ),
        },
        // The plugin trapped or its circuit is open: not the message's fault.
        Answer::Error(e) => retry(
            l,
            None,
            e.to_string(),
            reason::PLUGIN_FAILURE,
            &mut tally.retries,
        ),
        Answer::Refused(why) => (l, Outcome::Dead { reason: why }, outcome::DEAD),
    };
    count(label);
    (l, o)
}

/// The recipient cannot be reached on this channel: the campaign's next
/// channel where they have an address, or a dead letter.
fn fallback(shared: &Shared, l: Leased, why: String) -> (Leased, Outcome, &'static str) {
    let next = shared.campaign(l.queue.campaign).and_then(|live| {
        let recipient = live.audience.get(l.item.index).ok().flatten()?;
        route(&live, &recipient, usize::from(l.item.route) + 1)
    });
    match next {
        Some((channel, route_no, address)) => (
            l,
            Outcome::Reroute {
                channel,
                recipient: address,
                route: route_no,
                reason: why,
            },
            outcome::REROUTED,
        ),
        None => (
            l,
            Outcome::Dead {
                reason: format!("unreachable on every channel: {why}"),
            },
            outcome::DEAD,
        ),
    }
}

/// Collects receipts and replies from a simulated gateway and moves
/// deliveries up the status ladder. Receipts that arrive before their
/// delivery's settle commit are held and tried again.
pub(crate) async fn collect_receipts(shared: Arc<Shared>, ch: Arc<Channel>) {
    let Some(gateway) = ch.sandbox.clone() else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    let mut held: Vec<(String, DeliveryStatus, Option<String>, u64)> = Vec::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(shared.config.receipt_poll_ms)) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let now = shared.clock.now_ms();
        let mut incoming = std::mem::take(&mut held);
        while let Some(request) = gateway.poll_webhooks(now, 2000) {
            match ch.plugin.handle_webhook(&request) {
                Ok(result) => {
                    for event in result.events {
                        match event {
                            ct::WebhookEvent::Receipt(r) => {
                                let status = match r.status {
                                    ct::ReceiptStatus::Sent => DeliveryStatus::Sent,
                                    ct::ReceiptStatus::Delivered => DeliveryStatus::Delivered,
                                    ct::ReceiptStatus::Read => DeliveryStatus::Read,
                                    ct::ReceiptStatus::Failed => DeliveryStatus::Failed,
                                };
                                shared
                                    .metrics
                                    .receipts
                                    .get_or_create(&super::metrics::ReceiptLabels {
                                        channel: ch.name.clone(),
                                        status: status.as_str(),
                                    })
                                    .inc();
                                incoming.push((r.external_id, status, r.reason, now));
                            }
                            ct::WebhookEvent::Inbound(_) => {
                                shared
                                    .metrics
                                    .inbound
                                    .get_or_create(&super::metrics::ChannelLabel {
                                        channel: ch.name.clone(),
                                    })
                                    .inc();
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(channel = %ch.name, error = %e, "Webhook refused."),
            }
        }
        if incoming.is_empty() {
            continue;
        }
        let mut reports: Vec<(DeliveryId, DeliveryStatus, Option<String>)> =
            Vec::with_capacity(incoming.len());
        for (external, status, why, first_seen) in incoming {
            match shared.store.by_external_id(ch.id, &external) {
                Ok(Some(id)) => reports.push((id, status, why)),
                Ok(None) if now.saturating_sub(first_seen) < 60_000 => {
                    held.push((external, status, why, first_seen))
                }
                Ok(None) => {
                    shared.metrics.unmatched_receipts.inc();
                }
                Err(e) => tracing::error!(channel = %ch.name, error = %e, "Receipt lookup failed."),
            }
        }
        if reports.is_empty() {
            continue;
        }
        match shared.store.update_statuses(&reports) {
            Ok(p) => {
                if let Err(e) = p.await {
                    tracing::error!(channel = %ch.name, error = %e, "Status update failed.");
                }
            }
            Err(e) => tracing::error!(channel = %ch.name, error = %e, "Status update failed."),
        }
    }
}
