//! Connector for the sandbox gateway, a simulated SMS gateway that runs
//! inside the broker. See README.md for the protocol.

use mhero_sdk::connector::{
    BatchOutcome, Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse,
    InboundMessage, Lane, OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt,
    ReceiptStatus, RetryInfo, SendOutcome, WebhookEvent, WebhookResult,
};
use mhero_sdk::host::{self, Level};
use serde::{Deserialize, Serialize};

pub struct Sandbox;

/// Where requests go unless the `base_url` setting says otherwise: the
/// simulator inside the broker. Any gateway speaking this protocol over
/// HTTP (the benchmarks' gateway sink) is reached by setting `base_url`.
pub const DEFAULT_BASE_URL: &str = "sandbox://gateway";
pub const SEND_URL: &str = "sandbox://gateway/messages";
pub const BATCH_URL: &str = "sandbox://gateway/messages/batch";

fn url(path: &str) -> String {
    let base = host::config("base_url").unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
    format!("{}{path}", base.trim_end_matches('/'))
}
pub const SIGNATURE_HEADER: &str = "x-sandbox-signature";
const MAX_BATCH: u32 = 100;

#[derive(Serialize)]
struct WireMessage<'a> {
    id: &'a str,
    to: &'a str,
    text: &'a str,
    lane: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

impl<'a> From<&'a OutboundMessage> for WireMessage<'a> {
    fn from(m: &'a OutboundMessage) -> Self {
        WireMessage {
            id: &m.id,
            to: &m.to,
            text: &m.text,
            lane: match m.lane {
                Lane::Emergency => "emergency",
                Lane::High => "high",
                Lane::Normal => "normal",
                Lane::Bulk => "bulk",
            },
            expires_at_ms: m.expires_at_ms,
        }
    }
}

#[derive(Deserialize)]
struct Accepted {
    message_id: String,
}

