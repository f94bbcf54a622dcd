//! {{name}}: a channel connector for a JSON SMS gateway. `build_send`
//! makes the request, the broker sends it (only to the host of the
//! `base_url` setting), `parse_send_response` reads the answer, and
//! `handle_webhook` reads delivery receipts.

use mhero_sdk::connector::{
    ConnectorInfo, Connector, Failure, Header, HttpRequest, HttpResponse, PluginError,
    PluginInfo, PluginKind, Receipt, ReceiptStatus, RetryInfo, SendOutcome, WebhookEvent,
    WebhookResult,
};
use mhero_sdk::host;

pub struct Plugin;

fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    // {"key": "value"}: enough for this gateway's flat answers.
    let start = body.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = body[start..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            '\n' => vec!['\\', 'n'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

impl Connector for Plugin {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "{{name}}".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "{{summary}}".into(),
            },
            max_batch: 1,
            counts_segments: true,
            idempotent: true,
        }
    }

    fn build_send(message: mhero_sdk::connector::OutboundMessage) -> Result<HttpRequest, PluginError> {
        let base = host::config("base_url")
            .ok_or_else(|| PluginError::InvalidInput("the base_url setting is missing".into()))?;
        let token = host::config("token").unwrap_or_default();
        let body = format!(
            "{{\"to\":\"{}\",\"text\":\"{}\",\"id\":\"{}\"}}",
            escape(&message.to),
            escape(&message.text),
            escape(&message.id)
        );
        Ok(HttpRequest {
            method: "POST".into(),
            url: format!("{}/send", base.trim_end_matches('/')),
            headers: vec![
                Header { name: "content-type".into(), value: "application/json".into() },
                Header { name: "authorization".into(), value: format!("Bearer {token}") },
            ],
            body: body.into_bytes(),
        })
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        let body = String::from_utf8_lossy(&response.body);
        Ok(match response.status {
            200 | 202 => match field(&body, "message_id") {
                Some(id) => SendOutcome::Accepted(id.to_string()),
                None => SendOutcome::Retry(RetryInfo {
                    after_ms: None,
                    reason: "accepted without a message_id".into(),
                }),
            },
            429 => SendOutcome::Retry(RetryInfo {
                after_ms: response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
                    .and_then(|h| h.value.trim().parse::<u64>().ok())
                    .map(|s| s * 1000),
                reason: "throttled (429)".into(),
            }),
            s if s >= 500 => SendOutcome::Retry(RetryInfo {
                after_ms: None,
                reason: format!("gateway error ({s})"),
            }),
            s => SendOutcome::Failed(Failure {
                reason: format!("refused ({s})"),
                unreachable: s == 404,
            }),
        })
    }

    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError> {
        let body = String::from_utf8_lossy(&request.body);
        let id = field(&body, "message_id")
            .ok_or_else(|| PluginError::InvalidInput("no message_id".into()))?;
        let status = match field(&body, "status") {
            Some("delivered") => ReceiptStatus::Delivered,
            Some("sent") => ReceiptStatus::Sent,
            Some("failed") => ReceiptStatus::Failed,
            other => return Err(PluginError::InvalidInput(format!("unknown status {other:?}"))),
        };
        Ok(WebhookResult {
            events: vec![WebhookEvent::Receipt(Receipt {
                external_id: id.to_string(),
                status,
                reason: None,
                at_ms: None,
            })],
            response: HttpResponse { status: 200, headers: Vec::new(), body: Vec::new() },
        })
    }
}

mhero_sdk::export_connector!(Plugin);

#[cfg(test)]
mod tests {
    /// `tests/fixtures/*.json`, run natively as `mhero plugin test` runs
    /// them on the built component.
    #[test]
    fn golden_fixtures_pass_natively() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let ran = mhero_sdk::testing::connector_fixtures::<super::Plugin>(
            include_str!("../plugin.toml"),
            &dir,
        );
        assert!(ran > 0, "no fixtures in {}", dir.display());
    }
}
