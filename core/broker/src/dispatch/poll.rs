//! Asking gateways that push no delivery reports about the messages they
//! took. RapidPro, for one, reports statuses only through its messages
//! API: a channel whose connector exports `status-poll` (WIT 1.1) has a
//! task that, every `status_poll_s`, walks a page of the channel's receipt
//! index, picks the messages still `wired` or `sent` and handed over within
//! `status_poll_max_age_h`, asks the gateway about them through the
//! connector, and applies the answers as receipts: the same path as a
//! pushed webhook, so a failure still falls back to the next channel.
//!
//! No poll is made while the channel is held by an operator or paused by
//! the gateway.
//!
//! Each poll is bounded: at most [`MAX_VISITS`] index entries read and
//! [`MAX_QUERIES`] requests sent, through the channel's own transport
//! (allowed hosts, timeouts) and window. The walk goes on where the last
//! poll stopped and starts over at the end, so every awaiting message is
//! asked about in turn however many there are.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::receipts::Sink;
use super::sender::Channel;
use crate::channel::EventSink;
use crate::error::{Error, Result};
use crate::plugin::bindings::connector_types::Receipt;
use crate::store::Clock;

/// Most receipt-index entries one poll reads.
pub const MAX_VISITS: usize = 5_000;
/// Most status requests one poll sends.
pub const MAX_QUERIES: usize = 20;
/// Most ids handed to the connector for one request.
pub const MAX_IDS_PER_QUERY: usize = 500;

/// Polls one channel until shutdown.
pub(crate) async fn task(shared: Arc<Shared>, ch: Arc<Channel>, sink: Arc<Sink>) {
    let mut shutdown = shared.shutdown.clone();
    let period = Duration::from_secs(ch.config.status_poll_s.max(1));
    let mut after: Option<String> = None;
    loop {
        if !crate::stop::tick(&mut shutdown, period).await {
            return;
        }
        match poll(&shared, &ch, &sink, &mut after).await {
            Ok(Polled { queries, receipts }) if queries > 0 => {
                tracing::debug!(channel = %ch.name, queries, receipts, "Asked the gateway about messages without a final status.");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(channel = %ch.name, error = %ch.plugin.redactor().redact(&e.to_string()), "Status poll failed; it is tried again at the next one.");
            }
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    pub queries: usize,
    pub receipts: usize,
}

/// One poll: reads the next page of the index, asks, applies.
pub(crate) async fn poll(
    shared: &Arc<Shared>,
    ch: &Arc<Channel>,
    sink: &Sink,
    after: &mut Option<String>,
) -> Result<Polled> {
    let now = shared.clock.now_ms();
    // Not while an operator holds the channel, nor while the gateway has
    // asked for a pause (a 429, a refused credential): a status request is
    // a request to it all the same. The walk resumes where it stopped.
    if ch.held() || ch.backing_off_until(now).is_some() {
        return Ok(Polled::default());
    }
    let since = now.saturating_sub(u64::from(ch.config.status_poll_max_age_h) * 3_600_000);
    let store = Arc::clone(&shared.store);
    let (channel, from) = (ch.id, after.clone());
    let (awaiting, next) = tokio::task::spawn_blocking(move || {
        store.awaiting_status(channel, from.as_deref(), since, MAX_VISITS)
    })
    .await
    .map_err(|e| Error::Internal(format!("status scan failed: {e}")))??;
    *after = next;
    let mut polled = Polled::default();
    let mut rest = awaiting.as_slice();
    let mut receipts: Vec<Receipt> = Vec::new();
    while !rest.is_empty() && polled.queries < MAX_QUERIES {
        let ids: Vec<String> = rest.iter().take(MAX_IDS_PER_QUERY).cloned().collect();
        let (query, ids) = ch
            .plugin
            .offload(move |p| p.build_status_query(&ids).map(|q| (q, ids)))
            .await
            .map_err(|e| Error::Internal(format!("build-status-query: {e}")))?;
        let covers = (query.covers as usize).clamp(1, ids.len());
        let mut ids = ids;
        ids.truncate(covers);
        rest = &rest[covers..];
        polled.queries += 1;
        let response = ch
            .transport
            .send(query.request)
            .await
            .map_err(|e| Error::Internal(format!("status query: {e}")))?;
        let answered = ch
            .plugin
            .offload(move |p| p.parse_status_answer(&ids, &response))
            .await
            .map_err(|e| Error::Internal(format!("parse-status-answer: {e}")))?;
        receipts.extend(answered);
    }
    polled.receipts = receipts.len();
    if !receipts.is_empty() {
        sink.receipts(ch.id, &ch.name, receipts).await?;
    }
    Ok(polled)
}
