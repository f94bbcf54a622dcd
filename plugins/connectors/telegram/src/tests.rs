use mhero_sdk::connector::InboundMessage;
use mhero_sdk::testing::MockHost;

use super::*;

fn host() -> mhero_sdk::testing::Installed {
    MockHost::new()
        .config("base_url", "https://api.telegram.org/")
        .config("bot_token", "123456:ABC-DEF1234ghIkl")
        .config("webhook_secret", "s3cret-hook")
        .install()
}

fn message(to: &str, lane: Lane) -> OutboundMessage {
    OutboundMessage {
        id: "c4-17".into(),
        to: to.into(),
        text: "Measles campaign starts Monday.".into(),
        language: None,
        lane,
        expires_at_ms: None,
        attempt: 1,
    }
}

fn answer(status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![Header::new("content-type", "application/json")],
        body: body.as_bytes().to_vec(),
    }
}

fn update(headers: &[(&str, &str)], url: &str, body: &str) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        url: url.into(),
        headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn send_message_posts_json_to_the_bot_api() {
    let _host = host();
    let req = Telegram::build_send(message("987654321", Lane::Emergency)).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.url,
        "https://api.telegram.org/bot123456:ABC-DEF1234ghIkl/sendMessage"
    );
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"chat_id": "987654321", "text": "Measles campaign starts Monday."})
    );
    // Bulk arrives silently.
    let req = Telegram::build_send(message("-100123", Lane::Bulk)).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["disable_notification"], true);
    assert!(Telegram::build_send(message("@moh_alerts", Lane::High)).is_ok());
}

#[test]
fn a_phone_number_is_not_a_chat_and_falls_back() {
    let _host = host();
    for to in ["+231770000001", "", "-", "@", "12a"] {
        assert!(
            matches!(
                Telegram::build_send(message(to, Lane::Normal)),
                Err(PluginError::Permanent(_))
            ),
            "{to:?}"
        );
    }
}

#[test]
fn answers_of_the_bot_api() {
    let _host = host();
    assert_eq!(
        Telegram::parse_send_response(answer(
            200,
            r#"{"ok":true,"result":{"message_id":4412,"from":{"id":123456,"is_bot":true,"first_name":"MoH"},"chat":{"id":987654321,"first_name":"Amina","type":"private"},"date":1795896000,"text":"Measles campaign starts Monday."}}"#
        ))
        .unwrap(),
        SendOutcome::Accepted("987654321:4412".into())
    );
    assert_eq!(
        Telegram::parse_send_response(answer(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#
        ))
        .unwrap(),
        SendOutcome::Retry(RetryInfo {
            after_ms: Some(7000),
            reason: "throttled: Too Many Requests: retry after 7".into()
        })
    );
    for blocked in [
        r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
        r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        r#"{"ok":false,"error_code":403,"description":"Forbidden: user is deactivated"}"#,
    ] {
        let status = if blocked.contains("403") { 403 } else { 400 };
        assert!(matches!(
            Telegram::parse_send_response(answer(status, blocked)).unwrap(),
            SendOutcome::Failed(Failure {
                unreachable: true,
                ..
            })
        ));
    }
    assert!(matches!(
        Telegram::parse_send_response(answer(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: message is too long"}"#
        ))
        .unwrap(),
        SendOutcome::Failed(Failure {
            unreachable: false,
            ..
        })
    ));
    assert!(matches!(
        Telegram::parse_send_response(answer(
            401,
            r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#
        )),
        Err(PluginError::Unauthorized(_))
    ));
    // A proxy's HTML page on a 502: try again.
    assert!(matches!(
        Telegram::parse_send_response(answer(502, "<html>Bad Gateway</html>")).unwrap(),
        SendOutcome::Retry(_)
    ));
    assert!(matches!(
        Telegram::parse_send_response(answer(200, "not json")),
        Err(PluginError::InvalidInput(_))
    ));
}

const UPDATE: &str = r#"{"update_id":10000,"message":{"date":1795896100,"chat":{"last_name":"Kollie","id":987654321,"first_name":"Amina","username":"amina_k","type":"private"},"message_id":1365,"from":{"last_name":"Kollie","id":987654321,"first_name":"Amina","username":"amina_k","is_bot":false},"text":"STOCK AMOX 120"}}"#;

#[test]
fn a_reply_arrives_as_inbound() {
    let _host = host();
    let result = Telegram::handle_webhook(update(
        &[("X-Telegram-Bot-Api-Secret-Token", "s3cret-hook")],
        "/webhooks/telegram",
        UPDATE,
    ))
    .unwrap();
    assert_eq!(
        result.events,
        vec![WebhookEvent::Inbound(InboundMessage {
            from: "987654321".into(),
            text: "STOCK AMOX 120".into(),
            external_id: Some("10000".into()),
            received_at_ms: Some(1_795_896_100_000),
        })]
    );
    assert_eq!(result.response.status, 200);
    assert!(result.response.body.is_empty());
    // The secret in the webhook URL instead of the header.
    assert!(
        Telegram::handle_webhook(update(&[], "/webhooks/telegram?token=s3cret-hook", UPDATE))
            .is_ok()
    );
}

#[test]
fn a_button_press_is_its_data() {
    let _host = host();
    let body = r#"{"update_id":10001,"callback_query":{"id":"4382bfdwdsb323b2d9","from":{"id":987654321,"is_bot":false,"first_name":"Amina"},"chat_instance":"-1","data":"yes"}}"#;
    let result = Telegram::handle_webhook(update(
        &[("x-telegram-bot-api-secret-token", "s3cret-hook")],
        "/webhooks/telegram",
        body,
    ))
    .unwrap();
    assert!(matches!(
        &result.events[..],
        [WebhookEvent::Inbound(InboundMessage { from, text, .. })] if from == "987654321" && text == "yes"
    ));
    // Kinds that carry no reply are taken and ignored.
    let other = r#"{"update_id":10002,"my_chat_member":{"chat":{"id":1}}}"#;
    let result = Telegram::handle_webhook(update(
        &[("x-telegram-bot-api-secret-token", "s3cret-hook")],
        "/webhooks/telegram",
        other,
    ))
    .unwrap();
    assert!(result.events.is_empty());
}

#[test]
fn forged_or_malformed_updates_are_refused() {
    let _host = host();
    for (headers, url) in [
        (vec![], "/webhooks/telegram"),
        (
            vec![("x-telegram-bot-api-secret-token", "s3cret-hooK")],
            "/webhooks/telegram",
        ),
        (vec![], "/webhooks/telegram?token=guess"),
    ] {
        assert!(matches!(
            Telegram::handle_webhook(update(&headers, url, UPDATE)),
            Err(PluginError::Unauthorized(_))
        ));
    }
    assert!(matches!(
        Telegram::handle_webhook(update(
            &[("x-telegram-bot-api-secret-token", "s3cret-hook")],
            "/webhooks/telegram",
            "{\"message\":{}}"
        )),
        Err(PluginError::InvalidInput(_))
    ));
    let _host = MockHost::new().install();
    assert!(matches!(
        Telegram::handle_webhook(update(&[], "/webhooks/telegram?token=", UPDATE)),
        Err(PluginError::Unauthorized(_))
    ));
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component (those expecting what only the host decides are left to it).
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran =
        mhero_sdk::testing::connector_fixtures::<Telegram>(include_str!("../plugin.toml"), &dir);
    assert_eq!(ran, 12);
}
