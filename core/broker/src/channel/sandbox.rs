//! The sandbox gateway: **a simulator** of an SMS gateway, running inside
//! the broker. It answers the requests the `sandbox` connector builds
//! (`sandbox://gateway/...`), in-process, so the demo, tests and benchmarks
//! exercise the whole send path without a network or a real gateway.
//!
//! It can be told to refuse, throttle, fail or delay a share of sends; it
//! de-duplicates on the idempotency key (and counts duplicates, which is how
//! tests see re-sends); and it produces delivery receipts and scripted
//! replies as signed webhook calls that [`push_webhooks`] delivers to the
//! broker's webhook entry point, as a real gateway's webhooks arrive; what
//! the broker refuses stays pending and is sent again.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use std::sync::Arc;
use std::time::Duration;

use super::transport::{BoxFuture, Transport, TransportError};
use super::webhooks::Webhooks;
use crate::plugin::bindings::{Header, HttpRequest, HttpResponse};
use crate::signature::sign;
use crate::store::Clock;

/// What the simulated gateway does. Shares are percentages (0–100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Bearer token it expects.
    pub token: String,
    /// HMAC-SHA256 key it signs webhooks with.
    pub webhook_secret: String,
    /// Recipients it does not know (decided per number, so the same number
    /// always fails): refused with `unknown_subscriber`.
    pub unknown_percent: f64,
    /// Sends answered 429 with `Retry-After: retry_after_s`.
    pub throttle_percent: f64,
    pub retry_after_s: u64,
    /// Sends answered 503.
    pub error_percent: f64,
    /// Latency added to every send answer (ms).
    pub delay_ms: u64,
    /// Whether accepted sends produce delivery receipts.
    pub receipts: bool,
    /// When receipts come, after acceptance (ms).
    pub receipt_delay_ms: u64,
    /// Accepted sends whose receipt says failed instead of delivered.
    pub undelivered_percent: f64,
    /// Delivered messages that also get a `read` receipt.
    pub read_percent: f64,
    /// Delivered messages the recipient answers, with one of `replies`.
    pub reply_percent: f64,
    pub replies: Vec<String>,
    /// Seed of the random choices, for reproducible runs.
    pub seed: u64,
    /// Keep the time and id of every accepted send (benchmarks measure
    /// rates and latencies with it); costs memory per send.
    pub record_times: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            token: "sandbox-token".into(),
            webhook_secret: "sandbox-secret".into(),
            unknown_percent: 0.0,
            throttle_percent: 0.0,
            retry_after_s: 1,
            error_percent: 0.0,
            delay_ms: 0,
            receipts: true,
            receipt_delay_ms: 200,
            undelivered_percent: 0.0,
            read_percent: 0.0,
            reply_percent: 0.0,
            replies: vec!["YES".into(), "NO".into(), "1".into()],
            seed: 1,
            record_times: false,
        }
    }
}

impl SandboxConfig {
    /// Checks ranges; `path` is the config key path for messages.
    pub fn validate(&self, path: &str) -> Result<(), String> {
        for (key, v) in [
            ("unknown_percent", self.unknown_percent),
            ("throttle_percent", self.throttle_percent),
            ("error_percent", self.error_percent),
            ("undelivered_percent", self.undelivered_percent),
            ("read_percent", self.read_percent),
            ("reply_percent", self.reply_percent),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{path}.{key} must be between 0 and 100"));
            }
        }
        if self.reply_percent > 0.0 && self.replies.is_empty() {
            return Err(format!(
                "{path}.replies must not be empty when reply_percent > 0"
            ));
        }
        Ok(())
    }
}

/// Counts since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SandboxStats {
    pub requests: u64,
    pub accepted: u64,
    /// Sends of an id already accepted (answered with the first message id).
    pub duplicates: u64,
    pub unknown: u64,
    pub throttled: u64,
    pub errors: u64,
    pub unauthorized: u64,
    /// Receipts and replies the broker accepted.
    pub receipts: u64,
    pub replies: u64,
    /// Webhook calls the broker refused (their events are sent again).
    pub webhooks_refused: u64,
    /// Most webhook calls out at once.
    pub peak_webhook_calls: u64,
}

