use mhero_sdk::connector::Lane;
use mhero_sdk::testing::MockHost;

use super::*;

const TOKEN: &str = "12345";

fn host(webhook_url: &str) -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("base_url", "https://api.twilio.com")
        .config("account_sid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
        .config("auth_token", TOKEN)
        .config("from", "+15005550006")
        .config("webhook_url", webhook_url)
        .now_ms(1_800_000_000_000)
        .install()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn form(list: &[(&str, &str)]) -> Vec<u8> {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in list {
        f.append_pair(k, v);
    }
    f.finish().into_bytes()
}

fn callback(url: &str, params: &[(&str, &str)], signature: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: url.into(),
        headers: vec![
            Header::new("content-type", "application/x-www-form-urlencoded"),
            Header::new("X-Twilio-Signature", signature),
        ],
        body: form(params),
    }
}

/// Twilio's published example (its security documentation and the helper
/// libraries' tests): this URL, token and parameters sign to this value.
const VECTOR_PARAMS: [(&str, &str); 5] = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
];
const VECTOR_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
const VECTOR_SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";

#[test]
fn the_published_signature_vector() {
    assert_eq!(
        signature(TOKEN, VECTOR_URL, &pairs(&VECTOR_PARAMS)),
        VECTOR_SIGNATURE
    );
    // Through the webhook: the configured URL and the request's query.
    let _host = host("https://mycompany.com/myapp.php");
    let result = Twilio::handle_webhook(callback(
        "/myapp.php?foo=1&bar=2",
        &VECTOR_PARAMS,
        VECTOR_SIGNATURE,
    ));
    // It verifies; it is a voice callback, not a message: refused as such.
    assert!(
        matches!(result, Err(PluginError::InvalidInput(_))),
        "{result:?}"
    );
    let forged = callback("/myapp.php?foo=1&bar=3", &VECTOR_PARAMS, VECTOR_SIGNATURE);
    assert!(matches!(
        Twilio::handle_webhook(forged),
        Err(PluginError::Unauthorized(_))
    ));
}

#[test]
fn messages_api_request() {
    let _host = host("https://broker.example.org/webhooks/sms");
    let req = Twilio::build_send(OutboundMessage {
        id: "c2-5".into(),
        to: "+231770000001".into(),
        text: "Stock report due Friday.".into(),
        language: None,
        lane: Lane::Bulk,
        expires_at_ms: Some(1_800_000_000_000 + 3_600_000),
        attempt: 1,
    })
    .unwrap();
    assert_eq!(
        req.url,
        "https://api.twilio.com/2010-04-01/Accounts/ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX/Messages.json"
    );
    assert!(req.header("authorization").unwrap().starts_with("Basic "));
    let sent: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    assert_eq!(
        sent,
        pairs(&[
            ("To", "+231770000001"),
            ("Body", "Stock report due Friday."),
            ("From", "+15005550006"),
            ("StatusCallback", "https://broker.example.org/webhooks/sms"),
            ("ValidityPeriod", "3600"),
        ])
    );
}

#[test]
fn messages_api_answers() {
    let _host = host("https://b/webhooks/sms");
    let parse = |status, body: &str| {
        Twilio::parse_send_response(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    };
    assert_eq!(
        parse(
            201,
            r#"{"sid":"SM1f0e8ae6ade43cb3c0ce4525424e404f","status":"queued"}"#
        )
        .unwrap(),
        SendOutcome::Accepted("SM1f0e8ae6ade43cb3c0ce4525424e404f".into())
    );
    assert!(matches!(
        parse(400, r#"{"code":21211,"message":"The 'To' number 5551234 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#).unwrap(),
        SendOutcome::Failed(Failure { unreachable: true, .. })
    ));
    assert!(matches!(
        parse(
            400,
            r#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#
        )
        .unwrap(),
        SendOutcome::Failed(Failure {
            unreachable: true,
            ..
        })
    ));
    assert!(matches!(
        parse(
            429,
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#
        )
        .unwrap(),
        SendOutcome::Retry(_)
    ));
    assert!(matches!(
        parse(
            401,
            r#"{"code":20003,"message":"Authenticate","status":401}"#
        ),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(parse(503, "").unwrap(), SendOutcome::Retry(_)));
}

#[test]
fn status_callbacks_and_inbound_messages() {
    let url = "https://broker.example.org/webhooks/sms";
    let _host = host(url);
    let delivered = [
        ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
        ("From", "+15005550006"),
        ("MessageSid", "SM1f0e8ae6ade43cb3c0ce4525424e404f"),
        ("MessageStatus", "delivered"),
        ("SmsSid", "SM1f0e8ae6ade43cb3c0ce4525424e404f"),
        ("SmsStatus", "delivered"),
        ("To", "+231770000001"),
    ];
    let sig = signature(TOKEN, url, &pairs(&delivered));
    let result = Twilio::handle_webhook(callback("/webhooks/sms", &delivered, &sig)).unwrap();
    assert_eq!(
        result.events,
        vec![WebhookEvent::Receipt(Receipt {
            external_id: "SM1f0e8ae6ade43cb3c0ce4525424e404f".into(),
            status: ReceiptStatus::Delivered,
            reason: None,
            at_ms: None,
        })]
    );
    let failed = [
        ("ErrorCode", "30003"),
        ("MessageSid", "SM2"),
        ("MessageStatus", "undelivered"),
    ];
    let sig = signature(TOKEN, url, &pairs(&failed));
    assert!(matches!(
        &Twilio::handle_webhook(callback("/webhooks/sms", &failed, &sig)).unwrap().events[..],
        [WebhookEvent::Receipt(Receipt { status: ReceiptStatus::Failed, reason: Some(r), .. })] if r == "undelivered (error 30003)"
    ));
    let inbound = [
        ("Body", "STOCK AMOX 120"),
        ("From", "+231770000001"),
        ("MessageSid", "SM3"),
        ("NumMedia", "0"),
        ("SmsStatus", "received"),
        ("To", "+15005550006"),
    ];
    let sig = signature(TOKEN, url, &pairs(&inbound));
    let result = Twilio::handle_webhook(callback("/webhooks/sms", &inbound, &sig)).unwrap();
    assert!(matches!(
        &result.events[..],
        [WebhookEvent::Inbound(InboundMessage { from, text, .. })] if from == "+231770000001" && text == "STOCK AMOX 120"
    ));
    assert_eq!(result.response.body, b"<Response></Response>");
    // Signed for other parameters: refused.
    assert!(matches!(
        Twilio::handle_webhook(callback("/webhooks/sms", &inbound[..5], &sig)),
        Err(PluginError::Unauthorized(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<Twilio>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 7);
}
