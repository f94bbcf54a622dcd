//! Connector for the WhatsApp Cloud API. See README.md.

use mhero_sdk::connector::{
    Attachment, Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse,
    InboundMessage, OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus,
    RetryInfo, SendOutcome, WebhookEvent, WebhookResult, check_hub_signature, hub_verification,
    required, setting,
};
use mhero_sdk::host::{self, Level};
use serde::Deserialize;
use serde_json::json;

pub struct WhatsAppCloud;

/// Most characters of a template's body parameter.
const MAX_TEMPLATE_PARAMETER: usize = 1024;

/// The Graph API's error object.
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
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

#[derive(Deserialize)]
struct Sent {
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
}

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    value: Value,
}

#[derive(Default, Deserialize)]
struct Value {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Message {
    from: String,
    id: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    text: Option<Text>,
    /// A template's quick-reply button.
    #[serde(default)]
    button: Option<Button>,
    #[serde(default)]
    interactive: Option<Interactive>,
    #[serde(default)]
    image: Option<Media>,
    #[serde(default)]
    video: Option<Media>,
    #[serde(default)]
    document: Option<Media>,
}

#[derive(Deserialize)]
struct Text {
    body: String,
}

#[derive(Deserialize)]
struct Button {
    text: String,
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(default)]
    button_reply: Option<Reply>,
    #[serde(default)]
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    title: String,
}

#[derive(Deserialize)]
struct Media {
    #[serde(default)]
    caption: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    errors: Vec<StatusError>,
}

#[derive(Deserialize)]
struct StatusError {
    code: i64,
    #[serde(default)]
    title: String,
}

/// Unix seconds as text (`"1669233778"`) to milliseconds.
fn millis(ts: Option<&str>) -> Option<u64> {
    ts?.trim().parse::<u64>().ok()?.checked_mul(1000)
}

/// Graph API error codes.
mod code {
    /// Cloud API throughput, and pair rate limit (too many messages to
    /// one user), and the account's rate limits.
    pub const THROTTLED: [i64; 5] = [130429, 131056, 80007, 4, 613];
    /// Passing service trouble.
    pub const TRANSIENT: [i64; 3] = [131000, 131016, 2];
    /// This user cannot get this message on WhatsApp: undeliverable (not
    /// on WhatsApp, old app), outside the 24-hour window without a
    /// template, opted out of marketing, or the number is not valid.
    pub const UNREACHABLE: [i64; 5] = [131026, 131047, 131050, 131030, 1013];
    /// The token or the app's permissions.
    pub const AUTH: [i64; 3] = [190, 10, 200];
}

fn graph_reason(e: &GraphError) -> String {
    match e.error_data.as_ref().and_then(|d| d.details.as_deref()) {
        Some(details) => format!("{} ({}): {details}", e.message, e.code),
        None => format!("{} ({})", e.message, e.code),
    }
}

/// Longest caption of an image, video or document.
const MAX_CAPTION: usize = 1024;

/// The Cloud API's message type for a file of this MIME type.
fn media_kind(content_type: &str) -> &'static str {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("image", "jpeg" | "png")) => "image",
        Some(("image", "webp")) => "sticker",
        Some(("audio", _)) => "audio",
        Some(("video", _)) => "video",
        _ => "document",
    }
}

