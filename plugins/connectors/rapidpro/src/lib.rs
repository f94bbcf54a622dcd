//! Connector for a RapidPro (or TextIt) workspace. See README.md.

use mhero_sdk::connector::{
    BatchOutcome, Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse,
    InboundMessage, OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus,
    RetryInfo, SendOutcome, StatusQuery, WebhookEvent, WebhookResult, check_token, required,
    setting,
};
use serde::Deserialize;
use serde_json::json;

pub struct RapidPro;

/// Most URNs one broadcast takes through the API.
const MAX_BATCH: u32 = 100;
pub const TOKEN_HEADER: &str = "x-webhook-token";

fn urn(to: &str) -> String {
    let scheme = setting("urn_scheme").unwrap_or_else(|| "tel".into());
    if to.contains(':') {
        to.to_string()
    } else {
        format!("{scheme}:{to}")
    }
}

#[derive(Deserialize)]
struct Broadcast {
    id: u64,
}

/// A page of the messages API (`GET /api/v2/messages.json`).
#[derive(Deserialize)]
struct Messages {
    results: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    urn: Option<String>,
    #[serde(default)]
    status: String,
}

/// The broadcast an external id names (`broadcast-17:tel:+231…` → 17).
fn broadcast_of(external_id: &str) -> Option<u64> {
    let rest = external_id.strip_prefix("broadcast-")?;
    rest.split(':').next()?.parse().ok()
}

/// A message's status as a receipt; `None` while RapidPro still holds
/// it (`queued`, `wired`, `errored`: it retries those itself).
fn receipt_status(status: &str) -> Option<ReceiptStatus> {
    match status {
        "sent" => Some(ReceiptStatus::Sent),
        "delivered" => Some(ReceiptStatus::Delivered),
        "read" => Some(ReceiptStatus::Read),
        "failed" => Some(ReceiptStatus::Failed),
        _ => None,
    }
}

/// What a flow's "Call webhook" action posts by default.
#[derive(Deserialize)]
struct FlowCall {
    #[serde(default)]
    contact: Option<Contact>,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    run: Option<Run>,
}

#[derive(Deserialize)]
struct Contact {
    #[serde(default)]
    urn: Option<String>,
}

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    urn: Option<String>,
    #[serde(default)]
    text: String,
    #[serde(default)]
    created_on: Option<String>,
    #[serde(default)]
    uuid: Option<String>,
}

#[derive(Deserialize)]
struct Run {
    #[serde(default)]
    uuid: Option<String>,
}

/// The address in a URN (`tel:+231…` → `+231…`; a display part after
/// `#` dropped).
fn address(urn: &str) -> String {
    let path = urn.split_once(':').map_or(urn, |(_, p)| p);
    path.split('#').next().unwrap_or(path).to_string()
}

fn request(messages: &[&OutboundMessage]) -> Result<HttpRequest, PluginError> {
    let first = messages
        .first()
        .ok_or_else(|| PluginError::invalid("no message to send"))?;
    let urns: Vec<String> = messages.iter().map(|m| urn(&m.to)).collect();
    let body = json!({"urns": urns, "text": first.text});
    Ok(HttpRequest {
        method: "POST".into(),
        url: format!(
            "{}/api/v2/broadcasts.json",
            required("base_url")?.trim_end_matches('/')
        ),
        headers: vec![
            Header::new("content-type", "application/json"),
            Header::new("authorization", format!("Token {}", required("api_token")?)),
        ],
        body: serde_json::to_vec(&body)
            .map_err(|e| PluginError::invalid(format!("cannot encode request: {e}")))?,
    })
}

/// The broadcast's id, or the outcome of a refused request.
fn broadcast(response: &HttpResponse) -> Result<Result<u64, SendOutcome>, PluginError> {
    let status = response.status;
    let text: String = response.text().trim().chars().take(300).collect();
    match status {
        200..=299 => {
            let b: Broadcast = serde_json::from_slice(&response.body)
                .map_err(|e| PluginError::invalid(format!("unreadable acceptance: {e}")))?;
            Ok(Ok(b.id))
        }
        401 | 403 => Err(PluginError::Unauthorized(format!(
            "RapidPro refused the token: {text}"
        ))),
        429 | 500..=599 => Ok(Err(SendOutcome::Retry(RetryInfo {
            after_ms: response.retry_after_ms(),
            reason: format!("RapidPro answered {status}: {text}"),
        }))),
        // {"urns": ["Invalid URN: tel:123"]} and other validation errors.
        _ => Ok(Err(SendOutcome::Failed(Failure {
            unreachable: text.contains("Invalid URN") || text.contains("invalid URN"),
            reason: format!("RapidPro refused it ({status}): {text}"),
        }))),
    }
}

