//! A channel's sender: lease → rate → build (wasm) → transport → parse
//! (wasm) → settle, as a pipeline. Workers lease rounds and wait for the
//! rate and the in-flight window; each request then goes out on its own
//! task, and each round is parsed and settled on its own task once its
//! answers are in, so up to `window` requests are in flight whatever the
//! gateway's latency (in flight = rate × latency). On a channel with a
//! rate the window fits what the rate needs at the latency measured.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use mhero_proto::{ChannelId, DeliveryStatus, Lane};
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::{outcome, reason};
use super::ratelimit::ChannelRate;
use super::{Live, Shared, TokioClock, route};
use crate::channel::{
    AllowedHosts, ChannelTransport, HttpTransport, SandboxGateway, SandboxTransport, Transport,
};
use crate::config::ChannelConfig;
use crate::error::Result;
use crate::plugin::bindings::connector_types::{
    self as ct, ConnectorInfo, OutboundMessage, SendOutcome,
};
use crate::plugin::bindings::{HttpRequest, HttpResponse, PluginError};
use crate::plugin::{CallError, Plugin, PluginHost};
use crate::store::{Clock, Leased, Outcome};

/// How long a lease round may take at the channel's rate: bounds how long
/// higher-lane work can wait behind what was already leased. Each round
/// costs about 0.2 ms of CPU (lease, build, parse, settle) whatever its
/// size: at 1,000/s a 10 ms round spent 20 µs of it on every delivery, a
/// 20 ms round spends 10, and an emergency still goes within the 50 ms the
/// preempt benchmark allows.
const ROUND: Duration = Duration::from_millis(20);
/// Below this rate one worker keeps a channel busy; more would only put a
/// second round between a new emergency and the gateway.
const MULTI_WORKER_RATE: f64 = 10_000.0;
/// How long a channel pauses when the gateway refuses its credentials.
const UNAUTHORIZED_PAUSE_MS: u64 = 30_000;

pub struct Channel {
    pub name: String,
    pub id: ChannelId,
    pub plugin: Arc<Plugin>,
    pub info: ConnectorInfo,
    pub transport: Arc<dyn Transport>,
    pub sandbox: Option<Arc<SandboxGateway>>,
    pub config: ChannelConfig,
    counts_segments: bool,
    batch: usize,
    rate: Mutex<ChannelRate>,
    /// Requests in flight.
    window: Arc<Semaphore>,
    /// The window's size now (the permits `window` holds, free and
    /// taken): `config.window`, fitted on a rated channel to what its rate
    /// needs (see [`Channel::fit_window`]).
    window_now: AtomicUsize,
    /// The gateway's answer time, smoothed (µs; 0: none yet).
    latency_us: AtomicU64,
    /// Leased rounds not yet settled: bounds what a crash can re-send.
    rounds: Arc<Semaphore>,
    /// The permits `rounds` holds, free and taken.
    rounds_now: AtomicUsize,
    /// Held by whoever resizes the window and the rounds.
    resizing: Mutex<()>,
    paused_until_ms: AtomicU64,
    /// Held by an operator: nothing is leased until released. Deliveries
    /// wait in their queues (their expiry still applies).
    held: AtomicBool,
    released: tokio::sync::Notify,
    /// Per-recipient pacing: address → last send (ms).
    last_sent: Mutex<HashMap<String, u64>>,
    sent_this_second: AtomicU64,
    second_started_ms: AtomicU64,
    sent_last_second: AtomicU64,
    /// Time from a request leaving to its answer.
    request_duration: prometheus_client::metrics::histogram::Histogram,
}

/// A channel's way out: the hosts its connector may reach, the simulator
/// when the connector's allowed hosts name it, and the HTTP client.
pub(crate) fn channel_transport(
    name: &str,
    config: &ChannelConfig,
    plugin: &Plugin,
    clock: TokioClock,
) -> Result<(ChannelTransport, Option<Arc<SandboxGateway>>)> {
    let allowed = AllowedHosts::resolve(&plugin.manifest().capabilities.allowed_hosts, &|key| {
        plugin.setting(key)
    });
    let sandbox = allowed
        .has_sandbox()
        .then(|| Arc::new(SandboxGateway::new(config.sandbox.clone())));
    let http = HttpTransport::new(&config.http, widest(config))
        .map_err(|message| crate::Error::Config(format!("channels.{name}.http: {message}")))?;
    let transport = ChannelTransport::new(
        &config.connector,
        allowed,
        sandbox
            .clone()
            .map(|g| Arc::new(SandboxTransport::new(g, Arc::new(clock)))),
        http,
    );
    Ok((transport, sandbox))
}

