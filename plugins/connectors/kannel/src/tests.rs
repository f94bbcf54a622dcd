use mhero_sdk::connector::Header;
use mhero_sdk::testing::MockHost;

use super::*;

const NOW: u64 = 1_800_000_000_000;

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("base_url", "http://127.0.0.1:13013/")
        .config("username", "mhero")
        .config("password", "p&ss word")
        .config("from", "4455")
        .config("webhook_url", "http://broker:8080/webhooks/sms")
        .config("webhook_token", "t0ken")
        .now_ms(NOW)
        .install()
}

fn message(text: &str, lane: Lane) -> OutboundMessage {
    OutboundMessage {
        id: "c12-345".into(),
        to: "+231770000001".into(),
        text: text.into(),
        language: None,
        lane,
        expires_at_ms: None,
        attempt: 1,
    }
}

fn query(url: &str) -> Vec<(String, String)> {
    pairs(url.split_once('?').unwrap().1.as_bytes())
}

fn callback(url: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn response(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![Header::new("content-type", "text/html")],
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn sendsms_carries_credentials_coding_priority_and_the_dlr_url() {
    let _host = host();
    let req = Kannel::build_send(message(
        "Cholera alert: report cases today.",
        Lane::Emergency,
    ))
    .unwrap();
    assert_eq!(req.method, "GET");
    assert!(
        req.url
            .starts_with("http://127.0.0.1:13013/cgi-bin/sendsms?")
    );
    let q = query(&req.url);
    assert_eq!(get(&q, "username"), Some("mhero"));
    assert_eq!(get(&q, "password"), Some("p&ss word"));
    assert_eq!(get(&q, "to"), Some("+231770000001"));
    assert_eq!(get(&q, "from"), Some("4455"));
    assert_eq!(get(&q, "text"), Some("Cholera alert: report cases today."));
    assert_eq!(get(&q, "coding"), Some("0"));
    assert_eq!(get(&q, "charset"), Some("UTF-8"));
    assert_eq!(get(&q, "priority"), Some("3"));
    assert_eq!(get(&q, "dlr-mask"), Some("27"));
    assert_eq!(get(&q, "validity"), None);
    assert_eq!(get(&q, "smsc"), None);
    // Kannel fills in %d, %T and %A; the rest is the broker's.
    assert_eq!(
        get(&q, "dlr-url"),
        Some(
            "http://broker:8080/webhooks/sms?token=t0ken&type=dlr&id=c12-345&status=%d&ts=%T&answer=%A"
        )
    );
}

#[test]
fn text_outside_gsm7_goes_as_ucs2() {
    let _host = host();
    for (text, coding) in [
        ("Réunion à 14h", "0"),
        ("Stock {AMOX} 100€", "0"),
        ("ça va ?", "2"),
        ("Habari ✓", "2"),
        ("عاجل: الكوليرا", "2"),
    ] {
        let req = Kannel::build_send(message(text, Lane::Normal)).unwrap();
        let q = query(&req.url);
        assert_eq!(get(&q, "coding"), Some(coding), "{text}");
        assert_eq!(get(&q, "text"), Some(text));
    }
}

#[test]
fn lanes_map_to_kannel_priorities() {
    let _host = host();
    for (lane, p) in [
        (Lane::Emergency, "3"),
        (Lane::High, "2"),
        (Lane::Normal, "1"),
        (Lane::Bulk, "0"),
    ] {
        let q = query(&Kannel::build_send(message("x", lane)).unwrap().url);
        assert_eq!(get(&q, "priority"), Some(p));
    }
}

#[test]
fn expiry_becomes_validity_in_minutes_and_an_expired_message_is_refused() {
    let _host = host();
    let mut m = message("x", Lane::Normal);
    m.expires_at_ms = Some(NOW + 90 * 60_000 + 1);
    let q = query(&Kannel::build_send(m.clone()).unwrap().url);
    assert_eq!(get(&q, "validity"), Some("91"));
    m.expires_at_ms = Some(NOW);
    assert!(matches!(
        Kannel::build_send(m),
        Err(PluginError::InvalidInput(_))
    ));
}

#[test]
fn without_a_webhook_url_no_receipts_are_asked_for() {
    let _host = MockHost::new()
        .config("base_url", "http://kannel:13013")
        .config("username", "u")
        .config("password", "p")
        .config("smsc", "orange")
        .install();
    let q = query(&Kannel::build_send(message("x", Lane::Bulk)).unwrap().url);
    assert_eq!(get(&q, "dlr-url"), None);
    assert_eq!(get(&q, "dlr-mask"), None);
    assert_eq!(get(&q, "smsc"), Some("orange"));
    assert_eq!(get(&q, "from"), None);
}

#[test]
fn missing_credentials_or_a_bad_mask_are_unauthorized_not_a_panic() {
    let _host = MockHost::new().config("base_url", "http://k").install();
    assert!(matches!(
        Kannel::build_send(message("x", Lane::Bulk)),
        Err(PluginError::Unauthorized(_))
    ));
    let _host = MockHost::new()
        .config("base_url", "http://k")
        .config("username", "u")
        .config("password", "p")
        .config("webhook_url", "http://b/webhooks/sms")
        .config("webhook_token", "t")
        .config("dlr_mask", "64")
        .install();
    assert!(matches!(
        Kannel::build_send(message("x", Lane::Bulk)),
        Err(PluginError::Unauthorized(m)) if m.contains("dlr_mask")
    ));
}

#[test]
fn sendsms_answers() {
    let _host = host();
    let accepted = |r| Kannel::parse_send_response(r).unwrap();
    assert_eq!(
        accepted(response(202, "0: Accepted for delivery")),
        SendOutcome::Accepted(String::new())
    );
    assert_eq!(
        accepted(response(202, "3: Queued for later delivery")),
        SendOutcome::Accepted(String::new())
    );
    assert!(matches!(
        Kannel::parse_send_response(response(403, "Authorization failed for sendsms")),
        Err(PluginError::Unauthorized(_))
    ));
    assert!(matches!(
        accepted(response(
            403,
            "Number(s) has/have been denied by white- and/or black-lists."
        )),
        SendOutcome::Failed(Failure {
            unreachable: true,
            ..
        })
    ));
    assert!(matches!(
        accepted(response(400, "Missing receiver number")),
        SendOutcome::Failed(Failure {
            unreachable: false,
            ..
        })
    ));
    let mut busy = response(503, "Sending failed.");
    busy.headers.push(Header::new("Retry-After", "7"));
    assert_eq!(
        accepted(busy),
        SendOutcome::Retry(RetryInfo {
            after_ms: Some(7000),
            reason: "kannel answered 503: Sending failed.".into()
        })
    );
}

#[test]
fn delivery_reports_climb_the_ladder() {
    let _host = host();
    let events = |url: &str| Kannel::handle_webhook(callback(url)).unwrap().events;
    let base = "/webhooks/sms?token=t0ken&type=dlr&id=c12-345";
    assert_eq!(
        events(&format!("{base}&status=8&ts=1795895808&answer=ACK%2F")),
        vec![WebhookEvent::Receipt(Receipt {
            external_id: "c12-345".into(),
            status: ReceiptStatus::Sent,
            reason: None,
            at_ms: Some(1_795_895_808_000),
        })]
    );
    assert_eq!(
        events(&format!("{base}&status=1&ts=1795895809&answer=")),
        vec![WebhookEvent::Receipt(Receipt {
            external_id: "c12-345".into(),
            status: ReceiptStatus::Delivered,
            reason: None,
            at_ms: Some(1_795_895_809_000),
        })]
    );
    let failed = events(&format!(
        "{base}&status=2&ts=1795895809&answer=id%3A1+stat%3AUNDELIV+err%3A001"
    ));
    assert!(matches!(
        &failed[..],
        [WebhookEvent::Receipt(Receipt { status: ReceiptStatus::Failed, reason: Some(r), .. })]
            if r == "undelivered: id:1 stat:UNDELIV err:001"
    ));
    assert!(matches!(
        &events(&format!("{base}&status=16&ts=1&answer=NACK%2F0x0000000b%2FInvalid+Destination+Address"))[..],
        [WebhookEvent::Receipt(Receipt { status: ReceiptStatus::Failed, reason: Some(r), .. })]
            if r.contains("Invalid Destination Address")
    ));
    // Buffered changes nothing; an unknown kind is logged and skipped.
    assert!(events(&format!("{base}&status=4&ts=1")).is_empty());
    assert!(events(&format!("{base}&status=64&ts=1")).is_empty());
}

#[test]
fn inbound_sms_from_an_sms_service() {
    let _host = host();
    let result = Kannel::handle_webhook(callback(
        "/webhooks/sms?token=t0ken&type=mo&from=%2B231770000001&to=4455&text=STOCK+AMOX+120&ts=1795895806&id=f071f507-c08c-4e45-acbc-1718e6ad03ef",
    ))
    .unwrap();
    assert_eq!(
        result.events,
        vec![WebhookEvent::Inbound(InboundMessage {
            from: "+231770000001".into(),
            text: "STOCK AMOX 120".into(),
            external_id: Some("f071f507-c08c-4e45-acbc-1718e6ad03ef".into()),
            received_at_ms: Some(1_795_895_806_000),
        })]
    );
    // Empty: nothing goes back to the phone.
    assert_eq!(result.response.status, 200);
    assert!(result.response.body.is_empty());
    let events = Kannel::handle_webhook(callback(
        "/webhooks/sms?token=t0ken&type=mo&from=00231770000002&text=Ndiyo+%E2%9C%93",
    ))
    .unwrap()
    .events;
    assert!(matches!(
        &events[..],
        [WebhookEvent::Inbound(InboundMessage { from, text, external_id: None, received_at_ms: None })]
            if from == "+231770000002" && text == "Ndiyo ✓"
    ));
}

#[test]
fn a_posted_form_is_read_like_a_query() {
    let _host = host();
    let request = HttpRequest {
        method: "POST".into(),
        url: "/webhooks/sms?token=t0ken".into(),
        headers: vec![Header::new(
            "Content-Type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )],
        body: b"type=mo&from=%2B231770000001&text=HELP".to_vec(),
    };
    assert!(matches!(
        &Kannel::handle_webhook(request).unwrap().events[..],
        [WebhookEvent::Inbound(InboundMessage { text, .. })] if text == "HELP"
    ));
}

#[test]
fn forged_or_malformed_callbacks_are_refused() {
    let _host = host();
    for url in [
        "/webhooks/sms?type=dlr&id=c1-1&status=1",
        "/webhooks/sms?token=t0ke&type=dlr&id=c1-1&status=1",
        "/webhooks/sms?token=t0kenX&type=dlr&id=c1-1&status=1",
    ] {
        assert!(
            matches!(
                Kannel::handle_webhook(callback(url)),
                Err(PluginError::Unauthorized(_))
            ),
            "{url}"
        );
    }
    for url in [
        "/webhooks/sms?token=t0ken",
        "/webhooks/sms?token=t0ken&type=dlr&status=1",
        "/webhooks/sms?token=t0ken&type=dlr&id=c1-1&status=delivered",
        "/webhooks/sms?token=t0ken&type=mo&text=hi",
    ] {
        assert!(
            matches!(
                Kannel::handle_webhook(callback(url)),
                Err(PluginError::InvalidInput(_))
            ),
            "{url}"
        );
    }
}

#[test]
fn without_a_webhook_token_every_callback_is_refused() {
    let _host = MockHost::new().install();
    assert!(matches!(
        Kannel::handle_webhook(callback("/webhooks/sms?token=&type=mo&from=1&text=x")),
        Err(PluginError::Unauthorized(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<Kannel>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 13);
}
