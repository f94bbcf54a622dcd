use mhero_sdk::connector::Lane;
use mhero_sdk::testing::MockHost;

use super::*;

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("base_url", "https://rapidpro.moh.example/")
        .config("api_token", "rp-token-0123")
        .config("urn_scheme", "tel")
        .config("webhook_token", "flow-hook-1")
        .install()
}

fn message(id: &str, to: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.into(),
        to: to.into(),
        text: text.into(),
        language: None,
        lane: Lane::Normal,
        expires_at_ms: None,
        attempt: 1,
    }
}

const CREATED: &str = r#"{"id": 1234, "urns": ["tel:+231770000001", "tel:+231770000002"], "contacts": [], "groups": [], "text": {"eng": "Report cases."}, "status": "queued", "created_on": "2026-11-28T10:00:00.000000Z"}"#;

#[test]
fn a_broadcast_to_many_urns() {
    let _host = host();
    let batch = vec![
        message("c1-0", "+231770000001", "Report cases."),
        message("c1-1", "+231770000002", "Report cases."),
    ];
    let req = RapidPro::build_send_batch(batch.clone()).unwrap();
    assert_eq!(
        req.url,
        "https://rapidpro.moh.example/api/v2/broadcasts.json"
    );
    assert_eq!(req.header("authorization"), Some("Token rp-token-0123"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({"urns": ["tel:+231770000001", "tel:+231770000002"], "text": "Report cases."})
    );
    let outcomes = RapidPro::parse_batch_response(
        batch,
        HttpResponse {
            status: 201,
            headers: Vec::new(),
            body: CREATED.as_bytes().to_vec(),
        },
    )
    .unwrap();
    assert_eq!(
        outcomes,
        vec![
            BatchOutcome {
                id: "c1-0".into(),
                outcome: SendOutcome::Accepted("broadcast-1234:tel:+231770000001".into())
            },
            BatchOutcome {
                id: "c1-1".into(),
                outcome: SendOutcome::Accepted("broadcast-1234:tel:+231770000002".into())
            },
        ]
    );
    // An address with its own scheme keeps it.
    let req = RapidPro::build_send(message("c1-2", "whatsapp:231770000003", "x")).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["urns"][0], "whatsapp:231770000003");
}

#[test]
fn refusals() {
    let _host = host();
    let parse = |status, body: &str| {
        RapidPro::parse_send_response(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    };
    assert!(matches!(
        parse(
            400,
            r#"{"urns": ["Invalid URN: tel:12. Ensure phone numbers contain country codes."]}"#
        )
        .unwrap(),
        SendOutcome::Failed(Failure {
            unreachable: true,
            ..
        })
    ));
    assert!(matches!(
        parse(403, r#"{"detail": "Invalid token"}"#),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(parse(429, "").unwrap(), SendOutcome::Retry(_)));
    assert!(matches!(
        parse(201, "{}"),
        Err(PluginError::InvalidInput(_))
    ));
}

const FLOW_CALL: &str = r#"{"contact": {"uuid": "d33e9ad5-5c35-414c-abd4-e7451c69ff1d", "name": "Amina Kollie", "urn": "tel:+231770000001"}, "flow": {"uuid": "a4f9ef9c-0b1a-4b3e-8e3a-8a3bd0a7b3d9", "name": "mHero reply"}, "path": [], "results": {}, "run": {"uuid": "4f1ea6c5-7a51-4b53-9f5f-2e1b2a0d8c7e", "created_on": "2026-11-28T10:05:00.000000Z"}, "input": {"uuid": "ad9c5c5e-0a6e-4b1a-9d0e-0b0f8e1c1f2a", "urn": "tel:+231770000001", "text": "YES", "attachments": [], "type": "msg", "created_on": "2026-11-28T10:05:01.000000Z"}}"#;

#[test]
fn a_reply_from_a_flow_webhook() {
    let _host = host();
    let request = HttpRequest {
        method: "POST".into(),
        url: "/webhooks/rapidpro".into(),
        headers: vec![Header::new("X-Webhook-Token", "flow-hook-1")],
        body: FLOW_CALL.as_bytes().to_vec(),
    };
    assert_eq!(
        RapidPro::handle_webhook(request.clone()).unwrap().events,
        vec![WebhookEvent::Inbound(InboundMessage {
            from: "+231770000001".into(),
            text: "YES".into(),
            external_id: Some("ad9c5c5e-0a6e-4b1a-9d0e-0b0f8e1c1f2a".into()),
            received_at_ms: None,
        })]
    );
    let mut forged = request.clone();
    forged.headers.clear();
    assert!(matches!(
        RapidPro::handle_webhook(forged),
        Err(PluginError::Unauthorized(_))
    ));
    let mut no_input = request;
    no_input.body = br#"{"contact": {"urn": "tel:+231770000001"}}"#.to_vec();
    assert!(matches!(
        RapidPro::handle_webhook(no_input),
        Err(PluginError::InvalidInput(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<RapidPro>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 6);
}
