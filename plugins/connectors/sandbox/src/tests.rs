use mhero_sdk::testing::MockHost;

use super::*;

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("token", "t0k")
        .config("webhook_secret", "s3cret")
        .install()
}

fn message(id: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.into(),
        to: "+231770000001".into(),
        text: "Cholera alert: report suspected cases today.".into(),
        language: Some("en".into()),
        lane: Lane::Emergency,
        expires_at_ms: Some(1_800_000_000_000),
        attempt: 1,
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn build_send_posts_json_with_token_and_idempotency_key() {
    let _host = host();
    let req = Sandbox::build_send(message("c1-7")).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.url, SEND_URL);
    assert_eq!(req.header("Authorization"), Some("Bearer t0k"));
    assert_eq!(req.header("idempotency-key"), Some("c1-7"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["to"], "+231770000001");
    assert_eq!(body["lane"], "emergency");
    assert_eq!(body["expires_at_ms"], 1_800_000_000_000u64);
}

#[test]
fn a_missing_token_is_unauthorized_not_a_panic() {
    let _host = MockHost::new().install();
    assert!(matches!(
        Sandbox::build_send(message("c1-1")),
        Err(PluginError::Unauthorized(_))
    ));
}

#[test]
fn send_responses_map_to_outcomes() {
    let _host = host();
    assert_eq!(
        Sandbox::parse_send_response(response(202, &[], r#"{"message_id":"sbx-1"}"#)).unwrap(),
        SendOutcome::Accepted("sbx-1".into())
    );
    assert_eq!(
        Sandbox::parse_send_response(response(429, &[("Retry-After", "3")], "")).unwrap(),
        SendOutcome::Retry(RetryInfo {
            after_ms: Some(3000),
            reason: "throttled (429)".into()
        })
    );
    assert!(matches!(
        Sandbox::parse_send_response(response(503, &[], "busy")).unwrap(),
        SendOutcome::Retry(RetryInfo { after_ms: None, .. })
    ));
    assert_eq!(
        Sandbox::parse_send_response(response(
            400,
            &[],
            r#"{"error":"no such number","code":"unknown_subscriber"}"#
        ))
        .unwrap(),
        SendOutcome::Failed(Failure {
            reason: "no such number".into(),
            unreachable: true
        })
    );
    assert_eq!(
        Sandbox::parse_send_response(response(400, &[], r#"{"error":"text too long"}"#)).unwrap(),
        SendOutcome::Failed(Failure {
            reason: "text too long".into(),
            unreachable: false
        })
    );
    assert!(matches!(
        Sandbox::parse_send_response(response(401, &[], "")),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        Sandbox::parse_send_response(response(202, &[], "not json")),
        Err(PluginError::InvalidInput(_))
    ));
}

#[test]
fn batches_carry_every_message_and_map_each_result() {
    let _host = host();
    let req = Sandbox::build_send_batch(vec![message("c1-1"), message("c1-2")]).unwrap();
    assert_eq!(req.url, BATCH_URL);
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    assert!(Sandbox::build_send_batch(Vec::new()).is_err());
    assert!(
        Sandbox::build_send_batch((0..101).map(|i| message(&format!("c1-{i}"))).collect()).is_err()
    );

    let reply = r#"{"results":[{"id":"c1-1","message_id":"sbx-9"},{"id":"c1-2","error":"absent","code":"absent_subscriber"}]}"#;
    let outcomes = Sandbox::parse_batch_response(
        vec![message("c1-1"), message("c1-2")],
        response(200, &[], reply),
    )
    .unwrap();
    assert_eq!(
        outcomes[0],
        BatchOutcome {
            id: "c1-1".into(),
            outcome: SendOutcome::Accepted("sbx-9".into())
        }
    );
    assert!(matches!(&outcomes[1].outcome, SendOutcome::Failed(f) if f.unreachable));
    let throttled = Sandbox::parse_batch_response(
        vec![message("c1-1")],
        response(429, &[("retry-after", "1")], ""),
    )
    .unwrap();
    assert!(matches!(&throttled[0].outcome, SendOutcome::Retry(r) if r.after_ms == Some(1000)));
}

fn webhook(body: &str, signature: Option<String>) -> HttpRequest {
    let mut headers = vec![Header::new("content-type", "application/json")];
    if let Some(sig) = signature {
        headers.push(Header::new("X-Sandbox-Signature", sig));
    }
    HttpRequest {
        method: "POST".into(),
        url: "/webhooks/sandbox".into(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn signed_webhooks_yield_receipts_and_inbound_messages() {
    let _host = host();
    let body = r#"{"receipts":[{"message_id":"sbx-1","status":"delivered","at_ms":5},{"message_id":"sbx-2","status":"bogus"}],
                  "inbound":[{"id":"in-1","from":"+231770000001","text":"YES","at_ms":6}]}"#;
    let result =
        Sandbox::handle_webhook(webhook(body, Some(sign("s3cret", body.as_bytes())))).unwrap();
    assert_eq!(result.response.status, 200);
    assert_eq!(result.events.len(), 2, "the unknown status is skipped");
    assert_eq!(
        result.events[0],
        WebhookEvent::Receipt(Receipt {
            external_id: "sbx-1".into(),
            status: ReceiptStatus::Delivered,
            reason: None,
            at_ms: Some(5)
        })
    );
    assert!(
        matches!(&result.events[1], WebhookEvent::Inbound(m) if m.text == "YES" && m.external_id.as_deref() == Some("in-1"))
    );
}

#[test]
fn unsigned_or_forged_webhooks_are_unauthorized() {
    let host = host();
    let body = r#"{"receipts":[]}"#;
    assert!(matches!(
        Sandbox::handle_webhook(webhook(body, None)),
        Err(PluginError::Unauthorized(_))
    ));
    let forged = sign("other-secret", body.as_bytes());
    assert!(matches!(
        Sandbox::handle_webhook(webhook(body, Some(forged))),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        Sandbox::handle_webhook(webhook(body, Some("sha256=zz".into()))),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(host.logs().iter().any(|(_, m)| m.contains("signature")));
    let tampered = sign("s3cret", body.as_bytes());
    assert!(matches!(
        Sandbox::handle_webhook(webhook(r#"{"receipts":[{}]}"#, Some(tampered))),
        Err(PluginError::Unauthorized(_))
    ));
}

#[test]
fn describe_declares_batch_segments_and_idempotency() {
    let info = Sandbox::describe();
    assert_eq!(info.plugin.name, "sandbox");
    assert_eq!(info.max_batch, 100);
    assert!(info.counts_segments && info.idempotent);
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<Sandbox>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 8);
}
