//! REST JSON under `/v1`.
//!
//! Handlers decide nothing themselves: they check the request's shape,
//! hand it to the dispatcher, the directory or the store (reads of the
//! store run on blocking threads), and say what happened.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mhero_proto::{CampaignId, DeliveryId, Lane};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::auth::{Role, TokenInfo};
use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::audience::Recipient;
use crate::dispatch::{AudienceSpec, Body, CampaignSpec, Progress};
use crate::inbound::InboundEvent;

/// A lane: how urgent a campaign is. Higher lanes are always sent first.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LaneName {
    Emergency,
    High,
    #[default]
    Normal,
    Bulk,
}

impl From<LaneName> for Lane {
    fn from(l: LaneName) -> Self {
        match l {
            LaneName::Emergency => Lane::Emergency,
            LaneName::High => Lane::High,
            LaneName::Normal => Lane::Normal,
            LaneName::Bulk => Lane::Bulk,
        }
    }
}

/// Who receives a campaign: a list, or the directory's contacts a
/// selector names (frozen when the campaign is accepted).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AudienceRequest {
    Recipients(Vec<Recipient>),
    /// `role:nurse AND location:Location/bong`; see the README.
    Selector(String),
}

/// A campaign to send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    #[serde(default)]
    pub lane: LaneName,
    pub body: Body,
    /// Channel names in preference order: a recipient unreachable on one
    /// falls back to the next.
    pub channels: Vec<String>,
    pub audience: AudienceRequest,
    /// Nothing is sent after this time (ms since the Unix epoch).
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Nothing is sent before this time (ms since the Unix epoch).
    #[serde(default)]
    pub start_at_ms: Option<u64>,
}

impl From<CampaignRequest> for CampaignSpec {
    fn from(r: CampaignRequest) -> Self {
        CampaignSpec {
            name: r.name,
            lane: r.lane.into(),
            body: r.body,
            channels: r.channels,
            audience: match r.audience {
                AudienceRequest::Recipients(list) => AudienceSpec::Recipients(list),
                AudienceRequest::Selector(s) => AudienceSpec::Selector(s),
            },
            expires_at_ms: r.expires_at_ms,
            start_at_ms: r.start_at_ms,
        }
    }
}

/// A recipient the submission left out, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedRecipient {
    /// Its place in the submitted list (from 0).
    pub index: usize,
    pub reason: String,
}

/// The answer to a submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignCreated {
    pub id: String,
    pub accepted: u32,
    pub rejected: Vec<RejectedRecipient>,
    /// A retry with the same `Idempotency-Key`: what the first submission
    /// was answered; nothing was sent again.
    pub replayed: bool,
}

/// A campaign's counts, with an estimate of when it ends.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignStatus {
    #[serde(flatten)]
    pub progress: Progress,
    /// Seconds until every recipient has ended, at the campaign's rate so
    /// far; none before anything has ended, 0 once done.
    pub eta_s: Option<f64>,
}

impl CampaignStatus {
    fn new(progress: Progress, now_ms: u64) -> Self {
        let eta_s = if progress.done {
            Some(0.0)
        } else if progress.ended == 0 {
            None
        } else {
            let elapsed_s = now_ms.saturating_sub(progress.created_ms) as f64 / 1000.0;
            let rate = progress.ended as f64 / elapsed_s.max(0.001);
            let left = progress.total.saturating_sub(progress.ended) as f64;
            Some((left / rate * 10.0).round() / 10.0)
        };
        Self { progress, eta_s }
    }
}

fn now_ms(api: &Api) -> u64 {
    api.broker.dispatcher().now_ms()
}

fn campaign_id(id: &str) -> Result<CampaignId, ApiError> {
    id.parse()
        .map_err(|e: mhero_proto::ParseIdError| ApiError::not_found(e.to_string()))
}

/// Submit a campaign.
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", security(("token" = [])),
    request_body = CampaignRequest,
    responses(
        (status = 201, description = "Accepted; sending starts at once (or at its start time)", body = CampaignCreated),
        (status = 200, description = "A retry with the same Idempotency-Key: the first submission's answer; nothing is sent again", body = CampaignCreated),
        (status = 409, description = "The first submission with this Idempotency-Key is still being accepted: retry", body = ErrorBody),
        (status = 400, description = "Invalid: the message names the field", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, description = "Body over api.max_body_kb", body = ErrorBody),
    ))]
