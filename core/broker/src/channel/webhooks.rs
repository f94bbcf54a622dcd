//! The webhook entry point: what gateways push to the broker (delivery
//! receipts, inbound messages) goes through [`Webhooks::handle`].
//!
//! The channel's connector reads the request (`handle-webhook`: signature
//! check, parsing) on a plugin thread; its events go to the sinks (receipts
//! to dispatch, inbound messages to their durable record) and the
//! connector's answer is returned only once the sinks have taken them. A
//! request the connector refuses, or that traps, is answered with an error
//! and nothing of it is taken: the gateway still holds it and sends it
//! again.

use std::collections::BTreeMap;
use std::sync::Arc;

use mhero_proto::ChannelId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::transport::BoxFuture;
use crate::plugin::bindings::connector_types::{InboundMessage, Receipt, WebhookEvent};
use crate::plugin::bindings::{Header, HttpRequest, HttpResponse, PluginError};
use crate::plugin::{CallError, Plugin};

/// Largest webhook body taken; larger ones are answered 413.
pub const MAX_WEBHOOK_BYTES: usize = 1 << 20;

/// Where a webhook's events go. Each call resolves once what it took is
/// safe (committed, or held for a delivery not yet known), or fails and
/// the webhook is refused so the gateway sends it again.
pub trait EventSink: Send + Sync {
    fn receipts(
        &self,
        channel: ChannelId,
        name: &str,
        receipts: Vec<Receipt>,
    ) -> BoxFuture<'_, crate::Result<()>>;

    fn inbound(
        &self,
        channel: ChannelId,
        name: &str,
        messages: Vec<InboundMessage>,
    ) -> BoxFuture<'_, crate::Result<()>>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    channel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    channel: String,
    kind: &'static str,
}

/// `mhero_channel_webhooks_total{channel,outcome}` and
/// `mhero_channel_webhook_events_total{channel,kind}`.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    calls: Family<WebhookLabels, Counter>,
    events: Family<EventLabels, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "webhooks",
            "Webhook calls from gateways, by outcome",
            m.calls.clone(),
        );
        registry.register(
            "webhook_events",
            "Receipts and inbound messages taken from webhooks",
            m.events.clone(),
        );
        m
    }

    fn call(&self, channel: &str, outcome: &'static str) {
        self.calls
            .get_or_create(&WebhookLabels {
                channel: channel.to_string(),
                outcome,
            })
            .inc();
    }

    fn events(&self, channel: &str, kind: &'static str, n: usize) {
        if n > 0 {
            self.events
                .get_or_create(&EventLabels {
                    channel: channel.to_string(),
                    kind,
                })
                .inc_by(n as u64);
        }
    }
}

struct Route {
    id: ChannelId,
    plugin: Arc<Plugin>,
}

/// The entry point for every channel's webhooks.
pub struct Webhooks {
    routes: BTreeMap<String, Route>,
    sink: Arc<dyn EventSink>,
    metrics: WebhookMetrics,
}

impl Webhooks {
    pub fn new(sink: Arc<dyn EventSink>, metrics: WebhookMetrics) -> Self {
        Self {
            routes: BTreeMap::new(),
            sink,
            metrics,
        }
    }

    /// Routes `channel`'s webhooks to its connector.
    pub fn add(&mut self, channel: &str, id: ChannelId, plugin: Arc<Plugin>) {
        self.routes
            .insert(channel.to_string(), Route { id, plugin });
    }

    /// Handles one webhook call of `channel`.
    pub async fn handle(&self, channel: &str, request: HttpRequest) -> HttpResponse {
        let Some(route) = self.routes.get(channel) else {
            return error(404, "unknown_channel", &format!("no channel {channel:?}"));
        };
        if request.body.len() > MAX_WEBHOOK_BYTES {
            self.metrics.call(channel, "too_large");
            return error(
                413,
                "too_large",
                &format!("webhook bodies are limited to {MAX_WEBHOOK_BYTES} bytes"),
            );
        }
        let result = route
            .plugin
            .offload(move |plugin| plugin.handle_webhook(&request))
            .await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                let (status, code) = refusal(&e);
                self.metrics.call(channel, code);
                tracing::warn!(channel, error = %e, "Webhook refused.");
                return error(status, code, &e.to_string());
            }
        };
        let mut receipts = Vec::new();
        let mut inbound = Vec::new();
        for event in result.events {
            match event {
                WebhookEvent::Receipt(r) => receipts.push(r),
                WebhookEvent::Inbound(m) => inbound.push(m),
            }
        }
        let (n_receipts, n_inbound) = (receipts.len(), inbound.len());
        // Inbound first: a reply is worth more than a receipt, and both are
        // refused together if either cannot be kept.
        if !inbound.is_empty()
            && let Err(e) = self.sink.inbound(route.id, channel, inbound).await
        {
            self.metrics.call(channel, "unavailable");
            tracing::error!(channel, error = %e, "Cannot store inbound messages; webhook refused.");
            return error(
                503,
                "unavailable",
                "cannot store the messages now; send again",
            );
        }
        if !receipts.is_empty()
            && let Err(e) = self.sink.receipts(route.id, channel, receipts).await
        {
            self.metrics.call(channel, "unavailable");
            tracing::error!(channel, error = %e, "Cannot apply receipts; webhook refused.");
            return error(
                503,
                "unavailable",
                "cannot apply the receipts now; send again",
            );
        }
        self.metrics.call(channel, "ok");
        self.metrics.events(channel, "receipt", n_receipts);
        self.metrics.events(channel, "inbound", n_inbound);
        result.response
    }
}

/// The HTTP status and code for a connector that did not take a webhook.
fn refusal(e: &CallError) -> (u16, &'static str) {
    match e {
        CallError::Plugin { error, .. } => match error {
            PluginError::Unauthorized(_) => (401, "unauthorized"),
            PluginError::InvalidInput(_) | PluginError::Permanent(_) => (400, "invalid"),
            PluginError::Transient(_) => (503, "unavailable"),
        },
        CallError::InputTooLarge { .. } => (413, "too_large"),
        CallError::CircuitOpen { .. } | CallError::Stopped => (503, "unavailable"),
        CallError::Trapped { .. } | CallError::WrongKind { .. } | CallError::NotExported { .. } => {
            (500, "plugin_failed")
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![Header {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        // The shape of every error the HTTP API answers.
        body: serde_json::to_vec(&serde_json::json!({"error": {"code": code, "message": message}}))
            .unwrap_or_default(),
    }
}