/// A receipt or reply waiting for its webhook; kept compact (a million
/// of them can be pending) and turned into JSON only when sent.
enum Pending {
    Receipt {
        due_ms: u64,
        message_id: Box<str>,
        status: &'static str,
    },
    Reply {
        due_ms: u64,
        message_id: Box<str>,
        from: Box<str>,
        text: usize,
    },
    /// A message a test (or a demo) has a worker send.
    Scripted {
        due_ms: u64,
        id: Box<str>,
        from: Box<str>,
        text: Box<str>,
    },
}

impl Pending {
    fn due_ms(&self) -> u64 {
        match self {
            Pending::Receipt { due_ms, .. }
            | Pending::Reply { due_ms, .. }
            | Pending::Scripted { due_ms, .. } => *due_ms,
        }
    }
}

#[derive(Serialize)]
struct WireReceipt<'a> {
    message_id: &'a str,
    status: &'static str,
    at_ms: u64,
}

#[derive(Serialize)]
struct WireReply<'a> {
    id: String,
    from: &'a str,
    text: &'a str,
    at_ms: u64,
}

#[derive(Serialize)]
struct WireWebhook<'a> {
    receipts: Vec<WireReceipt<'a>>,
    inbound: Vec<WireReply<'a>>,
}

/// Most message ids the simulated gateway remembers for idempotency.
const IDEMPOTENCY_WINDOW: usize = 2_000_000;
/// Most acceptance times it records (`record_times`, for measurements).
const MAX_ACCEPT_LOG: usize = 5_000_000;

struct State {
    rng: SmallRng,
    /// The message ids it hands out, `sbx-<run>-<n>`: `run` is drawn at
    /// each start and `n` counts from 1, so a restarted simulator does not
    /// give a new message an id an earlier one had (a real gateway's ids
    /// are unique; the broker's receipt index is keyed by them).
    run: u32,
    next_id: u64,
    accepted_ids: HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>,
    /// The same ids, oldest first: past [`IDEMPOTENCY_WINDOW`] the oldest
    /// are forgotten, as a real gateway keeps idempotency keys for a while,
    /// not forever.
    accepted_order: VecDeque<u64>,
    pending: VecDeque<Pending>,
    /// Events taken into webhook calls not yet answered, and those calls.
    in_flight: usize,
    calls: u64,
    stats: SandboxStats,
    accept_log: Vec<(u64, String)>,
}

/// The dedup set holds hashes already: hashing them again is waste.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub struct SandboxGateway {
    config: SandboxConfig,
    state: Mutex<State>,
    hasher: std::hash::RandomState,
    /// Most message ids remembered for idempotency.
    idempotency_window: usize,
    /// The latency now: `config.delay_ms` until [`SandboxGateway::set_delay_ms`].
    delay_ms: std::sync::atomic::AtomicU64,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    to: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireBatch<'a> {
    #[serde(borrow)]
    messages: Vec<WireMessage<'a>>,
}

#[derive(Serialize)]
struct Accepted<'a> {
    message_id: &'a str,
}

#[derive(Serialize)]
struct BatchResult<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct BatchReply<'a> {
    results: Vec<BatchResult<'a>>,
}

enum Decision {
    Accepted(String),
    Unknown,
    Throttled,
    Error,
}