pub async fn create_campaign(
    State(api): State<Arc<Api>>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<CampaignRequest>,
) -> Result<Response, ApiError> {
    // With an Idempotency-Key, the campaign as asked for identifies the
    // request (JSON, so the body's spacing and key order do not matter).
    let submitted = api
        .submit(&headers, request.into(), |spec| {
            let mut bytes = b"POST /v1/campaigns\n".to_vec();
            bytes.extend(serde_json::to_vec(spec).unwrap_or_default());
            bytes
        })
        .await?;
    let id = submitted.id.to_string();
    let status = if submitted.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = CampaignCreated {
        id: id.clone(),
        replayed: submitted.replayed,
        accepted: submitted.accepted,
        rejected: submitted
            .rejected
            .into_iter()
            .map(|r| RejectedRecipient {
                index: r.index,
                reason: r.reason,
            })
            .collect(),
    };
    Ok((
        status,
        [(header::LOCATION, format!("/v1/campaigns/{id}"))],
        Json(body),
    )
        .into_response())
}

/// A campaign's live counts and ETA.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", security(("token" = [])),
    params(("id" = String, Path, description = "Campaign id (`c12`)")),
    responses(
        (status = 200, body = CampaignStatus),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_campaign(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<CampaignStatus>, ApiError> {
    let id = campaign_id(&id)?;
    let reader = Arc::clone(&api);
    let progress = tokio::task::spawn_blocking(move || reader.broker.dispatcher().progress(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no campaign {id}")))?;
    Ok(Json(CampaignStatus::new(progress, now_ms(&api))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most campaigns listed, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Campaigns, newest first.
#[utoipa::path(get, path = "/v1/campaigns", tag = "campaigns", security(("token" = [])),
    params(ListQuery),
    responses((status = 200, body = Vec<CampaignStatus>)))]
pub async fn list_campaigns(
    State(api): State<Arc<Api>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<CampaignStatus>>, ApiError> {
    let limit = query.limit.unwrap_or(100).min(1000);
    let reader = Arc::clone(&api);
    let all = tokio::task::spawn_blocking(move || reader.broker.dispatcher().list_progress(limit))
        .await??;
    let now = now_ms(&api);
    Ok(Json(
        all.into_iter()
            .map(|p| CampaignStatus::new(p, now))
            .collect(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// First position in the audience (default 0).
    pub from: Option<u32>,
    /// Most deliveries listed (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// One delivery of a campaign.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryStatusView {
    /// `c12-40017`
    pub id: String,
    /// The recipient's address on the channel it went out on (or its
    /// phone number).
    pub to: Option<String>,
    /// `queued`, `wired`, `sent`, `delivered`, `read`, `failed`,
    /// `expired`, `cancelled`.
    pub status: String,
    /// Dead-lettered (a `failed` that can be replayed).
    pub dead: bool,
    pub channel: Option<String>,
    pub attempts: u16,
    /// When it left the queue (ms since the epoch).
    pub sent_ms: Option<u64>,
    /// When its status last changed (ms since the epoch).
    pub updated_ms: Option<u64>,
    pub reason: Option<String>,
}

impl DeliveryStatusView {
    pub fn new(campaign: CampaignId, d: crate::dispatch::DeliveryView) -> Self {
        let to = d.recipient.as_ref().and_then(|r| match &d.channel {
            Some(c) => r.address(c).map(str::to_string),
            None => r
                .phone
                .clone()
                .or_else(|| r.addresses.values().next().cloned()),
        });
        Self {
            id: DeliveryId::new(campaign, d.index).to_string(),
            to,
            status: d.status.as_str().to_string(),
            dead: d.dead,
            channel: d.channel,
            attempts: d.attempts,
            sent_ms: d.sent_ms,
            updated_ms: d.updated_ms,
            reason: d.reason.or(d.withheld),
        }
    }
}

/// A page of a campaign's deliveries, in audience order.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Deliveries in the campaign.
    pub total: u32,
    pub from: u32,
    pub deliveries: Vec<DeliveryStatusView>,
    /// Where the next page starts, if there is one.
    pub next: Option<u32>,
}

/// What became of each delivery of a campaign: recipient, status, times.
#[utoipa::path(get, path = "/v1/campaigns/{id}/deliveries", tag = "campaigns", security(("token" = [])),
    params(("id" = String, Path, description = "Campaign id (`c12`)"), DeliveriesQuery),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 404, body = ErrorBody),
    ))]
pub async fn campaign_deliveries(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let id = campaign_id(&id)?;
    let from = query.from.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let (total, views) =
        tokio::task::spawn_blocking(move || api.broker.dispatcher().deliveries(id, from, limit))
            .await??
            .ok_or_else(|| ApiError::not_found(format!("no campaign {id}")))?;
    let end = from.saturating_add(views.len() as u32);
    Ok(Json(DeliveryPage {
        total,
        from,
        next: (end < total).then_some(end),
        deliveries: views
            .into_iter()
            .map(|d| DeliveryStatusView::new(id, d))
            .collect(),
    }))
}

/// Cancel a campaign: nothing more of it is sent; what is queued settles
/// as cancelled. Cancelling one that has already stopped changes nothing.
#[utoipa::path(post, path = "/v1/campaigns/{id}/cancel", tag = "campaigns", security(("token" = [])),
    params(("id" = String, Path, description = "Campaign id (`c12`)")),
    responses(
        (status = 200, body = CampaignStatus),
        (status = 404, body = ErrorBody),
    ))]
pub async fn cancel_campaign(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<CampaignStatus>, ApiError> {
    let id = campaign_id(&id)?;
    api.broker.dispatcher().cancel(id).await?;
    let reader = Arc::clone(&api);
    let progress = tokio::task::spawn_blocking(move || reader.broker.dispatcher().progress(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no campaign {id}")))?;
    Ok(Json(CampaignStatus::new(progress, now_ms(&api))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountRequest {
    /// A selector (`role:nurse AND location:Location/bong`).
    pub selector: String,
    /// Channel names in preference order: how many each would carry
    /// first. None: any address at all.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// How many a channel would carry first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelCount {
    pub channel: String,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountResponse {
    pub selector: String,
    /// Contacts it selects now (opted-out and inactive ones never are).
    pub selected: u64,
    pub by_channel: Vec<ChannelCount>,
    /// Selected contacts with no address on any of the channels.
    pub unreachable: u64,
    /// Terms that matched nothing the directory knows (a typo, or a place
    /// with nobody in it).
    pub unknown_terms: Vec<String>,
}

/// How many contacts a selector reaches now, and on which channels.
#[utoipa::path(post, path = "/v1/audience/count", tag = "directory", security(("token" = [])),
    request_body = CountRequest,
    responses(
        (status = 200, body = CountResponse),
        (status = 400, description = "The selector cannot be read", body = ErrorBody),
    ))]
pub async fn count_audience(
    State(api): State<Arc<Api>>,
    ApiJson(request): ApiJson<CountRequest>,
) -> Result<Json<CountResponse>, ApiError> {
    let directory = Arc::clone(api.broker.directory());
    let CountRequest { selector, channels } = request;
    let (selector, count) = tokio::task::spawn_blocking(move || {
        directory.count(&selector, &channels).map(|c| (selector, c))
    })
    .await??;
    Ok(Json(CountResponse {
        selector,
        selected: count.selected,
        by_channel: count
            .by_channel
            .into_iter()
            .map(|(channel, count)| ChannelCount { channel, count })
            .collect(),
        unreachable: count.unreachable,
        unknown_terms: count.unknown_terms,
    }))
}

/// A configured channel.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelView {
    pub name: String,
    /// Its connector plugin.
    pub connector: String,
    /// Configured messages (or SMS segments) per second; 0: no limit.
    pub rate: f64,
    pub burst: u32,
    /// Most requests in flight now (on a channel with a rate, widened to
    /// what the rate needs at the gateway's latency, up to `window_max`).
    pub window: usize,
    /// Messages per request where the connector has a batch form.
    pub batch: usize,
    /// Deliveries waiting in each lane: ready to lease, and leased (on
    /// their way).
    pub lanes: Vec<LaneDepth>,
    /// Messages sent in the last whole second.
    pub sent_last_second: u64,
    /// `sent_last_second` over `rate`: 1 is the channel at its limit.
    pub saturation: Option<f64>,
    /// `active`; `held` (an operator paused it: nothing is sent until it
    /// is resumed); `backing_off` (the gateway asked it to wait, or
    /// refused its credentials).
    pub state: String,
    /// While backing off: until when (ms since the epoch).
    pub backing_off_until_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LaneDepth {
    pub lane: String,
    pub ready: u64,
    pub leased: u64,
}

/// The configured channels.
#[utoipa::path(get, path = "/v1/channels", tag = "channels", security(("token" = [])),
    responses((status = 200, body = Vec<ChannelView>)))]
pub async fn channels(State(api): State<Arc<Api>>) -> Json<Vec<ChannelView>> {
    let now = now_ms(&api);
    let store = api.broker.store();
    Json(
        api.broker
            .dispatcher()
            .channels()
            .iter()
            .map(|(name, ch)| {
                // Counts kept in memory by the store: no read.
                let depth = store.depth(ch.id);
                let sent = ch.sent_last_second(now);
                ChannelView {
                    name: name.clone(),
                    connector: ch.config.connector.clone(),
                    rate: ch.config.rate,
                    burst: ch.config.burst,
                    window: ch.window_size(),
                    batch: ch.config.batch,
                    lanes: Lane::ALL
                        .iter()
                        .map(|l| LaneDepth {
                            lane: l.as_str().to_string(),
                            ready: depth.ready[l.code() as usize],
                            leased: depth.leased[l.code() as usize],
                        })
                        .collect(),
                    sent_last_second: sent,
                    saturation: (ch.config.rate > 0.0)
                        .then(|| (sent as f64 / ch.config.rate * 100.0).round() / 100.0),
                    state: channel_state(ch, now).to_string(),
                    backing_off_until_ms: ch.backing_off_until(now),
                }
            })
            .collect(),
    )
}

fn channel_state(ch: &crate::dispatch::sender::Channel, now_ms: u64) -> &'static str {
    if ch.held() {
        "held"
    } else if ch.backing_off_until(now_ms).is_some() {
        "backing_off"
    } else {
        "active"
    }
}

/// What a hold or resume did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelHold {
    pub name: String,
    /// `held` or `active` (or `backing_off`).
    pub state: String,
}

async fn hold(api: &Api, name: &str, on: bool) -> Result<Json<ChannelHold>, ApiError> {
    api.broker.dispatcher().hold_channel(name, on).await?;
    let ch = &api.broker.dispatcher().channels()[name];
    Ok(Json(ChannelHold {
        name: name.to_string(),
        state: channel_state(ch, now_ms(api)).to_string(),
    }))
}

/// Pause a channel: nothing more is sent on it (what is on the wire
/// finishes; queued deliveries wait, their expiry still applies) until it
/// is resumed, across restarts too. For a gateway in trouble or a
/// message that must stop now on one network.
#[utoipa::path(post, path = "/v1/channels/{name}/pause", tag = "channels", security(("token" = [])),
    params(("name" = String, Path, description = "Channel name")),
    responses(
        (status = 200, body = ChannelHold),
        (status = 404, body = ErrorBody),
    ))]
pub async fn pause_channel(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Json<ChannelHold>, ApiError> {
    hold(&api, &name, true).await
}

/// Resume a paused channel.
#[utoipa::path(post, path = "/v1/channels/{name}/resume", tag = "channels", security(("token" = [])),
    params(("name" = String, Path, description = "Channel name")),
    responses(
        (status = 200, body = ChannelHold),
        (status = 404, body = ErrorBody),
    ))]
