//! The `telegram` connector against the Telegram Bot API emulator
//! (`tests/peers/telegram`, npm `telegram-test-api`) on loopback: messages
//! out with sendMessage, a worker's reply back through the bot's webhook,
//! and a worker with no Telegram chat falling back to SMS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, wait_campaign, with};

const BOT_TOKEN: &str = "4242:mhero-test-bot";
const SECRET: &str = "tg-hook-secret-1c9e";

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/telegram")
}

fn missing() -> Option<String> {
    if mhero_tests::program("node").is_none() {
        return Some("node is not installed (run `scripts/setup.sh --peers`)".into());
    }
    if !peer_dir().join("node_modules/telegram-test-api").is_dir() {
        return Some(
            "the Telegram emulator's npm packages are not installed (run `scripts/setup.sh --peers`)"
                .into(),
        );
    }
    None
}

/// The emulator; stopped on drop.
struct Emulator {
    child: Child,
    base: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_emulator() -> Emulator {
    let mut child = Command::new("node")
        .arg("server.mjs")
        .current_dir(peer_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Telegram emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("the emulator said {line:?}"));
    Emulator {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// What the emulator's client side (the worker's phone) reads.
fn bot_messages(client: &Client, emulator: &Emulator, chat: &str) -> Vec<Value> {
    let (_, answer) = json_of(
        client
            .post(format!("{}/getUpdates", emulator.base))
            .json_body(&json!({"token": BOT_TOKEN, "chatId": chat}))
            .send()
            .unwrap(),
    );
    answer["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn telegram_messages_go_out_and_replies_come_back_through_the_webhook() {
    if !mhero_tests::peer_present(missing()) {
        return;
    }
    let emulator = start_emulator();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mhero.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[channels.telegram]
connector = "telegram"
rate = 30

[channels.sms]
connector = "sandbox"

[plugins.config.telegram]
base_url = "{}"
bot_token = "{BOT_TOKEN}"
webhook_secret = "{SECRET}"
"#,
            emulator.base
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");

    // What an operator does once: point the bot's webhook at the broker.
    let hook = server.url(&format!("/webhooks/telegram?token={SECRET}"));
    let (_, set) = json_of(
        client
            .post(format!("{}/bot{BOT_TOKEN}/setWebhook", emulator.base))
            .json_body(&json!({"url": hook}))
            .send()
            .unwrap(),
    );
    assert_eq!(set["ok"], true, "{set}");

    let text = "Measles campaign starts Monday: confirm with YES.";
    let (status, created) = json_of(
        with(client.post(server.url("/v1/campaigns")), &sender)
            .json_body(&json!({
                "name": "Measles",
                "lane": "high",
                "body": {"default": text},
                "channels": ["telegram", "sms"],
                "audience": {"recipients": [
                    {"addresses": {"telegram": "555001"}},
                    {"addresses": {"telegram": "555002"}, "phone": "+231770000302"},
                    // No Telegram chat: SMS instead.
                    {"phone": "+231770000303"},
                ]},
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let done = wait_campaign(
        &client,
        &server,
        &sender,
        &id,
        Duration::from_secs(30),
        |c| c["done"] == true,
    );
    assert_eq!(done["dead"], 0, "{done}");
    let (_, page) = get_json(
        &client,
        &server,
        &sender,
        &format!("/v1/campaigns/{id}/deliveries"),
    );
    let channels: Vec<(&str, &str)> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["channel"].as_str().unwrap(), d["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        channels,
        [
            ("telegram", "555001"),
            ("telegram", "555002"),
            ("sms", "+231770000303")
        ],
        "{page}"
    );

    // Each worker's chat got the text once.
    for chat in ["555001", "555002"] {
        let got = bot_messages(&client, &emulator, chat);
        assert_eq!(got.len(), 1, "{chat}: {got:?}");
        assert_eq!(got[0]["message"]["text"], text);
    }

    // A worker answers in the chat: the emulator posts the update to the
    // webhook, and it arrives as an inbound message.
    let reply = client
        .post(format!("{}/sendMessage", emulator.base))
        .json_body(&json!({
            "botToken": BOT_TOKEN,
            "from": {"id": 555001, "first_name": "Amina", "is_bot": false},
            "chat": {"id": 555001, "first_name": "Amina", "type": "private"},
            "date": 1_795_896_100,
            "text": "YES",
        }))
        .send()
        .unwrap();
    assert!(reply.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let inbound = loop {
        let (_, body) = get_json(&client, &server, &sender, "/v1/inbound");
        let items = body.as_array().cloned().unwrap_or_default();
        // Listed once processed: classified and routed.
        if items.first().is_some_and(|m| !m["processed"].is_null()) || Instant::now() > deadline {
            break items;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(inbound.len(), 1, "{inbound:?}");
    assert_eq!(inbound[0]["channel"], "telegram");
    assert_eq!(inbound[0]["from"], "555001");
    assert_eq!(inbound[0]["text"], "YES");
    assert_eq!(inbound[0]["received_ms"], 1_795_896_100_000u64);
    let processed = &inbound[0]["processed"];
    assert_eq!(processed["route"], "inbox", "{processed}");
    assert_eq!(processed["label"], "yes", "{processed}");

    // An update without the secret is refused.
    let forged = client
        .post(server.url("/webhooks/telegram"))
        .json_body(&json!({"update_id": 9, "message": {"chat": {"id": 1}, "text": "STOP"}}))
        .send()
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert!(server.stop().success());
}