impl SandboxGateway {
    pub fn new(config: SandboxConfig) -> Self {
        let state = State {
            rng: SmallRng::seed_from_u64(config.seed),
            run: rand::random(),
            next_id: 1,
            accepted_ids: HashSet::default(),
            accepted_order: VecDeque::new(),
            pending: VecDeque::new(),
            in_flight: 0,
            calls: 0,
            stats: SandboxStats::default(),
            accept_log: Vec::new(),
        };
        Self {
            state: Mutex::new(state),
            hasher: std::hash::RandomState::new(),
            idempotency_window: IDEMPOTENCY_WINDOW,
            delay_ms: config.delay_ms.into(),
            config,
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn stats(&self) -> SandboxStats {
        self.state.lock().stats.clone()
    }

    /// Latency the caller should wait before using an answer.
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers from now on after `ms`: a gateway that slows down under
    /// load and recovers.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn hash(&self, s: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(s.as_bytes());
        h.finish()
    }

    /// Whether a number is one the gateway does not know: a fixed property
    /// of the number (FNV-1a, independent of the run).
    fn unknown_number(&self, to: &str) -> bool {
        if self.config.unknown_percent <= 0.0 {
            return false;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in to.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h % 10_000) as f64 / 100.0 < self.config.unknown_percent
    }

    /// Answers one request built for a `sandbox:` URL. `now_ms` stamps the
    /// receipts it schedules.
    pub fn handle(&self, request: &HttpRequest, now_ms: u64) -> HttpResponse {
        let mut state = self.state.lock();
        state.stats.requests += 1;
        let expected = format!("Bearer {}", self.config.token);
        let authorized = header(&request.headers, "authorization").is_some_and(|v| v == expected);
        if !authorized {
            state.stats.unauthorized += 1;
            return respond(401, json!({"error": "bad or missing token"}));
        }
        if request.method != "POST" {
            return respond(405, json!({"error": "use POST"}));
        }
        match request.url.as_str() {
            "sandbox://gateway/messages" => {
                let Ok(m) = serde_json::from_slice::<WireMessage<'_>>(&request.body) else {
                    return respond(
                        400,
                        json!({"error": "unreadable message", "code": "bad_request"}),
                    );
                };
                match self.decide(&mut state, &m, now_ms) {
                    Decision::Accepted(id) => respond_typed(202, &Accepted { message_id: &id }),
                    Decision::Unknown => respond(
                        400,
                        json!({"error": "unknown subscriber", "code": "unknown_subscriber"}),
                    ),
                    Decision::Throttled => {
                        let mut r = respond(429, json!({"error": "throttled"}));
                        r.headers.push(Header {
                            name: "retry-after".into(),
                            value: self.config.retry_after_s.to_string(),
                        });
                        r
                    }
                    Decision::Error => respond(503, json!({"error": "temporarily unavailable"})),
                }
            }
            "sandbox://gateway/messages/batch" => {
                let Ok(batch) = serde_json::from_slice::<WireBatch<'_>>(&request.body) else {
                    return respond(
                        400,
                        json!({"error": "unreadable batch", "code": "bad_request"}),
                    );
                };
                if batch.messages.len() > 100 {
                    return respond(413, json!({"error": "at most 100 messages per batch"}));
                }
                // Throttling and errors apply to the whole request.
                let roll = state.rng.random_range(0.0..100.0);
                if roll < self.config.throttle_percent {
                    state.stats.throttled += batch.messages.len() as u64;
                    let mut r = respond(429, json!({"error": "throttled"}));
                    r.headers.push(Header {
                        name: "retry-after".into(),
                        value: self.config.retry_after_s.to_string(),
                    });
                    return r;
                }
                let results = batch
                    .messages
                    .iter()
                    .map(|m| match self.accept_or_refuse(&mut state, m, now_ms) {
                        Some(id) => BatchResult {
                            id: &m.id,
                            message_id: Some(id),
                            error: None,
                            code: None,
                        },
                        None => BatchResult {
                            id: &m.id,
                            message_id: None,
                            error: Some("unknown subscriber"),
                            code: Some("unknown_subscriber"),
                        },
                    })
                    .collect();
                respond_typed(200, &BatchReply { results })
            }
            other => respond(404, json!({"error": format!("no such endpoint {other}")})),
        }
    }

    fn decide(&self, state: &mut State, m: &WireMessage<'_>, now_ms: u64) -> Decision {
        let roll = state.rng.random_range(0.0..100.0);
        if roll < self.config.throttle_percent {
            state.stats.throttled += 1;
            return Decision::Throttled;
        }
        if roll < self.config.throttle_percent + self.config.error_percent {
            state.stats.errors += 1;
            return Decision::Error;
        }
        match self.accept_or_refuse(state, m, now_ms) {
            Some(id) => Decision::Accepted(id),
            None => Decision::Unknown,
        }
    }

    fn accept_or_refuse(
        &self,
        state: &mut State,
        m: &WireMessage<'_>,
        now_ms: u64,
    ) -> Option<String> {
        if self.unknown_number(&m.to) {
            state.stats.unknown += 1;
            return None;
        }
        let key = self.hash(&m.id);
        if !state.accepted_ids.insert(key) {
            // Idempotent: a re-send of an accepted id is not delivered again.
            state.stats.duplicates += 1;
            return Some(format!("sbx-dup-{key:016x}"));
        }
        state.accepted_order.push_back(key);
        if state.accepted_order.len() > self.idempotency_window
            && let Some(oldest) = state.accepted_order.pop_front()
        {
            state.accepted_ids.remove(&oldest);
        }
        state.stats.accepted += 1;
        if self.config.record_times && state.accept_log.len() < MAX_ACCEPT_LOG {
            state.accept_log.push((now_ms, m.id.to_string()));
        }
        let n = state.next_id;
        state.next_id += 1;
        let message_id = format!("sbx-{:08x}-{n}", state.run);
        if self.config.receipts {
            self.schedule_receipts(state, &message_id, &m.to, now_ms);
        }
        Some(message_id)
    }

    fn schedule_receipts(&self, state: &mut State, message_id: &str, to: &str, now_ms: u64) {
        let due = now_ms.saturating_add(self.config.receipt_delay_ms);
        let undelivered = state.rng.random_range(0.0..100.0) < self.config.undelivered_percent;
        let status = if undelivered {
            "undelivered"
        } else {
            "delivered"
        };
        state.pending.push_back(Pending::Receipt {
            due_ms: due,
            message_id: message_id.into(),
            status,
        });
        if undelivered {
            return;
        }
        if state.rng.random_range(0.0..100.0) < self.config.read_percent {
            state.pending.push_back(Pending::Receipt {
                due_ms: due,
                message_id: message_id.into(),
                status: "read",
            });
        }
        if state.rng.random_range(0.0..100.0) < self.config.reply_percent {
            let text = state.rng.random_range(0..self.config.replies.len());
            state.pending.push_back(Pending::Reply {
                due_ms: due,
                message_id: message_id.into(),
                from: to.into(),
                text,
            });
        }
    }

    /// Has a worker at `from` send `text` now, with gateway message id
    /// `id` (the same id twice is a gateway sending one message twice): it
    /// reaches the broker with the next webhook call, as any reply does.
    pub fn worker_sends(&self, id: &str, from: &str, text: &str, now_ms: u64) {
        let mut state = self.state.lock();
        let due_ms = state
            .pending
            .back()
            .map_or(now_ms, |p| p.due_ms().max(now_ms));
        state.pending.push_back(Pending::Scripted {
            due_ms,
            id: id.into(),
            from: from.into(),
            text: text.into(),
        });
    }

    /// The next signed webhook call: up to `max` receipts and replies due
    /// by `now_ms`, taken from the front of what is pending; `None` when
    /// nothing is due. With `receipts_only` it stops at the first reply.
    /// The events are out until [`Self::webhook_answered`] says whether the
    /// broker took them: like a real gateway, the simulator keeps what the
    /// broker refused and sends it again.
    pub fn take_webhook(
        &self,
        now_ms: u64,
        max: usize,
        receipts_only: bool,
    ) -> Option<(HttpRequest, SandboxWebhook)> {
        let mut state = self.state.lock();
        let n = state
            .pending
            .iter()
            .take(max)
            .take_while(|p| {
                p.due_ms() <= now_ms && (!receipts_only || matches!(p, Pending::Receipt { .. }))
            })
            .count();
        if n == 0 {
            return None;
        }
        let events: Vec<Pending> = state.pending.drain(..n).collect();
        state.in_flight += n;
        state.calls += 1;
        state.stats.peak_webhook_calls = state.stats.peak_webhook_calls.max(state.calls);
        drop(state);
        let mut hook = WireWebhook {
            receipts: Vec::new(),
            inbound: Vec::new(),
        };
        for p in &events {
            match p {
                Pending::Receipt {
                    due_ms,
                    message_id,
                    status,
                } => hook.receipts.push(WireReceipt {
                    message_id,
                    status,
                    at_ms: *due_ms,
                }),
                Pending::Reply {
                    due_ms,
                    message_id,
                    from,
                    text,
                } => hook.inbound.push(WireReply {
                    id: format!("in-{message_id}"),
                    from,
                    text: &self.config.replies[*text],
                    at_ms: *due_ms,
                }),
                Pending::Scripted {
                    due_ms,
                    id,
                    from,
                    text,
                } => hook.inbound.push(WireReply {
                    id: id.to_string(),
                    from,
                    text,
                    at_ms: *due_ms,
                }),
            }
        }
        let replies = !hook.inbound.is_empty();
        let body = serde_json::to_vec(&hook).unwrap_or_default();
        let request = HttpRequest {
            method: "POST".into(),
            url: "/webhooks/sandbox".into(),
            headers: vec![
                Header {
                    name: "content-type".into(),
                    value: "application/json".into(),
                },
                Header {
                    name: "x-sandbox-signature".into(),
                    value: sign(&self.config.webhook_secret, &body),
                },
            ],
            body,
        };
        Some((request, SandboxWebhook { events, replies }))
    }

    /// The broker answered a webhook call: taken (`accepted`), or refused,
    /// and then its events go back to the front, in their order, to be
    /// sent again.
    pub fn webhook_answered(&self, hook: SandboxWebhook, accepted: bool) {
        let mut state = self.state.lock();
        state.in_flight -= hook.events.len();
        state.calls -= 1;
        if accepted {
            for e in &hook.events {
                match e {
                    Pending::Receipt { .. } => state.stats.receipts += 1,
                    Pending::Reply { .. } | Pending::Scripted { .. } => state.stats.replies += 1,
                }
            }
        } else {
            state.stats.webhooks_refused += 1;
            for e in hook.events.into_iter().rev() {
                state.pending.push_front(e);
            }
        }
    }

    /// When each send was accepted (ms) and its message id, in order, with
    /// `record_times` on.
    pub fn accept_log(&self) -> Vec<(u64, String)> {
        self.state.lock().accept_log.clone()
    }

    /// Receipts and replies the broker has not taken yet (waiting, or in
    /// a webhook call not yet answered).
    pub fn pending_webhook_events(&self) -> usize {
        let state = self.state.lock();
        state.pending.len() + state.in_flight
    }
}