/// A template message: the text as its body's `{{1}}`, a file as its
/// header.
fn template(
    message: &OutboundMessage,
    to: &str,
    name: &str,
    file: Option<(&str, &Attachment)>,
) -> Result<serde_json::Value, PluginError> {
    if message.text.chars().count() > MAX_TEMPLATE_PARAMETER {
        return Err(PluginError::invalid(format!(
            "a template parameter holds at most {MAX_TEMPLATE_PARAMETER} characters"
        )));
    }
    let language = message
        .language
        .clone()
        .or_else(|| setting("template_language"))
        .unwrap_or_else(|| "en".into());
    let mut components = Vec::new();
    if let Some((kind, file)) = file {
        let kind = match kind {
            "image" | "video" => kind,
            "document" => "document",
            other => {
                return Err(PluginError::invalid(format!(
                    "a template header takes an image, a video or a document, not {other} ({})",
                    file.content_type
                )));
            }
        };
        let mut media = json!({"link": file.url});
        if kind == "document"
            && let Some(name) = &file.filename
        {
            media["filename"] = json!(name);
        }
        components.push(json!({
            "type": "header",
            "parameters": [{"type": kind, kind: media}],
        }));
    }
    if !message.text.is_empty() {
        components.push(json!({
            "type": "body",
            "parameters": [{"type": "text", "text": message.text}],
        }));
    }
    Ok(json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {
            "name": name,
            "language": {"code": language.replace('-', "_")},
            "components": components,
        },
    }))
}

/// The request posting `body` to the phone number's messages endpoint.
fn request(body: &serde_json::Value) -> Result<HttpRequest, PluginError> {
    Ok(HttpRequest {
        method: "POST".into(),
        url: format!(
            "{}/{}/{}/messages",
            required("base_url")?.trim_end_matches('/'),
            required("api_version")?,
            required("phone_number_id")?
        ),
        headers: vec![
            Header::new("content-type", "application/json"),
            Header::new(
                "authorization",
                format!("Bearer {}", required("access_token")?),
            ),
        ],
        body: serde_json::to_vec(body)
            .map_err(|e| PluginError::invalid(format!("cannot encode request: {e}")))?,
    })
}

/// The `to` of the Cloud API: the number's digits.
fn wa_number(to: &str) -> Result<String, PluginError> {
    let digits: String = to.trim().trim_start_matches('+').to_string();
    // E.164 numbers have 8 to 15 digits.
    if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PluginError::Permanent(format!(
            "{to:?} is not a phone number WhatsApp can reach"
        )));
    }
    Ok(digits)
}

