//! Connector for Telegram bots: the Bot API's `sendMessage` (and
//! `sendPhoto`, `sendVoice`… for files) out, updates
//! (replies, button presses) in through the bot's webhook. See README.md.

use mhero_sdk::connector::{
    Attachment, Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse,
    InboundMessage, Lane, OutboundMessage, PluginError, PluginInfo, PluginKind, RetryInfo,
    SendOutcome, WebhookEvent, WebhookResult, check_token, required,
};
use serde::{Deserialize, Serialize};

pub struct Telegram;

/// The header Telegram sends the webhook's `secret_token` in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

#[derive(Serialize)]
struct SendMessage<'a> {
    chat_id: &'a str,
    text: &'a str,
    /// Bulk messages arrive silently; alerts ring.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_notification: bool,
}

/// Every Bot API answer: `{"ok": true, "result": …}` or `{"ok": false,
/// "error_code", "description", "parameters": {"retry_after"}}`.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    result: Option<SentMessage>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
    #[serde(default)]
    chat: Option<Chat>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
}

#[derive(Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

/// An update pushed to the webhook: the kinds a health worker's reply
/// arrives as.
#[derive(Deserialize)]
struct Update {
    update_id: i64,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    callback_query: Option<CallbackQuery>,
}

#[derive(Deserialize)]
struct Message {
    chat: Chat,
    #[serde(default)]
    date: Option<u64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
}

#[derive(Deserialize)]
struct CallbackQuery {
    from: User,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct User {
    id: i64,
}

fn description(answer: &Answer, status: u16) -> String {
    answer
        .description
        .clone()
        .unwrap_or_else(|| format!("Bot API answered {status}"))
}

/// Whether a refusal means this chat cannot be reached by the bot: it
/// does not exist, the worker blocked the bot or left Telegram, or never
/// started it.
fn unreachable(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    [
        "chat not found",
        "bot was blocked by the user",
        "user is deactivated",
        "bot can't initiate conversation",
        "bot was kicked",
        "peer_id_invalid",
    ]
    .iter()
    .any(|p| d.contains(p))
}

/// A chat id is a number (negative for groups), or `@channelname`; a
/// phone number is not (a bot cannot write to a number).
fn is_chat_id(id: &str) -> bool {
    let digits = id.strip_prefix('-').unwrap_or(id);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        || (id.len() > 1 && id.starts_with('@'))
}

/// The worker's chat id, or why there is none.
fn chat(message: &OutboundMessage) -> Result<&str, PluginError> {
    let chat_id = message.to.trim();
    if !is_chat_id(chat_id) {
        return Err(PluginError::Permanent(format!(
            "{chat_id:?} is not a Telegram chat id: the worker must start the bot first"
        )));
    }
    Ok(chat_id)
}

/// Longest caption of a file.
const MAX_CAPTION: usize = 1024;

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The Bot API method and its file field for one file.
fn media_method(content_type: &str) -> (&'static str, &'static str) {
    match essence(content_type).as_str() {
        "image/jpeg" | "image/png" | "image/webp" => ("sendPhoto", "photo"),
        // Voice notes: OGG with Opus is what Telegram plays as one.
        "audio/ogg" | "audio/opus" => ("sendVoice", "voice"),
        e if e.starts_with("audio/") => ("sendAudio", "audio"),
        e if e.starts_with("video/") => ("sendVideo", "video"),
        _ => ("sendDocument", "document"),
    }
}

/// The `InputMedia` type of a file in a media group.
fn group_type(content_type: &str) -> &'static str {
    match media_method(content_type).1 {
        "photo" => "photo",
        "video" => "video",
        "audio" | "voice" => "audio",
        _ => "document",
    }
}

