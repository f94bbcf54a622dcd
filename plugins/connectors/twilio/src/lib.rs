//! Connector for Twilio's Messages API. See README.md.

use base64::Engine;
use hmac::{Hmac, Mac};
use mhero_sdk::connector::{
    Attachment, Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse,
    InboundMessage, OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus,
    RetryInfo, SendOutcome, WebhookEvent, WebhookResult, required, setting,
};
use mhero_sdk::host::{self, Level};
use serde::Deserialize;
use sha1::Sha1;

pub struct Twilio;

/// Most `MediaUrl`s of one message.
const MAX_MEDIA: usize = 10;

/// The Messages API request for a message and its files.
fn request(message: &OutboundMessage, files: &[Attachment]) -> Result<HttpRequest, PluginError> {
    let account = required("account_sid")?;
    let token = required("auth_token")?;
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("To", &message.to);
    if !message.text.is_empty() || files.is_empty() {
        form.append_pair("Body", &message.text);
    }
    for f in files {
        form.append_pair("MediaUrl", &f.url);
    }
    match (setting("messaging_service_sid"), setting("from")) {
        (Some(service), _) => form.append_pair("MessagingServiceSid", &service),
        (None, Some(from)) => form.append_pair("From", &from),
        (None, None) => {
            return Err(PluginError::Unauthorized(
                "set `from` or `messaging_service_sid`".into(),
            ));
        }
    };
    form.append_pair("StatusCallback", &required("webhook_url")?);
    if let Some(expires) = message.expires_at_ms {
        let now = host::now_ms();
        if expires <= now {
            return Err(PluginError::invalid(
                "the message expired before it was sent",
            ));
        }
        let seconds = ((expires - now) / 1000).clamp(1, MAX_VALIDITY_S);
        form.append_pair("ValidityPeriod", &seconds.to_string());
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{account}:{token}"));
    Ok(HttpRequest {
        method: "POST".into(),
        url: format!(
            "{}/2010-04-01/Accounts/{account}/Messages.json",
            required("base_url")?.trim_end_matches('/')
        ),
        headers: vec![
            Header::new("content-type", "application/x-www-form-urlencoded"),
            Header::new("authorization", format!("Basic {basic}")),
        ],
        body: form.finish().into_bytes(),
    })
}

pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// Twilio's longest ValidityPeriod (seconds).
const MAX_VALIDITY_S: u64 = 36_000;

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: String,
}

/// Twilio error codes.
mod code {
    /// Not a valid number, not a mobile number, unsubscribed (the worker
    /// sent STOP), region not enabled, unreachable carrier.
    pub const UNREACHABLE: [u32; 6] = [21211, 21614, 21610, 21408, 21612, 30006];
    pub const THROTTLED: [u32; 1] = [20429];
    pub const AUTH: [u32; 2] = [20003, 20005];
}

/// `X-Twilio-Signature` for a request Twilio made to `url` with these form
/// parameters: base64(HMAC-SHA1(auth token, url + each key and value,
/// sorted by key)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn receipt_status(status: &str) -> Option<ReceiptStatus> {
    Some(match status {
        "sent" => ReceiptStatus::Sent,
        "delivered" => ReceiptStatus::Delivered,
        "read" => ReceiptStatus::Read,
        "undelivered" | "failed" => ReceiptStatus::Failed,
        // queued, accepted, sending, scheduled, canceled: nothing yet.
        _ => return None,
    })
}