/// The simulator as a channel's transport: it owns its simulated latency.
pub struct SandboxTransport {
    gateway: Arc<SandboxGateway>,
    clock: Arc<dyn Clock>,
}

impl SandboxTransport {
    pub fn new(gateway: Arc<SandboxGateway>, clock: Arc<dyn Clock>) -> Self {
        Self { gateway, clock }
    }

    pub fn gateway(&self) -> &Arc<SandboxGateway> {
        &self.gateway
    }
}

impl Transport for SandboxTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(async move {
            let delay = self.gateway.delay_ms();
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok(self.gateway.handle(&request, self.clock.now_ms()))
        })
    }
}

/// The events of one webhook call in flight (see
/// [`SandboxGateway::take_webhook`]).
pub struct SandboxWebhook {
    events: Vec<Pending>,
    /// Whether it carries replies: those go alone, so the broker reads one
    /// worker's replies in the order they were sent.
    replies: bool,
}

/// Webhook calls the simulator keeps in flight, as a gateway posts its
/// reports over a few connections: the broker parses one call while it
/// commits another.
pub const WEBHOOKS_IN_FLIGHT: usize = 4;

/// Most receipts and replies in one webhook call.
pub const WEBHOOK_EVENTS: usize = 2000;

/// Delivers the simulator's due receipts and replies to the broker's
/// webhook entry point every `period`, until `shutdown` turns true: up to
/// [`WEBHOOKS_IN_FLIGHT`] calls of receipts at once, a call with replies
/// alone. Once a call is refused no new one starts until the next period;
/// its events are sent again then.
pub async fn push_webhooks(
    gateway: Arc<SandboxGateway>,
    clock: Arc<dyn Clock>,
    channel: String,
    webhooks: Arc<Webhooks>,
    period: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if !crate::stop::tick(&mut shutdown, period).await {
            return;
        }
        let mut calls = tokio::task::JoinSet::new();
        let mut out = std::collections::HashMap::new();
        let mut alone = false;
        let mut refused = false;
        loop {
            while !refused && !alone && calls.len() < WEBHOOKS_IN_FLIGHT {
                let Some((request, hook)) =
                    gateway.take_webhook(clock.now_ms(), WEBHOOK_EVENTS, !calls.is_empty())
                else {
                    break;
                };
                alone = hook.replies;
                let (webhooks, channel) = (Arc::clone(&webhooks), channel.clone());
                let task = calls.spawn(async move { webhooks.handle(&channel, request).await });
                out.insert(task.id(), hook);
            }
            let Some(done) = calls.join_next_with_id().await else {
                break;
            };
            alone = false;
            // A call that panicked counts as refused: its events are kept.
            let (id, accepted) = match done {
                Ok((id, response)) => (id, (200..300).contains(&response.status)),
                Err(e) => (e.id(), false),
            };
            refused |= !accepted;
            if let Some(hook) = out.remove(&id) {
                gateway.webhook_answered(hook, accepted);
            }
        }
    }
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn respond_typed<T: Serialize>(status: u16, body: &T) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

