use mhero_sdk::connector::Lane;
use mhero_sdk::signature::sha256_header;
use mhero_sdk::testing::MockHost;

use super::*;

const SECRET: &str = "app-secret-6f1e";

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("base_url", "https://graph.facebook.com")
        .config("api_version", "v21.0")
        .config("phone_number_id", "106540352242922")
        .config("access_token", "EAAJB-token")
        .config("app_secret", SECRET)
        .config("verify_token", "moh-verify")
        .install()
}

fn message(text: &str) -> OutboundMessage {
    OutboundMessage {
        id: "c9-3".into(),
        to: "+231770000001".into(),
        text: text.into(),
        language: Some("fr".into()),
        lane: Lane::High,
        expires_at_ms: None,
        attempt: 1,
    }
}

fn response(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![Header::new("content-type", "application/json")],
        body: body.as_bytes().to_vec(),
    }
}

fn signed(body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: "/webhooks/whatsapp".into(),
        headers: vec![Header::new(
            "X-Hub-Signature-256",
            sha256_header(SECRET.as_bytes(), body.as_bytes()),
        )],
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn text_messages_and_templates() {
    let _host = host();
    let req = WhatsAppCloud::build_send(message("Réunion lundi.")).unwrap();
    assert_eq!(
        req.url,
        "https://graph.facebook.com/v21.0/106540352242922/messages"
    );
    assert_eq!(req.header("authorization"), Some("Bearer EAAJB-token"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["to"], "231770000001");
    assert_eq!(body["type"], "text");
    assert_eq!(body["text"]["body"], "Réunion lundi.");

    let _host = MockHost::new()
        .config("base_url", "https://graph.facebook.com")
        .config("api_version", "v21.0")
        .config("phone_number_id", "1")
        .config("access_token", "t")
        .config("template", "moh_alert")
        .install();
    let mut m = message("Cholera: report cases today.");
    m.language = Some("pt-BR".into());
    let body: serde_json::Value =
        serde_json::from_slice(&WhatsAppCloud::build_send(m).unwrap().body).unwrap();
    assert_eq!(body["type"], "template");
    assert_eq!(body["template"]["name"], "moh_alert");
    assert_eq!(body["template"]["language"]["code"], "pt_BR");
    assert_eq!(
        body["template"]["components"][0]["parameters"][0]["text"],
        "Cholera: report cases today."
    );
    assert!(matches!(
        WhatsAppCloud::build_send(message(&"x".repeat(1025))),
        Err(PluginError::InvalidInput(_))
    ));
}

#[test]
fn not_a_number_falls_back() {
    let _host = host();
    let mut m = message("x");
    m.to = "555001".into();
    assert!(matches!(
        WhatsAppCloud::build_send(m),
        Err(PluginError::Permanent(_))
    ));
}

#[test]
fn graph_api_answers() {
    let _host = host();
    fn parse(status: u16, body: &str) -> Result<SendOutcome, PluginError> {
        WhatsAppCloud::parse_send_response(response(status, body))
    }
    assert_eq!(
        parse(
            200,
            r#"{"messaging_product":"whatsapp","contacts":[{"input":"231770000001","wa_id":"231770000001"}],"messages":[{"id":"wamid.HBgLMjMxNzcwMDAwMDAxFQIAERgSQzVGQjMyMkM3MjA0RDE5RUFBAA=="}]}"#
        )
        .unwrap(),
        SendOutcome::Accepted("wamid.HBgLMjMxNzcwMDAwMDAxFQIAERgSQzVGQjMyMkM3MjA0RDE5RUFBAA==".into())
    );
    for throttled in [130429, 131056] {
        let body = format!(
            r#"{{"error":{{"message":"Rate limit hit","type":"OAuthException","code":{throttled},"fbtrace_id":"A1"}}}}"#
        );
        assert!(
            matches!(parse(400, &body).unwrap(), SendOutcome::Retry(RetryInfo { reason, .. }) if reason.starts_with("throttled")),
            "{throttled}"
        );
    }
    assert!(matches!(
        parse(
            400,
            r#"{"error":{"message":"Message undeliverable","type":"OAuthException","code":131026,"error_data":{"messaging_product":"whatsapp","details":"Message Undeliverable."},"fbtrace_id":"A2"}}"#
        )
        .unwrap(),
        SendOutcome::Failed(Failure { unreachable: true, reason }) if reason == "Message undeliverable (131026): Message Undeliverable."
    ));
    assert!(matches!(
        parse(
            401,
            r#"{"error":{"message":"Error validating access token: Session has expired","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"A3"}}"#
        ),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        parse(
            500,
            r#"{"error":{"message":"Something went wrong","code":131000}}"#
        )
        .unwrap(),
        SendOutcome::Retry(_)
    ));
    assert!(matches!(
        parse(
            400,
            r#"{"error":{"message":"Invalid parameter","code":100}}"#
        )
        .unwrap(),
        SendOutcome::Failed(Failure {
            unreachable: false,
            ..
        })
    ));
    assert!(matches!(
        parse(502, "<html>bad gateway</html>").unwrap(),
        SendOutcome::Retry(_)
    ));
    assert!(matches!(
        parse(200, "{}"),
        Err(PluginError::InvalidInput(_))
    ));
}

#[test]
fn the_subscription_check() {
    let _host = host();
    let get = |url: &str| {
        WhatsAppCloud::handle_webhook(HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        })
    };
    let ok = get("/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=moh-verify")
        .unwrap();
    assert_eq!(ok.response.status, 200);
    assert_eq!(ok.response.body, b"1158201444");
    assert!(ok.events.is_empty());
    assert!(matches!(
        get("/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=1&hub.verify_token=guess"),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        get("/webhooks/whatsapp?hub.challenge=1&hub.verify_token=moh-verify"),
        Err(PluginError::InvalidInput(_))
    ));
}

#[test]
fn statuses_and_replies_from_a_signed_notification() {
    let _host = host();
    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.A","status":"read","timestamp":"1795896200","recipient_id":"231770000001"},{"id":"wamid.A","status":"delivered","timestamp":"1795896150","recipient_id":"231770000001"},{"id":"wamid.B","status":"failed","timestamp":"1795896160","recipient_id":"231770000002","errors":[{"code":131026,"title":"Message undeliverable"}]}],"contacts":[{"profile":{"name":"Amina"},"wa_id":"231770000001"}],"messages":[{"from":"231770000001","id":"wamid.C","timestamp":"1795896210","text":{"body":"YES"},"type":"text"},{"from":"231770000001","id":"wamid.D","timestamp":"1795896220","type":"interactive","interactive":{"type":"button_reply","button_reply":{"id":"yes","title":"Yes"}}}]},"field":"messages"}]}]}"#;
    let result = WhatsAppCloud::handle_webhook(signed(body)).unwrap();
    assert_eq!(
        result.events,
        vec![
            // Out of order as Meta may send them; the broker's status
            // ladder keeps `read`.
            WebhookEvent::Receipt(Receipt {
                external_id: "wamid.A".into(),
                status: ReceiptStatus::Read,
                reason: None,
                at_ms: Some(1_795_896_200_000),
            }),
            WebhookEvent::Receipt(Receipt {
                external_id: "wamid.A".into(),
                status: ReceiptStatus::Delivered,
                reason: None,
                at_ms: Some(1_795_896_150_000),
            }),
            WebhookEvent::Receipt(Receipt {
                external_id: "wamid.B".into(),
                status: ReceiptStatus::Failed,
                reason: Some("Message undeliverable (131026)".into()),
                at_ms: Some(1_795_896_160_000),
            }),
            WebhookEvent::Inbound(InboundMessage {
                from: "+231770000001".into(),
                text: "YES".into(),
                external_id: Some("wamid.C".into()),
                received_at_ms: Some(1_795_896_210_000),
            }),
            WebhookEvent::Inbound(InboundMessage {
                from: "+231770000001".into(),
                text: "Yes".into(),
                external_id: Some("wamid.D".into()),
                received_at_ms: Some(1_795_896_220_000),
            }),
        ]
    );
    assert_eq!(result.response.status, 200);
}

#[test]
fn an_unsigned_or_tampered_notification_is_refused() {
    let _host = host();
    let body = r#"{"object":"whatsapp_business_account","entry":[]}"#;
    let mut tampered = signed(body);
    tampered.body = br#"{"object":"whatsapp_business_account","entry":[{}]}"#.to_vec();
    let mut unsigned = signed(body);
    unsigned.headers.clear();
    for request in [tampered, unsigned] {
        assert!(matches!(
            WhatsAppCloud::handle_webhook(request),
            Err(PluginError::Unauthorized(_))
        ));
    }
    assert!(matches!(
        WhatsAppCloud::handle_webhook(signed("not json")),
        Err(PluginError::InvalidInput(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran = mhero_sdk::testing::connector_fixtures::<WhatsAppCloud>(
        include_str!("../plugin.toml"),
        &dir,
    );
    assert_eq!(ran, 17);
}
