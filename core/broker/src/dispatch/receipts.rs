//! What webhooks bring back to dispatch: receipts move settled deliveries
//! up the status ladder (and a failure after wiring falls back to the
//! campaign's next channel); inbound messages are kept durably.
//!
//! Receipts from every channel's webhooks go through one applier task, in
//! groups: a status update reads the records it changes, so two updates of
//! one delivery must not overlap, and a group amortises the commit. A
//! webhook is answered once its receipts are committed.
//!
//! A receipt can arrive before its delivery's settle has committed (the
//! gateway answers fast, the commit is still in its group): it is held in
//! memory, bounded, and tried again every `receipt_poll_ms` for a minute.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use mhero_proto::{ChannelId, DeliveryId, DeliveryStatus};
use parking_lot::Mutex;

use super::{Shared, route};
use crate::channel::EventSink;
use crate::channel::transport::BoxFuture;
use crate::error::{Error, Result};
use crate::plugin::bindings::connector_types::{self as ct, InboundMessage, Receipt};
use crate::store::{Clock, InboundRecord, NewDelivery, QueueKey};

/// How long a receipt for an unknown message id is kept and retried.
const HOLD_MS: u64 = 60_000;
/// Most receipts held at once; past it the oldest are dropped and counted.
const MAX_HELD: usize = 100_000;

struct Held {
    channel: ChannelId,
    external_id: String,
    status: DeliveryStatus,
    reason: Option<String>,
    first_seen_ms: u64,
}

/// Most receipts one group applies.
const MAX_GROUP: usize = 20_000;

type Work = (Vec<Held>, tokio::sync::oneshot::Sender<Result<()>>);

/// The dispatcher's [`EventSink`].
pub struct Sink {
    shared: Arc<Shared>,
    held: Mutex<VecDeque<Held>>,
    queue: tokio::sync::mpsc::Sender<Work>,
    work: Mutex<Option<tokio::sync::mpsc::Receiver<Work>>>,
}

fn status_of(s: ct::ReceiptStatus) -> DeliveryStatus {
    match s {
        ct::ReceiptStatus::Sent => DeliveryStatus::Sent,
        ct::ReceiptStatus::Delivered => DeliveryStatus::Delivered,
        ct::ReceiptStatus::Read => DeliveryStatus::Read,
        ct::ReceiptStatus::Failed => DeliveryStatus::Failed,
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("store task failed: {e}"))
}

impl Sink {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let (queue, work) = tokio::sync::mpsc::channel(1024);
        Self {
            shared,
            held: Mutex::new(VecDeque::new()),
            queue,
            work: Mutex::new(Some(work)),
        }
    }

    /// Hands receipts to the applier; resolves once they are applied.
    async fn submit(&self, receipts: Vec<Held>) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .send((receipts, tx))
            .await
            .map_err(|_| Error::Internal("the receipt applier has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Internal("the receipt applier has stopped".into()))?
    }

    /// Receipts held for ids not yet known.
    pub fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// Matches receipts to deliveries, applies them, and falls back for
    /// failures after wiring. Receipts whose id is not known yet are held.
    async fn apply(&self, incoming: Vec<Held>) -> Result<()> {
        if incoming.is_empty() {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let now = shared.clock.now_ms();
        // Lookups read the store: a blocking thread does them.
        let (reports, unknown) = tokio::task::spawn_blocking(move || {
            let ids: Vec<(ChannelId, &str)> = incoming
                .iter()
                .map(|h| (h.channel, h.external_id.as_str()))
                .collect();
            let found = shared.store.by_external_ids(&ids)?;
            let mut reports = Vec::with_capacity(incoming.len());
            let mut unknown = Vec::new();
            for (h, id) in incoming.into_iter().zip(found) {
                match id {
                    Some(id) => reports.push((id, h.status, h.reason)),
                    None => unknown.push(h),
                }
            }
            Ok::<_, Error>((reports, unknown))
        })
        .await
        .map_err(join_error)??;
        self.hold(unknown, now);
        if reports.is_empty() {
            return Ok(());
        }
        let failed: Vec<(DeliveryId, Option<String>)> = reports
            .iter()
            .filter(|(_, s, _)| *s == DeliveryStatus::Failed)
            .map(|(id, _, reason)| (*id, reason.clone()))
            .collect();
        let shared = Arc::clone(&self.shared);
        let pending = tokio::task::spawn_blocking(move || shared.store.update_statuses(&reports))
            .await
            .map_err(join_error)??;
        pending.await?;
        if !failed.is_empty() {
            self.fall_back(failed).await?;
        }
        Ok(())
    }

    /// Deliveries that failed after they were wired: each to the next
    /// channel of its campaign where the recipient has an address, if any.
    async fn fall_back(&self, failed: Vec<(DeliveryId, Option<String>)>) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        // Status and audience reads: one trip to a blocking thread.
        let pending = tokio::task::spawn_blocking(move || {
            let mut pending = Vec::new();
            for (id, reason) in failed {
                let Some(live) = shared.campaign(id.campaign) else {
                    continue;
                };
                if live.stopped() {
                    continue;
                }
                let why = format!(
                    "failed after wiring: {}",
                    reason
                        .as_deref()
                        .unwrap_or("the gateway reported a failure")
                );
                pending.push(shared.store.reroute_failed(id, why, |record| {
                    let Some(position) = live
                        .routes
                        .iter()
                        .position(|(_, c)| *c == Some(record.channel))
                    else {
                        return Ok(None);
                    };
                    let Some(recipient) = live.audience.get(id.index)? else {
                        return Ok(None);
                    };
                    Ok(route(&live, &recipient, position + 1).map(
                        |(channel, route_no, address)| {
                            (
                                QueueKey {
                                    channel,
                                    lane: live.lane,
                                    campaign: id.campaign,
                                },
                                NewDelivery {
                                    index: id.index,
                                    recipient: address,
                                    route: route_no,
                                    language: recipient.language.clone(),
                                },
                            )
                        },
                    ))
                })?);
            }
            Ok::<_, Error>(pending)
        })
        .await
        .map_err(join_error)??;
        let mut moved = 0;
        for p in pending {
            if p.await? {
                moved += 1;
            }
        }
        if moved > 0 {
            self.shared.metrics.rerouted_after_wiring.inc_by(moved);
            self.shared.work.notify_waiters();
        }
        Ok(())
    }

    fn hold(&self, unknown: Vec<Held>, now: u64) {
        let mut held = self.held.lock();
        for h in unknown {
            if now.saturating_sub(h.first_seen_ms) >= HOLD_MS {
                self.shared.metrics.unmatched_receipts.inc();
                continue;
            }
            if held.len() >= MAX_HELD {
                held.pop_front();
                self.shared.metrics.unmatched_receipts.inc();
            }
            held.push_back(h);
        }
    }

    /// Tries the held receipts again.
    async fn retry_held(&self) {
        let again: Vec<Held> = self.held.lock().drain(..).collect();
        if let Err(e) = self.submit(again).await {
            tracing::error!(error = %e, "Applying held receipts failed.");
        }
    }
}

