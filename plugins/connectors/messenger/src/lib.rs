//! Connector for Facebook Messenger. See README.md.

use mhero_sdk::connector::{
    Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse, InboundMessage,
    OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus, RetryInfo,
    SendOutcome, WebhookEvent, WebhookResult, check_hub_signature, hub_verification, required,
    setting,
};
use serde::Deserialize;
use serde_json::json;

pub struct Messenger;

#[derive(Deserialize)]
struct Sent {
    message_id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
}

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    messaging: Vec<Messaging>,
}

#[derive(Deserialize)]
struct Messaging {
    sender: Id,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    postback: Option<Postback>,
    #[serde(default)]
    delivery: Option<Delivery>,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct Message {
    mid: String,
    #[serde(default)]
    text: Option<String>,
    /// The Page's own messages echoed back: not a worker's reply.
    #[serde(default)]
    is_echo: bool,
    #[serde(default)]
    quick_reply: Option<QuickReply>,
}

#[derive(Deserialize)]
struct QuickReply {
    payload: String,
}

#[derive(Deserialize)]
struct Postback {
    #[serde(default)]
    mid: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Deserialize)]
struct Delivery {
    #[serde(default)]
    mids: Vec<String>,
    #[serde(default)]
    watermark: Option<u64>,
}

/// Whether a Send API error means this person cannot get the Page's
/// messages: not available (551), outside the messaging window without a
/// tag (10 / 2018278), no such person for this Page (100 / 2018001), or
/// blocked the Page (200 / 1545041).
fn unreachable(e: &GraphError) -> bool {
    matches!(
        (e.code, e.error_subcode),
        (551, _) | (10, Some(2018278)) | (100, Some(2018001)) | (200, Some(1545041))
    )
}

impl Connector for Messenger {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "messenger".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "Facebook Messenger Send API with signed webhooks".into(),
            },
            max_batch: 1,
            counts_segments: false,
            idempotent: false,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        let psid = message.to.trim();
        if psid.is_empty() || psid.starts_with('+') || !psid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PluginError::Permanent(format!(
                "{psid:?} is not a page-scoped id: the worker must message the Page first"
            )));
        }
        let mut body = json!({
            "recipient": {"id": psid},
            "message": {"text": message.text},
        });
        match setting("message_tag") {
            Some(tag) => {
                body["messaging_type"] = json!("MESSAGE_TAG");
                body["tag"] = json!(tag);
            }
            None => body["messaging_type"] = json!("UPDATE"),
        }
        Ok(HttpRequest {
            method: "POST".into(),
            url: format!(
                "{}/{}/me/messages",
                required("base_url")?.trim_end_matches('/'),
                required("api_version")?
            ),
            headers: vec![
                Header::new("content-type", "application/json"),
                Header::new(
                    "authorization",
                    format!("Bearer {}", required("page_access_token")?),
                ),
            ],
            body: serde_json::to_vec(&body)
                .map_err(|e| PluginError::invalid(format!("cannot encode request: {e}")))?,
        })
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let status = response.status;
        if (200..300).contains(&status) {
            let sent: Sent = serde_json::from_slice(&response.body)
                .map_err(|e| PluginError::invalid(format!("unreadable acceptance: {e}")))?;
            return Ok(SendOutcome::Accepted(sent.message_id));
        }
        let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&response.body) else {
            return if status >= 500 || status == 429 {
                Ok(SendOutcome::Retry(RetryInfo {
                    after_ms: response.retry_after_ms(),
                    reason: format!("Send API answered {status}"),
                }))
            } else {
                Err(PluginError::invalid(format!(
                    "unreadable Send API error ({status})"
                )))
            };
        };
        let reason = match error.error_subcode {
            Some(sub) => format!("{} ({}/{sub})", error.message, error.code),
            None => format!("{} ({})", error.message, error.code),
        };
        if unreachable(&error) {
            return Ok(SendOutcome::Failed(Failure {
                reason,
                unreachable: true,
            }));
        }
        match error.code {
            // Rate limits (page, app), and passing trouble.
            4 | 32 | 613 | 1200 | 2 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: response.retry_after_ms(),
                reason,
            })),
            190 | 10 | 200 => Err(PluginError::Unauthorized(reason)),
            _ if status >= 500 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: None,
                reason,
            })),
            _ => Ok(SendOutcome::Failed(Failure {
                reason,
                unreachable: false,
            })),
        }
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        if request.method.eq_ignore_ascii_case("GET") {
            return hub_verification(&request, &required("verify_token")?);
        }
        check_hub_signature(&request, &required("app_secret")?)?;
        let notification: Notification = serde_json::from_slice(&request.body)
            .map_err(|e| PluginError::invalid(format!("unreadable notification: {e}")))?;
        if notification.object != "page" {
            return Err(PluginError::invalid(format!(
                "object {:?} is not a Page's",
                notification.object
            )));
        }
        let mut events = Vec::new();
        for m in notification.entry.into_iter().flat_map(|e| e.messaging) {
            if let Some(delivery) = m.delivery {
                for mid in delivery.mids {
                    events.push(WebhookEvent::Receipt(Receipt {
                        external_id: mid,
                        status: ReceiptStatus::Delivered,
                        reason: None,
                        at_ms: delivery.watermark,
                    }));
                }
            } else if let Some(message) = m.message.filter(|msg| !msg.is_echo) {
                events.push(WebhookEvent::Inbound(InboundMessage {
                    from: m.sender.id,
                    // A quick reply's payload is the answer it stands for.
                    text: message
                        .quick_reply
                        .map(|q| q.payload)
                        .or(message.text)
                        .unwrap_or_default(),
                    external_id: Some(message.mid),
                    received_at_ms: m.timestamp,
                }));
            } else if let Some(postback) = m.postback {
                events.push(WebhookEvent::Inbound(InboundMessage {
                    from: m.sender.id,
                    text: postback.payload.or(postback.title).unwrap_or_default(),
                    external_id: postback.mid,
                    received_at_ms: m.timestamp,
                }));
            }
            // Reads carry only a watermark, no message ids: nothing to match.
        }
        Ok(WebhookResult {
            events,
            response: HttpResponse::with_body(200, "text/plain", "EVENT_RECEIVED"),
        })
    }
}

mhero_sdk::export_connector!(Messenger);

#[cfg(test)]
mod tests;
