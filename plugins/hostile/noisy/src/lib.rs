//! A connector for the simulated gateway that misbehaves on the first
//! attempt of most messages, to show the dispatcher survives it: by the
//! message's index (`<campaign>-<index>`) modulo 4 it sleeps (refused by
//! the host: plugins may not block), busy-waits on the clock (stopped at
//! its deadline), or prints a hundred lines (kept to a bounded sink); the
//! rest, and every later attempt, are sent normally. It prints on every
//! call.

use std::time::{Duration, Instant};

use mhero_sdk::connector::{
    Connector, ConnectorInfo, Failure, Header, HttpRequest, HttpResponse, OutboundMessage,
    PluginError, PluginInfo, PluginKind, RetryInfo, SendOutcome, WebhookResult,
};
use mhero_sdk::host;

pub struct Noisy;

fn index(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Connector for Noisy {
    fn describe() -> ConnectorInfo {
        ConnectorInfo {
            plugin: PluginInfo {
                name: "hostile-noisy".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Connector,
                summary: "test fixture".into(),
            },
            max_batch: 1,
            counts_segments: false,
            idempotent: true,
        }
    }

    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError> {
        println!("noisy: building {}", message.id);
        eprintln!("noisy: attempt {}", message.attempt);
        if message.attempt == 1 {
            match index(&message.id) % 4 {
                0 => std::thread::sleep(Duration::from_millis(20)),
                1 => {
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(10) {
                        std::hint::spin_loop();
                    }
                }
                2 => {
                    for i in 0..100 {
                        println!("noisy: line {i} of a long story about {}", message.id);
                    }
                }
                _ => {}
            }
        }
        let token = host::config("token").unwrap_or_default();
        let body = serde_json::json!({
            "id": message.id,
            "to": message.to,
            "text": message.text,
            "lane": "normal",
        });
        Ok(HttpRequest {
            method: "POST".into(),
            url: "sandbox://gateway/messages".into(),
            headers: vec![
                Header::new("content-type", "application/json"),
                Header::new("authorization", format!("Bearer {token}")),
                Header::new("idempotency-key", message.id.clone()),
            ],
            body: body.to_string().into_bytes(),
        })
    }

    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError> {
        eprintln!("noisy: answer {}", response.status);
        match response.status {
            200..=299 => {
                let v: serde_json::Value = serde_json::from_slice(&response.body)
                    .map_err(|e| PluginError::invalid(format!("unreadable answer: {e}")))?;
                let id = v["message_id"].as_str().unwrap_or_default().to_string();
                Ok(SendOutcome::Accepted(id))
            }
            429 | 500..=599 => Ok(SendOutcome::Retry(RetryInfo {
                after_ms: None,
                reason: format!("gateway answered {}", response.status),
            })),
            status => Ok(SendOutcome::Failed(Failure {
                unreachable: false,
                reason: format!("gateway answered {status}"),
            })),
        }
    }

    fn handle_webhook(_request: HttpRequest) -> Result<WebhookResult, PluginError> {
        println!("noisy: webhook");
        Err(PluginError::invalid("this fixture takes no webhooks"))
    }
}

mhero_sdk::export_connector!(Noisy);