impl Connector for WhatsAppCloud {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "whatsapp-cloud".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "WhatsApp Cloud API: text and template messages, statuses and replies"
                    .into(),
            },
            max_batch: 1,
            counts_segments: false,
            idempotent: false,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        let to = wa_number(&message.to)?;
        let body = match setting("template") {
            Some(name) => template(&message, &to, &name, None)?,
            None => json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                "text": {"preview_url": false, "body": message.text},
            }),
        };
        request(&body)
    }

    /// One file per message, by link: `image` (JPEG, PNG), `audio` (no
    /// caption), `video`, `sticker` (WebP, no caption) or `document` (with
    /// its file name). With a template configured, the file is the
    /// template's header and the text its body parameter.
    fn build_send_media(
        message: OutboundMessage,
        attachments: Vec<Attachment>,
    ) -> Result<HttpRequest, PluginError> {
        let to = wa_number(&message.to)?;
        let [file] = attachments.as_slice() else {
            return Err(PluginError::invalid(format!(
                "WhatsApp sends one file per message; this one has {}",
                attachments.len()
            )));
        };
        let kind = media_kind(&file.content_type);
        let body = match setting("template") {
            Some(name) => template(&message, &to, &name, Some((kind, file)))?,
            None => {
                let mut media = json!({"link": file.url});
                match kind {
                    "audio" | "sticker" if !message.text.trim().is_empty() => {
                        return Err(PluginError::invalid(format!(
                            "WhatsApp {kind} messages carry no caption; send the text without it or as its own message"
                        )));
                    }
                    "audio" | "sticker" => {}
                    _ if message.text.chars().count() > MAX_CAPTION => {
                        return Err(PluginError::invalid(format!(
                            "a WhatsApp caption holds at most {MAX_CAPTION} characters"
                        )));
                    }
                    _ if !message.text.is_empty() => media["caption"] = json!(message.text),
                    _ => {}
                }
                if kind == "document"
                    && let Some(name) = &file.filename
                {
                    media["filename"] = json!(name);
                }
                json!({
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": to,
                    "type": kind,
                    kind: media,
                })
            }
        };
        request(&body)
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let status = response.status;
        if (200..300).contains(&status) {
            let sent: Sent = serde_json::from_slice(&response.body)
                .map_err(|e| PluginError::invalid(format!("unreadable acceptance: {e}")))?;
            let id = sent
                .messages
                .into_iter()
                .next()
                .ok_or_else(|| PluginError::invalid("acceptance without a message id"))?
                .id;
            return Ok(SendOutcome::Accepted(id));
        }
        let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&response.body) else {
            return match status {
                401 | 403 => Err(PluginError::Unauthorized(format!(
                    "Graph API answered {status}"
                ))),
                429 | 500..=599 => Ok(SendOutcome::Retry(RetryInfo {
                    after_ms: response.retry_after_ms(),
                    reason: format!("Graph API answered {status}"),
                })),
                _ => Err(PluginError::invalid(format!(
                    "unreadable Graph API error ({status})"
                ))),
            };
        };
        let reason = graph_reason(&error);
        Ok(match error.code {
            c if code::THROTTLED.contains(&c) => SendOutcome::Retry(RetryInfo {
                after_ms: response.retry_after_ms(),
                reason: format!("throttled: {reason}"),
            }),
            c if code::TRANSIENT.contains(&c) || status >= 500 => SendOutcome::Retry(RetryInfo {
                after_ms: None,
                reason,
            }),
            c if code::AUTH.contains(&c) || status == 401 => {
                return Err(PluginError::Unauthorized(reason));
            }
            c if code::UNREACHABLE.contains(&c) => SendOutcome::Failed(Failure {
                reason,
                unreachable: true,
            }),
            _ => SendOutcome::Failed(Failure {
                reason,
                unreachable: false,
            }),
        })
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        if request.method.eq_ignore_ascii_case("GET") {
            return hub_verification(&request, &required("verify_token")?);
        }
        check_hub_signature(&request, &required("app_secret")?)?;
        let notification: Notification = serde_json::from_slice(&request.body)
            .map_err(|e| PluginError::invalid(format!("unreadable notification: {e}")))?;
        let mut events = Vec::new();
        for change in notification.entry.into_iter().flat_map(|e| e.changes) {
            for s in change.value.statuses {
                let status = match s.status.as_str() {
                    "sent" => ReceiptStatus::Sent,
                    "delivered" => ReceiptStatus::Delivered,
                    "read" => ReceiptStatus::Read,
                    "failed" => ReceiptStatus::Failed,
                    other => {
                        // `deleted`, `warning`: nothing for the ladder.
                        host::log(Level::Debug, &format!("Status {other:?} ignored."));
                        continue;
                    }
                };
                let reason = (status == ReceiptStatus::Failed).then(|| {
                    s.errors.first().map_or_else(
                        || "failed".to_string(),
                        |e| format!("{} ({})", e.title, e.code),
                    )
                });
                events.push(WebhookEvent::Receipt(Receipt {
                    external_id: s.id,
                    status,
                    reason,
                    at_ms: millis(s.timestamp.as_deref()),
                }));
            }
            for m in change.value.messages {
                let text = m
                    .text
                    .map(|t| t.body)
                    .or(m.button.map(|b| b.text))
                    .or(m
                        .interactive
                        .and_then(|i| i.button_reply.or(i.list_reply))
                        .map(|r| r.title))
                    .or([m.image, m.video, m.document]
                        .into_iter()
                        .flatten()
                        .find_map(|media| media.caption))
                    .unwrap_or_default();
                events.push(WebhookEvent::Inbound(InboundMessage {
                    from: format!("+{}", m.from.trim_start_matches('+')),
                    text,
                    external_id: Some(m.id),
                    received_at_ms: millis(m.timestamp.as_deref()),
                }));
            }
        }
        Ok(WebhookResult {
            events,
            response: HttpResponse::with_body(200, "text/plain", "ok"),
        })
    }
}

mhero_sdk::export_connector!(WhatsAppCloud);

#[cfg(test)]
mod tests;