pub async fn resume_channel(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Json<ChannelHold>, ApiError> {
    hold(&api, &name, false).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InboundQuery {
    /// Most listed (default 100, at most 1000).
    pub limit: Option<usize>,
    /// List those after this sequence number (the last one of a page).
    pub after: Option<u64>,
    /// Only messages routed here (`inbox`, `opt_out`, `report`…); the
    /// inbox is what no workflow or trigger took.
    pub route: Option<String>,
    /// The newest `limit` messages (still oldest first) instead of those
    /// after `after`: what came in last. Follow on with `after`.
    pub newest: Option<bool>,
}

/// Inbound messages, oldest first, each with what the inbound pipeline
/// made of it (absent until processed): those after `after`, or with
/// `newest=true` the latest. With `route`, a page may hold fewer than
/// `limit`: page on with the last `seq` scanned, which the `X-Next-After`
/// header gives.
#[utoipa::path(get, path = "/v1/inbound", tag = "inbound", security(("token" = [])),
    params(InboundQuery),
    responses((status = 200, body = Vec<InboundEvent>,
        headers(("x-next-after" = u64, description = "The last sequence number scanned: the next page's `after`")))))]
pub async fn inbound(
    State(api): State<Arc<Api>>,
    ApiQuery(query): ApiQuery<InboundQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let after = query.after.unwrap_or(0);
    let newest = query.newest.unwrap_or(false);
    if newest && query.after.is_some() {
        return Err(ApiError::invalid("give after or newest=true, not both"));
    }
    let store = Arc::clone(api.broker.store());
    let messages = tokio::task::spawn_blocking(move || {
        if newest {
            store.newest_inbound_results(limit)
        } else {
            store.inbound_results(after, limit)
        }
    })
    .await??;
    let next = messages.last().map_or(after, |(seq, _, _)| *seq);
    let events: Vec<InboundEvent> = messages
        .into_iter()
        .filter(|(_, _, r)| match (&query.route, r) {
            (None, _) => true,
            (Some(want), Some(r)) => &r.route == want,
            (Some(_), None) => false,
        })
        .map(|(seq, m, r)| {
            let channel = api
                .broker
                .dispatcher()
                .channel_name(m.channel)
                .map_or_else(|| m.channel.to_string(), str::to_string);
            InboundEvent::new(seq, m, r, channel)
        })
        .collect();
    Ok(([("x-next-after", next.to_string())], Json(events)))
}