impl EventSink for Sink {
    fn receipts(
        &self,
        channel: ChannelId,
        name: &str,
        receipts: Vec<Receipt>,
    ) -> BoxFuture<'_, Result<()>> {
        let now = self.shared.clock.now_ms();
        // A receipt's reason can become a fallback's history: without the
        // connector's secrets.
        let ch = self.shared.channels.get(name);
        let incoming: Vec<Held> = receipts
            .into_iter()
            .map(|r| {
                let status = status_of(r.status);
                self.shared
                    .metrics
                    .receipts
                    .get_or_create(&super::metrics::ReceiptLabels {
                        channel: name.to_string(),
                        status: status.as_str(),
                    })
                    .inc();
                Held {
                    channel,
                    external_id: r.external_id,
                    status,
                    reason: r.reason.map(|reason| match ch {
                        Some(ch) => ch.plugin.redactor().redact(&reason).into_owned(),
                        None => reason,
                    }),
                    first_seen_ms: now,
                }
            })
            .collect();
        Box::pin(self.submit(incoming))
    }

    fn inbound(
        &self,
        channel: ChannelId,
        name: &str,
        messages: Vec<InboundMessage>,
    ) -> BoxFuture<'_, Result<()>> {
        let now = self.shared.clock.now_ms();
        let n = messages.len() as u64;
        let name = name.to_string();
        let records: Vec<InboundRecord> = messages
            .into_iter()
            .map(|m| InboundRecord {
                channel,
                from: m.from,
                text: m.text,
                external_id: m.external_id,
                received_ms: m.received_at_ms,
                stored_ms: now,
            })
            .collect();
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let store = Arc::clone(&shared.store);
            let pending = tokio::task::spawn_blocking(move || store.put_inbound(channel, records))
                .await
                .map_err(join_error)??;
            pending.await?;
            shared.inbound_arrived.notify_one();
            shared
                .metrics
                .inbound
                .get_or_create(&super::metrics::ChannelLabel { channel: name })
                .inc_by(n);
            Ok(())
        })
    }
}

/// Applies receipts in groups, one group at a time, until shutdown.
pub(crate) async fn applier_task(sink: Arc<Sink>) {
    let Some(mut work) = sink.work.lock().take() else {
        return;
    };
    let mut shutdown = sink.shared.shutdown.clone();
    loop {
        let first = tokio::select! {
            w = work.recv() => w,
            _ = shutdown.changed() => None,
        };
        let Some(first) = first else {
            return;
        };
        let mut group = vec![first];
        let mut size = group[0].0.len();
        while size < MAX_GROUP {
            match work.try_recv() {
                Ok(w) => {
                    size += w.0.len();
                    group.push(w);
                }
                Err(_) => break,
            }
        }
        let mut receipts = Vec::with_capacity(size);
        let mut acks = Vec::with_capacity(group.len());
        for (r, ack) in group {
            receipts.extend(r);
            acks.push(ack);
        }
        let result = sink.apply(receipts).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "Applying receipts failed; their webhooks are refused.");
        }
        for ack in acks {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::Internal(format!("receipts not applied: {e}"))),
            });
        }
    }
}

/// Retries held receipts until shutdown.
pub(crate) async fn retry_held_task(sink: Arc<Sink>, period: Duration) {
    let mut shutdown = sink.shared.shutdown.clone();
    loop {
        if !crate::stop::tick(&mut shutdown, period).await {
            return;
        }
        if sink.held() > 0 {
            sink.retry_held().await;
        }
    }
}