impl Connector for Telegram {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "telegram".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "Telegram bots: Bot API sendMessage, replies through the webhook".into(),
            },
            max_batch: 1,
            counts_segments: false,
            idempotent: false,
        }
    }

    /// One file: `sendPhoto` (JPEG, PNG, WebP), `sendVoice` (OGG/Opus),
    /// `sendAudio`, `sendVideo` or `sendDocument`, by URL, the text as its
    /// caption. Two to ten files: `sendMediaGroup`, the caption on the
    /// first.
    fn build_send_media(
        message: OutboundMessage,
        attachments: Vec<Attachment>,
    ) -> Result<HttpRequest, PluginError> {
        let chat_id = chat(&message)?;
        if message.text.chars().count() > MAX_CAPTION {
            return Err(PluginError::invalid(format!(
                "a Telegram caption holds at most {MAX_CAPTION} characters"
            )));
        }
        let silent = message.lane == Lane::Bulk;
        let caption = (!message.text.is_empty()).then_some(message.text.as_str());
        let (method, mut body) = match attachments.as_slice() {
            [] => return Err(PluginError::invalid("no file to send")),
            [file] => {
                let (method, field) = media_method(&file.content_type);
                let mut body = serde_json::json!({"chat_id": chat_id, field: file.url});
                if let Some(c) = caption {
                    body["caption"] = c.into();
                }
                (method, body)
            }
            files if files.len() <= 10 => {
                let media: Vec<serde_json::Value> = files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let mut m = serde_json::json!({
                            "type": group_type(&f.content_type),
                            "media": f.url,
                        });
                        if i == 0
                            && let Some(c) = caption
                        {
                            m["caption"] = c.into();
                        }
                        m
                    })
                    .collect();
                (
                    "sendMediaGroup",
                    serde_json::json!({"chat_id": chat_id, "media": media}),
                )
            }
            files => {
                return Err(PluginError::invalid(format!(
                    "Telegram sends at most 10 files in one message; this one has {}",
                    files.len()
                )));
            }
        };
        if silent {
            // Bulk messages arrive silently; alerts ring.
            body["disable_notification"] = true.into();
        }
        Ok(HttpRequest {
            method: "POST".into(),
            url: format!(
                "{}/bot{}/{method}",
                required("base_url")?.trim_end_matches('/'),
                required("bot_token")?
            ),
            headers: vec![Header::new("content-type", "application/json")],
            body: serde_json::to_vec(&body)
                .map_err(|e| PluginError::invalid(format!("cannot encode request: {e}")))?,
        })
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        let chat_id = chat(&message)?;
        if message.text.trim().is_empty() {
            return Err(PluginError::invalid("Telegram refuses empty messages"));
        }
        let body = serde_json::to_vec(&SendMessage {
            chat_id,
            text: &message.text,
            disable_notification: message.lane == Lane::Bulk,
        })
        .map_err(|e| PluginError::invalid(format!("cannot encode request: {e}")))?;
        Ok(HttpRequest {
            method: "POST".into(),
            url: format!(
                "{}/bot{}/sendMessage",
                required("base_url")?.trim_end_matches('/'),
                required("bot_token")?
            ),
            headers: vec![Header::new("content-type", "application/json")],
            body,
        })
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let status = response.status;
        let answer: Answer = match serde_json::from_slice(&response.body) {
            Ok(a) => a,
            // A proxy's page instead of the Bot API's JSON.
            Err(_) if status >= 500 || status == 429 => {
                return Ok(SendOutcome::Retry(RetryInfo {
                    after_ms: response.retry_after_ms(),
                    reason: format!("Bot API answered {status}"),
                }));
            }
            Err(e) => {
                return Err(PluginError::invalid(format!(
                    "unreadable Bot API answer ({status}): {e}"
                )));
            }
        };
        if answer.ok && (200..300).contains(&status) {
            let sent = answer
                .result
                .ok_or_else(|| PluginError::invalid("Bot API answer without `result`"))?;
            return Ok(SendOutcome::Accepted(match sent.chat {
                Some(chat) => format!("{}:{}", chat.id, sent.message_id),
                None => sent.message_id.to_string(),
            }));
        }
        let code = answer.error_code.unwrap_or(status);
        let text = description(&answer, status);
        match code {
            429 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: answer
                    .parameters
                    .and_then(|p| p.retry_after)
                    .map(|s| s.saturating_mul(1000))
                    .or_else(|| response.retry_after_ms()),
                reason: format!("throttled: {text}"),
            })),
            401 | 404 => Err(PluginError::Unauthorized(format!(
                "the bot token was refused: {text}"
            ))),
            400 | 403 if unreachable(&text) => Ok(SendOutcome::Failed(Failure {
                reason: text,
                unreachable: true,
            })),
            500..=599 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: None,
                reason: text,
            })),
            _ => Ok(SendOutcome::Failed(Failure {
                reason: text,
                unreachable: false,
            })),
        }
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let secret = required("webhook_secret")?;
        check_token(&request, Some(SECRET_HEADER), &secret)?;
        let update: Update = serde_json::from_slice(&request.body)
            .map_err(|e| PluginError::invalid(format!("unreadable update: {e}")))?;
        let event = if let Some(m) = update.message {
            Some(InboundMessage {
                from: m.chat.id.to_string(),
                text: m.text.or(m.caption).unwrap_or_default(),
                external_id: Some(update.update_id.to_string()),
                received_at_ms: m.date.map(|d| d.saturating_mul(1000)),
            })
        } else {
            // A button of an inline keyboard: its data is the answer.
            update.callback_query.map(|q| InboundMessage {
                from: q.from.id.to_string(),
                text: q.data.unwrap_or_default(),
                external_id: Some(update.update_id.to_string()),
                received_at_ms: None,
            })
        };
        Ok(WebhookResult {
            events: event.map(WebhookEvent::Inbound).into_iter().collect(),
            // An empty 200: a body naming a method would be executed by
            // Telegram as the bot's answer.
            response: HttpResponse {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            },
        })
    }
}

mhero_sdk::export_connector!(Telegram);

#[cfg(test)]
mod tests;