impl Channel {
    pub fn new(
        name: &str,
        id: ChannelId,
        config: &ChannelConfig,
        plugins: &PluginHost,
        clock: TokioClock,
        metrics: &super::DispatchMetrics,
    ) -> Result<Self> {
        let plugin = plugins.for_channel(&config.connector, name, &config.settings)?;
        let info = plugin
            .connector_info()
            .map_err(|e| crate::Error::PluginLoad {
                plugin: config.connector.clone(),
                message: format!("describe() failed for channel {name}: {e}"),
            })?;
        let (transport, sandbox) = channel_transport(name, config, &plugin, clock)?;
        let batch = if info.max_batch > 1 {
            config.batch.min(info.max_batch as usize).max(1)
        } else {
            1
        };
        Ok(Self {
            name: name.to_string(),
            id,
            counts_segments: config.count_segments.unwrap_or(info.counts_segments),
            plugin,
            info,
            transport: Arc::new(transport),
            sandbox,
            batch,
            rate: Mutex::new(ChannelRate::new(clock, config.rate, config.burst)),
            window: Arc::new(Semaphore::new(config.window)),
            window_now: AtomicUsize::new(config.window),
            latency_us: AtomicU64::new(0),
            rounds: Arc::new(Semaphore::new(max_rounds(config.window))),
            rounds_now: AtomicUsize::new(max_rounds(config.window)),
            resizing: Mutex::new(()),
            paused_until_ms: AtomicU64::new(0),
            held: AtomicBool::new(false),
            released: tokio::sync::Notify::new(),
            last_sent: Mutex::new(HashMap::new()),
            sent_this_second: AtomicU64::new(0),
            second_started_ms: AtomicU64::new(0),
            sent_last_second: AtomicU64::new(0),
            request_duration: metrics
                .request_duration
                .get_or_create(&super::metrics::ChannelLabel {
                    channel: name.to_string(),
                })
                .clone(),
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

    /// Whether an operator holds the channel.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Holds the channel (nothing more is leased; what is on the wire
    /// finishes) or releases it.
    pub(crate) fn hold(&self, on: bool) {
        self.held.store(on, Ordering::Relaxed);
        if !on {
            self.released.notify_waiters();
        }
    }

    /// Until the gateway's pause ends (a refused credential, a 429), if
    /// one is on (ms since the epoch).
    pub fn backing_off_until(&self, now_ms: u64) -> Option<u64> {
        let until = self.paused_until_ms.load(Ordering::Relaxed);
        (until > now_ms).then_some(until)
    }

    /// Requests on the wire now.
    pub fn in_flight(&self) -> usize {
        self.window_size()
            .saturating_sub(self.window.available_permits())
    }

    /// Requests allowed in flight now.
    pub fn window_size(&self) -> usize {
        self.window_now.load(Ordering::Relaxed)
    }

    /// After an answer that took `took`: on a channel with a rate, fits
    /// the window to twice the requests the rate sends in the gateway's
    /// smoothed answer time, between `window` and `window_max`. It widens
    /// at once, and narrows once it holds a third more than it needs (a
    /// gateway that slowed for a while and recovered gets back the
    /// concurrency it was configured with); a narrower window takes only
    /// free room, the rest as answers come in.
    fn fit_window(&self, took: Duration) {
        if self.config.rate <= 0.0 {
            return;
        }
        let sample = took.as_micros() as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let smoothed = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.latency_us.store(smoothed, Ordering::Relaxed);
        let requests_per_s = self.config.rate / self.batch as f64;
        let needed = (2.0 * requests_per_s * smoothed as f64 / 1e6).ceil() as usize;
        let target = needed.clamp(self.config.window, widest(&self.config));
        let now = self.window_now.load(Ordering::Relaxed);
        if target == now || (target < now && target * 4 > now * 3) {
            return;
        }
        // Another answer resizing now does it with much the same latency.
        let Some(_resizing) = self.resizing.try_lock() else {
            return;
        };
        let now = self.window_now.load(Ordering::Relaxed);
        let to = if target > now {
            self.window.add_permits(target - now);
            target
        } else {
            now - self.window.forget_permits(now.saturating_sub(target))
        };
        self.window_now.store(to, Ordering::Relaxed);
        // Rounds hold the window's requests: as many as a window that
        // size is given.
        let (rounds, want) = (self.rounds_now.load(Ordering::Relaxed), max_rounds(to));
        let rounds_to = if want >= rounds {
            self.rounds.add_permits(want - rounds);
            want
        } else {
            rounds - self.rounds.forget_permits(rounds - want)
        };
        self.rounds_now.store(rounds_to, Ordering::Relaxed);
        if to != now {
            tracing::debug!(channel = %self.name, window = to, latency_ms = smoothed / 1000, "Window fitted.");
        }
    }

    /// How many to lease for one round: a window's worth of requests,
    /// however many of them are on the wire now. (Rounds sized by the
    /// window's free room were a few requests each on a busy channel,
    /// each paying its own lease, build calls and settle commit; the
    /// pacer still waits for room before each request.)
    fn round_budget(&self, lease_max: usize) -> usize {
        let by_window = self.window_size() * self.batch;
        let by_rate = match self.rate.lock().current() {
            Some(per_s) => ((per_s * ROUND.as_secs_f64()).ceil() as usize).max(1),
            None => usize::MAX,
        };
        lease_max.min(by_window).min(by_rate)
    }

    /// Messages sent in the last whole second (0 once sending has paused).
    pub fn sent_last_second(&self, now_ms: u64) -> u64 {
        if now_ms >= self.second_started_ms.load(Ordering::Relaxed) + 2000 {
            return 0;
        }
        self.sent_last_second.load(Ordering::Relaxed)
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

/// Most deliveries of a channel leased and not yet settled at any moment,
/// so the most a crash can make it send again: `max_rounds(window)` rounds,
/// each no larger than `lease_max`, the widest window (× `batch` messages
/// per request), or one round (20 ms) at the channel's rate plus its burst.
pub fn in_flight_bound(config: &ChannelConfig, batch: usize, lease_max: usize) -> usize {
    let mut round = lease_max.min(widest(config) * batch.max(1));
    if config.rate > 0.0 {
        let by_rate = (config.rate * ROUND.as_secs_f64()).ceil() as usize + config.burst as usize;
        round = round.min(by_rate);
    }
    max_rounds(widest(config)) * round
}

/// The widest the channel's window can grow: `window_max` on a channel
/// with a rate, `window` without one.
fn widest(config: &ChannelConfig) -> usize {
    if config.rate > 0.0 {
        config.window_max.max(config.window)
    } else {
        config.window
    }
}

/// Rounds leased and not yet settled, per channel: enough to keep the
/// window full when rounds are small (a 20 ms round at a modest rate is a
/// few requests, and a slow gateway holds each for its latency), few
/// enough to bound what a crash re-sends.
fn max_rounds(window: usize) -> usize {
    (window / 4).clamp(4, 64)
}

/// A message ready to go, with what it costs against the rate.
struct Ready {
    leased: Leased,
    message: OutboundMessage,
    /// The campaign's files: such a message goes alone, through
    /// `build-send-media`.
    files: Option<Arc<[ct::Attachment]>>,
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

/// A round leased, prepared and built, waiting for the rate.
struct Prepared {
    round: OwnedSemaphorePermit,
    stopped: Vec<(Leased, Outcome)>,
    requests: Built,
}

/// The channel's loop, as two stages: one leases, prepares and builds the
/// next round (store and plugin threads) while the other paces the current
/// one onto the wire, so a rate-limited channel has its next requests
/// ready when the rate allows them and store or plugin latency never
/// becomes a gap in its sending. Each round settles on its own task.
/// Several workers run this loop for one channel; they share the rate,
/// the window and the pacing.
pub(crate) async fn run(shared: Arc<Shared>, ch: Arc<Channel>) {
    // One round built ahead: enough to hide a lease and a build behind
    // the rate, and it delays a new emergency by at most one more round.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(1);
    let producer = tokio::spawn(produce(Arc::clone(&shared), Arc::clone(&ch), tx));
    let mut settling = tokio::task::JoinSet::new();
    // A round already leased is sent even when the broker is stopping (it
    // is at most one round at the channel's rate): it settles before the
    // channel stops instead of being re-sent at the next start.
    while let Some(Prepared {
        round,
        stopped,
        requests,
    }) = rx.recv().await
    {
        while settling.try_join_next().is_some() {}
        let mut wire = Vec::with_capacity(requests.len());
        for (chunk, request) in requests {
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    wire.push((chunk, Exchange::Built(e)));
                    continue;
                }
            };
            let cost: u32 = chunk.iter().map(|r| r.cost).sum();
            wait_for_rate(&shared, &ch, cost).await;
            let Ok(permit) = Arc::clone(&ch.window).acquire_owned().await else {
                break;
            };
            ch.count_sent(chunk.len() as u64, shared.clock.now_ms());
            let sending = tokio::spawn(send(Arc::clone(&ch), request, permit));
            wire.push((chunk, Exchange::Sending(sending)));
        }
        settling.spawn(finish_round(
            Arc::clone(&shared),
            Arc::clone(&ch),
            stopped,
            wire,
            round,
        ));
    }
    if let Err(e) = producer.await {
        tracing::error!(channel = %ch.name, error = %e, "Channel producer failed.");
    }
    // Rounds already on the wire settle before the channel stops.
    while settling.join_next().await.is_some() {}
}

/// Leases, prepares and builds rounds for the pacer until the broker
/// stops. On a rate-limited channel it leases the next round only when the
/// pacer is about to run out (its estimate of when the rounds handed over
/// are paced out, less the time a lease and a build take), so what waits
/// ahead of a new emergency is the round on the wire and little more.
async fn produce(shared: Arc<Shared>, ch: Arc<Channel>, tx: tokio::sync::mpsc::Sender<Prepared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut ahead = PacedAhead::default();
    loop {
        if crate::stop::stopping(&shutdown) {
            break;
        }
        if let Some(wait) = ahead.wait() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => continue,
            }
        }
        if ch.held() {
            // Registered before looking again, so a release in between
            // still wakes this worker.
            let released = ch.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if ch.held() {
                tokio::select! {
                    () = released => {}
                    _ = shutdown.changed() => {}
                }
            }
            continue;
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
        // Room for the round in the pipe first, so a round is never leased
        // only to wait there.
        let slot = tokio::select! {
            slot = tx.reserve() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.changed() => continue,
        };
        let Ok(round) = Arc::clone(&ch.rounds).acquire_owned().await else {
            break;
        };
        let budget = ch.round_budget(shared.config.lease_max);
        let (leased, committed) = match lease(&shared, ch.id, budget).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(channel = %ch.name, error = %e, "Lease failed; retrying shortly.");
                drop((round, slot));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if leased.is_empty() {
            drop((round, slot));
            shared.fanout_wake.notify_one();
            tokio::select! {
                () = shared.work.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(shared.config.tick_ms)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        shared.fanout_wake.notify_one();
        // Work for a campaign that left memory (a replayed dead letter):
        // read back on a blocking thread, not in `prepare`.
        let mut campaigns: Vec<mhero_proto::CampaignId> = Vec::new();
        for l in &leased {
            if campaigns.last() != Some(&l.queue.campaign) {
                campaigns.push(l.queue.campaign);
            }
        }
        shared.revive(campaigns).await;
        // The round is prepared and built while its lease commits; it goes
        // to the wire only once the lease is durable, so a crash before
        // then leaves it uncounted and unsent, and one after counts it as
        // redelivered.
        let (stopped, ready, counts) = prepare(&shared, &ch, leased);
        let requests = build(&ch, ready).await;
        if let Err(e) = committed.await {
            tracing::error!(channel = %ch.name, error = %e, "Lease failed; retrying shortly.");
            drop((round, slot));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        counts.record(&shared, &ch);
        let cost: u64 = requests
            .iter()
            .flat_map(|(chunk, _)| chunk.iter().map(|r| u64::from(r.cost)))
            .sum();
        ahead.handed_over(cost, ch.rate.lock().current());
        slot.send(Prepared {
            round,
            stopped,
            requests,
        });
    }
}

/// The producer's estimate of when the pacer runs out of rounds, and of
/// how long preparing one takes.
#[derive(Default)]
struct PacedAhead {
    /// When the rounds handed over are paced out, at the current rate.
    until: Option<tokio::time::Instant>,
    /// When the round being prepared was started.
    started: Option<tokio::time::Instant>,
    /// Smoothed time from starting a round to handing it over (µs).
    prepare_us: f64,
}

impl PacedAhead {
    /// How long to wait before preparing the next round.
    fn wait(&mut self) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        self.started = Some(now);
        let until = self.until?;
        // Twice the usual preparation time, within [2 ms, one round].
        let lead = Duration::from_micros((2.0 * self.prepare_us) as u64)
            .clamp(Duration::from_millis(2), ROUND);
        let start = until.checked_sub(lead)?;
        (start > now).then(|| start - now)
    }

    /// A round costing `cost` went to the pacer; `per_s` is the rate.
    fn handed_over(&mut self, cost: u64, per_s: Option<f64>) {
        let now = tokio::time::Instant::now();
        if let Some(started) = self.started.take() {
            let took = (now - started).as_micros() as f64;
            self.prepare_us = if self.prepare_us == 0.0 {
                took
            } else {
                0.8 * self.prepare_us + 0.2 * took
            };
        }
        self.until = per_s.map(|per_s| {
            let from = self.until.map_or(now, |u| u.max(now));
            from + Duration::from_secs_f64(cost as f64 / per_s)
        });
    }
}

/// Leases on a blocking thread (the lease reads the queues from the
/// store): the leased deliveries, and the lease's commit, which must
/// succeed before any of them is sent.
async fn lease(
    shared: &Shared,
    channel: ChannelId,
    max: usize,
) -> Result<(Vec<Leased>, crate::store::Ticket)> {
    let store = Arc::clone(&shared.store);
    let pending = tokio::task::spawn_blocking(move || store.lease(channel, max))
        .await
        .map_err(|e| crate::Error::Internal(format!("lease task failed: {e}")))??;
    Ok(pending.split())
}

/// Where one request of a round stands.
enum Exchange {
    /// The connector could not build it.
    Built(CallError),
    Sending(
        tokio::task::JoinHandle<std::result::Result<HttpResponse, crate::channel::TransportError>>,
    ),
}

/// One request on the wire; the window permit is held until its answer.
async fn send(
    ch: Arc<Channel>,
    request: HttpRequest,
    permit: OwnedSemaphorePermit,
) -> std::result::Result<HttpResponse, crate::channel::TransportError> {
    // The runtime's clock: what the simulator's latency moves in tests.
    let started = tokio::time::Instant::now();
    let answer = ch.transport.send(request).await;
    drop(permit);
    let took = started.elapsed();
    ch.request_duration.observe(took.as_secs_f64());
    ch.fit_window(took);
    answer
}

/// What a prepared round counts in the metrics once its lease commits.
struct RoundCounts {
    redelivered: u64,
    stopped: HashMap<(Lane, &'static str), u64>,
}

impl RoundCounts {
    fn record(self, shared: &Shared, ch: &Channel) {
        if self.redelivered > 0 {
            shared
                .metrics
                .redelivered
                .get_or_create(&super::metrics::ChannelLabel {
                    channel: ch.name.clone(),
                })
                .inc_by(self.redelivered);
        }
        for ((lane, label), n) in self.stopped {
            shared.metrics.delivery(&ch.name, lane, label, n);
        }
    }
}

/// Stop reasons, message texts and per-recipient pacing of a leased round:
/// what settles at once, what goes to the gateway, and what the metrics
/// count once the lease commits. Its campaigns are in memory
/// ([`Shared::revive`] before it).
fn prepare(
    shared: &Shared,
    ch: &Channel,
    leased: Vec<Leased>,
) -> (Vec<(Leased, Outcome)>, Vec<Ready>, RoundCounts) {
    let now = shared.clock.now_ms();
    let mut settled = Vec::new();
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
            mhero_proto::sms::count(text).count
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
            files: live.files.clone(),
            cost,
        });
    }

    // Per-recipient pacing: who cannot receive again yet waits its turn.
    if ch.config.recipient_interval_ms > 0 {
        let mut last = ch.last_sent.lock();
        let mut kept = Vec::with_capacity(ready.len());
        for r in ready {
            let next_ok = last
                .get(&r.message.to)
                .map_or(0, |t| t.saturating_add(ch.config.recipient_interval_ms));
            if next_ok > now {
                // Waiting its turn is not an attempt.
                settled.push((r.leased, Outcome::Defer { due_ms: next_ok }));
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
    let counts = RoundCounts {
        redelivered,
        stopped,
    };
    (settled, ready, counts)
}

/// Cuts a round into requests of at most `size` messages. A batch carries
/// one text (the aggregators' bulk forms send one text to many numbers):
/// with `size` > 1, messages are grouped by text, in the order each text
/// first appears, then cut.
fn batches<T>(items: Vec<T>, size: usize, text: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let size = size.max(1);
    let mut groups: Vec<Vec<T>> = Vec::new();
    if size > 1 {
        for item in items {
            match groups.iter_mut().find(|g| text(&g[0]) == text(&item)) {
                Some(g) => g.push(item),
                None => groups.push(vec![item]),
            }
        }
    } else {
        groups.push(items);
    }
    let mut out = Vec::new();
    for group in groups {
        let mut it = group.into_iter().peekable();
        while it.peek().is_some() {
            out.push(it.by_ref().take(size).collect());
        }
    }
    out
}

type Built = Vec<(Vec<Ready>, std::result::Result<HttpRequest, CallError>)>;

/// Builds every request of a round in one trip to a plugin thread.
async fn build(ch: &Arc<Channel>, ready: Vec<Ready>) -> Built {
    // A message with files goes alone (no gateway's bulk form takes them).
    let (alone, batched): (Vec<Ready>, Vec<Ready>) =
        ready.into_iter().partition(|r| r.files.is_some());
    let mut chunks = batches(batched, ch.batch, |r| r.message.text.as_str());
    chunks.extend(alone.into_iter().map(|r| vec![r]));
    if chunks.is_empty() {
        return Vec::new();
    }
    let n = chunks.len();
    let built = ch
        .plugin
        .offload(move |plugin| {
            Ok(chunks
                .into_iter()
                .map(|chunk| {
                    let request = match chunk.as_slice() {
                        // A connector without `media` refuses before any
                        // call; the delivery falls back (see `classify`).
                        [one] if let Some(files) = &one.files => {
                            plugin.build_send_media(&one.message, files)
                        }
                        [one] => plugin.build_send(&one.message),
                        many => {
                            let messages: Vec<OutboundMessage> =
                                many.iter().map(|r| r.message.clone()).collect();
                            plugin.build_send_batch(&messages)
                        }
                    };
                    (chunk, request)
                })
                .collect::<Built>())
        })
        .await;
    match built {
        Ok(b) => b,
        // The broker is stopping: nothing is sent; the round returns to
        // its queue at the next start.
        Err(e) => {
            tracing::debug!(channel = %ch.name, rounds = n, error = %e, "Round not built.");
            Vec::new()
        }
    }
}

/// Waits for a round's answers, parses them in one trip to a plugin
/// thread, decides each delivery's outcome and settles the round.
async fn finish_round(
    shared: Arc<Shared>,
    ch: Arc<Channel>,
    mut settled: Vec<(Leased, Outcome)>,
    wire: Vec<(Vec<Ready>, Exchange)>,
    round: OwnedSemaphorePermit,
) {
    let mut answered = Vec::with_capacity(wire.len());
    for (chunk, exchange) in wire {
        let answer = match exchange {
            Exchange::Built(e) => Err(Failure::Build(e)),
            Exchange::Sending(task) => match task.await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => Err(Failure::Transport(e)),
                Err(e) => Err(Failure::Transport(
                    crate::channel::TransportError::Network {
                        target: "request task".into(),
                        message: e.to_string(),
                    },
                )),
            },
        };
        answered.push((chunk, answer));
    }
    let parsed = ch
        .plugin
        .offload(move |plugin| Ok(parse(plugin, answered)))
        .await;
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(channel = %ch.name, error = %e, "Round not parsed; it is re-sent at the next start.");
            return;
        }
    };
    // Deciding may read a stored audience (a fallback's next channel), and
    // building the settle batch takes the store's lock and may wait for a
    // full writer queue: both on a blocking thread.
    let (on_shared, on_ch) = (Arc::clone(&shared), Arc::clone(&ch));
    let now = shared.clock.now_ms();
    let settle = move || {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut tally = Tally::default();
        for (r, answer) in parsed {
            let (l, mut outcome) = decide(&on_shared, &on_ch, r, answer, now, &mut rng, &mut tally);
            // Reasons go into retry history and dead letters: never with
            // the connector's secrets (a gateway may echo a token or a
            // URL), never longer than an error text may be.
            clean_reason(&mut outcome, on_ch.plugin.redactor());
            settled.push((l, outcome));
        }
        tally.record(&on_shared, &on_ch);
        on_shared.store.settle(settled)
    };
    match tokio::task::spawn_blocking(settle).await {
        Ok(Ok(p)) => {
            if let Err(e) = p.await {
                tracing::error!(channel = %ch.name, error = %e, "Settle commit failed.");
            }
        }
        Ok(Err(e)) => {
            tracing::error!(channel = %ch.name, error = %e, "Settling failed; the deliveries return after a restart.")
        }
        Err(e) => tracing::error!(channel = %ch.name, error = %e, "Settle task failed."),
    }
    drop(round);
    shared.work.notify_one();
}

/// Why a request got no gateway answer.
enum Failure {
    Build(CallError),
    Transport(crate::channel::TransportError),
}

/// Reads the gateway's answers (on a plugin thread).
fn parse(
    plugin: &Plugin,
    answered: Vec<(Vec<Ready>, std::result::Result<HttpResponse, Failure>)>,
) -> Vec<(Ready, Answer)> {
    let mut out = Vec::new();
    for (chunk, answer) in answered {
        let response = match answer {
            Ok(r) => r,
            Err(failure) => {
                let answer = |f: &Failure| match f {
                    Failure::Build(e) => Answer::Error(e.clone()),
                    Failure::Transport(e) if e.transient() => Answer::Unanswered(e.to_string()),
                    Failure::Transport(e) => Answer::Refused(e.to_string()),
                };
                out.extend(chunk.into_iter().map(|r| (r, answer(&failure))));
                continue;
            }
        };
        let chunk = match <[Ready; 1]>::try_from(chunk) {
            Ok([one]) => {
                let answer = match plugin.parse_send_response(&response) {
                    Ok(o) => Answer::Outcome(o),
                    Err(e) => Answer::Error(e),
                };
                out.push((one, answer));
                continue;
            }
            Err(chunk) => chunk,
        };
        let messages: Vec<OutboundMessage> = chunk.iter().map(|r| r.message.clone()).collect();
        match plugin.parse_batch_response(&messages, &response) {
            Ok(outcomes) => {
                let mut by_id: HashMap<String, SendOutcome> =
                    outcomes.into_iter().map(|o| (o.id, o.outcome)).collect();
                for r in chunk {
                    let answer = match by_id.remove(&r.message.id) {
                        Some(o) => Answer::Outcome(o),
                        None => Answer::Outcome(SendOutcome::Retry(ct::RetryInfo {
                            after_ms: None,
                            reason: "no result in the batch answer".into(),
                        })),
                    };
                    out.push((r, answer));
                }
            }
            Err(e) => out.extend(chunk.into_iter().map(|r| (r, Answer::Error(e.clone())))),
        }
    }
    out
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

fn clean_reason(outcome: &mut Outcome, redactor: &crate::plugin::secrets::Redactor) {
    let reason = match outcome {
        Outcome::Done {
            reason: Some(r), ..
        }
        | Outcome::Retry { reason: r, .. }
        | Outcome::Dead { reason: r }
        | Outcome::Reroute { reason: r, .. } => r,
        Outcome::Done { reason: None, .. } | Outcome::Defer { .. } => return,
    };
    if let std::borrow::Cow::Owned(clean) = redactor.redact(reason) {
        *reason = clean;
    }
    crate::plugin::truncate(reason, crate::plugin::MAX_ERROR_TEXT);
}

/// What the gateway said about one message.
enum Answer {
    Outcome(SendOutcome),
    Error(CallError),
    /// No answer (timeout, connection lost): try again later.
    Unanswered(String),
    /// The request can never be made from this channel (configuration).
    Refused(String),
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

/// What an answer means for its delivery, before any effect: the pure
/// half of deciding (no channel, store or clock is touched).
#[derive(Debug, PartialEq)]
enum Verdict {
    Wired {
        external_id: String,
    },
    /// Try again, not before `floor` (ms from now) when the gateway said
    /// when; `throttled`: it said so for the whole channel.
    Retry {
        floor: Option<u64>,
        reason: String,
        label: &'static str,
        throttled: bool,
    },
    /// This channel can never reach the recipient: the next channel may.
    Fallback {
        reason: String,
    },
    Dead {
        reason: String,
    },
    /// The channel's credentials were refused: not the message's fault.
    Unauthorized {
        message: String,
    },
}

/// Reads a gateway's (or the connector's) answer. What a gateway asks for
/// is honoured up to `max_retry_after_ms`: one answer with a Retry-After
/// of years must not stop a channel (and its emergency lane) for years.
fn classify(answer: Answer, max_retry_after_ms: u64) -> Verdict {
    let cap = |after: Option<u64>| after.map(|a| a.min(max_retry_after_ms));
    let retry = |floor, reason, label| Verdict::Retry {
        floor,
        reason,
        label,
        throttled: false,
    };
    match answer {
        Answer::Outcome(SendOutcome::Accepted(external_id)) => Verdict::Wired { external_id },
        Answer::Outcome(SendOutcome::Retry(info)) => match cap(info.after_ms) {
            Some(after) => Verdict::Retry {
                floor: Some(after),
                reason: info.reason,
                label: reason::THROTTLED,
                throttled: true,
            },
            None => retry(None, info.reason, reason::TRANSIENT),
        },
        Answer::Outcome(SendOutcome::Failed(f)) if f.unreachable => {
            Verdict::Fallback { reason: f.reason }
        }
        Answer::Outcome(SendOutcome::Failed(f)) => Verdict::Dead { reason: f.reason },
        Answer::Error(CallError::Plugin { error, .. }) => match error {
            PluginError::Transient(t) => retry(cap(t.retry_after_ms), t.message, reason::TRANSIENT),
            PluginError::Unauthorized(message) => Verdict::Unauthorized { message },
            PluginError::Permanent(reason) => Verdict::Fallback { reason },
            PluginError::InvalidInput(m) => Verdict::Dead {
                reason: format!("connector refused the message: {m}"),
            },
        },
        // Files on a channel whose connector sends none: the recipient
        // cannot get this message here; the next channel may carry it.
        Answer::Error(CallError::NotExported {
            plugin,
            interface: "media",
        }) => Verdict::Fallback {
            reason: format!("this channel cannot carry media (connector {plugin} sends no files)"),
        },
        // The plugin trapped or its circuit is open: not the message's fault.
        Answer::Error(e) => retry(None, e.to_string(), reason::PLUGIN_FAILURE),
        Answer::Unanswered(why) => retry(None, why, reason::NETWORK),
        Answer::Refused(reason) => Verdict::Dead { reason },
    }
}

/// Decides a delivery's outcome: the verdict, then its effects on the
/// channel (a gateway's pause and rate cut, a credentials pause), the
/// retry policy, the fallback and the tallies.
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
    let (l, o, label) = match classify(answer, ch.config.max_retry_after_ms) {
        Verdict::Wired { external_id } => (
            l,
            Outcome::Done {
                status: DeliveryStatus::Wired,
                // A gateway that gives no id of its own (Kannel) names the
                // message in its reports by ours, as the connector put it
                // in the callback URL.
                external_id: Some(if external_id.is_empty() {
                    r.message.id.clone()
                } else {
                    external_id
                }),
                reason: None,
            },
            outcome::WIRED,
        ),
        Verdict::Retry {
            floor,
            reason,
            label,
            throttled,
        } => {
            if throttled && let Some(after) = floor {
                // The gateway says when: the whole channel waits that long
                // (no longer), and slows only if it has to ask again soon.
                ch.paused_until_ms
                    .fetch_max(now.saturating_add(after), Ordering::Relaxed);
                let measured = ch.sent_last_second.load(Ordering::Relaxed) as f64;
                ch.rate.lock().gateway_paused(measured);
            }
            let attempts = l.item.attempts + 1;
            match ch.config.retry.next_wait(attempts, floor, rng) {
                Some(wait) => {
                    *tally.retries.entry(label).or_default() += 1;
                    (
                        l,
                        Outcome::Retry {
                            due_ms: now.saturating_add(wait),
                            reason,
                        },
                        outcome::RETRIED,
                    )
                }
                None => (
                    l,
                    Outcome::Dead {
                        reason: format!("gave up after {attempts} attempts: {reason}"),
                    },
                    outcome::DEAD,
                ),
            }
        }
        Verdict::Fallback { reason } => fallback(shared, l, reason),
        Verdict::Dead { reason } => (l, Outcome::Dead { reason }, outcome::DEAD),
        Verdict::Unauthorized { message } => {
            let until = now.saturating_add(UNAUTHORIZED_PAUSE_MS);
            if ch.paused_until_ms.fetch_max(until, Ordering::Relaxed) < now {
                tracing::error!(channel = %ch.name, error = %ch.plugin.redactor().redact(&message), "Gateway refused the channel's credentials; channel paused for 30 s. Fix its configuration.");
            }
            *tally.retries.entry(reason::UNAUTHORIZED).or_default() += 1;
            // The channel's credentials, not the message: it waits for the
            // channel without spending an attempt.
            (l, Outcome::Defer { due_ms: until }, outcome::RETRIED)
        }
    };
    *tally.by.entry((lane, label)).or_default() += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::TransportError;

    #[test]
    fn a_batch_carries_one_text() {
        let round = vec!["en", "fr", "en", "sw", "fr", "en"];
        assert_eq!(
            batches(round.clone(), 2, |t| t),
            vec![vec!["en", "en"], vec!["en"], vec!["fr", "fr"], vec!["sw"]]
        );
        // Without a batch form: one message per request, in order.
        assert_eq!(
            batches(round.clone(), 1, |t| t),
            round.iter().map(|t| vec![*t]).collect::<Vec<_>>()
        );
        assert_eq!(batches(round, 100, |t| t).len(), 3);
        assert!(batches(Vec::<&str>::new(), 10, |t| t).is_empty());
    }

    fn retry_info(after_ms: Option<u64>) -> Answer {
        Answer::Outcome(SendOutcome::Retry(ct::RetryInfo {
            after_ms,
            reason: "throttled (429)".into(),
        }))
    }

    #[test]
    fn answers_are_classified_without_touching_the_channel() {
        assert_eq!(
            classify(
                Answer::Outcome(SendOutcome::Accepted("gw-1".into())),
                600_000
            ),
            Verdict::Wired {
                external_id: "gw-1".into()
            }
        );
        // A wait the gateway names is capped, and concerns the channel.
        assert_eq!(
            classify(retry_info(Some(u64::MAX)), 600_000),
            Verdict::Retry {
                floor: Some(600_000),
                reason: "throttled (429)".into(),
                label: reason::THROTTLED,
                throttled: true,
            }
        );
        assert!(matches!(
            classify(retry_info(None), 600_000),
            Verdict::Retry { floor: None, throttled: false, label, .. } if label == reason::TRANSIENT
        ));
        let failed = |unreachable| {
            Answer::Outcome(SendOutcome::Failed(ct::Failure {
                unreachable,
                reason: "unknown subscriber".into(),
            }))
        };
        assert!(matches!(
            classify(failed(true), 1),
            Verdict::Fallback { .. }
        ));
        assert!(matches!(classify(failed(false), 1), Verdict::Dead { .. }));
        let plugin = |error| {
            Answer::Error(CallError::Plugin {
                plugin: "sandbox".into(),
                error,
            })
        };
        assert_eq!(
            classify(plugin(PluginError::InvalidInput("no to".into())), 1),
            Verdict::Dead {
                reason: "connector refused the message: no to".into()
            }
        );
        assert!(matches!(
            classify(plugin(PluginError::Unauthorized("token".into())), 1),
            Verdict::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(plugin(PluginError::Permanent("not on whatsapp".into())), 1),
            Verdict::Fallback { .. }
        ));
        assert!(matches!(
            classify(Answer::Unanswered("timed out".into()), 1),
            Verdict::Retry { label, .. } if label == reason::NETWORK
        ));
        let refused = TransportError::Unsupported {
            target: "ftp://gw.example".into(),
        };
        assert!(matches!(
            classify(Answer::Refused(refused.to_string()), 1),
            Verdict::Dead { .. }
        ));
    }
}