/// An integrator's inbound webhook: how far it has taken processed
/// messages, and what it never took.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriberView {
    pub name: String,
    /// Host of its URL (the path may carry a token, so it is not shown).
    pub host: String,
    /// The last message (seq) it has taken or set aside.
    pub position: u64,
    /// The last message processed: `processed - position` are waiting.
    pub processed: u64,
    /// Calls it refused every time, oldest first (at most 100).
    pub undelivered: Vec<UndeliveredView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UndeliveredView {
    /// The messages (seq) the refused call carried.
    pub seqs: Vec<u64>,
    pub attempts: u32,
    pub reason: String,
    pub at_ms: u64,
}

/// Integrators' inbound webhooks and their state.
#[utoipa::path(get, path = "/v1/inbound/subscribers", tag = "inbound", security(("token" = [])),
    responses((status = 200, body = Vec<SubscriberView>)))]
pub async fn inbound_subscribers(
    State(api): State<Arc<Api>>,
) -> Result<Json<Vec<SubscriberView>>, ApiError> {
    let store = Arc::clone(api.broker.store());
    let subscribers = api.broker.config().inbound.subscribers.clone();
    let views = tokio::task::spawn_blocking(move || -> crate::Result<Vec<SubscriberView>> {
        let processed = store.inbound_processed()?;
        subscribers
            .into_iter()
            .map(|s| {
                Ok(SubscriberView {
                    position: store.subscriber_position(&s.name)?,
                    processed,
                    undelivered: store
                        .undelivered_inbound(&s.name, 100)?
                        .into_iter()
                        .map(|u| UndeliveredView {
                            seqs: u.seqs,
                            attempts: u.attempts,
                            reason: u.reason,
                            at_ms: u.at_ms,
                        })
                        .collect(),
                    host: reqwest::Url::parse(&s.url)
                        .ok()
                        .and_then(|u| u.host_str().map(str::to_string))
                        .unwrap_or_default(),
                    name: s.name,
                })
            })
            .collect()
    })
    .await??;
    Ok(Json(views))
}

