//! A generic connector for JSON HTTP gateways, configured rather than
//! coded. See README.md.

use mhero_sdk::connector::{
    Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse, InboundMessage, Lane,
    OutboundMessage, PluginError, PluginInfo, PluginKind, Receipt, ReceiptStatus, RetryInfo,
    SendOutcome, WebhookEvent, WebhookResult, check_token, required, setting,
};
use mhero_sdk::host::{self, Level};
use serde_json::Value;

pub struct HttpJson;

pub const TOKEN_HEADER: &str = "x-webhook-token";

fn lane(l: Lane) -> &'static str {
    match l {
        Lane::Emergency => "emergency",
        Lane::High => "high",
        Lane::Normal => "normal",
        Lane::Bulk => "bulk",
    }
}

/// `value` escaped for the inside of a JSON string.
fn escaped(value: &str) -> String {
    let quoted = Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// The body template with the message's values in, checked to be JSON.
pub fn fill(template: &str, message: &OutboundMessage) -> Result<Vec<u8>, PluginError> {
    let mut body = template.to_string();
    for (name, value) in [
        ("id", message.id.as_str()),
        ("to", message.to.as_str()),
        ("to_digits", message.to.trim_start_matches('+')),
        ("text", message.text.as_str()),
        ("lane", lane(message.lane)),
        ("language", message.language.as_deref().unwrap_or("")),
    ] {
        body = body.replace(&format!("{{{{{name}}}}}"), &escaped(value));
    }
    serde_json::from_str::<Value>(&body).map_err(|e| {
        PluginError::Unauthorized(format!(
            "setting `body_template` is not JSON once filled: {e}"
        ))
    })?;
    Ok(body.into_bytes())
}

/// The text of `value` at `pointer` (strings as they are, numbers as
/// written).
fn at(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `GATEWAY=ours,…` into pairs.
fn status_map() -> Vec<(String, ReceiptStatus)> {
    let map = setting("status_map").unwrap_or_default();
    map.split(',')
        .filter_map(|pair| {
            let (theirs, ours) = pair.split_once('=')?;
            let ours = match ours.trim() {
                "sent" => ReceiptStatus::Sent,
                "delivered" => ReceiptStatus::Delivered,
                "read" => ReceiptStatus::Read,
                "failed" => ReceiptStatus::Failed,
                _ => return None,
            };
            Some((theirs.trim().to_string(), ours))
        })
        .collect()
}

/// One delivery report or inbound message from one JSON object.
fn event(object: &Value, map: &[(String, ReceiptStatus)]) -> Option<WebhookEvent> {
    let pointer = |key: &str, default: &str| setting(key).unwrap_or_else(|| default.to_string());
    if let Some(status) = at(object, &pointer("receipt_status_pointer", "/status")) {
        let id = at(object, &pointer("receipt_id_pointer", "/id"))?;
        let Some((_, ours)) = map
            .iter()
            .find(|(theirs, _)| theirs.eq_ignore_ascii_case(&status))
        else {
            host::log(Level::Debug, &format!("Gateway status {status:?} ignored."));
            return None;
        };
        return Some(WebhookEvent::Receipt(Receipt {
            external_id: id,
            status: *ours,
            reason: (*ours == ReceiptStatus::Failed).then_some(status),
            at_ms: None,
        }));
    }
    let from = at(object, &pointer("inbound_from_pointer", "/from"))?;
    Some(WebhookEvent::Inbound(InboundMessage {
        from,
        text: at(object, &pointer("inbound_text_pointer", "/text")).unwrap_or_default(),
        external_id: at(object, &pointer("inbound_id_pointer", "/id")),
        received_at_ms: None,
    }))
}

impl Connector for HttpJson {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "http-json".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "Generic JSON HTTP gateway".into(),
            },
            max_batch: 1,
            counts_segments: true,
            idempotent: false,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        let mut headers = vec![Header::new("content-type", "application/json")];
        if let (Some(name), Some(value)) = (setting("auth_header"), setting("auth_value")) {
            headers.push(Header::new(name, value));
        }
        Ok(HttpRequest {
            method: setting("method")
                .unwrap_or_else(|| "POST".into())
                .to_uppercase(),
            url: required("url")?,
            headers,
            body: fill(&required("body_template")?, &message)?,
        })
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let status = response.status;
        let body: Option<Value> = serde_json::from_slice(&response.body).ok();
        match status {
            200..=299 => match setting("id_pointer") {
                // No id of the gateway's: reports name the message by ours.
                None => Ok(SendOutcome::Accepted(String::new())),
                Some(pointer) => body
                    .as_ref()
                    .and_then(|b| at(b, &pointer))
                    .map(SendOutcome::Accepted)
                    .ok_or_else(|| {
                        PluginError::invalid(format!("unreadable acceptance: no id at {pointer}"))
                    }),
            },
            401 | 403 => Err(PluginError::Unauthorized(format!(
                "gateway answered {status}"
            ))),
            429 | 500..=599 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: response.retry_after_ms(),
                reason: format!("gateway answered {status}"),
            })),
            _ => {
                let code =
                    setting("error_pointer").and_then(|p| body.as_ref().and_then(|b| at(b, &p)));
                let unreachable = code.as_deref().is_some_and(|c| {
                    setting("unreachable_errors")
                        .unwrap_or_default()
                        .split(',')
                        .any(|u| u.trim() == c)
                });
                Ok(SendOutcome::Failed(Failure {
                    reason: match code {
                        Some(code) => format!("gateway refused it ({status}): {code}"),
                        None => format!(
                            "gateway refused it ({status}): {}",
                            response.text().chars().take(200).collect::<String>()
                        ),
                    },
                    unreachable,
                }))
            }
        }
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let expected = required("webhook_token")?;
        check_token(&request, Some(TOKEN_HEADER), &expected)?;
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|e| PluginError::invalid(format!("unreadable callback: {e}")))?;
        let map = status_map();
        let objects = match &body {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        Ok(WebhookResult {
            events: objects.into_iter().filter_map(|o| event(o, &map)).collect(),
            response: HttpResponse::with_body(200, "text/plain", "ok"),
        })
    }
}

mhero_sdk::export_connector!(HttpJson);

#[cfg(test)]
mod tests;