impl Connector for Twilio {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "twilio".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "Twilio Messages API with status callbacks".into(),
            },
            max_batch: 1,
            counts_segments: true,
            idempotent: false,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        request(&message, &[])
    }

    /// MMS (and WhatsApp through Twilio): up to 10 `MediaUrl`s, the text as
    /// the body (which may then be empty).
    fn build_send_media(
        message: OutboundMessage,
        attachments: Vec<Attachment>,
    ) -> Result<HttpRequest, PluginError> {
        if attachments.is_empty() || attachments.len() > MAX_MEDIA {
            return Err(PluginError::invalid(format!(
                "Twilio sends 1 to {MAX_MEDIA} files in one message; this one has {}",
                attachments.len()
            )));
        }
        request(&message, &attachments)
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let status = response.status;
        if (200..300).contains(&status) {
            let created: Created = serde_json::from_slice(&response.body)
                .map_err(|e| PluginError::invalid(format!("unreadable acceptance: {e}")))?;
            return Ok(SendOutcome::Accepted(created.sid));
        }
        let error: ApiError = serde_json::from_slice(&response.body).unwrap_or(ApiError {
            code: None,
            message: format!("Twilio answered {status}"),
        });
        let reason = match error.code {
            Some(c) => format!("{} ({c})", error.message),
            None => error.message.clone(),
        };
        let code = error.code.unwrap_or(0);
        if status == 401 || code::AUTH.contains(&code) {
            return Err(PluginError::Unauthorized(reason));
        }
        Ok(if status == 429 || code::THROTTLED.contains(&code) {
            SendOutcome::Retry(RetryInfo {
                after_ms: response.retry_after_ms(),
                reason: format!("throttled: {reason}"),
            })
        } else if status >= 500 {
            SendOutcome::Retry(RetryInfo {
                after_ms: response.retry_after_ms(),
                reason,
            })
        } else {
            SendOutcome::Failed(Failure {
                unreachable: code::UNREACHABLE.contains(&code),
                reason,
            })
        })
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let token = required("auth_token")?;
        let public = required("webhook_url")?;
        // Twilio signs the URL it called: the configured one, with the
        // query the request carried.
        let base = public.split_once('?').map_or(public.as_str(), |(b, _)| b);
        let url = match request.url.split_once('?') {
            Some((_, query)) => format!("{base}?{query}"),
            None => base.to_string(),
        };
        let params: Vec<(String, String)> = if request.method.eq_ignore_ascii_case("POST") {
            form_urlencoded::parse(&request.body).into_owned().collect()
        } else {
            Vec::new()
        };
        let given = request.header(SIGNATURE_HEADER).unwrap_or_default();
        let expected = signature(&token, &url, &params);
        if !mhero_sdk::same_secret(given.as_bytes(), expected.as_bytes()) {
            host::log(Level::Warn, "Twilio callback signature does not verify.");
            return Err(PluginError::Unauthorized(
                "X-Twilio-Signature does not verify".into(),
            ));
        }
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let sid = get("MessageSid")
            .or(get("SmsSid"))
            .ok_or_else(|| PluginError::invalid("callback without MessageSid"))?;
        let status = get("MessageStatus")
            .or(get("SmsStatus"))
            .unwrap_or_default();
        let mut events = Vec::new();
        if status == "received" || (status.is_empty() && get("Body").is_some()) {
            events.push(WebhookEvent::Inbound(InboundMessage {
                from: get("From")
                    .ok_or_else(|| PluginError::invalid("inbound message without From"))?
                    .trim_start_matches("whatsapp:")
                    .to_string(),
                text: get("Body").unwrap_or_default().to_string(),
                external_id: Some(sid.to_string()),
                received_at_ms: None,
            }));
        } else if let Some(receipt) = receipt_status(status) {
            let reason = (receipt == ReceiptStatus::Failed).then(|| match get("ErrorCode") {
                Some(code) => format!("{status} (error {code})"),
                None => status.to_string(),
            });
            events.push(WebhookEvent::Receipt(Receipt {
                external_id: sid.to_string(),
                status: receipt,
                reason,
                at_ms: None,
            }));
        }
        Ok(WebhookResult {
            events,
            // Empty TwiML: nothing is sent back to the phone.
            response: HttpResponse::with_body(200, "text/xml", "<Response></Response>"),
        })
    }
}

mhero_sdk::export_connector!(Twilio);

#[cfg(test)]
mod tests;
