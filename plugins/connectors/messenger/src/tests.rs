use mhero_sdk::connector::Lane;
use mhero_sdk::signature::sha256_header;
use mhero_sdk::testing::MockHost;

use super::*;

const SECRET: &str = "page-app-secret";

fn host(tag: Option<&str>) -> mhero_sdk::testing::Installed {
    let mut h = MockHost::new()
        .config("base_url", "https://graph.facebook.com")
        .config("api_version", "v21.0")
        .config("page_access_token", "EAAPage")
        .config("app_secret", SECRET)
        .config("verify_token", "vt-1");
    if let Some(tag) = tag {
        h = h.config("message_tag", tag);
    }
    h.install()
}

fn message(to: &str) -> OutboundMessage {
    OutboundMessage {
        id: "c5-1".into(),
        to: to.into(),
        text: "Training session on Thursday.".into(),
        language: None,
        lane: Lane::Normal,
        expires_at_ms: None,
        attempt: 1,
    }
}

fn signed(body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: "/webhooks/messenger".into(),
        headers: vec![Header::new(
            "X-Hub-Signature-256",
            sha256_header(SECRET.as_bytes(), body.as_bytes()),
        )],
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn send_api_requests_with_messaging_types() {
    let _host = host(None);
    let req = Messenger::build_send(message("6712345678901234")).unwrap();
    assert_eq!(req.url, "https://graph.facebook.com/v21.0/me/messages");
    assert_eq!(req.header("authorization"), Some("Bearer EAAPage"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["recipient"]["id"], "6712345678901234");
    assert_eq!(body["messaging_type"], "UPDATE");
    assert_eq!(body["message"]["text"], "Training session on Thursday.");
    let _host = host(Some("CONFIRMED_EVENT_UPDATE"));
    let body: serde_json::Value =
        serde_json::from_slice(&Messenger::build_send(message("67")).unwrap().body).unwrap();
    assert_eq!(body["messaging_type"], "MESSAGE_TAG");
    assert_eq!(body["tag"], "CONFIRMED_EVENT_UPDATE");
    assert!(matches!(
        Messenger::build_send(message("+231770000001")),
        Err(PluginError::Permanent(_))
    ));
}

#[test]
fn send_api_answers() {
    let _host = host(None);
    let parse = |status, body: &str| {
        Messenger::parse_send_response(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    };
    assert_eq!(
        parse(200, r#"{"recipient_id":"6712345678901234","message_id":"m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P"}"#).unwrap(),
        SendOutcome::Accepted("m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6AC8fplwlqLP_5cgXIbu7I3rBN0P".into())
    );
    assert!(matches!(
        parse(400, r#"{"error":{"message":"(#10) This message is sent outside of allowed window.","type":"OAuthException","code":10,"error_subcode":2018278,"fbtrace_id":"B1"}}"#).unwrap(),
        SendOutcome::Failed(Failure { unreachable: true, .. })
    ));
    assert!(matches!(
        parse(400, r#"{"error":{"message":"(#551) This person isn't available right now.","type":"OAuthException","code":551,"error_subcode":1545041}}"#).unwrap(),
        SendOutcome::Failed(Failure { unreachable: true, .. })
    ));
    assert!(matches!(
        parse(400, r#"{"error":{"message":"(#613) Calls to this api have exceeded the rate limit.","code":613}}"#).unwrap(),
        SendOutcome::Retry(_)
    ));
    assert!(matches!(
        parse(
            400,
            r#"{"error":{"message":"Invalid OAuth access token.","type":"OAuthException","code":190}}"#
        ),
        Err(PluginError::Unauthorized(_))
    ));
}

#[test]
fn replies_postbacks_and_deliveries() {
    let _host = host(None);
    let body = r#"{"object":"page","entry":[{"id":"PAGE","time":1795896300000,"messaging":[{"sender":{"id":"6712345678901234"},"recipient":{"id":"PAGE"},"timestamp":1795896300000,"message":{"mid":"m_reply","text":"yes I will come"}},{"sender":{"id":"6712345678901234"},"recipient":{"id":"PAGE"},"timestamp":1795896301000,"message":{"mid":"m_qr","text":"Yes","quick_reply":{"payload":"YES"}}},{"sender":{"id":"6712345678901234"},"recipient":{"id":"PAGE"},"timestamp":1795896302000,"postback":{"mid":"m_pb","title":"Confirm","payload":"CONFIRM"}},{"sender":{"id":"6712345678901234"},"recipient":{"id":"PAGE"},"delivery":{"mids":["m_a","m_b"],"watermark":1795896290000}},{"sender":{"id":"6712345678901234"},"recipient":{"id":"PAGE"},"read":{"watermark":1795896295000}},{"sender":{"id":"PAGE"},"recipient":{"id":"6712345678901234"},"timestamp":1795896303000,"message":{"mid":"m_echo","text":"Training session on Thursday.","is_echo":true}}]}]}"#;
    let result = Messenger::handle_webhook(signed(body)).unwrap();
    let texts: Vec<String> = result
        .events
        .iter()
        .map(|e| match e {
            WebhookEvent::Inbound(m) => format!("in {} {}", m.from, m.text),
            WebhookEvent::Receipt(r) => format!("receipt {} {:?}", r.external_id, r.status),
        })
        .collect();
    assert_eq!(
        texts,
        [
            "in 6712345678901234 yes I will come",
            "in 6712345678901234 YES",
            "in 6712345678901234 CONFIRM",
            "receipt m_a ReceiptStatus::Delivered",
            "receipt m_b ReceiptStatus::Delivered",
        ]
    );
    assert_eq!(result.response.body, b"EVENT_RECEIVED");
    let mut forged = signed(body);
    forged.headers[0].value = sha256_header(b"other", body.as_bytes());
    assert!(matches!(
        Messenger::handle_webhook(forged),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        Messenger::handle_webhook(signed(r#"{"object":"instagram","entry":[]}"#)),
        Err(PluginError::InvalidInput(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<Messenger>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 4);
}