#[derive(Deserialize)]
struct Refused {
    error: String,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct BatchReply {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    id: String,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct Webhook {
    #[serde(default)]
    receipts: Vec<WireReceipt>,
    #[serde(default)]
    inbound: Vec<WireInbound>,
}

#[derive(Deserialize)]
struct WireReceipt {
    message_id: String,
    status: String,
    #[serde(default)]
    at_ms: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct WireInbound {
    #[serde(default)]
    id: Option<String>,
    from: String,
    text: String,
    #[serde(default)]
    at_ms: Option<u64>,
}

fn token() -> Result<String, PluginError> {
    host::config("token")
        .ok_or_else(|| PluginError::Unauthorized("setting `token` is not configured".into()))
}

fn post(url: &str, id: Option<&str>, body: Vec<u8>) -> Result<HttpRequest, PluginError> {
    let mut headers = vec![
        Header::new("content-type", "application/json"),
        Header::new("authorization", format!("Bearer {}", token()?)),
    ];
    if let Some(id) = id {
        headers.push(Header::new("idempotency-key", id));
    }
    Ok(HttpRequest {
        method: "POST".into(),
        url: url.into(),
        headers,
        body,
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, PluginError> {
    serde_json::to_vec(value)
        .map_err(|e| PluginError::invalid(format!("cannot encode request: {e}")))
}

/// Whether a refusal means the recipient cannot be reached on this channel.
fn unreachable(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("unknown_subscriber" | "absent_subscriber" | "not_on_channel")
    )
}

fn outcome_for_status(response: &HttpResponse) -> Result<SendOutcome, PluginError> {
    match response.status {
        401 | 403 => Err(PluginError::Unauthorized(format!(
            "gateway answered {}",
            response.status
        ))),
        429 => Ok(SendOutcome::Retry(RetryInfo {
            after_ms: response.retry_after_ms(),
            reason: "throttled (429)".into(),
        })),
        500..=599 => Ok(SendOutcome::Retry(RetryInfo {
            after_ms: response.retry_after_ms(),
            reason: format!("gateway error ({})", response.status),
        })),
        400..=499 => {
            let refused: Refused = serde_json::from_slice(&response.body).map_err(|e| {
                PluginError::invalid(format!("unreadable refusal ({}): {e}", response.status))
            })?;
            Ok(SendOutcome::Failed(Failure {
                unreachable: unreachable(refused.code.as_deref()),
                reason: refused.error,
            }))
        }
        status => Err(PluginError::invalid(format!("unexpected status {status}"))),
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn sign(secret: &str, body: &[u8]) -> String {
    mhero_sdk::signature::sha256_header(secret.as_bytes(), body)
}

fn receipt_status(status: &str) -> Option<ReceiptStatus> {
    Some(match status {
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        "failed" | "undelivered" | "rejected" | "expired" => ReceiptStatus::Failed,
        _ => return None,
    })
}

impl Connector for Sandbox {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "sandbox".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "Simulated SMS gateway inside the broker (a simulator: nothing is sent)"
                    .into(),
            },
            max_batch: MAX_BATCH,
            counts_segments: true,
            idempotent: true,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        if message.to.is_empty() {
            return Err(PluginError::invalid("message has no recipient"));
        }
        let body = to_json(&WireMessage::from(&message))?;
        post(&url("/messages"), Some(&message.id), body)
    }

    fn build_send_batch(messages: Vec<OutboundMessage>) -> Result<HttpRequest, PluginError> {
        if messages.is_empty() || messages.len() > MAX_BATCH as usize {
            return Err(PluginError::invalid(format!(
                "a batch takes 1 to {MAX_BATCH} messages, not {}",
                messages.len()
            )));
        }
        #[derive(Serialize)]
        struct Batch<'a> {
            messages: Vec<WireMessage<'a>>,
        }
        let body = to_json(&Batch {
            messages: messages.iter().map(WireMessage::from).collect(),
        })?;
        post(&url("/messages/batch"), None, body)
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        if (200..300).contains(&response.status) {
            let accepted: Accepted = serde_json::from_slice(&response.body)
                .map_err(|e| PluginError::invalid(format!("unreadable acceptance: {e}")))?;
            return Ok(SendOutcome::Accepted(accepted.message_id));
        }
        outcome_for_status(&response)
    }

    fn parse_batch_response(
        messages: Vec<OutboundMessage>,
        response: HttpResponse,
    ) -> Result<Vec<BatchOutcome>, PluginError> {
        if !(200..300).contains(&response.status) {
            let outcome = outcome_for_status(&response)?;
            return Ok(messages
                .into_iter()
                .map(|m| BatchOutcome {
                    id: m.id,
                    outcome: outcome.clone(),
                })
                .collect());
        }
        let reply: BatchReply = serde_json::from_slice(&response.body)
            .map_err(|e| PluginError::invalid(format!("unreadable batch reply: {e}")))?;
        Ok(reply
            .results
            .into_iter()
            .map(|r| {
                let outcome = match (r.message_id, r.error) {
                    (Some(id), _) => SendOutcome::Accepted(id),
                    (None, Some(error)) => SendOutcome::Failed(Failure {
                        unreachable: unreachable(r.code.as_deref()),
                        reason: error,
                    }),
                    (None, None) => SendOutcome::Retry(RetryInfo {
                        after_ms: None,
                        reason: "no result for this message".into(),
                    }),
                };
                BatchOutcome { id: r.id, outcome }
            })
            .collect())
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let secret = host::config("webhook_secret").ok_or_else(|| {
            PluginError::Unauthorized("setting `webhook_secret` is not configured".into())
        })?;
        let signature = request.header(SIGNATURE_HEADER).unwrap_or_default();
        if !mhero_sdk::signature::verify_sha256_header(secret.as_bytes(), &request.body, signature)
        {
            host::log(Level::Warn, "Webhook signature does not verify.");
            return Err(PluginError::Unauthorized(
                "webhook signature does not verify".into(),
            ));
        }
        let hook: Webhook = serde_json::from_slice(&request.body)
            .map_err(|e| PluginError::invalid(format!("unreadable webhook body: {e}")))?;
        let mut events = Vec::with_capacity(hook.receipts.len() + hook.inbound.len());
        for r in hook.receipts {
            let Some(status) = receipt_status(&r.status) else {
                host::log(
                    Level::Warn,
                    &format!("Unknown receipt status {:?} skipped.", r.status),
                );
                continue;
            };
            events.push(WebhookEvent::Receipt(Receipt {
                external_id: r.message_id,
                status,
                reason: r.reason,
                at_ms: r.at_ms,
            }));
        }
        for m in hook.inbound {
            events.push(WebhookEvent::Inbound(InboundMessage {
                from: m.from,
                text: m.text,
                external_id: m.id,
                received_at_ms: m.at_ms,
            }));
        }
        Ok(WebhookResult {
            events,
            response: HttpResponse::with_body(200, "text/plain", "ok"),
        })
    }
}

mhero_sdk::export_connector!(Sandbox);

#[cfg(test)]
mod tests;
