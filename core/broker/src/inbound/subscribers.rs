//! Integrators' webhooks: every processed inbound message, in order, at
//! least once, as signed JSON POSTs.
//!
//! Each subscriber keeps its own position in the store. A call carries up
//! to `batch` messages:
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! X-Mhero-Signature: sha256=<hex of HMAC-SHA256(secret, body)>
//! X-Mhero-Delivery: <subscriber>-<first seq>   (the same on every retry)
//!
//! {"subscriber": "...", "messages": [InboundEvent…]}
//! ```
//!
//! A 2xx answer moves the position past the call's messages. Anything else
//! (an error status, a timeout, a refused connection) is retried after
//! `backoff_ms`; after `max_attempts` the messages are set aside as
//! undelivered, with the reason (`GET /v1/inbound/subscribers`), and the
//! subscriber goes on. Messages its `routes` do not name are skipped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{InboundEvent, InboundMetrics, SubscriberConfig, SubscriberLabels, blocking};
use crate::error::{Error, Result};
use crate::store::{Store, Undelivered};

/// The JSON body of a call.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Delivery {
    pub subscriber: String,
    pub messages: Vec<InboundEvent>,
}

/// Signature header of subscriber calls.
pub const SIGNATURE_HEADER: &str = "x-mhero-signature";
/// Idempotency key of subscriber calls.
pub const DELIVERY_HEADER: &str = "x-mhero-delivery";

/// One subscriber's sender.
pub struct Subscriber {
    config: SubscriberConfig,
    store: Arc<Store>,
    client: reqwest::Client,
    channel_names: Arc<dyn Fn(mhero_proto::ChannelId) -> String + Send + Sync>,
    metrics: InboundMetrics,
}

impl Subscriber {
    pub fn new(
        config: SubscriberConfig,
        store: Arc<Store>,
        channel_names: Arc<dyn Fn(mhero_proto::ChannelId) -> String + Send + Sync>,
        metrics: InboundMetrics,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms.min(5_000)))
            .build()
            .map_err(|e| Error::Config(format!("inbound subscriber {}: {e}", config.name)))?;
        Ok(Self {
            config,
            store,
            client,
            channel_names,
            metrics,
        })
    }

    /// Sends processed messages as they come until shutdown.
    pub async fn run(
        self,
        mut processed: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.step(&mut shutdown).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(subscriber = %self.config.name, error = %e, "Inbound subscriber stalled; it resumes from its position.");
                }
            }
            tokio::select! {
                _ = processed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Takes the next call's worth of messages to the subscriber; whether
    /// there was any.
    async fn step(&self, shutdown: &mut watch::Receiver<bool>) -> Result<bool> {
        let (store, name, limit) = (
            Arc::clone(&self.store),
            self.config.name.clone(),
            self.config.batch,
        );
        let page = blocking(move || {
            let position = store.subscriber_position(&name)?;
            Ok(store.processed_inbound(position, limit)?)
        })
        .await?;
        let Some(last) = page.last().map(|(seq, _, _)| *seq) else {
            return Ok(false);
        };
        let messages: Vec<InboundEvent> = page
            .into_iter()
            .filter(|(_, _, r)| {
                self.config.routes.is_empty() || self.config.routes.contains(&r.route)
            })
            .map(|(seq, m, r)| {
                let channel = (self.channel_names)(m.channel);
                InboundEvent::new(seq, m, Some(r), channel)
            })
            .collect();
        let undelivered = if messages.is_empty() {
            None
        } else {
            match self.deliver(&messages, shutdown).await {
                Some(Ok(())) => None,
                Some(Err((attempts, reason))) => {
                    tracing::error!(subscriber = %self.config.name, messages = messages.len(), attempts, reason = %reason, "Inbound subscriber refused messages every time; set aside as undelivered.");
                    self.metrics
                        .subscriber_undelivered
                        .get_or_create(&SubscriberLabels {
                            subscriber: self.config.name.clone(),
                            outcome: "undelivered",
                        })
                        .inc_by(messages.len() as u64);
                    Some(Undelivered {
                        seqs: messages.iter().map(|m| m.seq).collect(),
                        attempts,
                        reason,
                        at_ms: self.store.now_ms(),
                    })
                }
                // Shutting down mid-retry: the position stays.
                None => return Ok(false),
            }
        };
        let (store, name) = (Arc::clone(&self.store), self.config.name.clone());
        let pending =
            blocking(move || Ok(store.advance_subscriber(&name, last, undelivered)?)).await?;
        pending.await?;
        Ok(true)
    }

    /// Posts one call, retrying; `None` when shutdown came first.
    async fn deliver(
        &self,
        messages: &[InboundEvent],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<std::result::Result<(), (u32, String)>> {
        let body = serde_json::to_vec(&Delivery {
            subscriber: self.config.name.clone(),
            messages: messages.to_vec(),
        })
        .expect("inbound events serialize");
        let signature = crate::signature::sign(&self.config.secret, &body);
        let delivery = format!("{}-{}", self.config.name, messages[0].seq);
        let mut reason = String::new();
        for attempt in 1..=self.config.max_attempts {
            let sent = self
                .client
                .post(&self.config.url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header(DELIVERY_HEADER, &delivery)
                .body(body.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => {
                    self.count("ok");
                    return Some(Ok(()));
                }
                Ok(r) => {
                    reason = format!("answered {}", r.status());
                    "refused"
                }
                Err(e) if e.is_timeout() => {
                    reason = "no answer in time".into();
                    "timeout"
                }
                Err(e) => {
                    reason = format!("cannot reach it: {}", without_url(&e));
                    "unreachable"
                }
            };
            self.count(outcome);
            if attempt == self.config.max_attempts {
                break;
            }
            let i = (attempt as usize - 1).min(self.config.backoff_ms.len() - 1);
            let wait = Duration::from_millis(self.config.backoff_ms[i]);
            tracing::warn!(subscriber = %self.config.name, attempt, reason = %reason, wait_ms = wait.as_millis() as u64, "Inbound subscriber call failed; retrying.");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return None,
            }
        }
        Some(Err((self.config.max_attempts, reason)))
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .subscriber_calls
            .get_or_create(&SubscriberLabels {
                subscriber: self.config.name.clone(),
                outcome,
            })
            .inc();
    }
}

/// A reqwest error without its URL (it may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    e.truncate(300);
    e
}