/// A loaded plugin.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    pub name: String,
    /// `connector`, `classifier` or `fhir-mapper`.
    pub kind: String,
    pub version: String,
    pub summary: String,
}

/// The loaded plugins.
#[utoipa::path(get, path = "/v1/plugins", tag = "plugins", security(("token" = [])),
    responses((status = 200, body = Vec<PluginView>)))]
pub async fn plugins(State(api): State<Arc<Api>>) -> Json<Vec<PluginView>> {
    Json(
        api.broker
            .plugins()
            .list()
            .iter()
            .map(|p| PluginView {
                name: p.name().to_string(),
                kind: p.kind().to_string(),
                version: p.manifest().version.clone(),
                summary: p.manifest().summary.clone(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// Most listed (default 100, at most 1000).
    pub limit: Option<usize>,
    /// List those after this delivery id (the last one of a page).
    pub after: Option<String>,
    /// The last `limit` dead letters (those of the newest campaigns,
    /// still in delivery order) instead of those after `after`.
    pub newest: Option<bool>,
}

/// A delivery that failed for good, kept with its history.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Delivery id (`c12-40017`).
    pub id: String,
    pub campaign: String,
    pub lane: String,
    pub attempts: u32,
    pub reason: String,
    /// Reasons of the earlier attempts, oldest first.
    pub earlier: Vec<String>,
    pub dead_ms: u64,
}

/// Dead letters in delivery order (campaign, then position): those after
/// `after`, or with `newest=true` the last ones.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters", security(("token" = [])),
    params(DeadQuery),
    responses((status = 200, body = Vec<DeadLetterView>), (status = 400, body = ErrorBody)))]
pub async fn dead_letters(
    State(api): State<Arc<Api>>,
    ApiQuery(query): ApiQuery<DeadQuery>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let limit = query.limit.unwrap_or(100).min(1000);
    let after = match &query.after {
        Some(s) => Some(
            s.parse::<DeliveryId>()
                .map_err(|e| ApiError::invalid(format!("after: {e}")))?,
        ),
        None => None,
    };
    let newest = query.newest.unwrap_or(false);
    if newest && after.is_some() {
        return Err(ApiError::invalid("give after or newest=true, not both"));
    }
    let store = Arc::clone(api.broker.store());
    let letters = tokio::task::spawn_blocking(move || {
        if newest {
            store.newest_dead_letters(limit)
        } else {
            store.dead_letters(after, limit)
        }
    })
    .await??;
    Ok(Json(
        letters
            .into_iter()
            .map(|d| DeadLetterView {
                id: d.id.to_string(),
                campaign: d.id.campaign.to_string(),
                lane: d.lane.as_str().to_string(),
                attempts: u32::from(d.item.attempts),
                reason: d.reason,
                earlier: d.item.history.into_iter().map(|h| h.reason).collect(),
                dead_ms: d.dead_ms,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Delivery ids to put back (`c12-40017`).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Every dead letter instead.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResponse {
    /// Dead letters back in their queues.
    pub replayed: usize,
}

/// Put dead letters back at the tail of their queues, with a fresh
/// attempt count.
#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "dead letters", security(("token" = [])),
    request_body = ReplayRequest,
    responses((status = 200, body = ReplayResponse), (status = 400, body = ErrorBody)))]
pub async fn replay_dead_letters(
    State(api): State<Arc<Api>>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<Json<ReplayResponse>, ApiError> {
    let ids: Vec<DeliveryId> = if request.all {
        if !request.ids.is_empty() {
            return Err(ApiError::invalid("give ids or all, not both"));
        }
        let store = Arc::clone(api.broker.store());
        tokio::task::spawn_blocking(move || store.dead_letters(None, usize::MAX))
            .await??
            .into_iter()
            .map(|d| d.id)
            .collect()
    } else {
        if request.ids.is_empty() {
            return Err(ApiError::invalid(
                "ids: name the deliveries to replay, or set all",
            ));
        }
        request
            .ids
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: mhero_proto::ParseIdError| ApiError::invalid(format!("ids: {e}")))?
    };
    let replayed = api.broker.dispatcher().replay_dead(ids).await?;
    Ok(Json(ReplayResponse { replayed }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub role: Role,
    /// Who or what it is for.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCreated {
    /// The secret: shown this once, never again.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// Make a token.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", security(("token" = [])),
    request_body = TokenRequest,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody)))]
pub async fn create_token(
    State(api): State<Arc<Api>>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    let tokens = Arc::clone(&api.tokens);
    let now = now_ms(&api);
    let (token, info) =
        tokio::task::spawn_blocking(move || tokens.create(request.role, &request.name, now))
            .await??;
    Ok((StatusCode::CREATED, Json(TokenCreated { token, info })).into_response())
}

/// Every token (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", security(("token" = [])),
    responses((status = 200, body = Vec<TokenInfo>)))]
pub async fn list_tokens(State(api): State<Arc<Api>>) -> Json<Vec<TokenInfo>> {
    Json(api.tokens.list())
}

/// Revoke a token: it stops working at once.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", security(("token" = [])),
    params(("id" = String, Path, description = "The token's id (12 hex digits)")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tokens = Arc::clone(&api.tokens);
    let lookup = id.clone();
    if tokio::task::spawn_blocking(move || tokens.revoke(&lookup)).await?? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no token {id}")))
    }
}