fn respond(status: u16, body: serde_json::Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: &str, to: &str, token: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url: "sandbox://gateway/messages".into(),
            headers: vec![Header {
                name: "Authorization".into(),
                value: format!("Bearer {token}"),
            }],
            body: serde_json::to_vec(&json!({"id": id, "to": to, "text": "hi", "lane": "normal"}))
                .unwrap(),
        }
    }

    #[test]
    fn idempotency_ids_are_remembered_in_a_bounded_window() {
        let mut gw = SandboxGateway::new(SandboxConfig {
            receipts: false,
            ..SandboxConfig::default()
        });
        gw.idempotency_window = 3;
        for i in 1..=4 {
            gw.handle(
                &send(&format!("c1-{i}"), "+231770000001", "sandbox-token"),
                1000,
            );
        }
        // The newest three are still known; the oldest was forgotten.
        gw.handle(&send("c1-4", "+231770000001", "sandbox-token"), 1001);
        gw.handle(&send("c1-1", "+231770000001", "sandbox-token"), 1002);
        let stats = gw.stats();
        assert_eq!((stats.accepted, stats.duplicates), (5, 1));
        let state = gw.state.lock();
        assert_eq!(state.accepted_ids.len(), 3);
        assert_eq!(state.accepted_order.len(), 3);
    }

    #[test]
    fn accepts_dedups_and_schedules_receipts() {
        let gw = SandboxGateway::new(SandboxConfig {
            receipt_delay_ms: 100,
            read_percent: 100.0,
            reply_percent: 100.0,
            ..SandboxConfig::default()
        });
        let first = gw.handle(&send("c1-1", "+231770000001", "sandbox-token"), 1000);
        assert_eq!(first.status, 202);
        let again = gw.handle(&send("c1-1", "+231770000001", "sandbox-token"), 1001);
        assert_eq!(again.status, 202);
        let stats = gw.stats();
        assert_eq!((stats.accepted, stats.duplicates), (1, 1));
        assert!(
            gw.take_webhook(1099, 10, false).is_none(),
            "receipts wait their delay"
        );
        let (first, out) = gw.take_webhook(1100, 10, true).unwrap();
        assert!(!out.replies, "the receipts without the reply");
        assert_eq!(gw.pending_webhook_events(), 3, "two out, one waiting");
        assert!(gw.take_webhook(1100, 10, true).is_none(), "a reply is next");
        gw.webhook_answered(out, false);
        let (again, out) = gw.take_webhook(1100, 10, true).unwrap();
        assert_eq!(again.body, first.body, "a refused call is sent again");
        gw.webhook_answered(out, false);
        assert_eq!(gw.stats().webhooks_refused, 2);
        let (hook, out) = gw.take_webhook(1100, 10, false).unwrap();
        assert!(out.replies);
        gw.webhook_answered(out, true);
        assert_eq!(gw.pending_webhook_events(), 0);
        let body: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(
            body["receipts"].as_array().unwrap().len(),
            2,
            "delivered and read, in front of the reply"
        );
        assert_eq!(body["inbound"][0]["from"], "+231770000001");
        assert_eq!(
            header(&hook.headers, "x-sandbox-signature").unwrap(),
            sign("sandbox-secret", &hook.body)
        );
        assert!(gw.take_webhook(5000, 10, false).is_none());
        assert_eq!((gw.stats().receipts, gw.stats().replies), (2, 1));
    }

    #[test]
    fn a_restarted_gateway_does_not_reuse_an_earlier_message_id() {
        let accepted = |gw: &SandboxGateway, id: &str| -> String {
            let answer = gw.handle(&send(id, "+231770000001", "sandbox-token"), 1000);
            assert_eq!(answer.status, 202);
            let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            body["message_id"].as_str().unwrap().to_string()
        };
        let config = SandboxConfig {
            receipts: false,
            ..SandboxConfig::default()
        };
        let before = SandboxGateway::new(config.clone());
        let first = [accepted(&before, "c1-1"), accepted(&before, "c1-2")];
        assert_ne!(first[0], first[1]);
        // The same configuration (and seed) after a restart: the next
        // campaign's messages get ids of their own.
        let after = SandboxGateway::new(config);
        let second = [accepted(&after, "c2-1"), accepted(&after, "c2-2")];
        for id in &second {
            assert!(
                !first.contains(id),
                "{id} was handed out before the restart"
            );
        }
    }

    #[test]
    fn refuses_bad_tokens_unknown_numbers_and_throttles() {
        let gw = SandboxGateway::new(SandboxConfig {
            unknown_percent: 100.0,
            ..SandboxConfig::default()
        });
        assert_eq!(gw.handle(&send("c1-1", "+1", "wrong"), 0).status, 401);
        let r = gw.handle(&send("c1-1", "+1", "sandbox-token"), 0);
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("unknown_subscriber"));
        let gw = SandboxGateway::new(SandboxConfig {
            throttle_percent: 100.0,
            retry_after_s: 7,
            ..SandboxConfig::default()
        });
        let r = gw.handle(&send("c1-1", "+1", "sandbox-token"), 0);
        assert_eq!(r.status, 429);
        assert_eq!(header(&r.headers, "retry-after"), Some("7"));
        let gw = SandboxGateway::new(SandboxConfig {
            error_percent: 100.0,
            ..SandboxConfig::default()
        });
        assert_eq!(
            gw.handle(&send("c1-1", "+1", "sandbox-token"), 0).status,
            503
        );
    }

    #[test]
    fn unknown_numbers_are_a_fixed_share_of_numbers() {
        let gw = SandboxGateway::new(SandboxConfig {
            unknown_percent: 10.0,
            receipts: false,
            ..SandboxConfig::default()
        });
        let refused = (0..10_000)
            .filter(|i| {
                gw.handle(
                    &send(&format!("c1-{i}"), &format!("+2317{i:08}"), "sandbox-token"),
                    0,
                )
                .status
                    == 400
            })
            .count();
        assert!((800..1200).contains(&refused), "{refused}");
        // The same number is refused again on a retry.
        let n = (0..10_000)
            .find(|i| gw.unknown_number(&format!("+2317{i:08}")))
            .unwrap();
        assert_eq!(
            gw.handle(&send("c9-1", &format!("+2317{n:08}"), "sandbox-token"), 0)
                .status,
            400
        );
    }

    #[test]
    fn config_ranges_name_the_key() {
        let bad = SandboxConfig {
            throttle_percent: 120.0,
            ..SandboxConfig::default()
        };
        assert_eq!(
            bad.validate("channels.sms.sandbox").unwrap_err(),
            "channels.sms.sandbox.throttle_percent must be between 0 and 100"
        );
    }
}
