//! `mhero channel test`: one message through a channel's connector and
//! transport, exactly as dispatch sends it (the allowed hosts, the HTTP
//! client with the channel's timeouts, the connector's build and parse),
//! but outside any campaign: nothing is queued, retried or recorded. What
//! the gateway answered is reported with the channel's secrets redacted.

use std::time::Instant;

use serde::Serialize;

use super::TokioClock;
use super::sender::channel_transport;
use crate::channel::Transport;
use crate::config::ChannelConfig;
use crate::error::Result;
use crate::plugin::bindings::PluginError;
use crate::plugin::bindings::connector_types::{Lane, OutboundMessage, SendOutcome};
use crate::plugin::{CallError, PluginHost};

/// Most of the gateway's answer shown.
const MAX_BODY_CHARS: usize = 2_000;

/// What one test send did.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub channel: String,
    pub connector: String,
    /// The message id the connector was given (`test-<ms>`).
    pub id: String,
    /// `METHOD scheme://host/path` of the request, without its query or
    /// credentials.
    pub request: Option<String>,
    /// The gateway's HTTP status; none when no answer came.
    pub status: Option<u16>,
    /// The gateway's answer (truncated, secrets redacted).
    pub body: Option<String>,
    pub elapsed_ms: u64,
    /// `accepted`, `retry`, `failed`, `unreachable`, `unauthorized`,
    /// `refused` (the connector would not build the request), `no_answer`,
    /// `unreadable` (the connector could not read the answer).
    pub outcome: &'static str,
    /// What the outcome means, in words.
    pub detail: String,
}

impl Probe {
    /// Whether the gateway took the message.
    pub fn accepted(&self) -> bool {
        self.outcome == "accepted"
    }
}

/// Sends `text` to `to` (already the channel's address form) on channel
/// `name`.
pub async fn probe(
    plugins: &PluginHost,
    name: &str,
    config: &ChannelConfig,
    to: &str,
    text: &str,
    now_ms: u64,
) -> Result<Probe> {
    let plugin = plugins.for_channel(&config.connector, name, &config.settings)?;
    let (transport, _sandbox) = channel_transport(name, config, &plugin, TokioClock::default())?;
    let message = OutboundMessage {
        id: format!("test-{now_ms}"),
        to: to.to_string(),
        text: text.to_string(),
        language: None,
        lane: Lane::High,
        expires_at_ms: None,
        attempt: 1,
    };
    let mut probe = Probe {
        channel: name.to_string(),
        connector: config.connector.clone(),
        id: message.id.clone(),
        request: None,
        status: None,
        body: None,
        elapsed_ms: 0,
        outcome: "refused",
        detail: String::new(),
    };
    let built = {
        let message = message.clone();
        plugin.offload(move |p| p.build_send(&message)).await
    };
    let request = match built {
        Ok(r) => r,
        Err(e) => {
            probe.detail = format!("the connector would not build the request: {e}");
            return Ok(probe);
        }
    };
    probe.request = Some(format!(
        "{} {}",
        request.method,
        crate::channel::transport::redact(&request.url)
    ));
    let started = Instant::now();
    let answer = transport.send(request).await;
    probe.elapsed_ms = started.elapsed().as_millis() as u64;
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            probe.outcome = "no_answer";
            probe.detail = e.to_string();
            return Ok(probe);
        }
    };
    probe.status = Some(response.status);
    let body: String = String::from_utf8_lossy(&response.body)
        .chars()
        .take(MAX_BODY_CHARS)
        .collect();
    probe.body = Some(plugin.redactor().redact(&body).into_owned());
    let parsed = plugin
        .offload(move |p| p.parse_send_response(&response))
        .await;
    (probe.outcome, probe.detail) = match parsed {
        Ok(SendOutcome::Accepted(id)) if id.is_empty() => (
            "accepted",
            format!("the gateway took it; its reports will name it {}", probe.id),
        ),
        Ok(SendOutcome::Accepted(id)) => ("accepted", format!("the gateway took it as {id}")),
        Ok(SendOutcome::Retry(r)) => (
            "retry",
            match r.after_ms {
                Some(ms) => format!("{} (the gateway asks to wait {ms} ms)", r.reason),
                None => r.reason,
            },
        ),
        Ok(SendOutcome::Failed(f)) if f.unreachable => (
            "unreachable",
            format!(
                "{} (this number cannot be reached on this channel)",
                f.reason
            ),
        ),
        Ok(SendOutcome::Failed(f)) => ("failed", f.reason),
        Err(CallError::Plugin {
            error: PluginError::Unauthorized(m),
            ..
        }) => (
            "unauthorized",
            format!("the gateway refused the channel's credentials: {m}"),
        ),
        Err(CallError::Plugin {
            error: PluginError::Transient(t),
            ..
        }) => ("retry", t.message),
        Err(e) => ("unreadable", e.to_string()),
    };
    probe.detail = plugin.redactor().redact(&probe.detail).into_owned();
    Ok(probe)
}
