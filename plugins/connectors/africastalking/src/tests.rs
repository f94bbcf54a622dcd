use mhero_sdk::connector::Lane;
use mhero_sdk::testing::MockHost;

use super::*;

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("base_url", "https://api.africastalking.com")
        .config("username", "moh-ke")
        .config("api_key", "atsk_0123456789")
        .config("from", "MOH")
        .config("webhook_token", "at-callbacks-1")
        .install()
}

fn message(id: &str, to: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        id: id.into(),
        to: to.into(),
        text: text.into(),
        language: None,
        lane: Lane::Bulk,
        expires_at_ms: None,
        attempt: 1,
    }
}

fn form_of(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(&req.body).into_owned().collect()
}

const ANSWER: &str = r#"{"SMSMessageData":{"Message":"Sent to 2/3 Total Cost: KES 1.6000","Recipients":[{"statusCode":101,"number":"+254711000001","status":"Success","cost":"KES 0.8000","messageId":"ATXid_1"},{"statusCode":403,"number":"+254711000002","status":"InvalidPhoneNumber","cost":"0","messageId":"None"},{"statusCode":101,"number":"+254711000003","status":"Success","cost":"KES 0.8000","messageId":"ATXid_3"}]}}"#;

#[test]
fn one_text_to_many_numbers_in_one_request() {
    let _host = host();
    let batch = vec![
        message("c1-0", "+254711000001", "Stock report due Friday."),
        message("c1-1", "+254711000002", "Stock report due Friday."),
        message("c1-2", "+254711000003", "Stock report due Friday."),
    ];
    let req = AfricasTalking::build_send_batch(batch.clone()).unwrap();
    assert_eq!(req.url, "https://api.africastalking.com/version1/messaging");
    assert_eq!(req.header("apiKey"), Some("atsk_0123456789"));
    let form = form_of(&req);
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("username"), Some("moh-ke"));
    assert_eq!(get("to"), Some("+254711000001,+254711000002,+254711000003"));
    assert_eq!(get("message"), Some("Stock report due Friday."));
    assert_eq!(get("from"), Some("MOH"));
    assert_eq!(get("bulkSMSMode"), Some("1"));

    let outcomes = AfricasTalking::parse_batch_response(
        batch,
        HttpResponse {
            status: 201,
            headers: Vec::new(),
            body: ANSWER.as_bytes().to_vec(),
        },
    )
    .unwrap();
    assert_eq!(
        outcomes,
        vec![
            BatchOutcome {
                id: "c1-0".into(),
                outcome: SendOutcome::Accepted("ATXid_1".into())
            },
            BatchOutcome {
                id: "c1-1".into(),
                outcome: SendOutcome::Failed(Failure {
                    reason: "InvalidPhoneNumber (403)".into(),
                    unreachable: true
                })
            },
            BatchOutcome {
                id: "c1-2".into(),
                outcome: SendOutcome::Accepted("ATXid_3".into())
            },
        ]
    );
}

#[test]
fn whole_request_refusals() {
    let _host = host();
    let batch = vec![
        message("c1-0", "+254711000001", "x"),
        message("c1-1", "+254711000002", "x"),
    ];
    let answer = |status, body: &str| HttpResponse {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    };
    assert!(matches!(
        AfricasTalking::parse_batch_response(
            batch.clone(),
            answer(401, "The supplied authentication is invalid")
        ),
        Err(PluginError::Unauthorized(_))
    ));
    let busy = AfricasTalking::parse_batch_response(batch.clone(), answer(503, "")).unwrap();
    assert!(
        busy.iter()
            .all(|o| matches!(o.outcome, SendOutcome::Retry(_)))
    );
    assert_eq!(busy.len(), 2);
    // A sender id the account may not use: every message fails with it.
    let refused = AfricasTalking::parse_send_response(answer(
        201,
        r#"{"SMSMessageData":{"Message":"InvalidSenderId","Recipients":[]}}"#,
    ))
    .unwrap();
    assert_eq!(
        refused,
        SendOutcome::Failed(Failure {
            reason: "InvalidSenderId".into(),
            unreachable: false
        })
    );
}

fn callback(query: &str, form: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: format!("/webhooks/sms{query}"),
        headers: vec![Header::new(
            "content-type",
            "application/x-www-form-urlencoded",
        )],
        body: form.as_bytes().to_vec(),
    }
}

#[test]
fn delivery_reports_and_inbound_sms() {
    let _host = host();
    let events = |form: &str| {
        AfricasTalking::handle_webhook(callback("?token=at-callbacks-1", form))
            .unwrap()
            .events
    };
    assert_eq!(
        events(
            "id=ATXid_1&status=Success&phoneNumber=%2B254711000001&networkCode=63902&retryCount=0"
        ),
        vec![WebhookEvent::Receipt(Receipt {
            external_id: "ATXid_1".into(),
            status: ReceiptStatus::Delivered,
            reason: None,
            at_ms: None
        })]
    );
    assert!(matches!(
        &events("id=ATXid_3&status=Failed&phoneNumber=%2B254711000003&failureReason=AbsentSubscriber&retryCount=3")[..],
        [WebhookEvent::Receipt(Receipt { status: ReceiptStatus::Failed, reason: Some(r), .. })] if r == "Failed: AbsentSubscriber"
    ));
    assert!(matches!(
        &events("date=2026-11-28+10%3A00%3A00&from=%2B254711000001&id=8a2e&linkId=&text=STOCK+ORS+40&to=20880&networkCode=63902")[..],
        [WebhookEvent::Inbound(InboundMessage { from, text, external_id: Some(id), .. })]
            if from == "+254711000001" && text == "STOCK ORS 40" && id == "8a2e"
    ));
    assert!(matches!(
        AfricasTalking::handle_webhook(callback("?token=guess", "id=1&status=Success")),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        AfricasTalking::handle_webhook(callback("?token=at-callbacks-1", "id=1&status=Teleported")),
        Err(PluginError::InvalidInput(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran = mhero_sdk::testing::connector_fixtures::<AfricasTalking>(
        include_str!("../plugin.toml"),
        &dir,
    );
    assert_eq!(ran, 5);
}
