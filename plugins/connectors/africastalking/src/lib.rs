//! Connector for Africa's Talking SMS. See README.md.

use mhero_sdk::connector::{
    BatchOutcome, Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse,
    InboundMessage, OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus,
    RetryInfo, SendOutcome, WebhookEvent, WebhookResult, check_token, required, setting,
};
use serde::Deserialize;

pub struct AfricasTalking;

/// Most recipients one request carries here (the API takes more; a round
/// of this many keeps each answer small).
const MAX_BATCH: u32 = 100;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    #[serde(rename = "SMSMessageData")]
    data: MessageData,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MessageData {
    #[serde(default)]
    message: String,
    #[serde(default)]
    recipients: Vec<Recipient>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recipient {
    status_code: u16,
    number: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    message_id: Option<String>,
}

/// One recipient's outcome by its status code.
fn outcome(r: &Recipient) -> SendOutcome {
    let reason = || format!("{} ({})", r.status, r.status_code);
    match r.status_code {
        // Processed, Sent, Queued.
        100..=102 => match r
            .message_id
            .as_deref()
            .filter(|id| !id.is_empty() && *id != "None")
        {
            Some(id) => SendOutcome::Accepted(id.to_string()),
            None => SendOutcome::Retry(RetryInfo {
                after_ms: None,
                reason: format!("{}: no message id", reason()),
            }),
        },
        // InvalidPhoneNumber, UnsupportedNumberType, UserInBlacklist,
        // CouldNotRoute, DoNotDisturbRejection.
        403 | 404 | 406 | 407 | 409 => SendOutcome::Failed(Failure {
            reason: reason(),
            unreachable: true,
        }),
        // RiskHold, InternalServerError, GatewayError.
        401 | 500 | 501 => SendOutcome::Retry(RetryInfo {
            after_ms: None,
            reason: reason(),
        }),
        // InvalidSenderId, InsufficientBalance, RejectedByGateway, and
        // codes not documented when this was written.
        _ => SendOutcome::Failed(Failure {
            reason: reason(),
            unreachable: false,
        }),
    }
}

fn request(messages: &[&OutboundMessage]) -> Result<HttpRequest, PluginError> {
    let first = messages
        .first()
        .ok_or_else(|| PluginError::invalid("no message to send"))?;
    let to: Vec<&str> = messages.iter().map(|m| m.to.as_str()).collect();
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("username", &required("username")?)
        .append_pair("to", &to.join(","))
        .append_pair("message", &first.text)
        .append_pair("bulkSMSMode", "1")
        .append_pair("enqueue", "1");
    if let Some(from) = setting("from") {
        form.append_pair("from", &from);
    }
    Ok(HttpRequest {
        method: "POST".into(),
        url: format!(
            "{}/version1/messaging",
            required("base_url")?.trim_end_matches('/')
        ),
        headers: vec![
            Header::new("apikey", required("api_key")?),
            Header::new("accept", "application/json"),
            Header::new("content-type", "application/x-www-form-urlencoded"),
        ],
        body: form.finish().into_bytes(),
    })
}

/// The whole request's outcome when the API refused it as such.
fn refusal(response: &HttpResponse) -> Result<Option<SendOutcome>, PluginError> {
    let status = response.status;
    let text: String = response.text().trim().chars().take(200).collect();
    Ok(Some(match status {
        200..=299 => return Ok(None),
        401 => {
            return Err(PluginError::Unauthorized(format!(
                "Africa's Talking refused the API key: {text}"
            )));
        }
        429 | 500..=599 => SendOutcome::Retry(RetryInfo {
            after_ms: response.retry_after_ms(),
            reason: format!("Africa's Talking answered {status}: {text}"),
        }),
        _ => SendOutcome::Failed(Failure {
            reason: format!("Africa's Talking refused it ({status}): {text}"),
            unreachable: false,
        }),
    }))
}

impl Connector for AfricasTalking {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "africastalking".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "Africa's Talking SMS, many recipients per request".into(),
            },
            max_batch: MAX_BATCH,
            counts_segments: true,
            idempotent: false,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        request(&[&message])
    }

    fn build_send_batch(messages: Vec<OutboundMessage>) -> Result<HttpRequest, PluginError> {
        // The host gives at most `max_batch` messages, of one text.
        request(&messages.iter().collect::<Vec<_>>())
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        if let Some(outcome) = refusal(&response)? {
            return Ok(outcome);
        }
        let answer: Answer = serde_json::from_slice(&response.body)
            .map_err(|e| PluginError::invalid(format!("unreadable answer: {e}")))?;
        Ok(match answer.data.recipients.first() {
            Some(r) => outcome(r),
            // "InvalidSenderId" and the like come with no recipients.
            None => SendOutcome::Failed(Failure {
                reason: answer.data.message,
                unreachable: false,
            }),
        })
    }

    fn parse_batch_response(
        messages: Vec<OutboundMessage>,
        response: HttpResponse,
    ) -> Result<Vec<BatchOutcome>, PluginError> {
        let sent: Vec<&OutboundMessage> = messages.iter().collect();
        if let Some(outcome) = refusal(&response)? {
            return Ok(sent
                .into_iter()
                .map(|m| BatchOutcome {
                    id: m.id.clone(),
                    outcome: outcome.clone(),
                })
                .collect());
        }
        let answer: Answer = serde_json::from_slice(&response.body)
            .map_err(|e| PluginError::invalid(format!("unreadable answer: {e}")))?;
        let mut recipients: Vec<Option<Recipient>> =
            answer.data.recipients.into_iter().map(Some).collect();
        Ok(sent
            .into_iter()
            .map(|m| {
                // Matched by number; one answer per recipient.
                let found = recipients
                    .iter_mut()
                    .find(|r| r.as_ref().is_some_and(|r| r.number == m.to))
                    .and_then(Option::take);
                BatchOutcome {
                    id: m.id.clone(),
                    outcome: match found {
                        Some(r) => outcome(&r),
                        None => SendOutcome::Failed(Failure {
                            reason: if answer.data.message.is_empty() {
                                "no result for this number".into()
                            } else {
                                answer.data.message.clone()
                            },
                            unreachable: false,
                        }),
                    },
                }
            })
            .collect())
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let expected = required("webhook_token")?;
        check_token(&request, None, &expected)?;
        let params: Vec<(String, String)> =
            form_urlencoded::parse(&request.body).into_owned().collect();
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let id = get("id").ok_or_else(|| PluginError::invalid("callback without `id`"))?;
        let event = if let Some(status) = get("status") {
            // A delivery report.
            let receipt = match status {
                "Success" => ReceiptStatus::Delivered,
                "Sent" | "Submitted" | "Buffered" => ReceiptStatus::Sent,
                "Failed" | "Rejected" | "Expired" | "AbsentSubscriber" => ReceiptStatus::Failed,
                other => {
                    return Err(PluginError::invalid(format!(
                        "unknown delivery status {other:?}"
                    )));
                }
            };
            WebhookEvent::Receipt(Receipt {
                external_id: id.to_string(),
                status: receipt,
                reason: (receipt == ReceiptStatus::Failed).then(|| match get("failureReason") {
                    Some(why) => format!("{status}: {why}"),
                    None => status.to_string(),
                }),
                at_ms: None,
            })
        } else {
            // An inbound SMS.
            WebhookEvent::Inbound(InboundMessage {
                from: get("from")
                    .ok_or_else(|| PluginError::invalid("inbound SMS without `from`"))?
                    .to_string(),
                text: get("text").unwrap_or_default().to_string(),
                external_id: Some(id.to_string()),
                received_at_ms: None,
            })
        };
        Ok(WebhookResult {
            events: vec![event],
            response: HttpResponse::with_body(200, "text/plain", "ok"),
        })
    }
}

mhero_sdk::export_connector!(AfricasTalking);

#[cfg(test)]
mod tests;
