use mhero_sdk::testing::MockHost;

use super::*;

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("url", "https://sms.aggregator.example/api/v2/send")
        .config("auth_header", "X-API-Key")
        .config("auth_value", "k-123456")
        .config(
            "body_template",
            r#"{"msisdn": "{{to_digits}}", "message": "{{text}}", "ref": "{{id}}", "priority": "{{lane}}"}"#,
        )
        .config("id_pointer", "/data/messageId")
        .config("error_pointer", "/error/code")
        .config("unreachable_errors", "INVALID_MSISDN, BLACKLISTED")
        .config("webhook_token", "cb-77")
        .config("receipt_id_pointer", "/messageId")
        .config("receipt_status_pointer", "/dlrStatus")
        .config("status_map", "DELIVRD=delivered,UNDELIV=failed,ACCEPTD=sent")
        .config("inbound_from_pointer", "/sender")
        .config("inbound_text_pointer", "/body")
        .config("inbound_id_pointer", "/uid")
        .install()
}

fn message(text: &str) -> OutboundMessage {
    OutboundMessage {
        id: "c3-9".into(),
        to: "+233201234567".into(),
        text: text.into(),
        language: Some("en".into()),
        lane: Lane::Emergency,
        expires_at_ms: None,
        attempt: 1,
    }
}

fn answer(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn the_template_is_filled_json_escaped() {
    let _host = host();
    let req = HttpJson::build_send(message("Say \"YES\" \\ or call: 4455\nThanks ✓")).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.url, "https://sms.aggregator.example/api/v2/send");
    assert_eq!(req.header("x-api-key"), Some("k-123456"));
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "msisdn": "233201234567",
            "message": "Say \"YES\" \\ or call: 4455\nThanks ✓",
            "ref": "c3-9",
            "priority": "emergency",
        })
    );
}

#[test]
fn a_template_that_is_not_json_is_a_configuration_error() {
    let _host = MockHost::new()
        .config("url", "https://x/send")
        .config("body_template", r#"{"to": {{to}}}"#)
        .install();
    assert!(matches!(
        HttpJson::build_send(message("x")),
        Err(PluginError::Unauthorized(m)) if m.contains("body_template")
    ));
}

#[test]
fn answers() {
    let _host = host();
    assert_eq!(
        HttpJson::parse_send_response(answer(200, r#"{"data": {"messageId": 88123}}"#)).unwrap(),
        SendOutcome::Accepted("88123".into())
    );
    assert!(matches!(
        HttpJson::parse_send_response(answer(200, r#"{"ok": true}"#)),
        Err(PluginError::InvalidInput(_))
    ));
    assert!(matches!(
        HttpJson::parse_send_response(answer(422, r#"{"error": {"code": "INVALID_MSISDN"}}"#))
            .unwrap(),
        SendOutcome::Failed(Failure {
            unreachable: true,
            ..
        })
    ));
    assert!(matches!(
        HttpJson::parse_send_response(answer(422, r#"{"error": {"code": "NO_CREDIT"}}"#)).unwrap(),
        SendOutcome::Failed(Failure { unreachable: false, reason }) if reason.contains("NO_CREDIT")
    ));
    assert!(matches!(
        HttpJson::parse_send_response(answer(503, "")).unwrap(),
        SendOutcome::Retry(_)
    ));
    assert!(matches!(
        HttpJson::parse_send_response(answer(401, "")),
        Err(PluginError::Unauthorized(_))
    ));
}

#[test]
fn without_an_id_pointer_reports_name_our_id() {
    let _host = MockHost::new()
        .config("url", "https://x/send")
        .config("body_template", "{}")
        .config("id_pointer", "")
        .install();
    assert_eq!(
        HttpJson::parse_send_response(answer(202, "queued")).unwrap(),
        SendOutcome::Accepted(String::new())
    );
}

fn callback(query: &str, headers: &[(&str, &str)], body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: format!("/webhooks/gh{query}"),
        headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn callbacks_by_the_configured_shapes() {
    let _host = host();
    let result = HttpJson::handle_webhook(callback(
        "?token=cb-77",
        &[],
        r#"[{"messageId": 88123, "dlrStatus": "DELIVRD"}, {"messageId": "88124", "dlrStatus": "UNDELIV"}, {"messageId": "88125", "dlrStatus": "ENROUTE"}, {"sender": "+233201234567", "body": "STOCK ORS 40", "uid": "in-1"}]"#,
    ))
    .unwrap();
    assert_eq!(
        result.events,
        vec![
            WebhookEvent::Receipt(Receipt {
                external_id: "88123".into(),
                status: ReceiptStatus::Delivered,
                reason: None,
                at_ms: None
            }),
            WebhookEvent::Receipt(Receipt {
                external_id: "88124".into(),
                status: ReceiptStatus::Failed,
                reason: Some("UNDELIV".into()),
                at_ms: None
            }),
            WebhookEvent::Inbound(InboundMessage {
                from: "+233201234567".into(),
                text: "STOCK ORS 40".into(),
                external_id: Some("in-1".into()),
                received_at_ms: None
            }),
        ]
    );
    // The token in a header works too; a wrong one is refused.
    assert!(HttpJson::handle_webhook(callback("", &[("X-Webhook-Token", "cb-77")], "{}")).is_ok());
    assert!(matches!(
        HttpJson::handle_webhook(callback("?token=cb-78", &[], "{}")),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        HttpJson::handle_webhook(callback("?token=cb-77", &[], "<xml/>")),
        Err(PluginError::InvalidInput(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<HttpJson>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 3);
}