impl Connector for RapidPro {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "rapidpro".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "RapidPro/TextIt broadcasts, replies from a flow's webhook".into(),
            },
            max_batch: MAX_BATCH,
            counts_segments: false,
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
        Ok(match broadcast(&response)? {
            Ok(id) => SendOutcome::Accepted(format!("broadcast-{id}")),
            Err(outcome) => outcome,
        })
    }

    fn parse_batch_response(
        messages: Vec<OutboundMessage>,
        response: HttpResponse,
    ) -> Result<Vec<BatchOutcome>, PluginError> {
        let outcome = match broadcast(&response)? {
            Ok(id) => SendOutcome::Accepted(format!("broadcast-{id}")),
            Err(outcome) => outcome,
        };
        Ok(messages
            .into_iter()
            .map(|m| BatchOutcome {
                // One broadcast for all: its id names each, with the URN.
                outcome: match &outcome {
                    SendOutcome::Accepted(b) => {
                        SendOutcome::Accepted(format!("{b}:{}", urn(&m.to)))
                    }
                    other => other.clone(),
                },
                id: m.id,
            })
            .collect())
    }

    /// `GET /api/v2/messages.json?broadcast=<id>`: one query per
    /// broadcast, covering the leading ids of that broadcast.
    fn build_status_query(external_ids: Vec<String>) -> Result<StatusQuery, PluginError> {
        let first = external_ids
            .first()
            .ok_or_else(|| PluginError::invalid("no message to ask about"))?;
        let id = broadcast_of(first).ok_or_else(|| {
            PluginError::invalid(format!("{first:?} is not a RapidPro broadcast message id"))
        })?;
        let covers = external_ids
            .iter()
            .take_while(|e| broadcast_of(e) == Some(id))
            .count();
        Ok(StatusQuery {
            request: HttpRequest {
                method: "GET".into(),
                url: format!(
                    "{}/api/v2/messages.json?broadcast={id}",
                    required("base_url")?.trim_end_matches('/')
                ),
                headers: vec![Header::new(
                    "authorization",
                    format!("Token {}", required("api_token")?),
                )],
                body: Vec::new(),
            },
            covers: covers as u32,
        })
    }

    fn parse_status_answer(
        external_ids: Vec<String>,
        response: HttpResponse,
    ) -> Result<Vec<Receipt>, PluginError> {
        let status = response.status;
        let text: String = response.text().trim().chars().take(300).collect();
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(PluginError::Unauthorized(format!(
                    "RapidPro refused the token: {text}"
                )));
            }
            429 | 500..=599 => {
                return Err(PluginError::transient(
                    format!("RapidPro answered {status}: {text}"),
                    response.retry_after_ms(),
                ));
            }
            _ => {
                return Err(PluginError::invalid(format!(
                    "RapidPro refused the query ({status}): {text}"
                )));
            }
        }
        let page: Messages = serde_json::from_slice(&response.body)
            .map_err(|e| PluginError::invalid(format!("unreadable messages page: {e}")))?;
        let mut receipts = Vec::new();
        for id in &external_ids {
            let Some(b) = broadcast_of(id) else { continue };
            let message = match id.split_once(':') {
                // `broadcast-17:tel:+231…`: the message to that URN.
                Some((_, urn)) => page
                    .results
                    .iter()
                    .find(|m| m.urn.as_deref().is_some_and(|u| address(u) == address(urn))),
                // `broadcast-17` (a broadcast to one URN): its only message.
                None => match page.results.as_slice() {
                    [one] => Some(one),
                    _ => None,
                },
            };
            let Some(m) = message else { continue };
            if let Some(status) = receipt_status(&m.status) {
                receipts.push(Receipt {
                    external_id: id.clone(),
                    status,
                    reason: (status == ReceiptStatus::Failed)
                        .then(|| format!("RapidPro reports broadcast {b}'s message failed")),
                    at_ms: None,
                });
            }
        }
        Ok(receipts)
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let expected = required("webhook_token")?;
        check_token(&request, Some(TOKEN_HEADER), &expected)?;
        let call: FlowCall = serde_json::from_slice(&request.body)
            .map_err(|e| PluginError::invalid(format!("unreadable flow webhook: {e}")))?;
        let input = call
            .input
            .ok_or_else(|| PluginError::invalid("flow webhook without `input` (the reply)"))?;
        let urn = input
            .urn
            .clone()
            .or(call.contact.and_then(|c| c.urn))
            .ok_or_else(|| PluginError::invalid("flow webhook without the contact's URN"))?;
        // The message's uuid where RapidPro gives it; else the run and the
        // time, which a redelivered call repeats.
        let external_id = input.uuid.clone().or_else(|| {
            Some(format!(
                "{}@{}",
                call.run.and_then(|r| r.uuid).unwrap_or_default(),
                input.created_on.clone().unwrap_or_default()
            ))
        });
        Ok(WebhookResult {
            events: vec![WebhookEvent::Inbound(InboundMessage {
                from: address(&urn),
                text: input.text,
                external_id,
                received_at_ms: None,
            })],
            response: HttpResponse::with_body(200, "application/json", "{}"),
        })
    }
}

mhero_sdk::export_connector!(RapidPro);

#[cfg(test)]
mod tests;
